//! Connections between two guests that vmq relays: both ends are guests, vmq forwards their
//! packets and checks that neither breaks the protocol or the credit it was given.
//!
//! End-to-end credit stays the guests' own; vmq only caps it. Every header forwarded carries
//! the sender's `buf_alloc` rewritten to `min(real, credit_cap)` (`fwd_cnt` untouched: it counts
//! the same bytes either way), so a sender never has more than `credit_cap` bytes outstanding
//! toward one receiver, and a sender going past the credit it was shown is reset, never
//! buffered.
//!
//! # Bounds
//!
//! - **Bytes held per connection**: at most `credit_cap` per direction (see
//!   [`RelayWindow`]), so `2 × credit_cap` per connection, provided the caller reports each
//!   delivery with [`Relay::on_delivered`] (a receiver's `fwd_cnt` may not pass what was
//!   delivered to it).
//! - **Connections**: each entry is charged to the guest that sent the REQUEST, at most
//!   `max_conns_per_guest` each; a guest that floods requests only exhausts its own share. The
//!   table holds at most `guests × max_conns_per_guest` entries, a few dozen bytes each.
//! - **Bytes per guest**: a guest's own connections hold at most
//!   `max_conns_per_guest × 2 × credit_cap`; the whole table at most
//!   `guests × max_conns_per_guest × 2 × credit_cap` (1024 × 2 × 256 KiB = 512 MiB per guest
//!   at the defaults, if every connection were saturated and no receiver ever drained).
//! - **Lifetime**: every entry ends: an RST from either side or from vmq removes it; both
//!   sides shutting down both directions removes it; [`Relay::sweep`] resets requests
//!   unanswered for `request_timeout_ns`, connections both sides stopped sending on for
//!   `close_timeout_ns`, half-closed ones idle that long, and (if set) established ones idle
//!   for `idle_timeout_ns`; [`Relay::remove_guest`] drops a departed guest's entries.
//!
//! Who may reach whom is the caller's decision: check it first, refuse with
//! [`PacketHeader::rst_reply`], and give the relay only the packets it allowed
//! ([`Relay::check_request`] answers whether the relay itself would take a REQUEST).

mod config;
mod conn;

pub use config::{RelayConfig, RelayConfigError, RelayError};
pub use conn::{ConnKey, ConnState};

use std::collections::HashMap;

use super::credit::{CreditError, RelayWindow};
use super::packet::{Op, PacketHeader, SockAddr, SocketType};
use conn::{Conn, Keep, Side};

/// What to do with a packet from a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver this header (source stamped, `buf_alloc` capped) with the packet's payload to
    /// `dst_cid`.
    Forward(PacketHeader),
    /// Deliver nothing; send `rst` back to the sender. No connection changed.
    Refuse {
        /// The RST for the sender.
        rst: PacketHeader,
        /// Why.
        reason: RelayError,
    },
    /// Deliver nothing; the connection is removed and both ends get an RST.
    Reset {
        /// The RST for the packet's sender.
        to_sender: PacketHeader,
        /// The RST for the other end, from the sender's address.
        to_peer: PacketHeader,
        /// Why.
        reason: RelayError,
    },
    /// Deliver nothing, answer nothing (an RST for a connection that no longer exists).
    Drop,
}

/// RSTs to end a connection on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resets {
    /// For the initiator, from the acceptor's address.
    pub to_initiator: PacketHeader,
    /// For the acceptor, from the initiator's address.
    pub to_acceptor: PacketHeader,
}

/// The table of relayed connections. Pure: no I/O, time only through [`sweep`](Self::sweep).
#[derive(Debug)]
pub struct Relay {
    cfg: RelayConfig,
    conns: HashMap<ConnKey, Conn>,
    /// Connections charged to each initiating guest; no zero entries.
    opened: HashMap<u64, usize>,
    /// Credit stalls of each sending guest: data packets that used the last of the credit its
    /// receiver granted, so it must wait for the receiver to read. One entry per guest that
    /// ever stalled (CIDs are stamped, so they are VMs': bounded by the VMs served).
    credit_stalls: HashMap<u64, u64>,
    now_ns: u64,
}

impl Relay {
    /// An empty table.
    pub fn new(cfg: RelayConfig) -> Result<Self, RelayConfigError> {
        cfg.check()?;
        Ok(Self {
            cfg,
            conns: HashMap::new(),
            opened: HashMap::new(),
            credit_stalls: HashMap::new(),
            now_ns: 0,
        })
    }

    /// The settings.
    pub fn config(&self) -> &RelayConfig {
        &self.cfg
    }

    /// Finds the connection a packet from `src` to `dst` belongs to, and which side sent it.
    fn find(&self, src: SockAddr, dst: SockAddr) -> Option<(ConnKey, Side)> {
        let fwd = ConnKey {
            initiator: src,
            acceptor: dst,
        };
        if self.conns.contains_key(&fwd) {
            return Some((fwd, Side::Initiator));
        }
        let back = ConnKey {
            initiator: dst,
            acceptor: src,
        };
        self.conns
            .contains_key(&back)
            .then_some((back, Side::Acceptor))
    }

    /// Whether the relay would take a REQUEST from `from_cid` (the header as received; its
    /// source CID is stamped here). Call after the caller's own permission check; changes
    /// nothing.
    pub fn check_request(&self, from_cid: u64, hdr: &PacketHeader) -> Result<(), RelayError> {
        let mut hdr = *hdr;
        hdr.stamp_source(from_cid);
        let (_, op) = hdr.validate()?;
        if op != Op::Request {
            return Err(RelayError::UnexpectedOp {
                op,
                state: ConnState::Requested,
            });
        }
        self.check_new(&hdr)
    }

    fn check_new(&self, hdr: &PacketHeader) -> Result<(), RelayError> {
        if hdr.dst_cid == hdr.src_cid {
            return Err(RelayError::ToSelf(hdr.src_cid));
        }
        if self.find(hdr.src(), hdr.dst()).is_some() {
            return Err(RelayError::Exists);
        }
        let open = self.opened.get(&hdr.src_cid).copied().unwrap_or(0);
        if open >= self.cfg.max_conns_per_guest {
            return Err(RelayError::TooManyConnections {
                cid: hdr.src_cid,
                max: self.cfg.max_conns_per_guest,
            });
        }
        Ok(())
    }

    /// Decides what to do with a packet guest `from_cid` sent (header as read from its tx
    /// queue). The source CID is stamped with `from_cid` before anything else.
    pub fn on_packet(&mut self, from_cid: u64, hdr: &PacketHeader) -> Verdict {
        let mut hdr = *hdr;
        hdr.stamp_source(from_cid);
        let refuse = |hdr: &PacketHeader, reason: RelayError| match hdr.rst_reply() {
            Some(rst) => Verdict::Refuse { rst, reason },
            None => Verdict::Drop,
        };
        let (ty, op) = match hdr.validate() {
            Ok(v) => v,
            Err(e) => return refuse(&hdr, e.into()),
        };
        if hdr.dst_cid == from_cid {
            return refuse(&hdr, RelayError::ToSelf(from_cid));
        }
        let Some((key, side)) = self.find(hdr.src(), hdr.dst()) else {
            return match op {
                Op::Request => self.open(hdr, ty),
                Op::Rst => Verdict::Drop,
                op => refuse(&hdr, RelayError::NoConnection(op)),
            };
        };
        if op == Op::Request {
            // The existing connection is left alone: the new one is the odd one out.
            return refuse(&hdr, RelayError::Exists);
        }
        let (cap, now) = (self.cfg.credit_cap, self.now_ns);
        let stepped = match self.conns.get_mut(&key) {
            Some(conn) => conn
                .step(side, &mut hdr, (ty, op), cap, now)
                .map(|keep| (keep, op == Op::Rw && conn.credit_spent(side))),
            None => Err(RelayError::NoConnection(op)),
        };
        match stepped {
            Ok((Keep::Yes, stalled)) => {
                if stalled {
                    *self.credit_stalls.entry(from_cid).or_insert(0) += 1;
                }
                Verdict::Forward(hdr)
            }
            Ok((Keep::No, _)) => {
                self.remove(&key);
                Verdict::Forward(hdr)
            }
            Err(reason) => {
                self.remove(&key);
                Verdict::Reset {
                    to_sender: PacketHeader::new(ty, Op::Rst, hdr.dst(), hdr.src()),
                    to_peer: PacketHeader::new(ty, Op::Rst, hdr.src(), hdr.dst()),
                    reason,
                }
            }
        }
    }

    /// A REQUEST for a new connection.
    fn open(&mut self, mut hdr: PacketHeader, ty: SocketType) -> Verdict {
        let refused = |hdr: &PacketHeader, reason| Verdict::Refuse {
            rst: hdr.reply(Op::Rst),
            reason,
        };
        if let Err(reason) = self.check_new(&hdr) {
            return refused(&hdr, reason);
        }
        // The requester's credit fields are its receive side: the acceptor→initiator window.
        let mut back = RelayWindow::new();
        match back.on_receiver_credit(hdr.buf_alloc, hdr.fwd_cnt, self.cfg.credit_cap) {
            Ok(granted) => hdr.buf_alloc = granted,
            Err(e) => return refused(&hdr, e.into()),
        }
        let key = ConnKey {
            initiator: hdr.src(),
            acceptor: hdr.dst(),
        };
        self.conns.insert(
            key,
            Conn {
                ty,
                state: ConnState::Requested,
                shut: [0; 2],
                win: [RelayWindow::new(), back],
                since_ns: self.now_ns,
                last_ns: self.now_ns,
            },
        );
        *self.opened.entry(key.initiator.cid).or_insert(0) += 1;
        Verdict::Forward(hdr)
    }

    /// Reports that `hdr` (a header from a [`Verdict::Forward`], or one piece of it after
    /// [`PacketHeader::split`]) was placed in its receiver's rx queue. Returns `Ok(false)` if
    /// the connection is gone; an error only if more was reported than forwarded (a caller bug).
    pub fn on_delivered(&mut self, hdr: &PacketHeader) -> Result<bool, CreditError> {
        if hdr.op != Op::Rw as u16 {
            return Ok(self.find(hdr.src(), hdr.dst()).is_some());
        }
        let Some((key, side)) = self.find(hdr.src(), hdr.dst()) else {
            return Ok(false);
        };
        let conn = self.conns.get_mut(&key).expect("found above");
        conn.win[side as usize].on_delivered(hdr.len)?;
        Ok(true)
    }

    fn remove(&mut self, key: &ConnKey) -> Option<Conn> {
        let conn = self.conns.remove(key)?;
        if let Some(n) = self.opened.get_mut(&key.initiator.cid) {
            *n -= 1;
            if *n == 0 {
                self.opened.remove(&key.initiator.cid);
            }
        }
        Some(conn)
    }

    fn resets(key: &ConnKey, ty: SocketType) -> Resets {
        Resets {
            to_initiator: PacketHeader::new(ty, Op::Rst, key.acceptor, key.initiator),
            to_acceptor: PacketHeader::new(ty, Op::Rst, key.initiator, key.acceptor),
        }
    }

    /// Removes a connection (e.g. the caller revoked a permission) and returns the RSTs for
    /// both ends, or `None` if it does not exist.
    pub fn reset(&mut self, key: &ConnKey) -> Option<Resets> {
        let conn = self.remove(key)?;
        Some(Self::resets(key, conn.ty))
    }

    /// Removes the connection between `a` and `b` (either may be its initiator) and returns
    /// the RSTs for both ends, or `None` if there is none.
    pub fn reset_between(&mut self, a: SockAddr, b: SockAddr) -> Option<Resets> {
        let (key, _) = self.find(a, b)?;
        self.reset(&key)
    }

    /// Removes every connection guest `cid` takes part in (it went away) and returns the RSTs
    /// for the other ends.
    pub fn remove_guest(&mut self, cid: u64) -> Vec<PacketHeader> {
        let keys: Vec<ConnKey> = self
            .conns
            .keys()
            .filter(|k| k.initiator.cid == cid || k.acceptor.cid == cid)
            .copied()
            .collect();
        let mut rsts = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(r) = self.reset(&key) {
                rsts.push(if key.initiator.cid == cid {
                    r.to_acceptor
                } else {
                    r.to_initiator
                });
            }
        }
        rsts
    }

    /// Advances the relay's clock to `now_ns` (monotonic, any origin) and resets connections
    /// past their timeouts (see [`RelayConfig`]), returning the RSTs for both ends of each.
    /// Packets are timed at the granularity of sweeps: call it every second or so.
    pub fn sweep(&mut self, now_ns: u64) -> Vec<Resets> {
        self.now_ns = self.now_ns.max(now_ns);
        let now = self.now_ns;
        let cfg = &self.cfg;
        let expired: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                let in_state = now - c.since_ns;
                let idle = now - c.last_ns;
                match c.state {
                    ConnState::Requested => in_state >= cfg.request_timeout_ns,
                    ConnState::Closed => in_state >= cfg.close_timeout_ns,
                    ConnState::Closing => idle >= cfg.close_timeout_ns,
                    ConnState::Established => cfg.idle_timeout_ns.is_some_and(|t| idle >= t),
                }
            })
            .map(|(k, _)| *k)
            .collect();
        expired.iter().filter_map(|k| self.reset(k)).collect()
    }

    /// A connection's state, `None` if the relay does not know it.
    pub fn state(&self, key: &ConnKey) -> Option<ConnState> {
        self.conns.get(key).map(|c| c.state)
    }

    /// Bytes forwarded on `key` from the `from_initiator` side and not yet reported delivered.
    pub fn held(&self, key: &ConnKey, from_initiator: bool) -> Option<u32> {
        let side = if from_initiator {
            Side::Initiator
        } else {
            Side::Acceptor
        };
        self.conns.get(key).map(|c| c.win[side as usize].held())
    }

    /// Connections in the table.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Connections guest `cid` takes part in (either end), by state: requested, established,
    /// closing, closed. Walks the table.
    pub fn states_of(&self, cid: u64) -> [usize; 4] {
        let mut n = [0; 4];
        for (k, c) in &self.conns {
            if k.initiator.cid == cid || k.acceptor.cid == cid {
                n[c.state as usize] += 1;
            }
        }
        n
    }

    /// Times guest `cid` used the last of a receiver's credit and had to wait for it to read
    /// (a receiver that reads slowly, or not at all, shows here first).
    pub fn credit_stalls_of(&self, cid: u64) -> u64 {
        self.credit_stalls.get(&cid).copied().unwrap_or(0)
    }

    /// Connections charged to guest `cid` (those it requested).
    pub fn opened_by(&self, cid: u64) -> usize {
        self.opened.get(&cid).copied().unwrap_or(0)
    }

    /// The most bytes forwarded and not yet delivered over all connections: what the caller
    /// may be holding. At most `2 × credit_cap × len()`.
    pub fn total_held(&self) -> u64 {
        self.conns
            .values()
            .flat_map(|c| c.win.iter())
            .map(|w| u64::from(w.held()))
            .sum()
    }
}
