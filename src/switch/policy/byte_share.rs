//! Byte-share balancing: each backend gets a configured share of the bytes, per request class.
//!
//! score = (total bytes / bytes sent to this backend) x share; the highest score wins, i.e. the
//! backend furthest behind its share. Bytes are counted by [`Policy::on_sent`], so callers must
//! report what they actually sent. Every frame ([`Policy::on_frame`]) the actual share of each
//! backend (its bytes / all bytes in the frame) is compared with its target; where it drifted
//! beyond the tolerance (refusals, ineligibility, uneven message sizes) the effective share is
//! corrected for the next frame, and the byte history is halved so old traffic weighs less.
//!
//! Effective share = configured class share (1 when the class has none) x candidate weight x
//! drift correction. A backend beyond the end of a configured share list has share 0 for that
//! class. When the winner cannot take the message, [`ByteShare::rank`] gives the next best.

use serde::Deserialize;

use super::{Candidate, PickRequest, Policy};

/// The shares of one request class, by candidate index.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassShares {
    /// Request class (header `class` field).
    pub class: u8,
    /// Relative share of each backend, by index; need not sum to 1.
    pub shares: Vec<f64>,
}

/// Parameters of [`ByteShare`].
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ByteShareConfig {
    /// Per-class shares; classes not listed share by candidate weight.
    pub classes: Vec<ClassShares>,
    /// Relative drift of the actual share from its target tolerated before correcting. Default
    /// 0.05 (5 %).
    pub tolerance: f64,
    /// Bound of the drift correction factor, both ways. Default 4.
    pub max_correction: f64,
}

impl Default for ByteShareConfig {
    fn default() -> Self {
        Self {
            classes: Vec::new(),
            tolerance: 0.05,
            max_correction: 4.0,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct ClassState {
    /// Configured shares; `None` = by candidate weight.
    configured: Option<Vec<f64>>,
    correction: Vec<f64>,
    /// Decayed byte history driving the score.
    bytes: Vec<f64>,
    /// Bytes in the current frame, for the drift check.
    frame: Vec<u64>,
}

impl ClassState {
    fn fit(&mut self, n: usize) {
        if self.bytes.len() == n {
            return;
        }
        let old = self.bytes.len();
        // A newcomer starts level with the least-served share, not at zero, so it is not flooded.
        let floor = (0..old)
            .map(|i| self.bytes[i] / self.base(i, 1.0).max(f64::MIN_POSITIVE))
            .fold(f64::INFINITY, f64::min);
        self.correction.resize(n, 1.0);
        self.frame.resize(n, 0);
        self.bytes.resize(n, 0.0);
        if floor.is_finite() {
            for i in old..n {
                self.bytes[i] = floor * self.base(i, 1.0);
            }
        }
    }

    #[inline]
    fn base(&self, i: usize, weight: f64) -> f64 {
        match &self.configured {
            Some(s) => s.get(i).copied().unwrap_or(0.0) * weight,
            None => weight,
        }
    }

    #[inline]
    fn share(&self, i: usize, c: &Candidate) -> f64 {
        if !c.eligible() {
            return 0.0;
        }
        let s = self.base(i, c.weight) * self.correction[i];
        if s > 0.0 && s.is_finite() {
            s
        } else {
            0.0
        }
    }
}

/// Byte-share policy with per-class shares and per-frame drift correction.
#[derive(Clone, Debug)]
pub struct ByteShare {
    cfg: ByteShareConfig,
    /// Index into `states` for each class; 0 is the state of classes without shares.
    slot: [u8; 256],
    states: Vec<ClassState>,
}

impl ByteShare {
    /// A policy for `n` backends.
    pub fn new(cfg: ByteShareConfig, n: usize) -> Self {
        let mut slot = [0u8; 256];
        let mut states = vec![ClassState::default()];
        for cs in cfg.classes.iter() {
            if slot[cs.class as usize] == 0 && states.len() < 256 {
                slot[cs.class as usize] = states.len() as u8;
                states.push(ClassState {
                    configured: Some(cs.shares.clone()),
                    ..ClassState::default()
                });
            }
        }
        for s in states.iter_mut() {
            s.fit(n);
        }
        Self { cfg, slot, states }
    }

    fn state(&mut self, class: u8, n: usize) -> &mut ClassState {
        let s = &mut self.states[self.slot[class as usize] as usize];
        s.fit(n);
        s
    }

    /// Eligible candidates with a non-zero share for `req`'s class, best first, into `out`
    /// (cleared first). The first is what [`Policy::pick`] returns; the rest are the fallbacks.
    pub fn rank(&mut self, c: &[Candidate], req: &PickRequest, out: &mut Vec<usize>) {
        let s = self.state(req.class, c.len());
        out.clear();
        out.extend((0..c.len()).filter(|&i| s.share(i, &c[i]) > 0.0));
        let key = |i: usize| s.bytes[i] / s.share(i, &c[i]);
        out.sort_by(|&a, &b| {
            key(a)
                .total_cmp(&key(b))
                .then(s.share(b, &c[b]).total_cmp(&s.share(a, &c[a])))
        });
    }

    /// The current drift correction of backend `idx` in `class` (1 = none).
    pub fn correction(&self, class: u8, idx: usize) -> f64 {
        self.states[self.slot[class as usize] as usize]
            .correction
            .get(idx)
            .copied()
            .unwrap_or(1.0)
    }
}

impl Policy for ByteShare {
    fn pick(&mut self, c: &[Candidate], req: &PickRequest) -> Option<usize> {
        let s = self.state(req.class, c.len());
        let mut best: Option<(usize, f64, f64)> = None;
        for (i, cand) in c.iter().enumerate() {
            let share = s.share(i, cand);
            if share <= 0.0 {
                continue;
            }
            let b = s.bytes[i];
            // Highest total/b x share = lowest b / share; ties go to the larger share.
            let better = match best {
                None => true,
                Some((_, bb, bs)) => b * bs < bb * share || (b * bs == bb * share && share > bs),
            };
            if better {
                best = Some((i, b, share));
            }
        }
        best.map(|(i, _, _)| i)
    }

    fn on_sent(&mut self, idx: usize, req: &PickRequest) {
        let s = &mut self.states[self.slot[req.class as usize] as usize];
        if idx < s.bytes.len() {
            // Count at least one byte so empty messages still rotate.
            let b = req.bytes.max(1);
            s.bytes[idx] += f64::from(b);
            s.frame[idx] += u64::from(b);
        }
    }

    fn on_frame(&mut self, c: &[Candidate], _now_ns: u64) {
        let tol = self.cfg.tolerance;
        let max = self.cfg.max_correction.max(1.0);
        for s in self.states.iter_mut() {
            s.fit(c.len());
            let total: u64 = s.frame.iter().sum();
            if total > 0 {
                let base_sum: f64 = (0..c.len())
                    .filter(|&i| c[i].eligible())
                    .map(|i| s.base(i, c[i].weight).max(0.0))
                    .sum();
                for (i, cand) in c.iter().enumerate() {
                    if !cand.eligible() || base_sum <= 0.0 {
                        continue;
                    }
                    let target = s.base(i, cand.weight).max(0.0) / base_sum;
                    if target <= 0.0 {
                        continue;
                    }
                    let actual = s.frame[i] as f64 / total as f64;
                    if (actual - target).abs() > tol * target {
                        // Move the effective share against the drift, at most 2x per frame.
                        let step = (target / actual.max(target / 2.0)).clamp(0.5, 2.0);
                        s.correction[i] = (s.correction[i] * step).clamp(1.0 / max, max);
                    }
                }
            }
            s.frame.iter_mut().for_each(|f| *f = 0);
            s.bytes.iter_mut().for_each(|b| *b *= 0.5);
        }
    }

    fn name(&self) -> &'static str {
        "byte_share"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::switch::policy::XorShift64;

    fn cands(n: usize) -> Vec<Candidate> {
        (0..n).map(|i| Candidate::new(i as u32, 1.0)).collect()
    }

    fn run(
        p: &mut ByteShare,
        c: &[Candidate],
        class: u8,
        n: usize,
        rng: &mut XorShift64,
    ) -> Vec<u64> {
        let mut bytes = vec![0u64; c.len()];
        for _ in 0..n {
            let req = PickRequest {
                class,
                key: 0,
                bytes: 64 + rng.below(9000) as u32,
            };
            let i = p.pick(c, &req).unwrap();
            p.on_sent(i, &req);
            bytes[i] += u64::from(req.bytes);
        }
        bytes
    }

    fn assert_shares(bytes: &[u64], want: &[f64]) {
        let total: u64 = bytes.iter().sum();
        let wsum: f64 = want.iter().sum();
        for (b, w) in bytes.iter().zip(want) {
            let got = *b as f64 / total as f64;
            let w = w / wsum;
            assert!((got - w).abs() <= 0.05 * w, "bytes {bytes:?} want {want:?}");
        }
    }

    #[test]
    fn class_shares_are_honoured_within_5_percent() {
        let cfg = ByteShareConfig {
            classes: vec![
                ClassShares {
                    class: 1,
                    shares: vec![3.0, 1.0, 0.0],
                },
                ClassShares {
                    class: 2,
                    shares: vec![1.0, 1.0, 2.0],
                },
            ],
            ..ByteShareConfig::default()
        };
        let c = cands(3);
        let mut p = ByteShare::new(cfg, 3);
        let mut rng = XorShift64::new(5);
        assert_shares(&run(&mut p, &c, 1, 10_000, &mut rng), &[3.0, 1.0, 0.0]);
        assert_shares(&run(&mut p, &c, 2, 10_000, &mut rng), &[1.0, 1.0, 2.0]);
        // Unlisted class: by weight.
        assert_shares(&run(&mut p, &c, 9, 10_000, &mut rng), &[1.0, 1.0, 1.0]);
    }

    #[test]
    fn rank_gives_the_fallback_order_and_weight_zero_is_never_picked() {
        let mut c = cands(3);
        c[1].weight = 0.0;
        let mut p = ByteShare::new(ByteShareConfig::default(), 3);
        let req = PickRequest {
            class: 0,
            key: 0,
            bytes: 100,
        };
        p.on_sent(0, &req);
        let mut order = Vec::new();
        p.rank(&c, &req, &mut order);
        assert_eq!(order, vec![2, 0]);
        assert_eq!(p.pick(&c, &req), Some(2));
        let none = vec![Candidate::new(0, 0.0)];
        assert_eq!(p.pick(&none, &req), None);
    }

    #[test]
    fn drift_is_corrected_next_frame() {
        let c = cands(2);
        let mut p = ByteShare::new(ByteShareConfig::default(), 2);
        let req = PickRequest {
            class: 0,
            key: 0,
            bytes: 1000,
        };
        // Backend 0 refused most of this frame: 20 % against a 50 % target.
        for _ in 0..2 {
            p.on_sent(0, &req);
        }
        for _ in 0..8 {
            p.on_sent(1, &req);
        }
        p.on_frame(&c, 0);
        assert!(p.correction(0, 0) > 1.0 && p.correction(0, 1) < 1.0);
        // The next frame gives backend 0 more than its plain share to make up.
        let mut rng = XorShift64::new(1);
        let bytes = run(&mut p, &c, 0, 1000, &mut rng);
        assert!(bytes[0] > bytes[1], "{bytes:?}");
    }

    #[test]
    fn new_backend_is_not_flooded() {
        let mut p = ByteShare::new(ByteShareConfig::default(), 2);
        let mut rng = XorShift64::new(2);
        run(&mut p, &cands(2), 0, 1000, &mut rng);
        let bytes = run(&mut p, &cands(3), 0, 300, &mut rng);
        assert!(bytes[2] < bytes[0] + bytes[1], "{bytes:?}");
    }
}
