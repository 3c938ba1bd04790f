//! The virtio-vsock protocol as pure logic: no I/O, no threads, no clock of its own.
//!
//! - [`packet`]: the 44-byte header, its codec over plain bytes, and the checks no guest
//!   bypasses;
//! - [`credit`]: wrapping credit counters for an end ([`credit::Credit`]) and for one relayed
//!   direction ([`credit::RelayWindow`]);
//! - [`relay`]: connections between two guests that vmq forwards;
//! - [`endpoint`]: a connection vmq terminates itself (the host end), with bounded buffers;
//! - [`hybrid`]: the host side's `CONNECT <port>` line protocol and the `<uds>_<port>` naming.
//!
//! The device and the switch glue feed these with headers and payload copied out of guest
//! memory, and write what they return into guest memory; nothing here panics on packet data or
//! grows past the bounds each module documents.
//!
//! What Linux guests do, which the glue has to match:
//! - they send RW packets of up to 64 KiB ([`packet::MAX_PAYLOAD`]) but post rx buffers of
//!   4 KiB payload (older kernels: a 44-byte header descriptor plus a 4 KiB one; 6.x: one
//!   buffer with both; newest: a 4 KiB allocation, so a little under 4 KiB of payload). A
//!   packet for a guest must fit one of its rx buffers: [`packet::PacketHeader::split`] cuts a
//!   relayed packet, moving SEQPACKET EOM/EOR to the last piece, and
//!   [`endpoint::Endpoint::next_packet`] takes the buffer size;
//! - a Linux receiver silently drops data beyond the credit it gave, so nobody may send past
//!   `peer_free`; it sends CREDIT_UPDATE when its receive queue empties or after consuming most
//!   of its buffer, and never sends CREDIT_REQUEST itself;
//! - every header carries the sender's `buf_alloc` / `fwd_cnt`, RST from a closed socket
//!   carries zeros; a SEQPACKET message is at most the smaller of both ends' buffers
//!   (`EMSGSIZE` above); a close is SHUTDOWN(RCV|SEND), answered by the peer's RST, or an RST
//!   after 8 s.

mod buffer;
pub mod credit;
pub mod endpoint;
pub mod hybrid;
pub mod packet;
pub mod relay;

#[cfg(test)]
mod tests;
