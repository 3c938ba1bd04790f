//! A port as the switch holds it ([`PortSlot`]): the port, its outbox, its counters and what
//! the sweep saw of it; and [`deliver_chain`], which copies a held message from one slot's
//! memory into another slot's guest.

use std::collections::VecDeque;

use vm_memory::GuestMemoryBackend;

use super::inflight::Token;
use super::outbox::Outbound;
use crate::port::{Drain, Port, PortId};
use crate::virtio::{DeliverError, GuestView, TxChain};
use crate::wire::{MsgHeader, Notify};

/// Default coalescing deadline of a port
/// ([`Switch::set_notify_deadline`](super::Switch::set_notify_deadline)): the longest a
/// notification withheld for deferred messages waits, 1 ms. That is the default sweep interval
/// (the switch wakes that often anyway, so the deadline costs it no extra wake-up) and a tenth
/// of the 10 ms safety-net timeout after which a parked vmq guest looks at its rings on its own.
pub const DEFAULT_NOTIFY_DEADLINE_NS: u64 = 1_000_000;

/// Reply bytes the switch keeps (copied out of backends' queues) for one port that has not
/// taken them yet.
pub const UNREAD_REPLY_BYTES: usize = 1 << 20;

/// Per-port counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PortStats {
    /// Messages taken from the port.
    pub sent: u64,
    /// Messages delivered into the port.
    pub received: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Requests the port sent.
    pub requests: u64,
    /// Replies delivered to the port.
    pub replies: u64,
    /// Requests of this port failed back with an error status.
    pub failed_back: u64,
    /// One-way messages it sent that could not be delivered.
    pub undeliverable: u64,
    /// Replies for this port dropped because it went away or broke.
    pub orphaned: u64,
    /// Protocol faults (it broke the queue or header rules).
    pub faults: u64,
    /// Notifications sent to its guest.
    pub notifies: u64,
    /// Times it came back after going down (device reset, VM restart).
    pub revivals: u64,
    /// Error notices dropped because a queue's worth already waited for it to read them.
    pub notices_dropped: u64,
    /// Of `notifies`: sent at once for an immediate message (`Notify::Immediate`), before the
    /// rest of the switch's batch.
    pub notifies_immediate: u64,
    /// Notifications its guest asked for that were withheld because everything new for it
    /// was deferred (`Notify::Deferred`); each is sent later, with a following immediate or
    /// per-poll message, or at the port's coalescing deadline.
    pub notifies_withheld: u64,
    /// Of `notifies`: sent because a withheld notification reached the coalescing deadline.
    pub notifies_deadline: u64,
}

/// A port, its outbox and what the switch keeps about it.
pub(crate) struct PortSlot<M> {
    pub name: String,
    pub port: Box<dyn Port<M>>,
    /// A second handle on the port's memory, so a payload can be read from it while `port`
    /// (perhaps the same one) is borrowed mutably.
    pub mem: GuestView<M>,
    /// `(service, member index)` for every service this port serves.
    pub member_of: Vec<(u32, usize)>,
    pub outbox: VecDeque<Outbound>,
    pub stats: PortStats,
    /// What the port showed at the last sweep.
    pub drain: Drain,
    /// Deliveries it consumed between the last two sweeps.
    pub consumed_since_sweep: u16,
    /// Sessions that ended, and that its guest broke, between the last two sweeps.
    pub sessions_since_sweep: (u16, u16),
    /// `Outbound::Notice` entries in `outbox` (at most `rx_capacity`).
    pub notices: u32,
    pub rx_capacity: u16,
    /// Bytes of `Outbound::CopiedReply` entries in `outbox` (at most [`UNREAD_REPLY_BYTES`]).
    pub copied_bytes: usize,
    /// Most requests it may have in flight ([`Port::max_held`]).
    pub max_held: u32,
    /// Deliveries or releases since the last publish.
    pub dirty: bool,
    /// Since the last publish: a delivery (`wake_rx`) or a hand-back (`wake_tx`) that is
    /// notified by the per-poll rule or at once; a deferred one sets neither.
    pub wake_rx: bool,
    pub wake_tx: bool,
    /// An immediate message is published but not yet notified: settle the port now.
    pub urgent: bool,
    /// Since when a notification its guest asked for has been withheld (deferred messages).
    pub owed_since: Option<u64>,
    /// Longest a withheld notification waits, ns (per port; kept across revivals).
    pub notify_deadline_ns: u64,
    /// Broken (DEVICE_NEEDS_RESET) or removed: no more traffic either way.
    pub down: bool,
    /// Its answered requests leave sessions behind ([`Port::holds_sessions`]).
    pub holds_sessions: bool,
}

impl<M: Clone> PortSlot<M> {
    pub fn new(name: &str, port: Box<dyn Port<M>>) -> Self {
        let drain = port.drain();
        let max_held = port.max_held();
        let holds_sessions = port.holds_sessions();
        let mut outbox = VecDeque::new();
        outbox.push_back(Outbound::Hello);
        Self {
            name: name.to_string(),
            mem: port.memory().clone(),
            port,
            member_of: Vec::new(),
            outbox,
            stats: PortStats::default(),
            drain,
            consumed_since_sweep: 0,
            sessions_since_sweep: (0, 0),
            notices: 0,
            rx_capacity: drain.capacity,
            copied_bytes: 0,
            max_held,
            dirty: false,
            wake_rx: false,
            wake_tx: false,
            urgent: false,
            owed_since: None,
            notify_deadline_ns: DEFAULT_NOTIFY_DEADLINE_NS,
            down: false,
            holds_sessions,
        }
    }

    /// The port's guest brought it up again with `port`: fresh queues, a new hello.
    pub fn revive(&mut self, port: Box<dyn Port<M>>) {
        self.mem = port.memory().clone();
        self.drain = port.drain();
        self.rx_capacity = self.drain.capacity;
        self.max_held = port.max_held();
        self.holds_sessions = port.holds_sessions();
        self.port = port;
        self.consumed_since_sweep = 0;
        self.sessions_since_sweep = (0, 0);
        self.outbox.clear();
        self.outbox.push_back(Outbound::Hello);
        self.notices = 0;
        self.copied_bytes = 0;
        self.clear_notify_state();
        self.down = false;
        self.stats.revivals += 1;
    }

    /// Port `p` went down: drops what it sent that waits here. One-way messages are counted in
    /// `stranded`; the tokens of its replies go to `answers` (they must fail back).
    pub fn forget_from(&mut self, p: PortId, stranded: &mut u64, answers: &mut Vec<Token>) {
        self.outbox.retain(|item| match item {
            Outbound::OneWay { src, .. } if *src == p => {
                *stranded += 1;
                false
            }
            Outbound::Reply { token, backend, .. } if *backend == p => {
                answers.push(*token);
                false
            }
            _ => true,
        });
    }
}

impl<M> PortSlot<M> {
    /// A delivery into this port went in, to be notified as `n` says.
    pub fn delivered_as(&mut self, n: Notify) {
        self.dirty = true;
        match n {
            Notify::PerPoll => self.wake_rx = true,
            Notify::Immediate => {
                self.wake_rx = true;
                self.urgent = true;
            }
            Notify::Deferred => {}
        }
    }

    /// A message was handed back to this port's guest, to be notified as `n` says.
    pub fn released_as(&mut self, n: Notify) {
        self.dirty = true;
        match n {
            Notify::PerPoll => self.wake_tx = true,
            Notify::Immediate => {
                self.wake_tx = true;
                self.urgent = true;
            }
            Notify::Deferred => {}
        }
    }

    /// Publishes what is new and notifies the guest if the rules say so (see the switch's
    /// outbox): a side that asked and has a per-poll or immediate change is told; one that
    /// asked for deferred changes only is owed a notification, which any later per-poll or
    /// immediate change, or the deadline, sends. Bound: one timestamp per port.
    pub fn settle(&mut self, now: u64) {
        if self.down {
            self.clear_notify_state();
            return;
        }
        let urgent = std::mem::take(&mut self.urgent);
        let asked = if std::mem::take(&mut self.dirty) {
            self.port.publish_sides()
        } else {
            crate::port::Asked::default()
        };
        let (wake_rx, wake_tx) = (
            std::mem::take(&mut self.wake_rx),
            std::mem::take(&mut self.wake_tx),
        );
        let owed_before = self.owed_since.is_some();
        if (asked.rx && !wake_rx) || (asked.tx && !wake_tx) {
            self.owed_since.get_or_insert(now);
        }
        let told = (asked.rx && wake_rx) || (asked.tx && wake_tx);
        let flushed = self.owed_since.is_some() && (wake_rx || wake_tx);
        let expired = self
            .owed_since
            .is_some_and(|t| now >= t.saturating_add(self.notify_deadline_ns));
        if told || flushed || expired {
            self.owed_since = None;
            self.stats.notifies += 1;
            if urgent {
                self.stats.notifies_immediate += 1;
            } else if expired && !told && !flushed {
                self.stats.notifies_deadline += 1;
            }
            self.port.notify();
        } else if !owed_before && self.owed_since.is_some() {
            self.stats.notifies_withheld += 1;
        }
    }

    /// When a notification withheld from this port falls due.
    pub fn notify_due(&self) -> Option<u64> {
        self.owed_since
            .filter(|_| !self.down)
            .map(|t| t.saturating_add(self.notify_deadline_ns))
    }

    fn clear_notify_state(&mut self) {
        self.dirty = false;
        self.wake_rx = false;
        self.wake_tx = false;
        self.urgent = false;
        self.owed_since = None;
    }
}

/// Delivers `hdr` + the payload of `chain` (held by port `src`) into port `dst`.
pub(super) fn deliver_chain<M: GuestMemoryBackend>(
    ports: &mut [PortSlot<M>],
    dst: PortId,
    src: PortId,
    hdr: &MsgHeader,
    chain: &TxChain,
) -> Result<bool, DeliverError> {
    let (d, s) = (dst as usize, src as usize);
    if d >= ports.len() || s >= ports.len() {
        return Err(DeliverError::NoBuffer);
    }
    let r = if d == s {
        let e = &mut ports[d];
        e.port.deliver(hdr, &chain.payload(&e.mem))
    } else if d < s {
        let (lo, hi) = ports.split_at_mut(s);
        lo[d].port.deliver(hdr, &chain.payload(&hi[0].mem))
    } else {
        let (lo, hi) = ports.split_at_mut(d);
        hi[0].port.deliver(hdr, &chain.payload(&lo[s].mem))
    };
    if r.is_ok() {
        let e = &mut ports[d];
        e.delivered_as(hdr.notify());
        e.stats.received += 1;
        e.stats.bytes_received += u64::from(hdr.len());
    }
    r
}
