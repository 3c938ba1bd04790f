//! What `vmq serve` serves: its VMs and limits, from a TOML file or from vhost-device-vsock's
//! `--vm guest-cid=N,socket=PATH,uds-path=PATH,groups=G1+G2` flags.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::Deserialize;

use crate::metrics::MetricsConfig;
use crate::switch::{FailoverConfig, HealthConfig, PolicyConfig, ServiceConfig};
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

/// How a service balances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BalanceMode {
    /// Each SOCK_SEQPACKET message is a request, balanced on its own; vmq terminates the
    /// client's connection and keeps its own to the backends.
    #[default]
    Message,
    /// Each new connection (SOCK_STREAM or SOCK_SEQPACKET) goes to one backend; vmq relays
    /// its packets with the addresses translated, and retries a connection a backend refuses
    /// or does not answer on another.
    Connection,
}

/// One backend VM of a service.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// The backend VM's CID (one of the `[[vm]]`s).
    pub cid: u64,
    /// Its base weight (above 0). Default 1.
    #[serde(default = "one")]
    pub weight: f64,
    /// The port its application listens on. Default: the service's port.
    #[serde(default)]
    pub port: Option<u32>,
    /// Requests in flight to it at once (each on a connection of its own). Default 8. In
    /// `connection` mode: connection requests waiting for its answer at once.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: u32,
}

fn one() -> f64 {
    1.0
}

fn default_in_flight() -> u32 {
    8
}

/// Stall window of a vsock service: Linux guests answer in tens of microseconds at best and
/// in milliseconds under emulation, so the native 5 ms would call a busy guest stalled.
const VSOCK_STALL_WINDOW_NS: u64 = 500_000_000;

/// Health of a vsock service: a Linux guest's answer takes a millisecond or more where a
/// native one takes microseconds.
fn vsock_health() -> HealthConfig {
    HealthConfig {
        latency_target_ns: 2_000_000,
        ewma_half_life_ns: 100_000_000,
        ..HealthConfig::default()
    }
}

fn vsock_failover() -> FailoverConfig {
    FailoverConfig {
        stall_window_ns: VSOCK_STALL_WINDOW_NS,
        base_ejection_ns: 1_000_000_000,
        max_ejection_ns: 10_000_000_000,
        ..FailoverConfig::default()
    }
}

/// A load-balanced vsock service (`[[service]]`): clients connect to `cid:port` with plain
/// `AF_VSOCK` sockets.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceTable {
    /// Its name (in the switch's table and the stats).
    pub name: String,
    /// The service's address: a CID of its own (no VM's).
    pub cid: u64,
    /// The port clients connect to (below 2^30).
    pub port: u32,
    /// Where backends report their load (seed 003): a member's SEQPACKET connection to
    /// `cid:load_port` carries messages `load N` (0 idle .. 1000 saturated), merged into its
    /// health and checked against how it drains. Default: no reports.
    #[serde(default)]
    pub load_port: Option<u32>,
    /// `message` (default) or `connection`.
    #[serde(default)]
    pub mode: BalanceMode,
    /// The backends.
    pub members: Vec<MemberConfig>,
    /// Balancing policy (as in `vmq run`'s topologies).
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Health scoring. Default latency target 2 ms, averages over 100 ms.
    #[serde(default = "vsock_health")]
    pub health: HealthConfig,
    /// Stall window, ejection, slow start, panic. Default stall window 500 ms.
    #[serde(default = "vsock_failover")]
    pub failover: FailoverConfig,
    /// A request not answered in this long is failed back: its client's connection is
    /// reset. Default 5000. In `connection` mode: a client's connection no backend accepted
    /// in this long (retries included) is reset.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Largest message, KiB (1 to 64). Default 64. (`message` mode.)
    #[serde(default = "default_max_message_kib")]
    pub max_message_kib: u32,
    /// Client connections at once (in `connection` mode: relayed connections, connecting or
    /// established). Default 256.
    #[serde(default = "default_max_clients")]
    pub max_connections: u32,
    /// Requests in flight per client connection. Default 16. (`message` mode.)
    #[serde(default = "default_window")]
    pub window: u32,
    /// A backend that does not accept a connection vmq opens in this long is passed over for
    /// as long again (in `connection` mode the client's connection is retried on another).
    /// Default 1000.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
}

fn default_request_timeout_ms() -> u64 {
    5000
}
fn default_max_message_kib() -> u32 {
    64
}
fn default_max_clients() -> u32 {
    256
}
fn default_window() -> u32 {
    16
}
fn default_connect_timeout_ms() -> u64 {
    1000
}

impl ServiceTable {
    /// The switch's settings for it.
    pub fn switch_config(&self) -> ServiceConfig {
        ServiceConfig {
            policy: self.policy.clone(),
            health: self.health,
            failover: self.failover,
            request_timeout_ns: self.request_timeout_ms.saturating_mul(1_000_000),
        }
    }
}

/// Everything `vmq serve` needs.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// The VMs (`[[vm]]`).
    #[serde(default)]
    pub vm: Vec<VmConfig>,
    /// Limits (`[limits]`).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Load-balanced services (`[[service]]`).
    #[serde(default)]
    pub service: Vec<ServiceTable>,
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
        self.check_services(file)
    }

    fn check_services(&self, file: &str) -> Result<(), ServeConfigError> {
        let invalid = |place: String, message: String| ServeConfigError::Invalid {
            place: format!("{file}: {place}"),
            message,
        };
        let vm_cids: HashSet<u64> = self.vm.iter().map(|v| v.cid).collect();
        let mut names = HashSet::new();
        let mut cids = HashSet::new();
        for (i, s) in self.service.iter().enumerate() {
            let place = format!("service[{i}] ({})", s.name);
            if s.name.is_empty() || !names.insert(s.name.clone()) {
                return Err(invalid(
                    format!("{place}.name"),
                    "needs a name no other service has".into(),
                ));
            }
            // Port names are `svc-NAME` and `svc-NAME-vmCID`: with a `-` in names, service
            // `a`'s member 5 and service `a-vm5`'s front would share one.
            if !s
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            {
                return Err(invalid(
                    format!("{place}.name"),
                    "may hold letters, digits, '_' and '.' only (it names the service's ports, \
                     svc-NAME and svc-NAME-vmCID)"
                        .into(),
                ));
            }
            if !crate::vsock::packet::is_guest_cid(s.cid)
                || vm_cids.contains(&s.cid)
                || !cids.insert(s.cid)
            {
                return Err(invalid(
                    format!("{place}.cid"),
                    "a service needs a CID of its own: 3 or more, no VM's and no other service's"
                        .into(),
                ));
            }
            if s.port >= crate::port::vsock::SERVICE_BACKEND_PORTS {
                return Err(invalid(
                    format!("{place}.port"),
                    "must be below 1073741824 (ports above are vmq's own, to the backends)".into(),
                ));
            }
            if s.load_port
                .is_some_and(|p| p == s.port || p >= crate::port::vsock::SERVICE_BACKEND_PORTS)
            {
                return Err(invalid(
                    format!("{place}.load_port"),
                    "must differ from the service's port and be below 1073741824".into(),
                ));
            }
            if !(1..=60_000).contains(&s.connect_timeout_ms) {
                return Err(invalid(
                    format!("{place}.connect_timeout_ms"),
                    "must be 1 to 60000 (a backend that does not accept a connection in this \
                     long is passed over)"
                        .into(),
                ));
            }
            if s.members.is_empty() {
                return Err(invalid(
                    format!("{place}.members"),
                    "needs at least one member".into(),
                ));
            }
            let mut seen = HashSet::new();
            for (j, m) in s.members.iter().enumerate() {
                let mplace = format!("{place}.members[{j}]");
                if !vm_cids.contains(&m.cid) || !seen.insert(m.cid) {
                    return Err(invalid(
                        format!("{mplace}.cid"),
                        format!(
                            "{} is not a [[vm]] of this server, or is a member twice",
                            m.cid
                        ),
                    ));
                }
                if !(m.weight.is_finite() && m.weight > 0.0) {
                    return Err(invalid(
                        format!("{mplace}.weight"),
                        "must be above 0".into(),
                    ));
                }
                if !(1..=1024).contains(&m.max_in_flight) {
                    return Err(invalid(
                        format!("{mplace}.max_in_flight"),
                        "must be 1 to 1024".into(),
                    ));
                }
            }
            if !(1..=64).contains(&s.max_message_kib) {
                return Err(invalid(
                    format!("{place}.max_message_kib"),
                    "must be 1 to 64".into(),
                ));
            }
            if !(1..=4096).contains(&s.max_connections) || !(1..=256).contains(&s.window) {
                return Err(invalid(
                    format!("{place}.max_connections"),
                    "max_connections must be 1 to 4096 and window 1 to 256".into(),
                ));
            }
            s.switch_config()
                .validate_for(s.members.len())
                .map_err(|e| invalid(format!("{place}.{}", e.field()), e.to_string()))?;
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
