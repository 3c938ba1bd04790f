//! Ports: the seam between the switch and the things that send and receive messages.
//!
//! The switch routes, balances, tracks requests in flight and fails over; it never learns what
//! kind of port it serves. Everything it needs from a port is the [`Port`] trait: take what the
//! port's guest sent, hand a held message back, deliver one message, publish, notify, arm kicks
//! before sleeping, and show how the guest drains what it is given.
//!
//! Kinds:
//! - [`NativePort`]: a vmq virtqueue pair (rx, tx) in guest memory carrying vmq's wire header
//!   (vmq's own KVM guests, host peers in tests and benches);
//! - [`VsockPort`]: a Linux guest's virtio-vsock device served over vhost-user;
//! - [`vsock::HostPort`]: the host side of such a guest (host programs over its `uds-path`);
//! - [`HandoffPort`]: a native port whose guest hands pages to other such ports' guests
//!   instead of copying bytes (page hand-off, seed 004).
//!
//! A new kind is one new module implementing [`Port`]; routing, policies, health, failover and
//! the in-flight table do not change.
//!
//! What a held message is: a [`TxChain`], a validated header plus where its payload lies in the
//! port's memory ([`Port::memory`]). The switch keeps it, unreturned, while the request is in
//! flight and reads the payload from there as often as failover needs; the port gets it back
//! through [`Port::release`]. A kind whose messages do not live in guest memory as chains
//! (bytes copied out of a socket, say) provides them the same way from memory it owns.

pub mod handoff;
mod native;
pub mod vsock;

pub use handoff::HandoffPort;
pub use native::NativePort;
pub use vsock::VsockPort;

use crate::virtio::{DeliverError, DeviceError, GuestView, Payload, TxChain};
use crate::wire::MsgHeader;

/// Port identifier (index into the switch's port table; also the `src`/`dst` on the wire).
pub type PortId = u32;

/// How a port tells its guest that its queues moved (an interrupt, a doorbell, an eventfd).
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

/// Reads how long, in all, a guest's vCPU thread has waited for a CPU (runnable, not running).
/// Injected into ports so that the switch's stall detection can be driven by a real scheduler
/// (`/proc/self/task/TID/schedstat`) or, in tests, by hand.
pub trait RunQueueClock: Send {
    /// Nanoseconds waited so far, or `None` when it cannot be read.
    fn waited_ns(&self) -> Option<u64>;
}

impl<F: Fn() -> Option<u64> + Send> RunQueueClock for F {
    fn waited_ns(&self) -> Option<u64> {
        self()
    }
}

/// Which side of a port asked to be told, from [`Port::publish_sides`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Asked {
    /// The guest asked to hear about new deliveries.
    pub rx: bool,
    /// The guest asked to hear about messages handed back.
    pub tx: bool,
}

/// How a port's guest drains the rx buffers it posts: what the sweep feeds to health and stall
/// detection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drain {
    /// A counter that moves by one for each delivery the guest consumed (wraps at 2^16; the
    /// switch only looks at differences).
    pub consumed: u16,
    /// Buffers the guest has posted and the port has not filled yet.
    pub free: u16,
    /// Most buffers the guest can post (its rx queue size).
    pub capacity: u16,
    /// Sessions the port carries for its service besides the requests in flight: a
    /// `connection` service's member, its established client connections. Policies that weigh
    /// load (`p2c`, `expected_delay`) count them with the requests in flight, which makes them
    /// least-connections there. 0 for a port whose work is its requests alone.
    pub held: u32,
    /// Sessions that ended (wraps at 2^16; the switch only looks at differences): with
    /// `broken`, a session's outcome, fed to the backend's error rate like a reply's.
    pub ended: u16,
    /// Of those, sessions the backend broke (wraps): a `connection` service's established
    /// connections its application reset.
    pub broken: u16,
}

impl Drain {
    /// A port that takes every delivery at once (it is never a service's backend, or keeps
    /// what it takes in memory of its own): `consumed` so far, room that never runs out.
    pub fn taking_all(consumed: u16) -> Self {
        Self {
            consumed,
            free: 256,
            capacity: 256,
            held: 0,
            ended: 0,
            broken: 0,
        }
    }
}

/// One port as the switch drives it. Implemented once per kind of port.
///
/// Errors: a [`DeviceError`] from any method means the guest broke the protocol; the switch
/// takes that port down (it fails its work over or back) and calls nothing on it but
/// [`Port::close`] (once), [`Port::drain`] and [`Port::counters`] afterwards.
pub trait Port<M>: Send {
    /// The memory this port's held messages live in; payloads are read from it for as long as
    /// a message is held. A clone is kept by the switch, so it must stay valid while the port
    /// lives.
    fn memory(&self) -> &GuestView<M>;

    /// Takes up to `max` messages the guest sent, in order, appending each to `sent`. A message
    /// appended is held until [`Port::release`], even when the call fails afterwards.
    fn take_sent(&mut self, max: usize, sent: &mut Vec<TxChain>) -> Result<usize, DeviceError>;

    /// Most messages this port's guest can have held at once (its tx queue size). A port never
    /// hands over a message it still holds; the switch also refuses a request past this many
    /// in flight as a protocol fault, so no guest holds more of the in-flight table than its
    /// own queue.
    fn max_held(&self) -> u32;

    /// Copies the payload of a held message into `buf` (at least its length); returns the
    /// length. Lets the switch keep a message's bytes and release it early.
    fn copy_payload(&mut self, msg: &TxChain, buf: &mut [u8]) -> Result<usize, DeviceError>;

    /// Hands a held message back to its guest (visible after [`Port::publish`]).
    fn release(&mut self, msg: &TxChain) -> Result<(), DeviceError>;

    /// Writes `header` and `payload` into the guest's next posted buffer. `Ok(false)`: the
    /// buffer was too small and only the header went in, with status `TooLarge`.
    fn deliver(
        &mut self,
        header: &MsgHeader,
        payload: &Payload<'_, M>,
    ) -> Result<bool, DeliverError>;

    /// Makes deliveries and releases visible to the guest; returns whether it asked to be told.
    fn publish(&mut self) -> bool;

    /// [`Port::publish`], saying which side asked: the receive side (deliveries) and the send
    /// side (messages handed back). Lets the switch withhold the notification a deferred
    /// delivery would cause without withholding the one a hand-back asked for. Default: one
    /// answer for both, from [`Port::publish`].
    fn publish_sides(&mut self) -> Asked {
        let a = self.publish();
        Asked { rx: a, tx: a }
    }

    /// Tells the guest its queues moved.
    fn notify(&self);

    /// How the guest drains what it is given.
    fn drain(&self) -> Drain;

    /// Before the switch sleeps: asks the guest to kick when it sends (and, with `rx_wanted`,
    /// when it posts buffers). Returns whether work is already there (then the switch must not
    /// sleep).
    fn arm_kicks(&mut self, rx_wanted: bool) -> bool;

    /// Back to polling: no kicks wanted.
    fn disarm_kicks(&mut self);

    /// How long, in all, the vCPU (or thread) that drains this port has waited for a CPU
    /// while runnable, in nanoseconds; `None` for a kind that cannot say. Lets the switch tell
    /// a backend that stopped draining from one that was not scheduled.
    fn run_queue_wait_ns(&self) -> Option<u64>;

    /// Whether an answered request leaves a session behind ([`Drain::held`]): a `connection`
    /// service's member, whose accepted connect request is an established connection. The
    /// switch then counts it held from the answer on, until the next sweep reads the port's
    /// own count. Read once when the port is attached or revived.
    fn holds_sessions(&self) -> bool {
        false
    }

    /// Counters of this kind of port (a vsock guest's packets, connections by state, ...),
    /// named, for the switch's snapshot; the switch shows them without reading them. Names
    /// are snake_case; levels, which go down as well as up, are named `conns_*`, `pending_*`
    /// or `staged` (or are `cid`), and every other name counts events and only grows: the
    /// metrics endpoint exports them as gauges and counters by that rule
    /// ([`crate::metrics::exposition`]).
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// The switch took the port down (removed, or broken by its guest): the port ends what it
    /// keeps outside the switch (connections it terminates for applications), telling the
    /// other ends, since it will never be polled again. Called once each time the port goes
    /// down. Default: nothing (a guest's queues need no goodbye).
    fn close(&mut self) {}

    /// The port as its concrete kind, for inspection by its owner (tests, fuzzing, a VMM);
    /// the switch never looks.
    fn as_any(&self) -> &dyn std::any::Any;
}
