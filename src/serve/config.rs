//! What `vmq serve` serves: its VMs and limits, from a TOML file or from vhost-device-vsock's
//! `--vm guest-cid=N,socket=PATH,uds-path=PATH,groups=G1+G2` flags.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::Deserialize;

use crate::metrics::MetricsConfig;
use crate::topology::{from_toml, TomlError};
use crate::vsock::relay::RelayConfig;

/// One VM `vmq serve` gives a vsock device.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// The guest's CID (3 or more; 0, 1, 2 and `u32::MAX` are reserved).
    pub cid: u64,
    /// The vhost-user socket its VMM connects to.
    pub socket: PathBuf,
    /// Host-side Unix socket for host<->guest connections (hybrid vsock): host programs
    /// connect here and write `CONNECT <port>`; the guest's connections to CID 2 port `P` go to
    /// `<uds_path>_P`.
    #[serde(default)]
    pub uds_path: Option<PathBuf>,
    /// Groups of siblings it may reach (default: `["default"]`).
    #[serde(default = "default_groups")]
    pub groups: Vec<String>,
}

fn default_groups() -> Vec<String> {
    vec!["default".to_string()]
}

/// Limits of the relay between guests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Connections one VM may have open (as the one that connected).
    pub max_connections_per_vm: u32,
    /// Most credit a receiver may grant through vmq, KiB: what vmq may hold per connection
    /// direction. At least 64 (SEQPACKET messages up to 64 KiB).
    pub credit_cap_kib: u32,
    /// Packet pieces (up to 4 KiB each) vmq may hold per VM in transit.
    pub staging_slots: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections_per_vm: 1024,
            credit_cap_kib: 256,
            staging_slots: 4096,
        }
    }
}

/// Everything `vmq serve` needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// The VMs (`[[vm]]`).
    #[serde(default)]
    pub vm: Vec<VmConfig>,
    /// Limits (`[limits]`).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The metrics endpoint (`[metrics]`; off without the table).
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
}

/// A configuration `vmq serve` refuses.
#[derive(Debug, thiserror::Error)]
pub enum ServeConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML does not parse, or a field is unknown or of the wrong type.
    #[error(transparent)]
    Syntax(#[from] TomlError),
    /// A `--vm` flag does not parse.
    #[error(
        "--vm {flag:?}: {message}; expected guest-cid=N,socket=PATH[,uds-path=PATH][,groups=G1+G2]"
    )]
    Flag {
        /// The flag's value.
        flag: String,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range or contradicts another.
    #[error("{place}: {message}")]
    Invalid {
        /// Which VM or field (with the file, when there is one).
        place: String,
        /// What is wrong and what to do.
        message: String,
    },
}

impl ServeConfig {
    /// Parses TOML `text` read from `file` and checks it.
    pub fn parse(text: &str, file: &str) -> Result<Self, ServeConfigError> {
        let cfg: ServeConfig = from_toml(text, file)?;
        cfg.check(file)?;
        Ok(cfg)
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &str) -> Result<Self, ServeConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ServeConfigError::Read {
            path: path.to_string(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Adds the VM of one `--vm` flag (vhost-device-vsock's syntax).
    pub fn add_vm_flag(&mut self, flag: &str) -> Result<(), ServeConfigError> {
        let bad = |message: String| ServeConfigError::Flag {
            flag: flag.to_string(),
            message,
        };
        let (mut cid, mut socket, mut uds, mut groups) = (None, None, None, None);
        for kv in flag.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| bad(format!("{kv:?} is not key=value")))?;
            match k {
                "guest-cid" | "guest_cid" => {
                    cid = Some(
                        v.parse::<u64>()
                            .map_err(|_| bad(format!("guest-cid {v:?} is not a number")))?,
                    )
                }
                "socket" => socket = Some(PathBuf::from(v)),
                "uds-path" | "uds_path" => uds = Some(PathBuf::from(v)),
                "groups" => groups = Some(v.split('+').map(str::to_string).collect()),
                _ => return Err(bad(format!("unknown key {k:?}"))),
            }
        }
        self.vm.push(VmConfig {
            cid: cid.ok_or_else(|| bad("guest-cid is missing".into()))?,
            socket: socket.ok_or_else(|| bad("socket is missing".into()))?,
            uds_path: uds,
            groups: groups.unwrap_or_else(default_groups),
        });
        Ok(())
    }

    /// Checks what serde cannot: CIDs, unique sockets, groups, limits.
    pub fn check(&self, file: &str) -> Result<(), ServeConfigError> {
        let invalid = |place: String, message: String| ServeConfigError::Invalid {
            place: format!("{file}: {place}"),
            message,
        };
        if self.vm.is_empty() {
            return Err(invalid(
                "vm".into(),
                "no VM to serve; add a [[vm]] table or a --vm flag".into(),
            ));
        }
        let mut cids = HashSet::new();
        let mut sockets = HashSet::new();
        for (i, vm) in self.vm.iter().enumerate() {
            let place = format!("vm[{i}] (cid {})", vm.cid);
            if !crate::vsock::packet::is_guest_cid(vm.cid) {
                return Err(invalid(
                    format!("{place}.cid"),
                    "guest CIDs 0, 1, 2 and 4294967295 and above are reserved; use 3 or more"
                        .into(),
                ));
            }
            if !cids.insert(vm.cid) {
                return Err(invalid(
                    format!("{place}.cid"),
                    "another VM has this CID".into(),
                ));
            }
            if !sockets.insert(vm.socket.clone()) {
                return Err(invalid(
                    format!("{place}.socket"),
                    format!("{} is another VM's socket too", vm.socket.display()),
                ));
            }
            if vm.socket.as_os_str().is_empty() {
                return Err(invalid(format!("{place}.socket"), "empty path".into()));
            }
            if let Some(uds) = &vm.uds_path {
                // Room for `_4294967295` after it, within a socket address's 107 bytes.
                if uds.as_os_str().is_empty() || uds.as_os_str().len() > 96 {
                    return Err(invalid(
                        format!("{place}.uds_path"),
                        "needs a path of 1 to 96 bytes (Unix socket addresses hold 107, and \
                         guests' connections go to <uds_path>_<port>)"
                            .into(),
                    ));
                }
                if !sockets.insert(uds.clone()) {
                    return Err(invalid(
                        format!("{place}.uds_path"),
                        format!("{} is another socket of this server too", uds.display()),
                    ));
                }
            }
            if vm.groups.is_empty() || vm.groups.iter().any(|g| g.is_empty()) {
                return Err(invalid(
                    format!("{place}.groups"),
                    "needs at least one non-empty group name".into(),
                ));
            }
        }
        let l = &self.limits;
        if l.max_connections_per_vm == 0 {
            return Err(invalid(
                "limits.max_connections_per_vm".into(),
                "must be at least 1".into(),
            ));
        }
        if !(64..=16384).contains(&l.credit_cap_kib) {
            return Err(invalid(
                "limits.credit_cap_kib".into(),
                format!(
                    "{} is out of range: 64 to 16384 (SEQPACKET messages need 64)",
                    l.credit_cap_kib
                ),
            ));
        }
        if !(64..=crate::port::vsock::MAX_SLOTS).contains(&l.staging_slots) {
            return Err(invalid(
                "limits.staging_slots".into(),
                format!(
                    "{} is out of range: 64 to {}",
                    l.staging_slots,
                    crate::port::vsock::MAX_SLOTS
                ),
            ));
        }
        Ok(())
    }

    /// The relay settings these limits make.
    pub fn relay(&self) -> RelayConfig {
        RelayConfig {
            max_conns_per_guest: self.limits.max_connections_per_vm as usize,
            credit_cap: self.limits.credit_cap_kib * 1024,
            ..RelayConfig::default()
        }
    }
}
