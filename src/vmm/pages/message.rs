//! The glue between a hand-off message's page list ([`crate::wire::pages`]) and the
//! [`Ledger`]: what the port that delivers a [`HANDOFF`](crate::wire::pages::HANDOFF) message,
//! and the port that takes a [`KIND_RELEASE`](crate::wire::pages::KIND_RELEASE) message, call.
//! The list bytes come from a guest and are decoded here, never trusted.

use super::{Ledger, LoanId, PageError};
use crate::wire::pages::{self, ListError, MAX_PAGES};

/// Why a page-list message was refused.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// The list itself does not decode.
    #[error("malformed page list: {0:?}; send count, total_len, then page-aligned addresses")]
    List(ListError),
    /// The ledger refused the references.
    #[error(transparent)]
    Pages(#[from] PageError),
}

impl From<ListError> for MessageError {
    fn from(e: ListError) -> Self {
        Self::List(e)
    }
}

fn decode(list: &[u8]) -> Result<(Vec<u64>, u32), MessageError> {
    let (count, total) = pages::decode_header(list)?;
    let refs = (0..count)
        .map(|i| pages::page(list, i))
        .collect::<Result<Vec<u64>, _>>()?;
    Ok((refs, total))
}

/// Moves the pages `list` (the sender's payload) names from `from` to `to`; returns the loan
/// and the list to deliver to the receiver (the same `total_len`, the pages' new addresses).
pub fn hand_off(
    ledger: &mut Ledger,
    from: u32,
    to: u32,
    list: &[u8],
) -> Result<(LoanId, Vec<u8>), MessageError> {
    let (refs, total) = decode(list)?;
    let (loan, dst) = ledger.hand_off(from, to, &refs)?;
    let mut out = vec![0u8; pages::list_len(dst.len())];
    // Cannot fail: `dst` has as many entries as `refs`, at most MAX_PAGES, and `out` fits them.
    let _ = pages::encode(&dst, total, &mut out);
    Ok((loan, out))
}

/// Gives back the pages a receiver's release message names; returns the
/// [`KIND_RETURN`](crate::wire::pages::KIND_RETURN) notices to send, one page list per lender.
pub fn release(
    ledger: &mut Ledger,
    port: u32,
    list: &[u8],
) -> Result<Vec<(u32, Vec<u8>)>, MessageError> {
    let (refs, _) = decode(list)?;
    Ok(notices(ledger.release(port, &refs)?))
}

/// Decodes a page list: its references (page aligned, at most [`MAX_PAGES`]) and `total_len`.
pub fn decode_list(list: &[u8]) -> Result<(Vec<u64>, u32), MessageError> {
    decode(list)
}

/// The [`KIND_RETURN`](crate::wire::pages::KIND_RETURN) notices for pages that came back
/// (`(lender, page)` pairs, as [`Ledger::release`], [`Ledger::return_loan`] and
/// [`Ledger::port_down_pages`] return them): one page list per lender and per
/// [`MAX_PAGES`] pages.
pub fn notices(mut back: Vec<(u32, u64)>) -> Vec<(u32, Vec<u8>)> {
    back.sort_unstable();
    let mut out: Vec<(u32, Vec<u8>)> = Vec::new();
    for chunk in back.chunk_by(|a, b| a.0 == b.0) {
        let addrs: Vec<u64> = chunk.iter().map(|&(_, a)| a).collect();
        for part in addrs.chunks(MAX_PAGES) {
            let mut buf = vec![0u8; pages::list_len(part.len())];
            let _ = pages::encode(part, 0, &mut buf);
            out.push((chunk[0].0, buf));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::pages::{Member, PageSpace, PAGE_SIZE};

    const P: u64 = PAGE_SIZE;

    fn ledger() -> Ledger {
        let mut l = Ledger::new();
        for port in [1, 2] {
            let (space, _mem) = PageSpace::create("msg", 64 * P).unwrap();
            let m = Member {
                space,
                window: 48 * P..56 * P,
                cap: 8,
                reserved: vec![(0..8 * P, "the boot area")],
            };
            l.join(port, m).unwrap();
        }
        l
    }

    fn list(refs: &[u64], total: u32) -> Vec<u8> {
        let mut b = vec![0u8; pages::list_len(refs.len())];
        pages::encode(refs, total, &mut b).unwrap();
        b
    }

    #[test]
    fn a_message_moves_its_pages_and_a_release_names_the_lender() {
        let mut l = ledger();
        let (_, out) = hand_off(&mut l, 1, 2, &list(&[10 * P, 11 * P], 5000)).unwrap();
        assert_eq!(pages::decode_header(&out), Ok((2, 5000)));
        assert_eq!(pages::page(&out, 1), Ok(49 * P));
        let notices = release(&mut l, 2, &list(&[48 * P, 49 * P], 0)).unwrap();
        assert_eq!(notices, vec![(1, list(&[10 * P, 11 * P], 0))]);
    }

    #[test]
    fn hostile_lists_are_refused_before_anything_moves() {
        let mut l = ledger();
        let mut long = list(&[10 * P], 4096);
        long[4..8].copy_from_slice(&4097u32.to_le_bytes());
        let mut many = list(&[10 * P], 0);
        many[0..4].copy_from_slice(&1000u32.to_le_bytes());
        for bad in [
            vec![1u8, 0, 0],
            list(&[10 * P], 0)[..12].to_vec(),
            long,
            many,
            list(&[10 * P + 1], 0),
            list(&[64 * P], 0),
            list(&[P], 0),
            list(&[10 * P, 10 * P], 0),
        ] {
            assert!(hand_off(&mut l, 1, 2, &bad).is_err(), "{bad:?}");
        }
        assert_eq!((l.lent(1), l.held(2)), (0, 0));
        assert!(release(&mut l, 2, &list(&[48 * P], 0)).is_err());
    }
}
