//! [`GuestView`]: the host's one checked view of a guest's memory (std).
//!
//! vm-memory's generic `Bytes` implementation resolves the region and walks a slice iterator
//! on every access, which costs more than the copy itself for small ones. A `GuestView` resolves
//! each region's host mapping once and checks every access against it; memory without host
//! mappings (or a range straddling regions) takes vm-memory's generic path.
//!
//! The device side reads and writes guest memory through it, and it is a [`RingMemory`], so
//! host-side drivers (test peers, benchmarks) drive rings through the same view.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use super::driver::{RawMemory, RingError, RingMemory};

/// Largest access the slow paths take or return by value (a message header).
const SMALL: usize = 32;

/// A guest memory plus the host view of each of its regions.
#[derive(Clone, Debug)]
pub struct GuestView<M> {
    mem: M,
    regions: Vec<RawMemory>,
}

impl<M: GuestMemoryBackend> GuestView<M> {
    /// Views `mem`; the view keeps `mem` (and so its mappings) alive.
    pub fn new(mem: M) -> Self {
        let mut regions = Vec::new();
        for r in mem.iter() {
            match r.get_host_address(MemoryRegionAddress(0)) {
                Ok(host) => {
                    // SAFETY: the region is mapped at `host` for `r.len()` bytes and stays
                    // mapped while `mem` lives, which is as long as this view (it owns `mem`).
                    // Mappings are page aligned, so index alignment matches guest alignment.
                    let view = unsafe { RawMemory::new(host, r.start_addr().0, r.len()) };
                    regions.push(view);
                }
                Err(_) => {
                    regions.clear();
                    break;
                }
            }
        }
        Self { mem, regions }
    }

    /// The memory viewed.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    #[inline]
    fn region(&self, addr: u64, len: u64) -> Option<&RawMemory> {
        self.regions.iter().find(|r| r.contains(addr, len))
    }

    /// Whether `[addr, addr + len)` lies in guest memory.
    #[inline]
    pub fn in_range(&self, addr: u64, len: u32) -> bool {
        if len == 0 {
            return addr.checked_add(0).is_some();
        }
        if addr.checked_add(len as u64).is_none() {
            return false;
        }
        self.region(addr, len as u64).is_some()
            || self.mem.check_range(GuestAddress(addr), len as usize)
    }

    /// Copies guest bytes at `addr` into `buf`; false if any part is outside guest memory.
    #[inline]
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        match self.region(addr, buf.len() as u64) {
            Some(r) => r.read(addr, buf).is_ok(),
            None => self.read_fallback(addr, buf),
        }
    }

    /// Copies `data` to guest memory at `addr`; false if any part is outside guest memory.
    #[inline]
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.region(addr, data.len() as u64) {
            Some(r) => r.write(addr, data).is_ok(),
            None => self.write_fallback(addr, data),
        }
    }

    /// Stores a ring index with release ordering; false if outside memory or misaligned.
    #[inline]
    pub fn store_u16(&self, addr: u64, val: u16) -> bool {
        match self.region(addr, 2) {
            Some(r) => r.store_u16(addr, val).is_ok(),
            None => self.store_u16_slow(addr, val),
        }
    }

    /// Loads a ring index with acquire ordering; `None` if outside memory or misaligned.
    #[inline]
    pub fn load_u16(&self, addr: u64) -> Option<u16> {
        match self.region(addr, 2) {
            Some(r) => r.load_u16(addr).ok(),
            None => self.load_u16_slow(addr),
        }
    }

    // The generic paths (no host mapping, or a range straddling regions) stay out of line, and
    // small accesses (ring entries, descriptors, headers: at most `SMALL` bytes) pass their
    // bytes by value: a caller's buffer whose address reached the slow path would have to live
    // in memory on every access, so each small read of a ring or a header would go through the
    // stack and be reassembled byte by byte instead of staying in registers.

    /// [`GuestView::read`] without a host mapping for the range.
    #[inline]
    fn read_fallback(&self, addr: u64, buf: &mut [u8]) -> bool {
        let len = buf.len();
        if len <= SMALL {
            match self.read_small_slow(addr, len) {
                Some(v) => {
                    buf.copy_from_slice(&v[..len]);
                    true
                }
                None => false,
            }
        } else {
            self.read_slow(addr, buf)
        }
    }

    /// [`GuestView::write`] without a host mapping for the range.
    #[inline]
    fn write_fallback(&self, addr: u64, data: &[u8]) -> bool {
        let len = data.len();
        if len <= SMALL {
            let mut v = [0u8; SMALL];
            v[..len].copy_from_slice(data);
            self.write_small_slow(addr, v, len)
        } else {
            self.write_slow(addr, data)
        }
    }

    #[cold]
    #[inline(never)]
    fn read_small_slow(&self, addr: u64, len: usize) -> Option<[u8; SMALL]> {
        let mut v = [0u8; SMALL];
        self.read_slow(addr, &mut v[..len]).then_some(v)
    }

    #[cold]
    #[inline(never)]
    fn write_small_slow(&self, addr: u64, v: [u8; SMALL], len: usize) -> bool {
        self.write_slow(addr, &v[..len])
    }

    #[cold]
    #[inline(never)]
    fn read_slow(&self, addr: u64, buf: &mut [u8]) -> bool {
        self.mem.read_slice(buf, GuestAddress(addr)).is_ok()
    }

    #[cold]
    #[inline(never)]
    fn write_slow(&self, addr: u64, data: &[u8]) -> bool {
        self.mem.write_slice(data, GuestAddress(addr)).is_ok()
    }

    #[cold]
    #[inline(never)]
    fn store_u16_slow(&self, addr: u64, val: u16) -> bool {
        self.mem
            .store(
                val.to_le(),
                GuestAddress(addr),
                std::sync::atomic::Ordering::Release,
            )
            .is_ok()
    }

    #[cold]
    #[inline(never)]
    fn load_u16_slow(&self, addr: u64) -> Option<u16> {
        self.mem
            .load::<u16>(GuestAddress(addr), std::sync::atomic::Ordering::Acquire)
            .ok()
            .map(u16::from_le)
    }

    /// Copies `len` bytes from `src` memory at `from` to this memory at `to`.
    pub fn copy_from(
        &self,
        src: &GuestView<impl GuestMemoryBackend>,
        from: u64,
        to: u64,
        len: u64,
    ) -> bool {
        if let (Some(s), Some(d)) = (src.region(from, len), self.region(to, len)) {
            return s.copy_to(from, d, to, len).is_ok();
        }
        // Straddling ranges: bounce through a small buffer.
        let mut buf = [0u8; 256];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            if !src.read(from + done, &mut buf[..n]) || !self.write(to + done, &buf[..n]) {
                return false;
            }
            done += n as u64;
        }
        true
    }
}

/// The driver side of a ring over guest memory seen from the host: the same checked accesses,
/// with the driver's typed errors ([`RingError::OutOfBounds`], [`RingError::Misaligned`]).
impl<M: GuestMemoryBackend> RingMemory for GuestView<M> {
    #[inline]
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), RingError> {
        let len = buf.len() as u64;
        match self.region(addr, len) {
            Some(r) => r.read(addr, buf),
            None => self
                .read_fallback(addr, buf)
                .then_some(())
                .ok_or(RingError::OutOfBounds { addr, len }),
        }
    }
    #[inline]
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), RingError> {
        let len = data.len() as u64;
        match self.region(addr, len) {
            Some(r) => r.write(addr, data),
            None => self
                .write_fallback(addr, data)
                .then_some(())
                .ok_or(RingError::OutOfBounds { addr, len }),
        }
    }
    #[inline]
    fn load_u16(&self, addr: u64) -> Result<u16, RingError> {
        match self.region(addr, 2) {
            Some(r) => r.load_u16(addr),
            None => self
                .load_u16_slow(addr)
                .ok_or(RingError::OutOfBounds { addr, len: 2 }),
        }
    }
    #[inline]
    fn store_u16(&self, addr: u64, val: u16) -> Result<(), RingError> {
        match self.region(addr, 2) {
            Some(r) => r.store_u16(addr, val),
            None => self
                .store_u16_slow(addr, val)
                .then_some(())
                .ok_or(RingError::OutOfBounds { addr, len: 2 }),
        }
    }
}
