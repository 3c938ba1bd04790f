//! The in-flight table: one record per accepted request, from acceptance to its one answer, in a
//! pre-allocated [`BlockPool`] (seed 001: blocks pre-bound to their identifiers, no allocation
//! on the hot path), with the queries failover, deadlines and port removal need.

pub mod pool;

pub use pool::{BlockPool, PoolConfig, PoolError, PoolStats, Token};

use crate::port::PortId;
use crate::virtio::TxChain;

/// Where a request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Accepted, waiting for a backend (or for the addressed port's rx buffer).
    Waiting,
    /// Delivered to `backend`; the reply is awaited.
    Dispatched,
    /// Answered (reply or error) but the answer waits in the frontend's outbox.
    Answering,
}

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// A service, by id.
    Service(u32),
    /// A port, by id.
    Port(PortId),
}

/// A backend a request was delivered to: its port and, for a service, the member index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backend {
    pub port: PortId,
    pub member: Option<usize>,
}

/// One request between acceptance and its one answer. The frontend's message is held (not
/// released to its guest) for the whole time, so the request stays readable in the frontend's
/// own memory for re-dispatch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Request {
    pub frontend: PortId,
    pub chain: TxChain,
    pub target: Target,
    pub stage: Stage,
    pub backend: Option<Backend>,
    pub accepted_ns: u64,
    pub dispatched_ns: u64,
    pub deadline_ns: u64,
}

/// The in-flight table. Bounds: at most `pool.max_subpools x pool.subpool_size` records in
/// all, and no frontend more than its port's [`max_held`](crate::port::Port::max_held) (the
/// switch checks [`InflightTable::held_by`] before it inserts).
pub(crate) struct InflightTable {
    pool: BlockPool<Request>,
    /// Records per frontend port.
    held: Vec<u32>,
}

impl InflightTable {
    pub fn new(cfg: PoolConfig) -> Result<Self, PoolError> {
        Ok(Self {
            pool: BlockPool::new(cfg)?,
            held: Vec::new(),
        })
    }

    pub fn insert(&mut self, r: Request) -> Result<Token, PoolError> {
        let f = r.frontend as usize;
        let t = self.pool.alloc(r)?;
        if self.held.len() <= f {
            self.held.resize(f + 1, 0);
        }
        self.held[f] += 1;
        Ok(t)
    }

    /// Requests of frontend `p` in flight.
    pub fn held_by(&self, p: PortId) -> u32 {
        self.held.get(p as usize).copied().unwrap_or(0)
    }

    pub fn get(&self, t: Token) -> Option<&Request> {
        self.pool.get(t)
    }

    pub fn get_mut(&mut self, t: Token) -> Option<&mut Request> {
        self.pool.get_mut(t)
    }

    pub fn remove(&mut self, t: Token) -> Option<Request> {
        let r = self.pool.free(t)?;
        if let Some(n) = self.held.get_mut(r.frontend as usize) {
            *n = n.saturating_sub(1);
        }
        Some(r)
    }

    pub fn len(&self) -> usize {
        self.pool.len()
    }

    pub fn subpools(&self) -> usize {
        self.pool.subpools()
    }

    /// Takes the dispatched requests of member `member` (port `port`) of service `service` back
    /// to waiting, each under a new token (so the old backend's reply is late). Fills `out` with
    /// the new tokens, oldest request first.
    pub fn recall(&mut self, service: u32, port: PortId, member: usize, out: &mut Vec<Token>) {
        out.clear();
        let backend = Some(Backend {
            port,
            member: Some(member),
        });
        out.extend(self.pool.iter().filter_map(|(t, r)| {
            (r.stage == Stage::Dispatched
                && r.target == Target::Service(service)
                && r.backend == backend)
                .then_some(t)
        }));
        out.sort_by_key(|t| self.pool.get(*t).map_or(0, |r| r.accepted_ns));
        out.retain_mut(|t| match self.pool.rebind(*t) {
            Some(nt) => {
                if let Some(r) = self.pool.get_mut(nt) {
                    r.stage = Stage::Waiting;
                    r.backend = None;
                }
                *t = nt;
                true
            }
            None => false,
        });
    }

    /// Requests whose deadline passed: not answered yet, or answered with a reply that still
    /// waits for its frontend.
    pub fn expired(&self, now: u64, out: &mut Vec<Token>) {
        out.clear();
        out.extend(
            self.pool
                .iter()
                .filter_map(|(t, r)| (now >= r.deadline_ns).then_some(t)),
        );
    }

    /// Requests of service `service` delivered to its member `member` (port `port`) and not
    /// answered yet: what that member still owes.
    pub fn owed_by(&self, service: u32, port: PortId, member: usize) -> usize {
        let backend = Some(Backend {
            port,
            member: Some(member),
        });
        self.pool
            .iter()
            .filter(|(_, r)| {
                r.stage == Stage::Dispatched
                    && r.target == Target::Service(service)
                    && r.backend == backend
            })
            .count()
    }

    /// Requests addressed to service `service` that are not answered yet (waiting or
    /// dispatched).
    pub fn unanswered_for(&self, service: u32, out: &mut Vec<Token>) {
        out.clear();
        out.extend(self.pool.iter().filter_map(|(t, r)| {
            (r.target == Target::Service(service) && r.stage != Stage::Answering).then_some(t)
        }));
    }

    /// Requests port `p` sent, and requests delivered to it as an addressed port.
    pub fn involving(&self, p: PortId, out: &mut Vec<Token>) {
        out.clear();
        out.extend(self.pool.iter().filter_map(|(t, r)| {
            (r.frontend == p || (r.target == Target::Port(p) && r.stage == Stage::Dispatched))
                .then_some(t)
        }));
    }
}
