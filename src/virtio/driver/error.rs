//! [`RingError`].

/// What went wrong on the driver side of a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// An access `[addr, addr + len)` falls outside the ring's memory.
    OutOfBounds {
        /// Guest-physical start.
        addr: u64,
        /// Length in bytes.
        len: u64,
    },
    /// The queue size is not a power of two in `2..=32768`.
    InvalidSize(u16),
    /// A ring part is not aligned as the virtio spec requires.
    Misaligned {
        /// Which part.
        what: &'static str,
        /// Its address.
        addr: u64,
    },
    /// The caller's shadow state slice is shorter than `2 x size` entries.
    StateTooSmall {
        /// Entries needed.
        needed: usize,
        /// Entries given.
        given: usize,
    },
    /// A chain was empty.
    EmptyChain,
    /// A readable buffer followed a writable one (the spec puts device-writable parts last).
    WritableBeforeReadable,
    /// Not enough free descriptors for the chain.
    QueueFull {
        /// Descriptors the chain needs.
        needed: usize,
        /// Descriptors free.
        free: u16,
    },
    /// The device returned a used id that is not an outstanding chain head.
    BadUsedId(u32),
    /// The device advanced the used index by more than the queue size.
    UsedIndexJump {
        /// Driver's last seen used index.
        last: u16,
        /// Index the device published.
        published: u16,
    },
    /// A message does not fit its slot buffer.
    MessageTooLarge {
        /// Bytes needed.
        needed: usize,
        /// Slot size.
        slot: u32,
    },
    /// A received message's header failed validation.
    BadMessage(crate::wire::WireError),
}

impl core::fmt::Display for RingError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::OutOfBounds { addr, len } => write!(
                f,
                "ring access [{addr:#x}, +{len:#x}) is outside the ring's memory; check the queue addresses and memory size"
            ),
            Self::InvalidSize(s) => {
                write!(f, "queue size {s} is not a power of two in 2..=32768")
            }
            Self::Misaligned { what, addr } => {
                write!(f, "{what} at {addr:#x} is not aligned as virtio requires")
            }
            Self::StateTooSmall { needed, given } => write!(
                f,
                "driver state holds {given} entries, the queue needs {needed} (2 x queue size)"
            ),
            Self::EmptyChain => write!(f, "a descriptor chain needs at least one buffer"),
            Self::WritableBeforeReadable => write!(
                f,
                "readable buffers must come before writable ones in a chain"
            ),
            Self::QueueFull { needed, free } => write!(
                f,
                "chain needs {needed} descriptors but only {free} are free; reclaim used chains first"
            ),
            Self::BadUsedId(id) => write!(
                f,
                "device returned used id {id}, which is not an outstanding chain head"
            ),
            Self::UsedIndexJump { last, published } => write!(
                f,
                "device moved the used index from {last} to {published}, more than the queue size"
            ),
            Self::MessageTooLarge { needed, slot } => write!(
                f,
                "message of {needed} bytes does not fit a {slot}-byte slot buffer"
            ),
            Self::BadMessage(e) => write!(f, "received a bad message: {e}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for RingError {}
