//! Least outstanding requests by power of two choices (Envoy's least-request default).
//!
//! Two distinct candidates are drawn at random and the one with the higher
//! `weight / (load + 1)^bias` wins, where load is what a candidate has in flight plus the
//! sessions it holds (a `connection` service's established connections: least connections).
//! Weights are honoured through that feedback: a backend gets work until its load is in
//! proportion to its weight. No state but the random generator, so weight changes take effect
//! on the next pick.

use serde::Deserialize;

use super::rng::XorShift64;
use super::{Candidate, PickRequest, Policy};

/// Parameters of [`LeastOutstandingP2c`].
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct P2cConfig {
    /// Exponent of `in_flight + 1` (Envoy's active request bias). Default 1.0.
    pub bias: f64,
}

impl Default for P2cConfig {
    fn default() -> Self {
        Self { bias: 1.0 }
    }
}

/// Draws before falling back to a scan when candidates are mostly ineligible.
const DRAWS: usize = 4;

/// Power-of-two-choices least-outstanding-requests policy.
#[derive(Clone, Debug)]
pub struct LeastOutstandingP2c {
    rng: XorShift64,
    bias: f64,
}

impl LeastOutstandingP2c {
    /// A policy with the given bias and random seed.
    pub fn new(cfg: P2cConfig, seed: u64) -> Self {
        Self {
            rng: XorShift64::new(seed),
            bias: cfg.bias,
        }
    }

    /// True when `a` is strictly better than `b`.
    #[inline]
    fn better(&self, a: &Candidate, b: &Candidate) -> bool {
        let fa = f64::from(a.load()) + 1.0;
        let fb = f64::from(b.load()) + 1.0;
        if self.bias == 1.0 {
            // a.w / fa > b.w / fb without dividing.
            a.weight * fb > b.weight * fa
        } else {
            a.weight / fa.powf(self.bias) > b.weight / fb.powf(self.bias)
        }
    }
}

impl Policy for LeastOutstandingP2c {
    #[inline]
    fn pick(&mut self, c: &[Candidate], _req: &PickRequest) -> Option<usize> {
        let n = c.len();
        if n < 2 {
            return c.first().filter(|c| c.eligible()).map(|_| 0);
        }
        for _ in 0..DRAWS {
            let i = self.rng.below(n);
            let mut j = self.rng.below(n - 1);
            if j >= i {
                j += 1;
            }
            match (c[i].eligible(), c[j].eligible()) {
                (true, true) => return Some(if self.better(&c[j], &c[i]) { j } else { i }),
                (true, false) => return Some(i),
                (false, true) => return Some(j),
                (false, false) => {}
            }
        }
        // Mostly ineligible: the best eligible one, scanning from a random start.
        let start = self.rng.below(n);
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if c[i].eligible() && best.is_none_or(|b| self.better(&c[i], &c[b])) {
                best = Some(i);
            }
        }
        best
    }

    fn name(&self) -> &'static str {
        "p2c"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> PickRequest {
        PickRequest::default()
    }

    #[test]
    fn prefers_the_less_loaded_of_two() {
        let mut c = vec![Candidate::new(0, 1.0), Candidate::new(1, 1.0)];
        c[0].in_flight = 5;
        let mut p = LeastOutstandingP2c::new(P2cConfig::default(), 7);
        assert!((0..100).all(|_| p.pick(&c, &req()) == Some(1)));
    }

    #[test]
    fn equal_weights_no_load_is_uniform_within_5_percent() {
        let c: Vec<_> = (0..8).map(|i| Candidate::new(i, 1.0)).collect();
        let mut p = LeastOutstandingP2c::new(P2cConfig::default(), 1);
        let mut counts = [0u32; 8];
        for _ in 0..80_000 {
            counts[p.pick(&c, &req()).unwrap()] += 1;
        }
        for n in counts {
            assert!((n as f64 - 10_000.0).abs() < 500.0, "{counts:?}");
        }
    }

    /// Closed loop: backend i completes work at a rate proportional to its weight, requests
    /// arrive at 90 % of total capacity. Throughput shares follow the weights within 10 %
    /// (measured: the lightest backend gets about 6 % less than its share: below saturation,
    /// P2C equalises in-flight per weight, not throughput).
    #[test]
    fn honours_weights_through_in_flight_feedback_within_10_percent() {
        let weights = [1.0, 2.0, 3.0, 4.0];
        let mut c: Vec<_> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Candidate::new(i as u32, w))
            .collect();
        let mut p = LeastOutstandingP2c::new(P2cConfig::default(), 3);
        let mut sent = [0u64; 4];
        let mut credit = [0.0f64; 4];
        for _ in 0..100_000 {
            // 9 arrivals per tick; capacity 10 per tick split 1:2:3:4.
            for _ in 0..9 {
                let i = p.pick(&c, &req()).unwrap();
                c[i].in_flight += 1;
                sent[i] += 1;
            }
            for i in 0..4 {
                credit[i] += weights[i];
                while credit[i] >= 1.0 && c[i].in_flight > 0 {
                    credit[i] -= 1.0;
                    c[i].in_flight -= 1;
                }
                credit[i] = credit[i].min(1.0);
            }
        }
        let total: u64 = sent.iter().sum();
        for i in 0..4 {
            let share = sent[i] as f64 / total as f64;
            let want = weights[i] / 10.0;
            assert!((share - want).abs() / want < 0.10, "{sent:?}");
        }
    }

    #[test]
    fn ineligible_never_picked_and_none_when_nothing_eligible() {
        let mut c: Vec<_> = (0..64).map(|i| Candidate::new(i, 0.0)).collect();
        let mut p = LeastOutstandingP2c::new(P2cConfig::default(), 9);
        assert_eq!(p.pick(&c, &req()), None);
        c[37].weight = 0.5;
        assert!((0..1000).all(|_| p.pick(&c, &req()) == Some(37)));
        assert_eq!(p.pick(&c[..1], &req()), None);
    }

    #[test]
    fn bias_zero_ignores_load() {
        let mut c = vec![Candidate::new(0, 2.0), Candidate::new(1, 1.0)];
        c[0].in_flight = 100;
        let mut p = LeastOutstandingP2c::new(P2cConfig { bias: 0.0 }, 1);
        assert!((0..100).all(|_| p.pick(&c, &req()) == Some(0)));
    }
}
