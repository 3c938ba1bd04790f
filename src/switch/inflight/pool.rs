//! The in-flight block pool: pre-allocated blocks in subpools, each pre-bound to its identifier.
//!
//! The request table of the switch lives here. Blocks are allocated a subpool at a time, so the
//! hot path only pops a free list: no allocation and no identifier set-up per request. A new
//! subpool is added when free blocks fall under a threshold (before the pool runs dry), and a
//! subpool is released, returning its identifiers, only when all of its blocks are free and it is
//! the highest one, so live identifiers never move.
//!
//! A [`Token`] names a block *and* one use of it: every allocation (and every [`BlockPool::rebind`])
//! bumps the block's generation, so a late reply carrying an old token never matches the block's
//! next occupant.

use thiserror::Error;

/// Free-list terminator.
const NIL: u32 = u32::MAX;

/// Names one allocation of one block: `(generation << 32) | block id`, where
/// `block id = subpool index * subpool_size + slot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub u64);

impl Token {
    fn new(generation: u32, id: u32) -> Self {
        Self((u64::from(generation) << 32) | u64::from(id))
    }

    /// The block identifier (stable for the life of the block's subpool).
    pub fn id(self) -> u32 {
        self.0 as u32
    }

    /// The allocation generation of the block this token was issued for.
    pub fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// Most blocks a [`PoolConfig`] may describe (`subpool_size x max_subpools`): 1 Mi blocks, so a
/// configuration cannot ask for more host memory than a switch sensibly needs (the default is
/// 16 Ki blocks).
pub const MAX_POOL_BLOCKS: u64 = 1 << 20;

/// Largest [`PoolConfig::subpool_size`] (one subpool is allocated at once).
pub const MAX_SUBPOOL_SIZE: u32 = 1 << 16;

/// Sizing of a [`BlockPool`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Blocks per subpool. Default 256.
    pub subpool_size: u32,
    /// Add a subpool when fewer than this many blocks are free. Default 32.
    pub grow_below_free: u32,
    /// Most subpools the pool may hold. Default 64 (16384 blocks at the default size).
    pub max_subpools: u32,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            subpool_size: 256,
            grow_below_free: 32,
            max_subpools: 64,
        }
    }
}

/// Why the pool refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum PoolError {
    /// Every block of every allowed subpool is in use.
    #[error(
        "in-flight pool exhausted: all {capacity} blocks of {max_subpools} subpools are in use"
    )]
    Exhausted {
        /// Blocks in the pool.
        capacity: u32,
        /// The configured subpool limit.
        max_subpools: u32,
    },
    /// The configuration cannot describe a pool.
    #[error("invalid pool configuration: {0}")]
    InvalidConfig(&'static str),
    /// A setting is outside its range.
    #[error("pool {field} = {value}: must be in {min}..={max}{hint}")]
    OutOfRange {
        /// The setting (`subpool_size`, `max_subpools`, `grow_below_free`).
        field: &'static str,
        /// The value given (for `max_subpools`, the blocks it adds up to).
        value: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
        /// What to do.
        hint: &'static str,
    },
}

impl PoolError {
    /// The setting at fault, as named in a configuration file, for configuration errors.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::OutOfRange { field, .. } => Some(field),
            Self::InvalidConfig(_) | Self::Exhausted { .. } => None,
        }
    }
}

impl PoolConfig {
    /// Checks the sizing: `subpool_size` in 1..=[`MAX_SUBPOOL_SIZE`], `max_subpools` at least
    /// 1 with `subpool_size x max_subpools` at most [`MAX_POOL_BLOCKS`], and `grow_below_free`
    /// at most the pool's capacity.
    pub fn validate(&self) -> Result<(), PoolError> {
        if !(1..=MAX_SUBPOOL_SIZE).contains(&self.subpool_size) {
            return Err(PoolError::OutOfRange {
                field: "subpool_size",
                value: self.subpool_size.into(),
                min: 1,
                max: MAX_SUBPOOL_SIZE.into(),
                hint: "",
            });
        }
        let capacity = u64::from(self.subpool_size) * u64::from(self.max_subpools);
        if self.max_subpools == 0 || capacity > MAX_POOL_BLOCKS {
            return Err(PoolError::OutOfRange {
                field: "max_subpools",
                value: self.max_subpools.into(),
                min: 1,
                max: MAX_POOL_BLOCKS / u64::from(self.subpool_size),
                hint: " (subpool_size x max_subpools blocks at most 1048576)",
            });
        }
        if u64::from(self.grow_below_free) > capacity {
            return Err(PoolError::OutOfRange {
                field: "grow_below_free",
                value: self.grow_below_free.into(),
                min: 0,
                max: capacity,
                hint: " (the pool's capacity)",
            });
        }
        Ok(())
    }
}

/// Counters of a [`BlockPool`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Successful allocations.
    pub allocs: u64,
    /// Allocations refused because the pool was full.
    pub exhausted: u64,
    /// Subpools added.
    pub grows: u64,
    /// Subpools released.
    pub releases: u64,
}

struct Block<T> {
    generation: u32,
    next_free: u32,
    value: Option<T>,
}

struct Subpool<T> {
    blocks: Box<[Block<T>]>,
    free_head: u32,
    free: u32,
}

impl<T> Subpool<T> {
    fn new(size: u32, first_generation: u32) -> Self {
        let blocks = (0..size)
            .map(|slot| Block {
                generation: first_generation,
                next_free: if slot + 1 < size { slot + 1 } else { NIL },
                value: None,
            })
            .collect();
        Self {
            blocks,
            free_head: 0,
            free: size,
        }
    }
}

/// A pool of pre-allocated blocks holding `T`, addressed by [`Token`].
pub struct BlockPool<T> {
    cfg: PoolConfig,
    subpools: Vec<Subpool<T>>,
    /// Bit `i` set: subpool `i` has a free block. Allocation takes the lowest, so high subpools
    /// drain and can be released.
    has_free: Vec<u64>,
    /// Per subpool index, the generation a re-created subpool starts at, so tokens issued before a
    /// release stay stale after the identifiers come back.
    next_generation: Vec<u32>,
    free_total: u32,
    live: usize,
    stats: PoolStats,
}

impl<T> BlockPool<T> {
    /// A pool with one subpool ready, after [`PoolConfig::validate`].
    pub fn new(cfg: PoolConfig) -> Result<Self, PoolError> {
        cfg.validate()?;
        let mut pool = Self {
            cfg,
            subpools: Vec::with_capacity(cfg.max_subpools as usize),
            has_free: vec![0; (cfg.max_subpools as usize).div_ceil(64)],
            next_generation: vec![0; cfg.max_subpools as usize],
            free_total: 0,
            live: 0,
            stats: PoolStats::default(),
        };
        pool.grow();
        Ok(pool)
    }

    fn grow(&mut self) -> bool {
        let idx = self.subpools.len();
        if idx >= self.cfg.max_subpools as usize {
            return false;
        }
        self.subpools.push(Subpool::new(
            self.cfg.subpool_size,
            self.next_generation[idx],
        ));
        self.has_free[idx / 64] |= 1 << (idx % 64);
        self.free_total += self.cfg.subpool_size;
        self.stats.grows += 1;
        true
    }

    fn split(&self, id: u32) -> (usize, usize) {
        (
            (id / self.cfg.subpool_size) as usize,
            (id % self.cfg.subpool_size) as usize,
        )
    }

    fn block(&self, token: Token) -> Option<&Block<T>> {
        let (sp, slot) = self.split(token.id());
        let b = self.subpools.get(sp)?.blocks.get(slot)?;
        (b.generation == token.generation() && b.value.is_some()).then_some(b)
    }

    fn block_mut(&mut self, token: Token) -> Option<&mut Block<T>> {
        let (sp, slot) = self.split(token.id());
        let b = self.subpools.get_mut(sp)?.blocks.get_mut(slot)?;
        (b.generation == token.generation() && b.value.is_some()).then_some(b)
    }

    /// Stores `value` in a free block and returns its token. O(1); adds a subpool (once per
    /// `subpool_size` allocations at most) when free blocks fall under `grow_below_free`.
    pub fn alloc(&mut self, value: T) -> Result<Token, PoolError> {
        if self.free_total == 0 && !self.grow() {
            self.stats.exhausted += 1;
            return Err(PoolError::Exhausted {
                capacity: self.capacity() as u32,
                max_subpools: self.cfg.max_subpools,
            });
        }
        let sp = self
            .has_free
            .iter()
            .enumerate()
            .find(|(_, w)| **w != 0)
            .map(|(i, w)| i * 64 + w.trailing_zeros() as usize)
            .expect("free_total > 0 implies a subpool with a free block");
        let size = self.cfg.subpool_size;
        let sub = &mut self.subpools[sp];
        let slot = sub.free_head;
        let block = &mut sub.blocks[slot as usize];
        sub.free_head = block.next_free;
        sub.free -= 1;
        if sub.free == 0 {
            self.has_free[sp / 64] &= !(1 << (sp % 64));
        }
        block.generation = block.generation.wrapping_add(1);
        block.next_free = NIL;
        block.value = Some(value);
        let token = Token::new(block.generation, sp as u32 * size + slot);
        self.free_total -= 1;
        self.live += 1;
        self.stats.allocs += 1;
        if self.free_total < self.cfg.grow_below_free {
            self.grow();
        }
        Ok(token)
    }

    /// The value of a live token; `None` when the token is stale or its block free.
    pub fn get(&self, token: Token) -> Option<&T> {
        self.block(token)?.value.as_ref()
    }

    /// Mutable access to the value of a live token; `None` when stale or free.
    pub fn get_mut(&mut self, token: Token) -> Option<&mut T> {
        self.block_mut(token)?.value.as_mut()
    }

    /// Gives the same block a new generation, so `token` (e.g. held by a backend the request was
    /// taken from) goes stale. Returns the new token, or `None` when `token` is not live.
    pub fn rebind(&mut self, token: Token) -> Option<Token> {
        let block = self.block_mut(token)?;
        block.generation = block.generation.wrapping_add(1);
        Some(Token::new(block.generation, token.id()))
    }

    /// Frees the block of a live token and returns its value; `None` when stale or already free.
    pub fn free(&mut self, token: Token) -> Option<T> {
        let (sp, slot) = self.split(token.id());
        let block = self.block_mut(token)?;
        let value = block.value.take();
        let sub = &mut self.subpools[sp];
        sub.blocks[slot].next_free = sub.free_head;
        sub.free_head = slot as u32;
        sub.free += 1;
        self.has_free[sp / 64] |= 1 << (sp % 64);
        self.free_total += 1;
        self.live -= 1;
        self.maybe_release();
        value
    }

    /// Releases fully free top subpools while the rest still leaves comfortable headroom (half a
    /// subpool above the grow threshold), so a load hovering at the threshold does not make the
    /// pool grow and shrink on alternate requests.
    fn maybe_release(&mut self) {
        let size = self.cfg.subpool_size;
        while self.subpools.len() > 1 {
            let top = self.subpools.len() - 1;
            if self.subpools[top].free != size {
                break;
            }
            let remaining = self.free_total - size;
            if remaining < self.cfg.grow_below_free.saturating_add(size / 2) {
                break;
            }
            let sub = self.subpools.pop().expect("len > 1");
            let high = sub.blocks.iter().map(|b| b.generation).max().unwrap_or(0);
            self.next_generation[top] = high.wrapping_add(1);
            self.has_free[top / 64] &= !(1 << (top % 64));
            self.free_total = remaining;
            self.stats.releases += 1;
        }
    }

    /// Live blocks, in block-id order.
    pub fn iter(&self) -> impl Iterator<Item = (Token, &T)> + '_ {
        let size = self.cfg.subpool_size;
        self.subpools.iter().enumerate().flat_map(move |(sp, sub)| {
            sub.blocks.iter().enumerate().filter_map(move |(slot, b)| {
                b.value
                    .as_ref()
                    .map(|v| (Token::new(b.generation, sp as u32 * size + slot as u32), v))
            })
        })
    }

    /// Live blocks.
    pub fn len(&self) -> usize {
        self.live
    }

    /// True when no block is live.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Blocks currently allocated in subpools (live + free).
    pub fn capacity(&self) -> usize {
        self.subpools.len() * self.cfg.subpool_size as usize
    }

    /// Subpools currently held.
    pub fn subpools(&self) -> usize {
        self.subpools.len()
    }

    /// Counters since creation.
    pub fn stats(&self) -> PoolStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn small() -> PoolConfig {
        PoolConfig {
            subpool_size: 4,
            grow_below_free: 1,
            max_subpools: 3,
        }
    }

    #[test]
    fn token_layout_is_generation_then_block_id() {
        let mut p = BlockPool::new(small()).unwrap();
        let t = p.alloc(7).unwrap();
        assert_eq!(t.id(), 0);
        assert_eq!(t.generation(), 1);
        assert_eq!(t.0, 1 << 32);
    }

    #[test]
    fn stale_token_does_not_match_reused_block() {
        let mut p = BlockPool::new(small()).unwrap();
        let a = p.alloc("a").unwrap();
        assert_eq!(p.free(a), Some("a"));
        let b = p.alloc("b").unwrap();
        assert_eq!(a.id(), b.id());
        assert_eq!(p.get(a), None);
        assert_eq!(p.free(a), None);
        assert_eq!(p.get(b), Some(&"b"));
    }

    #[test]
    fn rebind_makes_old_token_stale() {
        let mut p = BlockPool::new(small()).unwrap();
        let a = p.alloc(1).unwrap();
        let b = p.rebind(a).unwrap();
        assert_eq!(a.id(), b.id());
        assert_eq!(p.get(a), None);
        *p.get_mut(b).unwrap() = 2;
        assert_eq!(p.free(b), Some(2));
        assert_eq!(p.rebind(b), None);
    }

    #[test]
    fn grows_before_running_dry_and_refuses_past_max() {
        let mut p = BlockPool::new(small()).unwrap();
        let mut toks = Vec::new();
        for i in 0..3 {
            toks.push(p.alloc(i).unwrap());
        }
        // 1 free < grow_below_free? No: 1 free is not below 1; the fourth alloc leaves 0 and grows.
        assert_eq!(p.subpools(), 1);
        toks.push(p.alloc(3).unwrap());
        assert_eq!(p.subpools(), 2);
        for i in 4..12 {
            toks.push(p.alloc(i).unwrap());
        }
        assert_eq!(p.subpools(), 3);
        assert_eq!(p.len(), 12);
        assert!(matches!(
            p.alloc(99),
            Err(PoolError::Exhausted { capacity: 12, .. })
        ));
        assert_eq!(p.stats().exhausted, 1);
    }

    #[test]
    fn only_fully_free_top_subpool_is_released_and_ids_stay_stable() {
        let cfg = PoolConfig {
            subpool_size: 4,
            grow_below_free: 0,
            max_subpools: 3,
        };
        let mut p = BlockPool::new(cfg).unwrap();
        let toks: Vec<_> = (0..12).map(|i| p.alloc(i).unwrap()).collect();
        assert_eq!(p.subpools(), 3);
        // Freeing the middle subpool releases nothing: it is not the top one.
        for t in &toks[4..8] {
            p.free(*t);
        }
        assert_eq!(p.subpools(), 3);
        // Freeing the top one releases it; the middle one stays as headroom (half a subpool).
        for t in &toks[8..12] {
            p.free(*t);
        }
        assert_eq!(p.subpools(), 2);
        // With two blocks of the first subpool free, the middle one goes too.
        p.free(toks[0]);
        assert_eq!(p.subpools(), 2);
        p.free(toks[1]);
        assert_eq!(p.subpools(), 1);
        assert_eq!(p.stats().releases, 2);
        for (i, t) in toks[..4].iter().enumerate().skip(2) {
            assert_eq!(p.get(*t), Some(&i));
        }
        // Ids of the released subpool come back, tokens issued before do not match.
        let again: Vec<_> = (0..8).map(|i| p.alloc(100 + i).unwrap()).collect();
        for old in &toks[4..12] {
            assert_eq!(p.get(*old), None);
        }
        assert!(again.iter().any(|t| t.id() >= 8));
    }

    #[test]
    fn hovering_at_threshold_does_not_thrash() {
        let cfg = PoolConfig {
            subpool_size: 8,
            grow_below_free: 2,
            max_subpools: 4,
        };
        let mut p = BlockPool::new(cfg).unwrap();
        let held: Vec<_> = (0..6).map(|i| p.alloc(i).unwrap()).collect();
        assert_eq!(p.subpools(), 1);
        for _ in 0..100 {
            let t = p.alloc(0).unwrap();
            p.free(t);
        }
        assert!(p.stats().grows <= 2, "{:?}", p.stats());
        drop(held);
    }

    #[test]
    fn iter_lists_live_blocks() {
        let mut p = BlockPool::new(small()).unwrap();
        let a = p.alloc('a').unwrap();
        let b = p.alloc('b').unwrap();
        p.free(a);
        let live: Vec<_> = p.iter().collect();
        assert_eq!(live, vec![(b, &'b')]);
    }

    #[test]
    fn rejects_bad_config() {
        let cfg = PoolConfig {
            subpool_size: 0,
            ..PoolConfig::default()
        };
        assert!(BlockPool::<u8>::new(cfg).is_err());
    }

    #[test]
    fn refuses_absurd_sizes_before_allocating() {
        // A pool of u32::MAX blocks used to be accepted and abort the process.
        for (cfg, field) in [
            (
                PoolConfig {
                    subpool_size: 1,
                    max_subpools: u32::MAX,
                    ..PoolConfig::default()
                },
                "max_subpools",
            ),
            (
                PoolConfig {
                    subpool_size: u32::MAX,
                    max_subpools: 1,
                    ..PoolConfig::default()
                },
                "subpool_size",
            ),
            (
                PoolConfig {
                    grow_below_free: 1 << 30,
                    ..PoolConfig::default()
                },
                "grow_below_free",
            ),
        ] {
            let e = BlockPool::<u8>::new(cfg).err().unwrap();
            assert_eq!(e.field(), Some(field), "{e}");
            assert!(e.to_string().contains(field), "{e}");
        }
        let e = toml::from_str::<PoolConfig>("max_subpool = 4").unwrap_err();
        assert!(e.to_string().contains("max_subpool"), "{e}");
    }

    #[derive(Clone, Debug)]
    enum Op {
        Alloc(u32),
        Free(usize),
        Rebind(usize),
        Get(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => any::<u32>().prop_map(Op::Alloc),
            2 => any::<usize>().prop_map(Op::Free),
            1 => any::<usize>().prop_map(Op::Rebind),
            1 => any::<usize>().prop_map(Op::Get),
        ]
    }

    proptest! {
        #[test]
        fn matches_hashmap_model(ops in proptest::collection::vec(op(), 1..400)) {
            let cfg = PoolConfig { subpool_size: 8, grow_below_free: 3, max_subpools: 6 };
            let mut pool = BlockPool::new(cfg).unwrap();
            let mut model: HashMap<Token, u32> = HashMap::new();
            // Every token ever issued, live or stale.
            let mut issued: Vec<Token> = Vec::new();
            for op in ops {
                match op {
                    Op::Alloc(v) => match pool.alloc(v) {
                        Ok(t) => {
                            prop_assert!(!model.contains_key(&t));
                            prop_assert!(!issued.contains(&t), "token reissued");
                            model.insert(t, v);
                            issued.push(t);
                        }
                        Err(_) => prop_assert_eq!(model.len(), 48),
                    },
                    Op::Free(i) if !issued.is_empty() => {
                        let t = issued[i % issued.len()];
                        prop_assert_eq!(pool.free(t), model.remove(&t));
                    }
                    Op::Rebind(i) if !issued.is_empty() => {
                        let t = issued[i % issued.len()];
                        match (pool.rebind(t), model.remove(&t)) {
                            (Some(n), Some(v)) => {
                                prop_assert!(!issued.contains(&n));
                                model.insert(n, v);
                                issued.push(n);
                            }
                            (None, None) => {}
                            (a, b) => prop_assert!(false, "rebind {:?} vs model {:?}", a, b),
                        }
                    }
                    Op::Get(i) if !issued.is_empty() => {
                        let t = issued[i % issued.len()];
                        prop_assert_eq!(pool.get(t), model.get(&t));
                    }
                    _ => {}
                }
                prop_assert_eq!(pool.len(), model.len());
                prop_assert!(pool.capacity() >= pool.len());
                let mut live: Vec<_> = pool.iter().map(|(t, v)| (t, *v)).collect();
                let mut want: Vec<_> = model.iter().map(|(t, v)| (*t, *v)).collect();
                live.sort();
                want.sort();
                prop_assert_eq!(live, want);
            }
        }
    }
}
