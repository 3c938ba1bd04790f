//! [`ConnTable`]: the connections of one `connection` service, shared by its front and its
//! backend ports: who is connected to whom, in which phase, and what each side sees.
//!
//! Every connection is kept in a [`Relay`] in the **client's view**: the client's address and
//! the service's `cid:port`. A client's packets go in as they are; a backend's are first
//! translated into that view (from `service:port` to the client) and pass the same checks:
//! state, socket type, shutdown, and credit (capped, never overrun, deliveries counted from the
//! guests' rx queues). What passes is translated for its receiver: the client only ever sees
//! the service's address, the backend only `service:local` (a port at or above
//! [`SERVICE_BACKEND_PORTS`] chosen by vmq), never the client's CID.
//!
//! This file is the client's side (REQUESTs, packets, the switch's answers) and the table's
//! upkeep; `legs` is the backend's side.
//!
//! # Bounds
//!
//! - connections: at most `max_connections` in every phase (REQUESTs beyond get an RST), each
//!   a few dozen bytes here and one relay entry;
//! - bytes in transit per connection: at most the relay's credit cap per direction;
//! - attempts per connection: at most `2 * members + 2` connect requests, and the relay's
//!   `request_timeout_ns` from the client's REQUEST to a backend's RESPONSE.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::legs::{rst_to_backend, to_backend};
use super::{is_local, Counters, Out};
use crate::port::vsock::service::next_backend_port;
use crate::port::vsock::{VmEntry, SERVICE_BACKEND_PORTS};
use crate::port::PortId;
use crate::vsock::packet::{Op, PacketHeader, SockAddr, SocketType};
use crate::vsock::relay::{ConnKey, ConnState, Relay, RelayConfig, RelayConfigError, Verdict};
use crate::wire::Status;

/// Settings of a [`ConnTable`].
#[derive(Debug, Clone)]
pub struct TableConfig {
    /// The service's address.
    pub cid: u64,
    /// The port clients connect to.
    pub port: u32,
    /// Connections at once, in every phase: the table's bound.
    pub max_connections: usize,
    /// Members of the service: a connection every one of them refused is given up.
    pub members: usize,
    /// The credit cap per direction (`credit_cap`), the connect deadline
    /// (`request_timeout_ns`: a client's REQUEST no backend accepted in this long is reset)
    /// and the close timeout. Its `max_conns_per_guest` is capped at `max_connections`.
    pub relay: RelayConfig,
}

/// Where a connection stands.
#[derive(Debug, Clone)]
pub(super) enum Phase {
    /// Waiting for the switch to pick a backend (first, or again after a refusal).
    Picking,
    /// A REQUEST is out to this backend.
    Connecting(Leg),
    /// Accepted by this backend: packets pass both ways.
    Established(Leg),
}

/// The backend's side of a connection.
#[derive(Debug, Clone)]
pub(super) struct Leg {
    /// The member port that opened it.
    pub member: PortId,
    pub vm: Arc<VmEntry>,
    pub departures: u64,
    /// The backend application's address.
    pub addr: SockAddr,
    /// The service-side port of this leg.
    pub local: u32,
}

#[derive(Debug)]
pub(super) struct Conn {
    pub id: u32,
    pub ty: SocketType,
    pub client: Arc<VmEntry>,
    pub departures: u64,
    /// The client's credit as of its last header, for the REQUEST to a backend.
    pub credit: (u32, u32),
    pub phase: Phase,
    /// Number of the switch request out for it now.
    pub attempt: u32,
    /// Members that refused it (or did not answer in time).
    pub refused_by: Vec<PortId>,
}

/// What the switch's answer to a connect request calls for ([`ConnTable::on_answer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing more.
    Done,
    /// Ask the switch again: attempt `attempt` of connection `id`, affinity key `key`.
    Retry {
        /// The connection.
        id: u32,
        /// Its new attempt number.
        attempt: u32,
        /// Its affinity key (the client's CID).
        key: u32,
    },
}

/// The connections of one `connection` service. See the module documentation.
#[derive(Debug)]
pub struct ConnTable {
    pub(super) cfg: TableConfig,
    pub(super) relay: Relay,
    /// By the client's address.
    pub(super) conns: HashMap<SockAddr, Conn>,
    /// Connection ids (in the switch's requests) to clients' addresses.
    ids: HashMap<u32, SockAddr>,
    /// Service-side ports of legs connecting or established, to clients' addresses.
    pub(super) locals: HashMap<u32, SockAddr>,
    next_id: u32,
    next_local: u32,
    /// Per member port: established connections that ended, and of those the ones its backend
    /// reset (both wrap). At most one entry per member port the service ever had.
    outcomes: HashMap<PortId, (u16, u16)>,
    /// What happened to connections.
    pub counters: Counters,
}

impl ConnTable {
    /// An empty table.
    pub fn new(cfg: TableConfig) -> Result<Self, RelayConfigError> {
        let relay = Relay::new(RelayConfig {
            // Each client at most the relay's per-VM limit, so one cannot take the service.
            max_conns_per_guest: cfg.relay.max_conns_per_guest.min(cfg.max_connections),
            ..cfg.relay.clone()
        })?;
        Ok(Self {
            cfg,
            relay,
            conns: HashMap::new(),
            ids: HashMap::new(),
            locals: HashMap::new(),
            next_id: 1,
            next_local: SERVICE_BACKEND_PORTS,
            outcomes: HashMap::new(),
            counters: Counters::default(),
        })
    }

    /// The service's address.
    pub fn service(&self) -> SockAddr {
        SockAddr::new(self.cfg.cid, self.cfg.port)
    }

    pub(super) fn key(&self, client: SockAddr) -> ConnKey {
        ConnKey {
            initiator: client,
            acceptor: self.service(),
        }
    }

    /// Connections now, and how many of them wait for a backend to accept.
    pub fn len(&self) -> (usize, usize) {
        let waiting = self
            .conns
            .values()
            .filter(|c| !matches!(c.phase, Phase::Established(_)))
            .count();
        (self.conns.len(), waiting)
    }

    /// The service has `members` member slots now (a reload added some): a connection is given
    /// up once that many members refused it.
    pub fn set_members(&mut self, members: usize) {
        self.cfg.members = members;
    }

    /// Established connections through member port `member` that ended, and of those the ones
    /// its backend reset (both wrap at 2^16): see [`crate::port::Drain::ended`].
    pub fn outcomes(&self, member: PortId) -> (u16, u16) {
        self.outcomes.get(&member).copied().unwrap_or_default()
    }

    /// Connections established through member port `member`.
    pub fn established_by(&self, member: PortId) -> usize {
        self.conns
            .values()
            .filter(|c| matches!(&c.phase, Phase::Established(l) if l.member == member))
            .count()
    }

    /// A packet client `client` sent to the service's CID (source stamped). Returns the id of
    /// the connection it opened, if it was a REQUEST taken: the caller asks the switch for a
    /// backend.
    pub fn from_client(
        &mut self,
        client: &Arc<VmEntry>,
        hdr: &PacketHeader,
        out: &mut Vec<Out>,
    ) -> Option<u32> {
        let addr = hdr.src();
        if !self.conns.contains_key(&addr) {
            return self.open(client, hdr, out);
        }
        // Connections are known by the client's address alone: from the same port to another
        // of the service CID's ports is none of them (and must not reach the backend's leg).
        if hdr.dst() != self.service() {
            self.refuse(client, hdr, out);
            return None;
        }
        let before = self.relay.state(&self.key(addr));
        let verdict = self.relay.on_packet(client.addr.cid, hdr);
        if matches!(verdict, Verdict::Forward(_)) {
            self.count_end(addr, hdr, before, true);
        }
        let cid = self.cfg.cid;
        let conn = self.conns.get_mut(&addr)?;
        match verdict {
            Verdict::Forward(h) => match &conn.phase {
                Phase::Established(leg) => out.push(Out::Stage {
                    vm: leg.vm.clone(),
                    hdr: to_backend(&h, leg, cid),
                }),
                // Before a backend accepted, the relay lets only credit and RST through: the
                // credit goes with the REQUEST; an RST ends the attempt (below).
                _ if h.op == Op::CreditUpdate as u16 => conn.credit = (h.buf_alloc, h.fwd_cnt),
                Phase::Connecting(leg) => out.push(rst_to_backend(conn.ty, leg, cid)),
                Phase::Picking => {}
            },
            Verdict::Refuse { rst, .. } => out.push(Out::Control {
                vm: client.clone(),
                hdr: rst,
            }),
            Verdict::Reset {
                to_sender, to_peer, ..
            } => {
                self.counters.reset_by_vmq += 1;
                out.push(Out::Control {
                    vm: client.clone(),
                    hdr: to_sender,
                });
                if let Phase::Connecting(leg) | Phase::Established(leg) = &conn.phase {
                    // Behind the data the client sent before.
                    out.push(Out::Stage {
                        vm: leg.vm.clone(),
                        hdr: to_backend(&to_peer, leg, cid),
                    });
                }
            }
            Verdict::Drop => {}
        }
        self.forget_if_over(addr);
        None
    }

    /// Refuses client `client`'s packet `hdr` (counted): an RST back, unless it is one.
    fn refuse(&mut self, client: &Arc<VmEntry>, hdr: &PacketHeader, out: &mut Vec<Out>) {
        self.counters.refused += 1;
        if let Some(rst) = hdr.rst_reply() {
            out.push(Out::Control {
                vm: client.clone(),
                hdr: rst,
            });
        }
    }

    /// A packet from a client for no connection: a REQUEST is taken if it may be.
    fn open(
        &mut self,
        client: &Arc<VmEntry>,
        hdr: &PacketHeader,
        out: &mut Vec<Out>,
    ) -> Option<u32> {
        if hdr.op == Op::Rst as u16 {
            return None;
        }
        let ty = hdr.socket_type();
        let allowed = hdr.op == Op::Request as u16
            && hdr.dst_port == self.cfg.port
            && self.conns.len() < self.cfg.max_connections;
        let taken = match (allowed, ty) {
            (true, Some(ty)) => match self.relay.on_packet(client.addr.cid, hdr) {
                Verdict::Forward(h) => Some((ty, h)),
                _ => None,
            },
            _ => None,
        };
        let Some((ty, h)) = taken else {
            self.refuse(client, hdr, out);
            return None;
        };
        let id = self.free_id();
        self.ids.insert(id, h.src());
        self.conns.insert(
            h.src(),
            Conn {
                id,
                ty,
                client: client.clone(),
                departures: client.departures.load(Ordering::Acquire),
                credit: (h.buf_alloc, h.fwd_cnt),
                phase: Phase::Picking,
                attempt: 0,
                refused_by: Vec::new(),
            },
        );
        self.counters.requested += 1;
        Some(id)
    }

    fn free_id(&mut self) -> u32 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1).max(1);
            if !self.ids.contains_key(&id) {
                return id;
            }
        }
    }

    /// A service-side port no leg uses.
    pub(super) fn free_local(&mut self) -> u32 {
        next_backend_port(&mut self.next_local, |p| self.locals.contains_key(&p))
    }

    /// The connection with id `id` on its attempt `attempt`, by its client's address.
    pub(super) fn by_id(&self, id: u32, attempt: u32) -> Option<SockAddr> {
        let addr = *self.ids.get(&id)?;
        (self.conns.get(&addr)?.attempt == attempt).then_some(addr)
    }

    /// The switch answered connect request `attempt` of connection `id` (from member port
    /// `from`, or the switch itself) with `status`. An error from a member (its refusal) is
    /// retried while some member has not refused; the switch's own (no backend before the
    /// deadline) gives up: the client gets its RST.
    pub fn on_answer(
        &mut self,
        (id, attempt): (u32, u32),
        status: Option<Status>,
        from: PortId,
        out: &mut Vec<Out>,
    ) -> Next {
        let Some(addr) = self.by_id(id, attempt) else {
            return Next::Done;
        };
        if status == Some(Status::Ok) {
            // Accepted (the member told the client), or nothing was left to do.
            return Next::Done;
        }
        let (cid, members) = (self.cfg.cid, self.cfg.members);
        let Some(conn) = self.conns.get_mut(&addr) else {
            return Next::Done;
        };
        if status == Some(Status::BackendError) && !conn.refused_by.contains(&from) {
            conn.refused_by.push(from);
        }
        if let Phase::Connecting(leg) = &conn.phase {
            // Failed back while a member still waited for its backend: that side ends.
            out.push(rst_to_backend(conn.ty, leg, cid));
            self.locals.remove(&leg.local);
            conn.phase = Phase::Picking;
        }
        let max_attempts = 2 * members as u32 + 2;
        let retry = matches!(status, Some(Status::BackendError | Status::PortBroken))
            && conn.refused_by.len() < members
            && conn.attempt < max_attempts;
        if !retry {
            self.counters.reset_no_backend += 1;
            self.give_up(addr, out);
            return Next::Done;
        }
        conn.attempt += 1;
        self.counters.retried += 1;
        Next::Retry {
            id,
            attempt: conn.attempt,
            key: conn.client.addr.cid as u32,
        }
    }

    /// Ends the connection of client `addr` on both sides: RSTs from vmq to the client and to
    /// its backend (if it has one).
    pub(super) fn give_up(&mut self, addr: SockAddr, out: &mut Vec<Out>) {
        let service = self.service();
        let Some(conn) = self.remove(addr) else {
            return;
        };
        out.push(Out::Control {
            vm: conn.client.clone(),
            hdr: PacketHeader::new(conn.ty, Op::Rst, service, addr),
        });
        if let Phase::Connecting(leg) | Phase::Established(leg) = &conn.phase {
            out.push(rst_to_backend(conn.ty, leg, service.cid));
        }
    }

    /// Ends every connection on both sides, the service being removed: RSTs from vmq to each
    /// client and to its backend, counted as vmq's resets. Returns how many there were.
    pub fn reset_all(&mut self, out: &mut Vec<Out>) -> usize {
        let addrs: Vec<SockAddr> = self.conns.keys().copied().collect();
        for &addr in &addrs {
            self.counters.reset_by_vmq += 1;
            self.give_up(addr, out);
        }
        addrs.len()
    }

    /// Takes the connection of client `addr` out of the table (and the relay).
    pub(super) fn remove(&mut self, addr: SockAddr) -> Option<Conn> {
        let conn = self.conns.remove(&addr)?;
        self.ids.remove(&conn.id);
        if let Phase::Connecting(leg) | Phase::Established(leg) = &conn.phase {
            self.locals.remove(&leg.local);
        }
        let key = self.key(addr);
        self.relay.reset(&key);
        Some(conn)
    }

    /// Counts how the connection of client `addr` ended, if the packet `hdr` (from the client,
    /// or not) that passed the relay ended it; `before` is its state before.
    pub(super) fn count_end(
        &mut self,
        addr: SockAddr,
        hdr: &PacketHeader,
        before: Option<ConnState>,
        from_client: bool,
    ) {
        if self.relay.state(&self.key(addr)).is_some() {
            return;
        }
        let c = &mut self.counters;
        let open = matches!(before, Some(ConnState::Requested | ConnState::Established));
        let rst = hdr.op == Op::Rst as u16 && open;
        let by_backend = rst && !from_client;
        match (rst, from_client) {
            (true, true) => c.reset_by_client += 1,
            (true, false) => c.reset_by_backend += 1,
            (false, _) => c.closed += 1,
        }
        // The backend's record: an established connection it reset, or one that ended
        // otherwise.
        if let Some(Phase::Established(leg)) = self.conns.get(&addr).map(|c| &c.phase) {
            let o = self.outcomes.entry(leg.member).or_default();
            o.0 = o.0.wrapping_add(1);
            o.1 = o.1.wrapping_add(u16::from(by_backend));
        }
    }

    /// Forgets the connection of client `addr` if the relay ended it (an RST passed, or both
    /// sides shut down both ways).
    pub(super) fn forget_if_over(&mut self, addr: SockAddr) {
        if self.relay.state(&self.key(addr)).is_none() {
            self.remove(addr);
        }
    }

    /// `part` (from the service's CID) went into a guest's rx queue: the relay counts it
    /// delivered, in the client's view.
    pub fn delivered(&mut self, part: &PacketHeader) {
        let mut view = *part;
        if is_local(part.src_port) {
            // A part for a backend: from the client to the service, in the client's view.
            let Some(&client) = self.locals.get(&part.src_port) else {
                return;
            };
            let service = self.service();
            (view.src_cid, view.src_port) = (client.cid, client.port);
            (view.dst_cid, view.dst_port) = (service.cid, service.port);
        }
        if self.relay.on_delivered(&view).is_err() {
            log::debug!(
                "service CID {}: delivered more than forwarded",
                self.cfg.cid
            );
        }
    }

    /// Upkeep, about every 100 ms: advances the relay's clock to `now_ns` and ends what timed
    /// out (a REQUEST no backend accepted by the deadline; a close that lingers) and the
    /// connections of VMs that went away, with RSTs to whoever is left.
    pub fn sweep(&mut self, now_ns: u64, out: &mut Vec<Out>) {
        for r in self.relay.sweep(now_ns) {
            let addr = r.to_initiator.dst();
            let Some(conn) = self.conns.get(&addr) else {
                continue;
            };
            match conn.phase {
                Phase::Established(_) => self.counters.reset_by_vmq += 1,
                _ => self.counters.reset_no_backend += 1,
            }
            self.give_up(addr, out);
        }
        let gone: Vec<(SockAddr, bool)> = self
            .conns
            .iter()
            .filter_map(|(&a, c)| {
                let client_gone = c.client.departures.load(Ordering::Acquire) != c.departures;
                // A backend VM that goes away while connecting is its member's to report: the
                // connection is retried elsewhere.
                let backend_gone = matches!(&c.phase, Phase::Established(l)
                    if l.vm.departures.load(Ordering::Acquire) != l.departures);
                (client_gone || backend_gone).then_some((a, client_gone))
            })
            .collect();
        for (addr, client_gone) in gone {
            self.counters.reset_by_vmq += 1;
            let Some(conn) = self.remove(addr) else {
                continue;
            };
            // The guest that went away has no connection left to reset.
            if client_gone {
                if let Phase::Connecting(leg) | Phase::Established(leg) = &conn.phase {
                    out.push(rst_to_backend(conn.ty, leg, self.cfg.cid));
                }
            } else {
                out.push(Out::Control {
                    vm: conn.client.clone(),
                    hdr: PacketHeader::new(conn.ty, Op::Rst, self.service(), addr),
                });
            }
        }
    }
}
