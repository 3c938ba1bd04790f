//! vhost-user: vmq as the virtio-vsock device of a guest whose VMM (QEMU, Cloud Hypervisor,
//! crosvm) runs elsewhere.
//!
//! | file | what |
//! |---|---|
//! | [`config`] | [`DeviceConfig`]: the guest's CID and queue size; the config space, the features offered |
//! | [`device`] | [`VsockDevice`]: negotiation, config space, queue set-up, checked memory tables; hands the queues to a [`DeviceOwner`] |
//! | [`queues`] | [`DeviceOwner`], [`DeviceQueues`]: how the owner drives the queues from its own thread, and the locking rule |
//! | [`daemon`] | [`VsockDaemon`]: one VM's socket; serves one VMM at a time, again and again, until shut down |
//! | `frontend` | a VMM played in Rust for tests (feature `test-utils`) |
//!
//! The device moves no packets: its owner (the vsock port) drives the rx and tx queues from
//! its own thread, under the rule written in [`queues`]. Each VM's daemon runs on threads of
//! its own, so a VMM that breaks the protocol ends its own connection and nothing else.

pub mod config;
pub mod daemon;
pub mod device;
#[cfg(feature = "test-utils")]
pub mod frontend;
pub mod queues;

#[cfg(all(test, feature = "test-utils"))]
mod tests;

pub use config::{DeviceConfig, DeviceConfigError, DEFAULT_QUEUE_SIZE};
pub use daemon::{DaemonError, DaemonStats, ShutdownHandle, VsockDaemon};
pub use device::VsockDevice;
pub use queues::{DeviceOwner, DeviceQueues, QueueUseError};

/// The rx queue: the device puts packets for the guest in the guest's buffers.
pub const RX_QUEUE: u16 = 0;
/// The tx queue: the guest's packets for the device.
pub const TX_QUEUE: u16 = 1;
/// The event queue: transport events for the guest (a reset of all connections).
pub const EVENT_QUEUE: u16 = 2;
/// Queues of a virtio-vsock device.
pub const NUM_QUEUES: usize = 3;
/// Bytes of a virtio-vsock packet header.
pub const VSOCK_HEADER_SIZE: usize = crate::vsock::packet::HEADER_LEN;
