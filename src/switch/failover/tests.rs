//! Unit tests of failover.
use super::*;

const MS: u64 = 1_000_000;

fn svc(n: usize, pct: u32) -> Failover {
    let cfg = FailoverConfig {
        max_ejection_percent: pct,
        ..FailoverConfig::default()
    };
    Failover::new(cfg, n, 0)
}

/// Every backend drains steadily except those in `stuck`.
fn tick(f: &mut Failover, idx: &mut [u16], stuck: &[usize], now: u64) -> Vec<Event> {
    for (i, c) in idx.iter_mut().enumerate() {
        if !stuck.contains(&i) {
            *c = c.wrapping_add(1);
        }
        f.observe(i, *c, true, now);
    }
    f.sweep_vec(now)
}

/// Ticks every millisecond from 0 up to `until` with `stuck` not draining; the events.
fn ticks_until(f: &mut Failover, idx: &mut [u16], stuck: &[usize], until: u64) -> Vec<Event> {
    let mut events = Vec::new();
    let mut now = 0;
    while now < until {
        now += MS;
        events.extend(tick(f, idx, stuck, now));
    }
    events
}

#[test]
fn stall_is_detected_after_the_window_and_ejected() {
    let mut f = svc(10, 10);
    let mut idx = [0u16; 10];
    let mut now = 4 * MS;
    let events = ticks_until(&mut f, &mut idx, &[3], now);
    assert!(events.is_empty(), "{events:?}");
    now += MS;
    let events = tick(&mut f, &mut idx, &[3], now);
    assert_eq!(
        events,
        vec![Event::Ejected {
            backend: 3,
            count: 1
        }]
    );
    assert_eq!(f.weight_factor(3, now), 0.0);
    assert!(!f.in_rotation(3));
    assert_eq!(f.stats().stalls, 1);
}

#[test]
fn idle_backend_is_not_stalled() {
    let mut f = svc(2, 50);
    for t in 0..100 {
        f.observe(0, 7, false, t * MS);
        assert!(f.sweep_vec(t * MS).is_empty());
    }
}

#[test]
fn ejection_cap_leaves_the_rest_stalled_without_work() {
    let mut f = svc(10, 10);
    let mut idx = [0u16; 10];
    let mut now = 6 * MS;
    let events = ticks_until(&mut f, &mut idx, &[1, 2], now);
    assert_eq!(
        events,
        vec![
            Event::Ejected {
                backend: 1,
                count: 1
            },
            Event::Stalled { backend: 2 }
        ]
    );
    assert_eq!(f.status(2), Some(BackendStatus::Stalled));
    assert_eq!(f.weight_factor(2, now), 0.0);
    assert_eq!(f.stats().ejections_capped, 1);
    // Backend 2 drains again: recovered, no ejection.
    now += MS;
    let events = tick(&mut f, &mut idx, &[1], now);
    assert_eq!(events, vec![Event::Recovered { backend: 2 }]);
    assert_eq!(f.weight_factor(2, now), 1.0);
}

#[test]
fn returns_after_ejection_time_when_draining_with_slow_start_and_backoff() {
    let mut f = svc(4, 25);
    let mut idx = [0u16; 4];
    let mut now = 0;
    while f.status(0) == Some(BackendStatus::Healthy) {
        now += MS;
        tick(&mut f, &mut idx, &[0], now);
    }
    let ejected_at = now;
    assert_eq!(
        f.status(0),
        Some(BackendStatus::Ejected {
            until_ns: ejected_at + 30 * MS
        })
    );
    // Still stuck after the ejection time: stays out.
    while now < ejected_at + 40 * MS {
        now += MS;
        assert!(tick(&mut f, &mut idx, &[0], now).is_empty());
    }
    // Drains again: returns in slow start at 10 % weight.
    now += MS;
    let events = tick(&mut f, &mut idx, &[], now);
    assert_eq!(events, vec![Event::Returned { backend: 0 }]);
    assert!((f.weight_factor(0, now) - 0.1).abs() < 1e-9);
    assert!((f.weight_factor(0, now + 25 * MS) - 0.55).abs() < 1e-9);
    now += 50 * MS;
    tick(&mut f, &mut idx, &[], now);
    assert_eq!(f.status(0), Some(BackendStatus::Healthy));
    // Second stall: twice as long.
    while f.status(0) == Some(BackendStatus::Healthy) {
        now += MS;
        tick(&mut f, &mut idx, &[0], now);
    }
    assert_eq!(
        f.status(0),
        Some(BackendStatus::Ejected {
            until_ns: now + 60 * MS
        })
    );
    assert_eq!(f.ejections(0), 2);
}

#[test]
fn backoff_is_capped_and_forgiven_over_time() {
    let cfg = FailoverConfig {
        max_ejection_percent: 100,
        slow_start_ns: 0,
        ..FailoverConfig::default()
    };
    let mut f = Failover::new(cfg, 1, 0);
    let mut out = Vec::new();
    let mut now = 0;
    for _ in 0..20 {
        f.force_eject(0, now, &mut out);
    }
    assert_eq!(
        f.status(0),
        Some(BackendStatus::Ejected { until_ns: 300 * MS })
    );
    now += 300 * MS;
    f.observe(0, 1, false, now);
    f.sweep(now, &mut out);
    assert_eq!(f.status(0), Some(BackendStatus::Healthy));
    now += 300 * MS;
    f.sweep(now, &mut out);
    assert_eq!(f.ejections(0), 19);
}

#[test]
fn panic_mode_uses_all_backends() {
    let cfg = FailoverConfig {
        max_ejection_percent: 100,
        ..FailoverConfig::default()
    };
    let mut f = Failover::new(cfg, 4, 0);
    let mut idx = [0u16; 4];
    let now = 6 * MS;
    let events = ticks_until(&mut f, &mut idx, &[0, 1, 2], now);
    assert!(events.contains(&Event::PanicEntered));
    assert!(f.panic());
    assert!(f.in_rotation(0));
    assert_eq!(f.weight_factor(0, now), 1.0);
    assert_eq!(f.stats().panics, 1);
}

#[test]
fn empty_ejected_backend_returns_without_traffic() {
    let mut f = svc(2, 50);
    let mut out = Vec::new();
    f.force_eject(1, 0, &mut out);
    // Its pending work was moved away; nothing left to drain.
    f.observe(1, 0, false, 10 * MS);
    f.sweep(10 * MS, &mut out);
    assert!(matches!(f.status(1), Some(BackendStatus::Ejected { .. })));
    f.sweep(30 * MS, &mut out);
    assert_eq!(
        f.status(1),
        Some(BackendStatus::Warming { since_ns: 30 * MS })
    );
}

#[test]
fn config_refuses_unknown_keys() {
    let e = toml::from_str::<FailoverConfig>("stall_windw_ns = 5").unwrap_err();
    assert!(e.to_string().contains("stall_windw_ns"), "{e}");
}

#[test]
fn config_refuses_out_of_range_values() {
    let bad = |f: fn(&mut FailoverConfig)| {
        let mut c = FailoverConfig::default();
        f(&mut c);
        c.validate().unwrap_err()
    };
    let e = bad(|c| c.stall_window_ns = 0);
    assert_eq!(e.field(), "stall_window_ns");
    assert!(e.to_string().contains("greater than 0"), "{e}");
    assert_eq!(bad(|c| c.max_ejection_ns = 1).field(), "max_ejection_ns");
    assert_eq!(
        bad(|c| c.max_ejection_percent = 101).field(),
        "max_ejection_percent"
    );
    assert_eq!(
        bad(|c| c.panic_threshold = f64::NAN).field(),
        "panic_threshold"
    );
    assert_eq!(bad(|c| c.slow_start_min = -0.5).field(), "slow_start_min");
    FailoverConfig::default().validate().unwrap();
}

#[test]
fn time_near_u64_max_saturates() {
    let cfg = FailoverConfig {
        base_ejection_ns: u64::MAX / 2,
        max_ejection_ns: u64::MAX,
        slow_start_ns: u64::MAX,
        ..FailoverConfig::default()
    };
    let mut f = Failover::new(cfg, 2, u64::MAX - 100);
    let mut ev = Vec::new();
    f.observe(0, 0, true, u64::MAX - 100);
    f.sweep(u64::MAX, &mut ev);
    f.force_eject(1, u64::MAX, &mut ev);
    f.force_eject(1, u64::MAX, &mut ev);
    f.sweep(u64::MAX, &mut ev);
    assert!(f.weight_factor(0, u64::MAX).is_finite());
    assert!(ev.iter().any(|e| matches!(e, Event::Ejected { .. })));
}

/// Backend 0 stops draining with work pending; `wait(now)` says how long, in all, its vCPU has
/// waited for a CPU. Returns the sweep times at which it was ejected or stalled, and whether
/// it was reported descheduled.
fn stop_draining_with(wait: impl Fn(u64) -> Option<u64>, until: u64) -> (Vec<u64>, bool) {
    let mut f = svc(2, 50);
    let mut idx = [0u16; 2];
    let mut ejected = Vec::new();
    let mut descheduled = false;
    let mut now = 0;
    while now < until {
        now += MS;
        for (i, c) in idx.iter_mut().enumerate() {
            if i == 1 {
                *c = c.wrapping_add(1);
            }
            f.observe(i, *c, true, now);
            if f.wants_run_queue_wait(i) {
                f.sample_run_queue_wait(i, if i == 0 { wait(now) } else { Some(0) });
            }
        }
        for e in f.sweep_vec(now) {
            match e {
                Event::Ejected { backend: 0, .. } | Event::Stalled { backend: 0 } => {
                    ejected.push(now)
                }
                Event::Descheduled { backend: 0 } => descheduled = true,
                _ => {}
            }
        }
    }
    (ejected, descheduled)
}

#[test]
fn a_backend_whose_vcpu_waits_for_a_cpu_is_descheduled_not_stalled() {
    // Its vCPU is runnable but gets no CPU at all: it never had the chance to drain.
    let (ejected, descheduled) = stop_draining_with(Some, 100 * MS);
    assert!(ejected.is_empty(), "ejected at {ejected:?}");
    assert!(descheduled);
    // It gets half of the CPU it wants: a stall takes about twice the window of wall time
    // (the first sample, at 1 ms, is the baseline: 5 ms = 9 ms - (4.5 ms - 0.5 ms) waited).
    let (ejected, _) = stop_draining_with(|now| Some(now / 2), 100 * MS);
    assert_eq!(ejected.first(), Some(&(9 * MS)), "{ejected:?}");
}

#[test]
fn a_backend_that_had_the_cpu_is_stalled_within_the_window() {
    // Its vCPU never waited (it ran, or slept with work pending): stalled after the window,
    // exactly as without a run-queue clock.
    let (with_clock, descheduled) = stop_draining_with(|_| Some(7), 20 * MS);
    let (without, _) = stop_draining_with(|_| None, 20 * MS);
    assert_eq!(with_clock.first(), Some(&(5 * MS)));
    assert_eq!(with_clock, without);
    assert!(!descheduled);
}

#[test]
fn time_the_switch_waited_for_a_cpu_counts_toward_no_stall() {
    let mut f = svc(1, 50);
    let mut now = 0;
    let mut ejected = None;
    while now < 40 * MS && ejected.is_none() {
        now += MS;
        // The switch thread waits for a CPU three quarters of the time.
        f.sample_switch_run_queue_wait(Some(now / 4 * 3));
        f.observe(0, 0, true, now);
        if f.sweep_vec(now)
            .iter()
            .any(|e| matches!(e, Event::Ejected { .. }))
        {
            ejected = Some(now);
        }
    }
    // The stall clock started at 0; the first sample (1 ms, 0.75 ms waited) is the baseline:
    // 5 ms of chance = 17 ms - (12.75 ms - 0.75 ms) of the switch's waiting.
    assert_eq!(ejected, Some(17 * MS));
}

#[test]
fn a_retired_backend_that_stalls_is_ejected_outside_the_cap_and_counts_for_no_panic() {
    // Ten backends, at most one ejected (10 %). Backend 0 is ejected first; backend 9,
    // retired (draining on purpose), stalls too: it is ejected anyway, and the cap still
    // has room for nobody else.
    let mut f = svc(10, 10);
    f.set_retired(9, true);
    assert!(f.retired(9));
    let mut idx = [0u16; 10];
    let events = ticks_until(&mut f, &mut idx, &[0, 9], 6 * MS);
    let ejected: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            Event::Ejected { backend, .. } => Some(*backend),
            _ => None,
        })
        .collect();
    assert_eq!(ejected, vec![0, 9], "{events:?}");
    let mut events = Vec::new();
    for ms in 7..=12 {
        events.extend(tick(&mut f, &mut idx, &[0, 9, 5], ms * MS));
    }
    assert!(
        events.contains(&Event::Stalled { backend: 5 }),
        "the cap is full with backend 0 alone: {events:?}"
    );
    assert!(!f.panic(), "8 of 9 in service are usable");
    // Seven of ten retired: the three left are the service; two of them out is a panic.
    let mut f = svc(10, 100);
    for i in 3..10 {
        f.set_retired(i, true);
    }
    let mut idx = [0u16; 10];
    let events = ticks_until(&mut f, &mut idx, &[0, 1], 6 * MS);
    assert!(events.contains(&Event::PanicEntered), "{events:?}");
    // A slot that left comes back fresh, in slow start.
    f.rejoin(9, 7 * MS);
    assert!(!f.retired(9));
    assert_eq!(
        f.status(9),
        Some(BackendStatus::Warming { since_ns: 7 * MS })
    );
    assert_eq!(f.ejections(9), 0);
}
