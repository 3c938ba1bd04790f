//! Maglev consistent hashing: key affinity with minimal disruption.
//!
//! A lookup table of a prime size (65537) maps key hashes to candidates. Each candidate fills
//! slots in its own permutation of the table, taking turns in proportion to its weight (as
//! Envoy's weighted Maglev), so the same key goes to the same backend and losing a backend moves
//! about 1/n of the keys. Permutations derive from the candidate's stable
//! [`Candidate::id`](super::Candidate::id). The table is rebuilt only when a fingerprint of the
//! candidate ids and weights (weights quantised to ~9 % steps, so health jitter does not rebuild)
//! changes: checked at [`Policy::on_frame`], when the slice length changes, and when a lookup
//! lands on an ineligible candidate.

use serde::Deserialize;

use super::{Candidate, PickRequest, Policy};

/// Table size used by Google's paper and Envoy: prime, ~100 x a typical backend count.
pub const MAGLEV_TABLE_SIZE: u32 = 65537;

/// Largest table size a configuration may ask for (a prime; the table takes 2 bytes an entry,
/// about 2 MB, and is rebuilt when weights change).
pub const MAGLEV_MAX_TABLE_SIZE: u32 = 1_000_003;

const EMPTY: u16 = u16::MAX;

/// Parameters of [`Maglev`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaglevConfig {
    /// Lookup table size; must be prime and larger than the backend count. Default 65537.
    pub table_size: u32,
}

impl Default for MaglevConfig {
    fn default() -> Self {
        Self {
            table_size: MAGLEV_TABLE_SIZE,
        }
    }
}

#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Weight bucket for the fingerprint: 0 for ineligible, else ~1/8 of a doubling per step.
fn bucket(w: f64) -> u64 {
    if w > 0.0 && w.is_finite() {
        ((w.log2() * 8.0).round() as i64 as u64) | (1 << 63)
    } else {
        0
    }
}

fn fingerprint(c: &[Candidate]) -> u64 {
    c.iter().fold(c.len() as u64, |h, x| {
        mix(h ^ mix(u64::from(x.id) ^ bucket(x.weight).rotate_left(32)))
    })
}

/// Whether `n` is prime (trial division; divisors are squared in 64 bits, so it holds up to
/// `u32::MAX`).
pub(super) fn is_prime(n: u32) -> bool {
    let n = u64::from(n);
    n >= 2 && (2u64..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

/// Maglev consistent-hash policy.
#[derive(Clone, Debug)]
pub struct Maglev {
    table: Vec<u16>,
    fingerprint: Option<u64>,
    len: usize,
    rebuilds: u64,
}

impl Maglev {
    /// A policy with an empty table; the first pick builds it. `table_size` must be prime and
    /// greater than the number of backends (checked by [`super::new_policy`]).
    pub fn new(cfg: MaglevConfig) -> Self {
        Self {
            table: vec![EMPTY; cfg.table_size as usize],
            fingerprint: None,
            len: 0,
            rebuilds: 0,
        }
    }

    /// Table rebuilds so far.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds
    }

    fn refresh(&mut self, c: &[Candidate]) {
        let fp = fingerprint(c);
        if self.fingerprint != Some(fp) {
            self.build(c);
            self.fingerprint = Some(fp);
        }
    }

    fn build(&mut self, c: &[Candidate]) {
        self.rebuilds += 1;
        self.len = c.len();
        self.table.iter_mut().for_each(|t| *t = EMPTY);
        let m = self.table.len() as u64;
        struct Entry {
            idx: u16,
            offset: u64,
            skip: u64,
            next: u64,
            weight: f64,
            target: f64,
        }
        let max_w = c
            .iter()
            .filter(|x| x.eligible())
            .map(|x| x.weight)
            .fold(0.0, f64::max);
        let mut entries: Vec<Entry> = c
            .iter()
            .enumerate()
            .filter(|(i, x)| x.eligible() && *i < EMPTY as usize)
            .map(|(i, x)| {
                let h = mix(u64::from(x.id) ^ 0x6D61_676C_6576);
                Entry {
                    idx: i as u16,
                    offset: h % m,
                    skip: mix(h) % (m - 1) + 1,
                    next: 0,
                    weight: x.weight / max_w,
                    target: 0.0,
                }
            })
            .collect();
        if entries.is_empty() {
            return;
        }
        let mut filled = 0u64;
        let mut iteration = 1.0f64;
        while filled < m {
            for e in entries.iter_mut() {
                if filled == m {
                    break;
                }
                // A candidate at the top weight goes every round; one at a third of it, every
                // third round.
                if iteration * e.weight < e.target {
                    continue;
                }
                e.target += 1.0;
                loop {
                    let slot = ((e.offset + e.next * e.skip) % m) as usize;
                    e.next += 1;
                    if self.table[slot] == EMPTY {
                        self.table[slot] = e.idx;
                        filled += 1;
                        break;
                    }
                }
            }
            iteration += 1.0;
        }
    }

    #[inline]
    fn lookup(&self, key: u32) -> usize {
        let slot = mix(u64::from(key)) % self.table.len() as u64;
        self.table[slot as usize] as usize
    }
}

impl Policy for Maglev {
    fn pick(&mut self, c: &[Candidate], req: &PickRequest) -> Option<usize> {
        if c.len() != self.len || self.fingerprint.is_none() {
            self.refresh(c);
        }
        let i = self.lookup(req.key);
        if c.get(i).is_some_and(|x| x.eligible()) {
            return Some(i);
        }
        // Stale table (a backend went ineligible since the last frame).
        self.refresh(c);
        let i = self.lookup(req.key);
        c.get(i).filter(|x| x.eligible()).map(|_| i)
    }

    fn on_frame(&mut self, c: &[Candidate], _now_ns: u64) {
        self.refresh(c);
    }

    fn name(&self) -> &'static str {
        "maglev"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(n: usize) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate::new(100 + i as u32, 1.0))
            .collect()
    }

    fn req(key: u32) -> PickRequest {
        PickRequest {
            class: 0,
            key,
            bytes: 0,
        }
    }

    #[test]
    fn same_key_same_backend() {
        let c = cands(7);
        let mut p = Maglev::new(MaglevConfig::default());
        for key in 0..1000 {
            let a = p.pick(&c, &req(key));
            assert_eq!(a, p.pick(&c, &req(key)));
        }
        assert_eq!(p.rebuilds(), 1);
    }

    #[test]
    fn losing_one_backend_moves_about_one_nth_of_the_keys() {
        let mut c = cands(10);
        let mut p = Maglev::new(MaglevConfig::default());
        let before: Vec<_> = (0..20_000).map(|k| p.pick(&c, &req(k)).unwrap()).collect();
        c[4].weight = 0.0;
        let after: Vec<_> = (0..20_000).map(|k| p.pick(&c, &req(k)).unwrap()).collect();
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let on_lost = before.iter().filter(|&&b| b == 4).count();
        assert!(after.iter().all(|&b| b != 4));
        // Keys of the lost backend must move; few others may.
        assert!(moved >= on_lost);
        assert!(
            (moved as f64) < 20_000.0 * 0.13,
            "moved {moved}, lost had {on_lost}"
        );
    }

    #[test]
    fn weights_are_honoured_in_the_table() {
        let mut c = cands(4);
        for (i, w) in [1.0, 2.0, 3.0, 4.0].into_iter().enumerate() {
            c[i].weight = w;
        }
        let mut p = Maglev::new(MaglevConfig::default());
        p.on_frame(&c, 0);
        let mut counts = [0u32; 4];
        for t in &p.table {
            counts[*t as usize] += 1;
        }
        for (i, n) in counts.iter().enumerate() {
            let want = MAGLEV_TABLE_SIZE as f64 * (i + 1) as f64 / 10.0;
            assert!((*n as f64 - want).abs() < 0.02 * want, "{counts:?}");
        }
    }

    #[test]
    fn small_weight_jitter_does_not_rebuild_and_nothing_eligible_is_none() {
        let mut c = cands(3);
        let mut p = Maglev::new(MaglevConfig::default());
        p.pick(&c, &req(1));
        c[0].weight = 1.01;
        p.on_frame(&c, 0);
        assert_eq!(p.rebuilds(), 1);
        c.iter_mut().for_each(|x| x.weight = 0.0);
        assert_eq!(p.pick(&c, &req(1)), None);
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537) && is_prime(251) && !is_prime(65536) && !is_prime(1));
    }

    #[test]
    fn primality_holds_up_to_u32_max() {
        // Trial division squared its divisor in 32 bits and overflowed here.
        assert!(is_prime(4_294_967_291));
        assert!(!is_prime(u32::MAX));
        assert!(is_prime(MAGLEV_MAX_TABLE_SIZE));
        assert!(is_prime(MAGLEV_TABLE_SIZE));
        assert!(!is_prime(65_536));
    }
}
