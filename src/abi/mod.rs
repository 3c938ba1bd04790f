//! The contract between the VMM and a vmq guest image (no_std), one module per reader:
//!
//! - [`platform`]: what every image and the VMM agree on: the guest-physical memory map, the
//!   I/O ports, the segment selectors and the boot block.
//! - [`image`]: each image's parameters (slots of `BootBlock::params`) and results (slots of
//!   `BootBlock::results`), and the exit statuses the images report.
//! - [`mode`]: the test modes of the images that have them (`client`, `evil`).
//!
//! The vmq virtio-mmio device as a guest driver sees it (register offsets, ids, feature and
//! status bits, config space) is in [`crate::virtio`] (`spec`, `vmq_device`).

pub mod image;
pub mod mode;
pub mod platform;
