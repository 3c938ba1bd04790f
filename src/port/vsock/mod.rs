//! [`VsockPort`]: a Linux guest's virtio-vsock device, served over vhost-user, as a port of the
//! switch.
//!
//! What the guest sends (its tx queue) is read, checked and copied out at once, so its
//! descriptors go straight back: one connection that waits never holds the others' buffers.
//! A packet for a sibling becomes one or more switch messages (pieces of at most
//! [`PIECE_PAYLOAD`] bytes, what a Linux rx buffer holds) in the port's [`Staging`] memory,
//! addressed to the sibling's port; the switch routes them like any one-way message and the
//! sibling's port writes them into its guest's rx queue. Who may reach whom, and what each
//! connection may send, is decided before a packet is staged: the guest's source CID is
//! stamped (never trusted), unknown CIDs and CIDs outside the guest's groups get an RST, and
//! the relay ([`crate::vsock::relay`]) checks every packet against its connection's state and
//! credit. What vmq itself owes a guest (RSTs) goes through the guest's control queue in the
//! [`VsockNetwork`], written into its rx queue ahead of switch deliveries.
//!
//! Bounds (per guest): staged pieces at most `staging slots` (the switch holds nothing else of
//! a vsock guest's), and each connection at most the relay's credit cap; control packets at
//! most [`network::CONTROL_QUEUE_MAX`]. A guest with every slot staged (many connections to
//! receivers that take nothing) has its tx queue left alone until slots come back.

mod host;
mod network;
pub mod service;
mod staging;

pub use host::{HostConfig, HostPort, HostPortError, CHUNK, MAX_PENDING};
pub use network::{
    NetworkError, ServiceRoute, VmAddress, VmCounters, VmCounts, VmEntry, VsockNetwork,
    CONTROL_QUEUE_MAX, SERVICE_BACKEND_PORTS,
};
pub use staging::{read_piece, Piece, Staging, MAX_SLOTS, PIECE_PAYLOAD, SLOT_SIZE};

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use vhost_user_backend::VringT;
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryMmap};

use super::{Drain, Port, PortId};
use crate::vhost_user::DeviceQueues;
use crate::virtio::{DeliverError, DeviceError, GuestView, Payload, TxChain};
use crate::vsock::packet::{Op, PacketHeader, HEADER_LEN, HOST_CID, MAX_PAYLOAD};
use crate::vsock::relay::Verdict;
use crate::wire::{MsgHeader, MsgKind};

/// The queues of a vsock device while its VMM runs them: set by the device's owner when they
/// start, taken away (under this lock, so never in the middle of a batch) when they stop.
pub type SharedQueues = Arc<Mutex<Option<DeviceQueues>>>;

/// Pieces one guest packet may become (64 KiB cut into 4 KiB).
const MAX_PIECES: usize = (MAX_PAYLOAD / PIECE_PAYLOAD) as usize + 1;

/// A vsock guest as a port of the switch. See the module documentation.
pub struct VsockPort {
    cid: u64,
    net: Arc<VsockNetwork>,
    me: Arc<VmEntry>,
    queues: SharedQueues,
    staging: Staging,
    /// One packet read from the guest, header and payload.
    packet: Vec<u8>,
    /// The run of the device's queues this port drives (`DeviceQueues::generation`), fixed
    /// by the first it sees: queues of a later run belong to the port that replaces this one.
    generation: Option<u64>,
    /// Numbers the pieces this port stages (their `msg_id`), so a receiver can tell them apart.
    next_piece: u64,
    /// Rx entries filled since the last publish, tx entries returned since the last publish.
    rx_used: bool,
    tx_used: bool,
    /// Deliveries the guest consumed (for health: moves by one per rx entry filled).
    consumed: u16,
    /// A piece delivered in part when the guest's rx buffers ran out: its sender port and
    /// number, and the payload bytes written. The switch offers the same piece again.
    carry: Option<(PortId, u64, usize)>,
    /// The last delivery found no rx buffer (counts a stall once, not once per retry).
    rx_stalled: bool,
}

impl VsockPort {
    /// The port of VM `cid` in `net`, driving the queues in `queues` when they run, staging at
    /// most `slots` pieces.
    pub fn new(
        net: Arc<VsockNetwork>,
        cid: u64,
        queues: SharedQueues,
        slots: u32,
    ) -> std::io::Result<Self> {
        let me = net
            .vm(cid)
            .cloned()
            .ok_or_else(|| std::io::Error::other(format!("no VM with CID {cid}")))?;
        Ok(Self {
            cid,
            net,
            me,
            queues,
            staging: Staging::new(slots)?,
            packet: vec![0; HEADER_LEN + MAX_PAYLOAD as usize],
            generation: None,
            next_piece: 0,
            rx_used: false,
            tx_used: false,
            consumed: 0,
            carry: None,
            rx_stalled: false,
        })
    }

    /// The guest's CID.
    pub fn cid(&self) -> u64 {
        self.cid
    }

    /// Pieces staged now (held by the switch).
    pub fn staged(&self) -> usize {
        self.staging.slots() - self.staging.free()
    }

    /// The shared queue slot; lock it with [`lock`] and hold the guard for the whole batch:
    /// the device's owner takes the queues away under the same lock.
    fn shared(&self) -> SharedQueues {
        Arc::clone(&self.queues)
    }

    /// The queues in `slot` if they are this port's run of them.
    fn own<'a>(&mut self, slot: &'a Option<DeviceQueues>) -> Option<&'a DeviceQueues> {
        let q = slot.as_ref()?;
        (*self.generation.get_or_insert(q.generation()) == q.generation()).then_some(q)
    }

    /// The guest broke its queues: the port is going down, so its connections end now and
    /// packets for it are refused from here on.
    fn broke(&self) -> DeviceError {
        self.me.connected.store(false, Ordering::Release);
        self.net.guest_gone(self.cid);
        DeviceError::Broken
    }

    /// Decides what becomes of the packet in `self.packet[..len]` the guest sent; stages what
    /// goes to a sibling, appending the switch messages to `sent`.
    fn handle_packet(&mut self, len: usize, sent: &mut Vec<TxChain>) {
        let c = &self.me.counters;
        let Ok(mut hdr) = PacketHeader::decode(&self.packet[..len]) else {
            c.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        hdr.stamp_source(self.cid);
        // The chain must carry the payload the header claims; buffer slack after it is ignored.
        let payload_ok = len - HEADER_LEN >= hdr.len as usize;
        if hdr.validate().is_err() || !payload_ok {
            c.malformed.fetch_add(1, Ordering::Relaxed);
            self.refuse(&hdr);
            return;
        }
        c.tx_packets.fetch_add(1, Ordering::Relaxed);
        c.tx_bytes.fetch_add(u64::from(hdr.len), Ordering::Relaxed);
        let dst = hdr.dst_cid;
        if dst == HOST_CID {
            // The host side terminates these itself and checks them there.
            match self.me.addr.host {
                Some(host) => {
                    if hdr.op == Op::Request as u16 {
                        c.connections_opened.fetch_add(1, Ordering::Relaxed);
                    }
                    self.stage(&hdr, host, sent);
                }
                None => self.refuse(&hdr),
            }
            return;
        }
        if let Some(to) = self.net.service_port(dst, self.cid, hdr.dst_port) {
            // A service terminates these itself and checks them there.
            if hdr.op == Op::Request as u16 {
                c.connections_opened.fetch_add(1, Ordering::Relaxed);
            }
            self.stage(&hdr, to, sent);
            return;
        }
        let peer = match self.net.vm(dst) {
            Some(p)
                if dst != HOST_CID
                    && self.net.may_reach(self.cid, dst)
                    && p.connected.load(Ordering::Acquire) =>
            {
                p.clone()
            }
            _ => {
                self.refuse(&hdr);
                return;
            }
        };
        let verdict = self.net.relay().on_packet(self.cid, &hdr);
        match verdict {
            Verdict::Forward(h) => {
                if h.op == Op::Request as u16 {
                    c.connections_opened.fetch_add(1, Ordering::Relaxed);
                }
                self.stage(&h, peer.addr.port, sent);
            }
            Verdict::Refuse { rst, reason } => {
                log::debug!("vsock CID {}: refused: {reason}", self.cid);
                c.refused.fetch_add(1, Ordering::Relaxed);
                self.me.push_control(rst);
            }
            Verdict::Reset {
                to_sender,
                to_peer,
                reason,
            } => {
                log::debug!("vsock CID {}: connection reset: {reason}", self.cid);
                c.resets.fetch_add(1, Ordering::Relaxed);
                self.me.push_control(to_sender);
                // Through the switch, behind the data this guest sent on it before.
                self.stage(&to_peer, peer.addr.port, sent);
            }
            Verdict::Drop => {}
        }
    }

    /// Ends the connection `hdr` (a packet for this guest) belongs to: RSTs to both ends, as
    /// if its sender had reset it.
    fn reset_connection(&self, hdr: &PacketHeader) {
        let Some(r) = self.net.relay().reset_between(hdr.src(), hdr.dst()) else {
            return;
        };
        self.me.counters.resets.fetch_add(1, Ordering::Relaxed);
        for rst in [r.to_initiator, r.to_acceptor] {
            if let Some(vm) = self.net.vm(rst.dst_cid) {
                vm.push_control(rst);
            }
        }
    }

    /// Answers `hdr` with an RST from vmq (unless it is one).
    fn refuse(&self, hdr: &PacketHeader) {
        self.me.counters.refused.fetch_add(1, Ordering::Relaxed);
        if let Some(rst) = hdr.rst_reply() {
            self.me.push_control(rst);
        }
    }

    /// Stages `hdr` with the payload in `self.packet` as pieces for port `to`.
    fn stage(&mut self, hdr: &PacketHeader, to: PortId, sent: &mut Vec<TxChain>) {
        for (piece, range) in hdr.split(PIECE_PAYLOAD) {
            // Room for every piece was checked before the packet was taken.
            let Some((slot, addr)) = self.staging.take() else {
                log::error!("vsock CID {}: staging ran out mid-packet", self.cid);
                return;
            };
            let payload = &self.packet[HEADER_LEN + range.start..HEADER_LEN + range.end];
            let id = self.next_piece;
            self.next_piece = self.next_piece.wrapping_add(1);
            let msg = MsgHeader::new(MsgKind::OneWay, to, id, (HEADER_LEN + payload.len()) as u32);
            if !self
                .staging
                .write(addr, &[&msg.to_bytes(), &piece.encode(), payload])
            {
                self.staging.give_back(slot);
                return;
            }
            sent.push(TxChain::in_span(slot, msg, addr));
        }
    }

    /// Writes what vmq owes the guest (control packets) into its rx queue while it has buffers.
    fn flush_control(&mut self, q: &DeviceQueues, mem: &GuestMemoryMmap) {
        let mut control = self.me.control();
        if control.is_empty() {
            return;
        }
        let mut rx = q.rx().get_mut();
        let queue = rx.get_queue_mut();
        while let (true, Some(hdr)) = (queue.ready(), control.front()) {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let bytes = hdr.encode();
            let n = write_chain(mem, chain, &[&bytes]).unwrap_or_else(|| {
                self.me
                    .counters
                    .rx_too_small
                    .fetch_add(1, Ordering::Relaxed);
                0
            });
            if queue.add_used(mem, head, n as u32).is_err() {
                break;
            }
            self.rx_used = true;
            self.consumed = self.consumed.wrapping_add(1);
            control.pop_front();
        }
    }

    fn publish_queues(&mut self, q: &DeviceQueues) {
        for (used, index) in [
            (&mut self.rx_used, crate::vhost_user::RX_QUEUE),
            (&mut self.tx_used, crate::vhost_user::TX_QUEUE),
        ] {
            if std::mem::take(used) {
                if let Err(e) = q.notify_guest(index) {
                    log::warn!("vsock CID {}: cannot notify queue {index}: {e}", self.cid);
                }
            }
        }
    }
}

fn lock(shared: &SharedQueues) -> MutexGuard<'_, Option<DeviceQueues>> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes `parts` into the writable buffers of `chain`; returns the bytes written, or `None`
/// when they do not fit (nothing useful written) or the chain is bad.
fn write_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    parts: &[&[u8]],
) -> Option<usize> {
    let mut w = chain.writer(mem).ok()?;
    let total: usize = parts.iter().map(|p| p.len()).sum();
    if w.available_bytes() < total {
        return None;
    }
    for p in parts {
        w.write_all(p).ok()?;
    }
    Some(total)
}

/// Reads the readable buffers of `chain` into `buf` (at most its length); returns the bytes
/// read, or `None` for a bad chain.
fn read_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    buf: &mut [u8],
) -> Option<usize> {
    let mut r = chain.reader(mem).ok()?;
    let n = r.available_bytes().min(buf.len());
    r.read_exact(&mut buf[..n]).ok()?;
    Some(n)
}

impl Port<GuestMemoryMmap> for VsockPort {
    fn memory(&self) -> &GuestView<GuestMemoryMmap> {
        self.staging.view()
    }

    fn take_sent(&mut self, max: usize, sent: &mut Vec<TxChain>) -> Result<usize, DeviceError> {
        let shared = self.shared();
        let guard = lock(&shared);
        let Some(q) = self.own(&guard) else {
            return Ok(0);
        };
        let mem_guard = q.memory().memory();
        let mem: &GuestMemoryMmap = &mem_guard;
        self.flush_control(q, mem);
        let before = sent.len();
        {
            let mut tx = q.tx().get_mut();
            let queue = tx.get_queue_mut();
            let mut taken = 0;
            while taken < max && queue.ready() && self.staging.free() >= MAX_PIECES {
                let Some(chain) = queue.pop_descriptor_chain(mem) else {
                    break;
                };
                let head = chain.head_index();
                let len = read_chain(mem, chain, &mut self.packet);
                // The bytes are ours now: the descriptors go straight back.
                if queue.add_used(mem, head, 0).is_err() {
                    return Err(self.broke());
                }
                self.tx_used = true;
                taken += 1;
                match len {
                    Some(n) => self.handle_packet(n, sent),
                    None => {
                        self.me.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        self.flush_control(q, mem);
        self.publish_queues(q);
        Ok(sent.len() - before)
    }

    fn max_held(&self) -> u32 {
        self.staging.slots() as u32
    }

    fn copy_payload(&mut self, msg: &TxChain, buf: &mut [u8]) -> Result<usize, DeviceError> {
        self.staging.copy_payload(msg, buf)
    }

    fn release(&mut self, msg: &TxChain) -> Result<(), DeviceError> {
        self.staging
            .release(msg, format_args!("vsock CID {}", self.cid));
        Ok(())
    }

    fn deliver(
        &mut self,
        header: &MsgHeader,
        payload: &Payload<'_, GuestMemoryMmap>,
    ) -> Result<bool, DeliverError> {
        // Hellos and switch notices mean nothing to a vsock guest.
        if header.kind() != Some(MsgKind::OneWay) {
            return Ok(true);
        }
        let shared = self.shared();
        let guard = lock(&shared);
        let Some(q) = self.own(&guard) else {
            return Err(DeliverError::NoBuffer);
        };
        let len = payload.len() as usize;
        let mut piece = [0u8; HEADER_LEN + PIECE_PAYLOAD as usize];
        if len < HEADER_LEN || len > piece.len() {
            return Ok(false);
        }
        payload.copy_to(&mut piece).map_err(DeliverError::Source)?;
        let Ok(hdr) = PacketHeader::decode(&piece[..HEADER_LEN]) else {
            return Ok(false);
        };
        let mem_guard = q.memory().memory();
        let mem: &GuestMemoryMmap = &mem_guard;
        self.flush_control(q, mem);
        // A piece larger than the guest's rx buffers goes out in parts, each in one buffer with
        // its own header; message flags (EOM/EOR) only on the last. Parts already written when
        // the buffers ran out are remembered, and the switch offers the same piece again.
        let data = &piece[HEADER_LEN..len];
        let me = (header.src(), header.msg_id());
        let mut at = match self.carry.take() {
            Some((src, id, at)) if (src, id) == me && at <= data.len() => at,
            _ => 0,
        };
        let mut rx = q.rx().get_mut();
        let queue = rx.get_queue_mut();
        loop {
            let chain = match queue.ready().then(|| queue.pop_descriptor_chain(mem)) {
                Some(Some(chain)) => chain,
                _ => {
                    if !std::mem::replace(&mut self.rx_stalled, true) {
                        self.me.counters.rx_stalls.fetch_add(1, Ordering::Relaxed);
                    }
                    self.carry = (at > 0).then_some((me.0, me.1, at));
                    return Err(DeliverError::NoBuffer);
                }
            };
            self.rx_stalled = false;
            let head = chain.head_index();
            let part = chain.writer(mem).ok().and_then(|mut w| {
                let n = w
                    .available_bytes()
                    .checked_sub(HEADER_LEN)?
                    .min(data.len() - at);
                if n == 0 && !data.is_empty() {
                    return None;
                }
                let h = hdr.part(at, n);
                w.write_all(&h.encode()).ok()?;
                w.write_all(&data[at..at + n]).ok()?;
                Some(h)
            });
            let written = part.map_or(0, |h| HEADER_LEN + h.len as usize);
            if queue.add_used(mem, head, written as u32).is_err() {
                return Err(DeliverError::Dest(self.broke()));
            }
            self.rx_used = true;
            self.consumed = self.consumed.wrapping_add(1);
            let Some(part) = part else {
                // An rx buffer that cannot hold even a header and a byte: the connection
                // cannot go on. Both ends get an RST and the relay forgets it.
                self.me
                    .counters
                    .rx_too_small
                    .fetch_add(1, Ordering::Relaxed);
                drop(rx);
                self.reset_connection(&hdr);
                return Ok(false);
            };
            let c = &self.me.counters;
            c.rx_packets.fetch_add(1, Ordering::Relaxed);
            c.rx_bytes.fetch_add(u64::from(part.len), Ordering::Relaxed);
            if self.net.relay().on_delivered(&part).is_err() {
                log::debug!("vsock CID {}: delivered more than was forwarded", self.cid);
            }
            at += part.len as usize;
            if at >= data.len() {
                return Ok(true);
            }
        }
    }

    fn publish(&mut self) -> bool {
        if !(self.rx_used || self.tx_used) {
            return false;
        }
        let shared = self.shared();
        let guard = lock(&shared);
        if let Some(q) = self.own(&guard) {
            self.publish_queues(q);
        }
        false
    }

    fn notify(&self) {}

    fn drain(&self) -> Drain {
        let guard = lock(&self.queues);
        let (free, capacity) = guard.as_ref().map_or((0, 0), |q| {
            let mem = q.memory().memory();
            let rx = q.rx().get_mut();
            let queue = rx.get_queue();
            let avail = queue
                .avail_idx(&*mem, Ordering::Acquire)
                .map_or(0, |a| a.0.wrapping_sub(queue.next_avail()));
            (avail, queue.size())
        });
        Drain {
            consumed: self.consumed,
            free,
            capacity,
        }
    }

    fn arm_kicks(&mut self, rx_wanted: bool) -> bool {
        let shared = self.shared();
        let guard = lock(&shared);
        let Some(q) = self.own(&guard) else {
            return false;
        };
        let mem = q.memory().memory();
        let owed = !self.me.control().is_empty();
        let mut busy = false;
        {
            let mut tx = q.tx().get_mut();
            let queue = tx.get_queue_mut();
            if queue.ready() {
                busy |= queue.enable_notification(&*mem).unwrap_or(false)
                    && self.staging.free() >= MAX_PIECES;
            }
        }
        if rx_wanted || owed {
            let mut rx = q.rx().get_mut();
            let queue = rx.get_queue_mut();
            if queue.ready() {
                busy |= queue.enable_notification(&*mem).unwrap_or(false) && owed;
            }
        }
        busy
    }

    fn disarm_kicks(&mut self) {
        let guard = lock(&self.queues);
        let Some(q) = guard.as_ref() else {
            return;
        };
        let mem = q.memory().memory();
        for vring in [q.tx(), q.rx()] {
            let mut v = vring.get_mut();
            let queue = v.get_queue_mut();
            if queue.ready() {
                let _ = queue.disable_notification(&*mem);
            }
        }
    }

    fn run_queue_wait_ns(&self) -> Option<u64> {
        // The vCPUs run in another process (the VMM's); vmq cannot see their scheduling.
        None
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = self.me.counts();
        let [requested, established, closing, closed] = self.net.relay().states_of(self.cid);
        vec![
            ("cid", c.cid),
            ("tx_packets", c.tx_packets),
            ("tx_bytes", c.tx_bytes),
            ("rx_packets", c.rx_packets),
            ("rx_bytes", c.rx_bytes),
            ("connections_opened", c.connections_opened),
            ("refused", c.refused),
            ("resets", c.resets),
            ("malformed", c.malformed),
            ("rx_stalls", c.rx_stalls),
            ("control_dropped", c.control_dropped),
            ("rx_too_small", c.rx_too_small),
            ("host_connections", c.host_connections),
            ("host_refused", c.host_refused),
            ("conns_requested", requested as u64),
            ("conns_established", established as u64),
            ("conns_closing", closing as u64),
            ("conns_closed", closed as u64),
            ("staged", self.staged() as u64),
        ]
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
