//! The metrics endpoint of a running server: `[metrics]` and what it serves, read back by an
//! independent parser and checked against the server's own snapshot.

use super::*;
use crate::metrics::tests::{assert_exposition_matches, Parsed};
use crate::metrics::{fetch, MetricsConfig};

/// The counters of a snapshot, without its clock reading.
fn counters(s: &Snapshot) -> serde_json::Value {
    let v = serde_json::to_value(s).unwrap();
    serde_json::json!([v["totals"], v["ports"], v["in_flight"]])
}

#[test]
fn the_endpoint_serves_what_the_snapshot_says() {
    let dir = Dir::new("metrics");
    let mut cfg = config(&dir, &[(3, "g"), (4, "g")]);
    cfg.vm[0].uds_path = Some(dir.0.join("h3"));
    cfg.metrics = Some(MetricsConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
    });
    let server = Server::start(&cfg).unwrap();
    let addr = server.metrics_addr().expect("listens").to_string();
    let mut a = guest(&dir.sock(3));
    let mut b = guest(&dir.sock(4));
    wait_connected(&server);
    let (la, lb) = connect(&mut a, &mut b, SocketType::Stream, 3, 4);
    send_data(&mut a, la, lb, &pattern(9000, 2));
    recv_data(&mut b, la, 9000);

    // The traffic is over: once two snapshots around a scrape agree, the scrape is theirs.
    let give_up = std::time::Instant::now() + PATIENCE;
    let (snap, text) = loop {
        let before = server.snapshot();
        let text = fetch(&addr, "/metrics");
        let after = server.snapshot();
        if let (Some(s), Ok(t), Some(after)) = (before, text, after) {
            let vm4_rx = s.ports[1].counters.get("rx_bytes").copied();
            if counters(&s) == counters(&after) && vm4_rx == Some(9000) {
                break (s, t);
            }
        }
        assert!(std::time::Instant::now() < give_up, "never settled");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_exposition_matches(&snap, &text);
    let m = Parsed::new(&text);
    assert_eq!(m.get("vmq_port_tx_bytes_total", &[("port", "vm3")]), 9000.0);
    assert_eq!(m.get("vmq_port_conns_established", &[("port", "vm3")]), 1.0);
    assert_eq!(
        m.get("vmq_port_conns_established", &[("port", "host3")]),
        0.0
    );
    assert_eq!(m.get("vmq_port_up", &[("port", "host3")]), 1.0);

    // `vmq stats` prints the same table `--stats-every` does.
    let table = fetch(&addr, "/stats").unwrap();
    assert!(
        table.contains("port vm4:") && table.contains("rx_bytes 9000"),
        "{table}"
    );
    server.shutdown().unwrap();
    assert!(fetch(&addr, "/stats").is_err(), "stopped with the server");
}

#[test]
fn metrics_are_off_unless_asked_and_their_table_is_checked() {
    let dir = Dir::new("metrics-off");
    let server = Server::start(&config(&dir, &[(3, "g")])).unwrap();
    assert_eq!(server.metrics_addr(), None);
    server.shutdown().unwrap();

    let vm = "[[vm]]\ncid = 3\nsocket = \"/tmp/x.sock\"\n";
    let cfg = ServeConfig::parse(&format!("{vm}[metrics]\n"), "serve.toml").unwrap();
    assert_eq!(cfg.metrics, Some(MetricsConfig::default()));
    let cfg = ServeConfig::parse(&format!("{vm}[metrics]\nlisten = \"9000\"\n"), "s.toml").unwrap();
    assert_eq!(
        cfg.metrics.unwrap().listen,
        "127.0.0.1:9000".parse().unwrap()
    );
    let e = ServeConfig::parse(&format!("{vm}[metrics]\nlisten = \"nowhere\"\n"), "s.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("s.toml:5") && e.contains("IP:PORT"), "{e}");
    let e = ServeConfig::parse(&format!("{vm}[metrics]\nlsten = \"9000\"\n"), "s.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("lsten"), "{e}");
}

#[test]
fn a_taken_metrics_address_stops_the_start_and_says_so() {
    let dir = Dir::new("metrics-taken");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = config(&dir, &[(3, "g")]);
    cfg.metrics = Some(MetricsConfig {
        listen: taken.local_addr().unwrap(),
    });
    let e = Server::start(&cfg).err().expect("refused").to_string();
    assert!(e.contains("cannot listen for metrics"), "{e}");
    // Nothing was left behind: the VM's socket is free for the next start.
    cfg.metrics = None;
    Server::start(&cfg).unwrap().shutdown().unwrap();
}
