//! [`UsedRing`]: the device's writer of one queue's used ring, publishing the index once per
//! batch.
//!
//! `virtio-queue`'s `add_used` stores the used index after every element. When the driver
//! polls that index from another core, each store pulls the cache line back and forth, so a
//! batch of n completions costs n line transfers. Here elements are written as they complete
//! and the index is stored once per batch, like vhost's `add_used_n`; the EVENT_IDX decision
//! then covers the whole batch (`need_event(used_event, new, old)`).

use std::sync::atomic::{fence, Ordering};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryBackend;

use super::GuestView;
use crate::ring::{need_event, AVAIL_F_NO_INTERRUPT};

pub(crate) struct UsedRing {
    used: u64,
    avail: u64,
    size: u16,
    event_idx: bool,
    /// Next element to write.
    next: u16,
    /// Index the driver can see.
    published: u16,
}

impl UsedRing {
    pub fn new(q: &Queue) -> Self {
        Self {
            used: q.used_ring(),
            avail: q.avail_ring(),
            size: q.size(),
            event_idx: q.event_idx_enabled(),
            next: q.next_used(),
            published: q.next_used(),
        }
    }

    /// Writes used element `(head, len)`; visible to the driver after [`UsedRing::publish`].
    /// Returns false if `head` is not a descriptor index or the ring is not in memory.
    pub fn push<M: GuestMemoryBackend>(
        &mut self,
        mem: &GuestView<M>,
        q: &mut Queue,
        head: u16,
        len: u32,
    ) -> bool {
        if head >= self.size {
            return false;
        }
        let slot = (self.next & (self.size - 1)) as u64;
        let mut e = [0u8; 8];
        e[0..4].copy_from_slice(&(head as u32).to_le_bytes());
        e[4..8].copy_from_slice(&len.to_le_bytes());
        if !mem.write(self.used + 4 + 8 * slot, &e) {
            return false;
        }
        self.next = self.next.wrapping_add(1);
        q.set_next_used(self.next);
        true
    }

    /// Stores the used index if anything was pushed; returns whether the driver asked to be
    /// notified of it (EVENT_IDX `used_event`, or the absence of `NO_INTERRUPT`).
    pub fn publish<M: GuestMemoryBackend>(&mut self, mem: &GuestView<M>) -> Option<bool> {
        let (old, new) = (self.published, self.next);
        if old == new {
            return None;
        }
        if !mem.store_u16(self.used + 2, new) {
            return Some(true);
        }
        self.published = new;
        // The index store must be visible before we read the driver's wish (see the ring
        // driver's `publish` for the mirror-image race).
        fence(Ordering::SeqCst);
        Some(if self.event_idx {
            match mem.load_u16(self.avail + 4 + 2 * self.size as u64) {
                Some(event) => need_event(event, new, old),
                None => true,
            }
        } else {
            mem.load_u16(self.avail)
                .is_none_or(|flags| flags & AVAIL_F_NO_INTERRUPT == 0)
        })
    }
}
