//! The topology file's structure and its checks.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::error::{line_col, TopologyError};
use crate::switch::{FailoverConfig, HealthConfig, PolicyConfig, ServiceConfig, SwitchConfig};

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
    /// Request deadline in ms.
    #[serde(default)]
    pub request_timeout_ms: Option<u64>,
}

impl ServiceSpec {
    /// The switch configuration this spec describes.
    pub fn config(&self) -> ServiceConfig {
        let d = ServiceConfig::default();
        ServiceConfig {
            policy: self.policy.clone(),
            health: self.health,
            failover: self.failover,
            request_timeout_ns: self
                .request_timeout_ms
                .map_or(d.request_timeout_ns, |ms| ms * 1_000_000),
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
        let mut topo: Topology = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |s| line_col(text, s.start));
            TopologyError::Syntax {
                file: file.to_string(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        topo.source = (text.to_string(), file.to_string());
        topo.check(text, file, images)?;
        for i in 0..topo.vms.len() {
            topo.params_of(i)?;
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
            if !images.contains(&image.as_str()) && !std::path::Path::new(image).is_file() {
                return Err(bad(
                    vm.image.span(),
                    "image",
                    format!(
                        "{image:?} is neither a built-in image ({}) nor a readable file",
                        images.join(", ")
                    ),
                ));
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
            for m in s.members.get_ref() {
                if !self.vms.iter().any(|v| v.name.get_ref() == m.vm.get_ref()) {
                    return Err(bad(
                        m.vm.span(),
                        "vm",
                        format!(
                            "member {:?} is not a [[vm]] of this topology",
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
        }
        for f in &self.faults {
            if !self.vms.iter().any(|v| v.name.get_ref() == f.vm.get_ref()) {
                return Err(bad(
                    f.vm.span(),
                    "vm",
                    format!("fault names {:?}, which is not a [[vm]]", f.vm.get_ref()),
                ));
            }
            if f.kinds().len() != 1 {
                return Err(bad(
                    f.vm.span(),
                    "fault",
                    "a [[fault]] needs exactly one of stall_after, crash_after, error_every, mute_after, slow, kill_after_ms".into(),
                ));
            }
        }
        Ok(())
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
        let e = err("[[vm]]\nname = \"a\"\nimage = \"client\"\n[[service]]\nname = \"s\"\nmembers = [{ vm = \"a\", weight = -1.0 }]\n");
        assert!(e.starts_with("t.toml:6: field `weight`"), "{e}");
        let e = err("[switch]\nbatch = \"x\"\n[[vm]]\nname = \"a\"\nimage = \"client\"\n");
        assert!(e.starts_with("t.toml:2:"), "{e}");
    }
}
