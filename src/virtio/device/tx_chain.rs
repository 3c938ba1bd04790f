//! [`TxChain`]: a message popped from a tx queue and validated, held in guest memory; and
//! [`Payload`], where the bytes of a delivery come from.

use vm_memory::GuestMemoryBackend;

use super::chain::{self, ChainError, Seg};
use super::DeviceError;
use crate::virtio::GuestView;
use crate::wire::{MsgHeader, HEADER_SIZE};

/// Bytes of one page of a [`Payload::Pages`].
const PAGE: usize = crate::wire::pages::PAGE_SIZE as usize;

/// Buffers of a chain kept inline in its [`TxChain`]; longer chains are walked again.
const INLINE_SEGS: usize = 4;

/// A message chain popped from a tx queue and validated.
///
/// The chain stays in guest memory, owned by the device, until [`DevicePort::complete_tx`](super::DevicePort::complete_tx)
/// returns it; its payload is read from there ([`TxChain::payload`]) as often as needed.
/// Chains of up to four buffers keep the buffer list validated at pop time, so a guest that
/// rewrites its descriptors afterwards changes nothing; longer chains are walked (and checked)
/// again on every read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxChain {
    /// Head descriptor index (what goes back on the used ring).
    pub head: u16,
    /// The validated header (its `src` is whatever the guest wrote; the switch restamps it).
    pub header: MsgHeader,
    /// Readable bytes in the chain (header + payload + any slack).
    pub total: u32,
    desc_table: u64,
    qsize: u16,
    segs: [Seg; INLINE_SEGS],
    /// Buffers in `segs`; 0 when the chain has more than `INLINE_SEGS`.
    nsegs: u8,
}

impl TxChain {
    /// A message a port keeps in memory of its own as one span at `addr`: its header's bytes,
    /// then its payload (a port kind whose messages are not guest chains, e.g. vsock packets
    /// copied out of a guest). `id` tells the port which of its messages it is, as `head`
    /// does for a virtqueue.
    pub fn in_span(id: u16, header: MsgHeader, addr: u64) -> Self {
        let total = header.len().saturating_add(HEADER_SIZE as u32);
        let mut segs = [Seg { addr: 0, len: 0 }; INLINE_SEGS];
        segs[0] = Seg { addr, len: total };
        Self {
            head: id,
            header,
            total,
            desc_table: 0,
            qsize: 0,
            segs,
            nsegs: 1,
        }
    }

    /// The payload, read from `mem` (the memory of the port it was popped from).
    pub fn payload<'a, M>(&'a self, mem: &'a GuestView<M>) -> Payload<'a, M>
    where
        M: GuestMemoryBackend,
    {
        Payload::Chain { mem, chain: self }
    }

    /// Calls `f(addr, len)` for each span of payload bytes, in order.
    pub(super) fn for_each_payload_span<M, F>(
        &self,
        mem: &GuestView<M>,
        mut f: F,
    ) -> Result<(), ChainError>
    where
        M: GuestMemoryBackend,
        F: FnMut(u64, u64),
    {
        let len = self.header.len();
        let mut skip = HEADER_SIZE as u64;
        let mut left = len as u64;
        let mut visit = |s: Seg| {
            let k = skip.min(s.len as u64);
            skip -= k;
            let n = (s.len as u64 - k).min(left);
            if n > 0 {
                f(s.addr + k, n);
                left -= n;
            }
        };
        if self.nsegs > 0 {
            self.segs[..self.nsegs as usize]
                .iter()
                .for_each(|s| visit(*s));
        } else {
            chain::walk(mem, self.desc_table, self.qsize, self.head, false, visit)?;
        }
        if left > 0 {
            // Only a chain rewritten since it was validated can come up short.
            return Err(ChainError::BufferOutOfRange { addr: 0, len });
        }
        Ok(())
    }
}

/// Where the payload of a delivery comes from.
pub enum Payload<'a, M> {
    /// Bytes on the host (messages the switch makes itself).
    Bytes(&'a [u8]),
    /// The payload of a held tx chain in another (or the same) port's memory.
    Chain {
        /// That port's memory.
        mem: &'a GuestView<M>,
        /// The chain.
        chain: &'a TxChain,
    },
    /// The first `len` bytes of a run of 4 KiB pages of a port's memory, page after page (a
    /// page hand-off message copied instead of moved). The caller checked that every page lies
    /// in `mem`.
    Pages {
        /// That port's memory.
        mem: &'a GuestView<M>,
        /// Page addresses, in order.
        pages: &'a [u64],
        /// Bytes they carry (at most `pages.len()` pages).
        len: u32,
    },
}

impl<M: GuestMemoryBackend> Payload<'_, M> {
    /// Copies the payload into the start of `buf` (at least [`Payload::len`] bytes); returns
    /// its length. Fails if `buf` is too short or the chain no longer reads.
    pub fn copy_to(&self, buf: &mut [u8]) -> Result<usize, ChainError> {
        let len = self.len() as usize;
        let short = ChainError::BufferOutOfRange {
            addr: 0,
            len: len as u32,
        };
        let dst = buf.get_mut(..len).ok_or(short)?;
        match self {
            Self::Bytes(b) => dst.copy_from_slice(b),
            Self::Chain { mem, chain } => {
                let mut at = 0usize;
                let mut ok = true;
                chain.for_each_payload_span(mem, |addr, n| {
                    let n = n as usize;
                    ok &= dst.get_mut(at..at + n).is_some_and(|d| mem.read(addr, d));
                    at += n;
                })?;
                if !ok {
                    return Err(short);
                }
            }
            Self::Pages { mem, .. } => {
                let mut ok = true;
                self.for_each_page_span(|addr, at, n| {
                    ok &= mem.read(addr, &mut dst[at..at + n]);
                });
                if !ok {
                    return Err(short);
                }
            }
        }
        Ok(len)
    }
}

impl<M> Payload<'_, M> {
    /// Payload length in bytes.
    pub fn len(&self) -> u32 {
        match self {
            Self::Bytes(b) => b.len() as u32,
            Self::Chain { chain, .. } => chain.header.len(),
            Self::Pages { len, pages, .. } => (*len).min((pages.len() * PAGE) as u32),
        }
    }

    /// For [`Payload::Pages`]: calls `f(page address, offset in the payload, bytes)` for each
    /// page's share of the payload, in order (nothing for the other kinds).
    pub(crate) fn for_each_page_span(&self, mut f: impl FnMut(u64, usize, usize)) {
        if let Self::Pages { pages, .. } = self {
            let len = self.len() as usize;
            for (i, &p) in pages.iter().enumerate() {
                let at = i * PAGE;
                if at >= len {
                    break;
                }
                f(p, at, (len - at).min(PAGE));
            }
        }
    }
    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Walks and validates the tx chain at `head`: gathers the header from its first bytes
/// (however they are split) and keeps up to [`INLINE_SEGS`] buffers.
pub(super) fn parse_tx_chain<M: GuestMemoryBackend>(
    mem: &GuestView<M>,
    desc_table: u64,
    qsize: u16,
    head: u16,
) -> Result<TxChain, DeviceError> {
    let mut raw = [0u8; HEADER_SIZE];
    let mut filled = 0usize;
    let mut segs = [Seg { addr: 0, len: 0 }; INLINE_SEGS];
    let mut count = 0usize;
    let total = chain::walk(mem, desc_table, qsize, head, false, |seg| {
        if let Some(slot) = segs.get_mut(count) {
            *slot = seg;
        }
        count += 1;
        if filled == 0 && seg.len as usize >= HEADER_SIZE {
            // The common case, a header in one buffer: a fixed-size copy the compiler inlines.
            if mem.read(seg.addr, &mut raw) {
                filled = HEADER_SIZE;
            }
        } else if filled < HEADER_SIZE {
            let n = (seg.len as usize).min(HEADER_SIZE - filled);
            // The walker checked the range; a failure leaves `filled` short and fails parsing.
            if mem.read(seg.addr, &mut raw[filled..filled + n]) {
                filled += n;
            }
        }
    })?;
    let header = MsgHeader::parse(&raw[..filled], (total as usize).saturating_sub(HEADER_SIZE))?;
    Ok(TxChain {
        head,
        header,
        total,
        desc_table,
        qsize,
        segs,
        nsegs: if count <= INLINE_SEGS { count as u8 } else { 0 },
    })
}
