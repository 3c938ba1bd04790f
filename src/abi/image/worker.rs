//! `worker`: serves requests, answering each with the payload XOR [`PAYLOAD_XOR`]; its
//! parameters inject the backend faults the failover tests need.

/// Parameter slots (indices into `BootBlock::params`) it reads, from [`param`](super::param).
pub mod param {
    pub use super::super::driver::param::*;
    pub use super::super::param::{
        COUNT, CRASH_AFTER, ERROR_EVERY, KEEP_PAGES, LIE_LOAD, MUTE_AFTER, SIZE, SLOW, STALL_AFTER,
    };
}

/// Result slots (indices into `BootBlock::results`).
pub mod result {
    pub use super::super::driver::result::*;
    pub use super::super::traffic::*;
}

/// The byte a worker XORs into every payload byte of a request to make its reply; a `client`
/// checks for it.
pub const PAYLOAD_XOR: u8 = 0x5a;
