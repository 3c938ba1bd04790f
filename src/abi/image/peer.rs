//! `peer`: VM-to-VM unicast: sends one-way messages to a port while receiving, and checks that
//! the messages of every sender arrive in order and intact.

/// Parameter slots (indices into `BootBlock::params`) it reads, from [`param`](super::param).
pub mod param {
    pub use super::super::driver::param::*;
    pub use super::super::param::IMMEDIATE_EVERY;
    pub use super::super::param::{CHECK_STRIDE, COUNT, EXPECT, MODE, SIZE, TARGET};
}

/// Result slots (indices into `BootBlock::results`).
pub mod result {
    pub use super::super::driver::result::*;
    pub use super::super::traffic::*;
}

/// Byte `i` (counting after the 8-byte sequence number) of the `seq`-th one-way message a peer
/// with port id `src` sends.
pub const fn payload_byte(src: u32, seq: u64, i: usize) -> u8 {
    (seq as u8)
        .wrapping_mul(13)
        .wrapping_add((i as u8).wrapping_mul(7))
        .wrapping_add((src as u8).wrapping_mul(101))
}
