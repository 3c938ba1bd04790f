//! The sweep: every `sweep_interval_ns` it reads how each backend drains into its health,
//! runs failover, re-dispatches the work of stalled and ejected backends, fails back
//! requests past their deadline, and lets drained members that owe nothing leave.

use vm_memory::GuestMemoryBackend;

use super::failover::Event;
use super::inflight::{Stage, Target};
use super::service::MemberState;
use super::Switch;
use crate::wire::Status;

impl<M: GuestMemoryBackend + Clone + Send + 'static> Switch<M> {
    /// Reads every backend's queues into its health, runs failover, re-dispatches the work of
    /// ejected backends and fails back requests past their deadline. `poll` calls it every
    /// `sweep_interval_ns`.
    pub fn sweep(&mut self, now: u64) {
        // Drain progress, once per port.
        for e in self.ports.iter_mut() {
            let d = e.port.drain();
            e.consumed_since_sweep = d.consumed.wrapping_sub(e.drain.consumed);
            e.sessions_since_sweep = (
                d.ended.wrapping_sub(e.drain.ended),
                d.broken.wrapping_sub(e.drain.broken),
            );
            e.drain = d;
        }
        let mut events = std::mem::take(&mut self.events);
        let switch_wait = self.run_queue.as_ref().and_then(|c| c.waited_ns());
        for s in 0..self.services.len() {
            let svc = &mut self.services[s];
            if svc.removed {
                continue;
            }
            svc.failover.sample_switch_run_queue_wait(switch_wait);
            for i in 0..svc.members.len() {
                let e = &self.ports[svc.members[i].port as usize];
                if !e.down && svc.members[i].state != MemberState::Gone {
                    svc.observe(i, e.consumed_since_sweep, e.drain, now);
                    let (ended, broken) = e.sessions_since_sweep;
                    if ended > 0 {
                        svc.members[i].health.on_sessions_ended(ended, broken, now);
                    }
                    if svc.failover.wants_run_queue_wait(i) {
                        let waited = e.port.run_queue_wait_ns();
                        svc.failover.sample_run_queue_wait(i, waited);
                    }
                }
            }
            events.clear();
            svc.failover.sweep(now, &mut events);
            for ev in events.drain(..) {
                match ev {
                    Event::Ejected { backend, .. } => {
                        self.services[s].stats.ejections += 1;
                        self.redispatch(s, backend);
                    }
                    Event::Stalled { backend } => {
                        // Kept in rotation by the ejection cap, but it is not draining: its
                        // unanswered requests go elsewhere now rather than at their deadline.
                        self.services[s].stats.stalls += 1;
                        self.redispatch(s, backend);
                    }
                    Event::Returned { .. } => self.services[s].stats.returns += 1,
                    Event::Descheduled { .. } => self.services[s].stats.descheduled += 1,
                    _ => {}
                }
            }
            self.services[s].refresh(now);
        }
        self.events = events;
        self.expire(now);
        self.settle_draining(now);
    }

    /// Takes every unanswered request of member `i` of service `s` back to the front of the
    /// service's wait queue, under a new token so the old backend's reply will be late.
    pub(super) fn redispatch(&mut self, s: usize, i: usize) {
        let port = self.services[s].members[i].port;
        let mut tokens = std::mem::take(&mut self.tokens);
        self.inflight.recall(s as u32, port, i, &mut tokens);
        let svc = &mut self.services[s];
        // Oldest first at the front of the queue.
        for &t in tokens.iter().rev() {
            svc.wait.push_front(t);
        }
        svc.on_recalled(i, tokens.len());
        self.totals.redispatches += tokens.len() as u64;
        self.tokens = tokens;
    }

    /// Fails back every request past its deadline: waiting ones with `NoBackend`, dispatched
    /// ones with `Timeout` (a reply that still comes is dropped as late); a reply still held
    /// for a frontend that has not taken it becomes a `Timeout` error and frees its backend.
    fn expire(&mut self, now: u64) {
        let mut tokens = std::mem::take(&mut self.tokens);
        self.inflight.expired(now, &mut tokens);
        for &t in &tokens {
            let Some(r) = self.inflight.get_mut(t) else {
                continue;
            };
            if r.stage == Stage::Answering {
                // Its answer waits for a frontend that does not take it: the backend's chain
                // must not wait with it. Once is enough.
                r.deadline_ns = u64::MAX;
                let f = r.frontend;
                self.drop_unread_reply(f, t, now);
                continue;
            }
            let status = if r.stage == Stage::Waiting {
                Status::NoBackend
            } else {
                if let (Target::Service(s), Some(i)) = (r.target, r.backend.and_then(|b| b.member))
                {
                    self.services[s as usize].on_abandon(i);
                }
                Status::Timeout
            };
            self.fail_back(t, status, now);
        }
        if !tokens.is_empty() {
            self.prune_waiting();
        }
        self.tokens = tokens;
    }
}
