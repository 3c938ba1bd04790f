//! vmq: a VM-queue I/O dataplane for KVM.
//!
//! Virtio split-ring queues in guest memory carry messages between guest VMs; a host-side switch
//! spreads requests across backend VM queues by weighted health and fails over, losing nothing,
//! when a VM stops draining its queue.
//!
//! Data flows one way through the modules: CLI -> [`vmm`] / event loop -> [`switch`] ->
//! [`transport`] -> [`virtio`] / [`wire`].
//!
//! Built with `default-features = false`, only the `no_std` modules [`abi`], [`wire`] and the
//! `no_std` part of [`virtio`] (spec constants, ring layout, driver) remain; guest images use
//! the crate that way.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod abi;
pub mod virtio;
pub mod wire;

#[cfg(feature = "std")]
pub mod bench;
#[cfg(feature = "std")]
pub mod event;
#[cfg(feature = "std")]
pub mod peer;
#[cfg(feature = "std")]
pub mod runner;
#[cfg(feature = "std")]
pub mod switch;
#[cfg(feature = "std")]
pub mod topology;
#[cfg(feature = "std")]
pub mod transport;
#[cfg(feature = "std")]
pub mod vmm;
