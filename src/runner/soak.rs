//! `vmq soak`: full-rate traffic for a while, with random worker stalls, crashes, kills and
//! restarts; samples resident memory and in-flight blocks; ends with totals.
//!
//! Two client VMs run rounds of requests (each round a fresh VM on the same port, which also
//! exercises port revival); three workers serve them. Every `fault_every` one healthy worker
//! is hit: killed by the host (and restarted a little later), restarted so that it stalls
//! after a random number of requests (then killed and restarted), or restarted so that it
//! crashes after a random number of requests (then restarted). Every round's client must get
//! every reply exactly once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use vm_memory::GuestMemoryMmap;

use super::report::ClientTotals;
use super::{
    boot, native_port, progress, report, restart, supervise, switch_loop, vm_err, Booted, RunError,
    RunOptions,
};
use crate::abi::image::{client, worker};
use crate::switch::policy::XorShift64;
use crate::switch::{MonotonicClock, Switch};
use crate::topology::Topology;
use crate::transport::TransportEvent;
use crate::vmm::images;

/// How long and how hard to soak.
#[derive(Clone, Copy, Debug)]
pub struct SoakOptions {
    /// Traffic duration (the last client rounds finish after it).
    pub duration: Duration,
    /// Seed of the fault schedule.
    pub seed: u64,
    /// Mean time between faults.
    pub fault_every: Duration,
    /// Requests per client round.
    pub round: u64,
    /// Live progress on stderr.
    pub progress: bool,
}

impl Default for SoakOptions {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(10),
            seed: 1,
            fault_every: Duration::from_millis(300),
            round: 3000,
            progress: true,
        }
    }
}

/// Faults the soak injected.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct FaultCounts {
    /// Workers killed by the host.
    pub kills: u64,
    /// Workers restarted to stall after a random number of requests.
    pub stalls: u64,
    /// Workers restarted to crash after a random number of requests.
    pub crashes: u64,
    /// Worker VM restarts (after any fault).
    pub worker_restarts: u64,
}

/// What a soak did.
#[derive(Clone, Debug, Serialize)]
pub struct SoakReport {
    /// Traffic time, seconds.
    pub duration_s: f64,
    /// Client rounds completed (each a fresh client VM).
    pub client_rounds: u64,
    /// What the clients saw: nothing may be lost, duplicated or corrupted; error replies are
    /// requests failed back (e.g. while every worker was down). Flattened into the JSON report.
    #[serde(flatten)]
    pub clients: ClientTotals,
    /// Client rounds that did not exit cleanly.
    pub bad_rounds: u64,
    /// Faults injected.
    pub faults: FaultCounts,
    /// Requests failed over.
    pub failovers: u64,
    /// Ejections.
    pub ejections: u64,
    /// Late replies dropped.
    pub late_replies_dropped: u64,
    /// Messages through the switch.
    pub messages: u64,
    /// Messages per second.
    pub msgs_per_s: f64,
    /// Resident memory of this process at the start (KiB).
    pub rss_start_kib: u64,
    /// Resident memory at the end (KiB).
    pub rss_end_kib: u64,
    /// Largest resident memory sampled (KiB).
    pub rss_max_kib: u64,
    /// Most requests in flight sampled.
    pub in_flight_max: usize,
    /// Most in-flight subpools sampled.
    pub pool_subpools_max: usize,
    /// In flight at the end (must be 0).
    pub in_flight_end: usize,
}

impl SoakReport {
    /// Nothing lost, duplicated or corrupted, every round clean, nothing left in flight.
    pub fn clean(&self) -> bool {
        self.clients.intact() && self.bad_rounds == 0 && self.in_flight_end == 0
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        // SAFETY: sysconf has no memory effects.
        .map(|pages| pages * (unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64) / 1024)
        .unwrap_or(0)
}

const TOPOLOGY: &str = r#"
vm = [
  { name = "c0", image = "client", params = { service = "echo", size = 64, window = 16, wait = "doorbell" } },
  { name = "c1", image = "client", params = { service = "echo", size = 256, window = 16, wait = "doorbell" } },
  { name = "w0", image = "worker", params = { wait = "doorbell" } },
  { name = "w1", image = "worker", params = { wait = "doorbell" } },
  { name = "w2", image = "worker", params = { wait = "doorbell" } },
]
[[service]]
name = "echo"
members = [{ vm = "w0" }, { vm = "w1" }, { vm = "w2" }]
request_timeout_ms = 500
"#;

const CLIENTS: std::ops::Range<usize> = 0..2;
const WORKERS: std::ops::Range<usize> = 2..5;

/// A worker's pending fault follow-up.
#[derive(Clone, Copy)]
enum Next {
    /// Restart it (fault-free) at this time.
    Restart(Instant),
    /// It was told to crash: restart it once it exits.
    RestartWhenExited,
}

/// Runs the soak.
pub fn soak(opts: &SoakOptions) -> Result<SoakReport, RunError> {
    let names: Vec<&str> = images::ALL.iter().map(|(n, _)| *n).collect();
    let topo = Topology::parse(TOPOLOGY, "<soak>", &names)?;
    let ropts = RunOptions::default();
    let rss_start = rss_kib();
    let round = [(client::param::COUNT, opts.round)];
    let mut vms: Vec<Booted> = boot(&topo, &ropts)?;
    for (i, b) in vms.iter_mut().enumerate() {
        if CLIENTS.contains(&i) {
            // Rounds: restart the clients with their count set.
            b.vm.set_param(client::param::COUNT, opts.round)
                .map_err(vm_err(&b.name))?;
        }
        b.vcpu = Some(b.vm.start().map_err(vm_err(&b.name))?);
    }
    let mut switch: Switch<GuestMemoryMmap> =
        Switch::new(topo.switch, Arc::new(MonotonicClock::new()))?;
    for (i, b) in vms.iter().enumerate() {
        let dev = match b.link.events.recv_timeout(Duration::from_secs(5)) {
            Ok(TransportEvent::Activated(d)) => d,
            _ => {
                return Err(RunError::NoDevice {
                    vm: b.name.clone(),
                    secs: 5,
                    outcome: "no activation".into(),
                    console: b.vm.console().lines().join("\n"),
                })
            }
        };
        switch.attach(&b.name, native_port(b, dev, i as u32, None))?;
    }
    let s = &topo.services[0];
    switch.add_service(
        s.name.get_ref(),
        s.config(),
        &WORKERS.map(|w| (w as u32, 1.0)).collect::<Vec<_>>(),
    )?;
    let mut lp = switch_loop(switch, &vms)?;

    let mut rng = XorShift64::new(opts.seed);
    let mut retired_clients: Vec<super::VmReport> = Vec::new();
    let mut faults = FaultCounts::default();
    let mut next: [Option<Next>; 5] = [None; 5];
    let mut next_fault = Instant::now() + opts.fault_every;
    let mut rss_max = rss_start;
    let mut in_flight_max = 0usize;
    let mut subpools_max = 0usize;
    let mut progress = progress::Progress::new(opts.progress);
    let started = Instant::now();
    let stop_traffic = started + opts.duration;
    let hard_stop = stop_traffic + Duration::from_secs(20);
    let all_done = std::cell::Cell::new(false);
    let mut err = None;
    lp.run(
        |_| all_done.get() || Instant::now() >= hard_stop,
        Duration::from_millis(5),
        |sw, stats, kicks| {
            let now = Instant::now();
            supervise(sw, &mut vms, now - started, kicks, None);
            let traffic = now < stop_traffic;
            // Clients: a finished round is recorded and, while the soak lasts, a new one starts.
            for c in CLIENTS {
                let finished = vms[c].vcpu.as_ref().is_none_or(|v| v.is_finished());
                if finished && traffic {
                    match restart(sw, &topo, &ropts, &mut vms, c, &round) {
                        Ok(r) => retired_clients.push(r),
                        Err(e) => err = Some(e),
                    }
                }
            }
            // Worker follow-ups.
            for w in WORKERS {
                let due = match next[w] {
                    Some(Next::Restart(at)) => now >= at,
                    Some(Next::RestartWhenExited) => {
                        vms[w].vcpu.as_ref().is_none_or(|v| v.is_finished())
                    }
                    None => false,
                };
                if due {
                    next[w] = None;
                    faults.worker_restarts += 1;
                    if let Err(e) = restart(sw, &topo, &ropts, &mut vms, w, &[]) {
                        err = Some(e);
                    }
                }
            }
            // A new fault on a worker that has none pending.
            if traffic && now >= next_fault {
                let jitter = rng.next_u64() % (opts.fault_every.as_millis() as u64 + 1);
                next_fault = now + opts.fault_every / 2 + Duration::from_millis(jitter);
                let free: Vec<usize> = WORKERS.filter(|&w| next[w].is_none()).collect();
                if !free.is_empty() {
                    let w = free[(rng.next_u64() % free.len() as u64) as usize];
                    let after = 200 + rng.next_u64() % 3000;
                    match rng.next_u64() % 3 {
                        0 => {
                            faults.kills += 1;
                            if let Some(v) = &vms[w].vcpu {
                                v.stop();
                            }
                            let delay = 50 + rng.next_u64() % 250;
                            next[w] = Some(Next::Restart(now + Duration::from_millis(delay)));
                        }
                        1 => {
                            faults.stalls += 1;
                            faults.worker_restarts += 1;
                            let extra = [(worker::param::STALL_AFTER, after)];
                            if let Err(e) = restart(sw, &topo, &ropts, &mut vms, w, &extra) {
                                err = Some(e);
                            }
                            next[w] = Some(Next::Restart(now + Duration::from_millis(800)));
                        }
                        _ => {
                            faults.crashes += 1;
                            faults.worker_restarts += 1;
                            let extra = [(worker::param::CRASH_AFTER, after)];
                            if let Err(e) = restart(sw, &topo, &ropts, &mut vms, w, &extra) {
                                err = Some(e);
                            }
                            next[w] = Some(Next::RestartWhenExited);
                        }
                    }
                }
            }
            let snap_in_flight = sw.in_flight();
            in_flight_max = in_flight_max.max(snap_in_flight);
            subpools_max = subpools_max.max(sw.snapshot().pool_subpools);
            rss_max = rss_max.max(rss_kib());
            // After the traffic window: done once the last rounds finished and nothing waits.
            all_done.set(
                !traffic
                    && CLIENTS
                        .clone()
                        .all(|c| vms[c].vcpu.as_ref().is_none_or(|v| v.is_finished()))
                    && sw.in_flight() == 0,
            );
            progress.tick(sw, stats, now - started, Duration::from_millis(1000));
        },
    );
    if let Some(e) = err {
        return Err(e);
    }
    let elapsed = started.elapsed();
    for b in &vms {
        if let Some(v) = &b.vcpu {
            v.stop();
        }
    }
    for b in vms.iter_mut() {
        if let Some(v) = b.vcpu.take() {
            b.outcome = Some(v.join().unwrap_or(crate::vmm::RunOutcome::Stopped));
        }
    }
    for c in CLIENTS {
        retired_clients.push(report::vm_report(&vms[c]));
    }
    progress.finish();
    let snap = lp.switch.snapshot();
    let rounds = &retired_clients;
    let requests: u64 = rounds.iter().map(|r| r.sent).sum();
    let replies: u64 = rounds.iter().map(|r| r.received).sum();
    let messages: u64 = snap.ports.iter().map(|p| p.stats.sent).sum();
    Ok(SoakReport {
        duration_s: elapsed.as_secs_f64(),
        client_rounds: rounds.len() as u64,
        clients: ClientTotals {
            requests,
            replies,
            lost: rounds
                .iter()
                .map(|r| r.sent.saturating_sub(r.received))
                .sum(),
            duplicates: rounds.iter().map(|r| r.duplicates).sum(),
            mismatches: rounds.iter().map(|r| r.mismatches).sum(),
            error_replies: rounds.iter().map(|r| r.errors).sum(),
        },
        bad_rounds: rounds
            .iter()
            .filter(|r| r.exit_status != Some(0) && r.sent > 0)
            .count() as u64,
        faults,
        failovers: snap.totals.redispatches,
        ejections: snap.services.iter().map(|s| s.stats.ejections).sum(),
        late_replies_dropped: snap.totals.late_replies_dropped,
        messages,
        msgs_per_s: messages as f64 / elapsed.as_secs_f64().max(1e-9),
        rss_start_kib: rss_start,
        rss_end_kib: rss_kib(),
        rss_max_kib: rss_max,
        in_flight_max,
        pool_subpools_max: subpools_max,
        in_flight_end: snap.in_flight,
    })
}
