//! Stock Linux guests over vsock: `vmq serve` against rust-vmm's vhost-device-vsock, in the
//! same run. Four TCG guests boot (QEMU, `vmq::linux`): CIDs 3 and 4 on vmq
//! (in this process) and CIDs 3 and 4 on the peer (its own process). Guest 3 runs
//! `vsock-probe` against guest 4, 64 B messages:
//!
//! - round trips, window 1 (`vsock-probe send --window 1`): STREAM, and SEQPACKET (vmq only);
//! - one way (`vsock-probe blast` into `vsock-probe sink`, which acknowledges the count it
//!   verified): STREAM, and SEQPACKET (vmq only).
//!
//! The peer has no SEQPACKET (the guest's connect fails with ESOCKTNOSUPPORT); the bench checks
//! that once and says so. Each case runs `reps` times, alternating which backend goes first;
//! the best run of each backend is reported, with every run listed. Rates are the guests' own
//! (the probe's elapsed time); CPU time per message comes from /proc (the backend's threads,
//! and the two QEMU processes of the pair) over the host-side window of each run.
//!
//! ```text
//! cargo bench --bench vsock_linux [-- [--quick] [--json] [--peer PATH]]
//! ```
//!
//! Without the guests' assets (`guest-images/linux/prepare.sh`) or the peer
//! (`guest-images/linux/install-peer.sh`, or `--peer PATH`) it prints `SKIPPED: ...` and
//! exits 0. Threads are not pinned: every QEMU (a TCG vCPU thread and its main loop) and the
//! backends' threads share the machine's cores with whatever else runs.

#[path = "../vmm-tests/common/linux.rs"]
mod linux;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use linux::{probe_line, GuestOptions, LinuxAssets, LinuxGuest, PeerBackend, VsockVm};
use vmq::bench::{BenchRecord, Report};
use vmq::serve::{ServeConfig, Server};

/// Payload bytes per message.
const SIZE: u32 = 64;
/// The baseline's name in the records.
const PEER: &str = "vhost-device-vsock";
/// The SEQPACKET records' baseline, as `vmq bench vsock` names it.
const NO_SEQPACKET: &str = "none (peer has no SEQPACKET)";
/// Give-up limit for one guest command (the probe's own limit is `PROBE_TIMEOUT_S`).
const T: Duration = Duration::from_secs(300);
/// The probe's `--timeout`: per blocking call, generous for TCG guests on busy cores.
const PROBE_TIMEOUT_S: u32 = 60;
/// Where the guests' ports start; every run takes a fresh one.
const FIRST_PORT: u32 = 7000;

const USAGE: &str = "usage: cargo bench --bench vsock_linux [-- [--quick] [--json] [--peer PATH]]
  --quick      fewer messages and one run per case (about a minute after the guests boot)
  --json       one JSON object per case on stdout instead of the table
  --peer PATH  the vhost-device-vsock binary (default: <target>/peers/bin/vhost-device-vsock,
               built by guest-images/linux/install-peer.sh)";

/// The command line.
struct Args {
    quick: bool,
    json: bool,
    peer: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        quick: false,
        json: false,
        peer: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => a.quick = true,
            "--json" => a.json = true,
            "--peer" => {
                a.peer = Some(it.next().ok_or("--peer needs a path")?.into());
            }
            // `cargo bench` passes this to every bench binary.
            "--bench" => {}
            "-h" | "--help" => return Err(String::new()),
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    Ok(a)
}

/// Messages per run and runs per case.
#[derive(Clone, Copy, Debug)]
struct Counts {
    trips: u64,
    one_way: u64,
    reps: usize,
}

impl Counts {
    /// At ~1,000 round trips/s and ~20 k msgs/s a run takes 1-3 s; the whole bench a few
    /// minutes on 2 cores, most of it booting.
    fn new(quick: bool) -> Counts {
        if quick {
            Counts {
                trips: 500,
                one_way: 10_000,
                reps: 1,
            }
        } else {
            Counts {
                trips: 2_000,
                one_way: 50_000,
                reps: 3,
            }
        }
    }
}

/// Which backend a pair of guests is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Vmq,
    Peer,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Vmq => "vmq",
            Backend::Peer => PEER,
        }
    }
}

/// One measured case.
#[derive(Clone, Copy, Debug)]
struct Case {
    seqpacket: bool,
    round_trip: bool,
    /// vmq / peer asked for by the issue.
    goal: Option<f64>,
}

impl Case {
    const ALL: [Case; 4] = [
        Case {
            seqpacket: false,
            round_trip: true,
            goal: Some(1.2),
        },
        Case {
            seqpacket: false,
            round_trip: false,
            goal: Some(1.0),
        },
        Case {
            seqpacket: true,
            round_trip: true,
            goal: None,
        },
        Case {
            seqpacket: true,
            round_trip: false,
            goal: None,
        },
    ];

    fn ty(self) -> &'static str {
        if self.seqpacket {
            "seqpacket"
        } else {
            "stream"
        }
    }

    /// The record's `case`: `vmq bench vsock`'s names, `linux` for the guests.
    fn name(self) -> String {
        let shape = if self.round_trip {
            "round-trip"
        } else {
            "one-way"
        };
        format!("linux {} {shape}", self.ty())
    }

    fn unit(self) -> &'static str {
        if self.round_trip {
            "round trips"
        } else {
            "msgs"
        }
    }
}

/// What one run gave.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// Round trips or messages per second, by the guest's clock.
    rate: f64,
    /// The receiver's own rate (one-way: the sink, from the blast's header to its last
    /// message).
    sink_rate: Option<f64>,
    /// Backend CPU time per message (µs) over the host-side window of the run.
    backend_us: f64,
    /// The pair's two QEMU processes' CPU time per message (µs), same window.
    guests_us: f64,
}

/// CPU time, from /proc: whole processes or some of this process's threads.
#[derive(Clone, Debug)]
enum CpuSource {
    /// Threads of this process whose name starts with one of these.
    OwnThreads(&'static [&'static str]),
    /// Whole processes.
    Pids(Vec<u32>),
}

/// vmq serve's threads: the switch, one daemon per VM (and vhost-user-backend's request
/// handler, which takes its name), vhost-user-backend's vring workers.
const VMQ_THREADS: &[&str] = &["vmq-switch", "vhu-vsock-", "vring_worker"];

/// utime + stime of a `/proc/.../stat` file, in clock ticks.
fn stat_ticks(path: &Path) -> Option<u64> {
    let s = fs::read_to_string(path).ok()?;
    // The name (field 2) may hold spaces and parentheses: fields count from the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is f[0]; utime and stime are fields 14 and 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

impl CpuSource {
    /// CPU seconds used so far.
    fn seconds(&self) -> f64 {
        let ticks: u64 = match self {
            CpuSource::OwnThreads(prefixes) => fs::read_dir("/proc/self/task")
                .into_iter()
                .flatten()
                .flatten()
                .filter(|t| {
                    let comm = fs::read_to_string(t.path().join("comm")).unwrap_or_default();
                    prefixes.iter().any(|p| comm.starts_with(p))
                })
                .filter_map(|t| stat_ticks(&t.path().join("stat")))
                .sum(),
            CpuSource::Pids(pids) => pids
                .iter()
                .filter_map(|p| stat_ticks(&PathBuf::from(format!("/proc/{p}/stat"))))
                .sum(),
        };
        ticks as f64 / clock_ticks_per_s()
    }
}

/// This process's children named `comm...` whose command line mentions `needle` (which
/// backend a QEMU is on, by its socket's folder; the peer, by its path).
fn children(comm: &str, needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let stat = fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(me)
            || !stat
                .split_once(" (")
                .is_some_and(|(_, c)| c.starts_with(comm))
        {
            continue;
        }
        let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            out.push(pid);
        }
    }
    out
}

/// Two guests on one backend: guest 3 sends to guest 4.
struct Pair {
    backend: Backend,
    client: LinuxGuest,
    server: LinuxGuest,
    backend_cpu: CpuSource,
    guests_cpu: CpuSource,
}

/// The number after `key=` in a probe line.
fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// `count` per the line's `elapsed_ns` (more digits than the probe's integer rate).
fn probe_rate(g: &LinuxGuest, what: &str, out: &str, count: u64) -> Result<f64, String> {
    let line = match probe_line(out) {
        Some(l) if l.starts_with("VMQ-PROBE ok") => l,
        _ => {
            return Err(format!(
                "{} {what}: no ok line:\n{out}\n{}",
                g.name(),
                g.console_tail(20)
            ))
        }
    };
    match field(line, "elapsed_ns") {
        Some(ns) if ns > 0.0 => Ok(count as f64 * 1e9 / ns),
        _ => Err(format!("{} {what}: no elapsed_ns in {line:?}", g.name())),
    }
}

impl Pair {
    /// One run of `case` with `count` messages on guest port `port`.
    fn measure(&mut self, case: Case, count: u64, port: u32) -> Result<Sample, String> {
        let ty = case.ty();
        let (serve, client) = if case.round_trip {
            (
                format!("vsock-probe serve --port {port} --type {ty} --timeout {PROBE_TIMEOUT_S}"),
                format!(
                    "vsock-probe send --cid 4 --port {port} --type {ty} --size {SIZE} \
                     --count {count} --window 1 --timeout {PROBE_TIMEOUT_S}"
                ),
            )
        } else {
            (
                format!("vsock-probe sink --port {port} --type {ty} --timeout {PROBE_TIMEOUT_S}"),
                format!(
                    "vsock-probe blast --cid 4 --port {port} --type {ty} --size {SIZE} \
                     --count {count} --timeout {PROBE_TIMEOUT_S}"
                ),
            )
        };
        let job = self.server.spawn(&serve).map_err(|e| e.to_string())?;
        self.server
            .wait_output(&job, "VMQ-PROBE listening", T)
            .map_err(|e| e.to_string())?;
        let (b0, g0, t0) = (
            self.backend_cpu.seconds(),
            self.guests_cpu.seconds(),
            Instant::now(),
        );
        let out = self.client.run_ok(&client, T).map_err(|e| e.to_string())?;
        let wall = t0.elapsed().as_secs_f64();
        let (b1, g1) = (self.backend_cpu.seconds(), self.guests_cpu.seconds());
        let rate = probe_rate(&self.client, "client", &out, count)?;
        // The guest's clock is the host's under TCG; a rate above what the host saw would
        // mean it is not.
        if rate * wall < count as f64 * 0.99 {
            eprintln!(
                "warning: {} reports {rate:.0}/s, but the run took {wall:.2} s on the host",
                self.client.name()
            );
        }
        let (code, sout) = self.server.wait_job(&job, T).map_err(|e| e.to_string())?;
        if code != 0 {
            return Err(format!(
                "{}: {serve:?} exited {code}:\n{sout}",
                self.server.name()
            ));
        }
        let sink_rate = if case.round_trip {
            None
        } else {
            Some(probe_rate(&self.server, "sink", &sout, count)?)
        };
        let per_msg = |cpu: f64| cpu * 1e6 / count as f64;
        Ok(Sample {
            rate,
            sink_rate,
            backend_us: per_msg(b1 - b0),
            guests_us: per_msg(g1 - g0),
        })
    }
}

/// The 1-minute load average, and the line `uptime` shows.
fn load() -> (f64, String) {
    let s = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let w: Vec<&str> = s.split_whitespace().collect();
    let one = w.first().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
    (one, w.get(..3).map(|w| w.join(", ")).unwrap_or_default())
}

/// A folder for the sockets, removed however the bench ends. Unix socket paths must stay
/// short (108 bytes): under the temp dir, not the target dir.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, String> {
        let p = std::env::temp_dir().join(format!("vmq-bench-linux-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        for sub in ["vmq", "peer"] {
            fs::create_dir_all(p.join(sub)).map_err(|e| format!("{}: {e}", p.display()))?;
        }
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// vmq serve in this process for guests 3 and 4 (one group), sockets `dir/vm<cid>.sock`.
fn vmq_server(dir: &Path) -> Result<Server, String> {
    let mut cfg = ServeConfig::default();
    for cid in [3u64, 4] {
        cfg.add_vm_flag(&format!(
            "guest-cid={cid},socket={}/vm{cid}.sock,groups=bench",
            dir.display()
        ))
        .map_err(|e| e.to_string())?;
    }
    Server::start(&cfg).map_err(|e| format!("vmq serve: {e}"))
}

/// Everything one run of the bench found.
struct Outcome {
    report: Report,
    /// Lines for the reader: load, placement, QEMU command lines, counters.
    notes: Vec<String>,
    /// Per record, every run's rate (vmq, peer) for the table.
    runs: Vec<(Vec<f64>, Vec<f64>)>,
}

fn run(args: &Args, assets: &LinuxAssets, peer_bin: &Path) -> Result<Outcome, String> {
    let counts = Counts::new(args.quick);
    let tmp = TempDir::new()?;
    let (vmq_dir, peer_dir) = (tmp.0.join("vmq"), tmp.0.join("peer"));
    let server = vmq_server(&vmq_dir)?;
    let (p3, p4) = (VsockVm::new(&peer_dir, 3), VsockVm::new(&peer_dir, 4));
    let mut peer = PeerBackend::start(peer_bin, &[p3.clone(), p4.clone()], &{
        let logs = assets.dir.join("logs");
        fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
        logs.join("bench-peer.log")
    })?;
    let opts = vec![
        GuestOptions::new("bench-vmq-cid3", Some(vmq_dir.join("vm3.sock"))),
        GuestOptions::new("bench-vmq-cid4", Some(vmq_dir.join("vm4.sock"))),
        GuestOptions::new("bench-peer-cid3", Some(p3.socket.clone())),
        GuestOptions::new("bench-peer-cid4", Some(p4.socket.clone())),
    ];
    let mut notes = vec![format!(
        "QEMU command line (one per guest; vmq's guests use {}/vm<cid>.sock): {:?}",
        vmq_dir.display(),
        linux::qemu_command(assets, &opts[2])
    )];
    let (l, shown) = load();
    notes.push(format!("load average before boot (1/5/15 min): {shown}"));
    eprintln!("booting 4 guests (load {l:.2})");
    let booted = Instant::now();
    let mut guests = linux::boot_all(assets, opts)
        .map_err(|e| e.to_string())?
        .into_iter();
    eprintln!("4 guests up after {:.0} s", booted.elapsed().as_secs_f64());
    let mut next = || guests.next().ok_or("a guest went missing");
    let peer_pids = children("", &peer_bin.display().to_string());
    let mut pairs = [
        Pair {
            backend: Backend::Vmq,
            client: next()?,
            server: next()?,
            backend_cpu: CpuSource::OwnThreads(VMQ_THREADS),
            guests_cpu: CpuSource::Pids(children(
                "qemu-system",
                &format!("{}/", vmq_dir.display()),
            )),
        },
        Pair {
            backend: Backend::Peer,
            client: next()?,
            server: next()?,
            backend_cpu: CpuSource::Pids(peer_pids),
            guests_cpu: CpuSource::Pids(children(
                "qemu-system",
                &format!("{}/", peer_dir.display()),
            )),
        },
    ];

    // The peer has no SEQPACKET: check what its guests get, once.
    let (code, out) = pairs[1].client.run(
        "vsock-probe send --cid 4 --port 6999 --type seqpacket --size 64 --count 1 --timeout 10",
        T,
    )
    .map_err(|e| e.to_string())?;
    notes.push(if code == 0 {
        format!("{PEER}: SEQPACKET unexpectedly worked: {}", out.trim())
    } else {
        format!(
            "{PEER} has no SEQPACKET (a guest's connect: {}); SEQPACKET is vmq alone",
            out.trim()
                .trim_start_matches("VMQ-PROBE fail send: ")
                .trim()
        )
    });

    let placement = format!(
        "{} CPUs, nothing pinned: each guest's QEMU (TCG vCPU thread + main loop), vmq's threads \
         (vmq-switch, vhu-vsock-N, vring_worker) and the peer's process share them with other work",
        thread::available_parallelism().map_or(1, |n| n.get())
    );
    let mut report = Report::default();
    let mut runs = Vec::new();
    let mut port = FIRST_PORT;
    for case in Case::ALL {
        let count = if case.round_trip {
            counts.trips
        } else {
            counts.one_way
        };
        let (load_1m, _) = load();
        let mut got: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
        let mut failed = false;
        for rep in 0..counts.reps {
            // Alternate who goes first so a drifting load favours neither.
            let order = if rep % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let pair = &mut pairs[i];
                if case.seqpacket && pair.backend == Backend::Peer {
                    continue;
                }
                port += 1;
                match pair.measure(case, count, port) {
                    Ok(s) => {
                        eprintln!(
                            "{} {} run {}/{}: {:.0} {}/s",
                            case.name(),
                            pair.backend.name(),
                            rep + 1,
                            counts.reps,
                            s.rate,
                            case.unit()
                        );
                        got[i].push(s);
                    }
                    Err(e) => {
                        report.failures.push(format!(
                            "{} {}: {e}",
                            case.name(),
                            pair.backend.name()
                        ));
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                break;
            }
        }
        if failed {
            continue;
        }
        let best = |s: &[Sample]| s.iter().copied().max_by(|a, b| a.rate.total_cmp(&b.rate));
        let Some(v) = best(&got[0]) else { continue };
        let base = best(&got[1]);
        let (name, base_rate) = match base {
            Some(b) => (PEER, b.rate),
            None => (NO_SEQPACKET, 0.0),
        };
        let rates = |s: &[Sample]| s.iter().map(|x| x.rate.round()).collect::<Vec<_>>();
        let mut r = BenchRecord::new(&case.name(), SIZE, 1, v.rate, name, base_rate, &placement)
            .with("unit", case.unit())
            .with("count", count)
            .with("runs", counts.reps)
            .with("load_1m", load_1m)
            .with("vmq_runs", rates(&got[0]))
            .with("vmq_backend_cpu_us_per_msg", round2(v.backend_us))
            .with("vmq_guests_cpu_us_per_msg", round2(v.guests_us));
        if let Some(s) = v.sink_rate {
            r = r.with("vmq_sink_msgs_per_s", s.round());
        }
        if let Some(b) = base {
            r = r
                .with("baseline_runs", rates(&got[1]))
                .with("baseline_backend_cpu_us_per_msg", round2(b.backend_us))
                .with("baseline_guests_cpu_us_per_msg", round2(b.guests_us));
            if let Some(s) = b.sink_rate {
                r = r.with("baseline_sink_msgs_per_s", s.round());
            }
        }
        if let Some(g) = case.goal {
            r = r.with("goal_ratio", g);
        }
        runs.push((rates(&got[0]), rates(&got[1])));
        report.records.push(r);
    }

    let (_, shown) = load();
    notes.push(format!("load average after the runs (1/5/15 min): {shown}"));
    notes.push(placement);
    let c = server.counts();
    notes.push(format!(
        "vmq counters: {}",
        c.iter()
            .map(|v| format!(
                "CID {}: tx {} rx {} packets, resets {}, refused {}, malformed {}, rx stalls {}, \
                 control dropped {}, rx too small {}",
                v.cid,
                v.tx_packets,
                v.rx_packets,
                v.resets,
                v.refused,
                v.malformed,
                v.rx_stalls,
                v.control_dropped,
                v.rx_too_small
            ))
            .collect::<Vec<_>>()
            .join("; ")
    ));
    if !peer.alive() {
        report
            .failures
            .push(format!("{PEER} died; see {}", peer.log.display()));
    }
    for p in pairs {
        for g in [p.client, p.server] {
            if let Err(e) = g.shutdown() {
                eprintln!("warning: {e}");
            }
        }
    }
    drop(peer);
    server.shutdown().map_err(|e| format!("vmq serve: {e}"))?;
    Ok(Outcome {
        report,
        notes,
        runs,
    })
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The table: one line per case, every run's rate, the goal where the issue set one, the
/// 1-minute load average when the case began.
fn table(o: &Outcome) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<27} {:>5} {:>10} {:>10} {:>6} {:>6} {:>5}  runs (vmq | peer)",
        "case", "size", "vmq /s", "peer /s", "ratio", "goal", "load"
    );
    for (r, (v, b)) in o.report.records.iter().zip(&o.runs) {
        let base = if r.baseline == PEER {
            format!("{:.0}", r.baseline_msgs_per_s)
        } else {
            "-".into()
        };
        let ratio = if r.baseline == PEER {
            format!("{:.2}", r.ratio)
        } else {
            "-".into()
        };
        let goal = r
            .extra
            .get("goal_ratio")
            .and_then(|g| g.as_f64())
            .map_or("-".into(), |g| format!(">={g}"));
        let list = |x: &[f64]| {
            x.iter()
                .map(|v| format!("{v:.0}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let load = r
            .extra
            .get("load_1m")
            .and_then(|l| l.as_f64())
            .map_or("-".into(), |l| format!("{l:.1}"));
        let _ = writeln!(
            s,
            "{:<27} {:>5} {:>10.0} {:>10} {:>6} {:>6} {:>5}  {} | {}",
            r.case,
            r.msg_size,
            r.vmq_msgs_per_s,
            base,
            ratio,
            goal,
            load,
            list(v),
            if b.is_empty() { "-".into() } else { list(b) }
        );
    }
    let _ = writeln!(
        s,
        "\nCPU time per message (µs), best run: backend | both QEMUs"
    );
    for r in &o.report.records {
        let f = |k: &str| {
            r.extra
                .get(k)
                .and_then(|v| v.as_f64())
                .map_or("-".into(), |v| format!("{v:.1}"))
        };
        let _ = writeln!(
            s,
            "{:<27} vmq {:>7} | {:>7}   peer {:>7} | {:>7}",
            r.case,
            f("vmq_backend_cpu_us_per_msg"),
            f("vmq_guests_cpu_us_per_msg"),
            f("baseline_backend_cpu_us_per_msg"),
            f("baseline_guests_cpu_us_per_msg")
        );
    }
    s
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("vsock_linux: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let Some(peer_bin) = args.peer.clone().or_else(linux::peer_binary) else {
        eprintln!(
            "SKIPPED: no {PEER} at {}: run guest-images/linux/install-peer.sh (or pass --peer PATH)",
            linux::target_dir().join("peers/bin/vhost-device-vsock").display()
        );
        return ExitCode::SUCCESS;
    };
    if !peer_bin.is_file() {
        eprintln!(
            "SKIPPED: --peer {} is not a file: run guest-images/linux/install-peer.sh",
            peer_bin.display()
        );
        return ExitCode::SUCCESS;
    }
    // After the peer: preparing may install packages and build the initramfs.
    let assets = match linux::linux_guests() {
        Ok(a) => a,
        Err(s) if s.missing => {
            eprintln!("SKIPPED: {}", s.message);
            return ExitCode::SUCCESS;
        }
        Err(s) => {
            eprintln!("vsock_linux: {}", s.message);
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let o = match run(&args, &assets, &peer_bin) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("vsock_linux: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut notes = o.notes.clone();
    notes.push(format!(
        "bench took {:.0} s{}",
        started.elapsed().as_secs_f64(),
        if args.quick { " (--quick)" } else { "" }
    ));
    if args.json {
        let _ = o.report.write_json(&mut std::io::stdout().lock());
        for n in &notes {
            eprintln!("{n}");
        }
    } else {
        print!("{}", table(&o));
        for n in &notes {
            println!("{n}");
        }
    }
    if o.report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        for f in &o.report.failures {
            eprintln!("vsock_linux: case failed: {f}");
        }
        ExitCode::FAILURE
    }
}
