//! The switch: router, health, balancing policies, failover, in-flight table, stats.
//!
//! [`Switch`] is the data path: it pops what ports send, routes unicast messages by port id and
//! requests to a service through that service's policy, holds each request's tx chain in the
//! frontend's memory until its one answer, and fails work over when a backend stops draining.
//! The decisions it makes are pure logic, free of queues and I/O, in their own modules: time
//! ([`clock`]), the in-flight block pool ([`pool`]), per-backend health scores ([`health`]),
//! stall ejection and slow start ([`failover`]) and the balancing policies ([`policy`]).

pub mod clock;
mod dataplane;
pub mod failover;
pub mod health;
mod inflight;
pub mod policy;
pub mod pool;
mod port;
mod service;
mod stats;

pub use clock::{Clock, ManualClock, MonotonicClock};
pub use dataplane::{Switch, SwitchConfig, SWITCH_PORT};
pub use failover::{BackendStatus, Event, Failover, FailoverConfig, FailoverStats};
pub use health::{BackendHealth, Combine, HealthConfig, HealthStats, HealthWeights};
pub use policy::{new_policy, Candidate, PickRequest, Policy, PolicyConfig, PolicyKind};
pub use pool::{BlockPool, PoolConfig, PoolError, PoolStats, Token};
pub use port::{Notifier, Polling, PortId, PortStats};
pub use service::{ServiceConfig, ServiceId, ServiceStats};
pub use stats::{MemberSnapshot, PortSnapshot, ServiceSnapshot, Snapshot, Totals};

/// Why the switch refused a configuration.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// Two ports or two services share a name.
    #[error("the name {0:?} is already taken; port and service names must be unique")]
    DuplicateName(String),
    /// Only a port that is down can be revived.
    #[error("port {0} is up; only a port that went down can be revived")]
    PortUp(u32),
    /// A service names a port that does not exist.
    #[error("port {0} does not exist; add the port before the service that uses it")]
    UnknownPort(u32),
    /// A weight is not a positive number.
    #[error("service {service}: backend weight {weight} must be a positive number")]
    BadWeight {
        /// Service name.
        service: String,
        /// The weight given.
        weight: f64,
    },
    /// The policy configuration is invalid.
    #[error("invalid policy configuration: {0}")]
    Policy(#[from] policy::PolicyError),
    /// The in-flight pool configuration is invalid.
    #[error("invalid in-flight pool configuration: {0}")]
    Pool(#[from] pool::PoolError),
}

#[cfg(test)]
mod tests;
