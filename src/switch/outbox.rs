//! A port's outbox: the one path every outbound message takes. [`Switch::offer`] delivers at once when nothing waits ahead of the message and
//! the guest has a buffer, or queues it; [`Switch::drain_outbox`] delivers what waits, in
//! order; [`Switch::notify_ports`] publishes and notifies once per poll. Headers are rewritten
//! in one place, [`header`](super::header).
//!
//! Notification per message (the header's [`Notify`]): a per-poll message (no flag) is
//! notified once per poll, as always; an immediate one makes its port publish and notify as
//! soon as the message that caused it is handled, before the rest of the batch; a deferred one
//! is published with the rest but notifies nobody: a notification its guest asked for is
//! withheld (owed) until a per-poll or immediate change for that port, or the port's
//! coalescing deadline ([`Switch::set_notify_deadline`]). A reply's hand-back of its request's
//! chain is notified as the reply is. Only a guest that asked (EVENT_IDX) is ever notified:
//! one that did not ask is running and reads its ring anyway, and a forced exit would not
//! make it look sooner (vmq guests take no interrupts).
//!
//! Bounds (per port): the outbox holds what this port is owed, each entry tied to something
//! that bounds it: one-way messages hold a sender's tx chain (bounded by the senders' rings),
//! requests, replies and errors an in-flight record of this port's (bounded by its own tx
//! queue), notices at most one rx queue's worth (`notices`), and at most one hello or
//! directory update (both are encoded when delivered: one waiting carries every change). A reply
//! that cannot be delivered at once is copied out and its backend's chain released, up to
//! [`UNREAD_REPLY_BYTES`](super::slot::UNREAD_REPLY_BYTES) per port; past that it holds the backend's chain until the request's
//! deadline, when it becomes a `Timeout` error: a frontend that does not read never pins a
//! backend's descriptors past its own deadline.

use vm_memory::GuestMemoryBackend;

use super::header::{outbound_header, request_header};
use super::inflight::{Backend, Stage, Target, Token};
use super::slot::{deliver_chain, UNREAD_REPLY_BYTES};
use super::Switch;
use crate::port::PortId;
use crate::virtio::{DeliverError, Payload, TxChain};
use crate::wire::directory::{self, Entry, EntryKind};
use crate::wire::{MsgHeader, Notify, Status};

/// Something that must reach a port's guest but found no buffer yet; delivered in order.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A one-way message held in the sender's tx queue.
    OneWay { src: PortId, chain: TxChain },
    /// A request addressed to this port (not to a service).
    Request(Token),
    /// A reply held in the backend's tx queue, for request `token` (of frontend `msg_id`).
    Reply {
        token: Token,
        backend: PortId,
        chain: TxChain,
        msg_id: u64,
    },
    /// A reply copied out of the backend's queue (its header already rewritten), for request
    /// `token`: the backend's descriptors went back when it was copied.
    CopiedReply {
        token: Token,
        header: MsgHeader,
        bytes: Box<[u8]>,
    },
    /// An error reply the switch makes for request `token` (of frontend `msg_id`).
    Error {
        token: Token,
        status: Status,
        msg_id: u64,
        class: u8,
    },
    /// An error notice for message `msg_id` that has no in-flight record (an undeliverable
    /// one-way message, a request refused because the in-flight table is full).
    Notice { msg_id: u64, status: Status },
    /// The hello (port id and directory) for a port that just came up.
    Hello,
    /// A directory update ([`MsgKind::DirectoryUpdate`](crate::wire::MsgKind)): ports or
    /// services came or went. Encoded when delivered, so it carries the directory as it is
    /// then; at most one waits per port (see [`Switch::directory_changed`]).
    Directory,
}

/// What one delivery attempt came to.
enum Attempt {
    /// Delivered (`false`: cut to a header, too large), or settled otherwise.
    Done(bool),
    /// No buffer: keep it, in order.
    Full,
    /// The destination broke.
    DestBroken,
    /// The sender's held chain no longer reads.
    SourceBroken,
}

impl<M: GuestMemoryBackend + Clone + Send + 'static> Switch<M> {
    /// Sends `item` to port `d`: now, if nothing waits ahead of it and the guest has a buffer;
    /// otherwise it waits in the outbox.
    pub(super) fn offer(&mut self, d: PortId, item: Outbound, now: u64) {
        let slot = &self.ports[d as usize];
        if slot.down || !slot.outbox.is_empty() {
            self.queue(d, item, now);
            return;
        }
        match self.attempt(d, &item, now) {
            Attempt::Done(fits) => self.delivered(d, item, fits, now),
            Attempt::Full => self.queue(d, item, now),
            Attempt::DestBroken => {
                self.ports[d as usize].outbox.push_back(item);
                self.take_down(d, true, now);
            }
            Attempt::SourceBroken => self.source_broke(item, now),
        }
    }

    /// Sends a one-way message from port `src` to port `d`: [`Switch::offer`] for the common
    /// case, delivered straight from the sender's chain without building an outbox entry.
    pub(super) fn offer_oneway(&mut self, d: PortId, src: PortId, chain: TxChain, now: u64) {
        let slot = &self.ports[d as usize];
        if slot.down || !slot.outbox.is_empty() {
            self.queue(d, Outbound::OneWay { src, chain }, now);
            return;
        }
        let mut hdr = chain.header;
        hdr.set_src(src);
        match deliver_chain(&mut self.ports, d, src, &hdr, &chain) {
            Ok(fits) => self.oneway_delivered(src, &chain, fits, now),
            Err(DeliverError::NoBuffer) => self.queue(d, Outbound::OneWay { src, chain }, now),
            Err(DeliverError::Dest(_)) => {
                self.ports[d as usize]
                    .outbox
                    .push_back(Outbound::OneWay { src, chain });
                self.take_down(d, true, now);
            }
            Err(DeliverError::Source(_)) => self.source_broke(Outbound::OneWay { src, chain }, now),
        }
    }

    /// Puts `item` at the end of port `d`'s outbox. A reply is copied out first (within the
    /// port's budget) so that its backend's descriptors go back now, whatever `d` does.
    fn queue(&mut self, d: PortId, item: Outbound, now: u64) {
        let item = match item {
            Outbound::Reply {
                token,
                backend,
                chain,
                msg_id,
            } if !self.ports[d as usize].down => {
                self.copy_out(d, token, backend, chain, msg_id, now)
            }
            other => other,
        };
        self.ports[d as usize].outbox.push_back(item);
    }

    fn copy_out(
        &mut self,
        d: PortId,
        token: Token,
        backend: PortId,
        chain: TxChain,
        msg_id: u64,
        now: u64,
    ) -> Outbound {
        let held = Outbound::Reply {
            token,
            backend,
            chain,
            msg_id,
        };
        let len = chain.header.len() as usize;
        if self.ports[d as usize].copied_bytes + len > UNREAD_REPLY_BYTES {
            return held;
        }
        let mut bytes = vec![0u8; len].into_boxed_slice();
        let b = &mut self.ports[backend as usize];
        if b.down || b.port.copy_payload(&chain, &mut bytes).is_err() {
            // Its chain no longer reads: delivery will find out and fail the request back.
            return held;
        }
        let Some(header) = outbound_header(d, &held) else {
            return held;
        };
        self.release(backend, &chain, now);
        self.ports[d as usize].copied_bytes += len;
        self.totals.replies_copied += 1;
        Outbound::CopiedReply {
            token,
            header,
            bytes,
        }
    }

    /// Request `token`'s reply waits in frontend `f`'s outbox past the request's deadline: if it
    /// still holds its backend's chain, the chain goes back and the frontend gets a `Timeout`
    /// error in its place.
    pub(super) fn drop_unread_reply(&mut self, f: PortId, token: Token, now: u64) {
        let Some(r) = self.inflight.get(token) else {
            return;
        };
        let error = Outbound::Error {
            token,
            status: Status::Timeout,
            msg_id: r.chain.header.msg_id(),
            class: r.chain.header.class(),
        };
        let Some(slot) = self.ports.get_mut(f as usize) else {
            return;
        };
        let held = slot
            .outbox
            .iter_mut()
            .find(|item| matches!(item, Outbound::Reply { token: t, .. } if *t == token));
        let Some(item) = held else {
            return;
        };
        if let Outbound::Reply { backend, chain, .. } = std::mem::replace(item, error) {
            self.totals.replies_unread_dropped += 1;
            self.release(backend, &chain, now);
        }
    }

    /// Delivers what waits for port `d`, in order, until its guest has no buffer.
    pub(super) fn drain_outbox(&mut self, d: PortId, now: u64) -> usize {
        let mut n = 0;
        while !self.ports[d as usize].down {
            let Some(item) = self.ports[d as usize].outbox.pop_front() else {
                break;
            };
            match self.attempt(d, &item, now) {
                Attempt::Done(fits) => {
                    n += 1;
                    self.delivered(d, item, fits, now);
                    if self.ports[d as usize].urgent {
                        self.ports[d as usize].settle(now);
                    }
                }
                Attempt::Full => {
                    self.ports[d as usize].outbox.push_front(item);
                    break;
                }
                Attempt::DestBroken => {
                    self.ports[d as usize].outbox.push_front(item);
                    self.take_down(d, true, now);
                    break;
                }
                Attempt::SourceBroken => self.source_broke(item, now),
            }
        }
        n
    }

    fn attempt(&mut self, d: PortId, item: &Outbound, now: u64) -> Attempt {
        let Some(hdr) = outbound_header(d, item) else {
            let Outbound::Request(tok) = *item else {
                return Attempt::Done(true);
            };
            return self.deliver_request(d, tok, now);
        };
        let r = match item {
            Outbound::OneWay { src, chain } => deliver_chain(&mut self.ports, d, *src, &hdr, chain),
            Outbound::Reply { backend, chain, .. } => {
                deliver_chain(&mut self.ports, d, *backend, &hdr, chain)
            }
            Outbound::Request(_) => return Attempt::Done(true),
            Outbound::CopiedReply { bytes, .. } => {
                let r = self.ports[d as usize]
                    .port
                    .deliver(&hdr, &Payload::Bytes(bytes));
                if r.is_ok() {
                    let st = &mut self.ports[d as usize].stats;
                    st.received += 1;
                    st.bytes_received += u64::from(hdr.len());
                }
                r
            }
            Outbound::Error { .. } | Outbound::Notice { .. } => self.ports[d as usize]
                .port
                .deliver(&hdr, &Payload::Bytes(&[])),
            Outbound::Hello | Outbound::Directory => {
                if self.directory.is_none() {
                    self.directory = Some(self.encode_directory());
                }
                let dir = self.directory.as_deref().unwrap_or_default();
                let mut h = hdr;
                h.set_len(dir.len() as u32);
                self.ports[d as usize]
                    .port
                    .deliver(&h, &Payload::Bytes(dir))
            }
        };
        match r {
            Ok(fits) => {
                self.ports[d as usize].delivered_as(hdr.notify());
                Attempt::Done(fits)
            }
            Err(DeliverError::NoBuffer) => Attempt::Full,
            Err(DeliverError::Dest(_)) => Attempt::DestBroken,
            Err(DeliverError::Source(_)) => Attempt::SourceBroken,
        }
    }

    /// Delivers request `tok` to the port it is addressed to.
    fn deliver_request(&mut self, d: PortId, tok: Token, now: u64) -> Attempt {
        // Gone, or answered already (failed back at its deadline while it waited here).
        let Some(r) = self
            .inflight
            .get_mut(tok)
            .filter(|r| r.stage == Stage::Waiting)
        else {
            return Attempt::Done(true);
        };
        let hdr = request_header(&r.chain.header, r.frontend, tok);
        let frontend = r.frontend;
        match deliver_chain(&mut self.ports, d, frontend, &hdr, &r.chain) {
            Ok(true) => {
                r.stage = Stage::Dispatched;
                r.backend = Some(Backend {
                    port: d,
                    member: None,
                });
                r.dispatched_ns = now;
            }
            Ok(false) => self.fail_back(tok, Status::TooLarge, now),
            Err(DeliverError::NoBuffer) => return Attempt::Full,
            Err(DeliverError::Dest(_)) => {
                self.take_down(d, true, now);
                self.fail_back(tok, Status::PortBroken, now);
            }
            Err(DeliverError::Source(_)) => self.take_down(frontend, true, now),
        }
        Attempt::Done(true)
    }

    /// The sender broke its own held chain: a one-way message is lost with it; a broken
    /// backend's reply is too, and its request fails back.
    fn source_broke(&mut self, item: Outbound, now: u64) {
        match item {
            Outbound::OneWay { src, .. } => self.take_down(src, true, now),
            Outbound::Reply { token, backend, .. } => {
                self.fail_back_answering(token, now);
                self.take_down(backend, true, now);
            }
            _ => {}
        }
    }

    /// `item` reached port `d`'s guest: senders get their chains back, answered requests end.
    fn delivered(&mut self, d: PortId, item: Outbound, fits: bool, now: u64) {
        match item {
            Outbound::OneWay { src, chain } => self.oneway_delivered(src, &chain, fits, now),
            Outbound::Reply {
                token,
                backend,
                chain,
                ..
            } => {
                self.release(backend, &chain, now);
                self.replied(d, token, chain.header.notify(), now);
            }
            Outbound::CopiedReply {
                token,
                bytes,
                header,
            } => {
                let e = &mut self.ports[d as usize];
                e.copied_bytes = e.copied_bytes.saturating_sub(bytes.len());
                self.replied(d, token, header.notify(), now);
            }
            Outbound::Error { token, status, .. } => {
                if let Some(r) = self.inflight.remove(token) {
                    if let Target::Service(s) = r.target {
                        if let Some(svc) = self.services.get_mut(s as usize) {
                            svc.stats.failed_back += 1;
                        }
                    }
                    self.ports[d as usize].stats.failed_back += 1;
                    self.totals.failed_back += 1;
                    if status == Status::Timeout {
                        self.totals.timeouts += 1;
                    }
                    self.release(r.frontend, &r.chain, now);
                }
            }
            Outbound::Notice { .. } => {
                let e = &mut self.ports[d as usize];
                e.notices = e.notices.saturating_sub(1);
            }
            Outbound::Request(_) | Outbound::Hello | Outbound::Directory => {}
        }
    }

    /// A one-way message from `src` reached its port (`fits`: whole, else cut to its header).
    fn oneway_delivered(&mut self, src: PortId, chain: &TxChain, fits: bool, now: u64) {
        self.release(src, chain, now);
        if fits {
            self.totals.oneway_delivered += 1;
        } else {
            self.undeliverable(src, chain.header.msg_id(), Status::TooLarge, now);
        }
    }

    /// Request `token`'s reply reached frontend `d`: the request ends, its chain going back
    /// notified as the reply is (`notify`).
    fn replied(&mut self, d: PortId, token: Token, notify: Notify, now: u64) {
        if let Some(r) = self.inflight.remove(token) {
            self.totals.replies_delivered += 1;
            self.ports[d as usize].stats.replies += 1;
            if let Target::Service(s) = r.target {
                self.services[s as usize].stats.replies += 1;
            }
            self.release_as(r.frontend, &r.chain, notify, now);
        }
    }

    /// Hands a held message back to port `p`'s guest.
    pub(super) fn release(&mut self, p: PortId, chain: &TxChain, now: u64) {
        self.release_as(p, chain, Notify::PerPoll, now);
    }

    /// Hands a held message back to port `p`'s guest, notified as `notify` says.
    fn release_as(&mut self, p: PortId, chain: &TxChain, notify: Notify, now: u64) {
        let e = &mut self.ports[p as usize];
        if e.down {
            return;
        }
        if e.port.release(chain).is_ok() {
            e.released_as(notify);
        } else {
            self.take_down(p, true, now);
        }
    }

    pub(super) fn undeliverable(&mut self, p: PortId, msg_id: u64, status: Status, now: u64) {
        self.totals.oneway_undeliverable += 1;
        self.ports[p as usize].stats.undeliverable += 1;
        self.notice(p, msg_id, status, now);
    }

    pub(super) fn notice(&mut self, p: PortId, msg_id: u64, status: Status, now: u64) {
        let e = &mut self.ports[p as usize];
        if e.down {
            return;
        }
        // Notices answer messages whose chains went back already, so the sender's ring does
        // not bound them: a guest that sends to nowhere and never reads gets at most a
        // queue's worth waiting, and the rest are counted and dropped.
        if e.notices >= u32::from(e.rx_capacity) {
            e.stats.notices_dropped += 1;
            return;
        }
        e.notices += 1;
        self.offer(p, Outbound::Notice { msg_id, status }, now);
    }

    /// Publishes every port's deliveries and releases and notifies the guests that asked, as
    /// their messages' [`Notify`] says; sends the withheld notifications that fell due.
    pub(super) fn notify_ports(&mut self, now: u64) {
        for e in self
            .ports
            .iter_mut()
            .filter(|e| e.dirty || e.owed_since.is_some())
        {
            e.settle(now);
        }
    }

    /// Publishes and notifies, now, every port an immediate message reached.
    pub(super) fn flush_urgent(&mut self, now: u64) {
        for e in self.ports.iter_mut().filter(|e| e.urgent) {
            e.settle(now);
        }
    }

    /// Ports or services came or went: every live port gets a directory update, unless a hello
    /// or an update already waits in its outbox (encoded when delivered, it will carry this
    /// change too). So an outbox holds at most one of them whatever the churn.
    pub(super) fn directory_changed(&mut self) {
        self.directory = None;
        for slot in self.ports.iter_mut().filter(|s| !s.down) {
            let waiting = slot
                .outbox
                .iter()
                .any(|o| matches!(o, Outbound::Hello | Outbound::Directory));
            if !waiting {
                slot.outbox.push_back(Outbound::Directory);
                self.totals.directory_updates += 1;
            }
        }
    }

    /// The directory sent in hellos and directory updates: every live port (not down: broken,
    /// removed or not yet revived) and every service with its id.
    fn encode_directory(&self) -> Vec<u8> {
        let ports = self
            .ports
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.down)
            .map(|(i, p)| Entry {
                id: i as u32,
                kind: EntryKind::Port,
                name: p.name.as_bytes(),
            });
        let services = self
            .services
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.removed)
            .map(|(i, s)| Entry {
                id: i as u32,
                kind: EntryKind::Service,
                name: s.name.as_bytes(),
            });
        let entries = ports.chain(services);
        let mut out = vec![0; directory::encoded_len(entries.clone())];
        let n = directory::encode(entries, &mut out).unwrap_or(0);
        out.truncate(n);
        out
    }
}
