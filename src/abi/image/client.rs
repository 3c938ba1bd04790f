//! `client`: sends requests and checks that every one gets exactly one, correct, reply; keeps a
//! round-trip histogram at [`LATENCY_HIST_ADDR`](crate::abi::platform::LATENCY_HIST_ADDR).

/// Parameter slots (indices into `BootBlock::params`) it reads, from [`param`](super::param).
pub mod param {
    pub use super::super::driver::param::*;
    pub use super::super::param::IMMEDIATE_EVERY;
    pub use super::super::param::{
        CLASS, COUNT, KEY, KEY_SPREAD, MODE, SERVICE, SIZE, TARGET, WINDOW,
    };
}

/// Result slots (indices into `BootBlock::results`).
pub mod result {
    pub use super::super::driver::result::*;
    pub use super::super::traffic::*;

    /// Error replies with `Status::NoBackend`.
    pub const STATUS_NO_BACKEND: usize = 11;
    /// Error replies with `Status::Unreachable`.
    pub const STATUS_UNREACHABLE: usize = 12;
    /// Error replies with `Status::BackendError`.
    pub const STATUS_BACKEND_ERROR: usize = 13;
    /// Error replies with `Status::Timeout` or `Status::PortBroken`.
    pub const STATUS_TIMEOUT_OR_BROKEN: usize = 14;
    /// Error replies with any other status.
    pub const STATUS_OTHER: usize = 15;
    /// Directory updates after which its destination (`TARGET` or `SERVICE`) was no longer
    /// listed under the id it resolved at start: the port or service went away (a VM removed,
    /// broken or stopped; a service removed). From then until an update lists it there again
    /// the client sends no new request (replies to outstanding ones still count); a switch
    /// cannot say whether the destination comes back, so the client waits.
    pub const TARGET_GONE: usize = 22;
}

/// Byte `i` of the payload of a client request with id `msg_id`.
pub const fn request_byte(msg_id: u64, i: usize) -> u8 {
    (msg_id as u8).wrapping_mul(31).wrapping_add(i as u8) ^ ((msg_id >> 8) as u8)
}

/// Buckets of the latency histogram at
/// [`LATENCY_HIST_ADDR`](crate::abi::platform::LATENCY_HIST_ADDR): little-endian `u64` counts
/// of requests whose round trip (send to reply, in TSC cycles) fell in bucket
/// [`latency_bucket`].
pub const LATENCY_BUCKETS: usize = 256;

/// Histogram bucket of `cycles`: exact below 16, then four buckets per power of two (about
/// 19 % wide), the last one open-ended.
pub const fn latency_bucket(cycles: u64) -> usize {
    if cycles < 16 {
        return cycles as usize;
    }
    let e = 63 - cycles.leading_zeros() as usize; // >= 4
    let sub = ((cycles >> (e - 2)) & 3) as usize;
    let i = 16 + (e - 4) * 4 + sub;
    if i < LATENCY_BUCKETS {
        i
    } else {
        LATENCY_BUCKETS - 1
    }
}

/// Smallest cycle count that falls in bucket `i` (inverse of [`latency_bucket`]).
pub const fn latency_bucket_floor(i: usize) -> u64 {
    if i < 16 {
        return i as u64;
    }
    let e = (i - 16) / 4 + 4;
    let sub = ((i - 16) % 4) as u64;
    (1u64 << e) | (sub << (e - 2))
}
