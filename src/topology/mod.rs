//! `vmq run TOPOLOGY.toml`: the documented file format, parsed and checked, with errors that
//! name the line and the field.
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
//! image = "client"          # a built-in image (client, worker, peer, hello) or an ELF path
//! memory_mib = 16           # guest memory (default 16)
//! params = { service = "echo", count = 20000, size = 64 }  # image parameters, by name;
//!                           # strings name a service or a VM and become their ids
//!
//! [[service]]
//! name = "echo"
//! members = [{ vm = "w0", weight = 1.0 }, { vm = "w1", weight = 2.0 }]
//! request_timeout_ms = 1000 # optional
//! policy = { kind = "wrr" } # optional: p2c (default), wrr, expected_delay, byte_share, maglev
//! failover = { stall_window_ns = 5000000 }   # optional: FailoverConfig fields
//! health = { threshold = 0.2 }               # optional: HealthConfig fields
//!
//! [[fault]]                 # fault injection: exactly one kind per entry
//! vm = "w2"
//! stall_after = 3000        # worker stops draining after this many requests
//! # crash_after = N         # worker exits after N requests
//! # error_every = N         # every N-th reply carries an error status
//! # slow = N                # worker burns N loop iterations per request
//! # kill_after_ms = T       # the host stops the VM T ms into the run
//! ```

mod error;
mod params;
mod spec;

pub use error::TopologyError;
pub use params::PARAMS;
pub use spec::{
    FaultKind, FaultSpec, MemberSpec, ParamValue, RunSpec, ServiceSpec, Topology, VmSpec,
};

/// The built-in topology `vmq demo` runs (also in `topologies/demo.toml`).
pub const DEMO_TOML: &str = include_str!("../../topologies/demo.toml");
