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

    /// Borrowed pages `port` holds now.
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
        let (sender, receiver) = self.pair(from, to)?;
        let (sspace, rspace, wstart) = (
            sender.m.space.clone(),
            receiver.m.space.clone(),
            receiver.m.window.start,
        );
        let dst: Vec<u64> = slots
            .iter()
            .map(|&i| wstart + i as u64 * PAGE_SIZE)
            .collect();
        // Record first, so that a failed mapping is undone by the ordinary return path.
        for (&s, &slot) in src.iter().zip(&slots) {
            sender.lent.insert(s, loan);
            receiver.slots[slot] = Some(Slot { from, src: s, loan });
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

    fn pair(&mut self, from: u32, to: u32) -> Result<(&mut State, &mut State), PageError> {
        let [s, r] = self.members.get_disjoint_mut([&from, &to]);
        Ok((
            s.ok_or(PageError::NotMember(from))?,
            r.ok_or(PageError::NotMember(to))?,
        ))
    }

    fn check(&self, from: u32, to: u32, src: &[u64]) -> Result<Vec<usize>, PageError> {
        if from == to {
            return Err(PageError::SelfHandoff(from));
        }
        let s = self.members.get(&from).ok_or(PageError::NotMember(from))?;
        let r = self.members.get(&to).ok_or(PageError::NotMember(to))?;
        if src.len() > MAX_PAGES {
            return Err(PageError::TooMany(src.len()));
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
            if let Some((_, what)) = s.m.reserved.iter().find(|(r, _)| r.contains(&p)) {
                return Err(PageError::Reserved { gpa: p, what });
            }
            if s.lent.contains_key(&p) {
                return Err(PageError::AlreadyOut(p));
            }
            if !seen.insert(p) {
                return Err(PageError::Duplicate(p));
            }
        }
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
    /// notice). Nothing moves unless every page named is held by `port`.
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
        Ok(idx
            .into_iter()
            .filter_map(|i| self.give_back(port, i))
            .collect())
    }

    /// Every page still out under `loan` comes back (its request was answered); returns the
    /// pages, per lender, as [`Ledger::release`] does.
    pub fn return_loan(&mut self, loan: LoanId) -> Vec<(u32, u64)> {
        let Some(&(_, to, _)) = self.loans.get(&loan) else {
            return Vec::new();
        };
        let idx: Vec<usize> = self.members.get(&to).map_or(Vec::new(), |r| {
            (0..r.slots.len())
                .filter(|&i| r.slots[i].as_ref().is_some_and(|s| s.loan == loan))
                .collect()
        });
        idx.into_iter()
            .filter_map(|i| self.give_back(to, i))
            .collect()
    }

    /// `port` went down (or left): every page it holds goes back to its lender, and every page
    /// it lent comes back from its borrower (its RAM may be reused by a fresh driver). Returns
    /// the number of pages moved back.
    pub fn port_down(&mut self, port: u32) -> u64 {
        let Some(s) = self.members.get(&port) else {
            return 0;
        };
        let held: Vec<usize> = (0..s.slots.len())
            .filter(|&i| s.slots[i].is_some())
            .collect();
        let lent: Vec<LoanId> = s.lent.values().copied().collect();
        let mut n = held
            .into_iter()
            .filter_map(|i| self.give_back(port, i))
            .count() as u64;
        for loan in lent {
            n += self.return_loan(loan).len() as u64;
        }
        self.stats.returned_on_down += n;
        n
    }

    /// Removes `port` after returning every page involving it.
    pub fn leave(&mut self, port: u32) {
        self.port_down(port);
        self.members.remove(&port);
    }

    /// Window page `i` of `to` goes back: the receiver's own page returns there, the lender's
    /// page returns to the lender.
    fn give_back(&mut self, to: u32, i: usize) -> Option<(u32, u64)> {
        let r = self.members.get_mut(&to)?;
        let slot = r.slots.get_mut(i)?.take()?;
        r.held -= 1;
        let dst = r.m.window.start + i as u64 * PAGE_SIZE;
        let rspace = r.m.space.clone();
        // The receiver loses the page before the lender gets it back.
        let _ = rspace.restore(dst, 1);
        self.stats.remaps += 2;
        if let Some(s) = self.members.get_mut(&slot.from) {
            s.lent.remove(&slot.src);
            let _ = s.m.space.restore(slot.src, 1);
        }
        if let Some(l) = self.loans.get_mut(&slot.loan) {
            l.2 -= 1;
            if l.2 == 0 {
                self.loans.remove(&slot.loan);
            }
        }
        self.stats.pages_returned += 1;
        Some((slot.from, slot.src))
    }
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
