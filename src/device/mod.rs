//! One VM's port seen from the device side: its rx and tx queues on `virtio-queue`.
//!
//! [`DevicePort`] pops request chains from the tx queue into [`TxChain`] views (header plus
//! where the payload lives, however the guest split it across descriptors), writes deliveries
//! into chains the guest posted on its rx queue, and publishes used entries with EVENT_IDX
//! notification decisions. Every descriptor is checked by [`chain`]'s strict walker: a hostile
//! chain is a typed [`ChainError`], never a panic and never an access outside the port's memory.

mod avail;
pub mod chain;
mod error;
mod mem;
mod port;
mod used;

pub use chain::{ChainError, Seg};
pub use error::DeviceError;
pub use mem::GuestView;
pub use port::{DeliverError, DevicePort, Payload, PortCounters, TxChain, RX_QUEUE, TX_QUEUE};

#[cfg(test)]
mod tests;
