//! `vmq demo --linux`: the demo's story with stock Linux guests. One or two client VMs send
//! SEQPACKET requests over `AF_VSOCK` to a service that `vmq serve` (in this process) spreads
//! over three worker VMs with weights 1, 2, 3; a third of the way in, one worker's application
//! is stopped (`kill -STOP` inside its guest); the switch sees it stop reading, ejects it and
//! moves its requests; the clients check that every answer came exactly once.
//!
//! [`run`] boots the guests under QEMU ([`crate::linux`]), prints live progress from the
//! switch's snapshots, and returns a [`DemoSummary`]. Guests, the server and the temporary
//! directory are cleaned up however it ends (an error, or the caller's cancel flag).

mod scenario;
mod summary;
#[cfg(test)]
mod tests;
mod watch;

pub use scenario::{CLIENTS, SERVICE, SERVICE_CID, SERVICE_PORT, STALL_WINDOW, WORKERS};
pub use summary::{BackendResult, ClientResult, DemoSummary, DrainStory};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use crate::linux::{BgJob, GuestError, GuestOptions, LinuxAssets, LinuxGuest};
use crate::serve::{ServeConfig, ServeConfigError, ServeError, Server};
use crate::switch::Snapshot;

use watch::Watch;

/// Give-up limit for one console command (a TCG guest on two busy cores is slow).
const T: Duration = Duration::from_secs(120);
/// The run ends if no answer came for this long.
const GIVE_UP: Duration = Duration::from_secs(60);
/// How often a line says how the boot goes.
const BOOT_LINE_EVERY: Duration = Duration::from_secs(10);

/// What to run.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// Client VMs: 1 or 2.
    pub clients: u32,
    /// Requests each client sends.
    pub requests_per_client: u64,
    /// The worker whose application is stopped, or which is drained (a CID of [`WORKERS`]).
    pub stopped_worker: u64,
    /// The stop (or the drain) comes when this fraction of all requests is answered.
    pub stop_after: f64,
    /// What happens to that worker.
    pub disruption: Disruption,
    /// Serve live stats over HTTP here (`vmq stats`).
    pub metrics: Option<SocketAddr>,
    /// How often a live line is printed.
    pub progress_every: Duration,
    /// When raised, the run ends as soon as it can, cleaning up ([`DemoError::Interrupted`]).
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            clients: 2,
            requests_per_client: 6000,
            stopped_worker: 5,
            stop_after: 1.0 / 3.0,
            disruption: Disruption::Stop,
            metrics: None,
            progress_every: Duration::from_secs(1),
            cancel: None,
        }
    }
}

/// What happens to the chosen worker mid-run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disruption {
    /// Its application stops reading (SIGSTOP in its guest): vmq sees it stall, ejects it and
    /// moves its requests.
    Stop,
    /// It is drained on purpose (`vmq drain`): it takes no new request and answers what it
    /// has; halfway through the rest of the run a reload of the same configuration brings it
    /// back.
    DrainThenRejoin,
}

/// Most requests a client may be asked to send.
pub const MAX_REQUESTS: u64 = 100_000_000;

/// Why the demo could not run to its summary.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A setting is out of range.
    #[error("demo --linux: {0}")]
    Config(String),
    /// The built-in service configuration was refused (a bug).
    #[error("demo --linux: the built-in configuration: {0}")]
    ServeConfig(#[from] ServeConfigError),
    /// `vmq serve` could not start.
    #[error("vmq serve could not start: {0}")]
    Serve(#[from] ServeError),
    /// A guest could not boot or do what it was asked.
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// The temporary directory for the sockets could not be made.
    #[error("{what}: {source}")]
    Io {
        /// What was being made.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// The drain or the reload was refused.
    #[error("demo --linux: {0}")]
    Control(#[from] crate::serve::ControlError),
    /// The cancel flag was raised.
    #[error("interrupted: the guests were stopped and the temporary directory removed")]
    Interrupted,
}

impl DemoConfig {
    /// Checks the settings.
    pub fn check(&self) -> Result<(), DemoError> {
        let bad = |m: String| Err(DemoError::Config(m));
        if !(1..=CLIENTS.len() as u32).contains(&self.clients) {
            return bad(format!("clients must be 1 or 2, not {}", self.clients));
        }
        if !(1..=MAX_REQUESTS).contains(&self.requests_per_client) {
            return bad(format!(
                "requests must be 1..={MAX_REQUESTS}, not {}",
                self.requests_per_client
            ));
        }
        if !WORKERS.iter().any(|w| w.0 == self.stopped_worker) {
            return bad(format!(
                "worker {} is not one of 4, 5, 6",
                self.stopped_worker
            ));
        }
        if !(0.0..1.0).contains(&self.stop_after) {
            return bad(format!(
                "stop_after must be in [0, 1), not {}",
                self.stop_after
            ));
        }
        Ok(())
    }

    fn total(&self) -> u64 {
        self.requests_per_client * u64::from(self.clients)
    }

    fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

/// A directory for the vhost-user sockets (their paths must stay under 108 bytes), removed
/// when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, DemoError> {
        let base = std::env::temp_dir();
        let base = if base.as_os_str().len() <= 40 {
            base
        } else {
            PathBuf::from("/tmp")
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let p = base.join(format!("vmq-demo-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).map_err(|source| DemoError::Io {
            what: format!("create {}", p.display()),
            source,
        })?;
        Ok(TempDir(p))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Raises `abort` when the caller's cancel flag goes up, until dropped: every wait on a
/// guest's console watches `abort`, which a failed boot raises too.
struct CancelBridge {
    done: Arc<AtomicBool>,
}

impl CancelBridge {
    fn start(cancel: Option<Arc<AtomicBool>>, abort: Arc<AtomicBool>) -> CancelBridge {
        let done = Arc::new(AtomicBool::new(false));
        if let Some(cancel) = cancel {
            let d = done.clone();
            thread::spawn(move || {
                while !d.load(Ordering::Relaxed) {
                    if cancel.load(Ordering::Relaxed) {
                        abort.store(true, Ordering::Relaxed);
                        return;
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            });
        }
        CancelBridge { done }
    }
}

impl Drop for CancelBridge {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

/// Runs the demo with the guests of `assets`, saying what happens through `say` (one line
/// each: boot progress, live answers, the stop), and returns the summary.
pub fn run(
    assets: &LinuxAssets,
    cfg: &DemoConfig,
    say: &mut dyn FnMut(&str),
) -> Result<DemoSummary, DemoError> {
    cfg.check()?;
    let abort = Arc::new(AtomicBool::new(false));
    let _bridge = CancelBridge::start(cfg.cancel.clone(), abort.clone());
    let interrupted = |e: DemoError| {
        if cfg.cancelled() {
            DemoError::Interrupted
        } else {
            e
        }
    };
    let dir = TempDir::new()?;
    let serve_cfg = scenario::serve_config(dir.path(), cfg)?;
    let server = Server::start(&serve_cfg)?;
    let weights: Vec<String> = WORKERS.iter().map(|w| format!("{}", w.1)).collect();
    say(&format!(
        "vmq serve: service {SERVICE} at {SERVICE_CID}:{SERVICE_PORT} over workers {} \
         (weights {}, weighted round robin, stall window {} ms)",
        list(WORKERS.iter().map(|w| w.0)),
        weights.join(", "),
        STALL_WINDOW.as_millis()
    ));
    if let Some(a) = server.metrics_addr() {
        say(&format!(
            "vmq serve: live stats on http://{a}/metrics (vmq stats --addr {a})"
        ));
    }
    let (guests, boot) = boot_guests(assets, cfg, dir.path(), &abort, say).map_err(interrupted)?;
    let (mut clients, mut workers): (Vec<_>, Vec<_>) = guests
        .into_iter()
        .partition(|(cid, _)| CLIENTS.contains(cid));
    let (jobs, t0) = start_traffic(cfg, &mut clients, &mut workers, say).map_err(interrupted)?;
    let mut watch = Watch::new(crate::serve::member_port_name(SERVICE, cfg.stopped_worker));
    let stopped = workers
        .iter_mut()
        .find(|(cid, _)| *cid == cfg.stopped_worker)
        .map(|(_, g)| g)
        .expect("the stopped worker is one of WORKERS (checked)");
    let (end, at_end) =
        follow(cfg, &serve_cfg, &server, &mut watch, stopped, t0, say).map_err(interrupted)?;
    let elapsed = end.duration_since(t0);
    let mut results = Vec::new();
    for ((cid, g), job) in clients.iter_mut().zip(&jobs) {
        results.push(client_result(*cid, cfg.requests_per_client, g, job));
    }
    if watch.answers_at_stop().is_some() {
        // Its late answers reach the switch, which drops and counts them.
        let _ = stopped.run(&scenario::signal_command("CONT"), T);
    }
    if cfg.cancelled() {
        return Err(DemoError::Interrupted);
    }
    shutdown_all(clients.into_iter().chain(workers).map(|(_, g)| g));
    let (_, last) = server.shutdown_with_snapshot();
    Ok(DemoSummary::new(
        at_end.as_ref(),
        last.as_ref(),
        results,
        cfg.stopped_worker,
        watch.answers_at_stop(),
        watch.stall_to_redispatch(),
        watch.drain_story(),
        elapsed,
        boot,
    ))
}

/// "4, 5, 6".
fn list(cids: impl Iterator<Item = u64>) -> String {
    cids.map(|c| c.to_string()).collect::<Vec<_>>().join(", ")
}

/// Boots every guest in parallel, with a line when each is up and every few seconds while
/// they boot. Returns them by CID (clients first) and how long the boot took.
fn boot_guests(
    assets: &LinuxAssets,
    cfg: &DemoConfig,
    dir: &Path,
    abort: &Arc<AtomicBool>,
    say: &mut dyn FnMut(&str),
) -> Result<(Vec<(u64, LinuxGuest)>, Duration), DemoError> {
    let cids = scenario::guest_cids(cfg.clients);
    say(&format!(
        "booting {} Linux guests under QEMU (TCG, 1 vCPU each): clients {}, workers {}; \
         about a minute on 2 cores",
        cids.len(),
        list(CLIENTS.iter().take(cfg.clients as usize).copied()),
        list(WORKERS.iter().map(|w| w.0))
    ));
    let (tx, rx) = mpsc::channel();
    for &cid in &cids {
        let opts = GuestOptions {
            cancel: Some(abort.clone()),
            ..GuestOptions::new(&scenario::guest_name(cid), Some(scenario::socket(dir, cid)))
        };
        let (tx, assets) = (tx.clone(), assets.clone());
        thread::spawn(move || {
            let _ = tx.send((cid, LinuxGuest::boot(&assets, &opts)));
        });
    }
    drop(tx);
    let start = Instant::now();
    let mut next_line = BOOT_LINE_EVERY;
    let (mut up, mut failed) = (Vec::new(), None);
    loop {
        match rx.recv_timeout(Duration::from_millis(250)) {
            Ok((cid, Ok(g))) => {
                say(&format!(
                    "  guest {} up after {:.1} s ({} of {})",
                    g.name(),
                    g.boot_time().as_secs_f64(),
                    up.len() + 1,
                    cids.len()
                ));
                up.push((cid, g));
            }
            Ok((_, Err(e))) => {
                // The others stop waiting; those up are dropped (QEMU killed) below.
                abort.store(true, Ordering::Relaxed);
                failed.get_or_insert(e);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if start.elapsed() >= next_line && !abort.load(Ordering::Relaxed) {
                    say(&format!(
                        "  booting: {} of {} up after {} s",
                        up.len(),
                        cids.len(),
                        next_line.as_secs()
                    ));
                    next_line += BOOT_LINE_EVERY;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if let Some(e) = failed {
        return Err(e.into());
    }
    up.sort_by_key(|(cid, _)| cids.iter().position(|c| c == cid));
    Ok((up, start.elapsed()))
}

/// Starts the workers' echo servers, then the clients. Returns the clients' jobs and when
/// the first was started.
fn start_traffic(
    cfg: &DemoConfig,
    clients: &mut [(u64, LinuxGuest)],
    workers: &mut [(u64, LinuxGuest)],
    say: &mut dyn FnMut(&str),
) -> Result<(Vec<BgJob>, Instant), DemoError> {
    for (_, w) in workers.iter_mut() {
        let job = w.spawn(&scenario::worker_command())?;
        w.wait_output(&job, "VMQ-PROBE listening", T)?;
    }
    say(&format!(
        "workers {}: `{}`",
        list(workers.iter().map(|w| w.0)),
        scenario::worker_command()
    ));
    let mut jobs = Vec::new();
    let t0 = Instant::now();
    for (_, c) in clients.iter_mut() {
        jobs.push(c.spawn(&scenario::client_command(cfg.requests_per_client))?);
    }
    say(&format!(
        "clients {}: `{}` (every answer checked: sequence number and content, in order)",
        list(clients.iter().map(|c| c.0)),
        scenario::client_command(cfg.requests_per_client)
    ));
    Ok((jobs, t0))
}

/// Follows the run until every answer came (or none came for [`GIVE_UP`], or the clients
/// went away), printing live lines and stopping the worker's application on the way. Returns
/// when the last answer came, and the switch's snapshot then.
fn follow(
    cfg: &DemoConfig,
    serve_cfg: &ServeConfig,
    server: &Server,
    watch: &mut Watch,
    stopped: &mut LinuxGuest,
    t0: Instant,
    say: &mut dyn FnMut(&str),
) -> Result<(Instant, Option<Snapshot>), DemoError> {
    let total = cfg.total();
    let stop_at = ((total as f64 * cfg.stop_after) as u64).min(total.saturating_sub(1));
    let rejoin_at = stop_at + (total - stop_at) / 2;
    thread::scope(|s| {
        let mut target = Some(stopped);
        let mut stopper = None;
        let end = loop {
            if cfg.cancelled() {
                return Err(DemoError::Interrupted);
            }
            let snap = server.snapshot();
            if let Some(sn) = &snap {
                watch.observe(sn);
            }
            if let Some(l) = watch.line(snap.as_ref(), total, t0.elapsed(), cfg.progress_every) {
                say(&l);
            }
            let at = t0.elapsed().as_secs_f64();
            if cfg.disruption == Disruption::DrainThenRejoin {
                if watch.answers() >= stop_at && target.take().is_some() {
                    let r = server.drain(SERVICE, cfg.stopped_worker)?;
                    say(&format!("[{at:>5.1} s] {r}"));
                    watch.drained(r.dispatched, watch.answers());
                }
                if watch.answers() >= rejoin_at && watch.rejoin_due() {
                    let r = server.apply(serve_cfg.clone())?;
                    say(&format!(
                        "[{at:>5.1} s] reload of the same file: {r} ({} answers so far)",
                        watch.answers()
                    ));
                    watch.rejoined(watch.answers());
                }
            } else if watch.answers() >= stop_at && target.is_some() {
                watch.stop_requested(snap.as_ref());
                say(&format!(
                    "[{:>5.1} s] worker {}: `{}` in its guest ({} answers so far)",
                    t0.elapsed().as_secs_f64(),
                    cfg.stopped_worker,
                    scenario::signal_command("STOP"),
                    watch.answers()
                ));
                let g = target.take().expect("checked above");
                // On a thread of its own: the console takes a while, the watch goes on.
                stopper = Some(s.spawn(move || g.run_ok(&scenario::signal_command("STOP"), T)));
            }
            if watch.answers() >= total {
                break Instant::now();
            }
            if watch.idle() > GIVE_UP {
                say(&format!(
                    "no answer for {} s: ending the run",
                    GIVE_UP.as_secs()
                ));
                break Instant::now();
            }
            if snap
                .as_ref()
                .is_some_and(|sn| watch::clients_gone(sn, cfg.clients))
            {
                say("the clients closed their connections before every answer came");
                break Instant::now();
            }
            thread::sleep(Duration::from_millis(20));
        };
        if let Some(h) = stopper {
            h.join().expect("the stop thread does not panic")?;
        }
        let snap = server.snapshot();
        if let Some(sn) = &snap {
            watch.observe(sn);
        }
        if let Some(l) = watch.line(snap.as_ref(), total, t0.elapsed(), Duration::ZERO) {
            say(&l);
        }
        Ok((end, snap))
    })
}

/// What client `g` reported for its `job`.
fn client_result(cid: u64, requests: u64, g: &mut LinuxGuest, job: &BgJob) -> ClientResult {
    let (exit_code, output) = match g.wait_job(job, T) {
        Ok(r) => r,
        Err(e) => (-1, format!("no verdict: {e}")),
    };
    let verdict = crate::linux::probe_line(&output)
        .unwrap_or_else(|| output.lines().next().unwrap_or("no output"))
        .to_string();
    let round_trips_per_s = verdict
        .split_whitespace()
        .find_map(|w| w.strip_prefix("rtt_per_s="))
        .and_then(|v| v.parse().ok());
    ClientResult {
        cid,
        requests,
        exit_code,
        verdict,
        round_trips_per_s,
        output,
    }
}

/// Powers every guest off at once (each QEMU is killed after 30 s at most).
fn shutdown_all(guests: impl Iterator<Item = LinuxGuest>) {
    let handles: Vec<_> = guests
        .map(|g| {
            thread::spawn(move || {
                if let Err(e) = g.shutdown() {
                    log::warn!("{e}");
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
}
