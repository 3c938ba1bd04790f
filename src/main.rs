//! The `vmq` command line.

use clap::{Args, Parser, Subcommand};

use std::io::Write;
use std::process::ExitCode;

#[cfg(feature = "bench")]
use vmq::bench::{self, switch::SwitchPlacement, Placement, Report};
use vmq::runner::{self, RunOptions};
use vmq::topology::{Topology, DEMO_TOML};

mod cli;

/// Exit codes, shown under `vmq --help` (the README has the same table).
const EXIT_CODES: &str = "\
Exit codes:
  0  clean: every request got exactly one good reply, every client finished
  1  broken: requests lost, answered twice or corrupted, a client or peer failed, or
     (bench) a case failed
  2  the run could not happen: bad command line, invalid topology, VM or KVM setup failed,
     (demo --linux) Linux guests unavailable or interrupted
  3  timed out: max_duration_ms passed before the clients finished
  4  every request was answered once, but some answers were errors (no backend, timeout,
     backend error)";

/// Longest `--duration` accepted.
const MAX_DURATION_MS: u64 = 366 * 24 * 3_600_000;

/// vmq: a VM-queue I/O dataplane for KVM.
#[derive(Parser, Debug)]
#[command(name = "vmq", version, about, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Two client VMs, three weighted worker VMs, one worker stalls mid-run: live progress,
    /// then a summary (requests, replies, lost, duplicates, failovers, exits per message).
    /// With --linux, the same story with stock Linux guests in QEMU through `vmq serve`.
    Demo(DemoOpts),
    /// Run a topology file (VMs, services, faults); see `topologies/demo.toml`.
    Run {
        /// The topology file.
        topology: String,
        #[command(flatten)]
        opts: RunOpts,
    },
    /// Full-rate traffic with random worker stalls, crashes, kills and restarts; samples
    /// resident memory and in-flight blocks; ends with totals (exit 0 only if nothing was lost).
    Soak {
        /// How long to run traffic, e.g. `30s`, `10m`.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: std::time::Duration,
        /// Seed of the fault schedule.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print the totals as one JSON object (and no live progress).
        #[arg(long)]
        json: bool,
    },
    /// Serve virtio-vsock devices over vhost-user to VMMs (QEMU, Cloud Hypervisor, crosvm):
    /// their stock Linux guests reach each other with AF_VSOCK sockets (SOCK_STREAM and
    /// SOCK_SEQPACKET) through the switch. Runs until SIGINT or SIGTERM, then removes its
    /// sockets. SIGHUP reads the --config file again and applies what changed (services and
    /// their members; VMs and limits need a restart).
    Serve {
        /// A TOML file of `[[vm]]` tables (cid, socket, uds_path, groups) and `[limits]`.
        #[arg(long)]
        config: Option<String>,
        /// A VM, as vhost-device-vsock takes it:
        /// `guest-cid=N,socket=PATH[,uds-path=PATH][,groups=G1+G2]` (repeatable).
        #[arg(long = "vm")]
        vms: Vec<String>,
        /// Print the switch's table (every VM's packets, bytes, connections by state) to
        /// stderr this often, in seconds; 0: only at the end.
        #[arg(long, default_value_t = 0)]
        stats_every: u64,
        #[command(flatten)]
        metrics: MetricsOpt,
    },
    /// Drain a member of a running `vmq serve`'s service: it takes no new requests, answers
    /// those it has, then leaves. Sent to the daemon's metrics endpoint (`--metrics`), from
    /// the same host.
    Drain {
        /// The service's name.
        #[arg(long)]
        service: String,
        /// The member: the backend VM's CID.
        #[arg(long)]
        member: u64,
        /// The daemon's metrics address: HOST:PORT, or a port on localhost.
        #[arg(long, default_value = vmq::metrics::DEFAULT_LISTEN)]
        addr: String,
    },
    /// Make a running `vmq serve` read its `--config` file again (as SIGHUP does) and print
    /// what changed, or why nothing did. Sent to its metrics endpoint, from the same host.
    Reload {
        /// The daemon's metrics address: HOST:PORT, or a port on localhost.
        #[arg(long, default_value = vmq::metrics::DEFAULT_LISTEN)]
        addr: String,
    },
    /// Print the switch's table of a running `vmq serve` (or `vmq run`) started with
    /// `--metrics` (or a `[metrics]` table), from its metrics endpoint.
    Stats {
        /// The daemon's metrics address: HOST:PORT, or a port on localhost.
        #[arg(long, default_value = vmq::metrics::DEFAULT_LISTEN)]
        addr: String,
        /// Print it again every SECS seconds (default 2) until interrupted.
        #[arg(
            long,
            value_name = "SECS",
            num_args = 0..=1,
            default_missing_value = "2",
            value_parser = clap::value_parser!(u64).range(1..)
        )]
        watch: Option<u64>,
        /// Print the snapshot as one JSON object (a line per snapshot with --watch).
        #[arg(long)]
        json: bool,
    },
    /// Measure queue throughput against baselines measured in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// Parses `500ms`, `30s`, `10m` or a plain number of seconds, up to a year (the
/// conversion to ms is checked, never wraps).
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with ms, s, m or h"))?;
    let per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use ms, s, m or h")),
    };
    match n.checked_mul(per_unit) {
        Some(ms) if ms <= MAX_DURATION_MS => Ok(std::time::Duration::from_millis(ms)),
        _ => Err(format!(
            "{s:?} is too long: at most {} days",
            MAX_DURATION_MS / (24 * 3_600_000)
        )),
    }
}

/// Writes `text` and a newline to stdout. A closed stdout (`vmq run ... | head`) is not an
/// error worth a word: the exit status still tells how the run went.
fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

#[derive(Args, Debug)]
struct RunOpts {
    /// Print the summary as one JSON object (and no live progress).
    #[arg(long)]
    json: bool,
    /// Echo guest console lines (log level info).
    #[arg(long)]
    console: bool,
    #[command(flatten)]
    metrics: MetricsOpt,
}

#[derive(Args, Debug)]
struct DemoOpts {
    #[command(flatten)]
    run: RunOpts,
    #[command(flatten)]
    linux: cli::demo_linux::LinuxOpts,
}

#[derive(Args, Debug)]
struct MetricsOpt {
    /// Serve live stats over HTTP on IP:PORT (or a port on localhost; 127.0.0.1:9464 when
    /// no value): Prometheus text at /metrics, the table at /stats (what `vmq stats`
    /// prints), JSON at /stats.json.
    #[arg(
        long,
        value_name = "ADDR",
        num_args = 0..=1,
        default_missing_value = vmq::metrics::DEFAULT_LISTEN,
        value_parser = vmq::metrics::parse_listen
    )]
    metrics: Option<std::net::SocketAddr>,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Split ring in guest memory (driver thread -> device thread) vs an rtrb SPSC ring.
    Ring(BenchOpts),
    /// Guest -> switch -> guest through real KVM guests: msgs/s, round trips, exits/message.
    Vm(BenchOpts),
    /// Page hand-off between two of vmq's own VMs vs copying, 4 KiB to 1 MiB messages.
    Handoff(BenchOpts),
    /// Frontend -> switch -> backends over virtqueues (one switch thread) vs an rtrb relay,
    /// and the cost of one balancing decision per policy.
    Switch(BenchOpts),
    /// Two guests (VMMs played in Rust over vhost-user) through `vmq serve`'s backend:
    /// one-way msgs/s and round trips/s, STREAM and SEQPACKET, 64 B and 4 KiB; with `--peer`,
    /// the same through vhost-device-vsock in the same run.
    Vsock {
        #[command(flatten)]
        opts: BenchOpts,
        /// A vhost-device-vsock binary to compare with
        /// (`guest-images/linux/install-peer.sh` builds one into target/peers/bin).
        #[arg(long)]
        peer: Option<std::path::PathBuf>,
    },
}

#[derive(Args, Debug)]
struct BenchOpts {
    /// Print one JSON object per case instead of a table.
    #[arg(long)]
    json: bool,
    /// Short runs (the whole bench finishes in under 30 s).
    #[arg(long)]
    quick: bool,
}

fn run_topology(topo: Result<Topology, vmq::topology::TopologyError>, o: &RunOpts) -> ExitCode {
    let topo = match topo {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = RunOptions {
        progress: !o.json,
        echo_console: o.console,
        metrics: o.metrics.metrics,
    };
    conclude(
        runner::run(&topo, &opts),
        o.json,
        |r| r.to_string(),
        |r| r.verdict().exit_code(),
    )
}

/// Prints a run's outcome (one JSON object, or `human`) and turns it into the exit status
/// (`code`, or 2 when the run could not happen; see [`EXIT_CODES`]).
fn conclude<T: serde::Serialize, E: std::fmt::Display>(
    outcome: Result<T, E>,
    json: bool,
    human: impl FnOnce(&T) -> String,
    code: impl FnOnce(&T) -> u8,
) -> ExitCode {
    match outcome {
        Ok(r) => {
            if json {
                emit(&serde_json::to_string(&r).unwrap_or_default());
            } else {
                emit(&human(&r));
            }
            ExitCode::from(code(&r))
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let images: Vec<&str> = vmq::vmm::images::ALL.iter().map(|(n, _)| *n).collect();
    match cli.command {
        Command::Demo(o) if o.linux.linux => {
            cli::demo_linux::main(&o.linux, o.run.json, o.run.metrics.metrics)
        }
        Command::Demo(o) => run_topology(Topology::parse(DEMO_TOML, "<demo>", &images), &o.run),
        Command::Run { topology, opts } => run_topology(Topology::load(&topology, &images), &opts),
        Command::Soak {
            duration,
            seed,
            json,
        } => {
            let opts = runner::SoakOptions {
                duration,
                seed,
                progress: !json,
                ..Default::default()
            };
            conclude(
                runner::soak(&opts),
                json,
                |r| serde_json::to_string_pretty(r).unwrap_or_default(),
                |r| u8::from(!r.clean()),
            )
        }
        Command::Serve {
            config,
            vms,
            stats_every,
            metrics,
        } => cli::serve::serve(config.as_deref(), &vms, stats_every, metrics.metrics),
        Command::Stats { addr, watch, json } => cli::serve::stats(&addr, watch, json),
        Command::Drain {
            service,
            member,
            addr,
        } => cli::serve::command(
            &addr,
            &format!(
                "/drain?service={}&member={member}",
                vmq::metrics::query_escape(&service)
            ),
        ),
        Command::Reload { addr } => cli::serve::command(&addr, "/reload"),
        Command::Bench(b) => run_bench(b),
    }
}

#[cfg(feature = "bench")]
fn run_bench(b: BenchCommand) -> ExitCode {
    match b {
        BenchCommand::Ring(o) => print(&bench::ring::run(o.quick, Placement::two_cores()), &o),
        BenchCommand::Vm(o) => print(&bench::vm::run(o.quick), &o),
        BenchCommand::Handoff(o) => print(&bench::handoff::run(o.quick), &o),
        BenchCommand::Switch(o) => print(
            &bench::switch::run(o.quick, SwitchPlacement::two_cores()),
            &o,
        ),
        BenchCommand::Vsock { opts, peer } => {
            print(&bench::vsock::run(opts.quick, peer.as_deref()), &opts)
        }
    }
}

/// Without the harnesses (feature `bench`), says how to get them.
#[cfg(not(feature = "bench"))]
fn run_bench(b: BenchCommand) -> ExitCode {
    let (name, o) = match &b {
        BenchCommand::Ring(o) => ("ring", o),
        BenchCommand::Vm(o) => ("vm", o),
        BenchCommand::Handoff(o) => ("handoff", o),
        BenchCommand::Switch(o) => ("switch", o),
        BenchCommand::Vsock { opts, .. } => ("vsock", opts),
    };
    let flags = format!(
        "{}{}",
        if o.json { " --json" } else { "" },
        if o.quick { " --quick" } else { "" }
    );
    eprintln!(
        "vmq: this build has no bench harnesses (cargo feature `bench`); run:\n  \
         cargo run --release --features bench -- bench {name}{flags}"
    );
    ExitCode::from(2)
}

/// Prints the records; exit status 1 when a case failed.
#[cfg(feature = "bench")]
fn print(report: &Report, o: &BenchOpts) -> ExitCode {
    let mut out = std::io::stdout().lock();
    // A closed stdout is not worth a word (see `emit`).
    let _ = if o.json {
        report.write_json(&mut out)
    } else {
        report.write_table(&mut out)
    };
    if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        for f in &report.failures {
            eprintln!("vmq bench: case failed: {f}");
        }
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_convert_without_wrapping() {
        assert_eq!(
            parse_duration("10m"),
            Ok(std::time::Duration::from_secs(600))
        );
        assert_eq!(
            parse_duration("250ms"),
            Ok(std::time::Duration::from_millis(250))
        );
        assert_eq!(parse_duration("3"), Ok(std::time::Duration::from_secs(3)));
        // Used to wrap to 384 ms.
        assert!(parse_duration("18446744073709552s").is_err());
        assert!(parse_duration("18446744073709551615h").is_err());
        assert!(parse_duration("400d").is_err());
        assert!(parse_duration("367d").is_err());
        assert!(parse_duration(&format!("{}h", 367 * 24)).is_err());
    }

    #[test]
    fn help_lists_the_exit_codes() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for code in [
            "0  clean",
            "1  broken",
            "2  the run could not happen",
            "3  timed out",
            "4  every request",
        ] {
            assert!(help.contains(code), "{code:?} missing from:\n{help}");
        }
    }
}
