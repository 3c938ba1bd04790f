//! [`MmapRingMemory`]: [`RingMemory`] over a host `GuestMemoryMmap`.

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::{RawMemory, RingError, RingMemory};

/// Ring access to a `GuestMemoryMmap`, straight through its host mappings.
///
/// It keeps a clone of the memory (the regions are reference counted) so the mappings outlive
/// every raw view it holds. An access must lie inside one region.
#[derive(Clone, Debug)]
pub struct MmapRingMemory {
    _mem: GuestMemoryMmap,
    regions: Vec<RawMemory>,
}

impl MmapRingMemory {
    /// Views every region of `mem`.
    pub fn new(mem: &GuestMemoryMmap) -> Self {
        let regions = mem
            .iter()
            .map(|r| {
                // SAFETY: the region's mapping is `r.len()` bytes at `r.as_ptr()` and stays
                // mapped while `_mem` (a clone sharing the same regions) lives, which is as long
                // as `self`. Mappings are page aligned, so index alignment matches guest
                // alignment.
                unsafe { RawMemory::new(r.as_ptr(), r.start_addr().0, r.len()) }
            })
            .collect();
        Self {
            _mem: mem.clone(),
            regions,
        }
    }

    #[inline]
    fn region(&self, addr: u64, len: u64) -> Result<&RawMemory, RingError> {
        self.regions
            .iter()
            .find(|r| r.contains(addr, len))
            .ok_or(RingError::OutOfBounds { addr, len })
    }
}

impl RingMemory for MmapRingMemory {
    #[inline]
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), RingError> {
        self.region(addr, buf.len() as u64)?.read(addr, buf)
    }
    #[inline]
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), RingError> {
        self.region(addr, data.len() as u64)?.write(addr, data)
    }
    #[inline]
    fn load_u16(&self, addr: u64) -> Result<u16, RingError> {
        self.region(addr, 2)?.load_u16(addr)
    }
    #[inline]
    fn store_u16(&self, addr: u64, val: u16) -> Result<(), RingError> {
        self.region(addr, 2)?.store_u16(addr, val)
    }
}
