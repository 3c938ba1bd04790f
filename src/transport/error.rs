//! Why an activation failed.

use crate::device::DeviceError;

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
    /// virtio-queue refused a queue's size or addresses.
    #[error("queue {queue} configuration rejected: {reason}")]
    Queue {
        /// Queue index.
        queue: u16,
        /// What was wrong.
        reason: String,
    },
    /// The device port refused the queues (e.g. a ring outside guest memory).
    #[error("cannot build the device port: {0}")]
    Port(#[from] DeviceError),
}
