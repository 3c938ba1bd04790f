//! The demo's pure parts, without guests: its configuration, what it reads from snapshots,
//! and its verdict. The run itself is `vmm-tests/linux.rs`'s message-service test.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::summary::{ClientResult, DemoSummary};
use super::watch::{clients_gone, Watch};
use super::{scenario, DemoConfig, DemoError};
use crate::switch::{
    MemberSnapshot, PolicyKind, PortSnapshot, PortStats, ServiceSnapshot, ServiceStats, Snapshot,
};

/// A snapshot at `now_ms` with `replies` answers and `redispatches`, where worker 5 has
/// answered `w5`, and the front has `conns` of `accepted` connections.
fn snap(now_ms: u64, replies: u64, redispatches: u64, w5: u64, conns: (u64, u64)) -> Snapshot {
    let port = |name: &str, counters: &[(&'static str, u64)]| PortSnapshot {
        id: 0,
        name: name.into(),
        down: false,
        stats: PortStats::default(),
        counters: counters.iter().copied().collect::<BTreeMap<_, _>>(),
    };
    let member = |cid: u64, w: f64, status: &'static str| MemberSnapshot {
        port: 0,
        name: format!("svc-echo-vm{cid}"),
        base_weight: w,
        weight: w,
        health: 1.0,
        status,
        state: "active",
        dispatched: replies / 3,
        share: 1.0 / 3.0,
        in_flight: 0,
        held: 0,
        drain_per_s: 0.0,
        latency_us: None,
        load_report_suspect: false,
        load_reports_suspected: 0,
    };
    Snapshot {
        now_ns: now_ms * 1_000_000,
        in_flight: 0,
        pool_subpools: 1,
        totals: Default::default(),
        ports: vec![
            port(
                "svc-echo",
                &[("conns_open", conns.0), ("connections_accepted", conns.1)],
            ),
            port("svc-echo-vm5", &[("replies", w5)]),
        ],
        services: vec![ServiceSnapshot {
            id: 0,
            name: "echo".into(),
            policy: "wrr",
            panic: false,
            waiting: 0,
            stats: ServiceStats {
                replies,
                redispatches,
                ..ServiceStats::default()
            },
            members: vec![
                member(4, 1.0, "healthy"),
                member(5, 2.0, "ejected"),
                member(6, 3.0, "healthy"),
            ],
        }],
        reload: None,
    }
}

#[test]
fn the_failover_is_timed_from_the_last_answer_to_the_first_redispatch_after_the_stop() {
    let mut w = Watch::new("svc-echo-vm5".into());
    // A re-dispatch before the stop (a slow guest, say) is not the stop's.
    w.observe(&snap(100, 10, 1, 3, (1, 1)));
    w.observe(&snap(200, 20, 1, 6, (1, 1)));
    w.stop_requested(Some(&snap(200, 20, 1, 6, (1, 1))));
    assert_eq!(w.answers_at_stop(), Some(20));
    w.observe(&snap(300, 30, 1, 7, (1, 1)));
    // Its last answer shows at 300 ms; the same snapshot again changes nothing.
    w.observe(&snap(300, 30, 1, 7, (1, 1)));
    w.observe(&snap(400, 35, 1, 7, (1, 1)));
    w.observe(&snap(500, 40, 1, 7, (1, 1)));
    assert_eq!(w.stall_to_redispatch(), None);
    w.observe(&snap(700, 50, 3, 7, (1, 1)));
    w.observe(&snap(800, 60, 5, 7, (1, 1)));
    assert_eq!(w.stall_to_redispatch(), Some(Duration::from_millis(400)));
    assert_eq!(w.answers(), 60);
}

#[test]
fn live_lines_show_answers_picks_and_failovers_at_most_once_per_period() {
    let mut w = Watch::new("svc-echo-vm5".into());
    let s = snap(100, 30, 2, 3, (1, 1));
    let every = Duration::from_secs(3600);
    let line = w.line(Some(&s), 60, Duration::from_secs(2), every).unwrap();
    assert!(line.contains("answers     30/60"), "{line}");
    assert!(
        line.contains("picks vm4 10, vm5 10 ejected, vm6 10"),
        "{line}"
    );
    assert!(line.contains("failovers 2"), "{line}");
    assert_eq!(w.line(Some(&s), 60, Duration::from_secs(3), every), None);
    assert!(w.line(None, 60, Duration::ZERO, Duration::ZERO).is_none());
}

#[test]
fn clients_are_gone_when_every_one_connected_and_closed() {
    assert!(!clients_gone(&snap(0, 0, 0, 0, (0, 0)), 2));
    assert!(!clients_gone(&snap(0, 0, 0, 0, (0, 1)), 2));
    assert!(!clients_gone(&snap(0, 0, 0, 0, (1, 2)), 2));
    assert!(clients_gone(&snap(0, 0, 0, 0, (0, 2)), 2));
}

fn client(cid: u64, exit_code: i32, verdict: &str) -> ClientResult {
    ClientResult {
        cid,
        requests: 30,
        exit_code,
        verdict: verdict.into(),
        round_trips_per_s: Some(500),
        output: String::new(),
    }
}

#[test]
fn the_summary_is_clean_only_when_every_request_got_one_checked_answer() {
    let ok = "VMQ-PROBE ok sent=30 bytes=1920 elapsed_ns=1 rtt_per_s=500";
    let end = snap(900, 60, 2, 7, (0, 2));
    let s = DemoSummary::new(
        Some(&end),
        None,
        vec![client(3, 0, ok), client(7, 0, ok)],
        5,
        Some(20),
        Some(Duration::from_millis(305)),
        None,
        Duration::from_secs(2),
        Duration::from_secs(60),
    );
    assert!(s.clean(), "{s:?}");
    assert_eq!(
        (s.requests, s.answers, s.lost, s.redispatched),
        (60, 60, 0, 2)
    );
    assert_eq!(s.round_trips_per_s, 1000.0);
    assert_eq!(s.backends[1].status, "ejected");
    let text = s.to_string();
    for want in [
        "2 client VMs",
        "requests 60  answers 60  each answered exactly once: yes  lost 0",
        "re-dispatched 2",
        "stall to re-dispatch: 305 ms",
        "after 20 answers",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    // A client that saw a wrong answer, or answers missing: not clean.
    let bad = DemoSummary::new(
        Some(&end),
        None,
        vec![
            client(3, 1, "VMQ-PROBE fail message 4 corrupted"),
            client(7, 0, ok),
        ],
        5,
        Some(20),
        None,
        None,
        Duration::from_secs(2),
        Duration::from_secs(60),
    );
    assert!(!bad.clean() && !bad.each_answered_once);
    let short = snap(900, 59, 2, 7, (0, 2));
    let lost = DemoSummary::new(
        Some(&short),
        None,
        vec![client(3, 0, ok), client(7, 0, ok)],
        5,
        Some(20),
        None,
        None,
        Duration::from_secs(2),
        Duration::from_secs(60),
    );
    assert_eq!(lost.lost, 1);
    // A drain instead of a stop: the summary tells the drain.
    let story = super::DrainStory {
        at_answers: 20,
        picks_at_drain: 9,
        picks_while_drained: 0,
        left: true,
        picks_before_rejoin: 9,
        rejoined_at_answers: Some(40),
        picks_after_rejoin: 6,
    };
    let drained = DemoSummary::new(
        Some(&end),
        None,
        vec![client(3, 0, ok), client(7, 0, ok)],
        5,
        None,
        None,
        Some(story),
        Duration::from_secs(2),
        Duration::from_secs(60),
    );
    let text = drained.to_string();
    for want in [
        "worker 5 drained after 20 answers: given 0 requests after the drain, answered what it had and left",
        "a reload brought it back after 40 answers; it took 6 requests since",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    assert!(!lost.clean());
}

#[test]
fn the_built_in_service_is_weighted_round_robin_over_three_workers() {
    let cfg = DemoConfig {
        clients: 2,
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        ..DemoConfig::default()
    };
    let sc = scenario::serve_config(Path::new("/tmp/x"), &cfg).unwrap();
    let cids: Vec<u64> = sc.vm.iter().map(|v| v.cid).collect();
    assert_eq!(cids, [3, 7, 4, 5, 6]);
    let s = &sc.service[0];
    assert_eq!((s.cid, s.port), (100, 5000));
    assert_eq!(s.policy.kind, PolicyKind::Wrr);
    assert_eq!(s.failover.stall_window_ns, 300_000_000);
    let weights: Vec<(u64, f64)> = s.members.iter().map(|m| (m.cid, m.weight)).collect();
    assert_eq!(weights, [(4, 1.0), (5, 2.0), (6, 3.0)]);
    assert!(sc.metrics.is_some());
}

#[test]
fn settings_out_of_range_are_refused() {
    let bad = [
        DemoConfig {
            clients: 3,
            ..DemoConfig::default()
        },
        DemoConfig {
            requests_per_client: 0,
            ..DemoConfig::default()
        },
        DemoConfig {
            stopped_worker: 3,
            ..DemoConfig::default()
        },
        DemoConfig {
            stop_after: f64::NAN,
            ..DemoConfig::default()
        },
    ];
    for c in bad {
        assert!(matches!(c.check(), Err(DemoError::Config(_))), "{c:?}");
    }
    DemoConfig::default().check().unwrap();
}
