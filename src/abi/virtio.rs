//! The vmq virtio-mmio device as a guest driver sees it (`no_std`): register offsets, status
//! and feature bits, the device id and the config space.
//!
//! The values repeat `virtio-bindings` (which the no_std guest build does not pull in); std
//! builds check at compile time that they agree. The host side (`crate::transport`) uses
//! `virtio-bindings` directly.

/// `MagicValue`: "virt" in little endian.
pub const MAGIC: u32 = 0x7472_6976;
/// `Version` of the modern (non-legacy) virtio-mmio transport.
pub const VERSION: u32 = 2;
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
/// Number of queues: 0 = rx (the device writes into guest buffers), 1 = tx (the guest sends).
pub const NUM_QUEUES: u16 = 2;

/// Queue index of rx: the device writes deliveries into buffers the guest posts here.
pub const QUEUE_RX: u16 = 0;
/// Queue index of tx: the guest posts messages here for the device to read.
pub const QUEUE_TX: u16 = 1;

/// Register offset: `MagicValue` (R).
pub const REG_MAGIC: u64 = 0x000;
/// Register offset: `Version` (R).
pub const REG_VERSION: u64 = 0x004;
/// Register offset: `DeviceID` (R).
pub const REG_DEVICE_ID: u64 = 0x008;
/// Register offset: `VendorID` (R).
pub const REG_VENDOR_ID: u64 = 0x00c;
/// Register offset: `DeviceFeatures` (R), the 32 bits selected by `DeviceFeaturesSel`.
pub const REG_DEVICE_FEATURES: u64 = 0x010;
/// Register offset: `DeviceFeaturesSel` (W).
pub const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
/// Register offset: `DriverFeatures` (W), the 32 bits selected by `DriverFeaturesSel`.
pub const REG_DRIVER_FEATURES: u64 = 0x020;
/// Register offset: `DriverFeaturesSel` (W).
pub const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
/// Register offset: `QueueSel` (W).
pub const REG_QUEUE_SEL: u64 = 0x030;
/// Register offset: `QueueNumMax` (R).
pub const REG_QUEUE_NUM_MAX: u64 = 0x034;
/// Register offset: `QueueNum` (W).
pub const REG_QUEUE_NUM: u64 = 0x038;
/// Register offset: `QueueReady` (RW).
pub const REG_QUEUE_READY: u64 = 0x044;
/// Register offset: `QueueNotify` (W): the value is the queue index.
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
/// Register offset: `InterruptStatus` (R).
pub const REG_INTERRUPT_STATUS: u64 = 0x060;
/// Register offset: `InterruptACK` (W).
pub const REG_INTERRUPT_ACK: u64 = 0x064;
/// Register offset: `Status` (RW).
pub const REG_STATUS: u64 = 0x070;
/// Register offset: `QueueDescLow` (W).
pub const REG_QUEUE_DESC_LOW: u64 = 0x080;
/// Register offset: `QueueDescHigh` (W).
pub const REG_QUEUE_DESC_HIGH: u64 = 0x084;
/// Register offset: `QueueDriverLow` (W), the avail ring.
pub const REG_QUEUE_AVAIL_LOW: u64 = 0x090;
/// Register offset: `QueueDriverHigh` (W).
pub const REG_QUEUE_AVAIL_HIGH: u64 = 0x094;
/// Register offset: `QueueDeviceLow` (W), the used ring.
pub const REG_QUEUE_USED_LOW: u64 = 0x0a0;
/// Register offset: `QueueDeviceHigh` (W).
pub const REG_QUEUE_USED_HIGH: u64 = 0x0a4;
/// Register offset: `ConfigGeneration` (R).
pub const REG_CONFIG_GENERATION: u64 = 0x0fc;
/// Register offset: start of the device config space.
pub const REG_CONFIG: u64 = 0x100;

/// Config space (read-only, little endian, at [`REG_CONFIG`]), offset of `num_queues: u16`
/// (always [`NUM_QUEUES`]).
pub const CONFIG_NUM_QUEUES: u64 = 0;
/// Config space offset of `queue_num_max: u16` (the same value as `QueueNumMax`).
pub const CONFIG_QUEUE_NUM_MAX: u64 = 2;
/// Config space offset of `max_payload: u32`, the largest payload a header may announce.
pub const CONFIG_MAX_PAYLOAD: u64 = 4;
/// Size of the config space in bytes.
pub const CONFIG_SIZE: u64 = 8;

/// Status bit: the guest noticed the device.
pub const STATUS_ACKNOWLEDGE: u32 = 1;
/// Status bit: the guest has a driver for it.
pub const STATUS_DRIVER: u32 = 2;
/// Status bit: the driver is set up and running.
pub const STATUS_DRIVER_OK: u32 = 4;
/// Status bit: feature negotiation is complete (the device clears it if it refuses the
/// driver's features).
pub const STATUS_FEATURES_OK: u32 = 8;
/// Status bit: the device hit an error the driver must resolve by a reset.
pub const STATUS_NEEDS_RESET: u32 = 64;
/// Status bit: the driver gave up on the device.
pub const STATUS_FAILED: u32 = 128;

/// Feature bit number: `VIRTIO_RING_F_EVENT_IDX`.
pub const F_EVENT_IDX: u32 = 29;
/// Feature bit number: `VIRTIO_F_VERSION_1`.
pub const F_VERSION_1: u32 = 32;
/// Every feature the device offers.
pub const DEVICE_FEATURES: u64 = (1 << F_VERSION_1) | (1 << F_EVENT_IDX);

/// `InterruptStatus` bit: a used ring moved.
pub const INT_VRING: u32 = 1;
/// `InterruptStatus` bit: the configuration (or the device status) changed.
pub const INT_CONFIG: u32 = 2;

#[cfg(feature = "std")]
const _: () = {
    use virtio_bindings::virtio_config as vc;
    use virtio_bindings::virtio_mmio as vm;
    use virtio_bindings::virtio_ring as vr;
    assert!(MAGIC == u32::from_le_bytes(*b"virt"));
    assert!(QUEUE_RX == crate::device::RX_QUEUE);
    assert!(QUEUE_TX == crate::device::TX_QUEUE);
    assert!(REG_MAGIC == vm::VIRTIO_MMIO_MAGIC_VALUE as u64);
    assert!(REG_VERSION == vm::VIRTIO_MMIO_VERSION as u64);
    assert!(REG_DEVICE_ID == vm::VIRTIO_MMIO_DEVICE_ID as u64);
    assert!(REG_VENDOR_ID == vm::VIRTIO_MMIO_VENDOR_ID as u64);
    assert!(REG_DEVICE_FEATURES == vm::VIRTIO_MMIO_DEVICE_FEATURES as u64);
    assert!(REG_DEVICE_FEATURES_SEL == vm::VIRTIO_MMIO_DEVICE_FEATURES_SEL as u64);
    assert!(REG_DRIVER_FEATURES == vm::VIRTIO_MMIO_DRIVER_FEATURES as u64);
    assert!(REG_DRIVER_FEATURES_SEL == vm::VIRTIO_MMIO_DRIVER_FEATURES_SEL as u64);
    assert!(REG_QUEUE_SEL == vm::VIRTIO_MMIO_QUEUE_SEL as u64);
    assert!(REG_QUEUE_NUM_MAX == vm::VIRTIO_MMIO_QUEUE_NUM_MAX as u64);
    assert!(REG_QUEUE_NUM == vm::VIRTIO_MMIO_QUEUE_NUM as u64);
    assert!(REG_QUEUE_READY == vm::VIRTIO_MMIO_QUEUE_READY as u64);
    assert!(REG_QUEUE_NOTIFY == vm::VIRTIO_MMIO_QUEUE_NOTIFY as u64);
    assert!(REG_INTERRUPT_STATUS == vm::VIRTIO_MMIO_INTERRUPT_STATUS as u64);
    assert!(REG_INTERRUPT_ACK == vm::VIRTIO_MMIO_INTERRUPT_ACK as u64);
    assert!(REG_STATUS == vm::VIRTIO_MMIO_STATUS as u64);
    assert!(REG_QUEUE_DESC_LOW == vm::VIRTIO_MMIO_QUEUE_DESC_LOW as u64);
    assert!(REG_QUEUE_DESC_HIGH == vm::VIRTIO_MMIO_QUEUE_DESC_HIGH as u64);
    assert!(REG_QUEUE_AVAIL_LOW == vm::VIRTIO_MMIO_QUEUE_AVAIL_LOW as u64);
    assert!(REG_QUEUE_AVAIL_HIGH == vm::VIRTIO_MMIO_QUEUE_AVAIL_HIGH as u64);
    assert!(REG_QUEUE_USED_LOW == vm::VIRTIO_MMIO_QUEUE_USED_LOW as u64);
    assert!(REG_QUEUE_USED_HIGH == vm::VIRTIO_MMIO_QUEUE_USED_HIGH as u64);
    assert!(REG_CONFIG_GENERATION == vm::VIRTIO_MMIO_CONFIG_GENERATION as u64);
    assert!(REG_CONFIG == vm::VIRTIO_MMIO_CONFIG as u64);
    assert!(STATUS_ACKNOWLEDGE == vc::VIRTIO_CONFIG_S_ACKNOWLEDGE);
    assert!(STATUS_DRIVER == vc::VIRTIO_CONFIG_S_DRIVER);
    assert!(STATUS_DRIVER_OK == vc::VIRTIO_CONFIG_S_DRIVER_OK);
    assert!(STATUS_FEATURES_OK == vc::VIRTIO_CONFIG_S_FEATURES_OK);
    assert!(STATUS_NEEDS_RESET == vc::VIRTIO_CONFIG_S_NEEDS_RESET);
    assert!(STATUS_FAILED == vc::VIRTIO_CONFIG_S_FAILED);
    assert!(F_EVENT_IDX == vr::VIRTIO_RING_F_EVENT_IDX);
    assert!(F_VERSION_1 == vc::VIRTIO_F_VERSION_1);
    assert!(INT_VRING == vm::VIRTIO_MMIO_INT_VRING);
    assert!(INT_CONFIG == vm::VIRTIO_MMIO_INT_CONFIG);
};
