//! Membership at run time: members join, drain and leave; services are removed and come back.

use super::*;

/// Member `port`'s line of service `svc` in a fresh snapshot.
fn member(sw: &Switch<GuestMemoryMmap>, svc: ServiceId, port: u32) -> MemberSnapshot {
    let s = sw.snapshot();
    let svc = s
        .services
        .iter()
        .find(|s| s.id == svc)
        .expect("the service");
    svc.members
        .iter()
        .find(|m| m.port == port)
        .expect("the member")
        .clone()
}

/// Deliveries port `p` took so far.
fn received(sw: &Switch<GuestMemoryMmap>, p: u32) -> u64 {
    sw.port_stats(p).unwrap().received
}

#[test]
fn a_drained_member_takes_nothing_new_answers_what_it_has_and_leaves() {
    let mut n = net(4, 32);
    let svc = n.service("echo", PolicyKind::Wrr, &[(1, 1.0), (2, 1.0), (3, 1.0)]);
    let mut started = None;
    let mut at_drain = 0;
    let answers = run_requests(
        &mut n,
        svc,
        2000,
        &[1, 2, 3],
        |n, b, step| {
            if b == 2 && step == 30 {
                // It held its requests for ten steps (well inside the stall window): it
                // has work in flight when the drain begins.
                started = Some(n.sw.drain_member(svc, 2).unwrap());
                at_drain = received(&n.sw, 2);
            }
            (b != 2 || !(20..30).contains(&step)).then_some((8, Status::Ok))
        },
        20_000,
    );
    assert_exactly_once(&answers, 2000);
    assert!(
        answers.values().all(|a| a[0] == Status::Ok),
        "answered, not failed"
    );
    let started = started.unwrap();
    assert!(started.in_flight > 0, "{started:?}");
    assert_eq!(started.active_left, 2);
    assert_eq!(received(&n.sw, 2), at_drain, "nothing new went to it");
    let m = member(&n.sw, svc, 2);
    assert_eq!(m.dispatched, started.dispatched, "{m:?}");
    assert_eq!(m.state, "gone");
    assert_eq!(m.weight, 0.0);
    let s = n.sw.snapshot();
    assert_eq!(
        s.services[0].stats.redispatches, 0,
        "its own were not moved"
    );
    assert_eq!(s.services[0].stats.late_replies_dropped, 0);
    assert_eq!(s.services[0].stats.ejections, 0);
    assert_eq!(
        n.sw.take_departed(),
        vec![Departure {
            service: svc,
            port: 2
        }]
    );
    assert!(n.sw.take_departed().is_empty(), "reported once");
    assert!(
        !n.sw.port_down(2),
        "the switch leaves the port to its owner"
    );
    assert_eq!(n.sw.member_state(svc, 2), Some(MemberState::Gone));
    assert_totals_add_up(&n.sw);
}

#[test]
fn a_draining_member_that_stalls_still_fails_over() {
    let mut n = net(4, 32);
    let svc = n.service("echo", PolicyKind::Wrr, &[(1, 1.0), (2, 1.0), (3, 1.0)]);
    let mut started = None;
    let answers = run_requests(
        &mut n,
        svc,
        1000,
        &[1, 2, 3],
        |n, b, step| {
            if b == 2 && step == 30 {
                started = Some(n.sw.drain_member(svc, 2).unwrap());
            }
            // From step 20 it never drains again.
            (b != 2 || step < 20).then_some((8, Status::Ok))
        },
        50_000,
    );
    assert_exactly_once(&answers, 1000);
    assert!(
        answers.values().all(|a| a[0] == Status::Ok),
        "moved, not failed"
    );
    let held = started.unwrap().in_flight;
    assert!(held > 0);
    let s = n.sw.snapshot();
    assert_eq!(s.services[0].stats.redispatches, held as u64, "{s}");
    assert_eq!(member(&n.sw, svc, 2).state, "gone", "it owes nothing now");
    assert_eq!(n.sw.take_departed().len(), 1);
    // It wakes: what it answers now is late, and dropped.
    for _ in 0..20 {
        n.step();
        n.peers[2].serve(64, Status::Ok);
        n.peers[0].recv_all();
    }
    assert_eq!(
        n.sw.snapshot().totals.late_replies_dropped,
        held as u64,
        "each of its answers dropped"
    );
    assert_totals_add_up(&n.sw);
}

/// Sends `count` requests with keys `id` (so key-hash policies spread them), serves them on
/// every backend in `backends` until they are answered and nothing is in flight, and returns
/// the answers by id (with those of earlier requests that came meanwhile).
fn keyed_round(
    n: &mut Net,
    svc: ServiceId,
    first: u64,
    count: u64,
    backends: &[usize],
) -> HashMap<u64, Status> {
    let mut answers = HashMap::new();
    let mut sent = first;
    for _ in 0..10_000 {
        while sent < first + count {
            let mut h = MsgHeader::request_to_service(svc, sent, 16);
            h.set_key(sent as u32);
            if !n.peers[0].send(&h, &payload(sent, 16)) {
                break;
            }
            sent += 1;
        }
        n.step();
        for &b in backends {
            n.peers[b].serve(16, Status::Ok);
        }
        n.step();
        for (h, _) in n.peers[0].recv_all() {
            if h.kind() == Some(MsgKind::Reply) {
                assert!(
                    answers.insert(h.msg_id(), h.status().unwrap()).is_none(),
                    "request {} answered twice",
                    h.msg_id()
                );
            }
        }
        let mine = (first..first + count).filter(|id| answers.contains_key(id));
        if mine.count() as u64 == count && n.sw.in_flight() == 0 {
            break;
        }
    }
    for id in first..first + count {
        assert!(answers.contains_key(&id), "request {id} answered");
    }
    answers
}

#[test]
fn members_join_drain_leave_and_come_back_under_every_policy() {
    for kind in PolicyKind::ALL {
        let mut n = net(4, 32);
        let mut cfg = ServiceConfig::default();
        cfg.policy.kind = kind;
        // Slow start and health out of the way: this is about who may be picked.
        cfg.failover.slow_start_ns = 0;
        let svc = n.sw.add_service("s", cfg, &[(1, 1.0)]).unwrap();
        keyed_round(&mut n, svc, 0, 200, &[1, 2, 3]);
        n.sw.add_member(svc, 2, 1.0).unwrap();
        n.sw.add_member(svc, 3, 1.0).unwrap();
        assert!(matches!(
            n.sw.add_member(svc, 3, 1.0),
            Err(SwitchError::AlreadyMember { .. })
        ));
        let before: Vec<u64> = (1..4).map(|p| member(&n.sw, svc, p).dispatched).collect();
        keyed_round(&mut n, svc, 200, 600, &[1, 2, 3]);
        for p in 1..4u32 {
            let got = member(&n.sw, svc, p).dispatched - before[p as usize - 1];
            assert!(got > 0, "{}: member {p} got nothing", kind.name());
        }
        // Member 1 drains: nothing more for it, and it leaves.
        n.sw.drain_member(svc, 1).unwrap();
        let d1 = member(&n.sw, svc, 1).dispatched;
        let r1 = received(&n.sw, 1);
        keyed_round(&mut n, svc, 800, 300, &[1, 2, 3]);
        assert_eq!(member(&n.sw, svc, 1).dispatched, d1, "{}", kind.name());
        assert_eq!(received(&n.sw, 1), r1, "{}", kind.name());
        assert_eq!(member(&n.sw, svc, 1).state, "gone", "{}", kind.name());
        assert!(matches!(
            n.sw.drain_member(svc, 1),
            Err(SwitchError::NotAMember { .. })
        ));
        // It joins again, in the same slot, and is picked again.
        n.sw.add_member(svc, 1, 1.0).unwrap();
        let s = n.sw.snapshot();
        assert_eq!(s.services[0].members.len(), 3, "its slot came back");
        keyed_round(&mut n, svc, 1100, 600, &[1, 2, 3]);
        assert!(
            member(&n.sw, svc, 1).dispatched > d1,
            "{}: member 1 is back",
            kind.name()
        );
        assert_eq!(member(&n.sw, svc, 1).state, "active");
        assert_totals_add_up(&n.sw);
    }
}

#[test]
fn a_drain_taken_back_before_the_member_leaves_changes_nothing_else() {
    let mut n = net(3, 32);
    let svc = n.service("s", PolicyKind::Wrr, &[(1, 1.0), (2, 1.0)]);
    // Round robin: request 1 goes to member 2, which holds it, so it cannot leave yet.
    assert!(n.peers[0].send(&MsgHeader::request_to_service(svc, 0, 0), &[]));
    assert!(n.peers[0].send(&MsgHeader::request_to_service(svc, 1, 0), &[]));
    n.step();
    let started = n.sw.drain_member(svc, 2).unwrap();
    assert_eq!((started.in_flight, started.active_left), (1, 1));
    for _ in 0..40 {
        n.step();
    }
    assert_eq!(n.sw.member_state(svc, 2), Some(MemberState::Draining));
    n.sw.add_member(svc, 2, 3.0).unwrap();
    assert_eq!(n.sw.member_state(svc, 2), Some(MemberState::Active));
    assert_eq!(member(&n.sw, svc, 2).base_weight, 3.0);
    let answers = keyed_round(&mut n, svc, 2, 100, &[1, 2]);
    assert_eq!(answers.len(), 102, "the two held ones too");
    assert!(answers.values().all(|&s| s == Status::Ok));
    assert!(n.sw.take_departed().is_empty(), "it never left");
    let m = member(&n.sw, svc, 2);
    assert_eq!(m.state, "active");
    assert!(m.dispatched > 1, "it takes work again: {m:?}");
}

#[test]
fn panic_mode_counts_only_the_members_that_take_work() {
    let mut n = net(5, 32);
    let mut cfg = ServiceConfig::default();
    cfg.policy.kind = PolicyKind::Wrr;
    // Health never takes a member out here: any panic would come from the membership.
    cfg.health.threshold = 0.0;
    cfg.health.rejoin_threshold = 0.0;
    let members = [(1, 1.0), (2, 1.0), (3, 1.0), (4, 1.0)];
    let svc = n.sw.add_service("s", cfg, &members).unwrap();
    for p in 2..5 {
        n.sw.drain_member(svc, p).unwrap();
    }
    let answers = keyed_round(&mut n, svc, 0, 200, &[1, 2, 3, 4]);
    assert!(answers.values().all(|&s| s == Status::Ok));
    let s = n.sw.snapshot();
    // One member of one that may take work is usable: no panic, and nothing for the drained.
    assert!(!s.services[0].panic, "{s}");
    for p in 2..5 {
        let m = member(&n.sw, svc, p);
        assert_eq!((m.state, m.dispatched), ("gone", 0), "{m:?}");
    }
    // With every member drained, requests wait and fail back at their deadline: none is sent
    // to a member that drains.
    n.sw.drain_member(svc, 1).unwrap();
    let answers = run_requests(&mut n, svc, 10, &[1, 2, 3, 4], serve_ok(16), 50_000);
    assert_exactly_once(&answers, 10);
    assert!(
        answers.values().all(|a| a[0] == Status::NoBackend),
        "{answers:?}"
    );
    assert_totals_add_up(&n.sw);
}

#[test]
fn a_removed_service_fails_back_what_it_had_and_its_name_can_come_back() {
    let mut n = net(3, 32);
    let svc = n.service("s", PolicyKind::Wrr, &[(1, 1.0), (2, 1.0)]);
    for id in 0..20 {
        assert!(n.peers[0].send(&MsgHeader::request_to_service(svc, id, 4), &[1, 2, 3, 4]));
    }
    n.step();
    n.sw.remove_service(svc).unwrap();
    assert!(n.sw.service_id("s").is_none());
    assert!(n.sw.snapshot().services.is_empty(), "no longer listed");
    // The backends answer what they were given: too late, dropped.
    for _ in 0..4 {
        n.peers[1].serve(16, Status::Ok);
        n.peers[2].serve(16, Status::Ok);
        n.step();
    }
    let got = n.peers[0].recv_all();
    let mut answered = HashSet::new();
    for (h, _) in &got {
        if h.kind() == Some(MsgKind::Reply) {
            assert_eq!(h.status(), Some(Status::Unreachable));
            assert!(answered.insert(h.msg_id()), "once");
        }
    }
    assert_eq!(answered.len(), 20);
    assert_eq!(n.sw.snapshot().totals.late_replies_dropped, 20);
    // New requests to it fail back at once.
    assert!(n.peers[0].send(&MsgHeader::request_to_service(svc, 99, 0), &[]));
    n.step();
    let got = n.peers[0].recv_all();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.status(), Some(Status::Unreachable));
    assert!(matches!(
        n.sw.drain_member(svc, 1),
        Err(SwitchError::UnknownService(_))
    ));
    // The name comes back, on the same id, with the ports as members again.
    let again = n.service("s", PolicyKind::Wrr, &[(2, 1.0)]);
    assert_eq!(again, svc);
    let answers = keyed_round(&mut n, again, 100, 50, &[1, 2]);
    assert!(answers.values().all(|&s| s == Status::Ok));
    assert_eq!(member(&n.sw, again, 2).dispatched, 50);
    assert_totals_add_up(&n.sw);
}

#[test]
fn byte_share_class_shares_follow_a_new_member_once_the_policy_lists_it() {
    let mut n = net(4, 32);
    // Health left out (a newcomer given a burst would leave rotation for a while): this is
    // about the shares.
    let cfg: ServiceConfig = toml::from_str(
        "policy = { kind = \"byte_share\", byte_share.classes = [{ class = 0, shares = [1.0, 1.0] }] }\n\
         health = { weights = { drain = 0.0, latency = 0.0, in_flight = 0.0, free_rx = 0.0 } }\n\
         failover = { slow_start_ns = 0 }",
    )
    .unwrap();
    let svc =
        n.sw.add_service("b", cfg.clone(), &[(1, 1.0), (2, 1.0)])
            .unwrap();
    n.sw.add_member(svc, 3, 1.0).unwrap();
    keyed_round(&mut n, svc, 0, 300, &[1, 2, 3]);
    assert_eq!(
        member(&n.sw, svc, 3).dispatched,
        0,
        "no share listed for it"
    );
    let mut policy = cfg.policy.clone();
    policy.byte_share.classes[0].shares = vec![1.0, 1.0, 2.0];
    n.sw.set_policy(svc, &policy).unwrap();
    keyed_round(&mut n, svc, 300, 400, &[1, 2, 3]);
    let m = member(&n.sw, svc, 3).dispatched;
    assert!(
        (150..=250).contains(&m),
        "half the bytes: {m}\n{}",
        n.sw.snapshot()
    );
    // Shares for more members than the service has slots are refused.
    policy.byte_share.classes[0].shares = vec![1.0; 4];
    assert!(matches!(
        n.sw.set_policy(svc, &policy),
        Err(SwitchError::Service { .. })
    ));
}

#[derive(Clone, Debug)]
enum Op {
    Burst(u8),
    Drain(u8),
    Join(u8),
    Stall(u8),
    Resume(u8),
    Advance(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..20).prop_map(Op::Burst),
        2 => (0u8..4).prop_map(Op::Drain),
        2 => (0u8..4).prop_map(Op::Join),
        1 => (0u8..4).prop_map(Op::Stall),
        2 => (0u8..4).prop_map(Op::Resume),
        2 => (1u16..400).prop_map(Op::Advance),
    ]
}

fn kind() -> impl Strategy<Value = PolicyKind> {
    prop::sample::select(PolicyKind::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// Random joins, drains, stalls and bursts under every policy: a member that does not
    /// take work is never given any, every request gets exactly one answer and the counters
    /// add up.
    #[test]
    fn membership_changes_lose_nothing(kind in kind(), ops in prop::collection::vec(op(), 1..60)) {
        let mut n = net(5, 16);
        let mut cfg = ServiceConfig {
            request_timeout_ns: 50_000_000,
            ..Default::default()
        };
        cfg.policy.kind = kind;
        let svc = n.sw.add_service("s", cfg, &[(1, 1.0), (2, 2.0)]).unwrap();
        let mut stalled = [false; 4];
        let mut answers: HashMap<u64, usize> = HashMap::new();
        let mut sent = 0u64;
        let tick = |n: &mut Net, stalled: &[bool; 4], answers: &mut HashMap<u64, usize>| {
            // What each member that takes no work has been given so far: it must not grow.
            let idle: Vec<(u32, u64)> = (1..5u32)
                .filter(|&p| n.sw.member_state(svc, p).is_some_and(|s| s != MemberState::Active))
                .map(|p| (p, member(&n.sw, svc, p).dispatched))
                .collect();
            n.step();
            for (b, s) in stalled.iter().enumerate() {
                if !s {
                    n.peers[b + 1].serve(16, Status::Ok);
                }
            }
            n.step();
            for (p, d) in idle {
                assert_eq!(member(&n.sw, svc, p).dispatched, d, "port {} got work", p);
            }
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
                        let mut h = MsgHeader::request_to_service(svc, sent, 16);
                        h.set_key(sent as u32);
                        if n.peers[0].send(&h, &payload(sent, 16)) {
                            sent += 1;
                        }
                    }
                }
                Op::Drain(b) => {
                    let _ = n.sw.drain_member(svc, u32::from(b) + 1);
                }
                Op::Join(b) => {
                    let _ = n.sw.add_member(svc, u32::from(b) + 1, 1.0);
                }
                Op::Stall(b) => stalled[b as usize] = true,
                Op::Resume(b) => stalled[b as usize] = false,
                Op::Advance(steps) => {
                    for _ in 0..steps / 20 {
                        tick(&mut n, &stalled, &mut answers);
                    }
                }
            }
            tick(&mut n, &stalled, &mut answers);
        }
        // Quiesce: everyone serves until nothing is in flight (or the deadline passed), and
        // a few sweeps more.
        let stalled = [false; 4];
        for _ in 0..2000 {
            if n.sw.in_flight() == 0 && answers.len() as u64 == sent {
                break;
            }
            tick(&mut n, &stalled, &mut answers);
        }
        for _ in 0..40 {
            tick(&mut n, &stalled, &mut answers);
        }
        prop_assert_eq!(answers.len() as u64, sent, "every request answered");
        prop_assert!(answers.values().all(|&c| c == 1), "exactly once");
        let s = n.sw.snapshot();
        let t = s.totals;
        prop_assert_eq!(t.replies_delivered + t.failed_back + t.orphaned + t.refused, sent);
        prop_assert_eq!(s.in_flight, 0);
        // Nothing is left draining once nothing is in flight.
        prop_assert!(s.services[0].members.iter().all(|m| m.state != "draining"), "{}", s);
    }
}
