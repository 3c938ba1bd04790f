//! The traffic loops, written once (`no_std`, feature `traffic`): a windowed [`Client`] that
//! sends requests and checks that every one gets exactly one, correct, reply, and an echo
//! [`Worker`] that answers requests with their payload transformed and reports its load.
//!
//! Guest images run them over [`RawMemory`](crate::virtio::RawMemory) and a virtio-mmio device;
//! host peers (feature `test-utils`), tests, benches and fuzzing run them over
//! `GuestView`. What differs between those places — publishing and notifying, waiting
//! for the device, what an error means — sits behind the small [`Link`] trait. The loops take
//! plain arguments and count what they did; where the counters go (a guest's result slots, a
//! bench's atomics) is the caller's business, through the loops' hooks.
//!
//! A request's payload byte `i` is [`abi::image::client::request_byte`](crate::abi::image::client::request_byte)`(id, i)`;
//! a worker's answer is the request's bytes XOR its key ([`abi::image::worker::PAYLOAD_XOR`](crate::abi::image::worker::PAYLOAD_XOR)
//! for vmq's worker), see [`is_answer`].

mod client;
mod replies;
mod worker;

pub use client::{Client, ClientCounters, ClientHooks, Destination, Exchange, Verdict};
pub use replies::{is_answer, Replies};
pub use worker::{drain_tx, send, Worker, WorkerConfig, WorkerCounters, WorkerHooks, WorkerStop};

use crate::virtio::{MsgRx, MsgTx, RingError, RingMemory};
use crate::wire::Notify;

/// The driver end of a port, as a traffic loop sees it: its two message queues, and how to
/// publish, wait and fail where the loop runs (a guest kicks the device and parks its vCPU; a
/// host peer publishes and spins).
pub trait Link {
    /// The memory the rings live in.
    type Memory: RingMemory;
    /// The driver rings' shadow state.
    type State: AsRef<[u16]> + AsMut<[u16]>;
    /// What publishing or waiting can fail with.
    type Error: From<RingError>;

    /// The send queue (the port's tx queue).
    fn tx(&mut self) -> &mut MsgTx<Self::Memory, Self::State>;
    /// The receive queue (the port's rx queue).
    fn rx(&mut self) -> &mut MsgRx<Self::Memory, Self::State>;
    /// Publishes queued tx messages, notifying the device if it asked.
    fn flush_tx(&mut self) -> Result<(), Self::Error>;
    /// Publishes re-posted rx buffers, notifying the device if it asked.
    fn flush_rx(&mut self) -> Result<(), Self::Error>;
    /// Waits a while for work: a delivery on rx, or (with `want_tx`) a tx slot coming back.
    /// May return early; callers loop.
    fn wait(&mut self, want_tx: bool) -> Result<(), Self::Error>;
    /// Deals with an error of the loop: count and go on (a bad message), or stop for good.
    fn fault(&mut self, e: Self::Error);
}

/// Rx messages delivered and not yet taken, as a permille of the rx queue: the load a worker
/// reports in its replies.
pub fn rx_load<M: RingMemory, S: AsRef<[u16]> + AsMut<[u16]>>(rx: &MsgRx<M, S>) -> u16 {
    let size = rx.ring().layout().size;
    (u32::from(rx_pending(rx)) * 1000 / u32::from(size)).min(1000) as u16
}

/// Rx messages delivered and not yet taken.
pub fn rx_pending<M: RingMemory, S: AsRef<[u16]> + AsMut<[u16]>>(rx: &MsgRx<M, S>) -> u16 {
    let ring = rx.ring();
    let layout = ring.layout();
    let published = ring.memory().load_u16(layout.used + 2).unwrap_or(0);
    published.wrapping_sub(ring.counters().used as u16)
}

/// The notification of the `k`-th message (counting from 1) a sender marks with a mix of
/// one immediate in `every` (the `immediate_every` image parameter): 0 marks nothing
/// ([`Notify::PerPoll`]); else every `every`-th message is [`Notify::Immediate`] and the rest
/// [`Notify::Deferred`].
pub fn notify_for(k: u64, every: u64) -> Notify {
    match every {
        0 => Notify::PerPoll,
        n if k % n == 0 => Notify::Immediate,
        _ => Notify::Deferred,
    }
}

/// Fills `payload` with the bytes of request `id` ([`abi::image::client::request_byte`](crate::abi::image::client::request_byte)).
pub fn fill_request(id: u64, payload: &mut [u8]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b = crate::abi::image::client::request_byte(id, i);
    }
}

/// XORs every byte of `payload` with `key` in place (a worker's answer; 0 leaves it as is).
#[inline]
pub fn xor_in_place(payload: &mut [u8], key: u8) {
    if key != 0 {
        for b in payload {
            *b ^= key;
        }
    }
}

#[cfg(all(test, feature = "test-utils"))]
mod tests;
