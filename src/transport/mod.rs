//! virtio-mmio v2 register emulation for the vmq message-queue device.
//!
//! [`VirtioMmio`] is the device a guest driver sees in its MMIO window: magic, version, ids,
//! feature negotiation, two queues (0 = rx, 1 = tx), notify, interrupt status, device status
//! and a small read-only config space (all laid out in [`crate::virtio::spec`] and
//! [`crate::virtio::vmq_device`]). It knows nothing about KVM: it is an
//! [`MmioDevice`](crate::mmio::MmioDevice) over a `GuestMemoryMmap`, and the runner's
//! glue (`crate::runner::VmqLink`) places it on a VM's bus.
//!
//! When the driver sets `DRIVER_OK` with both queues ready, the device builds the two
//! [`DeviceQueue`](crate::virtio::DeviceQueue)s (EVENT_IDX as negotiated) and a
//! [`DevicePort`](crate::virtio::DevicePort) over them and hands it to its owner as
//! [`TransportEvent::Activated`]; a status write of 0 sends
//! [`TransportEvent::Reset`]. Whatever a guest writes, the device never panics: bad sequences
//! are logged, counted and ignored, or refused the way the virtio spec says (e.g. `FEATURES_OK`
//! stays clear when the driver asks for features the device does not offer).

mod device;
mod error;

pub use device::{TransportCounters, TransportEvent, VirtioMmio};
pub use error::TransportError;

#[cfg(test)]
mod tests;
