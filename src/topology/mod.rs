//! `vmq run TOPOLOGY.toml`: the documented file format, parsed and checked, with errors that
//! name the file, the line and the field.
//!
//! Everything is checked while parsing, before any VM boots: unknown keys in every table,
//! the ranges of the switch, pool, policy, health and failover settings (through their
//! `validate()`), unit conversions, image parameters against the guest images' limits,
//! numeric port and service ids, roles (a client is never a service member; a run needs a
//! client or a peer to finish).
//!
//! ```toml
//! [switch]                  # optional; SwitchConfig fields (batch, sweep_interval_ns, ...)
//! batch = 64
//!
//! [run]                     # optional
//! max_duration_ms = 30000   # stop (and report) after this long even if clients are not done
//! progress_ms = 500         # live progress period; 0 = quiet
//!
//! [[vm]]
//! name = "client0"          # unique among VMs and services; also the switch port name
//! image = "client"          # a built-in image (client, worker, peer) or an ELF path
//! # role = "client"         # required for an ELF path: client, worker or peer
//! memory_mib = 16           # guest memory (even, 4..=1024; default 16)
//! params = { service = "echo", count = 20000, size = 64 }  # image parameters, by name;
//!                           # strings name a service or a VM and become their ids
//! notify_deadline_us = 1000 # optional: longest a notification for deferred messages to this
//!                           # VM waits (0..=1000000; default 1000); see the README
//!
//! [[service]]
//! name = "echo"
//! members = [{ vm = "w0", weight = 1.0 }, { vm = "w1", weight = 2.0 }]
//! request_timeout_ms = 1000 # optional
//! policy = { kind = "wrr" } # optional: p2c (default), wrr, expected_delay, byte_share, maglev
//! failover = { stall_window_ns = 5000000 }   # optional: FailoverConfig fields
//! health = { threshold = 0.2 }               # optional: HealthConfig fields
//!
//! [handoff]                 # optional: page hand-off between the VMs (memfd RAM, one
//!                           # ledger); a client with mode = 2 sends page references
//! window_pages = 256        # receive window at the top of each VM's RAM (1..=4096, at
//!                           # most half its memory; default 256)
//! cap_pages = 256           # most pages one VM holds borrowed (default window_pages)
//! min_bytes = 65536         # hand off from this size, copy below (default: never, copy all)
//!
//! [[fault]]                 # fault injection: exactly one kind per entry
//! vm = "w2"
//! stall_after = 3000        # worker stops draining after this many requests
//! # crash_after = N         # worker exits after N requests
//! # error_every = N         # every N-th reply carries an error status
//! # slow = N                # worker burns N loop iterations per request
//! # kill_after_ms = T       # the host stops the VM T ms into the run
//! # kill_after_requests = N # the host stops the VM once the switch took N requests from it
//! ```

mod check;
mod error;
mod params;
mod spec;
#[cfg(test)]
mod tests;

pub use error::{from_toml, TomlError, TopologyError};
pub use params::{MAX_QUEUE_SIZE, PARAMS};
pub use spec::MAX_NOTIFY_DEADLINE_US;
pub use spec::{
    image_role, FaultKind, FaultSpec, MemberSpec, ParamValue, Role, RunSpec, ServiceSpec, Topology,
    VmSpec, IMAGE_ROLES, MAX_REQUEST_TIMEOUT_MS,
};
pub use spec::{HandoffSpec, MAX_HANDOFF_WINDOW_PAGES};

/// The built-in topology `vmq demo` runs (also in `topologies/demo.toml`).
pub const DEMO_TOML: &str = include_str!("../../topologies/demo.toml");
