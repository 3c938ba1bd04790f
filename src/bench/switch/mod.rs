//! `vmq bench switch`: frontends -> switch -> backends over in-process peers with one switch
//! thread, against an `rtrb` relay carrying the same messages in the same run; and the cost of
//! one balancing decision per policy against a trivial round robin.
//!
//! - `one-way`: a frontend sends one-way messages to backend ports; the switch forwards each
//!   one (pop from the frontend's tx queue, copy into a backend rx buffer, return the tx chain);
//!   the backends receive them (copy the payload out, re-post the buffer). Counted at the
//!   backends, in messages per second.
//! - `request/reply`: a frontend sends requests to a service; the switch picks a backend (the
//!   service's default policy), holds the request until the reply, forwards the reply and then
//!   returns the request's chain; each backend echoes the payload back. Counted at the frontend
//!   in completed request/reply **pairs** per second (two forwarded messages each).
//! - The baseline is the same shape with `rtrb` SPSC rings instead of virtqueues and a relay
//!   thread instead of the switch: producer -> ring -> relay -> ring -> consumer, messages
//!   carried by value (the same header and payload bytes), the relay reading each header,
//!   routing it (by destination, or round robin over the backends for requests), stamping the
//!   source and pushing it to the output ring. For request/reply the relay carries both
//!   directions and the frontend keeps at most [`QUEUE_SIZE`] requests outstanding, the bound a
//!   frontend's tx ring puts on the switch.
//! - `decision`: nanoseconds per `pick` + `on_sent` of each policy
//!   ([`measure_decision_ns`]) at 4, 64 and 1024 backends, against a round robin that only
//!   increments an index, driven through the same `dyn Policy` call and the same loop.
//!
//! Placement ([`SwitchPlacement`]): the switch (or the relay) spins alone on one CPU; every peer
//! (the frontend and all backends) runs in one thread on the other, taking turns
//! ([`PeerThreads::Combined`]). The alternative, one thread per side sharing that CPU
//! ([`PeerThreads::Split`]), leaves the scheduler to time-slice two spinning threads.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use super::{pin_current_thread, BenchRecord, Budget, Report, Run};
use crate::peer::{host_peer, HostPeer, PeerConfig};
use crate::switch::policy::{
    measure_decision_ns, measure_policy_ns, Candidate, PickRequest, Policy, PolicyKind,
};
use crate::switch::{MonotonicClock, Polling, ServiceConfig, Switch, SwitchConfig, Totals};
use crate::traffic::{rx_pending, Worker, WorkerConfig};
use crate::wire::{MsgHeader, MsgKind, Status, HEADER_SIZE};

/// Payload sizes measured.
pub const SIZES: [u32; 2] = [64, 4096];
/// Messages per batch: the switch takes at most this many from a port per poll, the relay from
/// a ring per pass, and peers publish every this many.
pub const BATCH: u32 = 64;
/// Descriptors per queue of every peer, and slots per rtrb ring.
pub const QUEUE_SIZE: u16 = 512;
/// Backend counts of the decision case.
pub const DECISION_BACKENDS: [usize; 3] = [4, 64, 1024];

/// What crosses the switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    /// One-way messages from one frontend to the backend ports, counted at the backends.
    OneWay,
    /// Requests to a service, echoed by its backends, counted as pairs at the frontend.
    RequestReply,
}

impl Case {
    /// The `case` field of the report.
    pub fn name(self) -> &'static str {
        match self {
            Self::OneWay => "one-way",
            Self::RequestReply => "request/reply",
        }
    }

    /// Backends used by `vmq bench switch` for this case.
    pub fn default_backends(self) -> usize {
        match self {
            Self::OneWay => 1,
            Self::RequestReply => 2,
        }
    }
}

/// How the peers (frontend and backends) are spread over threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerThreads {
    /// One thread steps the frontend and every backend in turn.
    Combined,
    /// A frontend thread and a backend thread.
    Split,
}

/// Where the switch (or relay) thread and the peer thread(s) run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwitchPlacement {
    /// CPU of the switch / relay thread, if pinned.
    pub switch: Option<usize>,
    /// CPU of every peer thread, if pinned.
    pub peers: Option<usize>,
    /// How the peers are spread over threads.
    pub peer_threads: PeerThreads,
}

impl SwitchPlacement {
    /// Switch on CPU 1, every peer in one thread on CPU 0, when there are two CPUs or more;
    /// unpinned otherwise.
    pub fn two_cores() -> Self {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (switch, peers) = if n >= 2 {
            (Some(1), Some(0))
        } else {
            (None, None)
        };
        Self {
            switch,
            peers,
            peer_threads: PeerThreads::Combined,
        }
    }

    /// Nothing pinned.
    pub fn unpinned(peer_threads: PeerThreads) -> Self {
        Self {
            switch: None,
            peers: None,
            peer_threads,
        }
    }

    /// Human-readable description for reports.
    pub fn describe(&self) -> String {
        let cpu = |c: Option<usize>| c.map_or("unpinned".to_string(), |c| format!("cpu{c}"));
        let peers = match self.peer_threads {
            PeerThreads::Combined => "frontend+backends in one thread",
            PeerThreads::Split => "frontend thread + backend thread",
        };
        format!(
            "switch/relay {} / {peers} {}",
            cpu(self.switch),
            cpu(self.peers)
        )
    }
}

/// One measured run through the switch or the relay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SwitchRun {
    /// Messages (one-way) or request/reply pairs counted, and the time they took.
    pub run: Run,
    /// Sum of the message ids counted (every id once: `n (n - 1) / 2`).
    pub id_sum: u64,
    /// Passes of the switch's `poll` (or the relay's loop).
    pub polls: u64,
    /// Of those, passes that moved nothing (the hub waited for the peers).
    pub idle_polls: u64,
    /// Share of the hub's time spent in passes that moved messages: near 1, the hub (switch or
    /// relay) is the bottleneck; well below, it waits for the peers.
    pub hub_busy: f64,
    /// The switch's counters at the end (default for the relay).
    pub totals: Totals,
}

/// Signals shared by every thread of a run.
struct Ctl {
    start: Barrier,
    /// The time budget is spent: frontends stop sending.
    stop: AtomicBool,
    /// Everything sent was counted: every thread leaves.
    done: AtomicBool,
    /// What the frontend sent, once it stopped; `u64::MAX` until then.
    sent: AtomicU64,
    /// Messages (one-way) or pairs (request/reply) counted so far.
    got: AtomicU64,
    /// Sum of the ids counted.
    id_sum: AtomicU64,
}

impl Ctl {
    fn new(threads: usize) -> Arc<Self> {
        Arc::new(Self {
            start: Barrier::new(threads),
            stop: AtomicBool::new(false),
            done: AtomicBool::new(false),
            sent: AtomicU64::new(u64::MAX),
            got: AtomicU64::new(0),
            id_sum: AtomicU64::new(0),
        })
    }

    fn count(&self, n: u64, id_sum: u64) {
        if n > 0 {
            self.got.fetch_add(n, Ordering::Relaxed);
            self.id_sum.fetch_add(id_sum, Ordering::Relaxed);
        }
    }
}

/// One peer (or baseline endpoint), stepped by its thread until the run is done.
trait Side: Send {
    /// One round of work: send a batch, or take what arrived.
    fn step(&mut self, ctl: &Ctl);
}

/// The ends of a run: the frontend side, the backend sides, and which end counts.
struct Sides {
    front: Box<dyn Side>,
    backs: Vec<Box<dyn Side>>,
    /// The frontend counts (request/reply) rather than the backends (one-way).
    front_counts: bool,
}

impl Sides {
    fn new<F, B>(front: F, backs: impl Iterator<Item = B>, front_counts: bool) -> Self
    where
        F: Side + 'static,
        B: Side + 'static,
    {
        Sides {
            front: Box::new(front),
            backs: backs.map(|b| Box::new(b) as Box<dyn Side>).collect(),
            front_counts,
        }
    }
}

/// The ids one of `n` one-way backends receives, in order: backend `i` gets `i`, `i + n`, ...
struct InOrder {
    next: u64,
    stride: u64,
}

impl InOrder {
    fn nth_of(i: usize, n: usize) -> Self {
        InOrder {
            next: i as u64,
            stride: n as u64,
        }
    }

    /// Checks that `id` is the next id expected and moves on; returns `id` (for the checksum).
    fn take(&mut self, id: u64) -> u64 {
        assert_eq!(id, self.next, "messages arrive in order");
        self.next += self.stride;
        id
    }
}

/// Steps `sides` until the run is done. The counting thread ends the run when every message
/// sent was counted and returns its elapsed time.
fn peer_loop(ctl: &Ctl, mut sides: Vec<Box<dyn Side>>, counts: bool) -> Option<Duration> {
    let t0 = Instant::now();
    loop {
        for s in sides.iter_mut() {
            s.step(ctl);
        }
        if counts {
            if ctl.got.load(Ordering::Acquire) == ctl.sent.load(Ordering::Acquire) {
                let elapsed = t0.elapsed();
                ctl.done.store(true, Ordering::Release);
                return Some(elapsed);
            }
        } else if ctl.done.load(Ordering::Acquire) {
            return None;
        }
    }
}

/// What the hub (switch or relay) thread reports.
struct HubStats {
    polls: u64,
    idle_polls: u64,
    start: Instant,
    last: Instant,
    busy: Duration,
    totals: Totals,
}

impl HubStats {
    fn start() -> Self {
        let now = Instant::now();
        Self {
            polls: 0,
            idle_polls: 0,
            start: now,
            last: now,
            busy: Duration::ZERO,
            totals: Totals::default(),
        }
    }

    /// Accounts one pass that moved `moved` messages (one clock read per pass).
    #[inline]
    fn pass(&mut self, moved: usize) {
        let now = Instant::now();
        if moved > 0 {
            self.busy += now - self.last;
        } else {
            self.idle_polls += 1;
            std::hint::spin_loop();
        }
        self.last = now;
        self.polls += 1;
    }

    fn busy_share(&self) -> f64 {
        self.busy.as_secs_f64() / (self.last - self.start).as_secs_f64().max(1e-9)
    }
}

/// Runs the peers and the hub on their threads under `budget`.
fn drive<H>(budget: Budget, placement: SwitchPlacement, sides: Sides, hub: H) -> SwitchRun
where
    H: FnOnce(&Ctl) -> HubStats + Send + 'static,
{
    let groups: Vec<(Vec<Box<dyn Side>>, bool)> = match placement.peer_threads {
        PeerThreads::Combined => {
            let mut all = vec![sides.front];
            all.extend(sides.backs);
            vec![(all, true)]
        }
        PeerThreads::Split => vec![
            (vec![sides.front], sides.front_counts),
            (sides.backs, !sides.front_counts),
        ],
    };
    let ctl = Ctl::new(groups.len() + 2);
    let hctl = ctl.clone();
    let hub = std::thread::spawn(move || {
        pin_current_thread(placement.switch);
        hctl.start.wait();
        hub(&hctl)
    });
    let peers: Vec<_> = groups
        .into_iter()
        .map(|(sides, counts)| {
            let pctl = ctl.clone();
            std::thread::spawn(move || {
                pin_current_thread(placement.peers);
                pctl.start.wait();
                peer_loop(&pctl, sides, counts)
            })
        })
        .collect();
    ctl.start.wait();
    if let Budget::Time(d) = budget {
        std::thread::sleep(d);
        ctl.stop.store(true, Ordering::Release);
    }
    let elapsed = peers
        .into_iter()
        .filter_map(|p| p.join().expect("peer thread panicked"))
        .next()
        .expect("one peer thread counts");
    let stats = hub.join().expect("hub thread panicked");
    SwitchRun {
        run: Run {
            msgs: ctl.got.load(Ordering::Acquire),
            elapsed,
        },
        id_sum: ctl.id_sum.load(Ordering::Acquire),
        polls: stats.polls,
        idle_polls: stats.idle_polls,
        hub_busy: stats.busy_share(),
        totals: stats.totals,
    }
}

fn limit(budget: Budget) -> u64 {
    match budget {
        Budget::Count(n) => n,
        Budget::Time(_) => u64::MAX,
    }
}

// ---- vmq: peers and the switch -----------------------------------------------------------

// ---- baseline: rtrb rings and a relay thread ---------------------------------------------

// ---- decisions ---------------------------------------------------------------------------

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

// ---- the whole bench -----------------------------------------------------------------------

/// Runs every case: one-way and request/reply at each size, vmq against the rtrb relay, then
/// the decision costs.
///
/// `quick` uses 120 ms per run and one run per side (a few seconds in all); otherwise 500 ms
/// per run and the best of three, interleaved.
pub fn run(quick: bool, placement: SwitchPlacement) -> Report {
    let (budget, runs) = super::run_budget(quick);
    let place = placement.describe();
    let mut report = Report::default();
    for case in [Case::OneWay, Case::RequestReply] {
        let backends = case.default_backends();
        for size in SIZES {
            let (mut vmq, mut base): (Option<SwitchRun>, Option<SwitchRun>) = (None, None);
            for _ in 0..runs {
                let v = run_vmq(case, size, backends, budget, placement);
                let b = run_rtrb(case, size, backends, budget, placement);
                if vmq.is_none_or(|x| v.run.msgs_per_s() > x.run.msgs_per_s()) {
                    vmq = Some(v);
                }
                if base.is_none_or(|x| b.run.msgs_per_s() > x.run.msgs_per_s()) {
                    base = Some(b);
                }
            }
            let (vmq, base) = (vmq.expect("runs >= 1"), base.expect("runs >= 1"));
            let per_pair = if case == Case::RequestReply { 2.0 } else { 1.0 };
            let t = vmq.totals;
            report.records.push(
                BenchRecord::new(
                    case.name(),
                    size,
                    BATCH,
                    vmq.run.msgs_per_s(),
                    "rtrb_relay",
                    base.run.msgs_per_s(),
                    &place,
                )
                .with(
                    "unit",
                    if case == Case::RequestReply {
                        "pairs"
                    } else {
                        "msgs"
                    },
                )
                .with(
                    "forwarded_msgs_per_s",
                    (vmq.run.msgs_per_s() * per_pair).round(),
                )
                .with("frontends", 1)
                .with("backends", backends)
                .with("queue_size", QUEUE_SIZE)
                .with("redispatches", t.redispatches)
                .with("replies_copied", t.replies_copied)
                .with("switch_busy", round2(vmq.hub_busy))
                .with("relay_busy", round2(base.hub_busy))
                .with(
                    "msgs_per_poll",
                    round2(
                        (t.oneway_delivered + 2 * t.replies_delivered) as f64
                            / vmq.polls.max(1) as f64,
                    ),
                ),
            );
        }
    }
    let (dbudget, druns) = if quick {
        (Duration::from_millis(20), 1)
    } else {
        (Duration::from_millis(100), 3)
    };
    report.records.extend(decisions(dbudget, druns));
    report
}

mod decision;
mod relay;
mod vmq;

pub use decision::{decisions, measure_round_robin_ns};
pub use relay::run_rtrb;
pub use vmq::run_vmq;

#[cfg(test)]
mod tests {
    use super::*;

    fn all_ids(n: u64) -> u64 {
        n * (n - 1) / 2
    }

    #[test]
    fn harness_moves_every_message_once() {
        // A functional check of the harness (counts, order and ids), not a timing.
        for threads in [PeerThreads::Combined, PeerThreads::Split] {
            let p = SwitchPlacement::unpinned(threads);
            for backends in [1, 3] {
                let n = 5000;
                let r = run_vmq(Case::OneWay, 64, backends, Budget::Count(n), p);
                assert_eq!((r.run.msgs, r.id_sum), (n, all_ids(n)));
                assert_eq!(r.totals.oneway_delivered, n);
                let r = run_rtrb(Case::OneWay, 64, backends, Budget::Count(n), p);
                assert_eq!((r.run.msgs, r.id_sum), (n, all_ids(n)));

                let r = run_vmq(Case::RequestReply, 64, backends, Budget::Count(n), p);
                assert_eq!((r.run.msgs, r.id_sum), (n, all_ids(n)));
                let t = r.totals;
                assert_eq!((t.requests_accepted, t.replies_delivered), (n, n));
                // Exactly one answer per request. (A backend thread the scheduler leaves off its
                // CPU longer than the stall window is ejected and its requests re-dispatched;
                // that is failover at work, not a harness fault.)
                assert_eq!(t.failed_back + t.orphaned + t.refused, 0, "{t:?}");
                let r = run_rtrb(Case::RequestReply, 64, backends, Budget::Count(n), p);
                assert_eq!((r.run.msgs, r.id_sum), (n, all_ids(n)));
            }
        }
        let p = SwitchPlacement::unpinned(PeerThreads::Combined);
        let r = run_vmq(Case::RequestReply, 4096, 2, Budget::Count(1000), p);
        assert_eq!(r.run.msgs, 1000);
        let r = run_rtrb(Case::RequestReply, 4096, 2, Budget::Count(1000), p);
        assert_eq!(r.run.msgs, 1000);
    }

    #[test]
    fn timed_runs_stop_and_count_everything_sent() {
        let p = SwitchPlacement::unpinned(PeerThreads::Combined);
        // Something moves in 20 ms unless the host does not run the threads that long (a busy
        // machine): a run that moved nothing is tried again with twice the time, up to 5 s.
        let mut budget = Duration::from_millis(20);
        let r = loop {
            let r = run_vmq(Case::RequestReply, 64, 2, Budget::Time(budget), p);
            if r.run.msgs > 0 || budget >= Duration::from_secs(5) {
                break r;
            }
            budget *= 2;
        };
        assert!(r.run.msgs > 0);
        assert_eq!(r.id_sum, all_ids(r.run.msgs));
        assert_eq!(r.totals.replies_delivered, r.run.msgs);
    }

    #[test]
    fn decision_records_carry_backends_and_ns() {
        let recs = decisions(Duration::from_micros(100), 1);
        assert_eq!(recs.len(), PolicyKind::ALL.len() * DECISION_BACKENDS.len());
        for r in &recs {
            assert_eq!(r.case, "decision");
            assert!(r.extra.contains_key("ns_per_decision"));
            assert!(r.extra.contains_key("backends"));
        }
    }
}
