//! [`DeviceOwner`] and [`DeviceQueues`]: the seam between a [`VsockDevice`](super::VsockDevice)(super::VsockDevice)
//! and the code that drives its queues (the vsock port), and the rule that keeps their threads
//! apart.
//!
//! # Threads and locks
//!
//! Three threads touch a device while a VMM is connected:
//! - the **vhost-user thread** (vhost-user-backend's request loop) handles the VMM's messages:
//!   SET_MEM_TABLE, SET_VRING_*, GET_VRING_BASE, RESET_DEVICE, GET_CONFIG;
//! - the **vring worker** (vhost-user-backend's epoll loop) turns kicks into
//!   [`DeviceOwner::kicked`];
//! - the **owner's thread** pops, fills and returns chains through [`DeviceQueues`].
//!
//! The rule that keeps them apart:
//! 1. The device calls its owner's three methods one at a time, in order, with the device's
//!    state lock held: no `kicked` before `started`, none after `stopped`, and `stopped` never
//!    overlaps `started`. So an owner must not call back into the [`VsockDevice`](super::VsockDevice) from them
//!    (nothing in [`DeviceQueues`] does), `started` and `kicked` must return promptly, and
//!    `stopped` may block, but only until the owner's own thread has let go of the queues.
//! 2. The owner takes a vring's lock ([`VringRwLock::get_mut`]) for each batch of work on it
//!    and holds no vring lock while it waits for anything else. The vhost-user thread takes a
//!    vring's lock only for a moment (to mark it not ready, to read its `next_avail`), so
//!    it waits, at most, for the owner's batch in progress.
//! 3. **Stop.** GET_VRING_BASE marks the queue not ready (under its lock: from then on it
//!    pops nothing), then the device calls [`DeviceOwner::stopped`], and only after `stopped`
//!    returns does vhost-user-backend read the queue's `next_avail` to answer the VMM. When
//!    `stopped` returns, the owner must have finished every chain it popped: returned it to
//!    the used ring (`add_used`), or given it back (`set_next_avail` one step back). Then the
//!    base the VMM gets is exact: every chain before it was consumed and completed, every
//!    chain after it is untouched, and a VMM that restarts the queue at that base loses and
//!    repeats nothing. From the moment a queue is not ready, `pop_descriptor_chain` returns
//!    `None` although its avail ring may still hold chains (and `enable_notification` says
//!    so): the owner checks `get_queue().ready()` under the lock and leaves such a queue
//!    alone instead of looping on it. Data the owner copied out of the guest stays the owner's across a
//!    stop; it goes out after the next [`DeviceOwner::started`]. GET_VRING_BASE on any one
//!    queue stops the owner for all three; it starts again once rx and tx are both ready,
//!    enabled and lie in memory, at the next kick or queue start.
//! 4. **Memory.** The owner reads guest memory only through [`DeviceQueues::memory`], loading
//!    it afresh for each batch (`memory().memory()`), and passes that to the `Queue` methods
//!    (`pop_descriptor_chain`, `add_used`, `needs_notification`, ...). It never uses
//!    `VringState::add_used` and the other `VringState` helpers that read vhost-user-backend's
//!    own copy of the memory: the device publishes a memory table to its owner only after it
//!    checked that every region is backed by its file (see [`VsockDevice`](super::VsockDevice)); the library's
//!    copy is unchecked. A SET_MEM_TABLE while the queues run replaces the memory between
//!    two of the owner's batches; a mapping the owner still holds stays mapped until it drops
//!    its guard.
//! 5. A device reset (RESET_DEVICE), new features, and the end of the connection stop the
//!    owner the same way before anything is torn down.

use std::fmt;
use std::io;

use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

use super::{EVENT_QUEUE, RX_QUEUE, TX_QUEUE};

/// The code that drives a device's queues (the vsock port): told when it may start, when the
/// guest kicked, and when it must stop. See the module documentation for the threading rule.
pub trait DeviceOwner: Send + Sync + 'static {
    /// The guest's memory is known and its rx and tx queues are ready: the owner may drive them
    /// from its own thread until [`DeviceOwner::stopped`]. Must not block.
    fn started(&self, queues: DeviceQueues);

    /// The guest kicked queue `index` ([`RX_QUEUE`] when it posted buffers, [`TX_QUEUE`] when
    /// it sent, [`EVENT_QUEUE`] when it posted event buffers), or the queue just became ready.
    /// Must not block.
    fn kicked(&self, index: u16);

    /// The VMM stopped a queue (GET_VRING_BASE), reset the device, changed its features, or
    /// went away: stop touching the queues. When this returns, every chain the owner popped is
    /// back in the used ring (or given back with `set_next_avail`), and the owner touches none
    /// of the [`DeviceQueues`] it was given again.
    fn stopped(&self);
}

/// What an owner needs to drive a device's queues from another thread. Cheap to clone (all
/// handles). Valid from [`DeviceOwner::started`] to [`DeviceOwner::stopped`].
#[derive(Clone)]
pub struct DeviceQueues {
    pub(super) mem: GuestMemoryAtomic<GuestMemoryMmap>,
    pub(super) vrings: Vec<VringRwLock>,
    pub(super) event_idx: bool,
    pub(super) generation: u64,
}

impl fmt::Debug for DeviceQueues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceQueues")
            .field("queues", &self.vrings.len())
            .field("event_idx", &self.event_idx)
            .field("generation", &self.generation)
            .finish()
    }
}

impl DeviceQueues {
    /// The guest's memory, checked by the device. Load it (`.memory()`) once per batch and
    /// pass that to the `Queue` methods.
    pub fn memory(&self) -> &GuestMemoryAtomic<GuestMemoryMmap> {
        &self.mem
    }

    /// The rx queue (device to guest).
    pub fn rx(&self) -> &VringRwLock {
        &self.vrings[RX_QUEUE as usize]
    }

    /// The tx queue (guest to device).
    pub fn tx(&self) -> &VringRwLock {
        &self.vrings[TX_QUEUE as usize]
    }

    /// The event queue (device to guest: transport resets). It may not be ready; check
    /// `get_queue().ready()` under its lock before using it.
    pub fn event(&self) -> &VringRwLock {
        &self.vrings[EVENT_QUEUE as usize]
    }

    /// Queue `index`, if the device has it.
    pub fn vring(&self, index: u16) -> Option<&VringRwLock> {
        self.vrings.get(index as usize)
    }

    /// Whether `VIRTIO_RING_F_EVENT_IDX` was negotiated (the queues know it too: their
    /// `needs_notification` and `enable_notification` follow it).
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// Counts the starts of this device: tells one run of the queues from the next.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// After the owner put used entries on queue `index`: signals the guest (its call
    /// eventfd) if it asked to be told (EVENT_IDX `used_event`, or no `NO_INTERRUPT`).
    /// Returns whether it signalled. Takes the queue's lock.
    pub fn notify_guest(&self, index: u16) -> Result<bool, QueueUseError> {
        let vring = self.vring(index).ok_or(QueueUseError::NoSuchQueue(index))?;
        let mem = self.mem.memory();
        let mut state = vring.get_mut();
        let needed = state
            .get_queue_mut()
            .needs_notification(&*mem)
            .map_err(|e| QueueUseError::Ring {
                index,
                reason: e.to_string(),
            })?;
        if needed {
            state
                .signal_used_queue()
                .map_err(|e| QueueUseError::Signal { index, source: e })?;
        }
        Ok(needed)
    }
}

/// Why a [`DeviceQueues`] helper failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueUseError {
    /// There is no such queue.
    #[error("the vsock device has no queue {0} (rx 0, tx 1, event 2)")]
    NoSuchQueue(u16),
    /// The guest's ring could not be read or written.
    #[error("queue {index}: the guest's ring is not accessible: {reason}; the guest broke the queue, reset the device")]
    Ring {
        /// Queue index.
        index: u16,
        /// What virtio-queue said.
        reason: String,
    },
    /// The call eventfd could not be written.
    #[error("queue {index}: cannot signal the guest through the VMM's call eventfd: {source}")]
    Signal {
        /// Queue index.
        index: u16,
        /// The write error.
        source: io::Error,
    },
}
