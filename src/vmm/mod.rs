//! KVM: guest memory, vCPU set-up and run loop, guest-image loading, port I/O and MMIO wiring.
//!
//! A [`Vm`] owns one KVM VM with one vCPU that runs a vmq guest image in 64-bit **user mode**
//! (CPL 3, IOPL 3), which runs natively even under software KVM such as `kvm_pvm`. The guest
//! talks to the VMM through the ports in [`crate::abi::platform`] (console, exit, doorbell-wait) and
//! through MMIO devices ([`crate::mmio::MmioDevice`]) registered on the VM's [`MmioBus`]. It
//! knows nothing of the vmq device or the switch: the runner's `VmqLink` attaches the one to a
//! VM and wires it to the other.
//!
//! ```no_run
//! use vmq::vmm::{images, Vm, VmConfig};
//! let mut vm = Vm::new(VmConfig::new("hello"))?;
//! vm.load_elf(images::HELLO)?;
//! let handle = vm.start()?;
//! let outcome = handle.join()?;
//! println!("{outcome:?}: {:?}", vm.console().lines());
//! # Ok::<(), vmq::vmm::Error>(())
//! ```
//!
//! Measured on the development machine (`kvm_pvm`, nested software virtualisation, a shared
//! 2-core cloud VM): see [`Vm`] for the figures.

mod arch;
mod bus;
mod error;
pub mod images;
mod loader;
pub mod pages;
mod vcpu;
mod vm;

pub use bus::MmioBus;
pub use error::{ElfError, Error, Result};
#[cfg(any(test, feature = "test-utils"))]
pub use loader::minimal_elf;
pub use loader::{load_elf, LoadedImage};
pub use vcpu::{Console, ExitCounters, ExitSnapshot, RunOutcome, SchedStat, VcpuHandle};
pub use vm::{IoeventMode, Vm, VmConfig};
