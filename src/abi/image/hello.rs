//! `hello`: the first vmq guest; its modes exercise the VMM alone (console, exit, doorbell wait,
//! MMIO, exit cost). It keeps no results.

/// Parameter slots (indices into `BootBlock::params`) it reads, from [`param`](super::param).
pub mod param {
    pub use super::super::param::{COUNT, EXIT_STATUS, MODE, SERVICE, SIZE, TEST_ADDR};
}
