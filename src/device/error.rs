//! [`DeviceError`].

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
    /// A ring access failed (ring addresses outside guest memory).
    #[error("queue {queue} ring is not accessible in guest memory: {reason}")]
    Ring {
        /// Queue index.
        queue: u16,
        /// What virtio-queue reported.
        reason: String,
    },
    /// The queue was not configured and made ready by the driver.
    #[error("queue {queue} is not ready; the driver must configure it and set QueueReady")]
    NotReady {
        /// Queue index.
        queue: u16,
    },
    /// The port was marked broken earlier and needs a device reset.
    #[error("port is broken (DEVICE_NEEDS_RESET) after an earlier guest error; reset the device")]
    Broken,
}
