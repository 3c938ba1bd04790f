//! Smooth weighted round robin by earliest deadline first (as Envoy's EDF scheduler).
//!
//! Each eligible candidate has a virtual deadline; a pick takes the earliest and pushes it back by
//! 1/weight, so picks interleave smoothly in proportion to weight at O(log n) each. A weight that
//! changed is noticed when its candidate reaches the top; a candidate that became eligible joins
//! at the next [`Policy::on_frame`] (or at once when no scheduled candidate is eligible).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::{Candidate, PickRequest, Policy};

#[derive(Clone, Copy, Debug)]
struct Entry {
    deadline: f64,
    idx: u32,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    // Reversed: BinaryHeap is a max-heap and we want the earliest deadline, then the lowest index.
    fn cmp(&self, o: &Self) -> Ordering {
        o.deadline
            .total_cmp(&self.deadline)
            .then_with(|| o.idx.cmp(&self.idx))
    }
}

/// Earliest-deadline-first weighted round robin.
#[derive(Clone, Debug, Default)]
pub struct SmoothWrr {
    heap: BinaryHeap<Entry>,
    /// Weight each candidate was scheduled with; 0 = not in the heap.
    scheduled: Vec<f64>,
    /// Virtual time: the deadline of the last pick.
    now: f64,
}

impl SmoothWrr {
    /// An empty scheduler; it builds itself from the first candidate slice.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, idx: usize, w: f64) {
        self.scheduled[idx] = w;
        // Starting half a period in spreads the first round instead of bunching it.
        self.heap.push(Entry {
            deadline: self.now + 0.5 / w,
            idx: idx as u32,
        });
    }

    fn rebuild(&mut self, c: &[Candidate]) {
        self.heap.clear();
        self.scheduled.clear();
        self.scheduled.resize(c.len(), 0.0);
        self.now = 0.0;
        for (i, cand) in c.iter().enumerate() {
            if cand.eligible() {
                self.push(i, cand.weight);
            }
        }
    }

    /// Adds candidates that became eligible since they were last scheduled.
    fn admit_new(&mut self, c: &[Candidate]) {
        for (i, cand) in c.iter().enumerate() {
            if self.scheduled[i] == 0.0 && cand.eligible() {
                self.push(i, cand.weight);
            }
        }
    }
}

impl Policy for SmoothWrr {
    fn pick(&mut self, c: &[Candidate], _req: &PickRequest) -> Option<usize> {
        if c.len() != self.scheduled.len() {
            self.rebuild(c);
        }
        let mut admitted = false;
        loop {
            let Some(mut top) = self.heap.peek_mut() else {
                if admitted {
                    return None;
                }
                admitted = true;
                self.admit_new(c);
                continue;
            };
            let idx = top.idx as usize;
            let w = c[idx].weight;
            if !c[idx].eligible() {
                std::collections::binary_heap::PeekMut::pop(top);
                self.scheduled[idx] = 0.0;
            } else if w != self.scheduled[idx] {
                // Re-space its next deadline with the new weight.
                top.deadline = self.now + 0.5 / w;
                drop(top);
                self.scheduled[idx] = w;
            } else {
                self.now = top.deadline;
                top.deadline += 1.0 / w;
                return Some(idx);
            }
        }
    }

    fn on_frame(&mut self, c: &[Candidate], _now_ns: u64) {
        if c.len() != self.scheduled.len() {
            self.rebuild(c);
        } else {
            self.admit_new(c);
        }
    }

    fn name(&self) -> &'static str {
        "wrr"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(w: &[f64]) -> Vec<Candidate> {
        w.iter()
            .enumerate()
            .map(|(i, &w)| Candidate::new(i as u32, w))
            .collect()
    }

    #[test]
    fn honours_integer_weights_within_one_per_cycle() {
        let c = cands(&[5.0, 3.0, 1.0, 0.0, 2.0]);
        let mut p = SmoothWrr::new();
        let mut counts = [0i64; 5];
        for n in 1..=11 * 100 {
            counts[p.pick(&c, &PickRequest::default()).unwrap()] += 1;
            // At every point, each backend is within one pick of its exact share.
            for (i, cnt) in counts.iter().enumerate() {
                let want = n as f64 * c[i].weight / 11.0;
                assert!((*cnt as f64 - want).abs() <= 1.0, "n {n} {counts:?}");
            }
        }
        assert_eq!(counts, [500, 300, 100, 0, 200]);
    }

    #[test]
    fn interleaves_smoothly() {
        let c = cands(&[4.0, 1.0]);
        let mut p = SmoothWrr::new();
        let seq: Vec<_> = (0..10)
            .map(|_| p.pick(&c, &PickRequest::default()).unwrap())
            .collect();
        // Backend 1 never waits more than a cycle, and never bunches.
        assert_eq!(seq.iter().filter(|&&i| i == 1).count(), 2);
        assert!(seq.windows(2).all(|w| w != [1, 1]));
    }

    #[test]
    fn follows_weight_changes_and_new_eligibility() {
        let mut c = cands(&[1.0, 1.0]);
        let mut p = SmoothWrr::new();
        p.pick(&c, &PickRequest::default());
        c[1].weight = 0.0;
        for _ in 0..10 {
            assert_eq!(p.pick(&c, &PickRequest::default()), Some(0));
        }
        c[0].weight = 0.0;
        assert_eq!(p.pick(&c, &PickRequest::default()), None);
        c[1].weight = 3.0;
        // No scheduled candidate is eligible: the newly eligible one is admitted at once.
        assert_eq!(p.pick(&c, &PickRequest::default()), Some(1));
        c[0].weight = 1.0;
        p.on_frame(&c, 0);
        let mut counts = [0i32; 2];
        for _ in 0..400 {
            counts[p.pick(&c, &PickRequest::default()).unwrap()] += 1;
        }
        assert!((counts[0] - 100).abs() <= 2, "{counts:?}");
    }

    #[test]
    fn nothing_eligible_is_none() {
        let mut p = SmoothWrr::new();
        assert_eq!(p.pick(&[], &PickRequest::default()), None);
        assert_eq!(
            p.pick(&cands(&[0.0, -1.0, f64::NAN]), &PickRequest::default()),
            None
        );
    }
}
