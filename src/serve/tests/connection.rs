//! `connection` services without guests: clients and backends played by endpoints on VMMs
//! written in Rust (the setup of the `message` service tests), through the whole server.
//! Distribution, translation and credit; the faults are in `connection_faults`.

use std::collections::HashMap;
use std::time::Instant;

use super::app::App;
use super::world::{
    run_until, service_config_with, snapshot_when, world, SERVICE_CID, SERVICE_PORT,
};
use super::*;
use crate::port::vsock::SERVICE_BACKEND_PORTS;
use crate::vsock::endpoint::{CloseReason, EndpointState};
use crate::vsock::packet::SHUTDOWN_BOTH;

/// The table lines of a `connection` service, and `extra` ones.
pub(super) fn conn_mode(extra: &str) -> String {
    format!("mode = \"connection\"\n{extra}")
}

/// Health left out but for errors, and no stall on a played backend that got no CPU for a
/// while (the machine is shared): what is measured is the policy, not how loaded each backend
/// looks from one moment to the next.
const POLICY_ONLY: &str =
    "health = { weights = { drain = 0.0, latency = 0.0, in_flight = 0.0, free_rx = 0.0 } }\n\
     failover = { stall_window_ns = 60000000000 }";

/// Opens `n` SEQPACKET connections from `client`, `batch` at a time. On each: one message and
/// its answer (checked: the message and one byte, the CID of the backend that answered), then
/// an orderly close. No connection may be reset before its answer, and each gets exactly one.
/// Returns the connections each backend served, by its CID.
pub(super) fn connections(
    client: &mut App,
    workers: &mut [App],
    n: u32,
    batch: u32,
) -> HashMap<u8, u32> {
    let mut by = HashMap::new();
    let mut done = 0;
    while done < n {
        let k = batch.min(n - done);
        let mut open: Vec<_> = (0..k)
            .map(|i| {
                let key = client.connect();
                let msg = format!("conn {}", done + i);
                client
                    .eps
                    .get_mut(&key)
                    .unwrap()
                    .write_message(msg.as_bytes(), true)
                    .unwrap();
                (key, msg)
            })
            .collect();
        let give_up = Instant::now() + PATIENCE;
        while !open.is_empty() {
            assert!(Instant::now() < give_up, "connections unanswered: {open:?}");
            open.retain(|(key, msg)| {
                let ep = client.eps.get_mut(key).expect("the connection lives");
                assert_ne!(ep.state(), EndpointState::Closed, "{msg}: reset");
                let Some(m) = ep.read_message() else {
                    return true;
                };
                let (body, cid) = m.data.split_at(m.data.len() - 1);
                assert_eq!(body, msg.as_bytes(), "the answer to {msg}");
                *by.entry(cid[0]).or_insert(0) += 1;
                ep.shutdown(SHUTDOWN_BOTH);
                false
            });
            let mut moved = client.pump();
            for w in workers.iter_mut() {
                moved |= w.pump();
            }
            if !moved {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        done += k;
    }
    // Every connection closes: nothing is left open on either side.
    let mut apps: Vec<&mut App> = std::iter::once(client).chain(workers.iter_mut()).collect();
    run_until(&mut apps, |a| a.iter().all(|x| x.eps.is_empty()));
    assert_eq!(by.values().sum::<u32>(), n, "{by:?}");
    by
}

/// The counters of port `name` in the server's latest snapshot once `ready` holds for them.
pub(super) fn port_counters(
    server: &Server,
    name: &str,
    mut ready: impl FnMut(&std::collections::BTreeMap<&'static str, u64>) -> bool,
) -> std::collections::BTreeMap<&'static str, u64> {
    let snap = snapshot_when(server, |s| {
        s.ports.iter().any(|p| p.name == name && ready(&p.counters))
    });
    let p = snap.ports.into_iter().find(|p| p.name == name).unwrap();
    p.counters
}

#[test]
fn every_policy_spreads_connections_as_it_promises() {
    const N: u32 = 120;
    for kind in ["wrr", "byte_share", "p2c", "expected_delay", "maglev"] {
        let (_dir, server, mut client, mut workers) = world(
            &format!("conn-{kind}"),
            &[(4, 1.0), (5, 2.0), (6, 3.0)],
            8,
            &conn_mode(&format!("policy = {{ kind = \"{kind}\" }}\n{POLICY_ONLY}")),
        );
        // Six connect requests at a time: policies that weigh what is in flight see some.
        let by = connections(&mut client, &mut workers, N, 6);
        let n = |cid: u8| by.get(&cid).copied().unwrap_or(0);
        let (a, b, c) = (n(4), n(5), n(6));
        match kind {
            // Each backend its weight's share: 20, 40, 60.
            "wrr" | "byte_share" => assert!(
                (16..=24).contains(&a) && (34..=46).contains(&b) && (52..=68).contains(&c),
                "{kind}: weights 1:2:3 gave {a}:{b}:{c}"
            ),
            // Weighted by what each has in flight: each gets some, the heaviest most.
            "p2c" => assert!(
                a > 0 && b > 0 && a < c && b < c,
                "{kind}: weights 1:2:3 gave {a}:{b}:{c}"
            ),
            // Weight times measured drain (which varies with the machine's load): each gets
            // some, the lightest the fewest.
            "expected_delay" => assert!(
                a > 0 && a < b && a < c,
                "{kind}: weights 1:2:3 gave {a}:{b}:{c}"
            ),
            // The affinity key is the client's CID: one client, one backend.
            _ => assert!(
                [a, b, c].iter().filter(|&&x| x == N).count() == 1,
                "{kind}: one client's connections spread as {a}:{b}:{c}"
            ),
        }
        let snap = snapshot_when(&server, |s| s.services[0].stats.replies == u64::from(N));
        let s = &snap.services[0].stats;
        assert_eq!(
            (s.requests, s.redispatches),
            (u64::from(N), 0),
            "{kind}: {s:?}"
        );
        let front = port_counters(&server, "svc-echo", |c| c["closed"] == u64::from(N));
        assert_eq!(front["connections_accepted"], u64::from(N), "{front:?}");
        assert_eq!(front["conns_open"], 0, "{front:?}");
        assert_eq!(front["retried"] + front["reset_no_backend"], 0, "{front:?}");
        eprintln!("{kind}: {a}:{b}:{c}");
        server.shutdown().unwrap();
    }
}

/// A byte pattern of `len` bytes.
fn bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 + i / 4096) as u8).collect()
}

/// A STREAM echo on the client's connection `key`: `data` written as credit allows, the echo
/// read back.
struct Echo {
    key: (u32, u64, u32),
    data: Vec<u8>,
    sent: usize,
    got: Vec<u8>,
}

impl Echo {
    fn new(key: (u32, u64, u32), data: Vec<u8>) -> Self {
        Self {
            key,
            data,
            sent: 0,
            got: Vec::new(),
        }
    }

    /// Runs until all of the data came back or `stop` says so.
    fn run(
        &mut self,
        client: &mut App,
        workers: &mut [App],
        mut stop: impl FnMut(&mut App, &mut [App]) -> bool,
    ) {
        let mut buf = vec![0u8; 64 * 1024];
        let give_up = Instant::now() + PATIENCE;
        while self.got.len() < self.data.len() && !stop(client, workers) {
            let (got, len) = (self.got.len(), self.data.len());
            assert!(Instant::now() < give_up, "echoed {got} of {len}");
            let ep = client.eps.get_mut(&self.key).expect("the connection lives");
            assert_ne!(ep.state(), EndpointState::Closed, "reset");
            self.sent += ep.write(&self.data[self.sent..]);
            loop {
                let n = ep.read(&mut buf);
                if n == 0 {
                    break;
                }
                self.got.extend_from_slice(&buf[..n]);
            }
            let mut moved = client.pump();
            for w in workers.iter_mut() {
                moved |= w.pump();
            }
            if !moved {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
}

#[test]
fn stream_data_flows_both_ways_and_each_side_sees_only_the_service() {
    const LOAD_PORT: u32 = 5001;
    let (_dir, server, mut client, mut workers) = world(
        "conn-stream",
        &[(4, 1.0)],
        8,
        &conn_mode(&format!("load_port = {LOAD_PORT}")),
    );
    // More than the credit cap (256 KiB) each way, in pieces of every size up to 64 KiB.
    let key = client.connect_with(SocketType::Stream, SERVICE_PORT);
    let mut echo = Echo::new(key, bytes(600 * 1024 + 17));
    echo.run(&mut client, &mut workers, |_, _| false);
    assert!(echo.got == echo.data, "the echo differs from what was sent");
    // The client only ever heard from the service's address; the backend only from the
    // service's CID, on ports vmq chose, never from the client's CID.
    let svc = SockAddr::new(SERVICE_CID, SERVICE_PORT);
    assert_eq!(client.sources.iter().collect::<Vec<_>>(), vec![&svc]);
    let w = &workers[0];
    assert!(!w.sources.is_empty());
    assert!(
        w.sources
            .iter()
            .all(|s| s.cid == SERVICE_CID && s.port >= SERVICE_BACKEND_PORTS),
        "{:?}",
        w.sources
    );
    // Load reports work as in message mode.
    let rk = workers[0].connect_to(LOAD_PORT);
    run_until(&mut [&mut workers[0]], |w| {
        w[0].eps[&rk].state() == EndpointState::Established
    });
    let ep = workers[0].eps.get_mut(&rk).unwrap();
    ep.write_message(b"load 300", true).unwrap();
    workers[0].pump();
    let c = port_counters(&server, "svc-echo-vm4", |c| c["load_reports"] == 1);
    assert_eq!((c["conns_established"], c["accepted"]), (1, 1), "{c:?}");
    server.shutdown().unwrap();
}

#[test]
fn a_backend_that_stops_reading_stalls_its_client_and_nothing_is_lost() {
    let (_dir, server, mut client, mut workers) =
        world("conn-credit", &[(4, 1.0)], 8, &conn_mode(""));
    let key = client.connect_with(SocketType::Stream, SERVICE_PORT);
    run_until(&mut [&mut client, &mut workers[0]], |a| {
        a[0].eps[&key].state() == EndpointState::Established
    });
    workers[0].reading = false;
    let mut echo = Echo::new(key, bytes(1024 * 1024));
    // The backend's buffer fills (256 KiB, its whole credit) and the client can send no more.
    echo.run(&mut client, &mut workers, |c, w| {
        let backend_full = w[0].eps.values().any(|e| e.readable() == 256 * 1024);
        backend_full && c.eps[&key].peer_free() == 0
    });
    assert!(echo.got.is_empty());
    // Nothing more moves while it does not read: the client is stalled, not reset.
    for _ in 0..50 {
        client.pump();
        workers[0].pump();
        std::thread::sleep(Duration::from_millis(1));
    }
    let ep = &client.eps[&key];
    assert_eq!(ep.state(), EndpointState::Established);
    assert_eq!((ep.peer_free(), ep.credit().unacked()), (0, 256 * 1024));
    assert!(workers[0].eps.values().all(|e| e.readable() == 256 * 1024));
    // It reads again: everything arrives, in order.
    workers[0].reading = true;
    echo.run(&mut client, &mut workers, |_, _| false);
    assert!(echo.got == echo.data, "the echo differs from what was sent");
    let c = port_counters(&server, "svc-echo", |c| c["reset_by_vmq"] == 0);
    assert_eq!(c["conns_open"], 1, "{c:?}");
    server.shutdown().unwrap();
}

#[test]
fn a_connection_services_counters_are_in_the_metrics() {
    use crate::metrics::tests::{assert_exposition_matches, Parsed};
    use crate::metrics::{fetch, MetricsConfig};
    let dir = Dir::new("conn-metrics");
    let mut cfg = service_config_with(&dir, &[(4, 1.0)], 8, &conn_mode(""));
    cfg.metrics = Some(MetricsConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
    });
    let server = Server::start(&cfg).unwrap();
    let addr = server.metrics_addr().expect("listens").to_string();
    let mut client = App::new(&dir, 3, None);
    let mut workers = vec![App::new(&dir, 4, Some(SERVICE_PORT))];
    wait_connected(&server);
    connections(&mut client, &mut workers, 3, 1);
    // Once two snapshots around a scrape agree (and show the closes), the scrape is theirs.
    let give_up = Instant::now() + PATIENCE;
    let (snap, text) = loop {
        let before = server.snapshot();
        let text = fetch(&addr, "/metrics");
        let after = server.snapshot();
        if let (Some(s), Ok(t), Some(a)) = (before, text, after) {
            let closed = s.ports.iter().any(|p| p.counters.get("closed") == Some(&3));
            let same =
                serde_json::to_value(&s.ports).unwrap() == serde_json::to_value(&a.ports).unwrap();
            if closed && same {
                break (s, t);
            }
        }
        assert!(Instant::now() < give_up, "never settled");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_exposition_matches(&snap, &text);
    let m = Parsed::new(&text);
    let front = [("port", "svc-echo")];
    assert_eq!(m.get("vmq_port_connections_accepted_total", &front), 3.0);
    assert_eq!(m.get("vmq_port_conns_open", &front), 0.0);
    let member = [("port", "svc-echo-vm4")];
    assert_eq!(m.get("vmq_port_accepted_total", &member), 3.0);
    assert_eq!(m.get("vmq_port_pending_connects", &member), 0.0);
    server.shutdown().unwrap();
}

#[test]
fn a_drained_member_takes_no_new_connection_keeps_its_own_and_leaves_when_they_close() {
    let (_dir, server, mut client, mut workers) = world(
        "conn-drain",
        &[(4, 1.0), (5, 1.0)],
        4,
        &conn_mode(&format!("policy = {{ kind = \"wrr\" }}\n{POLICY_ONLY}")),
    );
    // Equal weights: one connection each.
    let kept = open_conns(&mut client, &mut workers, 2);
    assert_eq!((workers[0].accepted, workers[1].accepted), (1, 1));
    let r = server.drain("echo", 4).unwrap();
    assert_eq!((r.member, r.active_left), (4, 1), "{r}");
    // New connections go to the member that stays.
    let fresh = open_conns(&mut client, &mut workers, 4);
    assert_eq!((workers[0].accepted, workers[1].accepted), (1, 5));
    // The drained member's connection still carries messages both ways, and so does it port
    // while its member is gone from the service.
    for k in &kept {
        let ep = client.eps.get_mut(k).unwrap();
        ep.write_message(b"still", true).unwrap();
    }
    let mut from = Vec::new();
    let mut apps: Vec<&mut App> = std::iter::once(&mut client)
        .chain(workers.iter_mut())
        .collect();
    run_until(&mut apps, |a| {
        for k in &kept {
            if let Some(m) = a[0].eps.get_mut(k).and_then(|e| e.read_message()) {
                assert_eq!(&m.data[..5], b"still");
                from.push(m.data[5]);
            }
        }
        from.len() == 2
    });
    from.sort();
    assert_eq!(
        from,
        [4, 5],
        "each kept connection answered by its own backend"
    );
    let snap = snapshot_when(&server, |s| {
        s.services[0]
            .members
            .iter()
            .any(|m| m.name == "svc-echo-vm4" && m.state == "gone")
    });
    let port4 = snap
        .ports
        .iter()
        .find(|p| p.name == "svc-echo-vm4")
        .unwrap();
    assert!(!port4.down, "its port stays while its connection is open");
    // Every connection closes; then the drained member's port goes.
    for k in kept.iter().chain(&fresh) {
        apps[0].eps.get_mut(k).unwrap().shutdown(SHUTDOWN_BOTH);
    }
    run_until(&mut apps, |a| a.iter().all(|x| x.eps.is_empty()));
    snapshot_when(&server, |s| {
        s.ports.iter().any(|p| p.name == "svc-echo-vm4" && p.down)
    });
    server.shutdown().unwrap();
}

/// Opens `n` SEQPACKET connections from `client` and waits until all are established.
fn open_conns(client: &mut App, workers: &mut [App], n: usize) -> Vec<(u32, u64, u32)> {
    open_conns_at(client, workers, SERVICE_CID, n)
}

/// [`open_conns`] to the service at CID `cid`.
fn open_conns_at(
    client: &mut App,
    workers: &mut [App],
    cid: u64,
    n: usize,
) -> Vec<(u32, u64, u32)> {
    let keys: Vec<_> = (0..n)
        .map(|_| client.connect_at(cid, SERVICE_PORT))
        .collect();
    let mut apps: Vec<&mut App> = std::iter::once(client).chain(workers.iter_mut()).collect();
    run_until(&mut apps, |a| {
        keys.iter().all(|k| {
            a[0].eps
                .get(k)
                .is_some_and(|e| e.state() == EndpointState::Established)
        })
    });
    keys
}

/// Sends `msg` on each of `keys` and returns the CIDs of the backends that answered.
fn ask(client: &mut App, workers: &mut [App], keys: &[(u32, u64, u32)], msg: &[u8]) -> Vec<u8> {
    for k in keys {
        client
            .eps
            .get_mut(k)
            .unwrap()
            .write_message(msg, true)
            .unwrap();
    }
    let mut from = Vec::new();
    let mut apps: Vec<&mut App> = std::iter::once(client).chain(workers.iter_mut()).collect();
    run_until(&mut apps, |a| {
        for k in keys {
            if let Some(m) = a[0].eps.get_mut(k).and_then(|e| e.read_message()) {
                assert_eq!(&m.data[..msg.len()], msg);
                from.push(m.data[msg.len()]);
            }
        }
        from.len() == keys.len()
    });
    from.sort();
    from
}

#[test]
fn a_reload_moves_a_connection_services_members_and_keeps_their_connections() {
    // wrr: the spread asserted is its, not a tie-break of p2c's random draws.
    let extra = conn_mode(
        "policy = { kind = \"wrr\" }\n\
         health = { weights = { drain = 0.0, latency = 0.0, in_flight = 0.0, free_rx = 0.0 } }\n\
         failover = { stall_window_ns = 60000000000, slow_start_ns = 0 }",
    );
    let both = [(4, 1.0), (5, 1.0)];
    let (dir, server, mut client, mut workers) = world("conn-reload", &both, 4, &extra);
    let full = service_config_with(&dir, &both, 4, &extra);
    let kept = open_conns(&mut client, &mut workers, 2);
    assert_eq!((workers[0].accepted, workers[1].accepted), (1, 1));
    // Member 5 leaves the file: it drains, and new connections go to 4 only.
    let mut only4 = full.clone();
    only4.service[0].members.retain(|m| m.cid == 4);
    let r = server.apply(only4).unwrap();
    assert_eq!(r.drained.len(), 1, "{r}");
    assert_eq!(r.drained[0].member, 5, "{r}");
    let fresh = open_conns(&mut client, &mut workers, 2);
    assert_eq!((workers[0].accepted, workers[1].accepted), (3, 1));
    // Its connection goes on, as do the others.
    assert_eq!(ask(&mut client, &mut workers, &kept, b"kept"), [4, 5]);
    // Back in the file: it takes new connections again (on the port that still carries its
    // connection), and nothing was reset.
    let r = server.apply(full).unwrap();
    assert_eq!(r.joined, [("echo".to_string(), 5)], "{r}");
    let more = open_conns(&mut client, &mut workers, 4);
    assert_eq!((workers[0].accepted, workers[1].accepted), (5, 3));
    let all: Vec<_> = kept.iter().chain(&fresh).chain(&more).copied().collect();
    assert_eq!(ask(&mut client, &mut workers, &all, b"all").len(), 8);
    let front = port_counters(&server, "svc-echo", |_| true);
    assert_eq!(front["reset_by_vmq"], 0, "{front:?}");
    server.shutdown().unwrap();
}

#[test]
fn a_reload_adds_and_removes_a_connection_service_and_the_other_keeps_its_connections() {
    let extra = conn_mode(&format!("policy = {{ kind = \"wrr\" }}\n{POLICY_ONLY}"));
    let both = [(4, 1.0), (5, 1.0)];
    let (dir, server, mut client, mut workers) = world("conn-add-remove", &both, 4, &extra);
    let base = service_config_with(&dir, &both, 4, &extra);
    let kept = open_conns(&mut client, &mut workers, 2);
    // A second connection service, at CID 101 over the same VMs, comes with a reload.
    let mut grown = base.clone();
    let mut second = grown.service[0].clone();
    second.name = "echo2".into();
    second.cid = SERVICE_CID + 1;
    grown.service.push(second);
    let r = server.apply(grown.clone()).unwrap();
    assert_eq!(r.added, ["echo2"], "{r}");
    let added = open_conns_at(&mut client, &mut workers, SERVICE_CID + 1, 2);
    assert_eq!(ask(&mut client, &mut workers, &added, b"second"), [4, 5]);
    // The backends see the new service's address, never the client's.
    assert!(workers
        .iter()
        .all(|w| w.eps.keys().filter(|k| k.1 == SERVICE_CID + 1).count() == 1));
    // It goes again: its connections are reset at both ends, at once.
    let r = server.apply(base).unwrap();
    assert_eq!(r.removed.len(), 1, "{r}");
    assert_eq!(
        (r.removed[0].name.as_str(), r.removed[0].clients_reset),
        ("echo2", 2),
        "{r}"
    );
    let mut apps: Vec<&mut App> = std::iter::once(&mut client)
        .chain(workers.iter_mut())
        .collect();
    run_until(&mut apps, |a| {
        added.iter().all(|k| !a[0].eps.contains_key(k))
            && a[1..]
                .iter()
                .all(|w| !w.eps.keys().any(|k| k.1 == SERVICE_CID + 1))
    });
    for k in &added {
        assert_eq!(client.closed[k], Some(CloseReason::PeerReset), "{k:?}");
    }
    // New connections to its address are refused.
    let refused = client.connect_at(SERVICE_CID + 1, SERVICE_PORT);
    let mut apps: Vec<&mut App> = std::iter::once(&mut client)
        .chain(workers.iter_mut())
        .collect();
    run_until(&mut apps, |a| !a[0].eps.contains_key(&refused));
    // The first service's connections never noticed.
    assert_eq!(ask(&mut client, &mut workers, &kept, b"kept"), [4, 5]);
    let front = port_counters(&server, "svc-echo", |_| true);
    assert_eq!(front["reset_by_vmq"], 0, "{front:?}");
    // And it can come back, on the ports its name had.
    server.apply(grown).unwrap();
    let again = open_conns_at(&mut client, &mut workers, SERVICE_CID + 1, 2);
    assert_eq!(ask(&mut client, &mut workers, &again, b"again"), [4, 5]);
    server.shutdown().unwrap();
}

#[test]
fn p2c_and_expected_delay_give_new_connections_to_the_backend_holding_fewest() {
    for kind in ["p2c", "expected_delay"] {
        let extra = conn_mode(&format!(
            "policy = {{ kind = \"{kind}\" }}\n\
             health = {{ weights = {{ drain = 0.0, latency = 0.0, in_flight = 0.0, free_rx = 0.0 }} }}\n\
             failover = {{ stall_window_ns = 60000000000, slow_start_ns = 0 }}"
        ));
        let (_dir, server, mut client, mut workers) = world(
            &format!("conn-least-{kind}"),
            &[(4, 1.0), (5, 1.0)],
            4,
            &extra,
        );
        // One at a time, kept open: each goes to the one holding fewer, so they pair up.
        let mut by_worker: HashMap<u8, Vec<(u32, u64, u32)>> = HashMap::new();
        for n in 0..4 {
            let key = open_conns(&mut client, &mut workers, 1)[0];
            let cid = ask(
                &mut client,
                &mut workers,
                &[key],
                format!("c{n}").as_bytes(),
            )[0];
            by_worker.entry(cid).or_default().push(key);
        }
        let held = |cid: u8| by_worker.get(&cid).map_or(0, Vec::len);
        assert_eq!((held(4), held(5)), (2, 2), "{kind}: {by_worker:?}");
        // Worker 4's connections close; once the switch has seen it, the next two go to 4.
        for key in &by_worker[&4] {
            client.eps.get_mut(key).unwrap().shutdown(SHUTDOWN_BOTH);
        }
        let gone = by_worker[&4].clone();
        let mut apps: Vec<&mut App> = std::iter::once(&mut client)
            .chain(workers.iter_mut())
            .collect();
        run_until(&mut apps, |a| {
            gone.iter().all(|k| !a[0].eps.contains_key(k))
        });
        snapshot_when(&server, |s| {
            let held: Vec<u32> = s.services[0].members.iter().map(|m| m.held).collect();
            held == [0, 2]
        });
        let accepted = (workers[0].accepted, workers[1].accepted);
        let fresh = open_conns(&mut client, &mut workers, 1);
        let more = open_conns(&mut client, &mut workers, 1);
        assert_eq!(
            (workers[0].accepted, workers[1].accepted),
            (accepted.0 + 2, accepted.1),
            "{kind}"
        );
        let all: Vec<_> = by_worker[&5]
            .iter()
            .chain(&fresh)
            .chain(&more)
            .copied()
            .collect();
        assert_eq!(ask(&mut client, &mut workers, &all, b"all"), [4, 4, 5, 5]);
        server.shutdown().unwrap();
    }
}
