//! Live stats of a running daemon: the switch's latest [`Snapshot`] served over HTTP, as
//! Prometheus text and as the table `--stats-every` prints, and read back by `vmq stats`.
//!
//! The switch thread publishes a snapshot into a [`SharedSnapshot`] (`vmq serve` every 100 ms,
//! `vmq run` through a [`Publisher`]); the [`MetricsEndpoint`]'s own thread only reads the
//! latest one, so a scrape never waits for the switch and the switch never waits for a scrape.
//!
//! Paths the endpoint answers (`GET`, HTTP/1.0 or 1.1, one request per connection):
//! - `/metrics`: Prometheus text format 0.0.4 ([`exposition`] lists the metric families);
//! - `/stats`: the switch's table, as `vmq serve --stats-every` prints it;
//! - `/stats.json`: the snapshot as one JSON object.
//!
//! And, from clients on the same host, a daemon's commands ([`Control`]; `POST`, `vmq drain`
//! and `vmq reload` send them): `/drain?service=NAME&member=MEMBER` and `/reload`.

mod client;
pub mod exposition;
mod http;
mod listen;
mod publish;

pub use client::{fetch, post, query_escape, StatsError};
pub use http::{MetricsEndpoint, MetricsError};
pub use listen::{parse_listen, MetricsConfig, DEFAULT_LISTEN};
pub use publish::Publisher;

use std::sync::{Arc, Mutex};

use crate::switch::Snapshot;

/// The switch's latest snapshot, shared between the thread that renews it and the readers
/// (`None` until the first).
pub type SharedSnapshot = Arc<Mutex<Option<Snapshot>>>;

/// Commands a daemon takes over its endpoint (`vmq serve`: drain a member of a service,
/// reload its configuration). Each runs to its end before the answer; the text says what
/// happened (and, on `Err`, what was refused and why).
pub trait Control: Send + Sync {
    /// Drains member `member` (as the daemon names members: a VM's CID for `vmq serve`) of
    /// service `service`.
    fn drain(&self, service: &str, member: &str) -> Result<String, String>;

    /// Reloads the daemon's configuration.
    fn reload(&self) -> Result<String, String>;
}

/// The latest snapshot in `shared` (a poisoned lock still holds the last one written).
pub fn latest(shared: &SharedSnapshot) -> Option<Snapshot> {
    shared.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

#[cfg(test)]
pub(crate) mod tests;
