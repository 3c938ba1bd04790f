//! What the demo reads from the switch while it runs: answers so far, failovers and picks for
//! the live lines, and the moments that time the failover.

use std::time::{Duration, Instant};

use super::summary::DrainStory;
use crate::switch::{ServiceSnapshot, Snapshot};

/// Follows the switch's snapshots (renewed every 100 ms) while the clients run.
pub struct Watch {
    /// The stopped worker's backend port (`svc-echo-vm5`).
    stopped_port: String,
    /// Its answers in the last snapshot, and the snapshot clock when that count first showed.
    stopped_answers: Option<(u64, u64)>,
    /// Re-dispatches when the stop was asked for; those after it are the stop's.
    redispatches_at_stop: Option<u64>,
    /// The stopped worker's answers when the stop was asked for.
    answers_at_stop: Option<u64>,
    /// Snapshot clock of the first snapshot with a re-dispatch after the stop, and the
    /// worker's last answer before it.
    failover: Option<(u64, u64)>,
    /// Answers, and when they last grew (host time).
    answers: u64,
    last_growth: Instant,
    /// Last snapshot seen (its clock), so each is looked at once.
    last_now_ns: Option<u64>,
    /// For the live lines: when the last one was printed and the answers then.
    last_line: Option<(Instant, u64)>,
    /// A drain of the worker (instead of a stop): what was seen of it.
    drain: Option<DrainStory>,
}

/// The service in a snapshot (the demo serves one).
pub fn service(snap: &Snapshot) -> Option<&ServiceSnapshot> {
    snap.services.first()
}

impl Watch {
    /// Watches the service, whose worker behind port `stopped_port` will be stopped.
    pub fn new(stopped_port: String) -> Self {
        Watch {
            stopped_port,
            stopped_answers: None,
            redispatches_at_stop: None,
            answers_at_stop: None,
            failover: None,
            answers: 0,
            last_growth: Instant::now(),
            last_now_ns: None,
            last_line: None,
            drain: None,
        }
    }

    /// Answers delivered to the clients so far.
    pub fn answers(&self) -> u64 {
        self.answers
    }

    /// How long the answers have not grown.
    pub fn idle(&self) -> Duration {
        self.last_growth.elapsed()
    }

    /// The stopped worker's answers as of the last snapshot.
    fn stopped_port_answers(&self, snap: &Snapshot) -> Option<u64> {
        let p = snap.ports.iter().find(|p| p.name == self.stopped_port)?;
        p.counters.get("replies").copied()
    }

    /// Takes in a snapshot (a repeat of the last one is ignored).
    pub fn observe(&mut self, snap: &Snapshot) {
        if self.last_now_ns == Some(snap.now_ns) {
            return;
        }
        self.last_now_ns = Some(snap.now_ns);
        let Some(s) = service(snap) else { return };
        if s.stats.replies > self.answers {
            self.answers = s.stats.replies;
            self.last_growth = Instant::now();
        }
        if let Some(n) = self.stopped_port_answers(snap) {
            match self.stopped_answers {
                Some((seen, _)) if seen == n => {}
                _ => self.stopped_answers = Some((n, snap.now_ns)),
            }
        }
        if let Some(d) = &mut self.drain {
            if let Some(m) = s.members.iter().find(|m| m.name == self.stopped_port) {
                if d.rejoined_at_answers.is_none() {
                    // Drained: what it was given since the drain, until it leaves.
                    if m.state == "draining" {
                        d.picks_while_drained = d
                            .picks_while_drained
                            .max(m.dispatched.saturating_sub(d.picks_at_drain));
                    }
                    d.left |= m.state == "gone";
                    d.picks_before_rejoin = m.dispatched;
                } else {
                    // Back in its slot: its count goes on, or starts again from zero.
                    let base = if m.dispatched >= d.picks_before_rejoin {
                        d.picks_before_rejoin
                    } else {
                        0
                    };
                    d.picks_after_rejoin = m.dispatched - base;
                }
            }
        }
        if let (Some(base), None) = (self.redispatches_at_stop, self.failover) {
            if s.stats.redispatches > base {
                let last_answer = self.stopped_answers.map_or(snap.now_ns, |(_, at)| at);
                self.failover = Some((snap.now_ns, last_answer));
            }
        }
    }

    /// Marks the moment the stop is asked for (before the guest has carried it out).
    pub fn stop_requested(&mut self, snap: Option<&Snapshot>) {
        let s = snap.and_then(service);
        self.redispatches_at_stop = Some(s.map_or(0, |s| s.stats.redispatches));
        self.answers_at_stop = Some(self.answers);
    }

    /// Marks the drain of the worker: it had been given `picks` requests, and `answers`
    /// were delivered so far.
    pub fn drained(&mut self, picks: u64, answers: u64) {
        self.drain = Some(DrainStory {
            at_answers: answers,
            picks_at_drain: picks,
            ..DrainStory::default()
        });
    }

    /// Whether the drained worker may be brought back (drained, not back yet).
    pub fn rejoin_due(&self) -> bool {
        self.drain
            .as_ref()
            .is_some_and(|d| d.rejoined_at_answers.is_none())
    }

    /// Marks the reload that brought the drained worker back.
    pub fn rejoined(&mut self, answers: u64) {
        if let Some(d) = &mut self.drain {
            d.rejoined_at_answers = Some(answers);
        }
    }

    /// What was seen of a drain, if there was one.
    pub fn drain_story(&self) -> Option<DrainStory> {
        self.drain.clone()
    }

    /// Answers when the stop was asked for.
    pub fn answers_at_stop(&self) -> Option<u64> {
        self.answers_at_stop
    }

    /// From the stopped worker's last answer to the first re-dispatch after the stop, as the
    /// switch's snapshots show them: each moment is known to the snapshot that first shows
    /// it, so the figure is good to one snapshot period (100 ms) either way.
    pub fn stall_to_redispatch(&self) -> Option<Duration> {
        self.failover
            .map(|(redispatch, last)| Duration::from_nanos(redispatch.saturating_sub(last)))
    }

    /// A live line, at most one per `every`: answers so far and their rate, each backend's
    /// picks and status, failovers, ejections, late answers dropped. `None` when it is not
    /// time yet or there is no snapshot.
    pub fn line(
        &mut self,
        snap: Option<&Snapshot>,
        total: u64,
        t: Duration,
        every: Duration,
    ) -> Option<String> {
        let now = Instant::now();
        if self
            .last_line
            .is_some_and(|(then, _)| now.duration_since(then) < every)
        {
            return None;
        }
        let s = snap.and_then(service)?;
        let rate = match self.last_line {
            Some((then, n)) => {
                s.stats.replies.saturating_sub(n) as f64
                    / now.duration_since(then).as_secs_f64().max(1e-3)
            }
            None => 0.0,
        };
        self.last_line = Some((now, s.stats.replies));
        let picks: Vec<String> = s
            .members
            .iter()
            .map(|m| {
                let name = m.name.rsplit('-').next().unwrap_or(&m.name);
                if m.status == "healthy" {
                    format!("{name} {}", m.dispatched)
                } else {
                    format!("{name} {} {}", m.dispatched, m.status)
                }
            })
            .collect();
        Some(format!(
            "[{:>5.1} s] answers {:>6}/{total} {:>5.0}/s | picks {} | failovers {} ejections {} late dropped {}",
            t.as_secs_f64(),
            s.stats.replies,
            rate,
            picks.join(", "),
            s.stats.redispatches,
            s.stats.ejections,
            s.stats.late_replies_dropped
        ))
    }
}

/// Whether `clients` clients connected to the service's front and all have gone again.
pub fn clients_gone(snap: &Snapshot, clients: u32) -> bool {
    let name = crate::serve::front_port_name(super::SERVICE);
    snap.ports.iter().any(|p| {
        p.name == name
            && p.counters.get("connections_accepted").copied().unwrap_or(0) >= u64::from(clients)
            && p.counters.get("conns_open").copied() == Some(0)
    })
}
