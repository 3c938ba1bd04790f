//! [`Hub`]: the one owner of page hand-off for a set of ports: the [`Ledger`], the size rule,
//! which loan answers which request, and the return notices waiting for their lenders.

use std::collections::{HashMap, VecDeque};

use crate::port::PortId;
use crate::vmm::pages::message::{self, MessageError};
use crate::vmm::pages::{Ledger, LedgerStats, LoanId, Member, PageError};
use crate::wire::pages::{list_len, MAX_PAGES};

/// Return notices that wait for one port (its guest reads them from its rx queue). A lender
/// that does not read them loses the newest, counted: it only misses news of its own pages.
pub const MAX_NOTICES: usize = 64;

/// Hand-off settings (the topology's `[handoff]` table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandoffConfig {
    /// Messages carrying at least this many bytes are handed off; smaller ones are copied.
    /// `u64::MAX` (the default): always copy, since on the KVM this was measured on
    /// (`kvm_pvm`) a hand-off never beat a copy (`vmq bench handoff`).
    pub min_bytes: u64,
}

impl Default for HandoffConfig {
    fn default() -> Self {
        Self {
            min_bytes: u64::MAX,
        }
    }
}

/// Counters of a [`Hub`] (the ledger's own are in [`HubStats::ledger`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct HubStats {
    /// Messages whose pages moved to the receiver.
    pub handed_off: u64,
    /// Messages whose referenced bytes were copied instead, because they were smaller than
    /// [`HandoffConfig::min_bytes`].
    pub copied_small: u64,
    /// ... because the receiver held its cap of borrowed pages (or its window was full).
    pub copied_full: u64,
    /// ... because the sender or the receiver takes no part in hand-off.
    pub copied_not_member: u64,
    /// Messages refused for a bad page list or bad references (their sender faults).
    pub refused_bad: u64,
    /// Release messages taken.
    pub releases: u64,
    /// Release messages refused (pages the port does not hold, a bad list); counted, no fault.
    pub releases_refused: u64,
    /// Loans returned because the receiver answered the request that carried them.
    pub returned_on_answer: u64,
    /// Loans taken back from a receiver because their request was dispatched again (failover).
    pub retaken: u64,
    /// Return notices queued for lenders.
    pub notices: u64,
    /// Return notices dropped because [`MAX_NOTICES`] already waited for that port.
    pub notices_dropped: u64,
    /// Pages borrowed now, over all ports (0 when everything came back).
    pub pages_out: u64,
    /// The ledger's counters.
    #[serde(skip)]
    pub ledger: LedgerStats,
}

/// What a port delivering a hand-off message does with it ([`Hub::decide`]).
#[derive(Debug)]
pub enum Decision {
    /// The pages moved: deliver this list (where they are now in the receiver). If the
    /// delivery fails, [`Hub::undo`] the loan.
    HandOff {
        /// The loan.
        loan: LoanId,
        /// The receiver's page list.
        list: Vec<u8>,
    },
    /// Copy the bytes: read `total` bytes from the sender's pages `refs`, in order, and
    /// deliver them inline.
    Copy {
        /// The sender's pages.
        refs: Vec<u64>,
        /// Bytes they carry.
        total: u32,
    },
    /// The sender's list or references are bad: the sender broke the protocol.
    Bad(MessageError),
}

/// The owner of page hand-off for the ports that take part (one per switch): the ledger and
/// what ties loans to messages. Shared by those ports ([`super::HandoffPort`]); the switch
/// never sees it.
///
/// Bounds: loans are bounded by the ledger (each member holds at most its cap of pages, so
/// at most the sum of the caps); `answers` and `by_chain` hold one entry per loan of a
/// request; `notices` at most [`MAX_NOTICES`] per port.
#[derive(Default)]
pub struct Hub {
    ledger: Ledger,
    cfg: HandoffConfig,
    /// Loans of requests still out: (receiver, msg_id it was delivered with) -> (loan, lender).
    answers: HashMap<(PortId, u64), (LoanId, PortId)>,
    /// The same loans by the message that carries them: (lender, head of its held chain).
    /// Stable while the request is in flight, also when failover dispatches it again under a
    /// new id.
    by_chain: HashMap<(PortId, u16), LoanId>,
    notices: HashMap<PortId, VecDeque<Vec<u8>>>,
    stats: HubStats,
}

impl Hub {
    /// A hub with no members.
    pub fn new(cfg: HandoffConfig) -> Self {
        Self {
            cfg,
            ..Self::default()
        }
    }

    /// Makes `port` a member (again: whatever involved it before comes back first).
    pub fn join(&mut self, port: PortId, m: Member) -> Result<(), PageError> {
        self.port_down(port);
        self.ledger.join(port, m)
    }

    /// Forbids `port` to hand off `range` (its rings).
    pub fn reserve(&mut self, port: PortId, range: std::ops::Range<u64>, what: &'static str) {
        self.ledger.reserve(port, range, what);
    }

    /// Counters.
    pub fn stats(&self) -> HubStats {
        let mut s = self.stats;
        s.ledger = self.ledger.stats();
        s.pages_out = s.ledger.pages_lent - s.ledger.pages_returned;
        s
    }

    /// Borrowed pages `port` holds now.
    pub fn held(&self, port: PortId) -> u64 {
        self.ledger.held(port)
    }

    /// Own pages `port` has lent and not got back.
    pub fn lent(&self, port: PortId) -> u64 {
        self.ledger.lent(port)
    }

    /// Decides what happens to hand-off message `list` from `from` as it is delivered to `to`
    /// with id `msg_id`. `request`: it is a request, answered by a reply with that id, held
    /// by its sender as chain `head` until then.
    pub fn decide(
        &mut self,
        from: PortId,
        to: PortId,
        msg_id: u64,
        request: Option<u16>,
        list: &[u8],
    ) -> Decision {
        let (refs, total) = match message::decode_list(list) {
            Ok(r) => r,
            Err(e) => return self.bad(e),
        };
        if refs.is_empty() {
            return self.bad(PageError::TooMany(0).into());
        }
        let members = self.ledger.is_member(from) && self.ledger.is_member(to) && from != to;
        if !members || u64::from(total) < self.cfg.min_bytes {
            return self.copy(from, refs, total, members);
        }
        if let Some(head) = request {
            // Dispatched again (its first backend stalled or went down): the pages come back
            // from where they went first, then move on.
            if let Some(loan) = self.by_chain.remove(&(from, head)) {
                self.answers.retain(|_, v| v.0 != loan);
                if !self.ledger.return_loan(loan).is_empty() {
                    self.stats.retaken += 1;
                }
            }
        }
        match self.ledger.hand_off(from, to, &refs) {
            Ok((loan, dst)) => {
                let mut out = vec![0u8; list_len(dst.len())];
                // Cannot fail: `dst` has as many entries as `refs` (at most MAX_PAGES).
                let _ = crate::wire::pages::encode(&dst, total, &mut out);
                if let Some(head) = request {
                    self.answers.insert((to, msg_id), (loan, from));
                    self.by_chain.insert((from, head), loan);
                }
                self.stats.handed_off += 1;
                Decision::HandOff { loan, list: out }
            }
            Err(PageError::ReceiverFull { .. }) => {
                self.stats.copied_full += 1;
                Decision::Copy { refs, total }
            }
            Err(e) => self.bad(e.into()),
        }
    }

    fn copy(&mut self, from: PortId, refs: Vec<u64>, total: u32, members: bool) -> Decision {
        // The same checks as a hand-off where the ledger knows the sender (a page it lent
        // reads as its stand-in, which would pass for data), else no page twice.
        if self.ledger.is_member(from) {
            if let Err(e) = self.ledger.check_refs(from, &refs) {
                return self.bad(e.into());
            }
        } else {
            let mut sorted = refs.clone();
            sorted.sort_unstable();
            if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
                return self.bad(PageError::Duplicate(w[0]).into());
            }
        }
        if members {
            self.stats.copied_small += 1;
        } else {
            self.stats.copied_not_member += 1;
        }
        Decision::Copy { refs, total }
    }

    fn bad(&mut self, e: MessageError) -> Decision {
        self.stats.refused_bad += 1;
        Decision::Bad(e)
    }

    /// A hand-off whose delivery failed: its pages go home, without a notice (the sender
    /// still holds the message and will hear how it ended).
    pub fn undo(&mut self, loan: LoanId) {
        self.ledger.return_loan(loan);
        self.stats.handed_off = self.stats.handed_off.saturating_sub(1);
        self.answers.retain(|_, v| v.0 != loan);
        self.by_chain.retain(|_, v| *v != loan);
    }

    /// `port`'s guest released the pages `list` names; the lenders get return notices.
    pub fn release(&mut self, port: PortId, list: &[u8]) -> Result<(), MessageError> {
        self.stats.releases += 1;
        match message::release(&mut self.ledger, port, list) {
            Ok(n) => {
                self.returned(n);
                Ok(())
            }
            Err(e) => {
                self.stats.releases_refused += 1;
                Err(e)
            }
        }
    }

    /// `port`'s guest answered message `msg_id`: pages of the request it carried go home.
    pub fn answered(&mut self, port: PortId, msg_id: u64) {
        if let Some((loan, _)) = self.answers.remove(&(port, msg_id)) {
            let back = self.ledger.return_loan(loan);
            if !back.is_empty() {
                self.stats.returned_on_answer += 1;
            }
            self.returned(message::notices(back));
        }
    }

    /// `port` went down: every page it holds goes home, every page it lent comes back; the
    /// other lenders get notices, its own waiting notices are dropped.
    pub fn port_down(&mut self, port: PortId) {
        self.notices.remove(&port);
        let back = self.ledger.port_down_pages(port);
        let others = back.into_iter().filter(|&(l, _)| l != port).collect();
        self.returned(message::notices(others));
        self.notices.remove(&port);
    }

    /// Removes `port` after returning every page involving it.
    pub fn leave(&mut self, port: PortId) {
        self.port_down(port);
        self.ledger.leave(port);
    }

    fn returned(&mut self, notices: Vec<(PortId, Vec<u8>)>) {
        let ledger = &self.ledger;
        self.answers.retain(|_, v| ledger.is_out(v.0));
        self.by_chain.retain(|_, v| ledger.is_out(*v));
        for (lender, list) in notices {
            let q = self.notices.entry(lender).or_default();
            if q.len() >= MAX_NOTICES {
                self.stats.notices_dropped += 1;
            } else {
                q.push_back(list);
                self.stats.notices += 1;
            }
        }
    }

    /// Whether a return notice waits for `port`.
    pub fn has_notice(&self, port: PortId) -> bool {
        self.notices.get(&port).is_some_and(|q| !q.is_empty())
    }

    /// The next return notice for `port` (a page list of its own pages).
    pub fn take_notice(&mut self, port: PortId) -> Option<Vec<u8>> {
        self.notices.get_mut(&port)?.pop_front()
    }

    /// Puts back a notice [`Hub::take_notice`] gave that could not be delivered yet.
    pub fn put_back_notice(&mut self, port: PortId, list: Vec<u8>) {
        self.notices.entry(port).or_default().push_front(list);
    }

    /// The longest page list a message can carry.
    pub const MAX_LIST: usize = list_len(MAX_PAGES);
}
