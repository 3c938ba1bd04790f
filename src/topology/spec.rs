//! The topology file's structure and its checks.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::error::{from_toml, key_line, line_col, TopologyError};
use crate::switch::{FailoverConfig, HealthConfig, PolicyConfig, ServiceConfig, SwitchConfig};

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
    /// The text it was parsed from and its file name, for errors found later.
    #[serde(skip)]
    source: (String, String),
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

/// Byte offset of the `[name]` table header (or of a top-level `name = ...` key), 0 if absent.
fn table_start(text: &str, name: &str) -> usize {
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if t.starts_with(&format!("[{name}]"))
            || (t.starts_with(name) && t[name.len()..].trim_start().starts_with('='))
        {
            return at;
        }
        at += line.len();
    }
    0
}

/// Byte offset of the last table header (`[...]` or `[[...]]`) at or before `offset`.
fn table_start_before(text: &str, offset: usize) -> usize {
    let mut at = 0;
    let mut last = 0;
    for line in text.split_inclusive('\n') {
        if at > offset {
            break;
        }
        if line.trim_start().starts_with('[') {
            last = at;
        }
        at += line.len();
    }
    last
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
}

/// What a fault does, once checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// A guest parameter the image acts on (`stall_after`, `crash_after`, ...), with its value.
    GuestParam(&'static str, u64),
    /// The host stops the VM after this many ms.
    KillAfterMs(u64),
}

impl FaultSpec {
    fn kinds(&self) -> Vec<FaultKind> {
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
        k
    }

    /// The fault's kind (exactly one per entry, checked by [`Topology::parse`]).
    pub fn kind(&self) -> FaultKind {
        self.kinds()[0]
    }
}

impl Topology {
    /// Parses and checks `text`; `file` names it in errors. `images` are the built-in image
    /// names (anything else must be a readable file).
    pub fn parse(text: &str, file: &str, images: &[&str]) -> Result<Self, TopologyError> {
        let mut topo: Topology = from_toml(text, file)?;
        topo.source = (text.to_string(), file.to_string());
        topo.check(text, file, images)?;
        for i in 0..topo.vms.len() {
            topo.params_of(i)?;
            topo.names_of(i)?;
        }
        Ok(topo)
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &str, images: &[&str]) -> Result<Self, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: path.to_string(),
            source,
        })?;
        Self::parse(&text, path, images)
    }

    fn check(&self, text: &str, file: &str, images: &[&str]) -> Result<(), TopologyError> {
        let bad = |span: Range<usize>, field: &str, message: String| TopologyError::Invalid {
            file: file.to_string(),
            line: line_col(text, span.start).0,
            field: field.to_string(),
            message,
        };
        // A setting inside a table that starts at byte `anchor`: the line of its key.
        let bad_key = |anchor: usize, field: &str, message: String| TopologyError::Invalid {
            file: file.to_string(),
            line: key_line(text, anchor, field),
            field: field.to_string(),
            message,
        };
        if let Err(e) = self.switch.validate() {
            let anchor = table_start(text, "switch");
            return Err(bad_key(
                anchor,
                &format!("switch.{}", e.field()),
                format!("{e}"),
            ));
        }
        if self.run.max_duration_ms == 0 {
            return Err(bad_key(
                table_start(text, "run"),
                "run.max_duration_ms",
                "must be greater than 0 (the longest the run may take, in ms)".into(),
            ));
        }
        if self.vms.is_empty() {
            return Err(bad(
                0..0,
                "vm",
                "the topology has no [[vm]]; add at least one".into(),
            ));
        }
        let mut names = HashSet::new();
        for vm in &self.vms {
            if vm.name.get_ref().is_empty() || !names.insert(vm.name.get_ref().as_str()) {
                return Err(bad(
                    vm.name.span(),
                    "name",
                    format!("VM name {:?} is empty or used twice", vm.name.get_ref()),
                ));
            }
            let image = vm.image.get_ref();
            let builtin = image_role(image).filter(|_| images.contains(&image.as_str()));
            let usable: Vec<&str> = images
                .iter()
                .copied()
                .filter(|i| image_role(i).is_some())
                .collect();
            if builtin.is_none() && images.contains(&image.as_str()) {
                return Err(bad(
                    vm.image.span(),
                    "image",
                    format!(
                        "{image:?} has no vmq device (it is a boot test of the VMM) and cannot \
                         run in a topology; use one of {}, or an ELF file with a role",
                        usable.join(", ")
                    ),
                ));
            }
            if builtin.is_none() && !std::path::Path::new(image).is_file() {
                return Err(bad(
                    vm.image.span(),
                    "image",
                    format!(
                        "{image:?} is neither a built-in image ({}) nor a readable file",
                        usable.join(", ")
                    ),
                ));
            }
            match (builtin, &vm.role) {
                (None, None) => {
                    return Err(bad(
                        vm.image.span(),
                        "role",
                        format!(
                            "{image:?} is an ELF file of your own: say what it does with \
                             role = \"client\", \"worker\" or \"peer\""
                        ),
                    ))
                }
                (Some(b), Some(r)) if b != *r.get_ref() => {
                    return Err(bad(
                        r.span(),
                        "role",
                        format!(
                            "image {image:?} is a {}; drop the role or make it {:?}",
                            b.name(),
                            b.name()
                        ),
                    ))
                }
                _ => {}
            }
            let mib = *vm.memory_mib.get_ref();
            if !(4..=1024).contains(&mib) || mib % 2 != 0 {
                return Err(bad(
                    vm.memory_mib.span(),
                    "memory_mib",
                    format!("{mib} MiB: guest memory must be an even number of MiB in 4..=1024"),
                ));
            }
        }
        if !self.vms.iter().any(|v| self.role(v).waited_for()) {
            return Err(bad(
                self.vms[0].name.span(),
                "vm",
                "no VM is a client or a peer, so the run could never finish (workers serve \
                 until it ends); add a client"
                    .into(),
            ));
        }
        for s in &self.services {
            if !names.insert(s.name.get_ref().as_str()) {
                return Err(bad(
                    s.name.span(),
                    "name",
                    format!(
                        "service name {:?} is used twice or clashes with a VM name",
                        s.name.get_ref()
                    ),
                ));
            }
            if s.members.get_ref().is_empty() {
                return Err(bad(
                    s.members.span(),
                    "members",
                    "a service needs at least one member".into(),
                ));
            }
            for (i, m) in s.members.get_ref().iter().enumerate() {
                let Some(vm) = self.vms.iter().find(|v| v.name.get_ref() == m.vm.get_ref()) else {
                    return Err(bad(
                        m.vm.span(),
                        "vm",
                        format!(
                            "member {:?} is not a [[vm]] of this topology",
                            m.vm.get_ref()
                        ),
                    ));
                };
                if self.role(vm) == Role::Client {
                    return Err(bad(
                        m.vm.span(),
                        "vm",
                        format!(
                            "member {:?} is a client; it sends requests and never answers \
                             them: make a worker the member",
                            m.vm.get_ref()
                        ),
                    ));
                }
                if s.members.get_ref()[..i]
                    .iter()
                    .any(|o| o.vm.get_ref() == m.vm.get_ref())
                {
                    return Err(bad(
                        m.vm.span(),
                        "vm",
                        format!(
                            "member {:?} is listed twice; give it one entry (and a weight)",
                            m.vm.get_ref()
                        ),
                    ));
                }
                let w = *m.weight.get_ref();
                if !(w.is_finite() && w > 0.0) {
                    return Err(bad(
                        m.weight.span(),
                        "weight",
                        format!("weight {w} must be a positive number"),
                    ));
                }
            }
            if let Some(ms) = &s.request_timeout_ms {
                let v = *ms.get_ref();
                if !(1..=MAX_REQUEST_TIMEOUT_MS).contains(&v) {
                    return Err(bad(
                        ms.span(),
                        "request_timeout_ms",
                        format!("{v} ms: the request deadline must be in 1..={MAX_REQUEST_TIMEOUT_MS} ms"),
                    ));
                }
            }
            if let Err(e) = s.config().validate_for(s.members.get_ref().len()) {
                return Err(bad_key(
                    table_start_before(text, s.name.span().start),
                    &e.field(),
                    format!("service {:?}: {e}", s.name.get_ref()),
                ));
            }
        }
        for f in &self.faults {
            let Some(vm) = self.vms.iter().find(|v| v.name.get_ref() == f.vm.get_ref()) else {
                return Err(bad(
                    f.vm.span(),
                    "vm",
                    format!("fault names {:?}, which is not a [[vm]]", f.vm.get_ref()),
                ));
            };
            let kinds = f.kinds();
            if kinds.len() != 1 {
                return Err(bad(
                    f.vm.span(),
                    "fault",
                    "a [[fault]] needs exactly one of stall_after, crash_after, error_every, mute_after, slow, lie_load, kill_after_ms".into(),
                ));
            }
            if let (FaultKind::GuestParam(name, _), role) = (kinds[0], self.role(vm)) {
                if role != Role::Worker {
                    return Err(bad_key(
                        table_start_before(text, f.vm.span().start),
                        name,
                        format!(
                            "{name} makes a worker misbehave, and {:?} is a {}; use \
                             kill_after_ms to stop any VM",
                            f.vm.get_ref(),
                            role.name()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

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
        TopologyError::Invalid {
            file: file.clone(),
            line: line_col(text, span.start).0,
            field: field.to_string(),
            message,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGES: &[&str] = &["client", "worker"];

    fn err(text: &str) -> String {
        Topology::parse(text, "t.toml", IMAGES)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_demo_parses() {
        let t = Topology::parse(
            super::super::DEMO_TOML,
            "<demo>",
            &["client", "worker", "peer", "hello"],
        )
        .unwrap();
        assert!(t.vms.len() >= 5);
        assert_eq!(t.services.len(), 1);
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        let e = err("[[vm]]\nname = \"a\"\nimage = \"client\"\nbogus = 1\n");
        assert!(e.starts_with("t.toml:4:"), "{e}");
        assert!(e.contains("bogus"), "{e}");
        let e = err("[[vm]]\nname = \"a\"\nimage = \"nope\"\n");
        assert!(e.starts_with("t.toml:3: field `image`"), "{e}");
        let e = err("[[vm]]\nname = \"a\"\nimage = \"client\"\n[[service]]\nname = \"s\"\nmembers = [{ vm = \"b\" }]\n");
        assert!(e.starts_with("t.toml:6: field `vm`"), "{e}");
        let e = err("[[vm]]\nname = \"a\"\nimage = \"client\"\nmemory_mib = 3\n");
        assert!(e.starts_with("t.toml:4: field `memory_mib`"), "{e}");
        let e = err(
            "[[vm]]\nname = \"a\"\nimage = \"client\"\n[[vm]]\nname = \"a\"\nimage = \"worker\"\n",
        );
        assert!(e.starts_with("t.toml:5: field `name`"), "{e}");
        let e = err("[[vm]]\nname = \"a\"\nimage = \"client\"\n[[fault]]\nvm = \"a\"\nslow = 1\nstall_after = 2\n");
        assert!(e.starts_with("t.toml:5: field `fault`"), "{e}");
        let e = err("[[vm]]\nname = \"a\"\nimage = \"client\"\n[[vm]]\nname = \"w\"\nimage = \"worker\"\n[[service]]\nname = \"s\"\nmembers = [{ vm = \"w\", weight = -1.0 }]\n");
        assert!(e.starts_with("t.toml:9: field `weight`"), "{e}");
        let e = err("[switch]\nbatch = \"x\"\n[[vm]]\nname = \"a\"\nimage = \"client\"\n");
        assert!(e.starts_with("t.toml:2:"), "{e}");
    }

    /// A client `c` and a worker `w` (lines 1-6), then `more`.
    fn with(more: &str) -> String {
        format!(
            "[[vm]]\nname = \"c\"\nimage = \"client\"\n[[vm]]\nname = \"w\"\nimage = \"worker\"\n{more}"
        )
    }

    /// A service `s` of worker `w` at line 7, then `more` on lines 10.. .
    fn service(more: &str) -> String {
        with(&format!(
            "[[service]]\nname = \"s\"\nmembers = [{{ vm = \"w\" }}]\n{more}"
        ))
    }

    fn assert_at(e: &str, line: usize, field: &str) {
        let want = format!("t.toml:{line}: field `{field}`");
        assert!(e.starts_with(&want), "want {want:?}, got: {e}");
    }

    #[test]
    fn unknown_keys_are_refused_in_every_table() {
        for (text, line, key) in [
            ("[switch]\nbacth = 4\n", 2, "bacth"),
            ("[switch]\npool = { max_subpool = 4 }\n", 2, "max_subpool"),
            ("[run]\nmax_duration = 4\n", 2, "max_duration"),
            ("[[fault]]\nvm = \"w\"\nstall = 4\n", 3, "stall"),
        ] {
            let e = err(&with(text));
            assert!(e.starts_with(&format!("t.toml:{}:", line + 6)), "{e}");
            assert!(e.contains(key), "{e}");
        }
        for (text, key) in [
            ("health = { threshhold = 0.5 }", "threshhold"),
            ("health = { weights = { eror = 1.0 } }", "eror"),
            ("failover = { stall_windw_ns = 5 }", "stall_windw_ns"),
            ("policy = { kind = \"p2c\", p2c = { bais = 2.0 } }", "bais"),
            (
                "policy = { kind = \"maglev\", maglev = { size = 7 } }",
                "`size`",
            ),
            ("request_timeout = 5", "request_timeout"),
        ] {
            let e = err(&service(text));
            assert!(e.starts_with("t.toml:10:"), "{e}");
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn switch_settings_are_range_checked_with_their_line() {
        let e = err(&with("[switch]\nsweep_interval_ns = 5\nbatch = 0\n"));
        assert_at(&e, 9, "switch.batch");
        let e = err(&with(
            "[switch]\nbatch = 8\npool = { subpool_size = 1, max_subpools = 4294967295 }\n",
        ));
        assert_at(&e, 9, "switch.pool.max_subpools");
        let e = err(&with("[switch]\nport_request_timeout_ns = 0\n"));
        assert_at(&e, 8, "switch.port_request_timeout_ns");
        let e = err(&with("[run]\nmax_duration_ms = 0\n"));
        assert_at(&e, 8, "run.max_duration_ms");
    }

    #[test]
    fn service_settings_are_range_checked_with_their_line() {
        for (text, field) in [
            ("health = { threshold = nan }", "health.threshold"),
            (
                "health = { threshold = 1.5, rejoin_threshold = 2.0 }",
                "health.threshold",
            ),
            (
                "health = { weights = { errors = -1.0 } }",
                "health.weights.errors",
            ),
            (
                "failover = { stall_window_ns = 0 }",
                "failover.stall_window_ns",
            ),
            (
                "failover = { panic_threshold = 7.0 }",
                "failover.panic_threshold",
            ),
            (
                "failover = { max_ejection_percent = 500 }",
                "failover.max_ejection_percent",
            ),
            (
                "policy = { kind = \"maglev\", maglev = { table_size = 2147483647 } }",
                "policy.maglev.table_size",
            ),
            (
                "policy = { kind = \"maglev\", maglev = { table_size = 4294967291 } }",
                "policy.maglev.table_size",
            ),
            ("policy = { p2c = { bias = -1.0 } }", "policy.p2c.bias"),
            ("request_timeout_ms = 0", "request_timeout_ms"),
            // Used to wrap to 0.45 ms.
            ("request_timeout_ms = 18446744073710", "request_timeout_ms"),
        ] {
            let e = err(&service(text));
            assert_at(&e, 10, field);
        }
        // On its own line inside a multi-line service table.
        let e = err(&service("policy = { kind = \"wrr\" }\nfailover = { stall_window_ns = 5 }\nhealth = { in_flight_limit = 0 }\n"));
        assert_at(&e, 12, "health.in_flight_limit");
    }

    #[test]
    fn guest_parameter_limits_are_checked_before_booting() {
        for (params, field) in [
            ("size = 5000", "size"),
            ("queue_size = 48", "queue_size"),
            ("queue_size = 65536", "queue_size"),
            ("wait = 2", "wait"),
            ("mode = 9", "mode"),
            ("count = 18446744073709551615", "count"),
            ("target = 2", "target"),
            ("target = 18446744073709551615", "target"),
            ("service = 1", "service"),
            ("service = \"nope\"", "service"),
        ] {
            let text = format!(
                "[[vm]]\nname = \"c\"\nimage = \"client\"\nparams = {{ {params} }}\n\
                 [[vm]]\nname = \"w\"\nimage = \"worker\"\n\
                 [[service]]\nname = \"s\"\nmembers = [{{ vm = \"w\" }}]\n"
            );
            assert_at(&err(&text), 4, field);
        }
        // In range: accepted, and numeric ids resolve.
        let t = Topology::parse(
            &service("").replace(
                "image = \"client\"\n",
                "image = \"client\"\nparams = { service = 0, target = 1, size = 4096, queue_size = 256 }\n",
            ),
            "t.toml",
            IMAGES,
        )
        .unwrap();
        // Numbers (the old form) still name VMs and services, in file order; the guest gets
        // the names.
        let p = t.names_of(0).unwrap();
        assert!(
            p.contains(&(crate::abi::image::client::param::TARGET, "w".to_string())),
            "{p:?}"
        );
        assert!(
            p.contains(&(crate::abi::image::client::param::SERVICE, "s".to_string())),
            "{p:?}"
        );
        assert!(t.params_of(0).unwrap().iter().all(|&(slot, _)| slot
            != crate::abi::image::client::param::TARGET
            && slot != crate::abi::image::client::param::SERVICE));
    }

    #[test]
    fn name_parameters_need_a_directory_a_guest_can_keep() {
        // 120 workers with 8-byte names: 120 x 14 bytes, more than a guest keeps.
        let mut text = String::from(
            "[[vm]]\nname = \"c\"\nimage = \"client\"\nparams = { service = \"s\" }\n",
        );
        let mut members = Vec::new();
        for i in 0..120 {
            text += &format!("[[vm]]\nname = \"worker{i:02}\"\nimage = \"worker\"\n");
            members.push(format!("{{ vm = \"worker{i:02}\" }}"));
        }
        text += &format!(
            "[[service]]\nname = \"s\"\nmembers = [{}]\n",
            members.join(", ")
        );
        let e = err(&text);
        assert_at(&e, 4, "service");
        assert!(e.contains("directory"), "{e}");
    }

    #[test]
    fn roles_are_checked() {
        // A client as a service member.
        let e = err(&with(
            "[[service]]\nname = \"s\"\nmembers = [{ vm = \"c\" }]\n",
        ));
        assert_at(&e, 9, "vm");
        assert!(e.contains("is a client"), "{e}");
        // A member twice.
        let e = err(&with(
            "[[service]]\nname = \"s\"\nmembers = [{ vm = \"w\" },\n { vm = \"w\" }]\n",
        ));
        assert_at(&e, 10, "vm");
        // No client: the run could never finish.
        let e = err("[[vm]]\nname = \"w\"\nimage = \"worker\"\n");
        assert_at(&e, 2, "vm");
        assert!(e.contains("never finish"), "{e}");
        // A worker fault on a client.
        let e = err(&with("[[fault]]\nvm = \"c\"\nstall_after = 3\n"));
        assert_at(&e, 9, "stall_after");
        // A built-in image with another role.
        let e = err("[[vm]]\nname = \"c\"\nimage = \"client\"\nrole = \"worker\"\n");
        assert_at(&e, 4, "role");
        // hello has no vmq device.
        let e = Topology::parse(
            "[[vm]]\nname = \"h\"\nimage = \"hello\"\n",
            "t.toml",
            &["client", "worker", "hello"],
        )
        .unwrap_err()
        .to_string();
        assert_at(&e, 3, "image");
        assert!(e.contains("no vmq device"), "{e}");
    }

    #[test]
    fn a_custom_image_needs_a_role() {
        let path = std::env::temp_dir().join(format!("vmq-role-{}.elf", std::process::id()));
        std::fs::write(&path, b"\x7fELF").unwrap();
        let p = path.display();
        let e = err(&format!("[[vm]]\nname = \"c\"\nimage = \"{p}\"\n"));
        assert_at(&e, 3, "role");
        let t = Topology::parse(
            &format!("[[vm]]\nname = \"c\"\nimage = \"{p}\"\nrole = \"client\"\n"),
            "t.toml",
            IMAGES,
        )
        .unwrap();
        assert_eq!(t.role(&t.vms[0]), Role::Client);
        let e = err(&format!(
            "[[vm]]\nname = \"c\"\nimage = \"{p}\"\nrole = \"boss\"\n"
        ));
        assert!(e.starts_with("t.toml:4:"), "{e}");
        let _ = std::fs::remove_file(&path);
    }
}
