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
        s.pages_out = s.ledger.pages_lent.saturating_sub(s.ledger.pages_returned);
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

    /// The bytes of `from`'s hand-off message (pages `refs`) were copied into its receiver:
    /// the pages never left, and `from` gets a return notice for them now, as it would when
    /// moved pages come back, so a sender learns of every hand-off message's pages the same
    /// way (a one-way message has no reply to say so).
    pub fn copied(&mut self, from: PortId, refs: &[u64]) {
        // Nothing moved, so no loan changed: only the notices.
        self.queue_notices(message::notices(refs.iter().map(|&r| (from, r)).collect()));
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
        self.queue_notices(notices);
    }

    /// Queues return notices for their lenders, at most [`MAX_NOTICES`] each.
    fn queue_notices(&mut self, notices: Vec<(PortId, Vec<u8>)>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::pages::{PageSpace, PAGE_SIZE};
    use crate::wire::pages;

    const P: u64 = PAGE_SIZE;

    /// Ports 1 and 2 (64 pages each, window 48..56, cap 4); port 3 is no member.
    fn hub(min_bytes: u64) -> Hub {
        let mut h = Hub::new(HandoffConfig { min_bytes });
        for port in [1, 2] {
            let (space, _mem) = PageSpace::create("hub", 64 * P).unwrap();
            let m = Member {
                space,
                window: 48 * P..56 * P,
                cap: 4,
                reserved: vec![(0..8 * P, "the boot area")],
            };
            h.join(port, m).unwrap();
        }
        h
    }

    fn list(refs: &[u64], total: u32) -> Vec<u8> {
        let mut b = vec![0u8; pages::list_len(refs.len())];
        pages::encode(refs, total, &mut b).unwrap();
        b
    }

    #[test]
    fn the_size_rule_and_membership_choose_between_hand_off_and_copy() {
        let mut h = hub(8192);
        let small = h.decide(1, 2, 7, None, &list(&[10 * P], 4096));
        assert!(
            matches!(small, Decision::Copy { total: 4096, .. }),
            "{small:?}"
        );
        let big = h.decide(1, 2, 8, None, &list(&[10 * P, 11 * P], 8192));
        assert!(matches!(big, Decision::HandOff { .. }), "{big:?}");
        let outsider = h.decide(1, 3, 9, None, &list(&[12 * P, 13 * P], 8192));
        assert!(matches!(outsider, Decision::Copy { .. }), "{outsider:?}");
        let s = h.stats();
        assert_eq!(
            (s.copied_small, s.handed_off, s.copied_not_member),
            (1, 1, 1)
        );
        assert_eq!(s.pages_out, 2);
    }

    #[test]
    fn a_copied_messages_pages_are_announced_home_like_returned_ones() {
        let mut h = hub(8192);
        let Decision::Copy { refs, .. } = h.decide(1, 2, 7, None, &list(&[10 * P], 4096)) else {
            panic!("below min_bytes: copied");
        };
        assert!(
            !h.has_notice(1),
            "nothing is announced before the copy is in"
        );
        h.copied(1, &refs);
        let notice = h.take_notice(1).expect("a notice for the copied pages");
        assert_eq!(notice, list(&[10 * P], 0));
        assert_eq!((h.stats().notices, h.stats().pages_out), (1, 0));
    }

    #[test]
    fn a_copy_refuses_what_a_hand_off_would() {
        let mut h = hub(u64::MAX);
        for bad in [
            list(&[P], 10),              // the boot area
            list(&[64 * P], 10),         // outside
            list(&[10 * P, 10 * P], 10), // twice
            list(&[50 * P], 10),         // its own window
            vec![1, 2, 3],               // no list at all
            list(&[], 0),                // nothing
        ] {
            assert!(
                matches!(h.decide(1, 2, 1, None, &bad), Decision::Bad(_)),
                "{bad:?}"
            );
        }
        assert_eq!(h.stats().refused_bad, 6);
        // A non-member's duplicates are caught too.
        let d = h.decide(3, 2, 1, None, &list(&[10 * P, 10 * P], 10));
        assert!(matches!(d, Decision::Bad(_)));
    }

    #[test]
    fn a_full_receiver_gets_copies_and_a_page_out_cannot_go_twice() {
        let mut h = hub(0);
        let four = list(&[10 * P, 11 * P, 12 * P, 13 * P], 100);
        assert!(matches!(
            h.decide(1, 2, 1, None, &four),
            Decision::HandOff { .. }
        ));
        let more = h.decide(1, 2, 2, None, &list(&[14 * P], 100));
        assert!(
            matches!(more, Decision::Copy { .. }),
            "at its cap: {more:?}"
        );
        assert_eq!(h.stats().copied_full, 1);
        // A page lent already is refused, for a copy as for a hand-off.
        let again = h.decide(1, 2, 3, None, &list(&[10 * P], 100));
        assert!(matches!(again, Decision::Bad(_)), "{again:?}");
        assert_eq!(h.held(2), 4);
    }

    #[test]
    fn answers_releases_and_port_down_bring_pages_home_with_notices() {
        let mut h = hub(0);
        let Decision::HandOff { list: got, .. } =
            h.decide(1, 2, 40, Some(3), &list(&[10 * P, 11 * P], 100))
        else {
            panic!("not handed off");
        };
        assert_eq!(pages::page(&got, 0), Ok(48 * P));
        h.answered(2, 40);
        assert_eq!((h.held(2), h.lent(1)), (0, 0));
        assert_eq!(h.stats().returned_on_answer, 1);
        assert_eq!(h.take_notice(1), Some(list(&[10 * P, 11 * P], 0)));
        // A release names window pages; a bad one is refused and counted.
        h.decide(1, 2, 41, None, &list(&[12 * P], 100));
        assert!(h.release(2, &list(&[55 * P], 0)).is_err());
        h.release(2, &list(&[48 * P], 0)).unwrap();
        assert_eq!(h.take_notice(1), Some(list(&[12 * P], 0)));
        assert_eq!(h.stats().releases_refused, 1);
        // The receiver goes down with a page out: it comes home, the lender is told.
        h.decide(1, 2, 42, None, &list(&[13 * P], 100));
        h.port_down(2);
        assert_eq!((h.held(2), h.lent(1)), (0, 0));
        assert!(h.has_notice(1));
        assert_eq!(h.stats().pages_out, 0);
    }

    #[test]
    fn a_request_dispatched_again_takes_its_pages_from_the_first_receiver() {
        let mut h = hub(0);
        let refs = list(&[10 * P], 100);
        assert!(matches!(
            h.decide(1, 2, 5, Some(9), &refs),
            Decision::HandOff { .. }
        ));
        // The same held chain (head 9) under a new id, to the same or another receiver.
        assert!(matches!(
            h.decide(1, 2, 6, Some(9), &refs),
            Decision::HandOff { .. }
        ));
        assert_eq!(h.stats().retaken, 1);
        assert_eq!(h.held(2), 1);
        // The first id's late reply returns nothing; the new one's does.
        h.answered(2, 5);
        assert_eq!(h.held(2), 1);
        h.answered(2, 6);
        assert_eq!(h.held(2), 0);
        // Another chain naming the same pages while they are out is refused.
        h.decide(1, 2, 7, Some(9), &refs);
        assert!(matches!(
            h.decide(1, 2, 8, Some(10), &refs),
            Decision::Bad(_)
        ));
    }

    #[test]
    fn notices_for_a_lender_that_does_not_read_are_bounded() {
        let mut h = hub(0);
        for i in 0..(MAX_NOTICES as u64 + 5) {
            h.decide(1, 2, i, None, &list(&[10 * P], 100));
            h.release(2, &list(&[48 * P], 0)).unwrap();
        }
        let s = h.stats();
        assert_eq!((s.notices, s.notices_dropped), (MAX_NOTICES as u64, 5));
    }
}
