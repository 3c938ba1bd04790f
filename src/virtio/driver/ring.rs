//! [`DriverRing`]: the driver side of one split virtqueue.

use core::sync::atomic::{fence, Ordering};

use super::{RingError, RingMemory};
use crate::virtio::layout::{need_event, RingLayout};
use crate::virtio::spec::{
    AVAIL_F_NO_INTERRUPT, DESC_F_NEXT, DESC_F_WRITE, DESC_SIZE, USED_F_NO_NOTIFY,
};

/// One buffer of a chain: guest-physical address, length, and whether the device writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (rx) rather than device-readable (tx).
    pub writable: bool,
}

impl Buf {
    /// A device-readable buffer.
    pub const fn readable(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            writable: false,
        }
    }
    /// A device-writable buffer.
    pub const fn writable(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            writable: true,
        }
    }
}

/// A chain the device has finished with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    /// Head descriptor index of the chain.
    pub head: u16,
    /// Bytes the device wrote into the chain's writable buffers.
    pub len: u32,
}

/// Driver-side counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingCounters {
    /// Chains made available.
    pub added: u64,
    /// Chains returned by the device.
    pub used: u64,
    /// Publishes after which the device wanted a kick.
    pub kicks: u64,
    /// Publishes whose kick EVENT_IDX (or NO_NOTIFY) suppressed.
    pub kicks_suppressed: u64,
}

/// The driver side of a split virtqueue.
///
/// `S` holds the driver's shadow state, `2 x size` `u16`s (a `Vec` on the host, a static array
/// in a guest): the free-list links and the descriptor count of every outstanding chain. The
/// driver never trusts the device with its own bookkeeping: used ids are checked against it.
///
/// Chains added with [`DriverRing::add`] become visible to the device at the next
/// [`DriverRing::publish`], which also says whether the device wants a kick.
pub struct DriverRing<M, S> {
    mem: M,
    layout: RingLayout,
    event_idx: bool,
    state: S,
    free_head: u16,
    num_free: u16,
    /// Next avail index to fill (shadow of avail.idx, ahead of it until published).
    avail_idx: u16,
    /// avail.idx as last published.
    published_idx: u16,
    /// Next used index to consume.
    last_used: u16,
    /// used.idx as last read (and checked): chains up to it can be taken without reading the
    /// device's index again, a line the device keeps writing.
    used_seen: u16,
    counters: RingCounters,
}

impl<M: RingMemory, S: AsRef<[u16]> + AsMut<[u16]>> DriverRing<M, S> {
    /// Sets up a fresh ring at `layout` in `mem`: zeroes the avail and used ring headers and
    /// the event fields, and links every descriptor into the free list.
    ///
    /// `event_idx` says whether `VIRTIO_F_RING_EVENT_IDX` was negotiated.
    pub fn new(mem: M, layout: RingLayout, state: S, event_idx: bool) -> Result<Self, RingError> {
        let size = layout.size;
        if !RingLayout::valid_size(size) {
            return Err(RingError::InvalidSize(size));
        }
        let needed = 2 * size as usize;
        if state.as_ref().len() < needed {
            return Err(RingError::StateTooSmall {
                needed,
                given: state.as_ref().len(),
            });
        }
        for (what, addr, align, len) in layout.parts() {
            if addr % align != 0 {
                return Err(RingError::Misaligned { what, addr });
            }
            // Probe both ends so a ring that runs off memory fails here, not mid-traffic.
            mem.read(addr, &mut [0u8; 2])?;
            mem.read(
                addr.checked_add(len - 2)
                    .ok_or(RingError::OutOfBounds { addr, len })?,
                &mut [0u8; 2],
            )?;
        }
        let mut ring = Self {
            mem,
            layout,
            event_idx,
            state,
            free_head: 0,
            num_free: size,
            avail_idx: 0,
            published_idx: 0,
            last_used: 0,
            used_seen: 0,
            counters: RingCounters::default(),
        };
        {
            let st = ring.state.as_mut();
            for i in 0..size {
                st[i as usize] = i.wrapping_add(1); // next free
                st[size as usize + i as usize] = 0; // not outstanding
            }
        }
        ring.mem.store_u16(layout.avail, 0)?;
        ring.mem.store_u16(layout.avail + 2, 0)?;
        ring.mem.store_u16(layout.used_event(), 0)?;
        ring.mem.store_u16(layout.used, 0)?;
        ring.mem.store_u16(layout.used + 2, 0)?;
        ring.mem.store_u16(layout.avail_event(), 0)?;
        Ok(ring)
    }

    /// The ring's layout.
    pub fn layout(&self) -> RingLayout {
        self.layout
    }
    /// Queue size.
    pub fn size(&self) -> u16 {
        self.layout.size
    }
    /// Free descriptors.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }
    /// Head index the next [`DriverRing::add`] will use, if any descriptor is free. Lets a
    /// caller fill the buffer that belongs to that descriptor before adding the chain.
    pub fn next_head(&self) -> Option<u16> {
        (self.num_free > 0).then_some(self.free_head)
    }
    /// Chains made available and not yet returned.
    pub fn outstanding(&self) -> u16 {
        self.avail_idx.wrapping_sub(self.last_used)
    }
    /// Counters so far.
    pub fn counters(&self) -> RingCounters {
        self.counters
    }
    /// The memory the ring lives in.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Writes a chain into free descriptors and queues its head in the avail ring (visible to
    /// the device after [`DriverRing::publish`]). Returns the head index.
    ///
    /// Readable buffers must precede writable ones.
    pub fn add(&mut self, bufs: &[Buf]) -> Result<u16, RingError> {
        let n = bufs.len();
        if n == 0 {
            return Err(RingError::EmptyChain);
        }
        if n > self.num_free as usize {
            return Err(RingError::QueueFull {
                needed: n,
                free: self.num_free,
            });
        }
        if bufs.windows(2).any(|w| w[0].writable && !w[1].writable) {
            return Err(RingError::WritableBeforeReadable);
        }
        let size = self.layout.size as usize;
        let head = self.free_head;
        let mut idx = head;
        for (i, b) in bufs.iter().enumerate() {
            let next = self.state.as_ref()[idx as usize];
            let mut flags = if b.writable { DESC_F_WRITE } else { 0 };
            if i + 1 < n {
                flags |= DESC_F_NEXT;
            }
            let mut d = [0u8; DESC_SIZE as usize];
            d[0..8].copy_from_slice(&b.addr.to_le_bytes());
            d[8..12].copy_from_slice(&b.len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.to_le_bytes());
            self.mem
                .write(self.layout.desc + DESC_SIZE * idx as u64, &d)?;
            if i + 1 < n {
                idx = next;
            }
        }
        // Everything written: take the descriptors off the free list.
        self.free_head = self.state.as_ref()[idx as usize];
        self.num_free -= n as u16;
        self.state.as_mut()[size + head as usize] = n as u16;
        let slot = self.avail_idx & (self.layout.size - 1);
        self.mem
            .write(self.layout.avail_slot(slot), &head.to_le_bytes())?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.counters.added += 1;
        Ok(head)
    }

    /// Makes every added chain visible to the device. Returns whether the device asked to be
    /// kicked (EVENT_IDX `avail_event`, or the absence of `NO_NOTIFY`).
    pub fn publish(&mut self) -> Result<bool, RingError> {
        let old = self.published_idx;
        let new = self.avail_idx;
        if old == new {
            return Ok(false);
        }
        self.mem.store_u16(self.layout.avail + 2, new)?;
        self.published_idx = new;
        // The idx store must be visible before we read the device's wish, or both sides can
        // miss each other (the device re-enables kicks between our store and our read).
        fence(Ordering::SeqCst);
        let kick = if self.event_idx {
            let event = self.mem.load_u16(self.layout.avail_event())?;
            need_event(event, new, old)
        } else {
            self.mem.load_u16(self.layout.used)? & USED_F_NO_NOTIFY == 0
        };
        if kick {
            self.counters.kicks += 1;
        } else {
            self.counters.kicks_suppressed += 1;
        }
        Ok(kick)
    }

    /// Whether the device has returned chains not yet taken with [`DriverRing::pop_used`].
    pub fn has_used(&self) -> Result<bool, RingError> {
        Ok(self.mem.load_u16(self.layout.used + 2)? != self.last_used)
    }

    /// Takes the next chain the device returned and frees its descriptors.
    pub fn pop_used(&mut self) -> Result<Option<Used>, RingError> {
        let mut out = None;
        self.pop_used_batch(1, |u| out = Some(u))?;
        Ok(out)
    }

    /// Takes up to `max` returned chains, handing each to `f`; returns how many. Reads the
    /// device's used index at most once per call, and not at all while chains seen published
    /// by an earlier read cover `max` (so popping one at a time reads it once per batch the
    /// device published, not once per chain).
    pub fn pop_used_batch<F: FnMut(Used)>(
        &mut self,
        max: usize,
        mut f: F,
    ) -> Result<usize, RingError> {
        let mut ready = self.used_seen.wrapping_sub(self.last_used);
        if (ready as usize) < max {
            let published = self.mem.load_u16(self.layout.used + 2)?;
            ready = published.wrapping_sub(self.last_used);
            if ready > self.outstanding() {
                return Err(RingError::UsedIndexJump {
                    last: self.last_used,
                    published,
                });
            }
            self.used_seen = published;
        }
        let n = (ready as usize).min(max);
        for _ in 0..n {
            match self.take_used() {
                Ok(u) => f(u),
                Err(e) => {
                    // Read (and check) the index afresh next time.
                    self.used_seen = self.last_used;
                    return Err(e);
                }
            }
        }
        Ok(n)
    }

    /// Consumes the used element at `last_used`, which the caller knows is published.
    fn take_used(&mut self) -> Result<Used, RingError> {
        let slot = self.last_used & (self.layout.size - 1);
        let mut e = [0u8; 8];
        self.mem.read(self.layout.used_elem(slot), &mut e)?;
        let id = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
        let len = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        let size = self.layout.size as usize;
        let count = match usize::try_from(id) {
            Ok(i) if i < size => self.state.as_ref()[size + i],
            _ => 0,
        };
        if count == 0 {
            return Err(RingError::BadUsedId(id));
        }
        let head = id as u16;
        // Walk our own shadow links (never the device-visible table) to the chain's tail.
        let st = self.state.as_mut();
        let mut tail = head;
        for _ in 1..count {
            tail = st[tail as usize];
        }
        st[tail as usize] = self.free_head;
        st[size + head as usize] = 0;
        self.free_head = head;
        self.num_free += count;
        self.last_used = self.last_used.wrapping_add(1);
        self.counters.used += 1;
        Ok(Used { head, len })
    }

    /// Asks the device to notify (interrupt) the driver when the next chain is used, and
    /// returns whether chains are already waiting (in which case the caller should not sleep).
    pub fn enable_interrupts(&mut self) -> Result<bool, RingError> {
        if self.event_idx {
            self.mem
                .store_u16(self.layout.used_event(), self.last_used)?;
        } else {
            self.mem.store_u16(self.layout.avail, 0)?;
        }
        fence(Ordering::SeqCst);
        self.has_used()
    }

    /// Asks the device to notify only once `n` more chains are used (EVENT_IDX), batching
    /// interrupts. Without EVENT_IDX this is [`DriverRing::enable_interrupts`].
    pub fn enable_interrupts_after(&mut self, n: u16) -> Result<bool, RingError> {
        if !self.event_idx {
            return self.enable_interrupts();
        }
        let event = self.last_used.wrapping_add(n.saturating_sub(1));
        self.mem.store_u16(self.layout.used_event(), event)?;
        fence(Ordering::SeqCst);
        self.has_used()
    }

    /// Tells the device not to notify the driver (the driver polls).
    ///
    /// With EVENT_IDX nothing needs writing: `used_event` stays behind the used index, so the
    /// device's need-event test fails until the index wraps all the way round.
    pub fn disable_interrupts(&mut self) -> Result<(), RingError> {
        if !self.event_idx {
            self.mem
                .store_u16(self.layout.avail, AVAIL_F_NO_INTERRUPT)?;
        }
        Ok(())
    }
}
