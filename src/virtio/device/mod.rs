//! One VM's port seen from the device side (std): its rx and tx queues over its guest memory.
//!
//! [`DeviceQueue`] owns all the device keeps about a queue. [`DevicePort`] pops request chains
//! from the tx queue into [`TxChain`] views (header plus where the payload lives, however the
//! guest split it across descriptors), writes deliveries into chains the guest posted on its rx
//! queue, and publishes used entries with EVENT_IDX notification decisions. Every descriptor is
//! checked by [`chain`]'s strict walker: a hostile chain is a typed [`ChainError`], never a
//! panic and never an access outside the port's memory.

pub mod chain;
mod error;
mod port;
mod queue;
mod tx_chain;

pub use chain::{ChainError, Seg};
pub use error::{DeviceError, QueueError};
pub use port::{DeliverError, DevicePort, PortCounters};
pub use queue::DeviceQueue;
pub use tx_chain::{Payload, TxChain};

#[cfg(test)]
mod tests;
