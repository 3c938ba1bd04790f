//! [`HandoffPort`]: a [`NativePort`] whose guest may send page references instead of bytes
//! (seed 004's hand-off, [`crate::wire::pages`]), and whose guest is handed pages that way.
//!
//! The hand-off happens where the switch already copies a message into its receiver, in the
//! receiver's [`Port::deliver`]: the port reads the sender's page list from the held message,
//! asks the [`Hub`] (one per switch, shared by every hand-off port) to move the pages into
//! its guest's receive window, and delivers the list of where they now are. The switch routes,
//! balances, holds and fails over such a message as any other; it never learns that pages
//! moved. The rest of the protocol stays in the ports too:
//!
//! - a message below [`HandoffConfig::min_bytes`], to a receiver at its cap, or between ports
//!   of which one is not a member is **copied**: its referenced bytes are delivered inline as
//!   an ordinary message (cut to a header with `TooLarge` if they do not fit the buffer), and
//!   its sender gets a [`MsgKind::PageReturn`] notice for the pages at once, as it does when
//!   moved pages come back: every hand-off message's pages are announced home once;
//! - a bad list or a bad reference (outside the sender's RAM, in its rings, boot area or
//!   window, lent already, twice in one message) is the **sender's** protocol fault;
//! - a guest's [`MsgKind::PageRelease`] is taken by its own port (never routed): the pages go
//!   home and each lender's port delivers it a [`MsgKind::PageReturn`] notice;
//! - a receiver's reply to a request that carried pages returns them (a reply means the
//!   request's pages are home), and so does a port going down ([`Port::close`]: every page it
//!   holds goes home, every page it lent comes back).
//!
//! A request dispatched again (failover) takes its pages back from the first receiver before
//! they move to the next.

mod hub;

pub use hub::{Decision, HandoffConfig, Hub, HubStats, MAX_NOTICES};

use std::sync::{Arc, Mutex, MutexGuard};

use vm_memory::GuestMemoryBackend;

use super::{Asked, Drain, NativePort, Port, PortId};
use crate::virtio::{ChainError, DeliverError, DeviceError, GuestView, Payload, TxChain};
use crate::wire::pages::MAX_PAGES;
use crate::wire::{MsgHeader, MsgKind, WireError, MAX_PAYLOAD};

/// The `src` of a return notice: the switch's own (it makes such messages, no guest does).
const FROM_SWITCH: PortId = u32::MAX;

/// A hub shared by the hand-off ports of one switch.
pub type SharedHub = Arc<Mutex<Hub>>;

/// A native port that takes part in page hand-off through a shared [`Hub`]. Its own counters
/// (messages handed off or copied into it, releases, notices) are in [`Port::counters`].
pub struct HandoffPort<M> {
    inner: NativePort<M>,
    id: PortId,
    hub: SharedHub,
    /// A page list read from a held message (at most [`Hub::MAX_LIST`] bytes).
    list: Vec<u8>,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    handed_in: u64,
    copied_in: u64,
    releases: u64,
    releases_refused: u64,
    notices_delivered: u64,
}

impl<M> HandoffPort<M> {
    /// Port `id` (the id the switch gives it) over `inner`, sharing `hub`. Its guest's VM must
    /// have joined the hub as member `id` to send or take pages; otherwise its hand-off
    /// messages are copied.
    pub fn new(inner: NativePort<M>, id: PortId, hub: SharedHub) -> Self {
        Self {
            inner: inner.with_handoff(),
            id,
            hub,
            list: vec![0; Hub::MAX_LIST],
            counters: Counters::default(),
        }
    }

    /// The native port inside, for inspection.
    pub fn native(&self) -> &NativePort<M> {
        &self.inner
    }

    fn hub(&self) -> MutexGuard<'_, Hub> {
        // A panic elsewhere cannot leave the ledger half-changed in a way that matters more
        // than stopping the data path would.
        self.hub.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A sender's bad page list, as the switch sees it: the sender's held message does not read.
fn source_fault(len: usize) -> DeliverError {
    DeliverError::Source(ChainError::BufferOutOfRange {
        addr: 0,
        len: len as u32,
    })
}

impl<M: GuestMemoryBackend + Send + 'static> HandoffPort<M> {
    /// Delivers the return notices waiting for this port while its guest has buffers; then
    /// publishes and notifies, since the switch does not know they went in.
    fn deliver_notices(&mut self) -> Result<(), DeviceError> {
        let mut any = false;
        while self.inner.drain().free > 0 {
            let Some(list) = self.hub().take_notice(self.id) else {
                break;
            };
            let mut h = MsgHeader::new(MsgKind::PageReturn, self.id, 0, list.len() as u32);
            h.set_src(FROM_SWITCH);
            match self.inner.deliver(&h, &Payload::Bytes(&list)) {
                Ok(_) => {
                    any = true;
                    self.counters.notices_delivered += 1;
                }
                Err(DeliverError::NoBuffer) => {
                    self.hub().put_back_notice(self.id, list);
                    break;
                }
                Err(DeliverError::Dest(e)) => return Err(e),
                Err(DeliverError::Source(e)) => return Err(e.into()),
            }
        }
        if any {
            self.publish_own();
        }
        Ok(())
    }

    fn publish_own(&mut self) {
        let a = self.inner.publish_sides();
        if a.rx || a.tx {
            self.inner.notify();
        }
    }

    /// Takes a release message from this port's guest: the pages go home, the message goes
    /// back to the guest at once. A bad release is refused and counted (it can only name
    /// pages of this port's own window).
    fn take_release(&mut self, c: &TxChain) -> Result<(), DeviceError> {
        let n = c.header.len() as usize;
        let r = if n <= self.list.len() {
            let n = self.inner.copy_payload(c, &mut self.list)?;
            let list = self.list[..n].to_vec();
            self.hub()
                .release(self.id, &list)
                .map_err(|e| e.to_string())
        } else {
            Err(format!(
                "a release of {n} bytes is longer than any page list"
            ))
        };
        match r {
            Ok(()) => self.counters.releases += 1,
            Err(e) => {
                self.counters.releases_refused += 1;
                log::debug!("port {}: page release refused: {e}", self.id);
            }
        }
        self.inner.release(c)
    }

    /// Delivers a message copied instead of handed off: the bytes of `refs` in the sender's
    /// memory `mem`, copied straight into the receiver's buffer (one copy), inline.
    fn deliver_copy(
        &mut self,
        header: &MsgHeader,
        mem: &GuestView<M>,
        refs: &[u64],
        total: u32,
    ) -> Result<bool, DeliverError> {
        // The device port checks every page reads before it writes (the hub checked members'
        // references; a non-member's are only known not to repeat).
        let payload = Payload::Pages {
            mem,
            pages: refs,
            len: total.min(MAX_PAYLOAD),
        };
        let mut h = *header;
        h.set_handoff(false);
        h.set_len(payload.len());
        let r = self.inner.deliver(&h, &payload);
        if matches!(r, Ok(true)) {
            self.counters.copied_in += 1;
        }
        if r.is_ok() {
            // In (whole, or cut to a `TooLarge` header): the switch is done with the pages.
            self.hub().copied(header.src(), refs);
        }
        r
    }
}

impl<M: GuestMemoryBackend + Send + 'static> Port<M> for HandoffPort<M> {
    fn memory(&self) -> &GuestView<M> {
        self.inner.memory()
    }

    fn take_sent(&mut self, max: usize, sent: &mut Vec<TxChain>) -> Result<usize, DeviceError> {
        let start = sent.len();
        let r = self.inner.take_sent(max, sent);
        let mut i = start;
        let mut released = false;
        while i < sent.len() {
            let c = sent[i];
            match c.header.kind() {
                Some(MsgKind::PageRelease) => {
                    sent.remove(i);
                    released = true;
                    if let Err(e) = self.take_release(&c) {
                        sent.truncate(i);
                        return Err(e);
                    }
                    continue;
                }
                Some(MsgKind::Reply) => self.hub().answered(self.id, c.header.msg_id()),
                _ => {}
            }
            if c.header.handoff()
                && (!matches!(c.header.kind(), Some(MsgKind::Request | MsgKind::OneWay))
                    || c.header.len() as usize > Hub::MAX_LIST)
            {
                // Pages travel with requests and one-way messages only, as one list.
                sent.truncate(i);
                return Err(DeviceError::BadHeader(WireError::UnknownFlags(
                    crate::wire::pages::HANDOFF,
                )));
            }
            i += 1;
        }
        if released {
            self.publish_own();
        }
        self.deliver_notices()?;
        r.map(|_| sent.len() - start)
    }

    fn max_held(&self) -> u32 {
        self.inner.max_held()
    }

    fn copy_payload(&mut self, msg: &TxChain, buf: &mut [u8]) -> Result<usize, DeviceError> {
        self.inner.copy_payload(msg, buf)
    }

    fn release(&mut self, msg: &TxChain) -> Result<(), DeviceError> {
        self.inner.release(msg)
    }

    fn deliver(
        &mut self,
        header: &MsgHeader,
        payload: &Payload<'_, M>,
    ) -> Result<bool, DeliverError> {
        if !header.handoff() {
            return self.inner.deliver(header, payload);
        }
        // Only a sender's held message carries pages (the switch never makes one).
        let Payload::Chain { mem, chain } = payload else {
            return Err(source_fault(0));
        };
        let n = payload.len() as usize;
        if n > self.list.len() {
            return Err(source_fault(n));
        }
        payload
            .copy_to(&mut self.list)
            .map_err(DeliverError::Source)?;
        // Nothing moves unless the guest has a buffer for it.
        if self.inner.drain().free == 0 {
            return Err(DeliverError::NoBuffer);
        }
        let from = header.src();
        let request = (header.kind() == Some(MsgKind::Request)).then_some(chain.head);
        let list = self.list[..n].to_vec();
        let decision = self
            .hub()
            .decide(from, self.id, header.msg_id(), request, &list);
        match decision {
            Decision::HandOff { loan, list } => {
                let mut h = *header;
                h.set_len(list.len() as u32);
                let r = self.inner.deliver(&h, &Payload::Bytes(&list));
                match r {
                    Ok(true) => self.counters.handed_in += 1,
                    _ => self.hub().undo(loan),
                }
                r
            }
            Decision::Copy { refs, total } => self.deliver_copy(header, mem, &refs, total),
            Decision::Bad(e) => {
                log::warn!(
                    "port {from} sent a bad page hand-off to port {}: {e}",
                    self.id
                );
                Err(source_fault(n))
            }
        }
    }

    fn publish(&mut self) -> bool {
        self.inner.publish()
    }

    fn publish_sides(&mut self) -> Asked {
        self.inner.publish_sides()
    }

    fn notify(&self) {
        self.inner.notify();
    }

    fn drain(&self) -> Drain {
        self.inner.drain()
    }

    fn arm_kicks(&mut self, rx_wanted: bool) -> bool {
        let waiting = self.hub().has_notice(self.id);
        let busy = self.inner.arm_kicks(rx_wanted || waiting);
        busy || (waiting && self.inner.drain().free > 0)
    }

    fn disarm_kicks(&mut self) {
        self.inner.disarm_kicks();
    }

    fn run_queue_wait_ns(&self) -> Option<u64> {
        self.inner.run_queue_wait_ns()
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        let (held, lent) = {
            let hub = self.hub();
            (hub.held(self.id), hub.lent(self.id))
        };
        vec![
            ("handoffs_in", c.handed_in),
            ("handoffs_copied_in", c.copied_in),
            ("page_releases", c.releases),
            ("page_releases_refused", c.releases_refused),
            ("page_notices", c.notices_delivered),
            ("pending_pages_held", held),
            ("pending_pages_lent", lent),
        ]
    }

    fn close(&mut self) {
        self.hub().port_down(self.id);
        self.inner.close();
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

const _: () = assert!(Hub::MAX_LIST == crate::wire::pages::list_len(MAX_PAGES));
