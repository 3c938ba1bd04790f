//! Virtio, defined once: the spec's constants, the split-ring layout, the driver side of a
//! queue (`no_std`, for guest images, host peers and benchmarks), and, with std, the device
//! side ([`DeviceQueue`], the strict chain walker, [`DevicePort`]) over the host's one checked
//! view of guest memory ([`GuestView`]).
//!
//! | module | what | std? |
//! |---|---|---|
//! | [`spec`] | virtio constants (mmio registers, status, features, ring flags), checked against `virtio-bindings` | no_std |
//! | [`vmq_device`] | the vmq device's ids, queues, offered features and config space | no_std |
//! | [`layout`] | where a split ring's parts lie; `need_event` | no_std |
//! | [`driver`] | [`DriverRing`], [`MsgTx`] / [`MsgRx`], the [`RingMemory`] trait | no_std |
//! | [`mem`] | [`GuestView`]: a host's checked view of a guest's memory | std |
//! | [`device`] | [`DeviceQueue`], [`chain`](device::chain), [`DevicePort`] | std |

pub mod driver;
pub mod layout;
pub mod spec;
pub mod vmq_device;

#[cfg(feature = "std")]
pub mod device;
#[cfg(feature = "std")]
pub mod mem;

pub use driver::{
    Buf, DriverRing, MsgQueue, MsgRx, MsgTx, RawMemory, Receiving, RingCounters, RingError,
    RingMemory, RxMsg, Sending, SlotArena, Used,
};
pub use layout::{need_event, RingLayout};
pub use vmq_device::{RX_QUEUE, TX_QUEUE};

#[cfg(feature = "std")]
pub use device::{
    ChainError, DeliverError, DeviceError, DevicePort, DeviceQueue, Payload, PortCounters,
    QueueError, Seg, TxChain,
};
#[cfg(feature = "std")]
pub use mem::GuestView;
