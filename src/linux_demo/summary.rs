//! The demo's summary: what the clients checked and what the switch counted.

use std::fmt;

use serde::Serialize;

use crate::switch::Snapshot;

use super::scenario::{SERVICE, SERVICE_CID, SERVICE_PORT, STALL_WINDOW, WINDOW};
use super::watch;

/// One client's run, as the client itself reported it.
#[derive(Clone, Debug, Serialize)]
pub struct ClientResult {
    /// Its CID.
    pub cid: u64,
    /// Requests it was to send.
    pub requests: u64,
    /// The probe's exit status (0: every answer came, once, intact and in order).
    pub exit_code: i32,
    /// The probe's verdict line (`VMQ-PROBE ok sent=... rtt_per_s=...` or `... fail ...`).
    pub verdict: String,
    /// Its round trips per second, by its own clock.
    pub round_trips_per_s: Option<u64>,
    /// Everything it printed.
    #[serde(skip)]
    pub output: String,
}

impl ClientResult {
    /// Whether the client got every answer exactly once (it checks each one's sequence
    /// number and content, in order).
    pub fn ok(&self) -> bool {
        self.exit_code == 0 && self.verdict.starts_with("VMQ-PROBE ok")
    }
}

/// One worker as the switch saw it.
#[derive(Clone, Debug, Serialize)]
pub struct BackendResult {
    /// The switch's name for its port.
    pub name: String,
    /// Its configured weight.
    pub weight: f64,
    /// Requests the switch gave it (first dispatches and re-dispatches).
    pub picks: u64,
    /// Its share of the picks.
    pub share: f64,
    /// Its status when the last answer came (`healthy`, `ejected`, ...).
    pub status: String,
}

/// A worker drained on purpose and brought back by a reload, as the switch's snapshots
/// (every 100 ms) showed it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DrainStory {
    /// Answers delivered when the drain was asked for.
    pub at_answers: u64,
    /// Requests the worker had been given by then.
    pub picks_at_drain: u64,
    /// Requests it was given after the drain, before it came back (0: none, as promised).
    pub picks_while_drained: u64,
    /// It answered what it had and left the service before the reload.
    pub left: bool,
    /// Its count of requests in the last snapshot before it came back.
    #[serde(skip)]
    pub picks_before_rejoin: u64,
    /// Answers delivered when the reload brought it back.
    pub rejoined_at_answers: Option<u64>,
    /// Requests it was given after it came back.
    pub picks_after_rejoin: u64,
}

/// The summary of a `vmq demo --linux` run.
#[derive(Clone, Debug, Serialize)]
pub struct DemoSummary {
    /// Requests the clients were to send.
    pub requests: u64,
    /// Answers the switch delivered to the clients.
    pub answers: u64,
    /// Every client got every answer exactly once, checked by the clients.
    pub each_answered_once: bool,
    /// Requests without an answer: `requests - answers`.
    pub lost: u64,
    /// Requests moved to another worker (failovers).
    pub redispatched: u64,
    /// Ejections of a worker from the rotation.
    pub ejections: u64,
    /// Late answers of a worker whose requests had moved, dropped by the switch.
    pub late_answers_dropped: u64,
    /// Requests failed back to a client with an error (none while a worker lives).
    pub failed_back: u64,
    /// CID of the worker whose application was stopped.
    pub stopped_worker: u64,
    /// Answers when its stop was asked for (`None`: the clients finished first).
    pub stopped_at_answers: Option<u64>,
    /// From the stopped worker's last answer to the first re-dispatch, ms, from the switch's
    /// snapshots (every 100 ms, so within 100 ms either way).
    pub stall_to_redispatch_ms: Option<f64>,
    /// Stall window, ms.
    pub stall_window_ms: u64,
    /// The drain, when the worker was drained instead of stopped.
    pub drain: Option<DrainStory>,
    /// Host seconds from the clients' start (their connecting included) to the last answer.
    pub elapsed_s: f64,
    /// Round trips per second: the sum of the clients' own rates (each from its connection
    /// to its last answer; the clients run at once), or answers per host second when a
    /// client did not report one.
    pub round_trips_per_s: f64,
    /// Answers per host second over `elapsed_s`.
    pub host_round_trips_per_s: f64,
    /// Seconds until every guest had booted.
    pub boot_s: f64,
    /// CPUs this host offers (nothing is pinned).
    pub host_cpus: usize,
    /// The clients.
    pub clients: Vec<ClientResult>,
    /// The workers.
    pub backends: Vec<BackendResult>,
}

impl DemoSummary {
    /// Fills in the switch's side: the backends as they were when the last answer came
    /// (`at_end`), the counters from the switch's last snapshot (`last`, which also counts
    /// the late answers of the resumed worker).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        at_end: Option<&Snapshot>,
        last: Option<&Snapshot>,
        clients: Vec<ClientResult>,
        stopped_worker: u64,
        stopped_at_answers: Option<u64>,
        stall_to_redispatch: Option<std::time::Duration>,
        drain: Option<DrainStory>,
        elapsed: std::time::Duration,
        boot: std::time::Duration,
    ) -> Self {
        let requests = clients.iter().map(|c| c.requests).sum();
        let host_rate = |replies: u64| replies as f64 / elapsed.as_secs_f64().max(1e-3);
        let s = at_end.and_then(watch::service);
        let stats = last
            .or(at_end)
            .and_then(watch::service)
            .map(|s| s.stats)
            .unwrap_or_default();
        let backends = s.map_or_else(Vec::new, |s| {
            s.members
                .iter()
                .map(|m| BackendResult {
                    name: m.name.clone(),
                    weight: m.base_weight,
                    picks: m.dispatched,
                    share: m.share,
                    status: m.status.to_string(),
                })
                .collect()
        });
        DemoSummary {
            requests,
            answers: stats.replies,
            each_answered_once: !clients.is_empty() && clients.iter().all(ClientResult::ok),
            lost: requests.saturating_sub(stats.replies),
            redispatched: stats.redispatches,
            ejections: stats.ejections,
            late_answers_dropped: stats.late_replies_dropped,
            failed_back: stats.failed_back,
            stopped_worker,
            stopped_at_answers,
            stall_to_redispatch_ms: stall_to_redispatch.map(|d| d.as_secs_f64() * 1e3),
            stall_window_ms: STALL_WINDOW.as_millis() as u64,
            drain,
            elapsed_s: elapsed.as_secs_f64(),
            round_trips_per_s: clients
                .iter()
                .map(|c| c.round_trips_per_s.map(|r| r as f64))
                .sum::<Option<f64>>()
                .unwrap_or(host_rate(stats.replies)),
            host_round_trips_per_s: host_rate(stats.replies),
            boot_s: boot.as_secs_f64(),
            host_cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            clients,
            backends,
        }
    }

    /// Nothing lost, nothing failed back, every client satisfied.
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.failed_back == 0
            && self.answers == self.requests
            && self.each_answered_once
    }
}

impl fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let workers: Vec<String> = self
            .backends
            .iter()
            .map(|b| format!("{} (weight {})", short(&b.name), b.weight))
            .collect();
        writeln!(
            f,
            "{} client VM{} -> service {SERVICE} ({SERVICE_CID}:{SERVICE_PORT}, SEQPACKET, \
             window {WINDOW}) -> {}",
            self.clients.len(),
            if self.clients.len() == 1 { "" } else { "s" },
            workers.join(", ")
        )?;
        writeln!(
            f,
            "requests {}  answers {}  each answered exactly once: {}  lost {}",
            self.requests,
            self.answers,
            if self.each_answered_once { "yes" } else { "NO" },
            self.lost
        )?;
        writeln!(
            f,
            "re-dispatched {}  ejections {}  late answers dropped {}  failed back {}",
            self.redispatched, self.ejections, self.late_answers_dropped, self.failed_back
        )?;
        writeln!(f, "  backend  weight   picks   share  status")?;
        for b in &self.backends {
            writeln!(
                f,
                "  {:<7} {:>6.1} {:>7} {:>6.1}%  {}",
                short(&b.name),
                b.weight,
                b.picks,
                b.share * 100.0,
                b.status
            )?;
        }
        match (&self.drain, self.stopped_at_answers) {
            (Some(d), _) => {
                writeln!(
                    f,
                    "worker {} drained after {} answers: given {} requests after the drain, {}",
                    self.stopped_worker,
                    d.at_answers,
                    d.picks_while_drained,
                    if d.left {
                        "answered what it had and left"
                    } else {
                        "had not left when it came back"
                    }
                )?;
                match d.rejoined_at_answers {
                    Some(n) => writeln!(
                        f,
                        "a reload brought it back after {n} answers; it took {} requests since",
                        d.picks_after_rejoin
                    )?,
                    None => writeln!(f, "the clients finished before the reload")?,
                }
            }
            (None, Some(n)) => writeln!(
                f,
                "worker {}'s application stopped (SIGSTOP in its guest) after {n} answers",
                self.stopped_worker
            )?,
            (None, None) => writeln!(
                f,
                "worker {}'s application was not stopped: the clients finished first \
                 (more --requests give the stop time to land)",
                self.stopped_worker
            )?,
        }
        if let Some(ms) = self.stall_to_redispatch_ms {
            writeln!(
                f,
                "stall to re-dispatch: {:.0} ms (stall window {} ms; from its last answer to \
                 the first re-dispatch, in the switch's 100 ms snapshots: +-100 ms)",
                ms, self.stall_window_ms
            )?;
        }
        let per_client: Vec<String> = self
            .clients
            .iter()
            .map(|c| match c.round_trips_per_s {
                Some(r) => format!("client {} {r}/s", c.cid),
                None => format!("client {}: {}", c.cid, c.verdict),
            })
            .collect();
        writeln!(
            f,
            "round trips {:.0}/s ({}); on the host's clock {} answers in {:.1} s from the \
             clients' start, connecting included ({:.0}/s)",
            self.round_trips_per_s,
            per_client.join(", "),
            self.answers,
            self.elapsed_s,
            self.host_round_trips_per_s
        )?;
        write!(
            f,
            "guests: QEMU TCG, 1 vCPU each, booted in {:.0} s; host: {} CPUs, nothing pinned",
            self.boot_s, self.host_cpus
        )
    }
}

/// `svc-echo-vm5` -> `vm5`.
fn short(port: &str) -> &str {
    port.rsplit('-').next().unwrap_or(port)
}
