//! The topology file's structure: what each table holds, as parsed (checked in `check`).

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::check::Source;
use super::error::TopologyError;
use crate::switch::{
    FailoverConfig, HealthConfig, PolicyConfig, ServiceConfig, SwitchConfig,
    DEFAULT_NOTIFY_DEADLINE_NS,
};

/// What a VM does in a run, which decides how the runner treats it: the run ends when every
/// `client` and `peer` has exited; `worker`s serve until the run ends. A built-in image has
/// its role; an ELF file of your own must declare one (`role = "client"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sends requests and exits when done; its counts are the run's requests and replies.
    Client,
    /// Serves requests as a service member until the run ends.
    Worker,
    /// Sends or receives one-way messages and exits when done.
    Peer,
}

impl Role {
    /// The configuration name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Worker => "worker",
            Self::Peer => "peer",
        }
    }

    /// Whether the run waits for VMs of this role to exit.
    pub fn waited_for(self) -> bool {
        matches!(self, Self::Client | Self::Peer)
    }
}

/// The built-in images a topology may use and their roles (`evil`, a test image, runs like a
/// peer: the run waits for it, and its counts are not the clients').
pub const IMAGE_ROLES: &[(&str, Role)] = &[
    ("client", Role::Client),
    ("worker", Role::Worker),
    ("peer", Role::Peer),
    ("evil", Role::Peer),
];

/// The role of built-in image `name`, if it has one.
pub fn image_role(name: &str) -> Option<Role> {
    IMAGE_ROLES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, r)| *r)
}

/// Longest request deadline a topology may give, in ms (about 213 days: the deadline in ns
/// must fit 64 bits with room to add it to the clock).
pub const MAX_REQUEST_TIMEOUT_MS: u64 = u64::MAX / 1_000_000 / 1000;

/// A whole topology: VMs, services, faults and switch settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Data-path settings.
    #[serde(default)]
    pub switch: SwitchConfig,
    /// How long to run and how often to report.
    #[serde(default)]
    pub run: RunSpec,
    /// The VMs.
    #[serde(default, rename = "vm")]
    pub vms: Vec<VmSpec>,
    /// The services.
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceSpec>,
    /// Injected faults.
    #[serde(default, rename = "fault")]
    pub faults: Vec<FaultSpec>,
    /// Page hand-off between the VMs (`[handoff]`): present, every VM's RAM is memfd backed
    /// and its port a hand-off port.
    #[serde(default)]
    pub handoff: Option<HandoffSpec>,
    /// The text it was parsed from and its file name, for errors found later.
    #[serde(skip)]
    pub(super) source: (String, String),
}

/// Page hand-off (`[handoff]`, seed 004): a client in hand-off mode sends page references,
/// and the switch moves those pages into the receiver instead of copying them, from
/// [`HandoffSpec::min_bytes`] up.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HandoffSpec {
    /// Pages at the top of every VM's RAM where pages handed to it land (its receive window;
    /// its guest does not allocate there). 1..=[`MAX_HANDOFF_WINDOW_PAGES`], at most half of
    /// each VM's memory; default 256 (1 MiB, one largest message).
    pub window_pages: u64,
    /// Most pages one VM may hold borrowed at once (1..=`window_pages`; default
    /// `window_pages`): past it messages to it are copied.
    pub cap_pages: Option<u64>,
    /// Hand off messages carrying at least this many bytes, copy smaller ones. Default: never
    /// hand off (copy every message), because on the KVM it was measured on (`kvm_pvm`) a
    /// hand-off costs more than a copy at every size; set it from `vmq bench handoff` on the
    /// machine that runs vmq (0: hand off everything).
    pub min_bytes: Option<u64>,
}

/// Largest hand-off receive window, in pages (16 MiB).
pub const MAX_HANDOFF_WINDOW_PAGES: u64 = 4096;

impl Default for HandoffSpec {
    fn default() -> Self {
        Self {
            window_pages: 256,
            cap_pages: None,
            min_bytes: None,
        }
    }
}

impl HandoffSpec {
    /// The cap of borrowed pages per VM.
    pub fn cap(&self) -> u64 {
        self.cap_pages.unwrap_or(self.window_pages)
    }

    /// The size rule as the ports apply it.
    pub fn config(&self) -> crate::port::handoff::HandoffConfig {
        crate::port::handoff::HandoffConfig {
            min_bytes: self.min_bytes.unwrap_or(u64::MAX),
        }
    }
}

/// Run control.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunSpec {
    /// Longest run; the run stops (and is reported) then even if clients are not done.
    pub max_duration_ms: u64,
    /// Live progress period in ms; 0 turns progress off.
    pub progress_ms: u64,
}

impl Default for RunSpec {
    fn default() -> Self {
        Self {
            max_duration_ms: 60_000,
            progress_ms: 500,
        }
    }
}

/// One VM.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// Unique name; also its switch port's name.
    pub name: Spanned<String>,
    /// Built-in image name or path to an ELF file.
    pub image: Spanned<String>,
    /// Guest memory in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: Spanned<u64>,
    /// What the VM does; required for an ELF file, implied by a built-in image.
    #[serde(default)]
    pub role: Option<Spanned<Role>>,
    /// Image parameters by name.
    #[serde(default)]
    pub params: BTreeMap<String, Spanned<ParamValue>>,
    /// Coalescing deadline of its port, in µs (0..=[`MAX_NOTIFY_DEADLINE_US`]): the longest a
    /// notification for deferred messages to it is withheld. Default 1000 (1 ms,
    /// [`DEFAULT_NOTIFY_DEADLINE_NS`]).
    #[serde(default)]
    pub notify_deadline_us: Option<Spanned<u64>>,
}

/// Longest coalescing deadline a topology may give a port, in µs (1 s): past that a deferred
/// message would wait longer than a parked guest's own safety-net timeout many times over.
pub const MAX_NOTIFY_DEADLINE_US: u64 = 1_000_000;

impl VmSpec {
    /// Its port's coalescing deadline in ns ([`VmSpec::notify_deadline_us`]).
    pub fn notify_deadline_ns(&self) -> u64 {
        self.notify_deadline_us
            .as_ref()
            .map_or(DEFAULT_NOTIFY_DEADLINE_NS, |us| {
                us.get_ref().saturating_mul(1000)
            })
    }
}

fn default_memory_mib() -> Spanned<u64> {
    Spanned::new(0..0, 16)
}

/// A parameter value: a number, or the name of a service or VM (replaced by its id).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ParamValue {
    /// A number.
    Int(u64),
    /// A service or VM name, or a symbolic value the image documents.
    Name(String),
}

/// One service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Unique name.
    pub name: Spanned<String>,
    /// Backends.
    pub members: Spanned<Vec<MemberSpec>>,
    /// Balancing policy.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Health metrics.
    #[serde(default)]
    pub health: HealthConfig,
    /// Failover.
    #[serde(default)]
    pub failover: FailoverConfig,
    /// Request deadline in ms (1..=[`MAX_REQUEST_TIMEOUT_MS`]).
    #[serde(default)]
    pub request_timeout_ms: Option<Spanned<u64>>,
}

impl ServiceSpec {
    /// The switch configuration this spec describes (a parsed topology's deadline is in
    /// range; an out-of-range one saturates).
    pub fn config(&self) -> ServiceConfig {
        let d = ServiceConfig::default();
        ServiceConfig {
            policy: self.policy.clone(),
            health: self.health,
            failover: self.failover,
            request_timeout_ns: self
                .request_timeout_ms
                .as_ref()
                .map_or(d.request_timeout_ns, |ms| {
                    ms.get_ref().saturating_mul(1_000_000)
                }),
        }
    }
}

/// One backend of a service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSpec {
    /// The VM.
    pub vm: Spanned<String>,
    /// Base weight.
    #[serde(default = "one")]
    pub weight: Spanned<f64>,
}

fn one() -> Spanned<f64> {
    Spanned::new(0..0, 1.0)
}

/// One injected fault.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// The VM it hits.
    pub vm: Spanned<String>,
    /// Worker stops draining after this many requests.
    pub stall_after: Option<u64>,
    /// Worker exits after this many requests.
    pub crash_after: Option<u64>,
    /// Every n-th reply is an error.
    pub error_every: Option<u64>,
    /// Worker keeps draining requests but never answers after this many replies.
    pub mute_after: Option<u64>,
    /// Loop iterations burnt per request.
    pub slow: Option<u64>,
    /// Worker reports load 0 while burning this many more loop iterations per request.
    pub lie_load: Option<u64>,
    /// The host stops the VM this long into the run.
    pub kill_after_ms: Option<u64>,
    /// The host stops the VM once the switch has taken this many requests from it (a
    /// frontend: its requests are then in flight, whatever the machine's load).
    pub kill_after_requests: Option<u64>,
}

/// What a fault does, once checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// A guest parameter the image acts on (`stall_after`, `crash_after`, ...), with its value.
    GuestParam(&'static str, u64),
    /// The host stops the VM after this many ms.
    KillAfterMs(u64),
    /// The host stops the VM once the switch took this many requests from it.
    KillAfterRequests(u64),
}

impl FaultSpec {
    pub(super) fn kinds(&self) -> Vec<FaultKind> {
        let mut k = Vec::new();
        for (name, v) in [
            ("stall_after", self.stall_after),
            ("crash_after", self.crash_after),
            ("error_every", self.error_every),
            ("mute_after", self.mute_after),
            ("slow", self.slow),
            ("lie_load", self.lie_load),
        ] {
            if let Some(v) = v {
                k.push(FaultKind::GuestParam(name, v));
            }
        }
        if let Some(ms) = self.kill_after_ms {
            k.push(FaultKind::KillAfterMs(ms));
        }
        if let Some(n) = self.kill_after_requests {
            k.push(FaultKind::KillAfterRequests(n));
        }
        k
    }

    /// The fault's kind (exactly one per entry, checked by [`Topology::parse`]).
    pub fn kind(&self) -> FaultKind {
        self.kinds()[0]
    }
}

impl Topology {
    /// The role of `vm`: declared, or its built-in image's.
    pub fn role(&self, vm: &VmSpec) -> Role {
        vm.role
            .as_ref()
            .map(|r| *r.get_ref())
            .or_else(|| image_role(vm.image.get_ref()))
            .unwrap_or(Role::Worker)
    }

    /// An error at `span` of the parsed text.
    pub(crate) fn invalid(
        &self,
        span: Range<usize>,
        field: &str,
        message: String,
    ) -> TopologyError {
        let (text, file) = &self.source;
        Source { text, file }.at(span, field, message)
    }

    /// Port id of VM `name` (VMs are ports in file order).
    pub fn vm_index(&self, name: &str) -> Option<usize> {
        self.vms.iter().position(|v| v.name.get_ref() == name)
    }

    /// Service id of service `name` (services in file order).
    pub fn service_index(&self, name: &str) -> Option<usize> {
        self.services.iter().position(|s| s.name.get_ref() == name)
    }
}
