//! Image parameters by name, resolved to boot-block slots.

use toml::Spanned;

use super::spec::{FaultKind, ParamValue, Topology};
use super::TopologyError;
use crate::abi::image::{client, driver, evil, hello, peer, port_param, worker};

/// Parameter names a topology may use, their boot-block slots and what they mean.
pub const PARAMS: &[(&str, usize, &str)] = &[
    ("mode", client::param::MODE, "image-specific mode"),
    (
        "count",
        client::param::COUNT,
        "messages to send (client, peer) or replies before exiting (worker; 0 = forever)",
    ),
    (
        "service",
        client::param::SERVICE,
        "service to send requests to (a service name)",
    ),
    (
        "target",
        client::param::TARGET,
        "port to send to (a VM name)",
    ),
    ("size", client::param::SIZE, "payload bytes (up to 4096)"),
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
        "queue size the guest asks for (power of two)",
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
        "exit_status",
        hello::param::EXIT_STATUS,
        "exit status on success (hello)",
    ),
];

fn slot(name: &str) -> Option<usize> {
    PARAMS.iter().find(|p| p.0 == name).map(|p| p.1)
}

impl Topology {
    /// The boot-block parameters of VM `vm` (index into `vms`): its `params` with names
    /// resolved (services to service ids, VMs to port ids), then its guest-side faults.
    pub fn params_of(&self, vm: usize) -> Result<Vec<(usize, u64)>, TopologyError> {
        let spec = &self.vms[vm];
        let mut out = Vec::new();
        for (name, value) in &spec.params {
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
            out.push((idx, self.resolve(name, value)?));
        }
        for f in self
            .faults
            .iter()
            .filter(|f| f.vm.get_ref() == spec.name.get_ref())
        {
            if let FaultKind::GuestParam(name, v) = f.kind() {
                out.push((slot(name).expect("fault parameters are in the table"), v));
            }
        }
        Ok(out)
    }

    fn resolve(&self, name: &str, value: &Spanned<ParamValue>) -> Result<u64, TopologyError> {
        let bad = |msg: String| self.invalid(value.span(), name, msg);
        match (name, value.get_ref()) {
            ("target", ParamValue::Int(port)) => u32::try_from(*port)
                .map(port_param)
                .map_err(|_| bad(format!("port {port} is out of range"))),
            ("target", ParamValue::Name(vm)) => self
                .vm_index(vm)
                .map(|i| port_param(i as u32))
                .ok_or_else(|| bad(format!("{vm:?} is not a [[vm]] of this topology"))),
            ("service" | "side_service", ParamValue::Name(s)) => self
                .service_index(s)
                .map(|i| i as u64)
                .ok_or_else(|| bad(format!("{s:?} is not a [[service]] of this topology"))),
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
