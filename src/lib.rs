//! vmq: a VM-queue I/O dataplane for KVM.
//!
//! Virtio split-ring queues in guest memory carry messages between guest VMs; a host-side switch
//! spreads requests across backend VM queues by weighted health and fails over, losing nothing,
//! when a VM stops draining its queue.
//!
//! Data flows one way through the modules: CLI -> [`runner`] / [`event`] loop -> [`switch`] ->
//! [`port`]s -> [`transport`] -> [`virtio`] / [`wire`]. KVM ([`vmm`]) sits at the bottom beside
//! them: it runs VMs and dispatches their MMIO exits to [`mmio::MmioDevice`]s, and imports nothing
//! from the switch or the transport. The runner's [`runner::VmqLink`] is the one place that puts
//! a vmq device ([`transport`]) on a VM and wires it to the switch.
//!
//! Stock Linux guests come in through [`serve`] (a vhost-user vsock device per guest);
//! [`linux`] boots them under QEMU and drives their consoles, for `vmq demo --linux`
//! ([`linux_demo`]), the Linux-guest tests and the bench.
//!
//! Built with `default-features = false`, only the `no_std` modules [`abi`], [`wire`] and the
//! `no_std` part of [`virtio`] (spec constants, ring layout, driver) remain; guest images use
//! the crate that way.
//!
//! The test kit is not part of this surface; cargo features add it:
//! - `traffic` (`no_std`): the traffic loops (windowed client, echo worker) that guest images,
//!   host peers, tests, benches and fuzzing share;
//! - `test-utils`: in-process host peers (`peer`), a host thread playing a VM's driver, and
//!   `vmm::minimal_elf`, the ELF image the loader tests build on;
//! - `bench`: the `vmq bench` harnesses, shared with the criterion benches.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod abi;
#[cfg(feature = "traffic")]
pub mod traffic;
pub mod virtio;
pub mod wire;

#[cfg(feature = "bench")]
pub mod bench;
#[cfg(feature = "std")]
pub mod event;
#[cfg(feature = "std")]
pub mod linux;
#[cfg(feature = "std")]
pub mod linux_demo;
#[cfg(feature = "std")]
pub mod metrics;
#[cfg(feature = "std")]
pub mod mmio;
#[cfg(feature = "test-utils")]
pub mod peer;
#[cfg(feature = "std")]
pub mod port;
#[cfg(feature = "std")]
pub mod runner;
#[cfg(feature = "std")]
pub mod serve;
#[cfg(feature = "std")]
pub mod switch;
#[cfg(feature = "std")]
pub mod topology;
#[cfg(feature = "std")]
pub mod transport;
#[cfg(feature = "std")]
pub mod vhost_user;
#[cfg(feature = "std")]
pub mod vmm;
#[cfg(feature = "std")]
pub mod vsock;
