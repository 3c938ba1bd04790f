//! The vmq message-queue device as a driver sees it (`no_std`): its ids, its two queues, the
//! features it offers and its config space. Register offsets and bits are in [`super::spec`].

use super::spec::{F_EVENT_IDX, F_VERSION_1};

/// `DeviceID` of the vmq message-queue device.
///
/// Not assigned by OASIS: the spec's assigned ids are small (below 64) and the transitional
/// ones start at 0x1000; vmq picks `0x564d` ("VM") from the unassigned range so that no stock
/// driver binds to it.
pub const DEVICE_ID: u32 = 0x564d;
/// `VendorID`: "VMQ\0" in little endian.
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"VMQ\0");
/// Queue size the device offers (`QueueNumMax`) for both queues.
pub const QUEUE_NUM_MAX: u16 = 256;
/// Number of queues: [`RX_QUEUE`] and [`TX_QUEUE`].
pub const NUM_QUEUES: u16 = 2;

/// Index of the rx queue: the device writes deliveries into buffers the guest posts here.
pub const RX_QUEUE: u16 = 0;
/// Index of the tx queue: the guest posts messages here for the device to read.
pub const TX_QUEUE: u16 = 1;

/// Every feature the device offers: `VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX`.
pub const DEVICE_FEATURES: u64 = (1 << F_VERSION_1) | (1 << F_EVENT_IDX);

/// Config space (read-only, little endian, at [`super::spec::REG_CONFIG`]), offset of
/// `num_queues: u16` (always [`NUM_QUEUES`]).
pub const CONFIG_NUM_QUEUES: u64 = 0;
/// Config space offset of `queue_num_max: u16` (the same value as `QueueNumMax`).
pub const CONFIG_QUEUE_NUM_MAX: u64 = 2;
/// Config space offset of `max_payload: u32`, the largest payload a header may announce.
pub const CONFIG_MAX_PAYLOAD: u64 = 4;
/// Size of the config space in bytes.
pub const CONFIG_SIZE: u64 = 8;
