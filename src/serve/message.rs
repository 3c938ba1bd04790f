//! `message` services in `vmq serve`: each one's front and its members' ports (see
//! [`crate::port::vsock::service`]), and the switch port names of every service's ports.

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use super::{io, MemberConfig, ServeConfig, ServeError, ServiceTable};
use crate::port::vsock::service::{
    BackendConfig, FrontConfig, ServiceBackendPort, ServiceFrontPort,
};
use crate::port::vsock::{VmEntry, VsockNetwork};
use crate::port::{Port, PortId};
use crate::switch::{Clock, Switch};
use crate::vsock::endpoint::EndpointConfig;

/// Attaches service `s` (the switch's service `id`): its front at port `front`, its members'
/// ports at `backends`, then the switch's service over the members.
#[allow(clippy::too_many_arguments)]
pub(super) fn add_service(
    sw: &mut Switch<GuestMemoryMmap>,
    net: &Arc<VsockNetwork>,
    clock: &Arc<dyn Clock>,
    cfg: &ServeConfig,
    id: u32,
    s: &ServiceTable,
    front: PortId,
    backends: &[(u64, PortId)],
) -> Result<(), ServeError> {
    let port = front_port(net, cfg, id, s)?;
    let got = sw.attach(&front_name(s), Box::new(port))?;
    debug_assert_eq!(got, front);
    attach_members(sw, id, s, backends, |m, _| {
        Ok(Box::new(backend_port(net, clock, s, m)?))
    })
}

/// Attaches the ports of service `s`'s members at `backends` (each made by `port`, given its
/// member and the id it gets), then the switch's service `id` over them.
pub(super) fn attach_members(
    sw: &mut Switch<GuestMemoryMmap>,
    id: u32,
    s: &ServiceTable,
    backends: &[(u64, PortId)],
    mut port: impl FnMut(&MemberConfig, PortId) -> Result<Box<dyn Port<GuestMemoryMmap>>, ServeError>,
) -> Result<(), ServeError> {
    let mut members = Vec::new();
    for (m, &(cid, expected)) in s.members.iter().zip(backends) {
        let got = sw.attach(&backend_name(s, cid), port(m, expected)?)?;
        debug_assert_eq!(got, expected);
        members.push((got, m.weight));
    }
    let sid = sw.add_service(&s.name, s.switch_config(), &members)?;
    debug_assert_eq!(sid, id);
    log::info!(
        "service {} ({} mode): CID {} port {} over {} backends",
        s.name,
        format!("{:?}", s.mode).to_lowercase(),
        s.cid,
        s.port,
        members.len()
    );
    Ok(())
}

/// The switch port name of service `s`'s front.
pub(super) fn front_name(s: &ServiceTable) -> String {
    front_port_name(&s.name)
}

/// The switch port name of member `cid` of service `s`.
pub(super) fn backend_name(s: &ServiceTable, cid: u64) -> String {
    member_port_name(&s.name, cid)
}

/// The switch port name (in snapshots and stats) of the front of the service called
/// `service`: `svc-NAME`.
pub fn front_port_name(service: &str) -> String {
    format!("svc-{service}")
}

/// The switch port name (in snapshots and stats) of member `cid` of the service called
/// `service`: `svc-NAME-vmCID`.
pub fn member_port_name(service: &str, cid: u64) -> String {
    format!("svc-{service}-vm{cid}")
}

/// The front of service `s` (the switch's service `id`).
pub(super) fn front_port(
    net: &Arc<VsockNetwork>,
    cfg: &ServeConfig,
    id: u32,
    s: &ServiceTable,
) -> Result<ServiceFrontPort, ServeError> {
    let relay = cfg.relay();
    ServiceFrontPort::new(
        net.clone(),
        FrontConfig {
            service: id,
            cid: s.cid,
            port: s.port,
            endpoint: EndpointConfig {
                buf_alloc: relay.credit_cap,
                send_buf: relay.credit_cap,
            },
            max_message: s.max_message_kib * 1024,
            max_connections: s.max_connections as usize,
            max_per_client: relay.max_conns_per_guest,
            window: s.window,
            slots: FRONT_SLOTS,
        },
    )
    .map_err(io(format!("service {}: staging memory", s.name)))
}

/// The port of member `m` of service `s`.
pub(super) fn backend_port(
    net: &Arc<VsockNetwork>,
    clock: &Arc<dyn Clock>,
    s: &ServiceTable,
    m: &MemberConfig,
) -> Result<ServiceBackendPort, ServeError> {
    let cid = m.cid;
    let max_message = s.max_message_kib * 1024;
    let vm = member_vm(net, s, cid)?;
    ServiceBackendPort::new(
        vm,
        BackendConfig {
            service_cid: s.cid,
            port: m.port.unwrap_or(s.port),
            max_in_flight: m.max_in_flight,
            endpoint: EndpointConfig {
                buf_alloc: max_message,
                send_buf: max_message,
            },
            max_message,
            connect_timeout_ns: s.connect_timeout_ms.saturating_mul(1_000_000),
            request_timeout_ns: s.request_timeout_ms.saturating_mul(1_000_000),
            refused_backoff_ns: s.connect_timeout_ms.saturating_mul(1_000_000),
            slots: m.max_in_flight * 20 + 64,
            load_port: s.load_port,
        },
        clock.clone(),
    )
    .map_err(io(format!("service {}: member {cid}", s.name)))
}

/// Staging slots of a service's front: its requests in flight (three quarters) and packets
/// for its clients, each slot one message of up to `max_message_kib`.
const FRONT_SLOTS: u32 = 1024;

/// The VM of member `cid` of service `s`.
pub(super) fn member_vm(
    net: &VsockNetwork,
    s: &ServiceTable,
    cid: u64,
) -> Result<Arc<VmEntry>, ServeError> {
    net.vm(cid).cloned().ok_or_else(|| ServeError::Io {
        what: format!("service {}", s.name),
        source: std::io::Error::other(format!("member CID {cid} is no VM")),
    })
}
