//! `worker`: serves requests, answering each with the payload XOR [`PAYLOAD_XOR`]; its
//! parameters inject the backend faults the failover tests need.

/// Parameter slots (indices into `BootBlock::params`).
pub mod param {
    pub use super::super::driver::param::*;

    /// Replies to send before exiting 0 (0 = serve until the host stops the VM).
    pub const COUNT: usize = 1;
    /// Stop draining after this many requests (0 = never), for failover tests.
    pub const STALL_AFTER: usize = 3;
    /// Largest request payload expected (sizes the rx slots, at least 1 KiB).
    pub const SIZE: usize = 5;
    /// Busy-loop iterations per request (0 = none).
    pub const SLOW: usize = 11;
    /// Answer every n-th request with `Status::BackendError` (0 = never).
    pub const ERROR_EVERY: usize = 12;
    /// Exit with [`exit::CRASHED`](super::super::exit::CRASHED) right after the K-th reply,
    /// leaving whatever else it was given unanswered (0 = never).
    pub const CRASH_AFTER: usize = 13;
    /// Go mute after the K-th reply: keep taking requests off the rx queue but never answer
    /// another one (0 = never). The switch sees a backend that drains but does not answer.
    pub const MUTE_AFTER: usize = 16;
}

/// Result slots (indices into `BootBlock::results`).
pub mod result {
    pub use super::super::driver::result::*;
    pub use super::super::traffic::*;
}

/// The byte a worker XORs into every payload byte of a request to make its reply; a `client`
/// checks for it.
pub const PAYLOAD_XOR: u8 = 0x5a;
