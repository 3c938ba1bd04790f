//! `message` services without guests: client and backend applications played by endpoints on
//! VMMs written in Rust, through the whole server. (`connection` services reuse the setup.)

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::*;
use crate::vsock::endpoint::{CloseReason, Endpoint, EndpointConfig, EndpointState};

pub(super) const SERVICE_CID: u64 = 100;
pub(super) const SERVICE_PORT: u32 = 5000;

/// A guest's applications: endpoints over its played VMM, the guest kernel's part (packets in
/// and out, credit) done by [`Endpoint`] as Linux's transport would.
pub(super) struct App {
    pub(super) g: VmmFrontend,
    cid: u64,
    /// Listening on this port (a backend): requests are accepted; others get an RST.
    pub(super) listen: Option<u32>,
    pub(super) eps: HashMap<(u32, u64, u32), Endpoint>,
    /// The next local port a client connection takes.
    next_port: u32,
    /// A backend's application answers (reads and replies) only while this is set.
    pub(super) reading: bool,
    pub(super) answered: u64,
    /// A slow application: answers one message in this many pumps (1: every pump).
    pub(super) slowness: u32,
    pumps: u32,
    /// Its vCPUs are stopped: neither its kernel nor its application runs (no rx buffer is
    /// taken or posted, nothing is sent).
    pub(super) frozen: bool,
    /// Connections accepted.
    pub(super) accepted: u64,
    /// Every source address a packet came from.
    pub(super) sources: HashSet<SockAddr>,
    /// Why each connection that ended closed, by its key.
    pub(super) closed: HashMap<(u32, u64, u32), Option<CloseReason>>,
}

impl App {
    pub(super) fn new(dir: &Dir, cid: u64, listen: Option<u32>) -> Self {
        Self {
            g: guest(&dir.sock(cid)),
            cid,
            listen,
            eps: HashMap::new(),
            next_port: 2000,
            reading: true,
            answered: 0,
            slowness: 1,
            pumps: 0,
            frozen: false,
            accepted: 0,
            sources: HashSet::new(),
            closed: HashMap::new(),
        }
    }

    /// Packets in and out until nothing moves; a backend answers what it reads: a message
    /// with the request's bytes and its CID, stream bytes with the same bytes.
    pub(super) fn pump(&mut self) -> bool {
        if self.frozen {
            return false;
        }
        let mut moved = false;
        let mut refused = Vec::new();
        while let Some(bytes) = self.g.recv().expect("rx works") {
            moved = true;
            let Ok(h) = PacketHeader::decode(&bytes) else {
                continue;
            };
            self.sources.insert(h.src());
            let data = &bytes[HEADER_LEN..HEADER_LEN + h.len as usize];
            let key = (h.dst_port, h.src_cid, h.src_port);
            if let Some(ep) = self.eps.get_mut(&key) {
                let _ = ep.on_packet(&h, data);
            } else if h.op == Op::Request as u16 && Some(h.dst_port) == self.listen {
                let ep = Endpoint::accept(EndpointConfig::default(), &h).expect("a request");
                self.eps.insert(key, ep);
                self.accepted += 1;
            } else if h.op == Op::Request as u16 {
                // Nobody listens there: Linux answers with an RST.
                refused.extend(h.rst_reply());
            }
        }
        for rst in refused {
            self.g.reclaim_tx().unwrap();
            self.g.send(&rst.encode()).expect("tx works");
        }
        self.pumps += 1;
        if self.reading && self.listen.is_some() && self.pumps % self.slowness == 0 {
            let mut budget = if self.slowness > 1 { 1 } else { usize::MAX };
            for ep in self.eps.values_mut() {
                while budget > 0 {
                    let Some(m) = ep.read_message() else {
                        break;
                    };
                    budget -= 1;
                    let mut reply = m.data;
                    reply.push(self.cid as u8);
                    let _ = ep.write_message(&reply, true);
                    self.answered += 1;
                }
                let mut buf = [0u8; 4096];
                while ep.socket_type() == SocketType::Stream {
                    let room = ep.send_space().min(buf.len());
                    let n = ep.read(&mut buf[..room]);
                    if n == 0 {
                        break;
                    }
                    ep.write(&buf[..n]);
                }
            }
        }
        for ep in self.eps.values_mut() {
            while let Some((h, p)) = ep.next_packet(4096) {
                self.g.reclaim_tx().unwrap();
                let mut v = h.encode().to_vec();
                v.extend_from_slice(&p);
                self.g.send(&v).expect("tx works");
                moved = true;
            }
        }
        self.g.reclaim_tx().unwrap();
        let closed = &mut self.closed;
        self.eps.retain(|&k, ep| {
            let keep = !ep.is_closed() || ep.messages_ready() > 0;
            if !keep {
                closed.insert(k, ep.close_reason().cloned());
            }
            keep
        });
        moved
    }

    /// Opens a SEQPACKET connection to the service from a port of its own.
    pub(super) fn connect(&mut self) -> (u32, u64, u32) {
        self.connect_to(SERVICE_PORT)
    }

    /// Opens a SEQPACKET connection to the service's CID, port `to`.
    pub(super) fn connect_to(&mut self, to: u32) -> (u32, u64, u32) {
        self.connect_with(SocketType::SeqPacket, to)
    }

    /// Opens a connection of type `ty` to the service's CID, port `to`.
    pub(super) fn connect_with(&mut self, ty: SocketType, to: u32) -> (u32, u64, u32) {
        self.connect_full(ty, SERVICE_CID, to)
    }

    /// Opens a SEQPACKET connection to `cid:to` from a port of its own.
    pub(super) fn connect_at(&mut self, cid: u64, to: u32) -> (u32, u64, u32) {
        self.connect_full(SocketType::SeqPacket, cid, to)
    }

    /// Opens a connection of type `ty` to `cid:to` from a port of its own.
    fn connect_full(&mut self, ty: SocketType, cid: u64, to: u32) -> (u32, u64, u32) {
        let port = self.next_port;
        self.next_port += 1;
        let ep = Endpoint::connect(
            EndpointConfig::default(),
            ty,
            SockAddr::new(self.cid, port),
            SockAddr::new(cid, to),
        )
        .unwrap();
        let key = (port, cid, to);
        self.eps.insert(key, ep);
        key
    }
}

fn service_config(dir: &Dir, workers: &[(u64, f64)], extra: &str) -> ServeConfig {
    service_config_with(dir, workers, 32, extra)
}

pub(super) fn service_config_with(
    dir: &Dir,
    workers: &[(u64, f64)],
    in_flight: u32,
    extra: &str,
) -> ServeConfig {
    let mut text = String::new();
    for cid in std::iter::once(3).chain(workers.iter().map(|w| w.0)) {
        text += &format!(
            "[[vm]]\ncid = {cid}\nsocket = \"{}\"\n\n",
            dir.sock(cid).display()
        );
    }
    text += &format!(
        "[[service]]\nname = \"echo\"\ncid = {SERVICE_CID}\nport = {SERVICE_PORT}\n{extra}\nmembers = ["
    );
    for (cid, w) in workers {
        text += &format!("{{ cid = {cid}, weight = {w}, max_in_flight = {in_flight} }},");
    }
    text += "]\n";
    ServeConfig::parse(&text, "test.toml").expect("a valid config")
}

/// A server with one service over `workers` (CID, weight; `in_flight` each, `extra` lines in
/// its table), client guest 3 and the workers' applications, every device started.
pub(super) fn world(
    name: &str,
    workers: &[(u64, f64)],
    in_flight: u32,
    extra: &str,
) -> (Dir, Server, App, Vec<App>) {
    let dir = Dir::new(name);
    let server = Server::start(&service_config_with(&dir, workers, in_flight, extra)).unwrap();
    let client = App::new(&dir, 3, None);
    let apps = workers
        .iter()
        .map(|&(c, _)| App::new(&dir, c, Some(SERVICE_PORT)))
        .collect();
    wait_connected(&server);
    (dir, server, client, apps)
}

/// Runs every app until `done` says so (or the patience runs out).
pub(super) fn run_until(apps: &mut [&mut App], mut done: impl FnMut(&mut [&mut App]) -> bool) {
    let give_up = Instant::now() + PATIENCE;
    while !done(apps) {
        assert!(Instant::now() < give_up, "gave up waiting");
        let mut moved = false;
        for a in apps.iter_mut() {
            moved |= a.pump();
        }
        if !moved {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// Sends `n` numbered messages from `client` on `conns` connections, `window` outstanding per
/// connection, and checks each answer: the request's bytes plus one byte (the worker's CID),
/// in order. Returns the answers per worker CID.
pub(super) fn exchange(
    client: &mut App,
    workers: &mut [App],
    conns: u32,
    n: u32,
    window: u32,
    on_answer: impl FnMut(u32, &mut [App]),
) -> HashMap<u8, u32> {
    let mut by_worker = HashMap::new();
    for per_conn in exchange_per_conn(client, workers, conns, n, window, on_answer) {
        for (w, k) in per_conn {
            *by_worker.entry(w).or_insert(0) += k;
        }
    }
    by_worker
}

/// [`exchange`], with the answers per worker CID of each connection.
pub(super) fn exchange_per_conn(
    client: &mut App,
    workers: &mut [App],
    conns: u32,
    n: u32,
    window: u32,
    mut on_answer: impl FnMut(u32, &mut [App]),
) -> Vec<HashMap<u8, u32>> {
    let keys: Vec<_> = (0..conns).map(|_| client.connect()).collect();
    let mut sent = vec![0u32; conns as usize];
    let mut got = vec![0u32; conns as usize];
    let per_conn = n / conns;
    let mut by_worker = vec![HashMap::new(); conns as usize];
    let give_up = Instant::now() + PATIENCE;
    let mut answers = 0;
    while got.iter().sum::<u32>() < per_conn * conns {
        assert!(
            Instant::now() < give_up,
            "answers missing: {got:?} of {per_conn} each"
        );
        for (i, key) in keys.iter().enumerate() {
            let ep = client.eps.get_mut(key).expect("the connection lives");
            assert_ne!(ep.state(), EndpointState::Closed, "connection {i} reset");
            while let Some(m) = ep.read_message() {
                let seq = got[i];
                let want = format!("conn {i} msg {seq}");
                assert_eq!(
                    &m.data[..m.data.len() - 1],
                    want.as_bytes(),
                    "answers in order"
                );
                *by_worker[i].entry(m.data[m.data.len() - 1]).or_insert(0) += 1;
                got[i] += 1;
                answers += 1;
                on_answer(answers, workers);
            }
            while sent[i] < per_conn && sent[i] - got[i] < window {
                let msg = format!("conn {i} msg {}", sent[i]);
                ep.write_message(msg.as_bytes(), true).unwrap();
                sent[i] += 1;
            }
        }
        let mut moved = client.pump();
        for w in workers.iter_mut() {
            moved |= w.pump();
        }
        if !moved {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    by_worker
}

/// The switch's snapshot once `ready` holds for it (it is renewed every 100 ms).
pub(super) fn snapshot_when(server: &Server, mut ready: impl FnMut(&Snapshot) -> bool) -> Snapshot {
    let give_up = Instant::now() + PATIENCE;
    loop {
        if let Some(s) = server.snapshot().filter(|s| ready(s)) {
            return s;
        }
        assert!(Instant::now() < give_up, "{:?}", server.snapshot());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_message_service_spreads_requests_by_weight_and_answers_each_in_order() {
    // Health left out (drain, latency, in flight, free buffers): what is measured here is the
    // policy's spread over the weights, not how loaded each backend looks.
    let (_dir, server, mut client, mut workers) = world(
        "svc-weights",
        &[(4, 1.0), (5, 2.0), (6, 3.0)],
        32,
        "policy = { kind = \"wrr\" }\n\
         health = { weights = { drain = 0.0, latency = 0.0, in_flight = 0.0, free_rx = 0.0 } }",
    );
    let by = exchange(&mut client, &mut workers, 2, 600, 4, |_, _| {});
    assert_eq!(by.values().sum::<u32>(), 600, "{by:?}");
    // Weighted round robin over 1:2:3.
    let (a, b, c) = (by[&4], by[&5], by[&6]);
    assert!(a < b && b < c, "weights 1:2:3 give {a}:{b}:{c}");
    // Health scores (reply latency, drain) move the weights a little around 1:2:3.
    assert!(
        (70..=130).contains(&a) && (250..=350).contains(&c),
        "{a}:{b}:{c}"
    );
    let snap = snapshot_when(&server, |s| s.services[0].stats.replies == 600);
    let s = &snap.services[0];
    assert_eq!(s.stats.requests, 600, "{s:?}");
    assert_eq!(s.stats.late_replies_dropped, 0);
    server.shutdown().unwrap();
}

/// Three backends; worker 5 is stopped by `stop` after the 100th answer. Every request is
/// answered once, and its work failed over. Returns the world, for what comes after.
pub(super) fn a_backend_stops_after_100(
    name: &str,
    stop: impl Fn(&mut App),
) -> (Dir, Server, App, Vec<App>) {
    let (dir, server, mut client, mut workers) = world(
        name,
        &[(4, 1.0), (5, 1.0), (6, 1.0)],
        32,
        "policy = { kind = \"wrr\" }\nfailover = { stall_window_ns = 50000000, max_ejection_percent = 50 }",
    );
    let by = exchange(&mut client, &mut workers, 2, 400, 4, |n, w| {
        if n == 100 {
            stop(&mut w[1]);
        }
    });
    assert_eq!(
        by.values().sum::<u32>(),
        400,
        "every request answered once: {by:?}"
    );
    let snap = snapshot_when(&server, |s| s.services[0].stats.replies == 400);
    let s = &snap.services[0];
    assert!(
        s.stats.redispatches > 0 && s.stats.stalls + s.stats.ejections > 0,
        "{s:?}"
    );
    (dir, server, client, workers)
}

#[test]
fn a_backend_whose_application_stops_reading_fails_over_and_nothing_is_lost() {
    // Worker 5's application stops reading: its kernel still takes packets, but its fwd_cnt
    // stops.
    let (_dir, server, mut client, mut workers) =
        a_backend_stops_after_100("svc-stall", |w| w.reading = false);
    let late = server.snapshot().unwrap().services[0]
        .stats
        .late_replies_dropped;
    // It wakes up: its late answers are dropped, the client sees none of them.
    workers[1].reading = true;
    run_until(&mut [&mut client, &mut workers[1]], |a| {
        a[1].eps.values().all(|e| e.messages_ready() == 0) && a[1].pump()
    });
    let snap = snapshot_when(&server, |s| s.services[0].stats.late_replies_dropped > late);
    assert_eq!(
        snap.services[0].stats.replies, 400,
        "{:?}",
        snap.services[0]
    );
    for ep in client.eps.values_mut() {
        assert!(
            ep.read_message().is_none(),
            "no answer beyond one per request"
        );
    }
    server.shutdown().unwrap();
}

#[test]
fn with_every_backend_stopped_the_client_connection_is_reset_after_the_deadline() {
    let dir = Dir::new("svc-dead");
    let cfg = service_config(&dir, &[(4, 1.0)], "request_timeout_ms = 200");
    let server = Server::start(&cfg).unwrap();
    let mut client = App::new(&dir, 3, None);
    let mut worker = App::new(&dir, 4, Some(SERVICE_PORT));
    worker.reading = false;
    wait_connected(&server);
    let key = client.connect();
    run_until(&mut [&mut client, &mut worker], |a| {
        a[0].eps[&key].state() == EndpointState::Established
    });
    client
        .eps
        .get_mut(&key)
        .unwrap()
        .write_message(b"anyone?", true)
        .unwrap();
    run_until(&mut [&mut client, &mut worker], |a| {
        a[0].eps
            .get(&key)
            .is_none_or(|e| e.state() == EndpointState::Closed)
    });
    let snap = snapshot_when(&server, |s| s.services[0].stats.failed_back == 1);
    let front = snap.ports.iter().find(|p| p.name == "svc-echo").unwrap();
    assert_eq!(front.counters["reset_no_backend"], 1, "{front:?}");
    assert_eq!(snap.services[0].stats.failed_back, 1);
    server.shutdown().unwrap();
}

#[test]
fn a_service_refuses_stream_connections_and_wrong_ports_and_a_bad_config_says_why() {
    let dir = Dir::new("svc-refuse");
    let cfg = service_config(&dir, &[(4, 1.0)], "");
    let server = Server::start(&cfg).unwrap();
    let mut client = App::new(&dir, 3, None);
    let _worker = App::new(&dir, 4, Some(SERVICE_PORT));
    wait_connected(&server);
    let svc = SockAddr::new(SERVICE_CID, SERVICE_PORT);
    let me = SockAddr::new(3, 2000);
    client
        .g
        .send(&packet(SocketType::Stream, Op::Request, me, svc, 0, &[]))
        .unwrap();
    let (h, _) = recv(&mut client.g);
    assert_eq!(h.op, Op::Rst as u16, "STREAM refused in message mode");
    client.g.reclaim_tx().unwrap();
    let other = SockAddr::new(SERVICE_CID, SERVICE_PORT + 1);
    client
        .g
        .send(&packet(
            SocketType::SeqPacket,
            Op::Request,
            me,
            other,
            0,
            &[],
        ))
        .unwrap();
    let (h, _) = recv(&mut client.g);
    assert_eq!(h.op, Op::Rst as u16, "another port refused");
    server.shutdown().unwrap();

    for (extra, field) in [
        ("mode = \"connections\"", "connection"),
        ("connect_timeout_ms = 0", "connect_timeout_ms"),
        ("max_message_kib = 65", "max_message_kib"),
        (
            "failover = { stall_window_ns = 0 }",
            "failover.stall_window_ns",
        ),
    ] {
        let text = format!(
            "[[vm]]\ncid = 3\nsocket = \"/tmp/x.sock\"\n[[service]]\nname = \"s\"\ncid = 9\nport = 1\n{extra}\nmembers = [{{ cid = 3 }}]\n"
        );
        let e = ServeConfig::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(e.contains(field), "{extra}: {e}");
    }
    let text = "[[vm]]\ncid = 3\nsocket = \"/tmp/x.sock\"\n[[service]]\nname = \"s\"\ncid = 3\nport = 1\nmembers = [{ cid = 3 }]\n";
    let e = ServeConfig::parse(text, "t.toml").unwrap_err().to_string();
    assert!(e.contains("service[0] (s).cid"), "{e}");
}

#[test]
fn a_backend_whose_vmm_goes_away_fails_over_and_nothing_is_lost() {
    let (dir, server, mut client, mut workers) = world(
        "svc-crash",
        &[(4, 1.0), (5, 1.0), (6, 1.0)],
        32,
        "failover = { stall_window_ns = 50000000, max_ejection_percent = 50 }",
    );
    // Worker 5 stops answering after the 100th answer and crashes 40 answers later: its VMM
    // closes the vhost-user socket (its requests in flight are gone with it) and a VMM that
    // never starts the device takes its place.
    let by = exchange(&mut client, &mut workers, 2, 400, 4, |n, w| {
        if n == 100 {
            w[1].reading = false;
        }
        if n == 140 {
            w[1].g = VmmFrontend::connect_raw(dir.sock(5), FrontendConfig::default())
                .expect("the socket accepts again");
        }
    });
    assert_eq!(
        by.values().sum::<u32>(),
        400,
        "every request answered once: {by:?}"
    );
    let snap = snapshot_when(&server, |s| s.services[0].stats.replies == 400);
    let s = &snap.services[0];
    assert!(s.stats.redispatches > 0, "{s:?}");
    let crashed = snap
        .ports
        .iter()
        .find(|p| p.name == "svc-echo-vm5")
        .unwrap();
    assert!(crashed.counters["requests_dropped"] > 0, "{crashed:?}");
    assert_eq!(crashed.counters["connections"], 0, "{crashed:?}");
    server.shutdown().unwrap();
}

/// Two backends, one answering one message in 20 pumps, under `policy`: the slow one gets
/// fewer, and every request is answered once.
pub(super) fn a_slow_backend_gets_less(name: &str, policy: &str) {
    let (_dir, server, mut client, mut workers) = world(
        name,
        &[(4, 1.0), (5, 1.0)],
        32,
        &format!("policy = {{ kind = \"{policy}\" }}"),
    );
    workers[0].slowness = 20;
    let by = exchange(&mut client, &mut workers, 4, 400, 4, |_, _| {});
    assert_eq!(by.values().sum::<u32>(), 400, "{by:?}");
    let (slow, fast) = (by.get(&4).copied().unwrap_or(0), by[&5]);
    assert!(
        slow < fast,
        "{policy}: the slow backend got {slow}, the fast one {fast}"
    );
    server.shutdown().unwrap();
}

#[test]
fn a_slow_backend_gets_less_and_every_request_is_answered_once() {
    a_slow_backend_gets_less("svc-slow", "expected_delay");
}

#[test]
fn a_backend_that_answers_what_it_was_not_asked_harms_nobody_else() {
    let (_dir, server, mut client, mut workers) = world(
        "svc-hostile",
        &[(4, 1.0), (5, 1.0)],
        32,
        "policy = { kind = \"wrr\" }",
    );
    // Worker 4 sends data on a connection of the service's it was never given, and, once
    // its connections are idle, a message on each that answers nothing.
    let forged = SockAddr::new(SERVICE_CID, crate::port::vsock::SERVICE_BACKEND_PORTS + 777);
    workers[0]
        .g
        .send(&packet(
            SocketType::SeqPacket,
            Op::Rw,
            SockAddr::new(4, SERVICE_PORT),
            forged,
            0,
            b"hi",
        ))
        .unwrap();
    let (h, _) = recv(&mut workers[0].g);
    assert_eq!(
        (h.op, h.src()),
        (Op::Rst as u16, forged),
        "no such connection"
    );
    workers[0].g.reclaim_tx().unwrap();
    let by = exchange(&mut client, &mut workers, 2, 100, 4, |_, _| {});
    assert_eq!(by.values().sum::<u32>(), 100, "{by:?}");
    snapshot_when(&server, |s| s.services[0].stats.replies == 100);
    let idle = workers[0].eps.len();
    assert!(idle > 0);
    for ep in workers[0].eps.values_mut() {
        ep.write_message(b"unasked", true).unwrap();
    }
    let snap = snapshot_when(&server, |s| {
        let bad = s.ports.iter().find(|p| p.name == "svc-echo-vm4").unwrap();
        workers[0].pump();
        bad.counters["unsolicited"] == idle as u64
    });
    let bad = snap
        .ports
        .iter()
        .find(|p| p.name == "svc-echo-vm4")
        .unwrap();
    assert_eq!(
        bad.counters["connections"], 0,
        "its connections were reset: {bad:?}"
    );
    // Nothing reached the client, and the service goes on (on new connections).
    for ep in client.eps.values_mut() {
        assert!(
            ep.read_message().is_none(),
            "an answer nobody asked for got through"
        );
    }
    let by = exchange(&mut client, &mut workers, 2, 100, 4, |_, _| {});
    assert_eq!(by.values().sum::<u32>(), 100, "{by:?}");
    server.shutdown().unwrap();
}

pub(super) const LOAD_PORT: u32 = 5001;

/// Worker `w` reports `load` on its connection `key` to the load port.
pub(super) fn report(w: &mut App, key: (u32, u64, u32), load: u16) {
    if let Some(ep) = w.eps.get_mut(&key) {
        let _ = ep.write_message(format!("load {load}").as_bytes(), true);
    }
}

#[test]
fn load_reports_on_the_load_port_change_the_picks() {
    // Eight requests in flight per backend, four in all: no backend is ever full, so the
    // picks follow the weights that health (with the reports) gives.
    let (_dir, server, mut client, mut workers) = world(
        "svc-load",
        &[(4, 1.0), (5, 1.0)],
        8,
        &format!("load_port = {LOAD_PORT}\npolicy = {{ kind = \"wrr\" }}"),
    );
    let keys = [
        workers[0].connect_to(LOAD_PORT),
        workers[1].connect_to(LOAD_PORT),
    ];
    let (w4, w5) = workers.split_at_mut(1);
    run_until(&mut [&mut w4[0], &mut w5[0]], |w| {
        w.iter()
            .zip(keys)
            .all(|(a, k)| a.eps[&k].state() == EndpointState::Established)
    });
    // Worker 4 says it is busy (700: below "saturated", which a backend that drains this well
    // could not claim without being suspected), worker 5 idle, every 10 answers (reports live
    // 100 ms).
    let by = exchange(&mut client, &mut workers, 2, 3000, 2, |n, w| {
        if n % 10 == 1 {
            report(&mut w[0], keys[0], 700);
            report(&mut w[1], keys[1], 0);
        }
    });
    assert_eq!(by.values().sum::<u32>(), 3000);
    let (busy, idle) = (by.get(&4).copied().unwrap_or(0), by[&5]);
    // A report of 700 takes its load metric to 0.3 (a health of about 0.82): about 45:55.
    assert!(
        busy * 20 < idle * 19,
        "the busy backend got {busy}, the idle one {idle}: {:?}",
        server.snapshot()
    );
    let snap = snapshot_when(&server, |s| s.services[0].stats.replies == 3000);
    let p = snap
        .ports
        .iter()
        .find(|p| p.name == "svc-echo-vm4")
        .unwrap();
    assert!(
        p.counters["load_reports"] > 0 && p.counters["bad_reports"] == 0,
        "{p:?}"
    );

    server.shutdown().unwrap();
}
