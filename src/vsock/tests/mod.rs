//! Unit tests of the vsock protocol logic: each rule on its own, hostile sequences, random
//! hostile input against the bounds, and two endpoints talking through a relay.

use super::packet::{Op, PacketHeader, SockAddr, SocketType};

mod credit;
mod e2e;
mod endpoint;
mod hostile;
mod hybrid;
mod packet;
mod relay;

/// A header from `src` to `dst` with no payload and no credit.
fn hdr(ty: SocketType, op: Op, src: (u64, u32), dst: (u64, u32)) -> PacketHeader {
    PacketHeader::new(
        ty,
        op,
        SockAddr::new(src.0, src.1),
        SockAddr::new(dst.0, dst.1),
    )
}

/// An RW header carrying `len` bytes.
fn rw(ty: SocketType, src: (u64, u32), dst: (u64, u32), len: u32, flags: u32) -> PacketHeader {
    let mut h = hdr(ty, Op::Rw, src, dst);
    h.len = len;
    h.flags = flags;
    h
}

/// `h` with credit fields set.
fn with_credit(mut h: PacketHeader, buf_alloc: u32, fwd_cnt: u32) -> PacketHeader {
    h.buf_alloc = buf_alloc;
    h.fwd_cnt = fwd_cnt;
    h
}
