//! [`ServiceFrontPort`]: a `message` service's address, where clients connect.
//!
//! # Bounds
//!
//! - connections: at most `max_connections`, and `max_per_client` of one client VM, each an [`Endpoint`] holding at most `buf_alloc`
//!   received and `send_buf` unsent bytes;
//! - requests in flight: at most `window` per connection, and all together at most the staging
//!   slots less a quarter kept for packets; each is kept whole in one slot of
//!   `max_message` bytes until its answer came (the switch re-reads it from there on failover);
//! - answers waiting for an earlier one on the same connection: at most `window` per
//!   connection, each at most `max_message` bytes.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use super::{reset_to, slot_size};
use crate::port::vsock::{
    read_piece, ringless_port, staged_port_memory, Staging, VmEntry, VsockNetwork, PIECE_PAYLOAD,
};
use crate::port::{Drain, Port};
use crate::virtio::{DeliverError, DeviceError, Payload, TxChain};
use crate::vsock::endpoint::{Endpoint, EndpointConfig, EndpointState};
use crate::vsock::packet::{Op, PacketHeader, SocketType, HEADER_LEN};
use crate::wire::{MsgHeader, MsgKind, Status};

/// Settings of a service's front.
#[derive(Debug, Clone)]
pub struct FrontConfig {
    /// The switch's service the requests go to.
    pub service: u32,
    /// The service's address.
    pub cid: u64,
    /// The port clients connect to.
    pub port: u32,
    /// Buffers of each client connection.
    pub endpoint: EndpointConfig,
    /// Largest message (request or answer) in bytes; a client sending a larger one is reset.
    pub max_message: u32,
    /// Client connections at once.
    pub max_connections: usize,
    /// Client connections of one client VM at once (the relay's per-VM limit), so one client
    /// cannot take the service from the others.
    pub max_per_client: usize,
    /// Requests in flight per connection; the rest wait in the connection (the client's credit
    /// holds it back).
    pub window: u32,
    /// Staging slots (requests and packets for clients).
    pub slots: u32,
}

/// One client's connection.
struct FrontConn {
    id: u32,
    ep: Endpoint,
    client: Arc<VmEntry>,
    departures: u64,
    /// Sequence number of the next request, and of the next answer owed.
    next_seq: u32,
    next_answer: u32,
    /// Answers that came before an earlier one: `None` for an error.
    answers: BTreeMap<u32, Option<Vec<u8>>>,
}

impl FrontConn {
    fn in_flight(&self) -> u32 {
        self.next_seq.wrapping_sub(self.next_answer)
    }

    /// The affinity key of its requests (Maglev): the client's address, so the messages of
    /// one connection stay on one backend while its membership holds, and connections spread.
    fn affinity_key(&self) -> u32 {
        let peer = self.ep.peer();
        (peer.cid as u32).rotate_left(16) ^ peer.port
    }
}

/// Counters of a front.
#[derive(Debug, Default, Clone, Copy)]
struct FrontCounters {
    connections: u64,
    refused: u64,
    requests: u64,
    answers: u64,
    /// Connections reset because a request found no backend before its deadline.
    reset_no_backend: u64,
    /// Connections reset for a message over `max_message` (either way).
    too_large: u64,
    /// Answers for connections that had gone.
    answers_dropped: u64,
    /// Connections reset because the service was removed.
    reset_removed: u64,
}

/// A `message` service's address as a port of the switch. See the module documentation.
pub struct ServiceFrontPort {
    cfg: FrontConfig,
    net: Arc<VsockNetwork>,
    staging: Staging,
    conns: HashMap<(u64, u32), FrontConn>,
    /// Connections per client CID (entries only for clients with one open): the per-client
    /// limit without a pass over every connection.
    per_client: HashMap<u64, usize>,
    /// Which connection a request's id (its upper half) belongs to.
    ids: HashMap<u32, (u64, u32)>,
    next_id: u32,
    requests_held: usize,
    max_requests: usize,
    consumed: u16,
    dirty: bool,
    counters: FrontCounters,
    /// An answer's bytes on their way into a connection.
    scratch: Vec<u8>,
}

impl ServiceFrontPort {
    /// The front of the service `cfg` describes, for the VMs of `net`.
    pub fn new(net: Arc<VsockNetwork>, cfg: FrontConfig) -> std::io::Result<Self> {
        cfg.endpoint
            .check()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let staging = Staging::with_slot_size(cfg.slots, slot_size(cfg.max_message))?;
        let slots = staging.slots();
        Ok(Self {
            max_requests: slots - slots / 4,
            cfg,
            net,
            staging,
            conns: HashMap::new(),
            per_client: HashMap::new(),
            ids: HashMap::new(),
            next_id: 1,
            requests_held: 0,
            consumed: 0,
            dirty: false,
            counters: FrontCounters::default(),
            scratch: Vec::new(),
        })
    }

    /// Client connections open now.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Sends requests to the switch's service `service` from now on: for an owner that builds
    /// the front before the switch gives the service its id (a reload builds every port it
    /// needs before it changes anything).
    pub fn set_service(&mut self, service: u32) {
        self.cfg.service = service;
    }

    /// A free connection id (never 0, never one in use).
    fn conn_id(&mut self) -> u32 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1).max(1);
            if !self.ids.contains_key(&id) {
                return id;
            }
        }
    }

    /// A packet a client sent to the service's CID.
    fn on_client_packet(&mut self, hdr: &PacketHeader, data: &[u8]) {
        let key = (hdr.src_cid, hdr.src_port);
        if let Some(c) = self.conns.get_mut(&key) {
            if let Err(e) = c.ep.on_packet(hdr, data) {
                log::debug!("service CID {}: client connection reset: {e}", self.cfg.cid);
            }
            return;
        }
        let Some(client) = self.net.vm(hdr.src_cid).cloned() else {
            return;
        };
        let refuse = |c: &mut FrontCounters| {
            c.refused += 1;
            if let Some(rst) = hdr.rst_reply() {
                client.push_control(rst);
            }
        };
        if hdr.op != Op::Request as u16 {
            if hdr.op != Op::Rst as u16 {
                refuse(&mut self.counters);
            }
            return;
        }
        // Message mode speaks SEQPACKET on the service's port only.
        let full = || {
            self.conns.len() >= self.cfg.max_connections
                || self.per_client.get(&hdr.src_cid).copied().unwrap_or(0)
                    >= self.cfg.max_per_client
        };
        if hdr.dst_port != self.cfg.port || hdr.ty != SocketType::SeqPacket as u16 || full() {
            refuse(&mut self.counters);
            return;
        }
        match Endpoint::accept(self.cfg.endpoint, hdr) {
            Ok(ep) => {
                let id = self.conn_id();
                self.ids.insert(id, key);
                self.counters.connections += 1;
                *self.per_client.entry(key.0).or_insert(0) += 1;
                self.conns.insert(
                    key,
                    FrontConn {
                        id,
                        ep,
                        departures: client.departures.load(Ordering::Acquire),
                        client,
                        next_seq: 0,
                        next_answer: 0,
                        answers: BTreeMap::new(),
                    },
                );
            }
            Err(_) => refuse(&mut self.counters),
        }
    }

    /// The switch's answer to request `msg_id`: the backend's reply, or an error.
    fn on_answer(
        &mut self,
        msg_id: u64,
        status: Option<Status>,
        payload: &Payload<'_, GuestMemoryMmap>,
    ) -> Result<(), DeliverError> {
        let id = (msg_id >> 32) as u32;
        let seq = msg_id as u32;
        let Some(c) = self.ids.get(&id).and_then(|k| self.conns.get_mut(k)) else {
            self.counters.answers_dropped += 1;
            return Ok(());
        };
        // Only requests in flight are answered, each once.
        if seq.wrapping_sub(c.next_answer) >= c.in_flight() || c.answers.contains_key(&seq) {
            self.counters.answers_dropped += 1;
            return Ok(());
        }
        if status != Some(Status::Ok) || payload.len() > self.cfg.max_message {
            if status == Some(Status::Ok) {
                self.counters.too_large += 1;
            }
            c.answers.insert(seq, None);
            self.dirty = true;
            return Ok(());
        }
        self.scratch.resize(payload.len() as usize, 0);
        payload
            .copy_to(&mut self.scratch)
            .map_err(DeliverError::Source)?;
        // The answer owed next goes straight into the connection; one that comes early, or
        // finds no room, waits for its turn.
        if seq == c.next_answer
            && c.answers.is_empty()
            && c.ep.write_message(&self.scratch, true).is_ok()
        {
            self.counters.answers += 1;
            c.next_answer = c.next_answer.wrapping_add(1);
        } else {
            c.answers.insert(seq, Some(self.scratch.clone()));
        }
        self.dirty = true;
        Ok(())
    }

    /// One pass over the connections: answers out in order, new requests in, packets for the
    /// clients staged, finished connections dropped. Stages at most `max` messages.
    fn pump(&mut self, max: usize, sent: &mut Vec<TxChain>) {
        let mut conns = std::mem::take(&mut self.conns);
        let mut ended = Vec::new();
        let mut staged = 0;
        for (key, c) in conns.iter_mut() {
            if c.client.departures.load(Ordering::Acquire) != c.departures {
                // The client's VM went away: nothing can reach it any more.
                ended.push(*key);
                continue;
            }
            self.answer(c);
            staged += self.take_requests(c, max.saturating_sub(staged), sent);
            staged += self.stage_packets(c, max.saturating_sub(staged), sent);
            if c.ep.is_closed() {
                ended.push(*key);
            }
        }
        for key in ended {
            if let Some(c) = conns.remove(&key) {
                self.ids.remove(&c.id);
                if let Some(n) = self.per_client.get_mut(&key.0) {
                    *n -= 1;
                    if *n == 0 {
                        self.per_client.remove(&key.0);
                    }
                }
            }
        }
        self.conns = conns;
    }

    /// Writes the answers owed, in request order, while the connection has room.
    fn answer(&mut self, c: &mut FrontConn) {
        while let Some(answer) = c.answers.get(&c.next_answer) {
            let Some(data) = answer else {
                // No backend answered before the deadline (or the answer was too large): the
                // client must not wait for an answer that will not come.
                if matches!(c.ep.state(), EndpointState::Established) {
                    self.counters.reset_no_backend += 1;
                }
                c.ep.reset();
                c.answers.clear();
                c.next_answer = c.next_seq;
                return;
            };
            match c.ep.write_message(data, true) {
                Ok(()) => {
                    self.counters.answers += 1;
                    c.answers.remove(&c.next_answer);
                    c.next_answer = c.next_answer.wrapping_add(1);
                    self.dirty = true;
                }
                Err(crate::vsock::endpoint::WriteError::Full { .. }) => return,
                Err(_) => {
                    c.ep.reset();
                    c.answers.clear();
                    c.next_answer = c.next_seq;
                    return;
                }
            }
        }
    }

    /// Turns the connection's whole messages into requests, within its window.
    fn take_requests(&mut self, c: &mut FrontConn, max: usize, sent: &mut Vec<TxChain>) -> usize {
        let mut n = 0;
        while n < max
            && c.in_flight() < self.cfg.window
            && self.requests_held < self.max_requests
            && c.ep.messages_ready() > 0
        {
            let Some(msg) = c.ep.read_message() else {
                break;
            };
            if msg.data.len() > self.cfg.max_message as usize {
                self.counters.too_large += 1;
                c.ep.reset();
                break;
            }
            let mut h = MsgHeader::new(MsgKind::Request, 0, 0, 0);
            h.set_dst_service(self.cfg.service);
            h.set_key(c.affinity_key());
            h.set_msg_id((u64::from(c.id) << 32) | u64::from(c.next_seq));
            let Some(chain) = self.staging.stage(h, &[&msg.data]) else {
                // Cannot happen with a slot checked free; the client must not wait for it.
                c.ep.reset();
                break;
            };
            sent.push(chain);
            self.requests_held += 1;
            self.counters.requests += 1;
            c.next_seq = c.next_seq.wrapping_add(1);
            n += 1;
            self.dirty = true;
        }
        n
    }

    /// Stages what the connection owes its client, keeping the slots requests may use.
    fn stage_packets(&mut self, c: &mut FrontConn, max: usize, sent: &mut Vec<TxChain>) -> usize {
        let keep = self.max_requests.saturating_sub(self.requests_held);
        self.staging
            .stage_owed(&mut c.ep, c.client.addr.port, max, keep, sent)
            .packets
    }
}

impl Port<GuestMemoryMmap> for ServiceFrontPort {
    staged_port_memory!();

    fn take_sent(&mut self, max: usize, sent: &mut Vec<TxChain>) -> Result<usize, DeviceError> {
        let before = sent.len();
        if std::mem::take(&mut self.dirty) {
            self.pump(max, sent);
        }
        Ok(sent.len() - before)
    }

    fn release(&mut self, msg: &TxChain) -> Result<(), DeviceError> {
        if msg.header.kind() == Some(MsgKind::Request) {
            self.requests_held = self.requests_held.saturating_sub(1);
        }
        self.staging
            .release(msg, format_args!("service CID {}", self.cfg.cid));
        self.dirty = true;
        Ok(())
    }

    fn deliver(
        &mut self,
        header: &MsgHeader,
        payload: &Payload<'_, GuestMemoryMmap>,
    ) -> Result<bool, DeliverError> {
        self.consumed = self.consumed.wrapping_add(1);
        match header.kind() {
            Some(MsgKind::Reply) => {
                self.on_answer(header.msg_id(), header.status(), payload)?;
            }
            Some(MsgKind::OneWay) => {
                let mut piece = [0u8; HEADER_LEN + PIECE_PAYLOAD as usize];
                match read_piece(payload, &mut piece)? {
                    Some((h, data)) if h.dst_cid == self.cfg.cid => {
                        self.on_client_packet(&h, data);
                        self.dirty = true;
                    }
                    _ => return Ok(false),
                }
            }
            _ => {}
        }
        Ok(true)
    }

    ringless_port!();

    fn drain(&self) -> Drain {
        // Never a backend: every delivery is taken at once.
        Drain::taking_all(self.consumed)
    }

    fn arm_kicks(&mut self, _rx_wanted: bool) -> bool {
        self.dirty
    }

    fn close(&mut self) {
        // The service was removed: its clients' connections are reset (new ones are refused
        // by the network, which no longer knows the service's CID).
        for (_, c) in std::mem::take(&mut self.conns) {
            if c.client.departures.load(Ordering::Acquire) == c.departures {
                reset_to(&c.client, &c.ep);
                self.counters.reset_removed += 1;
            }
        }
        self.ids.clear();
        self.per_client.clear();
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = self.counters;
        vec![
            ("cid", self.cfg.cid),
            ("conns_open", self.conns.len() as u64),
            ("connections_accepted", c.connections),
            ("refused", c.refused),
            ("requests", c.requests),
            ("answers", c.answers),
            ("pending_requests", self.requests_held as u64),
            ("reset_no_backend", c.reset_no_backend),
            ("too_large", c.too_large),
            ("answers_dropped", c.answers_dropped),
            ("reset_removed", c.reset_removed),
        ]
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
