//! A strict walker over split-ring descriptor chains.
//!
//! `virtio-queue`'s iterator ends a chain quietly when a descriptor is bad; a dataplane between
//! VMs must know *why*, so it can mark the port broken and count the fault. This walker reads
//! every descriptor from guest memory once, checks it, and hands the caller each buffer.

use vm_memory::GuestMemoryBackend;

use crate::virtio::spec::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, DESC_SIZE};
use crate::virtio::GuestView;

/// One buffer of a chain, already checked to lie inside guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seg {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
}

/// How a descriptor chain breaks the rules.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum ChainError {
    /// A head or `next` index is not below the queue size.
    #[error("descriptor index {index} is outside a queue of size {size}")]
    IndexOutOfRange {
        /// The index.
        index: u16,
        /// Queue size.
        size: u16,
    },
    /// The chain has more descriptors than the queue (a loop).
    #[error("descriptor chain is longer than the queue size {size} (a loop)")]
    Loop {
        /// Queue size.
        size: u16,
    },
    /// The descriptor table itself is not readable in guest memory.
    #[error("descriptor {index} cannot be read from guest memory")]
    DescriptorUnreadable {
        /// Descriptor index.
        index: u16,
    },
    /// A buffer points outside guest memory, or its end overflows.
    #[error("descriptor buffer [{addr:#x}, +{len:#x}) is outside guest memory")]
    BufferOutOfRange {
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
    /// The chain's total length overflows 32 bits.
    #[error("descriptor chain is longer than 4 GiB")]
    TooLong,
    /// Indirect descriptors were not negotiated.
    #[error("indirect descriptor used, but VIRTIO_RING_F_INDIRECT_DESC was not negotiated")]
    Indirect,
    /// A device-writable buffer in a chain the device only reads (tx), or a readable buffer in
    /// one it only writes (rx).
    #[error("descriptor direction is wrong for this queue (writable in tx or readable in rx)")]
    WrongDirection,
}

/// Walks the chain starting at `head` in the table at `desc_table` of a queue of `size`.
///
/// Calls `f` with every non-empty buffer, in order, after checking it. `writable` is the
/// direction every buffer must have. Returns the total length.
pub fn walk<M, F>(
    mem: &GuestView<M>,
    desc_table: u64,
    size: u16,
    head: u16,
    writable: bool,
    mut f: F,
) -> Result<u32, ChainError>
where
    M: GuestMemoryBackend,
    F: FnMut(Seg),
{
    let mut index = head;
    let mut total: u32 = 0;
    for _ in 0..size {
        if index >= size {
            return Err(ChainError::IndexOutOfRange { index, size });
        }
        // index < size <= 32768, so the offset is at most 512 KiB: no overflow, but the table
        // may still lie outside memory, which read_obj reports.
        let addr = desc_table
            .checked_add(DESC_SIZE * index as u64)
            .ok_or(ChainError::DescriptorUnreadable { index })?;
        let mut raw = [0u8; DESC_SIZE as usize];
        if !mem.read(addr, &mut raw) {
            return Err(ChainError::DescriptorUnreadable { index });
        }
        let d = Desc::from_le(&raw);
        let flags = d.flags;
        if flags & DESC_F_INDIRECT != 0 {
            return Err(ChainError::Indirect);
        }
        if (flags & DESC_F_WRITE != 0) != writable {
            return Err(ChainError::WrongDirection);
        }
        let seg = Seg {
            addr: d.addr,
            len: d.len,
        };
        if seg.len > 0 {
            if !mem.in_range(seg.addr, seg.len) {
                return Err(ChainError::BufferOutOfRange {
                    addr: seg.addr,
                    len: seg.len,
                });
            }
            total = total.checked_add(seg.len).ok_or(ChainError::TooLong)?;
            f(seg);
        }
        if flags & DESC_F_NEXT == 0 {
            return Ok(total);
        }
        index = d.next;
    }
    Err(ChainError::Loop { size })
}

/// A split-ring descriptor (`struct virtq_desc`), decoded from its little-endian bytes.
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

impl Desc {
    #[inline]
    fn from_le(b: &[u8; DESC_SIZE as usize]) -> Self {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[0..8]);
        Self {
            addr: u64::from_le_bytes(a),
            len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            flags: u16::from_le_bytes([b[12], b[13]]),
            next: u16::from_le_bytes([b[14], b[15]]),
        }
    }
}
