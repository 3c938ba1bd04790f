//! What a vsock device is and offers: the guest's CID and queue size ([`DeviceConfig`]), the
//! config space, the virtio and vhost-user features.

use crate::virtio::spec::{F_EVENT_IDX, F_VERSION_1};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};

/// `VIRTIO_VSOCK_F_SEQPACKET` (virtio 1.2, 5.10.3): the device supports SOCK_SEQPACKET.
pub const VIRTIO_VSOCK_F_SEQPACKET: u32 = 1;

/// Bytes of the vsock config space: `guest_cid`, le64.
pub const CONFIG_SIZE: usize = 8;

/// Default (and usual) most descriptors per queue.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;

/// The virtio features the device offers.
pub fn offered_features() -> u64 {
    (1u64 << F_VERSION_1)
        | (1u64 << F_EVENT_IDX)
        | (1u64 << VIRTIO_VSOCK_F_SEQPACKET)
        | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
}

/// The vhost-user protocol features the device offers (vhost adds `REPLY_ACK` itself).
///
/// `CONFIG` is what QEMU's `vhost-user-vsock` needs to read the CID; `MQ` lets a VMM ask for
/// the queue count (the peer offers it too); `RESET_DEVICE` makes a reset reach the device
/// (without it a VMM sends RESET_OWNER, which vhost-user-backend does not pass on).
pub fn offered_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::RESET_DEVICE
}

/// What a device is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// The guest's CID (its vsock address), read by the guest from the config space.
    pub guest_cid: u64,
    /// Most descriptors per queue the VMM may configure (a power of two, 2..=32768).
    pub max_queue_size: u16,
}

impl DeviceConfig {
    /// A device for the guest with CID `guest_cid`, with queues of up to
    /// [`DEFAULT_QUEUE_SIZE`] descriptors.
    pub fn new(guest_cid: u64) -> Self {
        Self {
            guest_cid,
            max_queue_size: DEFAULT_QUEUE_SIZE,
        }
    }
}

/// Why a device could not be made.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DeviceConfigError {
    /// The CID is reserved or does not fit the 32 bits Linux uses.
    #[error(
        "guest CID {0} cannot be used: CIDs 0, 1, 2 and 4294967295 are reserved and Linux \
         takes 32-bit CIDs; pick a CID from 3 to 4294967294"
    )]
    BadCid(u64),
    /// The queue size is not a power of two in 2..=32768.
    #[error("maximum queue size {0} is not a power of two from 2 to 32768; 256 is usual")]
    BadQueueSize(u16),
}
