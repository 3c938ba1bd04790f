//! The page-reference payload of a hand-off message (no_std).
//!
//! A message whose header carries [`HANDOFF`] has no bytes of its own: its payload is a list of
//! page references, and the pages move, not the bytes. The same list format serves the three
//! messages of a hand-off:
//!
//! | message | from | pages named |
//! |---------|------|-------------|
//! | request / one-way with [`HANDOFF`] | sender | pages of the sender's RAM to hand over |
//! | the same, delivered | switch | where the pages now are in the receiver's RAM (its receive window) |
//! | [`KIND_RELEASE`] | receiver | pages of its window it gives back |
//! | [`KIND_RETURN`] | switch | pages of the sender's RAM that came back |
//!
//! Format (little endian): `count: u32`, `total_len: u32` (bytes of data the pages carry, at
//! most `count * PAGE_SIZE`), then `count` guest-physical page addresses (`u64`, 4096-byte
//! aligned). At most [`MAX_PAGES`] references (1 MiB).

/// Header flag: the payload is a page-reference list ([`encode`]), not data.
pub const HANDOFF: u8 = 1 << 2;
/// `MsgKind` number reserved for a receiver's release of borrowed pages.
pub const KIND_RELEASE: u8 = 7;
/// `MsgKind` number reserved for the switch's notice that lent pages came back.
pub const KIND_RETURN: u8 = 8;
/// Page size of a reference.
pub const PAGE_SIZE: u64 = 4096;
/// Most references one message may carry.
pub const MAX_PAGES: usize = 256;
/// Bytes before the first reference.
pub const LIST_HEADER: usize = 8;

/// Why a page list does not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListError {
    /// Shorter than its header, or than the count it announces.
    Truncated,
    /// More than [`MAX_PAGES`] references.
    TooMany(u32),
    /// `total_len` larger than the pages can hold.
    TooLong(u32),
    /// A reference that is not page aligned.
    Unaligned(u64),
}

/// The length in bytes of a list of `count` references.
pub const fn list_len(count: usize) -> usize {
    LIST_HEADER + 8 * count
}

/// Writes the list `pages` carrying `total_len` bytes into `buf`; returns the bytes written,
/// or `None` if `buf` is too small or the list too long.
pub fn encode(pages: &[u64], total_len: u32, buf: &mut [u8]) -> Option<usize> {
    let n = list_len(pages.len());
    if pages.len() > MAX_PAGES || buf.len() < n {
        return None;
    }
    buf[0..4].copy_from_slice(&(pages.len() as u32).to_le_bytes());
    buf[4..8].copy_from_slice(&total_len.to_le_bytes());
    for (i, p) in pages.iter().enumerate() {
        let o = LIST_HEADER + 8 * i;
        buf[o..o + 8].copy_from_slice(&p.to_le_bytes());
    }
    Some(n)
}

/// Reads the header of a list: `(count, total_len)`, checked against [`MAX_PAGES`] and the
/// buffer's length.
pub fn decode_header(buf: &[u8]) -> Result<(usize, u32), ListError> {
    let head = buf.get(0..LIST_HEADER).ok_or(ListError::Truncated)?;
    let count = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let total = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if count as usize > MAX_PAGES {
        return Err(ListError::TooMany(count));
    }
    if u64::from(total) > u64::from(count) * PAGE_SIZE {
        return Err(ListError::TooLong(total));
    }
    if buf.len() < list_len(count as usize) {
        return Err(ListError::Truncated);
    }
    Ok((count as usize, total))
}

/// Reference `i` of a list whose header [`decode_header`] accepted (`i < count`); checks
/// alignment.
pub fn page(buf: &[u8], i: usize) -> Result<u64, ListError> {
    let o = LIST_HEADER + 8 * i;
    let b = buf.get(o..o + 8).ok_or(ListError::Truncated)?;
    let v = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    if v % PAGE_SIZE != 0 {
        return Err(ListError::Unaligned(v));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_round_trips() {
        let mut buf = [0u8; 64];
        let n = encode(&[0x1000, 0x5000, 0x3000], 9000, &mut buf).unwrap();
        assert_eq!(n, list_len(3));
        assert_eq!(decode_header(&buf[..n]), Ok((3, 9000)));
        assert_eq!(page(&buf, 1), Ok(0x5000));
    }

    #[test]
    fn hostile_lists_are_refused() {
        let mut buf = [0u8; 64];
        encode(&[0x1000], 10, &mut buf).unwrap();
        assert_eq!(decode_header(&buf[..12]), Err(ListError::Truncated));
        buf[4..8].copy_from_slice(&5000u32.to_le_bytes());
        assert_eq!(decode_header(&buf), Err(ListError::TooLong(5000)));
        buf[0..4].copy_from_slice(&(MAX_PAGES as u32 + 1).to_le_bytes());
        assert_eq!(decode_header(&buf), Err(ListError::TooMany(257)));
        buf[8..16].copy_from_slice(&0x1001u64.to_le_bytes());
        assert_eq!(page(&buf, 0), Err(ListError::Unaligned(0x1001)));
        assert!(encode(&[0; MAX_PAGES + 1], 0, &mut [0u8; 4096]).is_none());
    }
}
