//! [`VsockPort`]: one Linux guest's vsock device as a port of the switch, and what becomes of
//! each packet its guest sends (see the parent module for the flow and the bounds).

mod queues;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{SharedQueues, Staging, VmEntry, VsockNetwork, PIECE_PAYLOAD};
use crate::port::PortId;
use crate::vhost_user::DeviceQueues;
use crate::virtio::{DeviceError, TxChain};
use crate::vsock::packet::{Op, PacketHeader, SocketType, HEADER_LEN, HOST_CID, MAX_PAYLOAD};
use crate::vsock::relay::Verdict;

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
    /// RSTs this guest owes a service or the host side (whose connections the relay does not
    /// know) for connections it cannot receive on, and the port each goes to; staged at the
    /// next [`take_sent`](crate::port::Port::take_sent). At most [`MAX_OWED_RESETS`], one per
    /// connection.
    owed_resets: Vec<(PacketHeader, PortId)>,
}

/// RSTs a guest may owe at once (see [`VsockPort::owed_resets`]); past it, the peer's
/// connection ends by its own timeout.
const MAX_OWED_RESETS: usize = 256;

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
            rx_used: false,
            tx_used: false,
            consumed: 0,
            carry: None,
            rx_stalled: false,
            owed_resets: Vec::new(),
        })
    }

    /// The guest's CID.
    pub fn cid(&self) -> u64 {
        self.cid
    }

    /// Pieces staged now (held by the switch).
    pub fn staged(&self) -> usize {
        self.staging.in_use()
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
        let peer = match self.net.vm(dst) {
            Some(p) if self.net.may_reach(self.cid, dst) && p.connected.load(Ordering::Acquire) => {
                p.clone()
            }
            Some(_) => {
                self.refuse(&hdr);
                return;
            }
            // Not a VM: a service's address, or nobody's.
            None => {
                match self.net.service_port(dst, self.cid, hdr.dst_port) {
                    // A service terminates these itself and checks them there.
                    Some(to) => {
                        if hdr.op == Op::Request as u16 {
                            c.connections_opened.fetch_add(1, Ordering::Relaxed);
                        }
                        self.stage(&hdr, to, sent);
                    }
                    None => self.refuse(&hdr),
                }
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

    /// Ends the connection `hdr` (a packet for this guest from switch port `from`) belongs to:
    /// RSTs to both ends, as if its sender had reset it.
    fn reset_connection(&mut self, hdr: &PacketHeader, from: PortId) {
        self.me.counters.resets.fetch_add(1, Ordering::Relaxed);
        if let Some(r) = self.net.relay().reset_between(hdr.src(), hdr.dst()) {
            for rst in [r.to_initiator, r.to_acceptor] {
                if let Some(vm) = self.net.vm(rst.dst_cid) {
                    vm.push_control(rst);
                }
            }
            return;
        }
        // A service's or the host side's connection: the relay does not know it, so the
        // guest gets an RST from its peer here and the peer one from the guest, through the
        // switch (behind what this guest sent on it before).
        let Some(to_peer) = hdr.rst_reply() else {
            return;
        };
        let ty = hdr.socket_type().unwrap_or(SocketType::Stream);
        self.me
            .push_control(PacketHeader::new(ty, Op::Rst, hdr.src(), hdr.dst()));
        let owed = self
            .owed_resets
            .iter()
            .any(|(h, to)| *to == from && h.src() == to_peer.src() && h.dst() == to_peer.dst());
        if !owed && self.owed_resets.len() < MAX_OWED_RESETS {
            self.owed_resets.push((to_peer, from));
        }
    }

    /// Stages the RSTs this guest owes, as staging room allows.
    fn stage_owed_resets(&mut self, sent: &mut Vec<TxChain>) {
        while self.staging.free() > 0 {
            let Some((rst, to)) = self.owed_resets.pop() else {
                return;
            };
            self.stage(&rst, to, sent);
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
            let payload = &self.packet[HEADER_LEN + range.start..HEADER_LEN + range.end];
            // Room for every piece was checked before the packet was taken.
            let Some(chain) = self.staging.stage_piece(to, &piece, payload) else {
                log::error!("vsock CID {}: staging ran out mid-packet", self.cid);
                return;
            };
            sent.push(chain);
        }
    }
}
