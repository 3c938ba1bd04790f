//! [`Ledger`]: which page of which VM is where, and whether a hand-off may happen.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;

use super::{PageError, PageSpace, PAGE_SIZE};
use crate::wire::pages::MAX_PAGES;

/// Names one hand-off (one message's pages) until all its pages are back.
pub type LoanId = u64;

/// How a VM takes part in hand-off.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its RAM.
    pub space: PageSpace,
    /// Where borrowed pages land in its guest-physical space (page aligned). It can never hand
    /// these pages off itself.
    pub window: Range<u64>,
    /// Most pages it may hold borrowed at once (at most the window's pages).
    pub cap: u64,
    /// Ranges it may never hand off (its rings, the boot area below the image); more can be
    /// added with [`Ledger::reserve`].
    pub reserved: Vec<(Range<u64>, &'static str)>,
}

/// Counters of a ledger (returned by [`Ledger::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerStats {
    /// Messages whose pages moved.
    pub handoffs: u64,
    /// Pages moved to a receiver.
    pub pages_lent: u64,
    /// Pages that came back (release, answer, port down).
    pub pages_returned: u64,
    /// `mmap` calls made (runs of consecutive pages share one).
    pub remaps: u64,
    /// Hand-offs refused because the receiver held its cap.
    pub refused_full: u64,
    /// Hand-offs refused for a bad reference (outside, reserved, out already, duplicate, too
    /// many).
    pub refused_bad: u64,
    /// Pages returned because a port went down.
    pub returned_on_down: u64,
}

struct Slot {
    from: u32,
    src: u64,
    loan: LoanId,
    /// The lender took its page back (its port went down) while the receiver still held the
    /// slot: the receiver's own page is back in the window, and the slot stays taken until
    /// the receiver releases it or goes down, so that no other message's page lands at an
    /// address the receiver may still read or release for the old one.
    gone: bool,
}

struct State {
    m: Member,
    /// Its own pages now lent: source address -> loan.
    lent: BTreeMap<u64, LoanId>,
    /// Its window pages now holding borrowed pages, by window page index.
    slots: Vec<Option<Slot>>,
    held: u64,
}

/// Which page of which VM is where, for the VMs that take part in page hand-off (at most one
/// ledger per set of VMs that hand pages to each other).
///
/// Bounds: a member holds at most its `cap` borrowed pages (at most its window's pages); a
/// message carries at most [`MAX_PAGES`]; so the ledger keeps at most the sum of the caps in
/// loans. Every reference a guest gives is checked: inside its RAM, page aligned, not reserved,
/// not in its own window, not out already, not twice in one message.
#[derive(Default)]
pub struct Ledger {
    members: HashMap<u32, State>,
    loans: HashMap<LoanId, (u32, u32, u64)>,
    next_loan: LoanId,
    stats: LedgerStats,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `port` a member. Its window must be page aligned pages of its RAM; `cap` is
    /// clamped to the window's pages.
    pub fn join(&mut self, port: u32, mut m: Member) -> Result<(), PageError> {
        let pages = (m.window.end.saturating_sub(m.window.start)) / PAGE_SIZE;
        m.space.check(m.window.start, pages)?;
        m.cap = m.cap.min(pages);
        self.port_down(port);
        self.members.insert(
            port,
            State {
                m,
                lent: BTreeMap::new(),
                slots: (0..pages).map(|_| None).collect(),
                held: 0,
            },
        );
        Ok(())
    }

    /// Forbids `port` to hand off `range` (say, its rings once its driver placed them).
    pub fn reserve(&mut self, port: u32, range: Range<u64>, what: &'static str) {
        if let Some(s) = self.members.get_mut(&port) {
            s.m.reserved.push((range, what));
        }
    }

    /// Counters.
    pub fn stats(&self) -> LedgerStats {
        self.stats
    }

    /// Window pages `port` holds now: borrowed pages, and slots whose lender took its page
    /// back while `port` held it (until `port` releases them; they count against its cap).
    pub fn held(&self, port: u32) -> u64 {
        self.members.get(&port).map_or(0, |s| s.held)
    }

    /// Own pages `port` has lent and not got back.
    pub fn lent(&self, port: u32) -> u64 {
        self.members.get(&port).map_or(0, |s| s.lent.len() as u64)
    }

    /// Hands pages `src` of `from` to `to`: checks every reference, finds room in the
    /// receiver's window, moves the pages, and returns the loan and where each page now is in
    /// the receiver (in the order of `src`). Nothing moves unless everything is allowed.
    pub fn hand_off(
        &mut self,
        from: u32,
        to: u32,
        src: &[u64],
    ) -> Result<(LoanId, Vec<u64>), PageError> {
        let r = self.check(from, to, src);
        if let Err(e) = &r {
            if matches!(e, PageError::ReceiverFull { .. }) {
                self.stats.refused_full += 1;
            } else {
                self.stats.refused_bad += 1;
            }
        }
        let slots = r?;
        let loan = self.next_loan;
        self.next_loan += 1;
        // Record first, so that a failed mapping is undone by the ordinary return path.
        let sender = self
            .members
            .get_mut(&from)
            .ok_or(PageError::NotMember(from))?;
        let sspace = sender.m.space.clone();
        for &s in src {
            sender.lent.insert(s, loan);
        }
        let receiver = self.members.get_mut(&to).ok_or(PageError::NotMember(to))?;
        let (rspace, wstart) = (receiver.m.space.clone(), receiver.m.window.start);
        let dst: Vec<u64> = slots
            .iter()
            .map(|&i| wstart + i as u64 * PAGE_SIZE)
            .collect();
        for (&s, &slot) in src.iter().zip(&slots) {
            receiver.slots[slot] = Some(Slot {
                from,
                src: s,
                loan,
                gone: false,
            });
        }
        receiver.held += src.len() as u64;
        self.loans.insert(loan, (from, to, src.len() as u64));
        let mut remaps = 0;
        let mut res = Ok(());
        for (s, d, n) in runs(src, &dst) {
            remaps += 2;
            if let Err(e) = sspace.lend(s, &rspace, d, n) {
                res = Err(e);
                break;
            }
        }
        self.stats.remaps += remaps;
        if let Err(e) = res {
            self.return_loan(loan);
            return Err(e);
        }
        self.stats.handoffs += 1;
        self.stats.pages_lent += src.len() as u64;
        Ok((loan, dst))
    }

    /// Whether `port` is a member.
    pub fn is_member(&self, port: u32) -> bool {
        self.members.contains_key(&port)
    }

    /// Whether any page of `loan` is still out.
    pub fn is_out(&self, loan: LoanId) -> bool {
        self.loans.contains_key(&loan)
    }

    /// Checks references `src` of sender `from` as [`Ledger::hand_off`] would, without a
    /// receiver and without moving anything: for a message whose bytes are copied instead
    /// (below the size a hand-off pays off at, or to a receiver at its cap). Refusals count in
    /// `refused_bad`.
    pub fn check_refs(&mut self, from: u32, src: &[u64]) -> Result<(), PageError> {
        let s = self.members.get(&from).ok_or(PageError::NotMember(from))?;
        let r = Self::check_sender(s, src);
        if r.is_err() {
            self.stats.refused_bad += 1;
        }
        r
    }

    fn check(&self, from: u32, to: u32, src: &[u64]) -> Result<Vec<usize>, PageError> {
        if from == to {
            return Err(PageError::SelfHandoff(from));
        }
        let s = self.members.get(&from).ok_or(PageError::NotMember(from))?;
        let r = self.members.get(&to).ok_or(PageError::NotMember(to))?;
        Self::check_sender(s, src)?;
        Self::check_receiver(r, to, src)
    }

    fn check_sender(s: &State, src: &[u64]) -> Result<(), PageError> {
        if src.len() > MAX_PAGES {
            return Err(PageError::TooMany(src.len()));
        }
        if src.is_empty() {
            // Nothing to lend: a loan of no pages would never be returned, so never recorded.
            return Err(PageError::OutOfRange {
                gpa: 0,
                pages: 0,
                size: s.m.space.size(),
            });
        }
        let mut seen = BTreeSet::new();
        for &p in src {
            s.m.space.check(p, 1)?;
            if s.m.window.contains(&p) {
                return Err(PageError::Reserved {
                    gpa: p,
                    what: "its receive window",
                });
            }
            // Any overlap: a ring need not start on a page boundary. `p + PAGE_SIZE` fits,
            // `space.check` having placed the page inside the VM's RAM.
            let overlaps = |r: &Range<u64>| r.start < p + PAGE_SIZE && p < r.end;
            if let Some((_, what)) = s.m.reserved.iter().find(|(r, _)| overlaps(r)) {
                return Err(PageError::Reserved { gpa: p, what });
            }
            if s.lent.contains_key(&p) {
                return Err(PageError::AlreadyOut(p));
            }
            if !seen.insert(p) {
                return Err(PageError::Duplicate(p));
            }
        }
        Ok(())
    }

    fn check_receiver(r: &State, to: u32, src: &[u64]) -> Result<Vec<usize>, PageError> {
        let wanted = src.len() as u64;
        let full = PageError::ReceiverFull {
            port: to,
            held: r.held,
            cap: r.m.cap,
            wanted,
        };
        if r.held + wanted > r.m.cap {
            return Err(full);
        }
        // First fit of a free run (one mmap per message), else any free slots.
        let n = src.len();
        let mut run = 0;
        for (i, sl) in r.slots.iter().enumerate() {
            run = if sl.is_none() { run + 1 } else { 0 };
            if run == n {
                return Ok((i + 1 - n..=i).collect());
            }
        }
        let free: Vec<usize> = (0..r.slots.len())
            .filter(|&i| r.slots[i].is_none())
            .take(n)
            .collect();
        if free.len() < n {
            return Err(full);
        }
        Ok(free)
    }

    /// `port` gives back borrowed pages `gpas` (addresses in its window); returns, for each
    /// lender, the pages it got back (for its [`KIND_RETURN`](crate::wire::pages::KIND_RETURN)
    /// notice). Nothing moves unless every page named is held by `port`. A slot whose lender
    /// took its page back already is freed without a return (the lender has it).
    pub fn release(&mut self, port: u32, gpas: &[u64]) -> Result<Vec<(u32, u64)>, PageError> {
        let r = self.members.get(&port).ok_or(PageError::NotMember(port))?;
        let mut idx = Vec::with_capacity(gpas.len());
        for &g in gpas {
            let i = g
                .checked_sub(r.m.window.start)
                .filter(|o| o % PAGE_SIZE == 0)
                .map(|o| (o / PAGE_SIZE) as usize)
                .filter(|&i| r.slots.get(i).is_some_and(|s| s.is_some()))
                .ok_or(PageError::NotHeld { port, gpa: g })?;
            if idx.contains(&i) {
                return Err(PageError::Duplicate(g));
            }
            idx.push(i);
        }
        Ok(self.give_back(port, idx, Keep::Free))
    }

    /// Every page still out under `loan` comes back (its request was answered); returns the
    /// pages, per lender, as [`Ledger::release`] does.
    pub fn return_loan(&mut self, loan: LoanId) -> Vec<(u32, u64)> {
        let Some((to, idx)) = self.loan_slots(loan) else {
            return Vec::new();
        };
        self.give_back(to, idx, Keep::Free)
    }

    /// The receiver of `loan` and its window slots holding the loan's pages (`None` when the
    /// loan is back already).
    fn loan_slots(&self, loan: LoanId) -> Option<(u32, Vec<usize>)> {
        let &(_, to, _) = self.loans.get(&loan)?;
        let idx = self.members.get(&to).map_or(Vec::new(), |r| {
            (0..r.slots.len())
                .filter(|&i| r.slots[i].as_ref().is_some_and(|s| s.loan == loan))
                .collect()
        });
        Some((to, idx))
    }

    /// `loan`'s lender went down: its pages come back, and the receiver's slots stay taken
    /// (`Slot::gone`) until the receiver releases them.
    fn take_back_loan(&mut self, loan: LoanId) -> Vec<(u32, u64)> {
        let Some((to, idx)) = self.loan_slots(loan) else {
            return Vec::new();
        };
        self.give_back(to, idx, Keep::Slots)
    }

    /// `port` went down (or left): every page it holds goes back to its lender, and every page
    /// it lent comes back from its borrower (its RAM may be reused by a fresh driver; the
    /// borrower's window slots stay taken until it releases them, see `Slot::gone`). Returns
    /// the number of pages moved back.
    pub fn port_down(&mut self, port: u32) -> u64 {
        self.port_down_pages(port).len() as u64
    }

    /// [`Ledger::port_down`], returning the pages that went home per lender (as
    /// [`Ledger::release`] does), for the lenders' return notices.
    pub fn port_down_pages(&mut self, port: u32) -> Vec<(u32, u64)> {
        let Some(s) = self.members.get(&port) else {
            return Vec::new();
        };
        let held: Vec<usize> = (0..s.slots.len())
            .filter(|&i| s.slots[i].is_some())
            .collect();
        let lent: BTreeSet<LoanId> = s.lent.values().copied().collect();
        let mut back = self.give_back(port, held, Keep::Free);
        for loan in lent {
            back.extend(self.take_back_loan(loan));
        }
        self.stats.returned_on_down += back.len() as u64;
        back
    }

    /// Removes `port` after returning every page involving it.
    pub fn leave(&mut self, port: u32) {
        self.port_down(port);
        self.members.remove(&port);
    }

    /// Window pages `idx` of `to` go back: the receiver's own pages return there first, then
    /// the lenders' pages return to the lenders (runs of consecutive pages share one `mmap`).
    /// With [`Keep::Slots`] the slots stay taken (marked gone); a gone slot freed returns
    /// nothing (its lender has its page).
    fn give_back(&mut self, to: u32, mut idx: Vec<usize>, keep: Keep) -> Vec<(u32, u64)> {
        idx.sort_unstable();
        idx.dedup();
        let Some(r) = self.members.get_mut(&to) else {
            return Vec::new();
        };
        idx.retain(|&i| r.slots.get(i).is_some_and(Option::is_some));
        let (rspace, wstart) = (r.m.space.clone(), r.m.window.start);
        let mut back: Vec<(u32, u64, LoanId)> = Vec::with_capacity(idx.len());
        let mut freed = 0;
        let mut remaps = 0;
        for run in idx.chunk_by(|a, b| *b == a + 1) {
            remaps += 1;
            // Until the receiver's own pages are back in its window, the borrowed ones stay
            // mapped there and counted out: the lender does not get them back (a page is
            // never writable by two guests at once), and a later release or port-down tries
            // again.
            if rspace
                .restore(wstart + run[0] as u64 * PAGE_SIZE, run.len() as u64)
                .is_err()
            {
                continue;
            }
            for &i in run {
                let Some(slot) = r.slots[i].as_mut() else {
                    continue;
                };
                if !slot.gone {
                    back.push((slot.from, slot.src, slot.loan));
                }
                match keep {
                    Keep::Slots => slot.gone = true,
                    Keep::Free => {
                        r.slots[i] = None;
                        freed += 1;
                    }
                }
            }
        }
        r.held -= freed;
        let mut by_lender: Vec<(u32, u64)> = back.iter().map(|&(f, s, _)| (f, s)).collect();
        by_lender.sort_unstable();
        for run in by_lender.chunk_by(|a, b| a.0 == b.0 && b.1 == a.1 + PAGE_SIZE) {
            let (from, start) = run[0];
            if let Some(s) = self.members.get_mut(&from) {
                for &(_, p) in run {
                    s.lent.remove(&p);
                }
                // A failed restore leaves the lender its zero stand-in (its data is safe in
                // the file, mapped nowhere else): only the lender is short of its bytes.
                let _ = s.m.space.restore(start, run.len() as u64);
                remaps += 1;
            }
        }
        for &(_, _, loan) in &back {
            if let Some(l) = self.loans.get_mut(&loan) {
                l.2 -= 1;
                if l.2 == 0 {
                    self.loans.remove(&loan);
                }
            }
        }
        self.stats.remaps += remaps;
        self.stats.pages_returned += back.len() as u64;
        back.into_iter().map(|(f, s, _)| (f, s)).collect()
    }
}

/// Whether [`Ledger::give_back`] frees the receiver's window slots.
#[derive(Clone, Copy)]
enum Keep {
    /// Free them (a release, an answer, the receiver going down).
    Free,
    /// Keep them taken, marked gone (the lender went down).
    Slots,
}

/// Runs of pages consecutive in both lists: `(src, dst, pages)`.
fn runs(src: &[u64], dst: &[u64]) -> Vec<(u64, u64, u64)> {
    let mut out: Vec<(u64, u64, u64)> = Vec::new();
    for (&s, &d) in src.iter().zip(dst) {
        match out.last_mut() {
            Some((s0, d0, n)) if *s0 + *n * PAGE_SIZE == s && *d0 + *n * PAGE_SIZE == d => *n += 1,
            _ => out.push((s, d, 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::*;

    const SIZE: u64 = 64 * PAGE_SIZE;
    const WIN: Range<u64> = 48 * PAGE_SIZE..56 * PAGE_SIZE;
    const RING: Range<u64> = 4 * PAGE_SIZE..6 * PAGE_SIZE;

    /// A memfd-backed RAM of 64 pages (no KVM needed: the mapping is what moves).
    fn ram(name: &str) -> (PageSpace, GuestMemoryMmap) {
        PageSpace::create(name, SIZE).unwrap()
    }

    fn rd(m: &GuestMemoryMmap, a: u64) -> u64 {
        m.read_obj(GuestAddress(a)).unwrap()
    }

    fn wr(m: &GuestMemoryMmap, a: u64, v: u64) {
        m.write_obj(v, GuestAddress(a)).unwrap()
    }

    /// Ports 1 and 2, each with a window of 8 pages (cap `cap`) and a reserved ring.
    fn two(cap: u64) -> (Ledger, GuestMemoryMmap, GuestMemoryMmap) {
        let mut l = Ledger::new();
        let (sa, ma) = ram("a");
        let (sb, mb) = ram("b");
        for (p, s) in [(1, sa), (2, sb)] {
            l.join(
                p,
                Member {
                    space: s,
                    window: WIN,
                    cap,
                    reserved: vec![(RING, "its rings")],
                },
            )
            .unwrap();
        }
        for i in 0..SIZE / PAGE_SIZE {
            wr(&ma, i * PAGE_SIZE, 0xa000 + i);
            wr(&mb, i * PAGE_SIZE, 0xb000 + i);
        }
        (l, ma, mb)
    }

    const P: u64 = PAGE_SIZE;

    #[test]
    fn pages_move_without_copy_and_come_back_on_release() {
        let (mut l, ma, mb) = two(8);
        let (_, dst) = l.hand_off(1, 2, &[10 * P, 11 * P, 20 * P]).unwrap();
        assert_eq!(dst, vec![WIN.start, WIN.start + P, WIN.start + 2 * P]);
        assert_eq!(rd(&mb, WIN.start), 0xa000 + 10);
        assert_eq!(rd(&mb, WIN.start + 2 * P), 0xa000 + 20);
        assert_eq!(rd(&ma, 10 * P), 0, "the sender sees a zero stand-in");
        // The sender writes to a page it handed off: the receiver must not see it.
        wr(&ma, 10 * P, 666);
        assert_eq!(rd(&mb, WIN.start), 0xa000 + 10);
        // The receiver writes; the page comes back with that write.
        wr(&mb, WIN.start + 8, 7);
        assert_eq!(l.stats().remaps, 4, "two runs, two mmaps each");
        let back = l.release(2, &[WIN.start, WIN.start + P]).unwrap();
        assert_eq!(back, vec![(1, 10 * P), (1, 11 * P)]);
        assert_eq!((rd(&ma, 10 * P), rd(&ma, 10 * P + 8)), (0xa000 + 10, 7));
        assert_eq!(
            rd(&mb, WIN.start),
            0xb000 + 48,
            "the receiver's own page is back"
        );
        assert_eq!((l.held(2), l.lent(1)), (1, 1));
    }

    #[test]
    fn an_empty_list_and_a_page_a_reserved_range_only_overlaps_are_refused() {
        let (mut l, ma, _mb) = two(8);
        assert!(matches!(
            l.hand_off(1, 2, &[]),
            Err(PageError::OutOfRange { pages: 0, .. })
        ));
        l.reserve(1, 30 * P + 0x800..30 * P + 0xa00, "a ring inside a page");
        assert!(matches!(
            l.hand_off(1, 2, &[30 * P]),
            Err(PageError::Reserved { .. })
        ));
        assert_eq!(rd(&ma, 30 * P), 0xa000 + 30, "nothing moved");
        assert_eq!(l.held(2), 0);
    }

    #[test]
    fn hostile_references_are_refused_and_nothing_moves() {
        let (mut l, ma, _mb) = two(8);
        let bad: [(&[u64], &str); 7] = [
            (&[SIZE], "outside"),
            (&[!(P - 1)], "far outside"),
            (&[10 * P + 8], "unaligned"),
            (&[RING.start], "its rings"),
            (&[WIN.start], "its window"),
            (&[10 * P, 12 * P, 10 * P], "duplicate"),
            (&[0; MAX_PAGES + 1], "too many"),
        ];
        for (refs, what) in bad {
            assert!(l.hand_off(1, 2, refs).is_err(), "{what}");
        }
        assert!(matches!(
            l.hand_off(1, 2, &[10 * P, 12 * P, 10 * P]),
            Err(PageError::Duplicate(_))
        ));
        assert!(matches!(
            l.hand_off(1, 1, &[10 * P]),
            Err(PageError::SelfHandoff(1))
        ));
        assert!(matches!(
            l.hand_off(1, 9, &[10 * P]),
            Err(PageError::NotMember(9))
        ));
        assert_eq!(rd(&ma, 10 * P), 0xa000 + 10, "nothing moved");
        assert_eq!(l.stats().refused_bad, 10);
        // A page handed off already.
        l.hand_off(1, 2, &[10 * P]).unwrap();
        assert!(matches!(
            l.hand_off(1, 2, &[12 * P, 10 * P]),
            Err(PageError::AlreadyOut(_))
        ));
        assert_eq!(rd(&ma, 12 * P), 0xa000 + 12);
        // A page handed to it cannot be handed on (it is in its window).
        assert!(matches!(
            l.hand_off(2, 1, &[WIN.start]),
            Err(PageError::Reserved { .. })
        ));
        // Releases of pages it does not hold, or twice.
        assert!(matches!(
            l.release(2, &[WIN.start + P]),
            Err(PageError::NotHeld { .. })
        ));
        assert!(matches!(
            l.release(2, &[WIN.start, WIN.start]),
            Err(PageError::Duplicate(_))
        ));
        assert!(matches!(
            l.release(2, &[WIN.start + 1]),
            Err(PageError::NotHeld { .. })
        ));
        assert_eq!(l.held(2), 1);
    }

    #[test]
    fn a_receiver_that_keeps_pages_is_capped_and_loses_them_when_its_port_goes_down() {
        let (mut l, ma, mb) = two(4);
        l.hand_off(1, 2, &[10 * P, 11 * P, 12 * P]).unwrap();
        let e = l.hand_off(1, 2, &[13 * P, 14 * P]).unwrap_err();
        assert!(
            matches!(
                e,
                PageError::ReceiverFull {
                    held: 3,
                    cap: 4,
                    wanted: 2,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(l.stats().refused_full, 1);
        assert_eq!(
            rd(&ma, 13 * P),
            0xa000 + 13,
            "refused pages stay with the sender"
        );
        l.hand_off(1, 2, &[13 * P]).unwrap();
        assert_eq!(l.port_down(2), 4);
        assert_eq!((l.held(2), l.lent(1)), (0, 0));
        for i in 10..14 {
            assert_eq!(rd(&ma, i * P), 0xa000 + i);
        }
        assert_eq!(rd(&mb, WIN.start), 0xb000 + 48);
        assert_eq!(l.stats().returned_on_down, 4);
        // The window is free again.
        l.hand_off(1, 2, &[10 * P, 11 * P, 12 * P, 13 * P]).unwrap();
    }

    #[test]
    fn pages_come_back_when_the_request_is_answered_or_the_sender_resets() {
        let (mut l, ma, mb) = two(8);
        let (loan, _) = l.hand_off(1, 2, &[10 * P, 11 * P]).unwrap();
        let (loan2, _) = l.hand_off(1, 2, &[20 * P]).unwrap();
        // The receiver released one page of the first loan already.
        l.release(2, &[WIN.start + P]).unwrap();
        assert_eq!(l.return_loan(loan), vec![(1, 10 * P)]);
        assert!(l.return_loan(loan).is_empty(), "a loan returns once");
        assert_eq!(rd(&ma, 10 * P), 0xa000 + 10);
        assert_eq!(l.lent(1), 1);
        // The sender's port resets with a page out: the page is taken back from the receiver.
        assert_eq!(l.port_down(1), 1);
        assert_eq!(rd(&ma, 20 * P), 0xa000 + 20);
        assert_eq!(rd(&mb, WIN.start + 2 * P), 0xb000 + 50);
        assert!(l.return_loan(loan2).is_empty());
        let s = l.stats();
        assert_eq!((s.pages_lent, s.pages_returned), (3, 3));
    }

    /// The receiver may still read or release a message whose lender went down: its window
    /// slot stays taken (its own page back in it) until it does, so no other message's page
    /// lands where the old list points, and its late release frees the slot without
    /// returning anything (and without taking the new message's pages).
    #[test]
    fn a_slot_whose_lender_went_down_stays_taken_until_the_receiver_releases_it() {
        let (mut l, ma, mb) = two(2);
        let (_, dst) = l.hand_off(1, 2, &[10 * P]).unwrap();
        assert_eq!(l.port_down_pages(1), vec![(1, 10 * P)]);
        assert_eq!(rd(&ma, 10 * P), 0xa000 + 10, "the lender has its page");
        assert_eq!(
            rd(&mb, dst[0]),
            0xb000 + 48,
            "the receiver sees its own page"
        );
        assert_eq!((l.held(2), l.lent(1)), (1, 0), "the slot stays taken");
        // The lender comes back and lends again: the page lands in the other slot, and with
        // one slot still taken the cap of 2 refuses a second page.
        let (_, dst2) = l.hand_off(1, 2, &[11 * P]).unwrap();
        assert_ne!(dst2[0], dst[0], "never where the old list points");
        assert!(matches!(
            l.hand_off(1, 2, &[12 * P]),
            Err(PageError::ReceiverFull { held: 2, .. })
        ));
        // The late release of the old message frees its slot and returns nothing.
        assert_eq!(l.release(2, &[dst[0]]).unwrap(), vec![]);
        assert_eq!(
            rd(&mb, dst2[0]),
            0xa000 + 11,
            "the new message's page is still there"
        );
        assert_eq!((l.held(2), l.lent(1)), (1, 1));
        assert_eq!(l.release(2, &[dst2[0]]).unwrap(), vec![(1, 11 * P)]);
        assert_eq!(l.held(2), 0);
    }
}
