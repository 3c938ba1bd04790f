//! Unit tests of health.
use super::*;

const MS: u64 = 1_000_000;
const US: u64 = 1_000;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn fresh_backend_is_healthy() {
    let mut h = BackendHealth::new(HealthConfig::default());
    assert!(close(h.refresh(0), 1.0));
    assert!(h.in_rotation());
}

#[test]
fn score_is_the_weighted_mean_of_known_metrics() {
    let cfg = HealthConfig {
        weights: HealthWeights {
            free_rx: 1.0,
            drain: 0.0,
            latency: 0.0,
            errors: 0.0,
            in_flight: 0.0,
            load: 3.0,
        },
        combine: Combine::Arithmetic,
        ..HealthConfig::default()
    };
    let mut h = BackendHealth::new(cfg);
    h.on_free_rx(64, 256); // 0.25 / 0.5 = 0.5
    assert!(close(h.score(0), 0.5), "load unknown drops out");
    h.on_load_report(500, 0); // 0.5 -> (0.5 + 3 * 0.5) / 4
    assert!(close(h.score(0), 0.5));
    h.on_load_report(0, 0); // (0.5 + 3) / 4
    assert!(close(h.score(0), 0.875));
    // The report expires.
    assert!(close(h.score(200 * MS), 0.5));
}

#[test]
fn geometric_mean_lets_one_failed_metric_dominate() {
    let weights = HealthWeights {
        free_rx: 1.0,
        drain: 0.0,
        latency: 0.0,
        errors: 1.0,
        in_flight: 0.0,
        load: 0.0,
    };
    let mut h = BackendHealth::new(HealthConfig {
        weights,
        ..HealthConfig::default()
    });
    h.on_free_rx(256, 256);
    h.on_dispatch(0);
    h.on_reply(1, false, 0);
    // sqrt(1 * 0.01)
    assert!(close(h.score(0), 0.1), "{}", h.score(0));
}

#[test]
fn drain_rate_tracks_consumption_per_second() {
    let mut h = BackendHealth::new(HealthConfig::default());
    let mut now = 0;
    // 10 buffers every 100 us = 100k/s, for 200 ms (10 half-lives).
    for _ in 0..2000 {
        now += 100 * US;
        h.on_consumed(10, now);
    }
    let r = h.drain_per_s(now);
    assert!((r - 100_000.0).abs() < 1_000.0, "{r}");
    // Nothing consumed for one half-life: the rate halves.
    let r2 = h.drain_per_s(now + 20 * MS);
    assert!((r2 - r / 2.0).abs() < 1.0, "{r2}");
}

#[test]
fn errors_and_latency_take_a_backend_out_of_rotation_with_hysteresis() {
    let mut h = BackendHealth::new(HealthConfig::default());
    let mut now = 0;
    for _ in 0..200 {
        now += 100 * US;
        h.on_dispatch(now);
        h.on_consumed(1, now);
        h.on_reply(10 * MS, false, now);
        h.refresh(now);
    }
    assert!(!h.in_rotation(), "score {}", h.last_score());
    assert_eq!(h.stats().left_rotation, 1);
    // Recovery: good replies push the score back over the rejoin threshold.
    for _ in 0..2000 {
        now += 100 * US;
        h.on_dispatch(now);
        h.on_consumed(1, now);
        h.on_reply(50 * US, true, now);
        h.refresh(now);
    }
    assert!(h.in_rotation(), "score {}", h.last_score());
}

#[test]
fn idle_report_from_a_stuck_backend_becomes_suspect() {
    let mut h = BackendHealth::new(HealthConfig::default());
    h.on_free_rx(256, 256);
    // Work delivered, then the backend stops consuming and keeps claiming it is idle.
    for _ in 0..250 {
        h.on_dispatch(0);
    }
    h.on_free_rx(6, 256);
    let mut now = 0;
    let trusted = h.refresh(now);
    while now < 40 * MS {
        now += MS;
        h.on_load_report(0, now);
        h.refresh(now);
    }
    assert!(h.load_report_suspect());
    assert_eq!(h.stats().reports_suspected, 1);
    assert!(h.refresh(now) < trusted);
    // The backend catches up: the report is trusted again after the clear hold.
    h.on_free_rx(256, 256);
    while now < 200 * MS {
        now += MS;
        h.on_consumed(5, now);
        h.on_load_report(0, now);
        h.refresh(now);
    }
    assert!(!h.load_report_suspect());
}

#[test]
fn saturated_report_from_a_flowing_backend_becomes_suspect() {
    let mut h = BackendHealth::new(HealthConfig::default());
    h.on_free_rx(250, 256);
    let mut now = 0;
    while now < 30 * MS {
        now += 100 * US;
        h.on_dispatch(now);
        h.on_consumed(1, now);
        h.on_reply(20 * US, true, now);
        h.on_load_report(1000, now);
        h.refresh(now);
    }
    assert!(h.load_report_suspect());
    // The switch's view (flowing) replaces the report: score stays high.
    assert!(h.score(now) > 0.9, "{}", h.score(now));
}

#[test]
fn a_brief_contradiction_is_not_enough() {
    let mut h = BackendHealth::new(HealthConfig::default());
    h.on_free_rx(250, 256);
    h.on_dispatch(0);
    h.on_consumed(1, 100 * US);
    h.on_load_report(1000, 100 * US);
    h.refresh(100 * US);
    h.refresh(MS);
    assert!(!h.load_report_suspect());
}

#[test]
fn config_refuses_unknown_keys() {
    let e = toml::from_str::<HealthConfig>("threshhold = 0.5").unwrap_err();
    assert!(e.to_string().contains("threshhold"), "{e}");
    let e = toml::from_str::<HealthConfig>("weights = { eror = 1.0 }").unwrap_err();
    assert!(e.to_string().contains("eror"), "{e}");
}

#[test]
fn config_refuses_out_of_range_values() {
    let bad = |f: fn(&mut HealthConfig)| {
        let mut c = HealthConfig::default();
        f(&mut c);
        c.validate().unwrap_err()
    };
    let e = bad(|c| c.threshold = f64::NAN);
    assert_eq!(e.field(), "threshold");
    assert!(e.to_string().contains("[0, 1]"), "{e}");
    assert_eq!(bad(|c| c.threshold = 1.5).field(), "threshold");
    assert_eq!(
        bad(|c| c.rejoin_threshold = 0.1).field(),
        "rejoin_threshold"
    );
    assert_eq!(bad(|c| c.weights.errors = -1.0).field(), "weights.errors");
    assert_eq!(
        bad(|c| c.weights.load = f64::INFINITY).field(),
        "weights.load"
    );
    assert_eq!(
        bad(|c| c.ewma_half_life_ns = 0).field(),
        "ewma_half_life_ns"
    );
    assert_eq!(bad(|c| c.in_flight_limit = 0).field(), "in_flight_limit");
    assert_eq!(bad(|c| c.load_high = 5000).field(), "load_high");
    HealthConfig::default().validate().unwrap();
}

#[test]
fn time_near_u64_max_does_not_overflow() {
    let mut h = BackendHealth::new(HealthConfig::default());
    h.on_rx_posted(4, 8);
    h.on_dispatch(u64::MAX - 10);
    h.on_consumed(1, u64::MAX - 5);
    h.on_reply(u64::MAX, true, u64::MAX);
    h.on_load_report(500, u64::MAX);
    let s = h.refresh(u64::MAX);
    assert!(s.is_finite());
    h.refresh(0);
}
