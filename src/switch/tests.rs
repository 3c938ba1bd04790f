//! The switch end to end with in-process peers (host threads' worth of driver code, run
//! step by step here) and an injected clock: no wall-clock anywhere.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use proptest::prelude::*;
use vm_memory::GuestMemoryMmap;

use super::*;
use crate::peer::{host_peer, HostPeer, PeerConfig};
use crate::wire::{MsgHeader, MsgKind, Status};

const STEP_NS: u64 = 50_000;

struct Peer {
    h: HostPeer,
    buf: Vec<u8>,
}

impl Peer {
    /// Everything delivered since last time (rx buffers re-posted and published).
    fn recv_all(&mut self) -> Vec<(MsgHeader, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(m) = self.h.rx.recv(&mut self.buf).unwrap() {
            out.push((m.header, self.buf[..m.len].to_vec()));
        }
        self.h.rx.flush().unwrap();
        self.h.tx.reclaim().unwrap();
        out
    }

    fn send(&mut self, h: &MsgHeader, payload: &[u8]) -> bool {
        self.h.tx.reclaim().unwrap();
        if self.h.tx.free() == 0 {
            return false;
        }
        self.h.tx.send(h, payload).unwrap();
        self.h.tx.flush().unwrap();
        true
    }

    /// Serves up to `max` requests: echo the payload with `status`. Returns requests served.
    fn serve(&mut self, max: usize, status: Status) -> usize {
        let mut n = 0;
        while n < max {
            if self.h.tx.free() == 0 {
                self.h.tx.reclaim().unwrap();
                if self.h.tx.free() == 0 {
                    break;
                }
            }
            let Some(m) = self.h.rx.recv(&mut self.buf).unwrap() else {
                break;
            };
            if m.header.kind() != Some(MsgKind::Request) {
                continue;
            }
            let rep = MsgHeader::reply_to(&m.header, status, m.len as u32);
            let payload = self.buf[..m.len].to_vec();
            self.h.tx.send(&rep, &payload).unwrap();
            n += 1;
        }
        self.h.rx.flush().unwrap();
        self.h.tx.flush().unwrap();
        n
    }
}

struct Net {
    sw: Switch<GuestMemoryMmap>,
    clock: ManualClock,
    peers: Vec<Peer>,
}

fn net(n: usize, queue_size: u16) -> Net {
    let clock = ManualClock::new(1_000_000);
    let mut sw = Switch::new(SwitchConfig::default(), Arc::new(clock.clone())).unwrap();
    let mut peers = Vec::new();
    for i in 0..n {
        let (h, dev) = host_peer(PeerConfig {
            queue_size,
            slot_size: 256,
            event_idx: true,
        })
        .unwrap();
        sw.add_port(&format!("p{i}"), dev, Box::new(Polling))
            .unwrap();
        peers.push(Peer {
            h,
            buf: vec![0; 256],
        });
    }
    Net { sw, clock, peers }
}

impl Net {
    fn step(&mut self) {
        self.clock.advance(STEP_NS);
        self.sw.poll();
    }

    fn service(&mut self, name: &str, policy: PolicyKind, members: &[(u32, f64)]) -> ServiceId {
        let mut cfg = ServiceConfig::default();
        cfg.policy.kind = policy;
        self.sw.add_service(name, cfg, members).unwrap()
    }
}

fn payload(id: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (id as usize * 7 + i) as u8).collect()
}

#[test]
fn hello_tells_each_port_its_id_and_the_directory() {
    let mut n = net(2, 16);
    n.service("echo", PolicyKind::Wrr, &[(1, 1.0)]);
    n.step();
    let got = n.peers[1].recv_all();
    assert_eq!(got.len(), 1);
    let (h, dir) = &got[0];
    assert_eq!(h.kind(), Some(MsgKind::Hello));
    assert_eq!(h.dst(), 1);
    assert_eq!(h.src(), SWITCH_PORT);
    assert_eq!(u32::from_le_bytes(dir[0..4].try_into().unwrap()), 3);
    // p0, p1, then the service "echo" with id 0 and kind 1.
    let mut off = 4;
    let mut names = Vec::new();
    for _ in 0..3 {
        let id = u32::from_le_bytes(dir[off..off + 4].try_into().unwrap());
        let kind = dir[off + 4];
        let len = dir[off + 5] as usize;
        names.push((
            id,
            kind,
            String::from_utf8(dir[off + 6..off + 6 + len].to_vec()).unwrap(),
        ));
        off += 6 + len;
    }
    assert_eq!(
        names,
        vec![
            (0, 0, "p0".into()),
            (1, 0, "p1".into()),
            (0, 1, "echo".into())
        ]
    );
}

#[test]
fn one_way_unicast_arrives_in_order_and_intact() {
    let mut n = net(2, 8);
    n.step();
    n.peers[1].recv_all();
    let mut got = Vec::new();
    let mut sent = 0u64;
    while got.len() < 500 {
        while sent < 500 {
            let h = MsgHeader::new(MsgKind::OneWay, 1, sent, 20);
            if !n.peers[0].send(&h, &payload(sent, 20)) {
                break;
            }
            sent += 1;
        }
        n.step();
        got.extend(n.peers[1].recv_all());
    }
    for (i, (h, p)) in got.iter().enumerate() {
        assert_eq!(h.msg_id(), i as u64);
        assert_eq!(h.src(), 0, "the switch stamps the source");
        assert_eq!(p, &payload(i as u64, 20));
    }
    assert_eq!(n.sw.snapshot().totals.oneway_delivered, 500);
}

#[test]
fn one_way_to_unknown_port_comes_back_as_an_error() {
    let mut n = net(1, 8);
    n.step();
    n.peers[0].recv_all();
    n.peers[0].send(&MsgHeader::new(MsgKind::OneWay, 42, 9, 0), &[]);
    n.step();
    n.step();
    let got = n.peers[0].recv_all();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.msg_id(), 9);
    assert_eq!(got[0].0.status(), Some(Status::Unreachable));
    assert_eq!(n.sw.snapshot().totals.oneway_undeliverable, 1);
}

/// Runs `total` requests from port 0 to service `svc` with backends `backends` serving as
/// `serve` says (per step: how many to serve and with which status; None = stalled).
/// Returns the answers the client saw, by msg id.
fn run_requests(
    n: &mut Net,
    svc: ServiceId,
    total: u64,
    backends: &[usize],
    mut serve: impl FnMut(&mut Net, usize, u64) -> Option<(usize, Status)>,
    max_steps: usize,
) -> HashMap<u64, Vec<Status>> {
    let mut answers: HashMap<u64, Vec<Status>> = HashMap::new();
    let mut sent = 0u64;
    for step in 0..max_steps {
        while sent < total {
            let h = MsgHeader::request_to_service(svc, sent, 16);
            if !n.peers[0].send(&h, &payload(sent, 16)) {
                break;
            }
            sent += 1;
        }
        n.step();
        for &b in backends {
            if let Some((k, st)) = serve(n, b, step as u64) {
                n.peers[b].serve(k, st);
            }
        }
        n.step();
        for (h, p) in n.peers[0].recv_all() {
            if h.kind() == Some(MsgKind::Reply) {
                if h.status() == Some(Status::Ok) {
                    assert_eq!(
                        p,
                        payload(h.msg_id(), 16),
                        "reply payload echoes the request"
                    );
                }
                answers
                    .entry(h.msg_id())
                    .or_default()
                    .push(h.status().unwrap());
            }
        }
        if answers.len() as u64 == total && n.sw.in_flight() == 0 {
            break;
        }
    }
    answers
}

fn assert_exactly_once(answers: &HashMap<u64, Vec<Status>>, total: u64) {
    for id in 0..total {
        let a = answers
            .get(&id)
            .unwrap_or_else(|| panic!("request {id} got no answer"));
        assert_eq!(a.len(), 1, "request {id} got {} answers", a.len());
    }
}

fn assert_totals_add_up(sw: &Switch<GuestMemoryMmap>) {
    let s = sw.snapshot();
    let t = s.totals;
    assert_eq!(
        t.requests_accepted,
        t.replies_delivered + t.failed_back + t.orphaned + t.refused + s.in_flight as u64,
        "{t:?}"
    );
}

#[test]
fn requests_through_a_service_get_exactly_one_reply() {
    let mut n = net(4, 16);
    let svc = n.service("echo", PolicyKind::P2c, &[(1, 1.0), (2, 1.0), (3, 1.0)]);
    let answers = run_requests(
        &mut n,
        svc,
        2000,
        &[1, 2, 3],
        |_, _, _| Some((64, Status::Ok)),
        10_000,
    );
    assert_exactly_once(&answers, 2000);
    assert!(answers.values().all(|a| a[0] == Status::Ok));
    assert_totals_add_up(&n.sw);
    let s = n.sw.snapshot();
    assert_eq!(s.totals.replies_delivered, 2000);
    assert_eq!(s.services[0].stats.replies, 2000);
}

/// Share of dispatches each member of service 0 got.
fn shares(sw: &Switch<GuestMemoryMmap>) -> Vec<f64> {
    sw.snapshot().services[0]
        .members
        .iter()
        .map(|m| m.share)
        .collect()
}

#[test]
fn weighted_round_robin_honours_weights_within_one_percent() {
    let mut n = net(4, 64);
    let svc = n.service("w", PolicyKind::Wrr, &[(1, 1.0), (2, 2.0), (3, 3.0)]);
    let answers = run_requests(
        &mut n,
        svc,
        6000,
        &[1, 2, 3],
        |_, _, _| Some((64, Status::Ok)),
        20_000,
    );
    assert_exactly_once(&answers, 6000);
    for (got, want) in shares(&n.sw).iter().zip([1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0]) {
        assert!((got - want).abs() < 0.01, "share {got:.3} vs {want:.3}");
    }
}

#[test]
fn p2c_honours_weights_within_ten_percent() {
    let mut n = net(4, 64);
    let svc = n.service("w", PolicyKind::P2c, &[(1, 1.0), (2, 2.0), (3, 3.0)]);
    // Backends answer a few per step so in-flight counts matter, as under real load.
    let answers = run_requests(
        &mut n,
        svc,
        6000,
        &[1, 2, 3],
        |_, b, _| Some((b * 4, Status::Ok)),
        40_000,
    );
    assert_exactly_once(&answers, 6000);
    for (got, want) in shares(&n.sw).iter().zip([1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0]) {
        assert!(
            (got - want).abs() / want < 0.10,
            "share {got:.3} vs {want:.3}"
        );
    }
}

#[test]
fn key_affinity_keeps_a_key_on_one_backend() {
    let mut n = net(4, 64);
    let svc = n.service("m", PolicyKind::Maglev, &[(1, 1.0), (2, 1.0), (3, 1.0)]);
    n.step();
    for p in &mut n.peers {
        p.recv_all();
    }
    let mut seen: HashMap<u32, HashSet<usize>> = HashMap::new();
    for round in 0..20u64 {
        for key in 0..30u32 {
            let mut h = MsgHeader::request_to_service(svc, round * 100 + key as u64, 0);
            h.set_key(key);
            assert!(n.peers[0].send(&h, &[]));
        }
        n.step();
        for b in 1..4 {
            for (h, _) in n.peers[b].recv_all() {
                if h.kind() == Some(MsgKind::Request) {
                    seen.entry(h.key()).or_default().insert(b);
                    let rep = MsgHeader::reply_to(&h, Status::Ok, 0);
                    n.peers[b].send(&rep, &[]);
                }
            }
        }
        n.step();
        n.peers[0].recv_all();
    }
    assert_eq!(seen.len(), 30);
    assert!(seen.values().all(|s| s.len() == 1), "{seen:?}");
    let used: HashSet<usize> = seen.values().flat_map(|s| s.iter().copied()).collect();
    assert_eq!(used.len(), 3, "keys spread over every backend");
}

#[test]
fn a_backend_that_stops_draining_is_ejected_within_the_window_and_nothing_is_lost() {
    let mut n = net(4, 32);
    let svc = n.service("echo", PolicyKind::Wrr, &[(1, 1.0), (2, 1.0), (3, 1.0)]);
    let window = FailoverConfig::default().stall_window_ns;
    let sweep = SwitchConfig::default().sweep_interval_ns;
    let stall_at = 40u64; // step
    let mut stalled_since: Option<u64> = None;
    let mut ejected_at: Option<u64> = None;
    let clock = n.clock.clone();
    let answers = run_requests(
        &mut n,
        svc,
        3000,
        &[1, 2, 3],
        |n, b, step| {
            if b == 2 && step >= stall_at {
                if stalled_since.is_none() {
                    stalled_since = Some(clock.now_ns());
                }
                if ejected_at.is_none()
                    && n.sw.snapshot().services[0].members[1].status == "ejected"
                {
                    ejected_at = Some(clock.now_ns());
                }
                return None;
            }
            Some((8, Status::Ok))
        },
        50_000,
    );
    assert_exactly_once(&answers, 3000);
    assert!(
        answers.values().all(|a| a[0] == Status::Ok),
        "failover, not failure"
    );
    let (t0, t1) = (
        stalled_since.unwrap(),
        ejected_at.expect("stalled backend was ejected"),
    );
    // Each loop iteration is two clock steps; a serve decision sees the previous sweep.
    assert!(
        t1 - t0 <= window + sweep + 4 * STEP_NS,
        "ejected {} us after it stopped draining",
        (t1 - t0) / 1000
    );
    let s = n.sw.snapshot();
    assert!(s.services[0].stats.redispatches > 0);
    assert_eq!(s.services[0].stats.ejections, 1);
    assert_totals_add_up(&n.sw);
}

#[test]
fn a_stalled_backend_that_resumes_has_its_late_replies_dropped() {
    let mut n = net(3, 16);
    let svc = n.service("echo", PolicyKind::Wrr, &[(1, 1.0), (2, 1.0)]);
    // Backend 2 stalls for 300 steps (15 ms) then resumes and answers its stale requests.
    let answers = run_requests(
        &mut n,
        svc,
        400,
        &[1, 2],
        |_, b, step| (b == 1 || !(10..300).contains(&step)).then_some((16, Status::Ok)),
        5000,
    );
    assert_exactly_once(&answers, 400);
    // Let the resumed backend answer what it still holds.
    for _ in 0..50 {
        n.step();
        n.peers[2].serve(64, Status::Ok);
        n.peers[0].recv_all();
    }
    let s = n.sw.snapshot();
    assert!(s.totals.late_replies_dropped > 0, "{:?}", s.totals);
    assert_eq!(s.totals.replies_delivered, 400);
    assert_totals_add_up(&n.sw);
}

#[test]
fn a_crashed_backend_has_its_requests_redispatched() {
    let mut n = net(4, 16);
    let svc = n.service("echo", PolicyKind::P2c, &[(1, 1.0), (2, 1.0), (3, 1.0)]);
    let answers = run_requests(
        &mut n,
        svc,
        1000,
        &[1, 2, 3],
        |n, b, step| {
            if b == 3 && step == 20 {
                n.sw.remove_port(3);
            }
            (!(b == 3 && step >= 20)).then_some((4, Status::Ok))
        },
        20_000,
    );
    assert_exactly_once(&answers, 1000);
    assert!(answers.values().all(|a| a[0] == Status::Ok));
    assert!(n.sw.snapshot().totals.redispatches > 0);
    assert_totals_add_up(&n.sw);
}

#[test]
fn with_every_backend_stalled_requests_fail_back_after_the_deadline() {
    let mut n = net(3, 16);
    let cfg = ServiceConfig {
        request_timeout_ns: 20_000_000,
        ..Default::default()
    };
    let svc =
        n.sw.add_service("dead", cfg, &[(1, 1.0), (2, 1.0)])
            .unwrap();
    let answers = run_requests(&mut n, svc, 100, &[1, 2], |_, _, _| None, 5000);
    assert_exactly_once(&answers, 100);
    let statuses: HashSet<Status> = answers.values().map(|a| a[0]).collect();
    assert!(
        statuses
            .iter()
            .all(|s| matches!(s, Status::NoBackend | Status::Timeout)),
        "{statuses:?}"
    );
    let t = n.sw.snapshot().totals;
    assert_eq!(t.failed_back, 100);
    assert_totals_add_up(&n.sw);
}

#[test]
fn backend_errors_count_against_health() {
    let mut n = net(3, 32);
    let svc = n.service("echo", PolicyKind::P2c, &[(1, 1.0), (2, 1.0)]);
    let answers = run_requests(
        &mut n,
        svc,
        2000,
        &[1, 2],
        |_, b, _| {
            Some((
                8,
                if b == 1 {
                    Status::BackendError
                } else {
                    Status::Ok
                },
            ))
        },
        20_000,
    );
    assert_exactly_once(&answers, 2000);
    let s = n.sw.snapshot();
    let m = &s.services[0].members;
    // (Final scores are not compared: the good backend, serving most of the work at 8
    // requests a step, carries a long queue and can end below the threshold too; the service
    // then panics and uses both, weighted by score.)
    let h = &n.sw.services[0].members[0].health;
    assert!(h.stats().left_rotation >= 1, "{m:?}");
    assert!(h.error_rate().is_some_and(|e| e > 0.99), "{m:?}");
    assert!(
        m[0].dispatched < m[1].dispatched,
        "the erroring backend gets less work"
    );
}

#[test]
fn a_service_whose_every_backend_is_out_of_rotation_panics_instead_of_black_holing() {
    // The only backend answers everything with an error: its health score falls below the
    // threshold. Fewer than half the backends are then usable, so the service panics and
    // keeps sending it work (every request gets the backend's own error at once), rather than
    // holding every request until its deadline with a backend that can never win back its
    // score, since it gets nothing to answer.
    let mut n = net(2, 32);
    let svc = n.service("echo", PolicyKind::P2c, &[(1, 1.0)]);
    let answers = run_requests(
        &mut n,
        svc,
        2000,
        &[1],
        |_, _, _| Some((8, Status::BackendError)),
        20_000,
    );
    assert_exactly_once(&answers, 2000);
    for (id, a) in &answers {
        assert_eq!(a[0], Status::BackendError, "request {id}");
    }
    let s = n.sw.snapshot();
    assert!(s.services[0].panic, "{s}");
    assert!(s.services[0].members[0].health < 0.2, "{s}");
    assert_eq!(s.totals.failed_back, 0, "{s}");
    assert_totals_add_up(&n.sw);
}

#[test]
fn an_error_answer_is_counted_once_even_if_its_frontend_breaks_before_taking_it() {
    // Found by the switch fuzz target: a request failed back was counted in `failed_back` when
    // its error was queued, so while the error waited for an rx buffer it was counted twice
    // (failed back and in flight), and for good (failed back and orphaned) if the frontend
    // then broke. It is counted when the error reaches the frontend now.
    let mut n = net(1, 8);
    n.step();
    // The frontend never drains its rx queue: the hello and seven errors fill it, the eighth
    // error waits for a buffer.
    for id in 0..8 {
        assert!(n.peers[0].send(&MsgHeader::request_to_service(42, id, 0), &[]));
        n.step();
        assert_totals_add_up(&n.sw);
    }
    let t = n.sw.snapshot().totals;
    assert_eq!((t.requests_accepted, t.failed_back), (8, 7));
    assert_eq!(n.sw.in_flight(), 1);
    // Then it breaks: the waiting request is orphaned, not also failed back.
    let l = n.peers[0].h.tx.ring().layout();
    use vm_memory::{Bytes, GuestAddress};
    n.peers[0]
        .h
        .memory()
        .write_obj(999u16, GuestAddress(l.avail + 2))
        .unwrap();
    n.step();
    assert!(n.sw.port_down(0));
    assert_totals_add_up(&n.sw);
    let t = n.sw.snapshot().totals;
    assert_eq!((t.failed_back, t.orphaned), (7, 1));
}

#[test]
fn messages_popped_after_their_port_broke_mid_batch_are_dropped() {
    // Found by the switch fuzz target: a port that broke while the switch handled a batch it
    // had popped (here: its own request to itself hit its broken rx ring) still had the rest
    // of the batch handled. Those requests were accepted for a frontend already down; their
    // answers waited forever in its backlog and they stayed in flight for good.
    let mut n = net(2, 8);
    n.step();
    n.peers[1].recv_all();
    // Port 1 points every rx descriptor outside its memory, then asks itself three things.
    let l = n.peers[1].h.rx.ring().layout();
    use vm_memory::{Bytes, GuestAddress};
    for i in 0..8 {
        n.peers[1]
            .h
            .memory()
            .write_obj(1u64 << 40, GuestAddress(l.desc + 16 * i))
            .unwrap();
    }
    for id in 0..3 {
        assert!(n.peers[1].send(&MsgHeader::new(MsgKind::Request, 1, id, 0), &[]));
    }
    n.step();
    assert!(n.sw.port_down(1));
    assert_eq!(
        n.sw.in_flight(),
        0,
        "nothing stays in flight for a port that is down"
    );
    assert_totals_add_up(&n.sw);
}

#[test]
fn a_hostile_frontend_breaks_only_its_own_port() {
    let mut n = net(3, 16);
    let svc = n.service("echo", PolicyKind::P2c, &[(2, 1.0)]);
    n.step();
    // Port 1 publishes an avail index far past its queue size.
    let l = n.peers[1].h.tx.ring().layout();
    use vm_memory::{Bytes, GuestAddress};
    n.peers[1]
        .h
        .memory()
        .write_obj(999u16, GuestAddress(l.avail + 2))
        .unwrap();
    let answers = run_requests(
        &mut n,
        svc,
        200,
        &[2],
        |_, _, _| Some((16, Status::Ok)),
        5000,
    );
    assert_exactly_once(&answers, 200);
    let s = n.sw.snapshot();
    assert!(s.ports[1].down);
    assert_eq!(s.ports[1].stats.faults, 1);
    assert_eq!(s.totals.port_faults, 1);
    assert!(!s.ports[0].down && !s.ports[2].down);
}

#[derive(Clone, Debug)]
enum Op {
    Burst(u8),
    Stall(u8),
    Resume(u8),
    Slow(u8),
    Erroring(u8),
    Advance(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..20).prop_map(Op::Burst),
        1 => (0u8..3).prop_map(Op::Stall),
        2 => (0u8..3).prop_map(Op::Resume),
        1 => (0u8..3).prop_map(Op::Slow),
        1 => (0u8..3).prop_map(Op::Erroring),
        2 => (1u16..400).prop_map(Op::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// Random stalls, resumes, slow and erroring backends, bursts and time jumps: every
    /// accepted request gets exactly one answer (reply or error) and the counters add up.
    #[test]
    fn every_request_gets_exactly_one_answer(ops in prop::collection::vec(op(), 1..60)) {
        let mut n = net(5, 16);
        let mut cfg = ServiceConfig {
            request_timeout_ns: 50_000_000,
            ..Default::default()
        };
        cfg.policy.kind = PolicyKind::P2c;
        let svc = n.sw.add_service("s", cfg, &[(1, 1.0), (2, 2.0), (3, 1.0)]).unwrap();
        // Backend modes: 0 normal, 1 stalled, 2 slow, 3 erroring.
        let mut mode = [0u8; 3];
        let mut answers: HashMap<u64, usize> = HashMap::new();
        let mut sent = 0u64;
        let tick = |n: &mut Net, mode: &[u8; 3], answers: &mut HashMap<u64, usize>| {
            n.step();
            for (b, m) in mode.iter().enumerate() {
                match m {
                    0 => { n.peers[b + 1].serve(16, Status::Ok); }
                    2 => { n.peers[b + 1].serve(1, Status::Ok); }
                    3 => { n.peers[b + 1].serve(16, Status::BackendError); }
                    _ => {}
                }
            }
            n.step();
            for (h, _) in n.peers[0].recv_all() {
                if h.kind() == Some(MsgKind::Reply) {
                    *answers.entry(h.msg_id()).or_default() += 1;
                }
            }
        };
        for o in ops {
            match o {
                Op::Burst(k) => {
                    for _ in 0..k {
                        let h = MsgHeader::request_to_service(svc, sent, 16);
                        if n.peers[0].send(&h, &payload(sent, 16)) {
                            sent += 1;
                        }
                    }
                }
                Op::Stall(b) => mode[b as usize] = 1,
                Op::Resume(b) => mode[b as usize] = 0,
                Op::Slow(b) => mode[b as usize] = 2,
                Op::Erroring(b) => mode[b as usize] = 3,
                Op::Advance(steps) => {
                    for _ in 0..steps / 20 {
                        tick(&mut n, &mode, &mut answers);
                    }
                }
            }
            tick(&mut n, &mode, &mut answers);
        }
        // Quiesce: everyone serves again until nothing is in flight (or the deadline passed).
        let mode = [0u8; 3];
        for _ in 0..2000 {
            if n.sw.in_flight() == 0 && answers.len() as u64 == sent {
                break;
            }
            tick(&mut n, &mode, &mut answers);
        }
        prop_assert_eq!(answers.len() as u64, sent, "every request answered");
        prop_assert!(answers.values().all(|&c| c == 1), "exactly once");
        let s = n.sw.snapshot();
        let t = s.totals;
        prop_assert_eq!(t.requests_accepted, sent);
        prop_assert_eq!(t.replies_delivered + t.failed_back + t.orphaned + t.refused, sent);
        prop_assert_eq!(s.in_flight, 0);
    }
}

#[test]
fn messages_stranded_by_a_reset_never_complete_on_the_revived_queues() {
    // Port 1 sends one-way messages to port 2, whose rx queue is full: they wait in port 2's
    // backlog, their chains held in port 1's tx queue. Port 1 resets its device and comes
    // back with fresh queues before port 2 drains.
    let mut n = net(3, 4);
    n.step();
    n.peers[1].recv_all(); // its hello; port 2 leaves its own hello unread
    for seq in 0..6 {
        assert!(n.peers[1].send(&MsgHeader::new(MsgKind::OneWay, 2, seq, 8), &[seq as u8; 8]));
        n.step();
    }
    assert!(
        n.sw.snapshot().totals.oneway_delivered < 6,
        "some wait in port 2's backlog"
    );
    let delivered = n.sw.snapshot().totals.oneway_delivered;
    n.sw.remove_port(1);
    let (h, dev) = host_peer(PeerConfig {
        queue_size: 4,
        slot_size: 256,
        event_idx: true,
    })
    .unwrap();
    n.sw.revive_port(1, dev, Box::new(Polling)).unwrap();
    n.peers[1] = Peer {
        h,
        buf: vec![0; 256],
    };
    n.step();
    assert_eq!(n.peers[1].recv_all()[0].0.kind(), Some(MsgKind::Hello));
    // Port 2 drains: only what was delivered before the reset arrives, and the revived port's
    // fresh tx queue gets no completion for a chain of its old one (its driver would take
    // the head for one of its own chains, or reject it).
    for _ in 0..4 {
        n.peers[2].recv_all();
        n.step();
    }
    let t = n.sw.snapshot().totals;
    assert_eq!(t.oneway_delivered, delivered, "{t:?}");
    assert_eq!(t.oneway_undeliverable, 6 - delivered, "{t:?}");
    assert!(!n.peers[1].h.tx.ring().has_used().unwrap());
    assert_eq!(n.peers[1].h.tx.ring().counters().used, 0);
    assert!(!n.sw.port_down(1));
}

#[test]
fn a_restarted_backend_comes_back_through_slow_start() {
    let mut n = net(3, 16);
    let svc = n.service("echo", PolicyKind::Wrr, &[(1, 1.0), (2, 1.0)]);
    let answers = run_requests(
        &mut n,
        svc,
        200,
        &[1, 2],
        |_, _, _| Some((16, Status::Ok)),
        5000,
    );
    assert_exactly_once(&answers, 200);
    // Backend 2's VM dies and is restarted with fresh queues.
    n.sw.remove_port(2);
    assert!(n
        .sw
        .revive_port(
            1,
            host_peer(PeerConfig::default()).unwrap().1,
            Box::new(Polling)
        )
        .is_err());
    let (h, dev) = host_peer(PeerConfig {
        queue_size: 16,
        slot_size: 256,
        event_idx: true,
    })
    .unwrap();
    n.sw.revive_port(2, dev, Box::new(Polling)).unwrap();
    n.peers[2] = Peer {
        h,
        buf: vec![0; 256],
    };
    // It gets a hello again, and after its ejection time it takes work again.
    n.step();
    let hello = n.peers[2].recv_all();
    assert_eq!(hello[0].0.kind(), Some(MsgKind::Hello));
    let before = n.sw.snapshot().services[0].members[1].dispatched;
    for _ in 0..2000 {
        n.step();
    }
    let mut answers = HashMap::new();
    let mut sent = 0u64;
    for _ in 0..2000 {
        if sent < 400 {
            let h = MsgHeader::request_to_service(svc, 1000 + sent, 16);
            if n.peers[0].send(&h, &payload(1000 + sent, 16)) {
                sent += 1;
            }
        }
        n.step();
        n.peers[1].serve(16, Status::Ok);
        n.peers[2].serve(16, Status::Ok);
        n.step();
        for (h, _) in n.peers[0].recv_all() {
            *answers.entry(h.msg_id()).or_insert(0) += 1;
        }
        if answers.len() == 400 {
            break;
        }
    }
    assert_eq!(answers.len(), 400);
    assert!(answers.values().all(|&c| c == 1));
    let s = n.sw.snapshot();
    assert!(
        s.services[0].members[1].dispatched > before,
        "revived backend took work"
    );
    assert_eq!(s.ports[2].stats.revivals, 1);
    assert_totals_add_up(&n.sw);
}

#[test]
fn a_backend_that_drains_but_never_replies_is_ejected_and_nothing_is_lost() {
    let mut n = net(4, 32);
    let svc = n.service("echo", PolicyKind::Wrr, &[(1, 1.0), (2, 1.0), (3, 1.0)]);
    let answers = run_requests(
        &mut n,
        svc,
        2000,
        &[1, 2, 3],
        |n, b, step| {
            if b == 3 && step >= 30 {
                // Takes every request off its queue and answers none.
                n.peers[3].recv_all();
                return None;
            }
            Some((8, Status::Ok))
        },
        50_000,
    );
    assert_exactly_once(&answers, 2000);
    assert!(
        answers.values().all(|a| a[0] == Status::Ok),
        "failed over, not failed"
    );
    let s = n.sw.snapshot();
    assert!(
        s.services[0].stats.ejections >= 1,
        "{:?}",
        s.services[0].stats
    );
    assert!(s.services[0].stats.redispatches > 0);
    assert_eq!(s.services[0].members[2].status, "ejected");
    assert_totals_add_up(&n.sw);
}

#[test]
fn error_notices_for_a_guest_that_never_reads_them_are_bounded() {
    // A guest sends one-way messages to a port that does not exist and never reads its rx
    // queue: each message's chain goes back at once, so only a cap keeps the notices owed to
    // it from piling up in the host.
    let mut n = net(1, 8);
    n.step();
    let mut sent = 0u64;
    for _ in 0..200 {
        n.peers[0].h.tx.reclaim().unwrap();
        while n.peers[0].h.tx.free() > 0 {
            let h = MsgHeader::new(MsgKind::OneWay, 4242, sent, 0);
            n.peers[0].h.tx.send(&h, &[]).unwrap();
            sent += 1;
        }
        n.peers[0].h.tx.flush().unwrap();
        n.step();
    }
    assert!(sent > 1000);
    let s = n.sw.snapshot();
    let p = &s.ports[0];
    assert!(!p.down);
    assert_eq!(p.stats.undeliverable, sent);
    // The hello and seven notices filled its rx queue; at most a queue's worth (8) more wait.
    assert!(p.stats.notices_dropped >= sent - 8 - 8, "{:?}", p.stats);
    // Once it reads, it gets the ones that waited, and new ones flow again.
    let got = n.peers[0].recv_all().len();
    for _ in 0..3 {
        n.step();
    }
    let got = got + n.peers[0].recv_all().len();
    assert!((8..=1 + 8 + 8).contains(&got), "got {got}");
}
