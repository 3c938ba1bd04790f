//! [`DeviceQueue`]: everything the device keeps about one split virtqueue.
//!
//! One owner for the queue's configuration (size, ring addresses and EVENT_IDX, as the
//! transport set them) and its device-side state: the next avail entry to pop, the avail index
//! last read, the next used element to write, the used index the driver can see. Nothing else
//! keeps a copy to keep in step.
//!
//! Avail: the driver's index is read only when the entries last seen are used up (that line
//! is the one the driver writes on every publish, so every read of it may be a cache-line
//! transfer), and it may never run more than a queue size ahead.
//!
//! Used: elements are written as they complete and the index is stored once per batch, like
//! vhost's `add_used_n`; storing it after every element would pull the line the driver polls
//! back and forth once per completion. The EVENT_IDX decision then covers the whole batch
//! (`need_event(used_event, new, old)`).

use std::sync::atomic::{fence, Ordering};

use vm_memory::GuestMemoryBackend;

use super::QueueError;
use crate::virtio::layout::{need_event, RingLayout};
use crate::virtio::spec::{AVAIL_F_NO_INTERRUPT, MAX_QUEUE_SIZE, USED_F_NO_NOTIFY};
use crate::virtio::GuestView;

/// The driver published an avail index more than a queue size ahead of the device (or the
/// index is not readable).
pub(crate) struct IndexJump;

/// One split virtqueue seen from the device: its configuration and its device-side state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceQueue {
    layout: RingLayout,
    event_idx: bool,
    /// Next avail entry to pop.
    next_avail: u16,
    /// The driver's avail index as last read.
    avail_seen: u16,
    /// Next used element to write.
    next_used: u16,
    /// The used index the driver can see.
    used_published: u16,
}

impl DeviceQueue {
    /// A queue configured at `layout` (as the driver wrote it), of at most `max_size` entries
    /// (the `QueueNumMax` the transport offered), with `VIRTIO_RING_F_EVENT_IDX` as
    /// negotiated.
    ///
    /// Checks what needs no memory: `max_size` and the size are powers of two, the size is
    /// at most `max_size`, and each ring part is aligned as the spec requires. Whether the
    /// rings lie in guest memory is checked when a port is built over them
    /// ([`DeviceQueue::check_memory`]).
    pub fn new(max_size: u16, layout: RingLayout, event_idx: bool) -> Result<Self, QueueError> {
        if max_size == 0 || max_size > MAX_QUEUE_SIZE || !max_size.is_power_of_two() {
            return Err(QueueError::InvalidMaxSize(max_size));
        }
        let size = layout.size;
        if size == 0 || size > max_size || !size.is_power_of_two() {
            return Err(QueueError::InvalidSize { size, max_size });
        }
        for (part, addr, align, _) in layout.parts() {
            if addr % align != 0 {
                return Err(QueueError::Misaligned { part, addr, align });
            }
        }
        Ok(Self {
            layout,
            event_idx,
            next_avail: 0,
            avail_seen: 0,
            next_used: 0,
            used_published: 0,
        })
    }

    /// Checks that the descriptor table, the avail ring and the used ring, each with its
    /// trailing event field, lie in `mem`.
    pub fn check_memory<M: GuestMemoryBackend>(
        &self,
        mem: &GuestView<M>,
    ) -> Result<(), QueueError> {
        for (part, addr, _, len) in self.layout.parts() {
            // At most 16 x 32768 bytes: fits a u32.
            if !mem.in_range(addr, len as u32) {
                return Err(QueueError::OutsideMemory { part, addr, len });
            }
        }
        Ok(())
    }

    /// Where the ring's parts are.
    pub fn layout(&self) -> RingLayout {
        self.layout
    }
    /// Queue size (descriptors).
    pub fn size(&self) -> u16 {
        self.layout.size
    }
    /// Guest-physical address of the descriptor table.
    pub fn desc_table(&self) -> u64 {
        self.layout.desc
    }
    /// Guest-physical address of the avail ring.
    pub fn avail_ring(&self) -> u64 {
        self.layout.avail
    }
    /// Guest-physical address of the used ring.
    pub fn used_ring(&self) -> u64 {
        self.layout.used
    }
    /// Whether `VIRTIO_RING_F_EVENT_IDX` was negotiated.
    pub fn event_idx_enabled(&self) -> bool {
        self.event_idx
    }
    /// Index of the next avail entry the device will pop.
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }
    /// Index of the next used element the device will write.
    pub fn next_used(&self) -> u16 {
        self.next_used
    }

    /// The driver's avail index now (acquire); `None` if it is not readable.
    pub fn avail_idx<M: GuestMemoryBackend>(&self, mem: &GuestView<M>) -> Option<u16> {
        mem.load_u16(self.layout.avail + 2)
    }

    /// Entries ready to pop. Re-reads the driver's index when the cached ones are used up, or
    /// always when `refresh` is set.
    pub(crate) fn avail_ready<M: GuestMemoryBackend>(
        &mut self,
        mem: &GuestView<M>,
        refresh: bool,
    ) -> Result<u16, IndexJump> {
        if refresh || self.avail_seen == self.next_avail {
            let idx = self.avail_idx(mem).ok_or(IndexJump)?;
            if idx.wrapping_sub(self.next_avail) > self.layout.size {
                return Err(IndexJump);
            }
            self.avail_seen = idx;
        }
        Ok(self.avail_seen.wrapping_sub(self.next_avail))
    }

    /// Takes the next head; the caller checked [`DeviceQueue::avail_ready`]. `None` if the
    /// ring is not readable (it was checked at activation, so only a racing unmap gets here).
    pub(crate) fn pop_avail<M: GuestMemoryBackend>(&mut self, mem: &GuestView<M>) -> Option<u16> {
        let slot = self.next_avail & (self.layout.size - 1);
        let mut b = [0u8; 2];
        if !mem.read(self.layout.avail_slot(slot), &mut b) {
            return None;
        }
        self.next_avail = self.next_avail.wrapping_add(1);
        Some(u16::from_le_bytes(b))
    }

    /// Puts the last popped head back.
    pub(crate) fn unpop_avail(&mut self) {
        self.next_avail = self.next_avail.wrapping_sub(1);
    }

    /// Writes used element `(head, len)`; visible to the driver after
    /// [`DeviceQueue::publish_used`]. Returns false if `head` is not a descriptor index or the
    /// ring is not in memory.
    pub(crate) fn push_used<M: GuestMemoryBackend>(
        &mut self,
        mem: &GuestView<M>,
        head: u16,
        len: u32,
    ) -> bool {
        if head >= self.layout.size {
            return false;
        }
        let slot = self.next_used & (self.layout.size - 1);
        let mut e = [0u8; 8];
        e[0..4].copy_from_slice(&u32::from(head).to_le_bytes());
        e[4..8].copy_from_slice(&len.to_le_bytes());
        if !mem.write(self.layout.used_elem(slot), &e) {
            return false;
        }
        self.next_used = self.next_used.wrapping_add(1);
        true
    }

    /// Stores the used index if anything was pushed; returns whether the driver asked to be
    /// notified of it (EVENT_IDX `used_event`, or the absence of `NO_INTERRUPT`).
    pub(crate) fn publish_used<M: GuestMemoryBackend>(
        &mut self,
        mem: &GuestView<M>,
    ) -> Option<bool> {
        let (old, new) = (self.used_published, self.next_used);
        if old == new {
            return None;
        }
        if !mem.store_u16(self.layout.used + 2, new) {
            return Some(true);
        }
        self.used_published = new;
        // The index store must be visible before we read the driver's wish (see the ring
        // driver's `publish` for the mirror-image race).
        fence(Ordering::SeqCst);
        Some(if self.event_idx {
            match mem.load_u16(self.layout.used_event()) {
                Some(event) => need_event(event, new, old),
                None => true,
            }
        } else {
            mem.load_u16(self.layout.avail)
                .is_none_or(|flags| flags & AVAIL_F_NO_INTERRUPT == 0)
        })
    }

    /// Asks the driver to kick when it adds entries: with EVENT_IDX, `avail_event` is set to
    /// the next entry the device will pop; without, the used ring's `NO_NOTIFY` flag is
    /// cleared. Returns whether entries are already waiting (the device must not sleep then).
    /// `None` if the ring is not accessible.
    pub(crate) fn enable_kicks<M: GuestMemoryBackend>(
        &mut self,
        mem: &GuestView<M>,
    ) -> Option<bool> {
        let armed = if self.event_idx {
            mem.store_u16(self.layout.avail_event(), self.next_avail)
        } else {
            mem.store_u16(self.layout.used, 0)
        };
        if !armed {
            return None;
        }
        // The wish must be visible before we look at the avail index again: a driver that
        // published in between either sees the wish and kicks, or is seen here.
        fence(Ordering::SeqCst);
        self.avail_idx(mem).map(|idx| idx != self.next_avail)
    }

    /// Tells the driver not to kick: without EVENT_IDX the used ring's `NO_NOTIFY` flag is
    /// set; with it, nothing is needed (a kick re-arms only when the device asks again).
    /// `None` if the ring is not accessible.
    pub(crate) fn disable_kicks<M: GuestMemoryBackend>(
        &mut self,
        mem: &GuestView<M>,
    ) -> Option<()> {
        if self.event_idx || mem.store_u16(self.layout.used, USED_F_NO_NOTIFY) {
            Some(())
        } else {
            None
        }
    }
}
