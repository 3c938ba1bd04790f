//! The `vmq` command line.

use clap::{Args, Parser, Subcommand};

use std::process::ExitCode;

use vmq::bench::switch::SwitchPlacement;
use vmq::bench::{self, Placement, Report};
use vmq::runner::{self, RunOptions};
use vmq::topology::{Topology, DEMO_TOML};

/// vmq: a VM-queue I/O dataplane for KVM.
#[derive(Parser, Debug)]
#[command(name = "vmq", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Two client VMs, three weighted worker VMs, one worker stalls mid-run: live progress,
    /// then a summary (requests, replies, lost, duplicates, failovers, exits per message).
    Demo(RunOpts),
    /// Run a topology file (VMs, services, faults); see `topologies/demo.toml`.
    Run {
        /// The topology file.
        topology: String,
        #[command(flatten)]
        opts: RunOpts,
    },
    /// Measure queue throughput against baselines measured in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Args, Debug)]
struct RunOpts {
    /// Print the summary as one JSON object (and no live progress).
    #[arg(long)]
    json: bool,
    /// Echo guest console lines (log level info).
    #[arg(long)]
    console: bool,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Split ring in guest memory (driver thread -> device thread) vs an rtrb SPSC ring.
    Ring(BenchOpts),
    /// Guest -> switch -> guest through real KVM guests: msgs/s, round trips, exits/message.
    Vm(BenchOpts),
    /// Frontend -> switch -> backends over virtqueues (one switch thread) vs an rtrb relay,
    /// and the cost of one balancing decision per policy.
    Switch(BenchOpts),
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
    };
    match runner::run(&topo, &opts) {
        Ok(report) => {
            if o.json {
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
            } else {
                println!("{report}");
            }
            if report.clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
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
        Command::Demo(o) => run_topology(Topology::parse(DEMO_TOML, "<demo>", &images), &o),
        Command::Run { topology, opts } => run_topology(Topology::load(&topology, &images), &opts),
        Command::Bench(BenchCommand::Ring(o)) => {
            print(&bench::ring::run(o.quick, Placement::two_cores()), &o)
        }
        Command::Bench(BenchCommand::Vm(o)) => print(&bench::vm::run(o.quick), &o),
        Command::Bench(BenchCommand::Switch(o)) => print(
            &bench::switch::run(o.quick, SwitchPlacement::two_cores()),
            &o,
        ),
    }
}

fn print(report: &Report, o: &BenchOpts) -> ExitCode {
    if o.json {
        report.print_json();
    } else {
        report.print_table();
    }
    ExitCode::SUCCESS
}
