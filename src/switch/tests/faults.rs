//! Hostile and broken ports, resets and revivals, and a property test over random faults.

use super::*;

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
    let answers = run_requests(&mut n, svc, 200, &[2], serve_ok(16), 5000);
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
    n.revive(1, 4);
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
    let answers = run_requests(&mut n, svc, 200, &[1, 2], serve_ok(16), 5000);
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
    n.revive(2, 16);
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

#[test]
fn replies_a_backend_published_before_it_was_removed_still_reach_their_frontends() {
    // Backend 1 answers two requests and goes away before the switch polls again: the
    // replies are in its tx ring. Removing the port takes them first, so each request is
    // answered once, by that backend, and nothing is re-dispatched or failed back.
    let mut n = net(3, 16);
    let svc = n.service("echo", PolicyKind::Wrr, &[(1, 1.0)]);
    n.step();
    n.peers[0].recv_all();
    for id in 0..2u64 {
        assert!(n.peers[0].send(
            &MsgHeader::request_to_service(svc, id, 16),
            &payload(id, 16)
        ));
    }
    n.step();
    assert_eq!(n.peers[1].serve(16, Status::Ok), 2);
    n.sw.remove_port(1);
    n.step();
    let got = n.peers[0].recv_all();
    let ok: Vec<u64> = got
        .iter()
        .filter(|(h, _)| h.kind() == Some(MsgKind::Reply) && h.status() == Some(Status::Ok))
        .map(|(h, _)| h.msg_id())
        .collect();
    assert_eq!(ok, vec![0, 1], "{got:?}");
    let t = n.sw.snapshot().totals;
    assert_eq!(
        (t.replies_delivered, t.redispatches, t.failed_back),
        (2, 0, 0),
        "{t:?}"
    );
}
