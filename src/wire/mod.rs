//! The message header carried at the start of every descriptor chain.
//!
//! `wire` is `no_std`: guest images, host peers and the switch share it. A message on a queue is
//! one descriptor chain that holds a [`MsgHeader`] followed by `len` payload bytes; how the
//! driver splits those bytes across descriptors is up to it.

pub mod directory;
mod header;
pub mod pages;

pub use header::{
    MsgHeader, MsgKind, Status, WireError, DST_SERVICE, HEADER_SIZE, LOAD_MAX, LOAD_REPORT,
    MAX_PAYLOAD, WIRE_VERSION,
};
pub use header::{Notify, NOTIFY_DEFERRED, NOTIFY_IMMEDIATE};
