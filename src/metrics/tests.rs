//! The exposition read back by an independent parser and checked against the snapshot it
//! came from; the endpoint under bad clients; `vmq stats`' errors.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_parse::{Scrape, Value};
use vm_memory::GuestMemoryMmap;

use super::exposition::{is_level, port_kind_metric};
use super::*;
use crate::peer::{host_peer, HostPeer, PeerConfig};
use crate::switch::{
    ManualClock, PolicyKind, Polling, ServiceConfig, Snapshot, Switch, SwitchConfig,
};
use crate::wire::{MsgHeader, MsgKind, Status};

/// The samples of a scrape, by metric name and then by their labels (`k=v` pairs, sorted).
pub(crate) struct Parsed(HashMap<String, HashMap<Vec<(String, String)>, f64>>);

impl Parsed {
    /// Parses `text` with `prometheus-parse`, insisting that every line is understood: each
    /// sample line yields a sample, each sample's family has a `# TYPE` (counter or gauge)
    /// and a `# HELP`, and no series appears twice.
    pub(crate) fn new(text: &str) -> Self {
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses");
        let sample_lines = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .count();
        assert_eq!(
            scrape.samples.len(),
            sample_lines,
            "a sample line was not understood:\n{text}"
        );
        let mut out: HashMap<String, HashMap<Vec<(String, String)>, f64>> = HashMap::new();
        for s in scrape.samples {
            assert!(
                scrape.docs.contains_key(&s.metric),
                "{} has no HELP",
                s.metric
            );
            let v = match s.value {
                Value::Counter(v) => {
                    assert!(s.metric.ends_with("_total"), "counter {}", s.metric);
                    v
                }
                Value::Gauge(v) => {
                    assert!(!s.metric.ends_with("_total"), "gauge {}", s.metric);
                    v
                }
                other => panic!("{} is neither counter nor gauge: {other:?}", s.metric),
            };
            assert!(s.metric.starts_with("vmq_"), "{}", s.metric);
            let mut labels: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            let series = out.entry(s.metric.clone()).or_default();
            assert!(
                series.insert(labels.clone(), v).is_none(),
                "{} {labels:?} twice",
                s.metric
            );
        }
        Self(out)
    }

    /// The value of `metric` with `labels`; panics if absent.
    pub(crate) fn get(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        let mut key: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        key.sort();
        *self
            .0
            .get(metric)
            .and_then(|s| s.get(&key))
            .unwrap_or_else(|| panic!("no {metric} {labels:?}"))
    }

    /// Whether the scrape has family `metric`.
    pub(crate) fn has(&self, metric: &str) -> bool {
        self.0.contains_key(metric)
    }
}

/// The fields of a serializable counters struct, by name: the snapshot's own view of what
/// there is to export, independent of the exposition's tables.
fn fields<T: serde::Serialize>(v: &T) -> Vec<(String, u64)> {
    let serde_json::Value::Object(m) = serde_json::to_value(v).unwrap() else {
        panic!("not a struct");
    };
    m.into_iter()
        .map(|(k, v)| {
            let n = v.as_u64().unwrap_or_else(|| panic!("{k} is not a count"));
            (k, n)
        })
        .collect()
}

/// Checks `text` (the endpoint's `/metrics`) against `snap`: every counter of the snapshot
/// is there with its value, and the sums the snapshot keeps hold in what was parsed.
pub(crate) fn assert_exposition_matches(snap: &Snapshot, text: &str) {
    let m = Parsed::new(text);
    let exact = |metric: &str, labels: &[(&str, &str)], want: u64| {
        let got = m.get(metric, labels);
        assert_eq!(got, want as f64, "{metric} {labels:?}");
    };
    for (name, v) in fields(&snap.totals) {
        exact(&format!("vmq_switch_{name}_total"), &[], v);
    }
    exact("vmq_switch_in_flight", &[], snap.in_flight as u64);
    for p in &snap.ports {
        let l = [("port", p.name.as_str())];
        exact("vmq_port_up", &l, u64::from(!p.down));
        for (name, v) in fields(&p.stats) {
            exact(&format!("vmq_port_{name}_total"), &l, v);
        }
        for (name, &v) in &p.counters {
            let metric = port_kind_metric(name);
            let suffix = if is_level(name) { "" } else { "_total" };
            exact(&format!("vmq_{metric}{suffix}"), &l, v);
        }
    }
    for s in &snap.services {
        let l = [("service", s.name.as_str())];
        for (name, v) in fields(&s.stats) {
            exact(&format!("vmq_service_{name}_total"), &l, v);
        }
        exact("vmq_service_waiting", &l, s.waiting as u64);
        exact(
            "vmq_service_info",
            &[("service", &s.name), ("policy", s.policy)],
            1,
        );
        let mut dispatched = 0.0;
        for b in &s.members {
            let l = [("service", s.name.as_str()), ("backend", b.name.as_str())];
            exact("vmq_backend_dispatched_total", &l, b.dispatched);
            exact("vmq_backend_in_flight", &l, u64::from(b.in_flight));
            exact("vmq_backend_connections_held", &l, u64::from(b.held));
            let health = m.get("vmq_backend_health", &l);
            assert!((health - b.health).abs() < 1e-9, "{health} vs {}", b.health);
            let on: Vec<String> = ["healthy", "warming", "stalled", "ejected", "descheduled"]
                .into_iter()
                .filter(|st| m.get("vmq_backend_status", &[l[0], l[1], ("status", st)]) == 1.0)
                .map(str::to_string)
                .collect();
            assert_eq!(on, [b.status], "{}", b.name);
            let on: Vec<&str> = ["active", "draining", "gone"]
                .into_iter()
                .filter(|st| m.get("vmq_backend_state", &[l[0], l[1], ("state", st)]) == 1.0)
                .collect();
            assert_eq!(on, [b.state], "{}", b.name);
            dispatched += m.get("vmq_backend_dispatched_total", &l);
        }
        if !s.members.is_empty() {
            assert_eq!(
                dispatched,
                m.get("vmq_service_dispatches_total", &l),
                "the backends' dispatches add up to the service's"
            );
        }
    }
    // Every accepted request is answered, failed back, orphaned, refused or in flight.
    let t = |n: &str| m.get(&format!("vmq_switch_{n}_total"), &[]);
    assert_eq!(
        t("requests_accepted"),
        t("replies_delivered")
            + t("failed_back")
            + t("orphaned")
            + t("refused")
            + m.get("vmq_switch_in_flight", &[]),
    );
}

struct Peer(HostPeer, Vec<u8>);

impl Peer {
    fn new() -> (Self, crate::virtio::DevicePort<GuestMemoryMmap>) {
        let (h, dev) = host_peer(PeerConfig {
            queue_size: 32,
            slot_size: 256,
            event_idx: true,
        })
        .unwrap();
        (Peer(h, vec![0; 256]), dev)
    }

    /// Takes everything delivered; with `reply`, answers the requests `Ok`.
    fn drain(&mut self, reply: bool) -> Vec<MsgHeader> {
        let mut got = Vec::new();
        loop {
            self.0.tx.reclaim().unwrap();
            if reply && self.0.tx.free() == 0 {
                break;
            }
            let Some(m) = self.0.rx.recv(&mut self.1).unwrap() else {
                break;
            };
            if reply && m.header.kind() == Some(MsgKind::Request) {
                let rep = MsgHeader::reply_to(&m.header, Status::Ok, m.len as u32);
                let payload = self.1[..m.len].to_vec();
                self.0.tx.send(&rep, &payload).unwrap();
            }
            got.push(m.header);
        }
        self.0.rx.flush().unwrap();
        self.0.tx.flush().unwrap();
        got
    }
}

/// A client, three backends of service `echo` (the third stops answering after a while and
/// is ejected), and requests left in flight at the end.
fn busy_switch() -> Switch<GuestMemoryMmap> {
    let clock = ManualClock::new(1_000_000);
    let mut sw = Switch::new(SwitchConfig::default(), Arc::new(clock.clone())).unwrap();
    let mut peers = Vec::new();
    for name in ["client", "b0", "b1", "b2"] {
        let (p, dev) = Peer::new();
        sw.add_port(name, dev, Box::new(Polling)).unwrap();
        peers.push(p);
    }
    let mut cfg = ServiceConfig::default();
    cfg.policy.kind = PolicyKind::Wrr;
    let svc = sw
        .add_service("echo", cfg, &[(1, 1.0), (2, 2.0), (3, 1.0)])
        .unwrap();
    let (total, mut sent, mut answered) = (2000u64, 0u64, 0u64);
    for step in 0..50_000u64 {
        while sent < total && peers[0].0.tx.free() > 0 {
            let h = MsgHeader::request_to_service(svc, sent, 16);
            peers[0].0.tx.send(&h, &[7; 16]).unwrap();
            peers[0].0.tx.flush().unwrap();
            sent += 1;
        }
        clock.advance(50_000);
        sw.poll();
        for (b, p) in peers.iter_mut().enumerate().skip(1) {
            p.drain(!(b == 3 && step >= 5));
        }
        clock.advance(50_000);
        sw.poll();
        answered += peers[0]
            .drain(false)
            .iter()
            .filter(|h| h.kind() == Some(MsgKind::Reply))
            .count() as u64;
        peers[0].0.tx.reclaim().unwrap();
        if answered == total && sw.in_flight() == 0 {
            break;
        }
    }
    assert_eq!(answered, total, "every request answered");
    // Left in flight: requests the backends take and do not answer yet.
    for id in 0..5 {
        let h = MsgHeader::request_to_service(svc, total + id, 16);
        peers[0].0.tx.send(&h, &[7; 16]).unwrap();
    }
    peers[0].0.tx.flush().unwrap();
    clock.advance(50_000);
    sw.poll();
    sw
}

#[test]
fn the_exposition_parses_and_its_counters_add_up_with_the_snapshot() {
    let sw = busy_switch();
    let snap = sw.snapshot();
    let s = &snap.services[0];
    assert!(s.stats.ejections >= 1, "{:?}", s.stats);
    assert!(s.stats.redispatches >= 1, "{:?}", s.stats);
    assert!(snap.in_flight > 0);
    let text = exposition::encode(&snap).unwrap();
    assert_exposition_matches(&snap, &text);
    let m = Parsed::new(&text);
    assert_eq!(
        m.get(
            "vmq_backend_status",
            &[
                ("service", "echo"),
                ("backend", "b2"),
                ("status", "ejected")
            ]
        ),
        1.0
    );
    assert!(m.has("vmq_backend_latency_seconds"));
}

#[test]
fn the_field_tables_cover_every_counter_of_the_snapshot() {
    fn names<T>(f: &[exposition::Field<T>]) -> Vec<String> {
        let mut v: Vec<String> = f.iter().map(|(n, _, _)| n.to_string()).collect();
        v.sort();
        v
    }
    let keys = |v: Vec<(String, u64)>| -> Vec<String> {
        let mut k: Vec<String> = v.into_iter().map(|(k, _)| k).collect();
        k.sort();
        k
    };
    let snap = busy_switch().snapshot();
    assert_eq!(names(exposition::TOTALS), keys(fields(&snap.totals)));
    assert_eq!(
        names(exposition::PORT_STATS),
        keys(fields(&snap.ports[0].stats))
    );
    assert_eq!(
        names(exposition::SERVICE_STATS),
        keys(fields(&snap.services[0].stats))
    );
}

#[test]
fn port_kind_counters_are_named_and_typed_by_their_names() {
    assert_eq!(port_kind_metric("tx_packets"), "port_tx_packets");
    assert!(!is_level("tx_packets") && !is_level("rx_stalls"));
    assert!(is_level("conns_established") && is_level("staged") && is_level("pending_lines"));
    // A switch field's name, or one that is not a metric name, cannot clash or break the text.
    assert_eq!(port_kind_metric("faults"), "port_kind_faults");
    assert_eq!(port_kind_metric("up"), "port_kind_up");
    assert_eq!(port_kind_metric("Bad-Name 1"), "port_bad_name_1");
}

#[test]
fn listen_addresses_parse_and_a_bare_port_means_localhost() {
    assert_eq!(
        parse_listen("9464").unwrap(),
        "127.0.0.1:9464".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        parse_listen(DEFAULT_LISTEN),
        Ok(MetricsConfig::default().listen)
    );
    assert!(parse_listen("[::1]:80").is_ok());
    let e = parse_listen("localhost").unwrap_err();
    assert!(e.contains("IP:PORT"), "{e}");
}

/// Sends `request` raw and returns everything the endpoint answered.
fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The endpoint may close before taking all of an oversized request.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn the_endpoint_serves_the_latest_snapshot_and_survives_bad_clients() {
    let shared: SharedSnapshot = Arc::new(Mutex::new(None));
    let ep = MetricsEndpoint::start("127.0.0.1:0".parse().unwrap(), shared.clone()).unwrap();
    let addr = ep.local_addr();
    let a = addr.to_string();
    match fetch(&a, "/metrics") {
        Err(StatsError::Status {
            status: 503, body, ..
        }) => {
            assert!(body.contains("no snapshot yet"), "{body}")
        }
        other => panic!("before the first snapshot: {other:?}"),
    }
    let snap = busy_switch().snapshot();
    *shared.lock().unwrap() = Some(snap.clone());

    // Bad clients, each answered (or dropped) without harm.
    assert!(raw(addr, b"garbage\r\n\r\n").starts_with("HTTP/1.0 400"));
    assert!(raw(addr, b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.0 405"));
    assert!(raw(addr, &[b'A'; 10_000]).starts_with("HTTP/1.0 431"));
    assert!(raw(addr, b"GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.0 404"));
    assert!(raw(addr, &[0xff, 0xfe, b'\n', b'\n']).starts_with("HTTP/1.0 400"));
    let head = raw(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert!(
        head.starts_with("HTTP/1.0 200") && head.ends_with("\r\n\r\n"),
        "{head}"
    );
    // One that connects and says nothing is dropped after its timeout; the next is served.
    let silent = TcpStream::connect(addr).unwrap();
    let t = Instant::now();
    let text = fetch(&a, "/metrics").unwrap();
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    drop(silent);

    assert_exposition_matches(&snap, &text);
    assert_eq!(fetch(&a, "/stats").unwrap(), snap.to_string());
    assert_eq!(
        fetch(&a, "/stats.json").unwrap().trim_end(),
        serde_json::to_string(&snap).unwrap()
    );
    assert!(fetch(&a, "/").unwrap().contains("/metrics"));

    // A query string is ignored.
    assert!(fetch(&a, "/stats?x=1").is_ok());
    ep.stop();
    assert!(matches!(
        fetch(&a, "/stats"),
        Err(StatsError::NotListening { .. })
    ));
}

#[test]
fn stats_says_what_to_start_when_nothing_listens() {
    let free = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let e = fetch(&free.to_string(), "/stats").unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, StatsError::NotListening { .. }) && msg.contains("--metrics"),
        "{msg}"
    );
    let e = fetch("no such host", "/stats").unwrap_err();
    assert!(matches!(e, StatsError::BadAddr { .. }), "{e}");
    assert!(e.to_string().contains("HOST:PORT"), "{e}");
}

#[test]
fn a_taken_address_is_refused_with_what_to_do() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let e = MetricsEndpoint::start(taken.local_addr().unwrap(), Arc::new(Mutex::new(None)))
        .unwrap_err();
    assert!(e.to_string().contains("pick another address"), "{e}");
}

/// A daemon's commands, answered from a script: what it was asked, and what it answers.
#[derive(Default)]
struct Scripted(Mutex<Vec<String>>);

impl Control for Scripted {
    fn drain(&self, service: &str, member: &str) -> Result<String, String> {
        self.0
            .lock()
            .unwrap()
            .push(format!("drain {service:?} {member:?}"));
        if service == "nope" {
            Err(format!("no service {service:?}"))
        } else {
            Ok(format!("{service} member {member} drains"))
        }
    }

    fn reload(&self) -> Result<String, String> {
        self.0.lock().unwrap().push("reload".into());
        Ok("no change".into())
    }
}

#[test]
fn commands_go_to_the_daemon_by_post_and_say_what_they_did() {
    let shared: SharedSnapshot = Arc::new(Mutex::new(None));
    let control = Arc::new(Scripted::default());
    let ep = MetricsEndpoint::start_with_control(
        "127.0.0.1:0".parse().unwrap(),
        shared,
        Some(control.clone()),
    )
    .unwrap();
    let a = ep.local_addr().to_string();
    let name = "a b&c/é";
    let said = post(
        &a,
        &format!("/drain?service={}&member=7", query_escape(name)),
    )
    .unwrap();
    assert_eq!(said, format!("{name} member 7 drains\n"));
    assert_eq!(post(&a, "/reload").unwrap(), "no change\n");
    match post(&a, "/drain?service=nope&member=1") {
        Err(StatsError::Status {
            status: 409, body, ..
        }) => assert!(body.contains("nope")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        post(&a, "/drain?member=1"),
        Err(StatsError::Status { status: 400, .. })
    ));
    assert!(matches!(
        post(&a, "/drain?service=%zz&member=1"),
        Err(StatsError::Status { status: 400, .. })
    ));
    // Commands change things: a GET (a crawler, a prefetch) does not run one.
    assert!(matches!(
        fetch(&a, "/reload"),
        Err(StatsError::Status { status: 405, .. })
    ));
    // Nor does a POST a web page could make: without the command header, or from an origin.
    let at = ep.local_addr();
    for head in [
        "POST /reload HTTP/1.0\r\n\r\n",
        "POST /reload HTTP/1.0\r\nX-Vmq-Command: 1\r\nOrigin: http://example.com\r\n\r\n",
    ] {
        let answer = raw(at, head.as_bytes());
        assert!(answer.starts_with("HTTP/1.0 403"), "{head:?}: {answer}");
    }
    assert_eq!(
        *control.0.lock().unwrap(),
        [
            format!("drain {name:?} \"7\""),
            "reload".to_string(),
            "drain \"nope\" \"1\"".to_string()
        ]
    );
    ep.stop();
    // A daemon without commands (vmq run) says so.
    let ep =
        MetricsEndpoint::start("127.0.0.1:0".parse().unwrap(), Arc::new(Mutex::new(None))).unwrap();
    match post(&ep.local_addr().to_string(), "/reload") {
        Err(StatsError::Status {
            status: 404, body, ..
        }) => {
            assert!(body.contains("vmq serve"), "{body}")
        }
        other => panic!("{other:?}"),
    }
}
