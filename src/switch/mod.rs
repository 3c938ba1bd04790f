//! The switch: router, health, balancing policies, failover, in-flight table, stats.
//!
//! This part holds the pure decision logic, free of queues and I/O: time ([`clock`]), the
//! in-flight block pool ([`pool`]), per-backend health scores ([`health`]), stall ejection and
//! slow start ([`failover`]) and the balancing policies ([`policy`]).

pub mod clock;
pub mod failover;
pub mod health;
pub mod policy;
pub mod pool;

pub use clock::{Clock, ManualClock, MonotonicClock};
pub use failover::{BackendStatus, Event, Failover, FailoverConfig, FailoverStats};
pub use health::{BackendHealth, Combine, HealthConfig, HealthStats, HealthWeights};
pub use policy::{new_policy, Candidate, PickRequest, Policy, PolicyConfig, PolicyKind};
pub use pool::{BlockPool, PoolConfig, PoolError, PoolStats, Token};
