//! Decision timing: each policy's pick against a round-robin index, the baseline.

use super::*;

/// The decision baseline: the next index, nothing else.
struct RoundRobin {
    next: usize,
}

impl Policy for RoundRobin {
    fn pick(&mut self, c: &[Candidate], _req: &PickRequest) -> Option<usize> {
        let i = self.next;
        self.next = if i + 1 >= c.len() { 0 } else { i + 1 };
        (i < c.len()).then_some(i)
    }

    fn name(&self) -> &'static str {
        "round_robin_index"
    }
}

/// Nanoseconds per decision of the trivial round robin, through the same `dyn Policy` call and
/// the same loop (in-flight feedback, one completion per decision) as [`measure_decision_ns`].
pub fn measure_round_robin_ns(backends: usize, iters: u64) -> f64 {
    measure_policy_ns(Box::new(RoundRobin { next: 0 }), backends, iters)
}

/// Decisions to time for about `budget` at `ns` per decision (at least 10 000).
fn iters_for(budget: Duration, ns: f64) -> u64 {
    ((budget.as_nanos() as f64 / ns.max(0.1)) as u64).max(10_000)
}

/// One record per policy and backend count, against the round robin measured alongside.
pub fn decisions(budget: Duration, runs: usize) -> Vec<BenchRecord> {
    let mut out = Vec::new();
    for backends in DECISION_BACKENDS {
        let rr_iters = iters_for(budget, measure_round_robin_ns(backends, 10_000));
        for kind in PolicyKind::ALL {
            let iters = iters_for(budget, measure_decision_ns(kind, backends, 10_000));
            // Interleaved, best of `runs` each, so drift hits both alike.
            let (mut ns, mut base) = (f64::INFINITY, f64::INFINITY);
            for _ in 0..runs {
                ns = ns.min(measure_decision_ns(kind, backends, iters));
                base = base.min(measure_round_robin_ns(backends, rr_iters));
            }
            out.push(
                BenchRecord::new(
                    "decision",
                    0,
                    1,
                    1e9 / ns,
                    "round_robin_index",
                    1e9 / base,
                    "one thread, unpinned",
                )
                .with("policy", kind.name())
                .with("backends", backends)
                .with("ns_per_decision", round2(ns))
                .with("baseline_ns_per_decision", round2(base)),
            );
        }
    }
    out
}
