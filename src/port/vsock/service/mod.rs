//! A load-balanced vsock service in `message` mode: clients' SEQPACKET connections to the
//! service's address are terminated by vmq, and each message becomes a request of the switch,
//! balanced, failed over and answered like any native request. (`connection` mode, where each
//! new connection goes to one backend and is relayed with its addresses translated, is in
//! [`connection`].)
//!
//! Two kinds of port make it, and the switch knows neither:
//! - [`ServiceFrontPort`] (one per service) is the service's address, `cid:port`. It accepts
//!   clients' connections, turns each message into a request to the switch's service (kept,
//!   whole, in its staging memory until it is answered: failover re-reads it there) and writes
//!   the answers back on the connection that asked, in the order asked.
//! - [`ServiceBackendPort`] (one per member) is a member of the switch's service. It keeps a
//!   pool of SEQPACKET connections from the service's CID to the backend VM's application, one
//!   request at a time on each, and hands the backend's answer to the switch as the reply.
//!
//! What the switch's health and stall rule see of a backend ([`Port::drain`]): a request counts
//! as drained when the backend's application has read it (its `fwd_cnt` covers it, or its answer
//! came), so an application that stops reading stalls with data waiting, however alive its
//! kernel is; free buffers are the idle connections it may still be given.
//!
//! [`Port::drain`]: crate::port::Port::drain

mod backend;
pub mod connection;
mod front;
mod reports;

pub use backend::{BackendConfig, ServiceBackendPort};
pub use front::{FrontConfig, ServiceFrontPort};

use std::sync::atomic::Ordering;

use super::{VmEntry, SERVICE_BACKEND_PORTS};
use crate::vsock::endpoint::Endpoint;
use crate::vsock::packet::{Op, PacketHeader, HEADER_LEN};
use crate::wire::HEADER_SIZE;

/// Bytes of a staging slot that holds a whole message of up to `max_message` bytes (or one
/// packet piece with its vsock header, whichever is larger).
fn slot_size(max_message: u32) -> u64 {
    (HEADER_SIZE + HEADER_LEN) as u64 + u64::from(max_message.max(super::PIECE_PAYLOAD))
}

/// The next local port at or above [`SERVICE_BACKEND_PORTS`] that `taken` says is free,
/// counting on from `*next` (which moves past it, wrapping back to the first backend port
/// before `u32::MAX`): ports go round the whole range, so one given up is reused only after
/// all the others. Ends because each caller holds far fewer ports (its bound) than the range
/// has.
fn next_backend_port(next: &mut u32, taken: impl Fn(u32) -> bool) -> u32 {
    loop {
        let p = *next;
        *next = next
            .checked_add(1)
            .filter(|&p| p < u32::MAX)
            .unwrap_or(SERVICE_BACKEND_PORTS);
        if !taken(p) {
            return p;
        }
    }
}

/// Ends connection `ep` (vmq's end of it) for `vm`'s guest with an RST from vmq, written into
/// its rx queue at the switch thread's next pass: the port that carried the connection left
/// the switch (its service was removed, or its member drained and left) and nothing will
/// answer on it again. Nothing is owed for a connection over already, or to a guest gone.
fn reset_to(vm: &VmEntry, ep: &Endpoint) {
    if ep.is_closed() || !vm.connected.load(Ordering::Acquire) {
        return;
    }
    vm.counters.resets.fetch_add(1, Ordering::Relaxed);
    vm.push_control(PacketHeader::new(
        ep.socket_type(),
        Op::Rst,
        ep.local(),
        ep.peer(),
    ));
}
