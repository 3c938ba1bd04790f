//! [`AvailRing`]: the device's reader of one queue's avail ring.
//!
//! It reads the driver's avail index only when the entries it last saw are used up (the index
//! line is the one the driver writes on every publish, so every read of it may be a cache-line
//! transfer), checks that the index never runs more than a queue size ahead, and keeps
//! `virtio-queue`'s `next_avail` in step so its notification helpers stay right.

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryBackend;

use super::GuestView;

/// The driver published an avail index more than a queue size ahead of the device.
pub(crate) struct IndexJump;

pub(crate) struct AvailRing {
    avail: u64,
    size: u16,
    next: u16,
    seen: u16,
}

impl AvailRing {
    pub fn new(q: &Queue) -> Self {
        Self {
            avail: q.avail_ring(),
            size: q.size(),
            next: q.next_avail(),
            seen: q.next_avail(),
        }
    }

    /// Entries ready to pop. Re-reads the driver's index when the cached ones are used up, or
    /// always when `refresh` is set.
    pub fn ready<M: GuestMemoryBackend>(
        &mut self,
        mem: &GuestView<M>,
        refresh: bool,
    ) -> Result<u16, IndexJump> {
        if refresh || self.seen == self.next {
            let idx = mem.load_u16(self.avail + 2).ok_or(IndexJump)?;
            if idx.wrapping_sub(self.next) > self.size {
                return Err(IndexJump);
            }
            self.seen = idx;
        }
        Ok(self.seen.wrapping_sub(self.next))
    }

    /// Takes the next head; the caller checked [`AvailRing::ready`]. `None` if the ring is
    /// not readable (it was validated at activation, so only a racing unmap gets here).
    pub fn pop<M: GuestMemoryBackend>(&mut self, mem: &GuestView<M>, q: &mut Queue) -> Option<u16> {
        let slot = (self.next & (self.size - 1)) as u64;
        let mut b = [0u8; 2];
        if !mem.read(self.avail + 4 + 2 * slot, &mut b) {
            return None;
        }
        self.next = self.next.wrapping_add(1);
        q.set_next_avail(self.next);
        Some(u16::from_le_bytes(b))
    }

    /// Puts the last popped head back.
    pub fn unpop(&mut self, q: &mut Queue) {
        self.next = self.next.wrapping_sub(1);
        q.set_next_avail(self.next);
    }
}
