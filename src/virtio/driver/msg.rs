//! Whole messages on a ring: [`MsgTx`] sends, [`MsgRx`] receives, one slot buffer per
//! descriptor.

use core::marker::PhantomData;

use super::{Buf, DriverRing, RingError, RingMemory};
use crate::wire::{MsgHeader, HEADER_SIZE};

/// Fixed-size message buffers, one per descriptor: slot `i` is at `base + i x slot_size`.
///
/// Single-descriptor chains have their head equal to their descriptor, so a chain's buffer is
/// always `slot(head)` and never needs a lookup table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotArena {
    /// Guest-physical address of slot 0.
    pub base: u64,
    /// Bytes per slot (header + largest payload).
    pub slot_size: u32,
}

impl SlotArena {
    /// Address of slot `i`.
    #[inline]
    pub fn slot(&self, i: u16) -> u64 {
        self.base + i as u64 * self.slot_size as u64
    }
    /// Bytes an arena for `slots` slots of `slot_size` takes.
    pub const fn bytes(slots: u16, slot_size: u32) -> u64 {
        slots as u64 * slot_size as u64
    }
}

/// Whole messages on one queue of a port, seen by its driver: a ring and one slot buffer per
/// descriptor. `D` is the direction: [`Sending`] ([`MsgTx`], a port's tx queue) or
/// [`Receiving`] ([`MsgRx`], its rx queue).
pub struct MsgQueue<M, S, D> {
    ring: DriverRing<M, S>,
    arena: SlotArena,
    dir: PhantomData<D>,
}

/// [`MsgQueue`] direction: the driver sends messages on the queue.
pub enum Sending {}

/// [`MsgQueue`] direction: the driver receives messages on the queue.
pub enum Receiving {}

/// The sending side of a message queue (a port's tx queue, seen by its driver).
pub type MsgTx<M, S> = MsgQueue<M, S, Sending>;

/// The receiving side of a message queue (a port's rx queue, seen by its driver).
pub type MsgRx<M, S> = MsgQueue<M, S, Receiving>;

impl<M: RingMemory, S: AsRef<[u16]> + AsMut<[u16]>, D> MsgQueue<M, S, D> {
    /// Wraps a fresh ring; `arena` must have one slot per descriptor.
    pub fn new(ring: DriverRing<M, S>, arena: SlotArena) -> Self {
        Self {
            ring,
            arena,
            dir: PhantomData,
        }
    }

    /// The ring underneath.
    pub fn ring(&self) -> &DriverRing<M, S> {
        &self.ring
    }

    /// Mutable access to the ring underneath.
    pub fn ring_mut(&mut self) -> &mut DriverRing<M, S> {
        &mut self.ring
    }

    /// Publishes what was queued (sent messages, posted buffers); returns whether the device
    /// wants a kick.
    pub fn flush(&mut self) -> Result<bool, RingError> {
        self.ring.publish()
    }
}

impl<M: RingMemory, S: AsRef<[u16]> + AsMut<[u16]>> MsgQueue<M, S, Sending> {
    /// Copies `hdr` and `payload` into the next free slot and queues it (visible after
    /// [`flush`](MsgQueue::flush)). Fails with [`RingError::QueueFull`] when every slot is in flight:
    /// call [`reclaim`](MsgQueue::reclaim) and retry.
    pub fn send(&mut self, hdr: &MsgHeader, payload: &[u8]) -> Result<u16, RingError> {
        let total = HEADER_SIZE + payload.len();
        if total > self.arena.slot_size as usize {
            return Err(RingError::MessageTooLarge {
                needed: total,
                slot: self.arena.slot_size,
            });
        }
        let head = self
            .ring
            .next_head()
            .ok_or(RingError::QueueFull { needed: 1, free: 0 })?;
        let addr = self.arena.slot(head);
        let mem = self.ring.memory();
        mem.write(addr, &hdr.to_bytes())?;
        mem.write(addr + HEADER_SIZE as u64, payload)?;
        self.ring.add(&[Buf::readable(addr, total as u32)])
    }

    /// Takes back every slot the device has finished with; returns how many.
    pub fn reclaim(&mut self) -> Result<usize, RingError> {
        self.ring.pop_used_batch(usize::MAX, |_| ())
    }

    /// Slots free for [`send`](MsgQueue::send).
    pub fn free(&self) -> u16 {
        self.ring.num_free()
    }
}

/// A received message: its validated header and payload length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxMsg {
    /// The header.
    pub header: MsgHeader,
    /// Payload bytes copied into the caller's buffer.
    pub len: usize,
}

impl<M: RingMemory, S: AsRef<[u16]> + AsMut<[u16]>> MsgQueue<M, S, Receiving> {
    /// Posts every free slot as a writable buffer (visible after [`flush`](MsgQueue::flush)).
    pub fn post_all(&mut self) -> Result<usize, RingError> {
        let mut n = 0;
        while let Some(head) = self.ring.next_head() {
            self.ring
                .add(&[Buf::writable(self.arena.slot(head), self.arena.slot_size)])?;
            n += 1;
        }
        Ok(n)
    }

    /// Takes the next delivered message, copies its payload into `payload` and re-posts the
    /// slot (visible after [`flush`](MsgQueue::flush)).
    ///
    /// A message whose header does not validate, or whose payload does not fit `payload`,
    /// still frees and re-posts its slot, then returns the error.
    pub fn recv(&mut self, payload: &mut [u8]) -> Result<Option<RxMsg>, RingError> {
        let Some(used) = self.ring.pop_used()? else {
            return Ok(None);
        };
        let addr = self.arena.slot(used.head);
        let result = self.read_message(addr, used.len, payload);
        self.ring
            .add(&[Buf::writable(addr, self.arena.slot_size)])?;
        result.map(Some)
    }

    fn read_message(
        &self,
        addr: u64,
        written: u32,
        payload: &mut [u8],
    ) -> Result<RxMsg, RingError> {
        let written = (written as usize).min(self.arena.slot_size as usize);
        let mut raw = [0u8; HEADER_SIZE];
        let mem = self.ring.memory();
        mem.read(addr, &mut raw)?;
        let header = MsgHeader::parse(&raw, written.saturating_sub(HEADER_SIZE))
            .map_err(RingError::BadMessage)?;
        let len = header.len() as usize;
        let room = payload.len() as u32;
        let dst = payload.get_mut(..len).ok_or(RingError::MessageTooLarge {
            needed: len,
            slot: room,
        })?;
        mem.read(addr + HEADER_SIZE as u64, dst)?;
        Ok(RxMsg { header, len })
    }
}
