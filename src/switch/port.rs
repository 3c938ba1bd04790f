//! A port as the switch holds it: the device side of one VM's queues, how to notify that VM, and
//! what waits to be delivered to it.

use std::collections::VecDeque;

use crate::switch::pool::Token;
use crate::virtio::{DevicePort, GuestView, TxChain};
use crate::wire::Status;

/// Port identifier (index into the switch's port table; also the `src`/`dst` on the wire).
pub type PortId = u32;

/// How the switch tells a port's guest that its used rings moved (an interrupt, a doorbell).
///
/// The switch does not know what is behind a port: a KVM guest (an eventfd that wakes its
/// doorbell-waiting vCPU), a host thread, or a vhost-user frontend.
pub trait Notifier: Send {
    /// The guest asked to hear about new used entries on its rx or tx queue.
    fn notify(&self);
}

/// A notifier for peers that poll.
#[derive(Debug, Default, Clone, Copy)]
pub struct Polling;

impl Notifier for Polling {
    fn notify(&self) {}
}

/// Something that must reach a port's rx queue but found no buffer; delivered in order.
#[derive(Debug)]
pub(crate) enum Backlog {
    /// A one-way message held in the sender's tx queue.
    OneWay { src: PortId, chain: TxChain },
    /// A request addressed to this port (not to a service), waiting for an rx buffer.
    Request(Token),
    /// A reply held in the backend's tx queue, for request `token` of this (frontend) port.
    Reply {
        token: Token,
        backend: PortId,
        chain: TxChain,
    },
    /// An error reply the switch makes for request `token` of this port.
    Error { token: Token, status: Status },
    /// An error notice for message `msg_id` of this port that has no in-flight record (an
    /// undeliverable one-way message, a request refused because the in-flight table is full).
    Notice { msg_id: u64, status: Status },
    /// The hello (port id and directory) for a port that just came up.
    Hello,
}

/// Per-port counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PortStats {
    /// Messages popped from the port's tx queue.
    pub sent: u64,
    /// Messages written into the port's rx queue.
    pub received: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Requests the port sent.
    pub requests: u64,
    /// Replies delivered to the port.
    pub replies: u64,
    /// Requests of this port failed back with an error status.
    pub failed_back: u64,
    /// One-way messages it sent that could not be delivered.
    pub undeliverable: u64,
    /// Replies for this port dropped because it went away or broke.
    pub orphaned: u64,
    /// Protocol faults (it broke the virtqueue or header rules).
    pub faults: u64,
    /// Notifications sent to its guest.
    pub notifies: u64,
    /// Times it came back after going down (device reset, VM restart).
    pub revivals: u64,
    /// Error notices dropped because a queue's worth already waited for it to read them.
    pub notices_dropped: u64,
}

pub(crate) struct PortEntry<M> {
    pub name: String,
    pub dev: DevicePort<M>,
    /// A second handle on the port's memory, so a payload can be read from it while `dev`
    /// (perhaps of the same port) is borrowed mutably.
    pub mem: GuestView<M>,
    pub notifier: Box<dyn Notifier>,
    /// `(service, member index)` for every service this port serves.
    pub member_of: Vec<(u32, usize)>,
    pub backlog: VecDeque<Backlog>,
    pub stats: PortStats,
    /// rx consumer index at the last sweep.
    pub last_consumer_idx: u16,
    /// How far it moved between the last two sweeps (rx buffers the guest consumed).
    pub consumed_since_sweep: u16,
    /// `Backlog::Notice` entries waiting in `backlog` (bounded by the rx queue size).
    pub notices: u32,
    /// Rx entries or tx completions were published since the last notification check.
    pub rx_dirty: bool,
    pub tx_dirty: bool,
    /// Broken (DEVICE_NEEDS_RESET) or removed: no more traffic either way.
    pub down: bool,
}
