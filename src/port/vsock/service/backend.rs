//! [`ServiceBackendPort`]: one backend VM of a `message` service, as a member of the switch's
//! service.
//!
//! Each request the switch delivers goes out on a connection of the port's pool, from the
//! service's CID (a local port at or above [`SERVICE_BACKEND_PORTS`]) to the backend's
//! application, one request at a time per connection: a slow request holds up only its own
//! connection. The backend's answer on that connection is the reply. A connection whose request
//! outlived the request deadline is reset, never reused (a late answer would be out of order).
//! A request the port had to drop (its connection refused, reset or timed out, the VM gone)
//! is never answered from here: the switch's stall rule and deadline move it elsewhere.
//!
//! # Bounds
//!
//! - connections: at most `max_in_flight`, each an [`Endpoint`] holding at most `buf_alloc`
//!   received and `send_buf` unsent bytes (one request);
//! - staging: `slots` slots of one message each (replies) or one packet piece.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use super::reports::Reporters;
use super::{next_backend_port, reset_to, slot_size};
use crate::port::vsock::{
    read_piece_between, ringless_port, staged_port_memory, Piece, Staging, VmEntry, PIECE_PAYLOAD,
    SERVICE_BACKEND_PORTS,
};
use crate::port::{Drain, Port};
use crate::switch::Clock;
use crate::virtio::{DeliverError, DeviceError, Payload, TxChain};
use crate::vsock::endpoint::{CloseReason, Endpoint, EndpointConfig, EndpointState, WriteError};
use crate::vsock::packet::{Op, SockAddr, SocketType, HEADER_LEN};
use crate::wire::{MsgHeader, MsgKind};

/// Settings of one backend of a service.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// The service's CID (the source of the connections vmq opens).
    pub service_cid: u64,
    /// The vsock port the backend's application listens on.
    pub port: u32,
    /// Requests in flight to this backend, one per connection.
    pub max_in_flight: u32,
    /// Buffers of each connection.
    pub endpoint: EndpointConfig,
    /// Largest answer in bytes; a larger one resets its connection.
    pub max_message: u32,
    /// A connection the backend does not accept in this long is given up.
    pub connect_timeout_ns: u64,
    /// A connection whose request is not answered in this long is reset.
    pub request_timeout_ns: u64,
    /// After a refusal, no new connection is opened for this long (the port takes no requests
    /// unless a connection is idle).
    pub refused_backoff_ns: u64,
    /// Staging slots (replies and packets for the backend).
    pub slots: u32,
    /// The service's load port: the backend's connections to it carry load reports.
    pub load_port: Option<u32>,
}

/// How often deadlines (connect, request) are checked: their granularity.
const DEADLINE_CHECK_NS: u64 = 100_000_000;

/// A request on a connection.
#[derive(Debug, Clone, Copy)]
struct Outstanding {
    /// The switch's id of it (the in-flight token).
    token: u64,
    since_ns: u64,
    /// The backend's application read it (counted as drained).
    read: bool,
}

struct BackendConn {
    ep: Endpoint,
    request: Option<Outstanding>,
    opened_ns: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct BackendCounters {
    connections: u64,
    refused: u64,
    requests: u64,
    replies: u64,
    /// Connections reset because their request outlived the deadline.
    timed_out: u64,
    /// Requests dropped with their connection (refused, reset, VM gone).
    requests_dropped: u64,
    /// Messages the backend sent that answered nothing (its connection was reset).
    unsolicited: u64,
}

/// One backend VM of a `message` service. See the module documentation.
pub struct ServiceBackendPort {
    cfg: BackendConfig,
    vm: Arc<VmEntry>,
    clock: Arc<dyn Clock>,
    staging: Staging,
    conns: HashMap<u32, BackendConn>,
    next_local: u32,
    departures: u64,
    refused_until: u64,
    consumed: u16,
    /// Something moved since the last pass over the connections.
    dirty: bool,
    /// When deadlines were last checked.
    last_deadline_check: u64,
    counters: BackendCounters,
    /// A request's bytes on their way into a connection.
    scratch: Vec<u8>,
    /// The backend's connections to the load port.
    reporters: Reporters,
}

impl ServiceBackendPort {
    /// The backend `vm` of the service `cfg` describes.
    pub fn new(
        vm: Arc<VmEntry>,
        cfg: BackendConfig,
        clock: Arc<dyn Clock>,
    ) -> std::io::Result<Self> {
        cfg.endpoint
            .check()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let staging = Staging::with_slot_size(cfg.slots, slot_size(cfg.max_message))?;
        Ok(Self {
            departures: vm.departures.load(Ordering::Acquire),
            reporters: Reporters::new(vm.clone(), cfg.endpoint),
            vm,
            cfg,
            clock,
            staging,
            conns: HashMap::new(),
            next_local: SERVICE_BACKEND_PORTS,
            refused_until: 0,
            consumed: 0,
            dirty: false,
            last_deadline_check: 0,
            counters: BackendCounters::default(),
            scratch: Vec::new(),
        })
    }

    /// The backend VM's CID.
    pub fn cid(&self) -> u64 {
        self.vm.addr.cid
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    fn busy(&self) -> usize {
        self.conns.values().filter(|c| c.request.is_some()).count()
    }

    fn usable(&self, now: u64) -> bool {
        self.vm.connected.load(Ordering::Acquire) && now >= self.refused_until
    }

    /// A local port no connection of this port uses.
    fn local_port(&mut self) -> u32 {
        next_backend_port(&mut self.next_local, |p| self.conns.contains_key(&p))
    }

    /// A request dropped with its connection: drained as far as the health rules go (its
    /// buffer is gone), never answered from here.
    fn drop_request(&mut self, r: Outstanding) {
        self.counters.requests_dropped += 1;
        if !r.read {
            self.consumed = self.consumed.wrapping_add(1);
        }
    }

    /// A connection this port may give a request: an idle one, or a new one.
    fn conn_for_request(&mut self, now: u64) -> Option<u32> {
        let idle = self
            .conns
            .iter()
            // A backend that shut its receiving side keeps the connection open but takes no
            // request on it.
            .filter(|(_, c)| c.request.is_none() && c.ep.can_send())
            .min_by_key(|(_, c)| c.ep.state() != EndpointState::Established)
            .map(|(&p, _)| p);
        if idle.is_some() {
            return idle;
        }
        if self.conns.len() >= self.cfg.max_in_flight as usize || !self.usable(now) {
            return None;
        }
        let local = self.local_port();
        let ep = Endpoint::connect(
            self.cfg.endpoint,
            SocketType::SeqPacket,
            SockAddr::new(self.cfg.service_cid, local),
            SockAddr::new(self.cid(), self.cfg.port),
        )
        .ok()?;
        self.counters.connections += 1;
        self.conns.insert(
            local,
            BackendConn {
                ep,
                request: None,
                opened_ns: now,
            },
        );
        Some(local)
    }

    /// One pass over the connections: answers to replies, packets for the backend staged,
    /// deadlines (when `deadlines`), finished connections dropped.
    fn pump(&mut self, max: usize, now: u64, deadlines: bool, sent: &mut Vec<TxChain>) {
        let departures = self.vm.departures.load(Ordering::Acquire);
        if departures != self.departures {
            // The VM went away: its connections are gone with it.
            self.departures = departures;
            for (_, c) in std::mem::take(&mut self.conns) {
                if let Some(r) = c.request {
                    self.drop_request(r);
                }
            }
        }
        let mut conns = std::mem::take(&mut self.conns);
        let mut ended = Vec::new();
        let mut staged = 0;
        for (&local, c) in conns.iter_mut() {
            staged += self.replies(c, max.saturating_sub(staged), sent);
            staged += self.stage_packets(c, max.saturating_sub(staged), sent);
            if deadlines {
                self.deadlines(c, now);
            }
            if c.ep.state() == EndpointState::Closed {
                if let Some(r) = c.request.take() {
                    self.drop_request(r);
                }
                if matches!(c.ep.close_reason(), Some(CloseReason::Refused)) {
                    self.counters.refused += 1;
                    self.refused_until = now.saturating_add(self.cfg.refused_backoff_ns);
                }
                if c.ep.is_closed() {
                    ended.push(local);
                }
            }
        }
        for local in ended {
            conns.remove(&local);
        }
        self.conns = conns;
        self.reporters.pump(&mut self.staging, sent);
    }

    /// Hands the backend's answer on `c` to the switch as the reply to its request.
    fn replies(&mut self, c: &mut BackendConn, max: usize, sent: &mut Vec<TxChain>) -> usize {
        if let Some(r) = &mut c.request {
            // The application read the request: everything sent on the connection is consumed.
            if !r.read
                && c.ep.state() == EndpointState::Established
                && c.ep.unsent() == 0
                && c.ep.credit().unacked() == 0
            {
                r.read = true;
                self.consumed = self.consumed.wrapping_add(1);
            }
        }
        if max == 0 || c.ep.messages_ready() == 0 || self.staging.free() == 0 {
            return 0;
        }
        let Some(msg) = c.ep.read_message() else {
            return 0;
        };
        let Some(mut r) = c.request.take() else {
            // An answer to nothing: the backend is off the protocol; its connection ends.
            self.counters.unsolicited += 1;
            c.ep.reset();
            return 0;
        };
        if !r.read {
            r.read = true;
            self.consumed = self.consumed.wrapping_add(1);
        }
        if msg.data.len() > self.cfg.max_message as usize {
            self.drop_request(r);
            c.ep.reset();
            return 0;
        }
        let h = MsgHeader::new(MsgKind::Reply, 0, r.token, 0);
        match self.staging.stage(h, &[&msg.data]) {
            Some(chain) => {
                sent.push(chain);
                self.counters.replies += 1;
                1
            }
            None => {
                self.drop_request(r);
                c.ep.reset();
                0
            }
        }
    }

    /// Stages what the connection owes the backend, at most `max` packets.
    fn stage_packets(&mut self, c: &mut BackendConn, max: usize, sent: &mut Vec<TxChain>) -> usize {
        self.staging
            .stage_owed(&mut c.ep, self.vm.addr.port, max, 0, sent)
            .packets
    }

    /// Gives up connections the backend does not accept, and requests past their deadline.
    fn deadlines(&mut self, c: &mut BackendConn, now: u64) {
        match c.ep.state() {
            EndpointState::Connecting
                if now.saturating_sub(c.opened_ns) >= self.cfg.connect_timeout_ns =>
            {
                c.ep.reset();
                self.counters.refused += 1;
                self.refused_until = now.saturating_add(self.cfg.refused_backoff_ns);
            }
            EndpointState::Established
                if c.request.is_some_and(|r| {
                    now.saturating_sub(r.since_ns) >= self.cfg.request_timeout_ns
                }) =>
            {
                self.counters.timed_out += 1;
                c.ep.reset();
            }
            _ => {}
        }
    }
}

impl Port<GuestMemoryMmap> for ServiceBackendPort {
    staged_port_memory!();

    fn take_sent(&mut self, max: usize, sent: &mut Vec<TxChain>) -> Result<usize, DeviceError> {
        let before = sent.len();
        // Packets and deliveries make a pass due; so do deadlines, checked every
        // `DEADLINE_CHECK_NS` while connections are open, and the VM going away.
        let now = self.clock.now_ns();
        let deadlines_due = !self.conns.is_empty()
            && now.saturating_sub(self.last_deadline_check) >= DEADLINE_CHECK_NS;
        if deadlines_due {
            self.last_deadline_check = now;
        }
        let departed = self.vm.departures.load(Ordering::Acquire) != self.departures;
        if std::mem::take(&mut self.dirty) || deadlines_due || departed {
            self.pump(max, now, deadlines_due, sent);
        }
        Ok(sent.len() - before)
    }

    fn release(&mut self, msg: &TxChain) -> Result<(), DeviceError> {
        self.staging
            .release(msg, format_args!("service backend CID {}", self.cid()));
        self.dirty = true;
        Ok(())
    }

    fn deliver(
        &mut self,
        header: &MsgHeader,
        payload: &Payload<'_, GuestMemoryMmap>,
    ) -> Result<bool, DeliverError> {
        match header.kind() {
            Some(MsgKind::Request) => {
                let now = self.clock.now_ns();
                if payload.len() > self.cfg.max_message {
                    return Ok(false);
                }
                let Some(local) = self.conn_for_request(now) else {
                    return Err(DeliverError::NoBuffer);
                };
                self.scratch.resize(payload.len() as usize, 0);
                payload
                    .copy_to(&mut self.scratch)
                    .map_err(DeliverError::Source)?;
                let Some(c) = self.conns.get_mut(&local) else {
                    return Err(DeliverError::NoBuffer);
                };
                match c.ep.write_message(&self.scratch, true) {
                    Ok(()) => {}
                    // Shut or closed under us: that connection goes, the request waits for
                    // another.
                    Err(WriteError::Closed) => {
                        c.ep.reset();
                        self.dirty = true;
                        return Err(DeliverError::NoBuffer);
                    }
                    Err(_) => return Ok(false),
                }
                c.request = Some(Outstanding {
                    token: header.msg_id(),
                    since_ns: now,
                    read: false,
                });
                self.counters.requests += 1;
                self.dirty = true;
            }
            Some(MsgKind::OneWay) => {
                let mut piece: Piece = [0; HEADER_LEN + PIECE_PAYLOAD as usize];
                let (src, dst) = (self.cid(), self.cfg.service_cid);
                let Some((hdr, data)) = read_piece_between(payload, &mut piece, src, dst)? else {
                    return Ok(false);
                };
                self.dirty = true;
                if Some(hdr.dst_port) == self.cfg.load_port {
                    self.reporters.on_packet(&hdr, data);
                    return Ok(true);
                }
                match self.conns.get_mut(&hdr.dst_port) {
                    Some(c) => {
                        if let Err(e) = c.ep.on_packet(&hdr, data) {
                            log::debug!(
                                "service backend CID {}: connection reset: {e}",
                                self.cid()
                            );
                        }
                    }
                    None => {
                        if hdr.op != Op::Rst as u16 {
                            if let Some(rst) = hdr.rst_reply() {
                                self.vm.push_control(rst);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(true)
    }

    ringless_port!();

    fn drain(&self) -> Drain {
        let cap = self.cfg.max_in_flight.min(u32::from(u16::MAX)) as u16;
        let now = self.clock.now_ns();
        let idle = self
            .conns
            .values()
            .filter(|c| c.request.is_none() && c.ep.state() != EndpointState::Closed)
            .count();
        let openable = if self.usable(now) {
            (self.cfg.max_in_flight as usize).saturating_sub(self.conns.len())
        } else {
            0
        };
        Drain {
            consumed: self.consumed,
            free: (idle + openable).min(usize::from(cap)) as u16,
            capacity: cap,
            held: 0,
            ended: 0,
            broken: 0,
        }
    }

    fn arm_kicks(&mut self, _rx_wanted: bool) -> bool {
        self.dirty
    }

    fn close(&mut self) {
        // Its member left (drained: nothing is in flight) or its service went: the backend's
        // application learns its connections from the service are over.
        for (_, c) in std::mem::take(&mut self.conns) {
            reset_to(&self.vm, &c.ep);
            if let Some(r) = c.request {
                self.drop_request(r);
            }
        }
        self.reporters.close();
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = self.counters;
        vec![
            ("cid", self.cid()),
            ("conns_open", self.conns.len() as u64),
            ("conns_busy", self.busy() as u64),
            ("connections_opened", c.connections),
            ("refused", c.refused),
            ("requests", c.requests),
            ("replies", c.replies),
            ("timed_out", c.timed_out),
            ("requests_dropped", c.requests_dropped),
            ("unsolicited", c.unsolicited),
            ("load_reports", self.reporters.reports),
            ("bad_reports", self.reporters.bad),
        ]
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
