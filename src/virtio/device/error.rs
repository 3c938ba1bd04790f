//! [`DeviceError`] and [`QueueError`].

use super::ChainError;
use crate::wire::WireError;

/// Why a port operation failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DeviceError {
    /// The guest broke the virtqueue protocol; the port must be reset (DEVICE_NEEDS_RESET).
    #[error("guest posted a bad descriptor chain: {0}")]
    BadChain(#[from] ChainError),
    /// The guest's message header is malformed; the port must be reset.
    #[error("guest sent a bad message header: {0}")]
    BadHeader(#[from] WireError),
    /// The guest moved its avail index by more than the queue size.
    #[error("guest moved the avail index of queue {queue} by more than the queue size")]
    AvailIndexJump {
        /// Queue index.
        queue: u16,
    },
    /// The guest published a chain head the device still holds (taken and not returned yet):
    /// one request would be in flight twice.
    #[error("guest published chain {head} on queue {queue} again while the device still holds it")]
    HeldHead {
        /// Queue index.
        queue: u16,
        /// The head descriptor index.
        head: u16,
    },
    /// A ring access failed (ring addresses outside guest memory).
    #[error("queue {queue} ring is not accessible in guest memory: {reason}")]
    Ring {
        /// Queue index.
        queue: u16,
        /// What failed.
        reason: String,
    },
    /// A queue the driver configured cannot be served.
    #[error("queue {queue} cannot be served: {source}")]
    Queue {
        /// Queue index.
        queue: u16,
        /// What is wrong with it.
        source: QueueError,
    },
    /// The port was marked broken earlier and needs a device reset.
    #[error("port is broken (DEVICE_NEEDS_RESET) after an earlier guest error; reset the device")]
    Broken,
}

/// Why a queue configuration cannot be activated.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// The device's maximum queue size is not a power of two in 1..=32768.
    #[error("maximum queue size {0} is not a power of two in 1..=32768")]
    InvalidMaxSize(u16),
    /// The driver's queue size is not a power of two, or larger than the device offers.
    #[error("queue size {size} is not a power of two in 1..={max_size}")]
    InvalidSize {
        /// Size the driver set.
        size: u16,
        /// Largest size the device offers.
        max_size: u16,
    },
    /// A ring part is not aligned as the virtio spec requires.
    #[error("{part} at {addr:#x} is not {align}-byte aligned as virtio requires")]
    Misaligned {
        /// Which part ("descriptor table", "avail ring", "used ring").
        part: &'static str,
        /// Its guest-physical address.
        addr: u64,
        /// The alignment it needs.
        align: u64,
    },
    /// A ring part (with its trailing event field) does not lie in guest memory.
    #[error("{part} [{addr:#x}, +{len:#x}) is outside guest memory; check the queue addresses")]
    OutsideMemory {
        /// Which part.
        part: &'static str,
        /// Its guest-physical address.
        addr: u64,
        /// Its size in bytes.
        len: u64,
    },
}
