//! The switch: router, health, balancing policies, failover, in-flight table, stats.
//!
//! [`Switch`] is the data path: it takes what ports send, routes unicast messages by port id and
//! requests to a service through that service's policy, holds each request's message in the
//! frontend's memory until its one answer, and fails work over when a backend stops draining.
//! It drives every port through the [`Port`](crate::port::Port) seam and never learns what
//! kind of port it serves.
//!
//! Split by who owns the state: the core (ports, routing by kind, ports going down), the
//! services and their members as they come, drain and go (`membership`), each port's outbox
//! (`outbox`), dispatch and answers (`dispatch`), the in-flight table ([`inflight`]) and the
//! sweep (`sweep`). The decisions are pure logic, free of queues
//! and I/O, in their own modules: time ([`clock`]), per-backend health scores ([`health`]),
//! stall ejection and slow start ([`failover`]) and the balancing policies ([`policy`]).

pub mod clock;
mod core;
mod dispatch;
pub mod failover;
mod header;
pub mod health;
pub mod inflight;
mod membership;
mod outbox;
pub mod policy;
mod ports;
mod service;
mod slot;
mod stats;
mod sweep;

pub use self::core::{Switch, SwitchConfig, SwitchConfigError, MAX_BATCH, SWITCH_PORT};
pub use crate::port::{Notifier, Polling, PortId};
pub use clock::{Clock, ManualClock, MonotonicClock};
pub use failover::{
    BackendStatus, Event, Failover, FailoverConfig, FailoverConfigError, FailoverStats,
};
pub use health::{
    BackendHealth, Combine, HealthConfig, HealthConfigError, HealthStats, HealthWeights,
};
pub use inflight::{pool, BlockPool, PoolConfig, PoolError, PoolStats, Token};
pub use membership::{Departure, DrainStarted};
pub use policy::{new_policy, Candidate, PickRequest, Policy, PolicyConfig, PolicyKind};
pub use service::{MemberState, ServiceConfig, ServiceConfigError, ServiceId, ServiceStats};
pub use slot::{PortStats, DEFAULT_NOTIFY_DEADLINE_NS};
pub use stats::{MemberSnapshot, PortSnapshot, ReloadStatus, ServiceSnapshot, Snapshot, Totals};

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
    /// No service has this id (or it was removed).
    #[error("service {0} does not exist (or was removed); add it first")]
    UnknownService(u32),
    /// The port is not a member of the service (or it left).
    #[error("port {port} is not a member of service {service:?} (or it left already); add it with add_member")]
    NotAMember {
        /// Service name.
        service: String,
        /// The port.
        port: u32,
    },
    /// The port serves the service already.
    #[error("port {port} is an active member of service {service:?} already; drain it first to take it out")]
    AlreadyMember {
        /// Service name.
        service: String,
        /// The port.
        port: u32,
    },
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
    Pool(#[from] inflight::PoolError),
    /// The switch configuration is invalid ([`SwitchConfig::validate`]).
    #[error("invalid switch configuration: {0}; fix that setting of SwitchConfig / [switch]")]
    Config(#[from] SwitchConfigError),
    /// A service configuration is invalid ([`ServiceConfig::validate_for`]).
    #[error("service {service}: invalid configuration: {source}; fix that setting of its ServiceConfig / [[service]]")]
    Service {
        /// Service name.
        service: String,
        /// What is wrong.
        source: ServiceConfigError,
    },
}

#[cfg(test)]
mod tests;
