//! The driver side of a virtio 1.x split virtqueue over guest memory (`no_std`).
//!
//! The driver owns the descriptor table and the avail ring and reads the used ring; the device
//! side of the same queue is [`super::device`]. Guest images, host-side test peers and
//! benchmarks all drive queues through [`DriverRing`].
//!
//! Memory access goes through the small [`RingMemory`] trait so the same code runs over raw
//! pointers inside a bare-metal guest ([`RawMemory`]) and over a host's view of guest memory
//! (`GuestView`, std only).
//!
//! [`MsgTx`] and [`MsgRx`] (the two directions of a [`MsgQueue`]) put whole messages ([`crate::wire::MsgHeader`] + payload) on a ring
//! with one fixed-size buffer per descriptor, which is what guests and peers use.

mod error;
mod memory;
mod msg;
mod ring;

pub use error::RingError;
pub use memory::{RawMemory, RingMemory};
pub use msg::{MsgQueue, MsgRx, MsgTx, Receiving, RxMsg, Sending, SlotArena};
pub use ring::{Buf, DriverRing, RingCounters, Used};
