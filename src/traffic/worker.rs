//! The echo worker: answers every request with its payload XOR a key, `Status::Ok` and its
//! load; and the faults a test can ask of it (slow, erroring, stalling, crashing, mute).

use super::{rx_load, xor_in_place, Link};
use crate::virtio::RxMsg;
use crate::wire::{MsgHeader, MsgKind, Status};

/// How a worker behaves. Zero turns each behaviour off; [`Default`] is a plain echo (key 0)
/// that serves forever.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Stop after this many replies, once the switch took them all (0: never).
    pub count: u64,
    /// Busy-loop iterations per request.
    pub slow: u64,
    /// Every n-th request gets an empty `Status::BackendError` reply.
    pub error_every: u64,
    /// Stop right after the K-th request (answered), never touching the queues again.
    pub stall_after: u64,
    /// Stop right after the K-th reply, leaving the rest unanswered.
    pub crash_after: u64,
    /// After the K-th reply keep taking requests off the rx queue, but answer none.
    pub mute_after: u64,
    /// XOR key of the answers (0: the payload echoed unchanged).
    pub key: u8,
    /// Report the rx queue's fill level ([`rx_load`]) in every reply's `load`.
    pub report_load: bool,
    /// A liar (a fault for tests and demos): report load 0 (idle) in every reply whatever
    /// its queue holds, while spending this many busy-loop iterations per request on top of
    /// `slow` (0: honest). The switch's cross-check of reported load against observed drain
    /// is what catches it.
    pub lie_load: u64,
}

/// Why a worker stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerStop {
    /// It sent [`WorkerConfig::count`] replies and the switch took them all.
    Done,
    /// [`WorkerConfig::crash_after`] replies sent: the caller ends the VM (tx published).
    Crashed,
    /// [`WorkerConfig::stall_after`] requests served: the caller stops touching the queues
    /// (tx published).
    Stalled,
}

/// What a worker counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerCounters {
    /// Requests taken off the rx queue.
    pub requests: u64,
    /// Replies sent.
    pub replies: u64,
    /// Of those, `Status::Ok` answers.
    pub ok: u64,
    /// Of those, `Status::BackendError` replies.
    pub errors: u64,
}

/// What a worker's caller hears about, and what it handles itself. Every method has a default
/// that does nothing; `()` takes every default.
pub trait WorkerHooks<L: Link> {
    /// A request was taken off the rx queue.
    fn received(&mut self) {}
    /// A reply was sent: an answer (`ok`) or an error reply.
    fn replied(&mut self, ok: bool) {
        let _ = ok;
    }
    /// Any message that is not a request (a hello, a one-way message, a reply).
    fn other(&mut self, link: &mut L, msg: &RxMsg, payload: &mut [u8]) {
        let _ = (link, msg, payload);
    }
    /// A request whose payload is a page list ([`MsgHeader::handoff`], in `payload`): reads
    /// the bytes the pages carry into `payload` (and gives the pages back); returns their
    /// length, answered like any request's bytes. `None` (the default, for a worker that
    /// takes no pages): the request gets an error reply.
    fn pages(&mut self, link: &mut L, msg: &RxMsg, payload: &mut [u8]) -> Option<usize> {
        let _ = (link, msg, payload);
        None
    }
}

impl<L: Link> WorkerHooks<L> for () {}

/// A worker: [`Worker::run`] serves until its configuration says stop; [`Worker::step`] is
/// one round, for callers that take turns.
#[derive(Clone, Copy, Debug, Default)]
pub struct Worker {
    cfg: WorkerConfig,
    /// What it counted.
    pub counters: WorkerCounters,
}

impl Worker {
    /// A worker behaving as `cfg` says.
    pub fn new(cfg: WorkerConfig) -> Self {
        Self {
            cfg,
            counters: WorkerCounters::default(),
        }
    }

    /// Serves until [`WorkerConfig`] says stop (never, with `count` 0 and no fault), waiting on
    /// the link when idle. Requests are read into `buf`.
    pub fn run<L: Link, H: WorkerHooks<L>>(
        &mut self,
        link: &mut L,
        hooks: &mut H,
        buf: &mut [u8],
    ) -> WorkerStop {
        loop {
            match self.step(link, hooks, buf) {
                Err(stop) => return stop,
                Ok(true) => {}
                Ok(false) => {
                    let tx_full = link.tx().free() == 0;
                    if let Err(e) = link.wait(tx_full) {
                        link.fault(e);
                    }
                }
            }
        }
    }

    /// Answers every request delivered (waiting for a tx slot when the ring is full), then
    /// re-posts the rx buffers and publishes the replies. Returns whether anything was taken,
    /// or why the worker stopped.
    pub fn step<L: Link, H: WorkerHooks<L>>(
        &mut self,
        link: &mut L,
        hooks: &mut H,
        buf: &mut [u8],
    ) -> Result<bool, WorkerStop> {
        let cfg = self.cfg;
        let mut any = false;
        loop {
            let m = match link.rx().recv(buf) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    link.fault(e.into());
                    continue;
                }
            };
            any = true;
            if m.header.kind() != Some(MsgKind::Request) {
                hooks.other(link, &m, &mut buf[..m.len]);
                continue;
            }
            let c = &mut self.counters;
            c.requests += 1;
            hooks.received();
            if cfg.mute_after != 0 && c.replies >= cfg.mute_after {
                // Drained (its rx buffer is re-posted below), never answered.
                continue;
            }
            let mut m = m;
            let mut pages_ok = true;
            if m.header.handoff() {
                match hooks.pages(link, &m, buf) {
                    Some(n) => m.len = n,
                    None => pages_ok = false,
                }
            }
            let c = &mut self.counters;
            for _ in 0..cfg.slow.saturating_add(cfg.lie_load) {
                core::hint::spin_loop();
            }
            let ok = pages_ok && !(cfg.error_every != 0 && c.requests % cfg.error_every == 0);
            let mut hdr = if ok {
                xor_in_place(&mut buf[..m.len], cfg.key);
                c.ok += 1;
                MsgHeader::reply_to(&m.header, Status::Ok, m.len as u32)
            } else {
                c.errors += 1;
                MsgHeader::reply_to(&m.header, Status::BackendError, 0)
            };
            if cfg.lie_load != 0 {
                hdr.set_load(0);
            } else if cfg.report_load {
                hdr.set_load(rx_load(link.rx()));
            }
            let len = hdr.len() as usize;
            if let Err(e) = send(link, &hdr, &buf[..len]) {
                link.fault(e);
            }
            let c = &mut self.counters;
            c.replies += 1;
            hooks.replied(ok);
            if cfg.crash_after != 0 && c.replies == cfg.crash_after {
                let _ = link.flush_tx();
                return Err(WorkerStop::Crashed);
            }
            if cfg.stall_after != 0 && c.requests == cfg.stall_after {
                let _ = link.flush_tx();
                return Err(WorkerStop::Stalled);
            }
            if cfg.count != 0 && c.replies == cfg.count {
                if let Err(e) = drain_tx(link) {
                    link.fault(e);
                }
                return Err(WorkerStop::Done);
            }
        }
        if let Err(e) = link.flush_rx().and_then(|_| link.flush_tx()) {
            link.fault(e);
        }
        Ok(any)
    }
}

/// Sends one message, waiting for a free tx slot if the ring is full (publishing first, so
/// the device can make room).
pub fn send<L: Link>(link: &mut L, hdr: &MsgHeader, payload: &[u8]) -> Result<(), L::Error> {
    loop {
        if link.tx().free() == 0 {
            link.tx().reclaim()?;
        }
        if link.tx().free() > 0 {
            link.tx().send(hdr, payload)?;
            return Ok(());
        }
        link.flush_tx()?;
        link.wait(true)?;
    }
}

/// Waits until the device has finished with every tx message (delivered them, or answered
/// the requests among them).
pub fn drain_tx<L: Link>(link: &mut L) -> Result<(), L::Error> {
    link.flush_tx()?;
    loop {
        link.tx().reclaim()?;
        if link.tx().ring().outstanding() == 0 {
            return Ok(());
        }
        link.wait(true)?;
    }
}
