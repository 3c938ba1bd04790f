//! The backend's side of a [`ConnTable`]: a member opening a connection, its backend's answer,
//! the backend's packets once established, and a member giving up.
//!
//! A backend is trusted with nothing it was not given: a packet must come from the backend
//! application's address to a service-side port of a leg its own member opened, in the phase
//! the op belongs to. Anything else is answered with an RST and touches no connection, so a
//! backend forging addresses harms nobody.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::table::{ConnTable, Leg, Phase};
use super::Out;
use crate::port::vsock::VmEntry;
use crate::port::PortId;
use crate::vsock::packet::{Op, PacketHeader, SockAddr, SocketType};
use crate::vsock::relay::Verdict;

/// What a member's connect request came to ([`ConnTable::connect`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connect {
    /// Send `request` to the backend; its answer comes to `service:local`.
    Opened {
        /// The leg's service-side port.
        local: u32,
        /// The REQUEST, from `service:local` to the backend, with the client's credit.
        request: PacketHeader,
    },
    /// Nothing to do (accepted elsewhere, asked again since, or gone): answer at once.
    Nothing,
}

/// What a backend's answer to a REQUEST came to ([`ConnTable::answer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Accepted: the client has its RESPONSE.
    Accepted,
    /// Refused (an RST, or anything but a RESPONSE the relay takes): the connection waits for
    /// another backend.
    Refused,
    /// For a connection that moved on or ended: the backend's side is reset.
    Stale {
        /// Whether the backend had accepted.
        accepted: bool,
    },
    /// Not from the address the REQUEST went to: answered with an RST, nothing changed.
    Ignored,
}

impl ConnTable {
    /// Member port `member` was given attempt `attempt` of connection `id`: it connects to
    /// `port` of backend `vm`. A REQUEST for it still out to a backend (the switch moved the
    /// attempt here when that backend stalled) is abandoned and that backend's side reset.
    pub fn connect(
        &mut self,
        member: PortId,
        vm: &Arc<VmEntry>,
        port: u32,
        (id, attempt): (u32, u32),
        out: &mut Vec<Out>,
    ) -> Connect {
        let Some(addr) = self.by_id(id, attempt) else {
            return Connect::Nothing;
        };
        let local = self.free_local();
        let cid = self.cfg.cid;
        let Some(conn) = self.conns.get_mut(&addr) else {
            return Connect::Nothing;
        };
        match &conn.phase {
            Phase::Established(_) => return Connect::Nothing,
            Phase::Connecting(old) => {
                self.counters.moved += 1;
                self.locals.remove(&old.local);
                out.push(rst_to_backend(conn.ty, old, cid));
            }
            Phase::Picking => {}
        }
        let leg = Leg {
            member,
            vm: vm.clone(),
            departures: vm.departures.load(Ordering::Acquire),
            addr: SockAddr::new(vm.addr.cid, port),
            local,
        };
        let mut request =
            PacketHeader::new(conn.ty, Op::Request, SockAddr::new(cid, local), leg.addr);
        (request.buf_alloc, request.fwd_cnt) = conn.credit;
        conn.phase = Phase::Connecting(leg);
        self.locals.insert(local, addr);
        Connect::Opened { local, request }
    }

    /// The leg member `member` is connecting on `local`, with its client's address.
    fn connecting(&self, member: PortId, local: u32) -> Option<(SockAddr, Leg)> {
        let addr = *self.locals.get(&local)?;
        match &self.conns.get(&addr)?.phase {
            Phase::Connecting(l) if l.member == member && l.local == local => {
                Some((addr, l.clone()))
            }
            _ => None,
        }
    }

    /// Backend `vm` of member `member` answered the REQUEST sent from `hdr.dst_port` (one of
    /// that member's pending ones).
    pub fn answer(
        &mut self,
        member: PortId,
        vm: &Arc<VmEntry>,
        hdr: &PacketHeader,
        out: &mut Vec<Out>,
    ) -> Answer {
        let accepted = hdr.op == Op::Response as u16;
        let Some((addr, leg)) = self.connecting(member, hdr.dst_port) else {
            if accepted {
                // Nobody wants this connection any more: its backend's side ends.
                self.counters.stale += 1;
                out.push(rst_reply(vm, hdr));
            }
            return Answer::Stale { accepted };
        };
        if hdr.src() != leg.addr {
            self.counters.no_connection += 1;
            if hdr.op != Op::Rst as u16 {
                out.push(rst_reply(vm, hdr));
            }
            return Answer::Ignored;
        }
        let service = self.service();
        if accepted {
            match self
                .relay
                .on_packet(service.cid, &to_client(hdr, service, addr))
            {
                Verdict::Forward(h) => {
                    let client = self.conns[&addr].client.clone();
                    out.push(Out::Stage { vm: client, hdr: h });
                    if let Some(c) = self.conns.get_mut(&addr) {
                        c.phase = Phase::Established(leg);
                    }
                    self.counters.accepted += 1;
                    return Answer::Accepted;
                }
                // A RESPONSE the relay does not take (credit it was never given) ends both
                // sides; the switch's answer then finds nothing to retry.
                _ => {
                    self.counters.reset_by_vmq += 1;
                    self.give_up(addr, out);
                    return Answer::Refused;
                }
            }
        }
        // A refusal, or another op where only RESPONSE or RST belongs: that backend's side
        // ends and the connection waits for another backend.
        if hdr.op != Op::Rst as u16 {
            out.push(rst_reply(vm, hdr));
        }
        self.unlink(addr);
        Answer::Refused
    }

    /// Back to waiting for a backend: the leg of client `addr` is dropped.
    fn unlink(&mut self, addr: SockAddr) {
        if let Some(c) = self.conns.get_mut(&addr) {
            if let Phase::Connecting(l) | Phase::Established(l) = &c.phase {
                self.locals.remove(&l.local);
            }
            c.phase = Phase::Picking;
        }
    }

    /// A packet backend `vm` of member `member` sent to a service-side port that is not
    /// waiting for an answer: an established connection's, or forged.
    pub fn from_backend(
        &mut self,
        member: PortId,
        vm: &Arc<VmEntry>,
        hdr: &PacketHeader,
        out: &mut Vec<Out>,
    ) {
        let found = self.locals.get(&hdr.dst_port).copied().and_then(|a| {
            match &self.conns.get(&a)?.phase {
                Phase::Established(l) if l.member == member && hdr.src() == l.addr => {
                    Some((a, l.clone()))
                }
                _ => None,
            }
        });
        let Some((addr, leg)) = found else {
            self.counters.no_connection += 1;
            if hdr.op != Op::Rst as u16 {
                out.push(rst_reply(vm, hdr));
            }
            return;
        };
        let service = self.service();
        let client = self.conns[&addr].client.clone();
        let before = self.relay.state(&self.key(addr));
        match self
            .relay
            .on_packet(service.cid, &to_client(hdr, service, addr))
        {
            Verdict::Forward(h) => {
                out.push(Out::Stage { vm: client, hdr: h });
                self.count_end(addr, hdr, before, false);
            }
            Verdict::Reset {
                to_sender, to_peer, ..
            } => {
                self.counters.reset_by_vmq += 1;
                out.push(Out::Control {
                    vm: vm.clone(),
                    hdr: to_backend(&to_sender, &leg, service.cid),
                });
                // Behind the data the backend sent before.
                out.push(Out::Stage {
                    vm: client,
                    hdr: to_peer,
                });
            }
            Verdict::Refuse { .. } | Verdict::Drop => {
                if hdr.op != Op::Rst as u16 {
                    out.push(rst_reply(vm, hdr));
                }
            }
        }
        self.forget_if_over(addr);
    }

    /// Member `member` gave up connecting on `local` (no answer within its connect timeout,
    /// with `reset`; or its VM went away): the connection waits for another backend.
    pub fn connect_failed(&mut self, member: PortId, local: u32, reset: bool, out: &mut Vec<Out>) {
        let Some((addr, leg)) = self.connecting(member, local) else {
            return;
        };
        if reset {
            let ty = self.conns[&addr].ty;
            out.push(rst_to_backend(ty, &leg, self.cfg.cid));
        }
        self.unlink(addr);
    }
}

/// The RST answering `hdr` from backend `vm`.
fn rst_reply(vm: &Arc<VmEntry>, hdr: &PacketHeader) -> Out {
    Out::Control {
        vm: vm.clone(),
        // Only called for packets other than RST.
        hdr: hdr.rst_reply().unwrap_or_else(|| hdr.reply(Op::Rst)),
    }
}

/// `h`, a packet in the client's view from the client, as the backend of `leg` gets it: from
/// `service:local`.
pub(super) fn to_backend(h: &PacketHeader, leg: &Leg, service_cid: u64) -> PacketHeader {
    let mut b = *h;
    (b.src_cid, b.src_port) = (service_cid, leg.local);
    (b.dst_cid, b.dst_port) = (leg.addr.cid, leg.addr.port);
    b
}

/// `h`, a packet a backend sent, in the client's view: from `service` to `client`.
pub(super) fn to_client(h: &PacketHeader, service: SockAddr, client: SockAddr) -> PacketHeader {
    let mut c = *h;
    (c.src_cid, c.src_port) = (service.cid, service.port);
    (c.dst_cid, c.dst_port) = (client.cid, client.port);
    c
}

/// An RST from vmq to the backend of `leg`, ending its side.
pub(super) fn rst_to_backend(ty: SocketType, leg: &Leg, service_cid: u64) -> Out {
    Out::Control {
        vm: leg.vm.clone(),
        hdr: PacketHeader::new(ty, Op::Rst, SockAddr::new(service_cid, leg.local), leg.addr),
    }
}
