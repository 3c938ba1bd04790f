//! One VM's port seen from the device side: its rx and tx queues on `virtio-queue`.
//!
//! [`DevicePort`] pops request chains from the tx queue into [`TxChain`] views (header plus
//! where the payload lives, however the guest split it across descriptors), writes deliveries
//! into chains the guest posted on its rx queue, and publishes used entries with EVENT_IDX
//! notification decisions. Every descriptor is checked by [`chain`]'s strict walker: a hostile
//! chain is a typed [`ChainError`], never a panic and never an access outside the port's memory.

mod avail;
pub mod chain;
mod error;
mod mem;
mod port;
mod used;

pub use chain::{ChainError, Seg};
pub use error::DeviceError;
pub use mem::GuestView;
pub use port::{DeliverError, DevicePort, Payload, PortCounters, TxChain, RX_QUEUE, TX_QUEUE};

#[cfg(test)]
mod tests;

/// A `virtio-queue` device-side queue of at most `max_size` entries, configured at `layout`
/// (as a driver wrote it) and ready. The transport builds its queues this way at activation,
/// and in-process peers for theirs.
pub fn ready_queue(
    max_size: u16,
    layout: crate::ring::RingLayout,
    event_idx: bool,
) -> Result<virtio_queue::Queue, virtio_queue::Error> {
    use virtio_queue::QueueT;
    use vm_memory::GuestAddress;
    let mut q = virtio_queue::Queue::new(max_size)?;
    q.try_set_size(layout.size)?;
    q.try_set_desc_table_address(GuestAddress(layout.desc))?;
    q.try_set_avail_ring_address(GuestAddress(layout.avail))?;
    q.try_set_used_ring_address(GuestAddress(layout.used))?;
    q.set_event_idx(event_idx);
    q.set_ready(true);
    Ok(q)
}
