//! Image parameters by name, resolved to boot-block slots.

use toml::Spanned;

use super::spec::{FaultKind, ParamValue, Role, Topology, VmSpec};
use super::TopologyError;
use crate::abi::image::{client, driver, evil, peer, worker, MAX_GUEST_PAYLOAD, MAX_PEER_PAYLOAD};
use crate::abi::mode;
use crate::virtio::vmq_device::QUEUE_NUM_MAX;

/// Largest queue size a guest may ask for (`queue_size`; a power of two, 0 = the device's).
pub const MAX_QUEUE_SIZE: u64 = 32768;

/// Guest memory below the image's free memory (boot structures, stack, image, rings), which
/// a client's bookkeeping cannot use.
const RESERVED_MIB: u64 = 4;

/// Parameter names a topology may use, their boot-block slots and what they mean.
pub const PARAMS: &[(&str, usize, &str)] = &[
    (
        "mode",
        client::param::MODE,
        "image-specific mode (client: 0 normal, 1 malformed, 2 page hand-off; peer: 0 copy, 2 page \
         hand-off; evil: abi::mode::evil)",
    ),
    (
        "count",
        client::param::COUNT,
        "messages to send (client, peer) or replies before exiting (worker; 0 = forever)",
    ),
    (
        "service",
        client::param::SERVICE,
        "service to send requests to, by name (the guest looks it up in the switch's directory)",
    ),
    (
        "target",
        client::param::TARGET,
        "VM (port) to send to, by name (the guest looks it up in the switch's directory)",
    ),
    (
        "size",
        client::param::SIZE,
        "payload bytes (up to 4096, abi::image::MAX_GUEST_PAYLOAD; peer: up to 1 MiB)",
    ),
    (
        "window",
        client::param::WINDOW,
        "most requests a client keeps outstanding",
    ),
    (
        "wait",
        driver::param::WAIT,
        "\"poll\" or \"doorbell\": how a guest waits when idle",
    ),
    (
        "expect",
        peer::param::EXPECT,
        "one-way messages a peer must receive",
    ),
    (
        "queue_size",
        driver::param::QUEUE_SIZE,
        "queue size the guest asks for (a power of two up to 32768; 0 = the device's)",
    ),
    (
        "stall_after",
        worker::param::STALL_AFTER,
        "worker stops draining after this many requests",
    ),
    (
        "crash_after",
        worker::param::CRASH_AFTER,
        "worker exits after this many replies",
    ),
    (
        "error_every",
        worker::param::ERROR_EVERY,
        "worker answers every n-th request with an error",
    ),
    (
        "mute_after",
        worker::param::MUTE_AFTER,
        "worker keeps draining but stops answering after this many replies",
    ),
    (
        "side_service",
        evil::param::SIDE_SERVICE,
        "a second service (a service name) for the evil image's rewrite and reset modes",
    ),
    (
        "slow",
        worker::param::SLOW,
        "worker busy-loop iterations per request",
    ),
    (
        "class",
        client::param::CLASS,
        "client: request class of every request (0..=255; byte_share class shares)",
    ),
    (
        "key",
        client::param::KEY,
        "client: affinity key of its requests (maglev), the base of a range with key_spread",
    ),
    (
        "key_spread",
        client::param::KEY_SPREAD,
        "client: request id carries key + id % key_spread (0 or 1: every request carries key)",
    ),
    (
        "lie_load",
        worker::param::LIE_LOAD,
        "worker reports load 0 while spending this many more busy-loop iterations per request",
    ),
    (
        "immediate_every",
        client::param::IMMEDIATE_EVERY,
        "client, peer: every n-th message immediate, the rest deferred (0 = no flags, 1 = all immediate)",
    ),
    (
        "keep_pages",
        worker::param::KEEP_PAGES,
        "worker: 1 = never release pages it is handed (its reply returns them)",
    ),
    (
        "check_stride",
        peer::param::CHECK_STRIDE,
        "peer: check one payload byte in every N it receives, write only those when sending \
         (0 or 1 = every byte)",
    ),
    (
        "spin",
        driver::param::SPIN,
        "ring checks before a guest parks on the doorbell (0 = the driver's default, 4096)",
    ),
];

/// The parameters that name a port or a service: the guest gets the name, never an id.
pub const NAME_PARAMS: &[&str] = &["target", "service", "side_service"];

fn slot(name: &str) -> Option<usize> {
    PARAMS.iter().find(|p| p.0 == name).map(|p| p.1)
}

impl Topology {
    /// The name parameters of VM `vm` (`target`, `service`, `side_service`)
    /// with their slots: the VM or service name the guest looks up in the switch's
    /// directory. A number (the old form: an index in file order) is turned into the name it
    /// stands for.
    pub fn names_of(&self, vm: usize) -> Result<Vec<(usize, String)>, TopologyError> {
        let spec = &self.vms[vm];
        let bytes = self.directory_bytes();
        let mut out = Vec::new();
        for (name, value) in spec
            .params
            .iter()
            .filter(|(n, _)| NAME_PARAMS.contains(&n.as_str()))
        {
            let idx = slot(name).expect("every name parameter has a slot");
            out.push((idx, self.resolve_name(name, value)?));
            if bytes > driver::DIRECTORY_MAX {
                return Err(self.invalid(
                    value.span(),
                    name,
                    format!(
                        "the switch's directory of this topology's VM and service names takes \
                         {bytes} bytes, more than the {} a guest keeps to look names up in: \
                         use shorter names or fewer VMs",
                        driver::DIRECTORY_MAX
                    ),
                ));
            }
        }
        Ok(out)
    }

    /// Bytes of the directory the switch sends for this topology (every VM and service).
    fn directory_bytes(&self) -> usize {
        use crate::wire::directory::{encoded_len, Entry, EntryKind};
        fn entry(kind: EntryKind, name: &str) -> Entry<'_> {
            Entry {
                id: 0,
                kind,
                name: name.as_bytes(),
            }
        }
        let vms = self
            .vms
            .iter()
            .map(|v| entry(EntryKind::Port, v.name.get_ref()));
        let services = self
            .services
            .iter()
            .map(|s| entry(EntryKind::Service, s.name.get_ref()));
        encoded_len(vms.chain(services))
    }

    /// The boot-block parameters of VM `vm` (index into `vms`) but its name parameters
    /// ([`Topology::names_of`]): its `params` checked against the limits of the guest images,
    /// then its guest-side faults.
    pub fn params_of(&self, vm: usize) -> Result<Vec<(usize, u64)>, TopologyError> {
        let spec = &self.vms[vm];
        let mut out = Vec::new();
        for (name, value) in &spec.params {
            if NAME_PARAMS.contains(&name.as_str()) {
                continue;
            }
            let idx = slot(name).ok_or_else(|| {
                self.invalid(
                    value.span(),
                    name,
                    format!(
                        "unknown parameter; known: {}",
                        PARAMS.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
                    ),
                )
            })?;
            let v = self.resolve(name, value)?;
            self.check_param(spec, name, v)
                .map_err(|msg| self.invalid(value.span(), name, msg))?;
            out.push((idx, v));
        }
        if self.role(spec) == Role::Peer
            && spec.image.get_ref() == "peer"
            && param(spec, "count") > 0
            && !spec.params.contains_key("target")
        {
            return Err(self.invalid(
                spec.name.span(),
                "target",
                "a peer with a count sends that many messages to its target: set target \
                 (a VM name)"
                    .into(),
            ));
        }
        for f in self
            .faults
            .iter()
            .filter(|f| f.vm.get_ref() == spec.name.get_ref())
        {
            if let FaultKind::GuestParam(name, v) = f.kind() {
                if let Some(idx) = slot(name) {
                    out.push((idx, v));
                }
            }
        }
        Ok(out)
    }

    /// The limits the guest images enforce (a guest that finds a parameter out of range exits
    /// with `abi::image::exit::BAD_PARAM` before bringing its device up).
    fn check_param(&self, spec: &VmSpec, name: &str, v: u64) -> Result<(), String> {
        let image = spec.image.get_ref().as_str();
        match name {
            "size" if image == "peer" && v > MAX_PEER_PAYLOAD => Err(format!(
                "{v} bytes: a peer carries at most {MAX_PEER_PAYLOAD} payload bytes (1 MiB)"
            )),
            "size" if image == "peer" => {
                // Its rx and tx slots, its two message buffers and its hand-off areas (one per
                // tx slot) all hold `size` bytes, in its free memory below the receive window.
                let queue = match param(spec, "queue_size") {
                    0 => u64::from(QUEUE_NUM_MAX),
                    q => q.min(u64::from(QUEUE_NUM_MAX)),
                };
                let need = (3 * queue + 2).saturating_mul(v.max(1024) + 1088);
                let mib = *spec.memory_mib.get_ref();
                let window = self.handoff.as_ref().map_or(0, |h| h.window_pages * 4096);
                let room = ((mib.saturating_sub(RESERVED_MIB)) << 20).saturating_sub(window);
                if need > room {
                    Err(format!(
                        "{v} bytes with {queue} queue slots need about {} MiB of a peer's \
                         free memory, more than the {} MiB {mib} MiB leaves: lower queue_size \
                         or raise memory_mib",
                        need.div_ceil(1 << 20),
                        room >> 20
                    ))
                } else {
                    Ok(())
                }
            }
            "size" if v > MAX_GUEST_PAYLOAD => Err(format!(
                "{v} bytes: the guest images carry at most {MAX_GUEST_PAYLOAD} payload bytes \
                 (a peer up to {MAX_PEER_PAYLOAD})"
            )),
            "queue_size" if v != 0 && (!v.is_power_of_two() || v > MAX_QUEUE_SIZE) => Err(format!(
                "{v}: a queue size is a power of two up to {MAX_QUEUE_SIZE} (or 0 for the \
                 device's)"
            )),
            "wait" if v > driver::WAIT_DOORBELL => {
                Err(format!("{v}: use \"poll\" (0) or \"doorbell\" (1)"))
            }
            "class" if v > u64::from(u8::MAX) => Err(format!(
                "{v}: a request class is 0..=255 (the header's class byte)"
            )),
            "key" | "key_spread" if v > u64::from(u32::MAX) => {
                Err(format!("{v}: affinity keys are 32-bit (0..={})", u32::MAX))
            }
            "mode" if image == "client" && v > mode::client::HANDOFF => Err(format!(
                "{v}: client modes are {} (normal), {} (malformed) and {} (page hand-off)",
                mode::client::NORMAL,
                mode::client::MALFORMED,
                mode::client::HANDOFF
            )),
            "mode" if image == "peer" && v != mode::peer::COPY && v != mode::peer::HANDOFF => {
                Err(format!(
                    "{v}: peer modes are {} (copy) and {} (page hand-off)",
                    mode::peer::COPY,
                    mode::peer::HANDOFF
                ))
            }
            "mode" if image == "evil" && v > mode::evil::PAGES_HOARD => Err(format!(
                "{v}: evil modes are {}..={} (abi::mode::evil)",
                mode::evil::HONEST,
                mode::evil::PAGES_HOARD
            )),
            "count" if matches!(image, "client" | "evil") => {
                // A client keeps a bit per request (evil: two ids per request, plus slack).
                let ids = if image == "evil" {
                    v.saturating_mul(2).saturating_add(1024)
                } else {
                    v
                };
                let mib = *spec.memory_mib.get_ref();
                let room = mib.saturating_sub(RESERVED_MIB) << 20;
                if ids.div_ceil(8) > room {
                    Err(format!(
                        "{v} requests need {} KiB of bookkeeping, more than the {room} bytes \
                         {mib} MiB of guest memory leaves: lower count or raise memory_mib",
                        ids.div_ceil(8) >> 10
                    ))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// The VM or service name a name parameter gives (a number: the one at that index in
    /// file order, checked).
    fn resolve_name(
        &self,
        name: &str,
        value: &Spanned<ParamValue>,
    ) -> Result<String, TopologyError> {
        let bad = |msg: String| self.invalid(value.span(), name, msg);
        match (name, value.get_ref()) {
            ("target", ParamValue::Int(port)) => usize::try_from(*port)
                .ok()
                .and_then(|p| self.vms.get(p))
                .map(|v| v.name.get_ref().clone())
                .ok_or_else(|| {
                    bad(format!(
                        "port {port} is out of range: this topology has VMs 0..{} (in file \
                         order); better, name the VM",
                        self.vms.len()
                    ))
                }),
            ("target", ParamValue::Name(vm)) => self
                .vm_index(vm)
                .map(|_| vm.clone())
                .ok_or_else(|| bad(format!("{vm:?} is not a [[vm]] of this topology"))),
            (_, ParamValue::Int(id)) => usize::try_from(*id)
                .ok()
                .and_then(|i| self.services.get(i))
                .map(|s| s.name.get_ref().clone())
                .ok_or_else(|| {
                    bad(format!(
                        "service {id} is out of range: this topology has services 0..{} (in \
                         file order); better, name the service",
                        self.services.len()
                    ))
                }),
            (_, ParamValue::Name(s)) => self
                .service_index(s)
                .map(|_| s.clone())
                .ok_or_else(|| bad(format!("{s:?} is not a [[service]] of this topology"))),
        }
    }

    fn resolve(&self, name: &str, value: &Spanned<ParamValue>) -> Result<u64, TopologyError> {
        let bad = |msg: String| self.invalid(value.span(), name, msg);
        match (name, value.get_ref()) {
            ("wait", ParamValue::Name(w)) => match w.as_str() {
                "poll" => Ok(driver::WAIT_POLL),
                "doorbell" => Ok(driver::WAIT_DOORBELL),
                other => Err(bad(format!("{other:?}: use \"poll\" or \"doorbell\""))),
            },
            (_, ParamValue::Int(v)) => Ok(*v),
            (_, ParamValue::Name(s)) => Err(bad(format!("{s:?}: this parameter takes a number"))),
        }
    }
}

/// The number VM `spec` gives parameter `name` (0 when absent or a name).
fn param(spec: &VmSpec, name: &str) -> u64 {
    match spec.params.get(name).map(|v| v.get_ref()) {
        Some(ParamValue::Int(v)) => *v,
        _ => 0,
    }
}
