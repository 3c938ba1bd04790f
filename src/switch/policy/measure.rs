//! Decision cost, measured in-process so the CLI can report it next to the criterion bench.

use std::hint::black_box;
use std::time::Instant;

use super::{new_policy, Candidate, PickRequest, Policy, PolicyConfig, PolicyKind};

/// Candidates as a bench sees them: weights 1..=4, a little load, known drain rates.
pub fn bench_candidates(n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| Candidate {
            id: i as u32,
            weight: (i % 4 + 1) as f64,
            in_flight: (i % 3) as u32,
            queued: (i % 5) as u32,
            drain_per_s: 100_000.0 + (i % 7) as f64 * 10_000.0,
            held: 0,
        })
        .collect()
}

/// Mean nanoseconds per decision (`pick` + `on_sent`, with in-flight feedback) of policy `kind`
/// over `backends` candidates, timed over `iters` decisions after a warm-up. Wall-clock figures
/// drift on shared machines: compare kinds within one run.
pub fn measure_decision_ns(kind: PolicyKind, backends: usize, iters: u64) -> f64 {
    let cfg = PolicyConfig {
        kind,
        ..PolicyConfig::default()
    };
    match new_policy(&cfg, backends) {
        Ok(p) => measure_policy_ns(p, backends, iters),
        Err(_) => f64::NAN,
    }
}

/// Mean nanoseconds per decision of any policy `p` (the loop [`measure_decision_ns`] times),
/// so a baseline policy can be timed through the same `dyn Policy` call and loop.
pub fn measure_policy_ns(mut p: Box<dyn Policy>, backends: usize, iters: u64) -> f64 {
    let mut c = bench_candidates(backends);
    if c.is_empty() || iters == 0 {
        return f64::NAN;
    }
    let mut run = |iters: u64, c: &mut [Candidate]| {
        let n = c.len();
        let mut drain = 0usize;
        for k in 0..iters {
            let req = PickRequest {
                class: 0,
                key: k as u32,
                bytes: 512,
            };
            if let Some(i) = p.pick(black_box(c), &req) {
                p.on_sent(i, &req);
                c[i].in_flight += 1;
            }
            // One completion per decision keeps in-flight counts bounded.
            if c[drain].in_flight > 0 {
                c[drain].in_flight -= 1;
            }
            drain = if drain + 1 == n { 0 } else { drain + 1 };
        }
    };
    run(iters.min(10_000), &mut c);
    let t = Instant::now();
    run(iters, &mut c);
    t.elapsed().as_nanos() as f64 / iters as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_every_kind() {
        for kind in PolicyKind::ALL {
            let ns = measure_decision_ns(kind, 8, 100);
            assert!(ns.is_finite() && ns >= 0.0, "{kind:?}");
        }
        assert!(measure_decision_ns(PolicyKind::P2c, 0, 10).is_nan());
    }
}
