//! `connection` services in `vmq serve`: each one's table of connections, its front and its
//! members' ports (see [`crate::port::vsock::service::connection`]).

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use super::{io, MemberConfig, ServeConfig, ServeError, ServiceTable};
use crate::port::vsock::service::connection::{
    ConnBackendConfig, ConnBackendPort, ConnFrontConfig, ConnFrontPort, SharedTable, TableConfig,
};
use crate::port::vsock::{NetworkError, VsockNetwork};
use crate::port::PortId;
use crate::switch::{Clock, Switch};
use crate::vsock::endpoint::EndpointConfig;
use crate::vsock::relay::RelayConfig;

/// The table of `connection` service `s`; register it with the network
/// ([`VsockNetwork::watch_deliveries`]) before the service's address routes.
pub(super) fn table(cfg: &ServeConfig, s: &ServiceTable) -> Result<Arc<SharedTable>, ServeError> {
    let relay = cfg.relay();
    SharedTable::new(TableConfig {
        cid: s.cid,
        port: s.port,
        max_connections: s.max_connections as usize,
        members: s.members.len(),
        relay: RelayConfig {
            // Retries included: a client's REQUEST no backend accepted in this long is reset.
            request_timeout_ns: s.request_timeout_ms.saturating_mul(1_000_000),
            ..relay
        },
    })
    .map_err(|e| ServeError::Network(NetworkError::Relay(e)))
}

/// Attaches `connection` service `s` (the switch's service `id`) over `table`: its front at
/// port `front`, its members' ports at `backends`, then the switch's service over the members.
#[allow(clippy::too_many_arguments)]
pub(super) fn add(
    sw: &mut Switch<GuestMemoryMmap>,
    net: &Arc<VsockNetwork>,
    clock: &Arc<dyn Clock>,
    cfg: &ServeConfig,
    id: u32,
    s: &ServiceTable,
    table: &Arc<SharedTable>,
    front: PortId,
    backends: &[(u64, PortId)],
) -> Result<(), ServeError> {
    let port = front_port(net, clock, cfg, id, s, table)?;
    let got = sw.attach(&super::front_name(s), Box::new(port))?;
    debug_assert_eq!(got, front);
    super::message::attach_members(sw, id, s, backends, |m, expected| {
        Ok(Box::new(member_port(
            net, clock, cfg, s, m, table, expected,
        )?))
    })
}

/// The front of `connection` service `s` (the switch's service `id`) over its `table`.
pub(super) fn front_port(
    net: &Arc<VsockNetwork>,
    clock: &Arc<dyn Clock>,
    cfg: &ServeConfig,
    id: u32,
    s: &ServiceTable,
    table: &Arc<SharedTable>,
) -> Result<ConnFrontPort, ServeError> {
    ConnFrontPort::new(
        net.clone(),
        table.clone(),
        ConnFrontConfig {
            service: id,
            cid: s.cid,
            slots: cfg.limits.staging_slots,
            max_connections: s.max_connections,
        },
        clock.clone(),
    )
    .map_err(io(format!("service {}: staging memory", s.name)))
}

/// The port of member `m` of `connection` service `s` over its `table`, to have id `id` in the
/// switch.
pub(super) fn member_port(
    net: &Arc<VsockNetwork>,
    clock: &Arc<dyn Clock>,
    cfg: &ServeConfig,
    s: &ServiceTable,
    m: &MemberConfig,
    table: &Arc<SharedTable>,
    id: PortId,
) -> Result<ConnBackendPort, ServeError> {
    let cid = m.cid;
    let vm = super::message::member_vm(net, s, cid)?;
    let connect_timeout_ns = s.connect_timeout_ms.saturating_mul(1_000_000);
    ConnBackendPort::new(
        vm,
        table.clone(),
        ConnBackendConfig {
            service_cid: s.cid,
            member: id,
            port: m.port.unwrap_or(s.port),
            max_connecting: m.max_in_flight,
            connect_timeout_ns,
            refused_backoff_ns: connect_timeout_ns,
            slots: cfg.limits.staging_slots,
            load_port: s.load_port,
            report_endpoint: EndpointConfig {
                buf_alloc: 4096,
                send_buf: 4096,
            },
        },
        clock.clone(),
    )
    .map_err(io(format!("service {}: member {cid}", s.name)))
}
