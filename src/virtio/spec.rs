//! Constants of the virtio 1.x spec that vmq uses, under one name each (`no_std`).
//!
//! The guest images build without std and so without `virtio-bindings`, which needs it. The
//! constants a driver needs are therefore defined here once, and std builds check each against
//! `virtio-bindings` at compile time. Constants only the host side needs are taken from
//! `virtio-bindings` directly (std only). Nothing else in vmq spells a virtio number.
//!
//! Names: `REG_*` virtio-mmio register offsets, `STATUS_*` device status bits, `F_*` feature
//! bit numbers, `INT_*` interrupt status bits, `DESC_*` / `AVAIL_F_*` / `USED_F_*` split-ring
//! fields. The vmq device's own numbers (ids, queues, config space) are in
//! [`super::vmq_device`].

/// `MagicValue`: "virt" in little endian.
pub const MAGIC: u32 = 0x7472_6976;
/// `Version` of the modern (non-legacy) virtio-mmio transport.
pub const VERSION: u32 = 2;

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

/// Register offset: `SHMLenLow` (R), the low half of the selected shared-memory region's
/// length.
#[cfg(feature = "std")]
pub const REG_SHM_LEN_LOW: u64 = vm::VIRTIO_MMIO_SHM_LEN_LOW as u64;
/// Register offset: `SHMLenHigh` (R).
#[cfg(feature = "std")]
pub const REG_SHM_LEN_HIGH: u64 = vm::VIRTIO_MMIO_SHM_LEN_HIGH as u64;

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

/// Feature bit number: `VIRTIO_RING_F_EVENT_IDX` (the `used_event` / `avail_event` fields).
pub const F_EVENT_IDX: u32 = 29;
/// Feature bit number: `VIRTIO_F_VERSION_1`.
pub const F_VERSION_1: u32 = 32;

/// `InterruptStatus` bit: a used ring moved.
pub const INT_VRING: u32 = 1;
/// `InterruptStatus` bit: the configuration (or the device status) changed.
pub const INT_CONFIG: u32 = 2;

/// Descriptor size in bytes (`struct virtq_desc`).
pub const DESC_SIZE: u64 = 16;
/// Largest split-ring queue size.
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Alignment of the descriptor table.
pub const DESC_ALIGN: u64 = 16;
/// Alignment of the avail ring.
pub const AVAIL_ALIGN: u64 = 2;
/// Alignment of the used ring.
pub const USED_ALIGN: u64 = 4;
/// Descriptor flag: the chain continues at `next`.
pub const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
pub const DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer holds an indirect descriptor table.
pub const DESC_F_INDIRECT: u16 = 4;
/// Used-ring flag: the device does not want kicks (no EVENT_IDX).
pub const USED_F_NO_NOTIFY: u16 = 1;
/// Avail-ring flag: the driver does not want interrupts (no EVENT_IDX).
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;

#[cfg(feature = "std")]
use virtio_bindings::{virtio_config as vc, virtio_mmio as vm, virtio_ring as vr};

#[cfg(feature = "std")]
const _: () = {
    assert!(MAGIC == u32::from_le_bytes(*b"virt"));
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
    assert!(DESC_SIZE as usize == core::mem::size_of::<vr::vring_desc>());
    assert!(DESC_ALIGN == vr::VRING_DESC_ALIGN_SIZE as u64);
    assert!(AVAIL_ALIGN == vr::VRING_AVAIL_ALIGN_SIZE as u64);
    assert!(USED_ALIGN == vr::VRING_USED_ALIGN_SIZE as u64);
    assert!(DESC_F_NEXT as u32 == vr::VRING_DESC_F_NEXT);
    assert!(DESC_F_WRITE as u32 == vr::VRING_DESC_F_WRITE);
    assert!(DESC_F_INDIRECT as u32 == vr::VRING_DESC_F_INDIRECT);
    assert!(USED_F_NO_NOTIFY as u32 == vr::VRING_USED_F_NO_NOTIFY);
    assert!(AVAIL_F_NO_INTERRUPT as u32 == vr::VRING_AVAIL_F_NO_INTERRUPT);
};
