//! `evil`: a hostile guest for tests: an honest client phase, then one attack on the device
//! side chosen by its mode ([`mode::evil`](crate::abi::mode::evil)).

/// Parameter slots (indices into `BootBlock::params`) it reads, from [`param`](super::param).
pub mod param {
    pub use super::super::driver::param::*;
    pub use super::super::param::{COUNT, MODE, SERVICE, SIDE_SERVICE, SIZE, TARGET, WINDOW};
}

/// Result slots (indices into `BootBlock::results`).
pub mod result {
    pub use super::super::driver::result::*;
    pub use super::super::traffic::*;

    /// 1 once the guest saw its device set `DEVICE_NEEDS_RESET`.
    pub const NEEDS_RESET: usize = 16;
    /// Hostile acts published (bad chains, index jumps, forged replies, rewritten chains,
    /// resets).
    pub const ATTACKS: usize = 17;
    /// ([`mode::evil::REWRITE`](crate::abi::mode::evil::REWRITE)): 1 when the short chain it
    /// rewrote after the switch took it still arrived with its original payload and no fault.
    pub const SNAPSHOT_OK: usize = 18;
    /// ([`mode::evil::RESET`](crate::abi::mode::evil::RESET)): replies to the side-service batch
    /// received before the reset (the rest were in flight when it reset).
    pub const BEFORE_RESET: usize = 19;
    /// ([`mode::evil::RESET`](crate::abi::mode::evil::RESET)): hellos received after the device
    /// came back.
    pub const REVIVED: usize = 20;
    /// ([`mode::evil::PAGES_WRITE`](crate::abi::mode::evil::PAGES_WRITE)): 1 when its write to
    /// a page it handed off reached neither the receiver nor the page that came home.
    pub const PAGES_OK: usize = 24;
}
