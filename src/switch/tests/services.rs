//! Requests through services: policies, stalls, crashes, errors, panic mode.

use super::*;

#[test]
fn requests_through_a_service_get_exactly_one_reply() {
    let mut n = net(4, 16);
    let svc = n.service("echo", PolicyKind::P2c, &[(1, 1.0), (2, 1.0), (3, 1.0)]);
    let answers = run_requests(&mut n, svc, 2000, &[1, 2, 3], serve_ok(64), 10_000);
    assert_exactly_once(&answers, 2000);
    assert!(answers.values().all(|a| a[0] == Status::Ok));
    assert_totals_add_up(&n.sw);
    let s = n.sw.snapshot();
    assert_eq!(s.totals.replies_delivered, 2000);
    assert_eq!(s.services[0].stats.replies, 2000);
}

/// Share of dispatches each member of service 0 got.
#[test]
fn weighted_round_robin_honours_weights_within_one_percent() {
    let mut n = net(4, 64);
    let svc = n.service("w", PolicyKind::Wrr, &[(1, 1.0), (2, 2.0), (3, 3.0)]);
    let answers = run_requests(&mut n, svc, 6000, &[1, 2, 3], serve_ok(64), 20_000);
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
