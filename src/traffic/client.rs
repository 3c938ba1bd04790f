//! The windowed client: sends requests, at most a window outstanding, and checks that every
//! one gets exactly one, correct, reply.

use super::{fill_request, is_answer, notify_for, Link, Replies};
use crate::virtio::RxMsg;
use crate::wire::{MsgHeader, MsgKind, Status};

/// Where a client's requests go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A service: the switch picks a backend.
    Service(u32),
    /// One port.
    Port(u32),
}

/// One run of requests: [`Client::exchange`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// Where the requests go.
    pub dst: Destination,
    /// Requests to send (ids continue from the client's last one).
    pub count: u64,
    /// At most this many outstanding (the tx ring bounds it anyway).
    pub window: u64,
    /// Payload bytes per request.
    pub size: usize,
    /// A `src` to write into every request (a forged source, for hostile tests); the switch
    /// stamps the real one.
    pub src: Option<u32>,
    /// Request class of every request (selects a byte-share class table; 0 = default).
    pub class: u8,
    /// Affinity key (key-hash policies such as Maglev): request `id` carries
    /// [`Exchange::key_of`].
    pub key: u32,
    /// Distinct keys the requests spread over (0 or 1: every request carries `key`).
    pub key_spread: u32,
}

impl Exchange {
    /// The affinity key of request `id`: `key + id % key_spread` (wrapping), or `key` when
    /// `key_spread` is 0 or 1. Per message, so that one client can stand for many users.
    pub fn key_of(&self, id: u64) -> u32 {
        match self.key_spread {
            0 | 1 => self.key,
            n => self.key.wrapping_add((id % u64::from(n)) as u32),
        }
    }
}

/// What a reply turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `Status::Ok` with the expected answer.
    Ok,
    /// `Status::Ok` but not the expected answer.
    Mismatch,
    /// An error status (`None`: one this build does not know).
    Failed(Option<Status>),
    /// The id was never sent, or was answered already.
    Duplicate,
}

/// What a client counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientCounters {
    /// Requests sent.
    pub sent: u64,
    /// Replies to outstanding requests (each request's first).
    pub received: u64,
    /// Of those, `Status::Ok` with the expected answer.
    pub ok: u64,
    /// Of those, error statuses.
    pub errors: u64,
    /// Of those, `Status::Ok` with a wrong payload.
    pub mismatches: u64,
    /// Replies to ids not outstanding.
    pub duplicates: u64,
}

/// What a client's caller hears about, and what it handles itself. Every method has a default
/// that does nothing; `()` takes every default.
pub trait ClientHooks<L: Link> {
    /// Request `id` was queued.
    fn sent(&mut self, id: u64) {
        let _ = id;
    }
    /// A reply to `id` came, and what it was.
    fn answered(&mut self, id: u64, verdict: Verdict) {
        let _ = (id, verdict);
    }
    /// Whether a reply is not this client's (the caller's own probes): it goes to
    /// [`ClientHooks::other`] instead.
    fn foreign(&self, reply: &MsgHeader) -> bool {
        let _ = reply;
        false
    }
    /// Any other delivered message (a hello, a request, a one-way message), with its payload.
    fn other(&mut self, link: &mut L, msg: &RxMsg, payload: &mut [u8]) {
        let _ = (link, msg, payload);
    }
    /// Whether to send no new request for now (say, the destination left the directory):
    /// replies to outstanding requests are still taken, and sending resumes once it is
    /// `false` again. Never, by default.
    fn hold(&self) -> bool {
        false
    }
}

impl<L: Link> ClientHooks<L> for () {}

/// A requester: ids 1, 2, ... in sending order, each reply checked to answer an outstanding
/// request exactly once and to carry the request's bytes XOR `key`.
pub struct Client<'a> {
    /// Which requests were answered.
    pub replies: Replies<'a>,
    /// The id of the next request.
    pub next_id: u64,
    /// What it counted.
    pub counters: ClientCounters,
    key: u8,
    size: Option<usize>,
    immediate_every: u64,
}

impl<'a> Client<'a> {
    /// A client tracking up to `8 x bits.len()` requests in `bits` (zeroed), expecting answers
    /// XOR `key` of `size` bytes (`None`: of the reply's own length).
    pub fn new(bits: &'a mut [u8], key: u8, size: Option<usize>) -> Self {
        Self {
            replies: Replies::new(bits),
            next_id: 1,
            counters: ClientCounters::default(),
            key,
            size,
            immediate_every: 0,
        }
    }

    /// The same client, marking request `id` with [`notify_for`]`(id, every)`: one in `every`
    /// immediate, the rest deferred (0, the default: no flag).
    pub fn with_immediate_every(mut self, every: u64) -> Self {
        self.immediate_every = every;
        self
    }

    /// Takes the next id (for a request the caller builds itself).
    pub fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Sends `ex.count` requests, at most `ex.window` outstanding, and returns once every one
    /// has its reply. Request payloads are built in `out`; replies are read into `buf`.
    pub fn exchange<L: Link, H: ClientHooks<L>>(
        &mut self,
        link: &mut L,
        hooks: &mut H,
        ex: &Exchange,
        buf: &mut [u8],
        out: &mut [u8],
    ) -> ClientCounters {
        let (first, base) = (self.next_id, self.replies.answered);
        while self.replies.answered < base + ex.count {
            let progress = self.step(link, hooks, ex, (first, base), buf, out);
            if !progress && self.replies.answered < base + ex.count {
                let tx_full = link.tx().free() == 0;
                if let Err(e) = link.wait(tx_full) {
                    link.fault(e);
                }
            }
        }
        self.counters
    }

    /// One round of [`Client::exchange`] (which started at `start`: its first id, and the
    /// replies answered before it): takes what was
    /// delivered, re-posts the rx buffers, reclaims tx slots, sends what the window allows and
    /// publishes. Returns whether anything moved.
    pub fn step<L: Link, H: ClientHooks<L>>(
        &mut self,
        link: &mut L,
        hooks: &mut H,
        ex: &Exchange,
        start: (u64, u64),
        buf: &mut [u8],
        out: &mut [u8],
    ) -> bool {
        let (first, base) = start;
        let mut progress = self.receive(link, hooks, buf);
        if let Err(e) = link.flush_rx() {
            link.fault(e);
        }
        if let Err(e) = link.tx().reclaim() {
            link.fault(e.into());
        }
        let end = first + ex.count;
        let answered = self.replies.answered - base;
        while !hooks.hold()
            && self.next_id < end
            && (self.next_id - first) - answered < ex.window
            && link.tx().free() > 0
        {
            let id = self.next_id;
            let payload = &mut out[..ex.size];
            fill_request(id, payload);
            let mut hdr = match ex.dst {
                Destination::Port(port) => {
                    MsgHeader::new(MsgKind::Request, port, id, ex.size as u32)
                }
                Destination::Service(s) => MsgHeader::request_to_service(s, id, ex.size as u32),
            };
            if let Some(src) = ex.src {
                hdr.set_src(src);
            }
            hdr.set_class(ex.class);
            hdr.set_key(ex.key_of(id));
            hdr.set_notify(notify_for(id, self.immediate_every));
            if let Err(e) = link.tx().send(&hdr, payload) {
                link.fault(e.into());
                break;
            }
            self.next_id += 1;
            self.counters.sent += 1;
            hooks.sent(id);
            progress = true;
        }
        if let Err(e) = link.flush_tx() {
            link.fault(e);
        }
        progress
    }

    /// Takes every delivered message into `buf`, without re-posting the rx buffers (the next
    /// flush does): replies are checked and counted, the rest goes to the hooks. Returns
    /// whether anything was taken, good or bad.
    pub fn receive<L: Link, H: ClientHooks<L>>(
        &mut self,
        link: &mut L,
        hooks: &mut H,
        buf: &mut [u8],
    ) -> bool {
        let mut any = false;
        loop {
            let m = match link.rx().recv(buf) {
                Ok(Some(m)) => m,
                Ok(None) => return any,
                Err(e) => {
                    any = true;
                    link.fault(e.into());
                    continue;
                }
            };
            any = true;
            let h = m.header;
            if h.kind() == Some(MsgKind::Reply) && !hooks.foreign(&h) {
                let verdict = self.reply(&h, &buf[..m.len]);
                hooks.answered(h.msg_id(), verdict);
            } else {
                hooks.other(link, &m, &mut buf[..m.len]);
            }
        }
    }

    /// Checks and counts one reply.
    pub fn reply(&mut self, h: &MsgHeader, payload: &[u8]) -> Verdict {
        let id = h.msg_id();
        let c = &mut self.counters;
        if !self.replies.accept(id, self.next_id) {
            c.duplicates += 1;
            return Verdict::Duplicate;
        }
        c.received += 1;
        match h.status() {
            Some(Status::Ok) => {
                let size = self.size.unwrap_or(payload.len());
                if is_answer(id, size, payload, self.key) {
                    c.ok += 1;
                    Verdict::Ok
                } else {
                    c.mismatches += 1;
                    Verdict::Mismatch
                }
            }
            st => {
                c.errors += 1;
                Verdict::Failed(st)
            }
        }
    }
}
