//! The played guest's memory: a memfd region (so it can be handed to the device) and where
//! the rings and buffers lie in it.

use super::*;
use crate::peer::page_up;

/// Where the guest's rings and buffers lie (guest-physical).
#[derive(Clone, Copy, Debug)]
pub(super) struct Layout {
    pub(super) rings: [RingLayout; NUM_QUEUES],
    pub(super) rx_arena: u64,
    pub(super) tx_arena: u64,
    pub(super) ev_arena: u64,
    pub(super) size: u64,
}

impl Layout {
    pub(super) fn new(cfg: &FrontendConfig) -> Self {
        let qs = cfg.queue_size;
        let ring = page_up(RingLayout::total_bytes(qs));
        let base = cfg.guest_base;
        let rings = [0u64, 1, 2].map(|i| RingLayout::contiguous(base + i * ring, qs));
        let rx_arena = base + 3 * ring;
        let tx_arena = rx_arena + page_up(u64::from(qs) * u64::from(cfg.rx_buf_size));
        let ev_arena = tx_arena + page_up(u64::from(qs) * u64::from(cfg.tx_buf_size));
        let end = ev_arena + page_up(u64::from(EVENT_BUFFERS) * u64::from(EVENT_SIZE));
        Self {
            rings,
            rx_arena,
            tx_arena,
            ev_arena,
            size: end - base,
        }
    }
}

/// A memfd-backed guest memory of `size` bytes at `base`.
pub(super) fn memfd_memory(base: u64, size: u64) -> Result<GuestMemoryMmap, FrontendError> {
    let file = crate::vmm::pages::memfd("guest", size).map_err(io_err("memfd_create"))?;
    let len = usize::try_from(size).map_err(|e| FrontendError::Memory(e.to_string()))?;
    let region = MmapRegion::from_file(FileOffset::new(file, 0), len)
        .map_err(|e| FrontendError::Memory(e.to_string()))?;
    let region = GuestRegionMmap::new(region, GuestAddress(base))
        .ok_or_else(|| FrontendError::Memory("region does not fit the address space".into()))?;
    GuestMemoryMmap::from_regions(vec![region]).map_err(|e| FrontendError::Memory(e.to_string()))
}
