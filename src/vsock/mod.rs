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

mod buffer;
pub mod credit;
pub mod endpoint;
pub mod hybrid;
pub mod packet;
pub mod relay;

#[cfg(test)]
mod tests;
