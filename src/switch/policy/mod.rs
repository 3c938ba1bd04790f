//! Balancing policies: which backend of a service takes the next request.
//!
//! A policy sees only [`Candidate`]s (a weight and a few load figures per backend), never queues,
//! so the switch does not care what a backend is. The caller keeps one candidate slice per
//! service, updates it in place as health and failover change, and passes it to
//! [`Policy::pick`]. A candidate with weight 0 is never picked; to try the next best after the
//! chosen backend refused (no free rx buffer), set its weight to 0 and pick again.

mod byte_share;
mod config;
mod expected_delay;
mod maglev;
mod measure;
mod p2c;
mod rng;
mod wrr;

pub use byte_share::{ByteShare, ByteShareConfig, ClassShares};
pub use config::{new_policy, PolicyConfig, PolicyError, PolicyKind};
pub use expected_delay::ExpectedDelay;
pub use maglev::{Maglev, MaglevConfig, MAGLEV_MAX_TABLE_SIZE, MAGLEV_TABLE_SIZE};
pub use measure::{bench_candidates, measure_decision_ns, measure_policy_ns};
pub use p2c::{LeastOutstandingP2c, P2cConfig};
pub use rng::XorShift64;
pub use wrr::SmoothWrr;

/// One backend as a policy sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Candidate {
    /// Stable identity (e.g. port id), used by key-affinity policies so keys stay put when
    /// indexes shift; other policies ignore it.
    pub id: u32,
    /// Effective weight: base x health x slow start. 0 (or negative, or NaN) = not eligible.
    pub weight: f64,
    /// Requests dispatched and not answered.
    pub in_flight: u32,
    /// Requests waiting for this backend (delivered and unconsumed, or held by the switch).
    pub queued: u32,
    /// Measured drain rate in requests per second; 0 when unknown.
    pub drain_per_s: f64,
    /// Sessions it carries besides its requests in flight ([`crate::port::Drain::held`]: a
    /// `connection` service's established connections). Load-weighing policies add them to
    /// `in_flight`.
    pub held: u32,
}

impl Candidate {
    /// An idle candidate with identity `id` and weight `weight`.
    pub fn new(id: u32, weight: f64) -> Self {
        Self {
            id,
            weight,
            ..Self::default()
        }
    }

    /// What it carries now: requests in flight and sessions held.
    #[inline]
    pub fn load(&self) -> u32 {
        self.in_flight.saturating_add(self.held)
    }

    /// Whether a policy may pick it.
    #[inline]
    pub fn eligible(&self) -> bool {
        self.weight > 0.0
    }
}

/// What a policy may know about the request being placed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PickRequest {
    /// Request class from the header (byte-share tables).
    pub class: u8,
    /// Affinity key from the header (key-hash policies).
    pub key: u32,
    /// Payload bytes.
    pub bytes: u32,
}

/// A balancing policy.
pub trait Policy: Send {
    /// Chooses a candidate index for `req`, or `None` when no candidate is eligible. May advance
    /// the policy's rotation state.
    fn pick(&mut self, c: &[Candidate], req: &PickRequest) -> Option<usize>;

    /// The request was actually sent to candidate `idx` (bytes accounting).
    fn on_sent(&mut self, _idx: usize, _req: &PickRequest) {}

    /// Periodic tick (once per frame, e.g. each health refresh): re-reads weights that changed
    /// (weighted schedules and tables are rebuilt here, not per pick) and closes byte-share
    /// frames.
    fn on_frame(&mut self, _c: &[Candidate], _now_ns: u64) {}

    /// The policy's configuration name.
    fn name(&self) -> &'static str;
}
