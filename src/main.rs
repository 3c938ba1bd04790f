//! The `vmq` command line.

use clap::{Args, Parser, Subcommand};

use vmq::bench::switch::SwitchPlacement;
use vmq::bench::{self, Placement, Report};

/// vmq: a VM-queue I/O dataplane for KVM.
#[derive(Parser, Debug)]
#[command(name = "vmq", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Measure queue throughput against baselines measured in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Split ring in guest memory (driver thread -> device thread) vs an rtrb SPSC ring.
    Ring(BenchOpts),
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

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(BenchCommand::Ring(o)) => {
            print(&bench::ring::run(o.quick, Placement::two_cores()), &o)
        }
        Command::Bench(BenchCommand::Switch(o)) => print(
            &bench::switch::run(o.quick, SwitchPlacement::two_cores()),
            &o,
        ),
    }
}

fn print(report: &Report, o: &BenchOpts) {
    if o.json {
        report.print_json();
    } else {
        report.print_table();
    }
}
