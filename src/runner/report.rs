//! [`RunReport`]: what a run did, as JSON or a human summary.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use vm_memory::GuestMemoryMmap;

use super::Booted;
use crate::abi::image::client::{latency_bucket_floor, LATENCY_BUCKETS};
use crate::abi::image::{driver, traffic};
use crate::abi::platform::LATENCY_HIST_ADDR;
use crate::event::LoopStats;
use crate::switch::{Snapshot, Switch};
use crate::topology::Role;
use crate::vmm::{ExitSnapshot, RunOutcome};

/// One VM after the run.
#[derive(Clone, Debug, Serialize)]
pub struct VmReport {
    /// Name.
    pub name: String,
    /// Image.
    pub image: String,
    /// Role: `client`, `worker` or `peer`.
    pub role: String,
    /// How its vCPU ended.
    pub outcome: String,
    /// Exit status, if it exited.
    pub exit_status: Option<u32>,
    /// A `kill_after_ms` fault stopped it.
    pub killed: bool,
    /// Counters the guest wrote (`abi::image::traffic`, `abi::image::driver`): messages sent.
    pub sent: u64,
    /// Messages received.
    pub received: u64,
    /// Replies / messages that checked out.
    pub ok: u64,
    /// Error replies.
    pub errors: u64,
    /// Replies for ids not outstanding.
    pub duplicates: u64,
    /// Payload mismatches or out-of-order messages.
    pub mismatches: u64,
    /// Queue kicks the guest made.
    pub kicks: u64,
    /// Doorbell waits.
    pub waits: u64,
    /// VM exits (port I/O + MMIO + other).
    pub exits: u64,
    /// Request round trips a client measured (send to reply), if it is a client.
    pub latency: Option<Latency>,
    /// Every result slot the guest wrote (`abi::image`), image-specific ones included.
    pub results: Vec<u64>,
}

/// Round-trip percentiles from a client's histogram (TSC cycles, converted with the host's
/// TSC rate; bucket resolution about 19 %).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Latency {
    /// Round trips measured.
    pub samples: u64,
    /// Median, microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
}

/// A client's round-trip histogram ([`LATENCY_BUCKETS`] counts).
fn histogram(vm: &crate::vmm::Vm) -> Option<Vec<u64>> {
    use vm_memory::{Bytes, GuestAddress};
    let mut raw = vec![0u8; LATENCY_BUCKETS * 8];
    vm.memory()
        .read_slice(&mut raw, GuestAddress(LATENCY_HIST_ADDR))
        .ok()?;
    Some(
        raw.chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8-byte chunks")))
            .collect(),
    )
}

/// TSC ticks per microsecond on this host (measured once, over 20 ms).
fn tsc_per_us() -> f64 {
    static RATE: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *RATE.get_or_init(|| {
        // SAFETY: `rdtsc` has no memory effects and exists on every x86-64 CPU.
        let t0 = (
            unsafe { core::arch::x86_64::_rdtsc() },
            std::time::Instant::now(),
        );
        std::thread::sleep(Duration::from_millis(20));
        // SAFETY: as above.
        let t1 = unsafe { core::arch::x86_64::_rdtsc() };
        (t1 - t0.0) as f64 / t0.1.elapsed().as_secs_f64() / 1e6
    })
}

/// Percentiles of a histogram (the floor of the bucket holding the rank).
fn latency(hist: &[u64]) -> Option<Latency> {
    let samples: u64 = hist.iter().sum();
    if samples == 0 {
        return None;
    }
    let at = |q: f64| {
        let rank = ((samples as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in hist.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return latency_bucket_floor(i) as f64 / tsc_per_us();
            }
        }
        f64::NAN
    };
    Some(Latency {
        samples,
        p50_us: at(0.50),
        p99_us: at(0.99),
    })
}

/// What the clients of a run (or a soak) saw, summed over them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClientTotals {
    /// Requests the clients sent.
    pub requests: u64,
    /// Replies the clients received (any status).
    pub replies: u64,
    /// Requests without a reply: `requests - replies`.
    pub lost: u64,
    /// Replies a client received for an id that was not outstanding.
    pub duplicates: u64,
    /// Replies whose payload was wrong, or peer messages out of order.
    pub mismatches: u64,
    /// Error replies the clients received.
    pub error_replies: u64,
}

impl ClientTotals {
    /// Nothing lost, answered twice or corrupted.
    pub fn intact(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.mismatches == 0
    }
}

impl fmt::Display for ClientTotals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "requests {}  replies {}  lost {}  duplicates {}  mismatches {}  error replies {}",
            self.requests,
            self.replies,
            self.lost,
            self.duplicates,
            self.mismatches,
            self.error_replies
        )
    }
}

/// What a run did.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// What the clients saw (flattened into the JSON report).
    #[serde(flatten)]
    pub clients: ClientTotals,
    /// Requests failed over to another backend (re-dispatched).
    pub failovers: u64,
    /// Backend ejections.
    pub ejections: u64,
    /// Late replies the switch dropped (from backends whose requests were failed over).
    pub late_replies_dropped: u64,
    /// Messages through the switch per second of run time.
    pub msgs_per_s: f64,
    /// Messages through the switch.
    pub messages: u64,
    /// VM exits (all VMs) per message.
    pub exits_per_msg: f64,
    /// Request round trips over all clients, if any were measured.
    pub latency: Option<Latency>,
    /// Run time (switch loop), seconds.
    pub elapsed_s: f64,
    /// Wall time including boot and teardown, seconds.
    pub wall_s: f64,
    /// The run hit `max_duration_ms` before the clients finished.
    pub timed_out: bool,
    /// Per VM.
    pub vms: Vec<VmReport>,
    /// The switch at the end.
    pub switch: Snapshot,
    /// Switch loop counters.
    pub switch_loop: LoopStats,
    /// Page hand-off counters at the end, when the topology has `[handoff]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handoff: Option<crate::port::handoff::HubStats>,
}

/// How a run ended, worst first; [`Verdict::exit_code`] is the exit status of `vmq run` and
/// `vmq demo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Requests were lost, answered twice or corrupted, or a client or peer failed (exited
    /// with a non-zero status, or ended other than by exiting, without a fault asking for
    /// it). Exit code 1.
    Broken,
    /// The run hit `max_duration_ms` before the clients finished. Exit code 3.
    TimedOut,
    /// Every request got exactly one answer, but some answers were errors (failed back:
    /// no backend, timeout, backend error). Exit code 4.
    ErrorReplies,
    /// Every request got exactly one good reply and the clients finished. Exit code 0.
    Clean,
}

impl Verdict {
    /// The process exit code (2 is taken by "the run could not happen").
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Clean => 0,
            Self::Broken => 1,
            Self::TimedOut => 3,
            Self::ErrorReplies => 4,
        }
    }
}

impl RunReport {
    /// Client and peer VMs that failed: a non-zero exit status, or an end other than an
    /// exit, with no `kill_after_ms` fault behind it (the `evil` test image's status reports
    /// its attack and is not counted).
    pub fn failed_guests(&self) -> Vec<&VmReport> {
        self.vms
            .iter()
            .filter(|v| {
                (v.role == Role::Client.name() || v.role == Role::Peer.name())
                    && v.image != "evil"
                    && !v.killed
                    && !(self.timed_out && v.exit_status.is_none())
                    && v.exit_status != Some(0)
            })
            .collect()
    }

    /// How the run ended.
    pub fn verdict(&self) -> Verdict {
        if !self.clients.intact() || !self.failed_guests().is_empty() {
            Verdict::Broken
        } else if self.timed_out {
            Verdict::TimedOut
        } else if self.clients.error_replies > 0 {
            Verdict::ErrorReplies
        } else {
            Verdict::Clean
        }
    }

    /// Whether the run kept the promise in full: every request answered exactly once with
    /// a good reply, nothing corrupted, and the clients finished ([`Verdict::Clean`]).
    pub fn clean(&self) -> bool {
        self.verdict() == Verdict::Clean
    }
}

fn exits(e: &ExitSnapshot) -> u64 {
    e.pio + e.mmio + e.other
}

/// What one VM (incarnation) did.
pub(super) fn vm_report(b: &Booted) -> VmReport {
    let r = b.vm.results();
    VmReport {
        name: b.name.clone(),
        image: b.image.clone(),
        role: b.role.name().to_string(),
        outcome: format!("{:?}", b.outcome.unwrap_or(RunOutcome::Stopped)),
        exit_status: match b.outcome {
            Some(RunOutcome::Exited(s)) => Some(s),
            _ => None,
        },
        killed: b.killed,
        sent: r[traffic::SENT],
        received: r[traffic::RECEIVED],
        ok: r[traffic::OK],
        errors: r[traffic::ERRORS],
        duplicates: r[traffic::DUPLICATES],
        mismatches: r[traffic::MISMATCHES],
        kicks: r[driver::result::KICKS],
        waits: r[driver::result::WAITS],
        exits: exits(&b.vm.counters().snapshot()),
        latency: (b.role == Role::Client)
            .then(|| histogram(&b.vm))
            .flatten()
            .and_then(|h| latency(&h)),
        results: r.to_vec(),
    }
}

pub(super) fn build(
    sw: &Switch<GuestMemoryMmap>,
    vms: &[Booted],
    elapsed: Duration,
    wall: Duration,
    loop_stats: LoopStats,
    timed_out: bool,
) -> RunReport {
    let snap = sw.snapshot();
    let vm_reports: Vec<VmReport> = vms.iter().map(vm_report).collect();
    let clients = || vm_reports.iter().filter(|v| v.role == Role::Client.name());
    let requests: u64 = clients().map(|v| v.sent).sum();
    let replies: u64 = clients().map(|v| v.received).sum();
    let messages: u64 = snap.ports.iter().map(|p| p.stats.sent).sum();
    let total_exits: u64 = vm_reports.iter().map(|v| v.exits).sum();
    let secs = elapsed.as_secs_f64().max(1e-9);
    let mut merged = vec![0u64; LATENCY_BUCKETS];
    for b in vms.iter().filter(|b| b.role == Role::Client) {
        if let Some(h) = histogram(&b.vm) {
            merged.iter_mut().zip(h).for_each(|(m, n)| *m += n);
        }
    }
    RunReport {
        clients: ClientTotals {
            requests,
            replies,
            lost: requests.saturating_sub(replies),
            duplicates: vm_reports.iter().map(|v| v.duplicates).sum(),
            mismatches: vm_reports.iter().map(|v| v.mismatches).sum(),
            error_replies: clients().map(|v| v.errors).sum(),
        },
        failovers: snap.totals.redispatches,
        ejections: snap.services.iter().map(|s| s.stats.ejections).sum(),
        late_replies_dropped: snap.totals.late_replies_dropped,
        msgs_per_s: messages as f64 / secs,
        messages,
        exits_per_msg: if messages > 0 {
            total_exits as f64 / messages as f64
        } else {
            0.0
        },
        latency: latency(&merged),
        elapsed_s: secs,
        wall_s: wall.as_secs_f64(),
        timed_out,
        vms: vm_reports,
        switch: snap,
        switch_loop: loop_stats,
        handoff: None,
    }
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.switch)?;
        writeln!(
            f,
            "{:<10} {:<7} {:<14} {:>8} {:>8} {:>8} {:>6} {:>5} {:>5} {:>8} {:>8}",
            "vm",
            "image",
            "outcome",
            "sent",
            "received",
            "ok",
            "errors",
            "dups",
            "bad",
            "waits",
            "exits"
        )?;
        for v in &self.vms {
            writeln!(
                f,
                "{:<10} {:<7} {:<14} {:>8} {:>8} {:>8} {:>6} {:>5} {:>5} {:>8} {:>8}",
                v.name,
                v.image,
                v.outcome,
                v.sent,
                v.received,
                v.ok,
                v.errors,
                v.duplicates,
                v.mismatches,
                v.waits,
                v.exits
            )?;
        }
        writeln!(f)?;
        writeln!(f, "{}", self.clients)?;
        writeln!(
            f,
            "failovers {} (ejections {}, late replies dropped {})",
            self.failovers, self.ejections, self.late_replies_dropped
        )?;
        if let Some(h) = &self.handoff {
            writeln!(
                f,
                concat!(
                    "page hand-off: {} handed off ({} pages), copied {} (small {}, ",
                    "receiver full {}, not member {}), refused {}, releases {}, returned on ",
                    "answer {} / on port down {} pages, pages out at the end {}"
                ),
                h.handed_off,
                h.ledger.pages_lent,
                h.copied_small + h.copied_full + h.copied_not_member,
                h.copied_small,
                h.copied_full,
                h.copied_not_member,
                h.refused_bad,
                h.releases,
                h.returned_on_answer,
                h.ledger.returned_on_down,
                h.pages_out
            )?;
        }
        if let Some(l) = self.latency {
            writeln!(
                f,
                "round trip: p50 {:.1} us, p99 {:.1} us ({} requests)",
                l.p50_us, l.p99_us, l.samples
            )?;
        }
        for v in self.failed_guests() {
            writeln!(
                f,
                "{} {} failed: {} (exit status {:?})",
                v.role, v.name, v.outcome, v.exit_status
            )?;
        }
        writeln!(
            f,
            "{} messages in {:.2} s: {:.0} msg/s, {:.4} exits per message{}",
            self.messages,
            self.elapsed_s,
            self.msgs_per_s,
            self.exits_per_msg,
            if self.timed_out {
                "  (TIMED OUT before the clients finished)"
            } else {
                ""
            }
        )
    }
}
