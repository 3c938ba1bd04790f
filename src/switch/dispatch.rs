//! Requests to services and their answers: dispatch through the service's policy (a backend
//! without a buffer is passed over for the next best), the waiting queue, replies matched to
//! their in-flight record in one lookup, and errors failed back.

use vm_memory::GuestMemoryBackend;

use super::header::request_header;
use super::inflight::{Backend, Stage, Target, Token};
use super::outbox::Outbound;
use super::policy::PickRequest;
use super::slot::deliver_chain;
use super::Switch;
use crate::port::PortId;
use crate::virtio::{DeliverError, TxChain};
use crate::wire::Status;

/// Outcome of one dispatch attempt.
pub(super) enum Dispatch {
    /// Delivered to a backend.
    Sent,
    /// No backend could take it now; it waits.
    NoRoom,
    /// It was answered (failed back) or dropped; stop tracking it here.
    Done,
}

impl<M: GuestMemoryBackend + Clone + Send + 'static> Switch<M> {
    /// Sends request `tok` of service `s` to the backend its policy picks; a backend without
    /// a buffer is passed over for the next best.
    pub(super) fn try_dispatch(&mut self, s: usize, tok: Token, now: u64) -> Dispatch {
        let Some(r) = self.inflight.get_mut(tok) else {
            return Dispatch::Done;
        };
        let h = &r.chain.header;
        let req = PickRequest {
            class: h.class(),
            key: h.key(),
            bytes: h.len(),
        };
        let hdr = request_header(h, r.frontend, tok);
        let svc = &mut self.services[s];
        let mut outcome = Dispatch::NoRoom;
        let mut too_large = false;
        let mut broken = None;
        while let Some(i) = svc.pick(&req) {
            let port = svc.members[i].port;
            let slot = &self.ports[port as usize];
            let result = if slot.down || !slot.outbox.is_empty() {
                Err(DeliverError::NoBuffer)
            } else {
                deliver_chain(&mut self.ports, port, r.frontend, &hdr, &r.chain)
            };
            match result {
                Ok(true) => {
                    svc.on_sent(i, &req, now);
                    r.stage = Stage::Dispatched;
                    r.backend = Some(Backend {
                        port,
                        member: Some(i),
                    });
                    r.dispatched_ns = now;
                    outcome = Dispatch::Sent;
                    break;
                }
                Ok(false) => {
                    too_large = true;
                    outcome = Dispatch::Done;
                    break;
                }
                Err(DeliverError::NoBuffer) => svc.pass_over(i),
                Err(DeliverError::Dest(_)) => {
                    broken = Some(port);
                    svc.pass_over(i);
                }
                Err(DeliverError::Source(_)) => {
                    broken = Some(r.frontend);
                    outcome = Dispatch::Done;
                    break;
                }
            }
        }
        svc.end_pick();
        if too_large {
            self.fail_back(tok, Status::TooLarge, now);
        }
        if let Some(b) = broken {
            self.take_down(b, true, now);
        }
        outcome
    }

    /// Dispatches service `s`'s waiting requests, oldest first, while backends take them.
    pub(super) fn dispatch_waiting(&mut self, s: usize, now: u64) -> usize {
        let mut n = 0;
        while let Some(&tok) = self.services[s].wait.front() {
            let waiting = self
                .inflight
                .get(tok)
                .is_some_and(|r| r.stage == Stage::Waiting);
            if waiting {
                match self.try_dispatch(s, tok, now) {
                    Dispatch::NoRoom => break,
                    Dispatch::Sent => n += 1,
                    Dispatch::Done => {}
                }
            }
            self.services[s].wait.pop_front();
        }
        n
    }

    /// Backend `b` answered: the reply goes to the frontend (at once, or behind what waits
    /// for it); a reply for a request that was re-dispatched, timed out or orphaned is late.
    pub(super) fn handle_reply(&mut self, b: PortId, c: TxChain, now: u64) {
        let tok = Token(c.header.msg_id());
        let record = self
            .inflight
            .get_mut(tok)
            .filter(|r| r.stage == Stage::Dispatched && r.backend.map(|x| x.port) == Some(b));
        let Some(r) = record else {
            // Exactly one answer already went (or will go) elsewhere.
            self.totals.late_replies_dropped += 1;
            for &(s, _) in &self.ports[b as usize].member_of {
                self.services[s as usize].stats.late_replies_dropped += 1;
            }
            self.release(b, &c, now);
            return;
        };
        r.stage = Stage::Answering;
        let (frontend, msg_id) = (r.frontend, r.chain.header.msg_id());
        if let (Target::Service(s), Some(i)) = (r.target, r.backend.and_then(|x| x.member)) {
            let ok = c.header.status() == Some(Status::Ok);
            let latency = now.saturating_sub(r.dispatched_ns);
            let session = ok && self.ports[b as usize].holds_sessions;
            let svc = &mut self.services[s as usize];
            if session {
                svc.on_session_opened(i, latency, now);
            } else {
                svc.on_reply(i, latency, ok, c.header.load_report(), now);
            }
        }
        let reply = Outbound::Reply {
            token: tok,
            backend: b,
            chain: c,
            msg_id,
        };
        self.offer(frontend, reply, now);
    }

    /// Answers request `tok` with an error status. Counted when the error reaches the
    /// frontend: until then the request is in flight, and orphaned if the frontend goes down.
    pub(super) fn fail_back(&mut self, tok: Token, status: Status, now: u64) {
        // A request already answered (its reply or error waits for the frontend) keeps that
        // one answer: e.g. one failed back at its deadline while it still waited in the
        // outbox of the port it was addressed to, which then goes down.
        let Some(r) = self
            .inflight
            .get_mut(tok)
            .filter(|r| r.stage != Stage::Answering)
        else {
            return;
        };
        r.stage = Stage::Answering;
        let error = Outbound::Error {
            token: tok,
            status,
            msg_id: r.chain.header.msg_id(),
            class: r.chain.header.class(),
        };
        let frontend = r.frontend;
        self.offer(frontend, error, now);
    }

    /// A reply could not be delivered because its backend broke: the request it answered gets
    /// an error instead (queued behind what is already waiting for the frontend).
    pub(super) fn fail_back_answering(&mut self, tok: Token, now: u64) {
        if let Some(r) = self.inflight.get_mut(tok) {
            r.stage = Stage::Waiting;
        }
        self.fail_back(tok, Status::PortBroken, now);
    }
}
