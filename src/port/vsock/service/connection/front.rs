//! [`ConnFrontPort`]: a `connection` service's address, where clients connect.
//!
//! It takes every packet clients send to the service's CID. A REQUEST taken becomes a connect
//! request to the switch's service (8 bytes: the connection's id and attempt; the affinity key
//! is the client's CID, so `maglev` keeps a client's connections on one backend); the switch's
//! answer is the member's (accepted, refused) or its own (no backend in time). A refusal is
//! asked again, a final failure resets the client. Packets of established connections are
//! translated and staged for the backend's VM.
//!
//! # Bounds
//!
//! - staging: `slots` pieces in transit to backends (each connection at most the credit cap of
//!   them), plus two connect requests per connection the table may hold (`max_connections`),
//!   kept apart so requests always find a slot;
//! - connections: the [`ConnTable`](super::ConnTable)'s.

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use super::{apply, hand_over, Next, Out, SharedTable, CHECK_NS};
use crate::port::vsock::{
    read_piece, ringless_port, staged_port_memory, Piece, Staging, VsockNetwork, MAX_SLOTS,
    PIECE_PAYLOAD,
};
use crate::port::{Drain, Port};
use crate::switch::Clock;
use crate::virtio::{DeliverError, DeviceError, Payload, TxChain};
use crate::vsock::packet::{PacketHeader, HEADER_LEN};
use crate::wire::{MsgHeader, MsgKind};

/// Settings of a `connection` service's front.
#[derive(Debug, Clone)]
pub struct ConnFrontConfig {
    /// The switch's service the connect requests go to.
    pub service: u32,
    /// The service's address.
    pub cid: u64,
    /// Staging slots for pieces in transit to backends.
    pub slots: u32,
    /// Connections the table holds at most (requests get slots of their own).
    pub max_connections: u32,
}

/// A `connection` service's address as a port of the switch. See the module documentation.
pub struct ConnFrontPort {
    cfg: ConnFrontConfig,
    net: Arc<VsockNetwork>,
    table: Arc<SharedTable>,
    clock: Arc<dyn Clock>,
    staging: Staging,
    /// Staged, not yet handed to the switch.
    outgoing: Vec<TxChain>,
    outs: Vec<Out>,
    /// Slots kept for connect requests, and those held now.
    reserve: usize,
    requests_held: usize,
    consumed: u16,
    last_check: u64,
}

impl ConnFrontPort {
    /// The front of the service `cfg` describes, over `table`, for the VMs of `net`.
    pub fn new(
        net: Arc<VsockNetwork>,
        table: Arc<SharedTable>,
        cfg: ConnFrontConfig,
        clock: Arc<dyn Clock>,
    ) -> std::io::Result<Self> {
        let reserve = 2 * cfg.max_connections as usize;
        let slots = (cfg.slots as usize + reserve).min(MAX_SLOTS as usize) as u32;
        let staging = Staging::new(slots)?;
        Ok(Self {
            reserve: reserve.min(staging.slots() / 2),
            cfg,
            net,
            table,
            clock,
            staging,
            outgoing: Vec::new(),
            outs: Vec::new(),
            requests_held: 0,
            consumed: 0,
            last_check: 0,
        })
    }

    /// Sets the switch's service its connect requests go to ([`ConnFrontConfig::service`]),
    /// for a front made before the service's id was known (a service a reload adds). Call it
    /// before the port is placed.
    pub fn set_service(&mut self, service: u32) {
        self.cfg.service = service;
    }

    /// Whether `n` pieces fit, leaving the slots kept for requests.
    fn room(&self, n: usize) -> bool {
        self.staging.free() >= n + self.reserve.saturating_sub(self.requests_held)
    }

    /// Asks the switch for a backend for attempt `attempt` of connection `id`.
    fn request(&mut self, id: u32, attempt: u32, key: u32) {
        let mut h = MsgHeader::new(MsgKind::Request, 0, 0, 0);
        h.set_dst_service(self.cfg.service);
        h.set_msg_id((u64::from(id) << 32) | u64::from(attempt));
        h.set_key(key);
        match self
            .staging
            .stage(h, &[&id.to_le_bytes(), &attempt.to_le_bytes()])
        {
            Some(chain) => {
                self.outgoing.push(chain);
                self.requests_held += 1;
            }
            // The reserve makes this unreachable; the relay's deadline would reset the client.
            None => log::error!(
                "service CID {}: no slot for a connect request",
                self.cfg.cid
            ),
        }
    }

    /// A packet a client sent to the service's CID.
    fn on_client_packet(&mut self, h: &PacketHeader, data: &[u8]) -> Result<bool, DeliverError> {
        // The client's VM port stamped the source: a VM of this network.
        let client = match self.net.vm(h.src_cid) {
            Some(c) if h.dst_cid == self.cfg.cid => c.clone(),
            _ => return Ok(false),
        };
        if !self.room(2) {
            return Err(DeliverError::NoBuffer);
        }
        let opened = self.table.lock().from_client(&client, h, &mut self.outs);
        apply(&mut self.staging, &mut self.outs, data, &mut self.outgoing);
        if let Some(id) = opened {
            self.request(id, 0, client.addr.cid as u32);
        }
        Ok(true)
    }
}

impl Port<GuestMemoryMmap> for ConnFrontPort {
    staged_port_memory!();

    fn take_sent(&mut self, max: usize, sent: &mut Vec<TxChain>) -> Result<usize, DeviceError> {
        let now = self.clock.now_ns();
        if now.saturating_sub(self.last_check) >= CHECK_NS {
            self.last_check = now;
            self.table.lock().sweep(now, &mut self.outs);
            apply(&mut self.staging, &mut self.outs, &[], &mut self.outgoing);
        }
        Ok(hand_over(&mut self.outgoing, max, sent))
    }

    fn release(&mut self, msg: &TxChain) -> Result<(), DeviceError> {
        if msg.header.kind() == Some(MsgKind::Request) {
            self.requests_held = self.requests_held.saturating_sub(1);
        }
        self.staging
            .release(msg, format_args!("service CID {}", self.cfg.cid));
        Ok(())
    }

    fn deliver(
        &mut self,
        header: &MsgHeader,
        payload: &Payload<'_, GuestMemoryMmap>,
    ) -> Result<bool, DeliverError> {
        let taken = match header.kind() {
            Some(MsgKind::Reply) => {
                // Room for the retry's request is kept in the reserve.
                let id = header.msg_id();
                let next = self.table.lock().on_answer(
                    ((id >> 32) as u32, id as u32),
                    header.status(),
                    header.src(),
                    &mut self.outs,
                );
                apply(&mut self.staging, &mut self.outs, &[], &mut self.outgoing);
                if let Next::Retry { id, attempt, key } = next {
                    self.request(id, attempt, key);
                }
                true
            }
            Some(MsgKind::OneWay) => {
                let mut piece: Piece = [0; HEADER_LEN + PIECE_PAYLOAD as usize];
                let Some((h, data)) = read_piece(payload, &mut piece)? else {
                    return Ok(false);
                };
                if !self.on_client_packet(&h, data)? {
                    return Ok(false);
                }
                true
            }
            _ => true,
        };
        self.consumed = self.consumed.wrapping_add(1);
        Ok(taken)
    }

    ringless_port!();

    fn drain(&self) -> Drain {
        // Never a backend: every delivery is taken at once (or refused as back-pressure).
        Drain::taking_all(self.consumed)
    }

    fn arm_kicks(&mut self, _rx_wanted: bool) -> bool {
        !self.outgoing.is_empty()
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let t = self.table.lock();
        let c = t.counters;
        let (open, waiting) = t.len();
        vec![
            ("cid", self.cfg.cid),
            ("conns_open", open as u64),
            ("conns_connecting", waiting as u64),
            ("connections_requested", c.requested),
            ("connections_accepted", c.accepted),
            ("refused", c.refused),
            ("retried", c.retried),
            ("moved", c.moved),
            ("reset_no_backend", c.reset_no_backend),
            ("reset_by_client", c.reset_by_client),
            ("reset_by_backend", c.reset_by_backend),
            ("reset_by_vmq", c.reset_by_vmq),
            ("closed", c.closed),
            ("no_connection", c.no_connection),
            ("stale", c.stale),
            ("pending_requests", self.requests_held as u64),
            ("staged", self.staging.in_use() as u64),
        ]
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
