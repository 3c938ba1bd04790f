//! How the driver reaches ring memory: a small trait, and a raw-pointer implementation that
//! works inside a bare-metal guest and over any host mapping.

use core::sync::atomic::{AtomicU16, Ordering};

use super::RingError;

/// Byte and index access to the memory that holds a ring and its buffers.
///
/// Addresses are guest-physical. Implementations check every access against their bounds and
/// return [`RingError::OutOfBounds`] instead of touching memory outside them.
pub trait RingMemory {
    /// Copies `buf.len()` bytes at `addr` into `buf`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), RingError>;
    /// Copies `data` to `addr`.
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), RingError>;
    /// Loads a little-endian `u16` ring index with acquire ordering.
    fn load_u16(&self, addr: u64) -> Result<u16, RingError>;
    /// Stores a little-endian `u16` ring index with release ordering.
    fn store_u16(&self, addr: u64, val: u16) -> Result<(), RingError>;
}

impl<T: RingMemory + ?Sized> RingMemory for &T {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), RingError> {
        (**self).read(addr, buf)
    }
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), RingError> {
        (**self).write(addr, data)
    }
    fn load_u16(&self, addr: u64) -> Result<u16, RingError> {
        (**self).load_u16(addr)
    }
    fn store_u16(&self, addr: u64, val: u16) -> Result<(), RingError> {
        (**self).store_u16(addr, val)
    }
}

/// A contiguous span of guest-physical memory reachable at a host (or guest-virtual) pointer.
///
/// Inside a guest with identity-mapped memory this is `RawMemory::new(0 as *mut u8, 0, size)`;
/// on the host it is one mapped region of guest memory.
#[derive(Clone, Copy, Debug)]
pub struct RawMemory {
    host: *mut u8,
    guest_base: u64,
    len: u64,
}

// SAFETY: `RawMemory` is a view of memory shared with another agent by design; every access
// goes through bounds checks and either atomics (ring indices) or byte copies whose ownership
// the ring protocol hands over with acquire/release ordering. Moving the view to another thread
// does not change that.
unsafe impl Send for RawMemory {}
// SAFETY: as above; `&RawMemory` only offers the same checked accesses.
unsafe impl Sync for RawMemory {}

impl RawMemory {
    /// A view of `len` bytes of guest memory starting at guest-physical `guest_base`, reachable
    /// at `host`.
    ///
    /// # Safety
    /// `host..host + len` must be valid for reads and writes for as long as the view (or any
    /// copy of it) is used, and `host` must be at least 2-byte aligned relative to `guest_base`
    /// (`host as u64 % 2 == guest_base % 2`), so ring indices can be accessed atomically.
    pub const unsafe fn new(host: *mut u8, guest_base: u64, len: u64) -> Self {
        Self {
            host,
            guest_base,
            len,
        }
    }

    /// Guest-physical start.
    pub fn guest_base(&self) -> u64 {
        self.guest_base
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `[addr, addr + len)` lies inside this view.
    #[inline]
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        self.offset(addr, len).is_some()
    }

    #[inline]
    fn offset(&self, addr: u64, len: u64) -> Option<usize> {
        let off = addr.checked_sub(self.guest_base)?;
        let end = off.checked_add(len)?;
        if end > self.len {
            return None;
        }
        usize::try_from(off).ok()
    }

    #[inline]
    fn ptr(&self, addr: u64, len: u64) -> Result<*mut u8, RingError> {
        match self.offset(addr, len) {
            // SAFETY: `off + len <= self.len`, and the constructor's contract makes the whole
            // span valid, so the offset pointer stays inside the same allocation.
            Some(off) => Ok(unsafe { self.host.add(off) }),
            None => Err(RingError::OutOfBounds { addr, len }),
        }
    }

    /// Copies `len` bytes at `from` in this memory to `to` in `dst` (another view, possibly of
    /// another guest). Both ranges are bounds-checked; they may overlap only if a caller copies
    /// within one memory, which `copy` handles.
    pub fn copy_to(&self, from: u64, dst: &RawMemory, to: u64, len: u64) -> Result<(), RingError> {
        let s = self.ptr(from, len)?;
        let d = dst.ptr(to, len)?;
        // SAFETY: both pointers are valid for `len` bytes (bounds-checked above, and the
        // constructors' contracts keep the spans mapped). `copy` allows overlap, which can only
        // happen within one guest's memory.
        unsafe { core::ptr::copy(s, d, len as usize) };
        Ok(())
    }

    #[inline]
    fn index(&self, addr: u64) -> Result<&AtomicU16, RingError> {
        let p = self.ptr(addr, 2)?;
        if p as usize % 2 != 0 {
            return Err(RingError::Misaligned {
                what: "ring index",
                addr,
            });
        }
        // SAFETY: `p` is in bounds for 2 bytes (checked above), 2-byte aligned (checked above),
        // and valid for the view's lifetime by the constructor's contract. `AtomicU16` has the
        // size and alignment of `u16`, and every bit pattern is a valid `u16`.
        Ok(unsafe { &*(p as *const AtomicU16) })
    }
}

impl RingMemory for RawMemory {
    #[inline]
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), RingError> {
        let src = self.ptr(addr, buf.len() as u64)?;
        // SAFETY: `src` is valid for `buf.len()` bytes (bounds-checked above); `buf` is a
        // distinct Rust slice, so the ranges do not overlap. The peer may write these bytes
        // concurrently only by breaking the ring protocol; `u8` has no invalid values, so the
        // worst outcome is garbage data, which callers validate.
        unsafe { core::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    #[inline]
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), RingError> {
        let dst = self.ptr(addr, data.len() as u64)?;
        // SAFETY: `dst` is valid for `data.len()` bytes (bounds-checked above) and does not
        // overlap the Rust slice `data`.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        Ok(())
    }

    #[inline]
    fn load_u16(&self, addr: u64) -> Result<u16, RingError> {
        Ok(u16::from_le(self.index(addr)?.load(Ordering::Acquire)))
    }

    #[inline]
    fn store_u16(&self, addr: u64, val: u16) -> Result<(), RingError> {
        self.index(addr)?.store(val.to_le(), Ordering::Release);
        Ok(())
    }
}
