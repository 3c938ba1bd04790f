//! Shortest expected delay: the candidate that would finish a new request first.
//!
//! Expected delay = `(queued + in_flight + 1) / (drain_per_s x weight)`. Where a candidate's
//! drain rate is unknown (0), the mean of the known ones stands in; when none is known this is
//! IPVS's `sed`, `(active + 1) / weight`. A full scan, O(n), without divisions; ties rotate so idle
//! backends share work.

use super::{Candidate, PickRequest, Policy};

/// Shortest-expected-delay policy.
#[derive(Clone, Debug, Default)]
pub struct ExpectedDelay {
    start: usize,
}

impl ExpectedDelay {
    /// A new policy.
    pub fn new() -> Self {
        Self::default()
    }
}

#[inline]
fn known(d: f64) -> bool {
    d > 0.0 && d.is_finite()
}

impl Policy for ExpectedDelay {
    fn pick(&mut self, c: &[Candidate], _req: &PickRequest) -> Option<usize> {
        let n = c.len();
        if n == 0 {
            return None;
        }
        let (sum, cnt) = c
            .iter()
            .filter(|x| x.eligible() && known(x.drain_per_s))
            .fold((0.0, 0u32), |(s, k), x| (s + x.drain_per_s, k + 1));
        let fallback = if cnt > 0 { sum / f64::from(cnt) } else { 1.0 };
        self.start = if self.start + 1 >= n {
            0
        } else {
            self.start + 1
        };
        let mut best: Option<(usize, f64, f64)> = None;
        // Scan from a rotating start (two plain ranges, no per-item wrap) so ties spread.
        for i in (self.start..n).chain(0..self.start) {
            let x = &c[i];
            if !x.eligible() {
                continue;
            }
            let num = f64::from(x.queued) + f64::from(x.load()) + 1.0;
            let drain = if known(x.drain_per_s) {
                x.drain_per_s
            } else {
                fallback
            };
            let den = drain * x.weight;
            // num / den < best_num / best_den
            if best.is_none_or(|(_, bn, bd)| num * bd < bn * den) {
                best = Some((i, num, den));
            }
        }
        best.map(|(i, _, _)| i)
    }

    fn name(&self) -> &'static str {
        "expected_delay"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(w: f64, q: u32, f: u32, d: f64) -> Candidate {
        Candidate {
            id: 0,
            weight: w,
            in_flight: f,
            queued: q,
            drain_per_s: d,
            held: 0,
        }
    }

    #[test]
    fn picks_the_shortest_expected_delay() {
        // Delays: 11/1000, 3/100, 1/10.
        let cs = [
            c(1.0, 5, 5, 1000.0),
            c(1.0, 1, 1, 100.0),
            c(1.0, 0, 0, 10.0),
        ];
        assert_eq!(
            ExpectedDelay::new().pick(&cs, &PickRequest::default()),
            Some(0)
        );
    }

    #[test]
    fn unknown_drain_uses_the_mean_and_weight_scales() {
        // Backend 1 unknown: stands at the mean 1000/s; 2/2000 < 6/1000.
        let cs = [c(1.0, 5, 0, 1000.0), c(2.0, 1, 0, 0.0)];
        assert_eq!(
            ExpectedDelay::new().pick(&cs, &PickRequest::default()),
            Some(1)
        );
        // Nothing known: sed, (active + 1) / weight: 6/1 > 2/0.5? 6 > 4: pick 1.
        let cs = [c(1.0, 5, 0, 0.0), c(0.5, 1, 0, 0.0)];
        assert_eq!(
            ExpectedDelay::new().pick(&cs, &PickRequest::default()),
            Some(1)
        );
    }

    #[test]
    fn ties_rotate_and_ineligible_is_skipped() {
        let cs = [c(1.0, 0, 0, 0.0), c(0.0, 0, 0, 0.0), c(1.0, 0, 0, 0.0)];
        let mut p = ExpectedDelay::new();
        let picks: Vec<_> = (0..6)
            .map(|_| p.pick(&cs, &PickRequest::default()).unwrap())
            .collect();
        assert!(picks.contains(&0) && picks.contains(&2) && !picks.contains(&1));
        assert_eq!(p.pick(&cs[1..2], &PickRequest::default()), None);
    }

    /// Closed loop with known drain rates 1:3: work splits in proportion.
    #[test]
    fn splits_by_drain_rate_under_load() {
        let mut cs = [c(1.0, 0, 0, 1000.0), c(1.0, 0, 0, 3000.0)];
        let mut p = ExpectedDelay::new();
        let mut sent = [0u32; 2];
        for t in 0..40_000u32 {
            let i = p.pick(&cs, &PickRequest::default()).unwrap();
            cs[i].queued += 1;
            sent[i] += 1;
            if t % 4 == 0 && cs[0].queued > 0 {
                cs[0].queued -= 1;
            }
            if t % 4 != 0 && cs[1].queued > 0 {
                cs[1].queued -= 1;
            }
        }
        let share = f64::from(sent[1]) / 40_000.0;
        assert!((share - 0.75).abs() < 0.05 * 0.75, "{sent:?}");
    }
}
