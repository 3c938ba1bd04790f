//! The directory a hello carries: every port and service of the switch with its id.
//!
//! Layout (little-endian): `count: u32`, then per entry `id: u32, kind: u8 (0 port, 1 service),
//! name_len: u8, name bytes`. Names longer than 255 bytes are cut to 255. The switch encodes it
//! ([`encode`]); guests and peers read it with [`entries`], which never reads past the bytes it
//! is given and stops at the first malformed entry.

/// What a directory entry names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A port (a VM's queues); its id goes in `dst` as is.
    Port,
    /// A service; its id goes in `dst` with [`DST_SERVICE`](super::DST_SERVICE).
    Service,
}

impl EntryKind {
    const fn code(self) -> u8 {
        match self {
            Self::Port => 0,
            Self::Service => 1,
        }
    }
}

/// One directory entry, borrowed from the bytes it was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Port or service id.
    pub id: u32,
    /// Port or service.
    pub kind: EntryKind,
    /// The name (not checked for UTF-8: it is the guest's to interpret).
    pub name: &'a [u8],
}

/// Longest name an entry carries.
pub const MAX_NAME: usize = 255;

/// Bytes [`encode`] writes for `entries`.
pub fn encoded_len<'a>(entries: impl Iterator<Item = Entry<'a>>) -> usize {
    4 + entries
        .map(|e| 6 + e.name.len().min(MAX_NAME))
        .sum::<usize>()
}

/// Writes `entries` into `out` (which must hold [`encoded_len`] bytes); returns the bytes
/// written, or `None` if `out` is too short.
pub fn encode<'a>(
    entries: impl Iterator<Item = Entry<'a>> + Clone,
    out: &mut [u8],
) -> Option<usize> {
    if out.len() < encoded_len(entries.clone()) {
        return None;
    }
    let mut n = 0u32;
    let mut at = 4;
    for e in entries {
        let name = &e.name[..e.name.len().min(MAX_NAME)];
        out[at..at + 4].copy_from_slice(&e.id.to_le_bytes());
        out[at + 4] = e.kind.code();
        out[at + 5] = name.len() as u8;
        out[at + 6..at + 6 + name.len()].copy_from_slice(name);
        at += 6 + name.len();
        n += 1;
    }
    out[..4].copy_from_slice(&n.to_le_bytes());
    Some(at)
}

/// The entries of a directory, in order. Stops early at a truncated or malformed entry.
pub fn entries(bytes: &[u8]) -> impl Iterator<Item = Entry<'_>> {
    let count = bytes
        .get(..4)
        .map_or(0, |c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    let mut rest = bytes.get(4..).unwrap_or(&[]);
    (0..count).map_while(move |_| {
        let (head, tail) = (rest.get(..6)?, rest.get(6..)?);
        let id = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let kind = match head[4] {
            0 => EntryKind::Port,
            1 => EntryKind::Service,
            _ => return None,
        };
        let len = head[5] as usize;
        let name = tail.get(..len)?;
        rest = &tail[len..];
        Some(Entry { id, kind, name })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let long = [b'x'; 300];
        let list = [
            Entry {
                id: 0,
                kind: EntryKind::Port,
                name: b"client",
            },
            Entry {
                id: 7,
                kind: EntryKind::Service,
                name: b"echo",
            },
            Entry {
                id: 2,
                kind: EntryKind::Port,
                name: &long,
            },
        ];
        let mut buf = [0u8; 512];
        let n = encode(list.iter().copied(), &mut buf).unwrap();
        assert_eq!(n, encoded_len(list.iter().copied()));
        let got: Vec<_> = entries(&buf[..n]).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[..2], list[..2]);
        assert_eq!(got[2].name.len(), MAX_NAME);
        // Too short an output is refused; a cut directory yields the whole entries before the cut.
        assert_eq!(encode(list.iter().copied(), &mut buf[..10]), None);
        assert_eq!(entries(&buf[..n - 1]).count(), 2);
        // A bad kind or a lying count ends the walk, never reads past the bytes.
        let mut bad = buf;
        bad[4 + 4] = 9;
        assert_eq!(entries(&bad[..n]).count(), 0);
        let mut lying = buf;
        lying[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(entries(&lying[..n]).count(), 3);
    }
}
