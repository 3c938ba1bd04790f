//! A load-balanced vsock service in `connection` mode: each new connection to the service's
//! address goes to one backend chosen by the switch's policy, and its packets are then relayed
//! both ways with the addresses translated. SOCK_STREAM and SOCK_SEQPACKET alike.
//!
//! Two kinds of port make it, as in `message` mode, and the switch knows neither:
//! - [`ConnFrontPort`] (one per service) takes what clients send to the service's address. A
//!   client's REQUEST becomes one **request of the switch's service** (a connect request, kept
//!   in the front's staging until answered); once a backend accepted, the client's packets are
//!   translated and staged for the backend's VM.
//! - [`ConnBackendPort`] (one per member) is a member of the switch's service. A connect
//!   request delivered to it opens the connection: a REQUEST from `service:local` (a port at or
//!   above [`SERVICE_BACKEND_PORTS`]) to the backend's application, with the client's credit.
//!   The backend's RESPONSE is forwarded to the client (from the service's address) and is the
//!   reply: the request ends. A refusal (RST), a REQUEST not answered within the connect
//!   timeout, or the backend's VM going away is an error reply; the front then asks the switch
//!   again, and the client, still waiting for its RESPONSE, sees nothing of it. Once
//!   established, the backend's packets are translated and staged for the client's VM.
//!
//! Both share the service's [`ConnTable`] (the connections, their phase, the translation, and a
//! [`Relay`](crate::vsock::relay::Relay) that checks state and credit in the client's view), and
//! the network tells it of every delivery of the service's packets
//! ([`DeliveryWatch`]), so credit is checked exactly as
//! between two sibling guests: end to end, the receivers' `buf_alloc` capped, nobody past the
//! credit it was shown. vmq holds at most the cap per direction of a connection, and an
//! application that stops reading stalls its peer, losing nothing.
//!
//! What the switch sees of a backend ([`Port::drain`](crate::port::Port::drain)): a connect
//! request counts as drained when the backend answered it (accepted or refused) or it was
//! given up; free buffers are the connect requests it may still take (`max_connecting`, none
//! while it is backing off after a refusal or its VM is away). So a backend whose VM or kernel
//! stops answering stalls, and the switch moves its connect requests elsewhere after the stall
//! window (the first backend's late answer is then reset); refusals are error replies (health's
//! error rate) and connect latency is reply latency.

mod backend;
mod front;
mod legs;
mod table;
#[cfg(test)]
mod tests;

pub use backend::{ConnBackendConfig, ConnBackendPort};
pub use front::{ConnFrontConfig, ConnFrontPort};
pub use legs::{Answer, Connect};
pub use table::{ConnTable, Next, TableConfig};

use std::sync::{Arc, Mutex, MutexGuard};

use crate::port::vsock::{DeliveryWatch, Staging, VmEntry, SERVICE_BACKEND_PORTS};
use crate::virtio::TxChain;
use crate::vsock::packet::{Op, PacketHeader};
use crate::vsock::relay::RelayConfigError;

/// How often a port of a `connection` service checks its deadlines and guests (connect
/// timeouts, the table's relay timeouts, VMs gone): their granularity.
const CHECK_NS: u64 = 100_000_000;

/// What handling one packet asks of the port that handled it.
#[derive(Debug)]
pub enum Out {
    /// Stage `hdr` for `vm`'s port (behind what was staged for it before), with the handled
    /// packet's payload when `hdr` forwards it.
    Stage {
        /// The receiving guest.
        vm: Arc<VmEntry>,
        /// The packet as that guest sees it.
        hdr: PacketHeader,
    },
    /// Owe `hdr` (an RST from vmq) to `vm` at once, ahead of anything staged.
    Control {
        /// The receiving guest.
        vm: Arc<VmEntry>,
        /// The RST.
        hdr: PacketHeader,
    },
}

/// What happened to a service's connections (shown by its front).
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    /// Client REQUESTs taken.
    pub requested: u64,
    /// Connections a backend accepted.
    pub accepted: u64,
    /// Client packets refused with an RST (another port, over `max_connections`, for no
    /// connection).
    pub refused: u64,
    /// Connect requests asked again after a refusal, a connect timeout or a backend VM gone.
    pub retried: u64,
    /// Connect attempts the switch moved to another backend (the first stalled): the first
    /// backend's side is reset.
    pub moved: u64,
    /// Clients reset because no backend accepted (every member refused, or the deadline).
    pub reset_no_backend: u64,
    /// Connections closed in order (both sides shut down, or one did and the RST ended it).
    pub closed: u64,
    /// Connections the client reset (before they were accepted, too).
    pub reset_by_client: u64,
    /// Connections the backend reset.
    pub reset_by_backend: u64,
    /// Connections vmq reset: a protocol or credit fault, a timeout, a VM gone.
    pub reset_by_vmq: u64,
    /// Backends' packets for no connection of theirs (answered with RST): one that just
    /// ended (Linux shuts a socket down after the RST that ended it), or one never given.
    pub no_connection: u64,
    /// Backends' accepts of connections that had moved on or ended (reset).
    pub stale: u64,
}

/// A service's [`ConnTable`], shared by its front, its backend ports and the network (which
/// reports deliveries to it). All of them run on the switch thread: the lock is never
/// contended; it makes the sharing safe, not concurrent.
#[derive(Debug)]
pub struct SharedTable(Mutex<ConnTable>);

impl SharedTable {
    /// A table for `cfg`.
    pub fn new(cfg: TableConfig) -> Result<Arc<Self>, RelayConfigError> {
        Ok(Arc::new(Self(Mutex::new(ConnTable::new(cfg)?))))
    }

    /// The table.
    pub fn lock(&self) -> MutexGuard<'_, ConnTable> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl DeliveryWatch for SharedTable {
    fn delivered(&self, part: &PacketHeader) {
        self.lock().delivered(part);
    }
}

/// Carries out `outs`: packets staged (with `payload` where they forward the handled packet's
/// data) and appended to `sent`, RSTs owed at once. A packet that finds no slot (the caller
/// checked there was room: never in practice) is owed at once if it carries no data.
fn apply(staging: &mut Staging, outs: &mut Vec<Out>, payload: &[u8], sent: &mut Vec<TxChain>) {
    for o in outs.drain(..) {
        match o {
            Out::Stage { vm, hdr } => {
                let data = if hdr.op == Op::Rw as u16 && hdr.len as usize == payload.len() {
                    payload
                } else {
                    &[]
                };
                match staging.stage_piece(vm.addr.port, &hdr, data) {
                    Some(chain) => sent.push(chain),
                    None if data.is_empty() => vm.push_control(hdr),
                    None => log::error!(
                        "service CID {}: staging ran out; a packet for CID {} is lost",
                        hdr.src_cid,
                        vm.addr.cid
                    ),
                }
            }
            Out::Control { vm, hdr } => vm.push_control(hdr),
        }
    }
}

/// Moves at most `max` of the packets a port staged (oldest first) into `sent`, the switch's
/// batch; the rest wait for the next pass. Returns how many moved.
fn hand_over(outgoing: &mut Vec<TxChain>, max: usize, sent: &mut Vec<TxChain>) -> usize {
    let n = outgoing.len().min(max);
    sent.extend(outgoing.drain(..n));
    n
}

/// Whether `port` is one of the ports vmq opens to backends.
fn is_local(port: u32) -> bool {
    port >= SERVICE_BACKEND_PORTS
}
