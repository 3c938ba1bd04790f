//! Why an activation failed.

use crate::virtio::{DeviceError, QueueError};

/// Why the device could not start serving the queues the driver configured. The device then
/// sets `DEVICE_NEEDS_RESET` and the driver has to reset it.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The driver set `DRIVER_OK` before making a queue ready.
    #[error("queue {queue} is not ready at DRIVER_OK; the driver must set QueueReady on both queues first")]
    QueueNotReady {
        /// Queue index.
        queue: u16,
    },
    /// A queue's size or ring addresses are not valid.
    #[error("queue {queue} configuration rejected: {source}")]
    Queue {
        /// Queue index.
        queue: u16,
        /// What was wrong.
        source: QueueError,
    },
    /// The device port refused the queues (e.g. a ring outside guest memory).
    #[error("cannot build the device port: {0}")]
    Port(#[from] DeviceError),
}
