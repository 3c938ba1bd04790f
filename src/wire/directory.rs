//! The directory a hello carries: every port and service of the switch with its id.
//!
//! Layout (little-endian): `count: u32`, then per entry `id: u32, kind: u8 (0 port, 1 service),
//! name_len: u8, name bytes`. Names longer than 255 bytes are cut to 255. The switch encodes it
//! ([`encode`]); guests and peers read it with [`entries`], which never reads past the bytes it
//! is given and stops at the first malformed entry. A guest keeps the last good one in a
//! [`DirectoryCopy`] (bounded, checked) and looks names up there. A switch never lists two
//! ports (or two services) under one name or one id, so a directory that does is refused
//! too: a lookup in it would depend on the order of its entries.

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

/// Whether `bytes` is a whole directory: a count, then exactly that many well-formed entries
/// (trailing bytes are not allowed either).
pub fn well_formed(bytes: &[u8]) -> bool {
    let Some(c) = bytes.get(..4) else {
        return false;
    };
    let count = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    let mut walked = 0u64;
    let mut end = 4usize;
    for e in entries(bytes) {
        walked += 1;
        end += 6 + e.name.len();
    }
    walked == u64::from(count) && end == bytes.len()
}

/// Whether no two entries of one kind share a name or an id. Quadratic in the entries, which
/// a [`DirectoryCopy`] bounds: at most `(N - 4) / 6` of them, 170 for 1 KiB, so about 14 500
/// comparisons, once per directory taken (never per lookup).
pub fn unique(bytes: &[u8]) -> bool {
    entries(bytes).enumerate().all(|(i, a)| {
        entries(bytes)
            .skip(i + 1)
            .all(|b| a.kind != b.kind || (a.name != b.name && a.id != b.id))
    })
}

/// Why a [`DirectoryCopy`] refused a directory (and kept the one it held).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Fewer bytes arrived than the header announced (the sender cut it to fit a buffer).
    Cut,
    /// Longer than the copy holds.
    TooLong,
    /// Not a count followed by exactly that many entries.
    Malformed,
    /// Two ports (or two services) share a name or an id.
    Duplicate,
}

/// The directory a guest keeps: a copy of the last whole, well-formed directory it was sent
/// (hello or directory update), at most `N` bytes, and the name lookups on it. A directory
/// that is cut, longer than `N`, malformed or that names a port or service twice
/// ([`unique`]) is refused and the one held before stays.
#[derive(Clone, Debug)]
pub struct DirectoryCopy<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> DirectoryCopy<N> {
    /// An empty directory (every lookup fails).
    pub const fn new() -> Self {
        Self {
            bytes: [0; N],
            len: 0,
        }
    }

    /// Takes `payload`, a directory whose header announced `announced` bytes, in place of the
    /// one held; or refuses it, changing nothing.
    pub fn replace(&mut self, payload: &[u8], announced: usize) -> Result<(), Refused> {
        if payload.len() != announced {
            return Err(Refused::Cut);
        }
        if payload.len() > N {
            return Err(Refused::TooLong);
        }
        if !well_formed(payload) {
            return Err(Refused::Malformed);
        }
        if !unique(payload) {
            return Err(Refused::Duplicate);
        }
        self.bytes[..payload.len()].copy_from_slice(payload);
        self.len = payload.len();
        Ok(())
    }

    /// The id of the port or service called `name`.
    pub fn lookup(&self, kind: EntryKind, name: &[u8]) -> Option<u32> {
        entries(&self.bytes[..self.len])
            .find(|e| e.kind == kind && e.name == name)
            .map(|e| e.id)
    }

    /// The entries held.
    pub fn entries(&self) -> impl Iterator<Item = Entry<'_>> {
        entries(&self.bytes[..self.len])
    }
}

impl<const N: usize> Default for DirectoryCopy<N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_takes_only_whole_well_formed_directories_that_fit() {
        let mut buf = [0u8; 256];
        let dir = |list: &[Entry<'_>], buf: &mut [u8; 256]| {
            let n = encode(list.iter().copied(), buf).unwrap();
            buf[..n].to_vec()
        };
        let first = dir(
            &[
                Entry {
                    id: 0,
                    kind: EntryKind::Port,
                    name: b"client",
                },
                Entry {
                    id: 3,
                    kind: EntryKind::Service,
                    name: b"echo",
                },
            ],
            &mut buf,
        );
        let mut copy = DirectoryCopy::<64>::new();
        assert_eq!(copy.lookup(EntryKind::Port, b"client"), None);
        copy.replace(&first, first.len()).unwrap();
        assert_eq!(copy.lookup(EntryKind::Port, b"client"), Some(0));
        assert_eq!(copy.lookup(EntryKind::Service, b"echo"), Some(3));
        // A name is looked up with its kind: no port is called "echo".
        assert_eq!(copy.lookup(EntryKind::Port, b"echo"), None);
        // An update that names a new port replaces it all.
        let second = dir(
            &[Entry {
                id: 5,
                kind: EntryKind::Port,
                name: b"late",
            }],
            &mut buf,
        );
        copy.replace(&second, second.len()).unwrap();
        assert_eq!(copy.lookup(EntryKind::Port, b"late"), Some(5));
        assert_eq!(copy.lookup(EntryKind::Port, b"client"), None);
        // Refused, each keeping what was held: cut short of what the header said, too long
        // for the copy, a lying count, a bad kind, trailing bytes, nothing at all.
        assert_eq!(
            copy.replace(&first[..first.len() - 1], first.len()),
            Err(Refused::Cut)
        );
        let long = dir(
            &[Entry {
                id: 1,
                kind: EntryKind::Port,
                name: &[b'x'; 100],
            }],
            &mut buf,
        );
        assert_eq!(copy.replace(&long, long.len()), Err(Refused::TooLong));
        let mut lying = first.clone();
        lying[0] = 3;
        assert_eq!(copy.replace(&lying, lying.len()), Err(Refused::Malformed));
        let mut bad_kind = first.clone();
        bad_kind[8] = 7;
        assert_eq!(
            copy.replace(&bad_kind, bad_kind.len()),
            Err(Refused::Malformed)
        );
        let mut trailing = second.clone();
        trailing.push(0);
        assert_eq!(
            copy.replace(&trailing, trailing.len()),
            Err(Refused::Malformed)
        );
        assert_eq!(copy.replace(&[], 0), Err(Refused::Malformed));
        // Two ports under one name, or one id under two names: ambiguous, refused. A port and
        // a service may share a name or an id (they are looked up by kind).
        let port = |id: u32, name: &'static [u8]| Entry {
            id,
            kind: EntryKind::Port,
            name,
        };
        let twice_named = dir(&[port(1, b"w"), port(2, b"w")], &mut buf);
        let twice_numbered = dir(&[port(1, b"w"), port(1, b"v")], &mut buf);
        for d in [&twice_named, &twice_numbered] {
            assert_eq!(copy.replace(d, d.len()), Err(Refused::Duplicate));
        }
        assert_eq!(copy.lookup(EntryKind::Port, b"late"), Some(5));
        assert_eq!(copy.entries().count(), 1);
        let across_kinds = dir(
            &[
                port(1, b"w"),
                Entry {
                    id: 1,
                    kind: EntryKind::Service,
                    name: b"w",
                },
            ],
            &mut buf,
        );
        copy.replace(&across_kinds, across_kinds.len()).unwrap();
        assert_eq!(copy.lookup(EntryKind::Service, b"w"), Some(1));
        // The empty directory (a switch with nothing in it) is whole.
        assert!(well_formed(&0u32.to_le_bytes()));
    }

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
