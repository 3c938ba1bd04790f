//! `vmq bench vm`: guest -> switch -> guest through real KVM guests.
//!
//! Cases, each with polling guests (`wait = "poll"`) and with doorbell-wait guests:
//! - `vm one-way`: a `peer` VM streams 64-byte one-way messages to another peer VM;
//! - `vm request/reply`: a `client` VM with one request outstanding against a `worker` VM
//!   (round-trip percentiles from the client's TSC histogram);
//! - `notify ...`: notification per message, a mix of one immediate in 16 and the per-poll
//!   default against all-immediate ([`super::notify`]).
//!
//! Baseline in the same run: the same traffic through the same switch between host-thread
//! peers (`bench switch`), which shows what the VM boundary costs. Thread placement: every
//! vCPU thread and the switch thread float over the machine's CPUs (with two CPUs, polling
//! guests and the switch share them).

use std::time::Duration;

use super::switch::{self, Case, SwitchPlacement};
use super::{BenchRecord, Budget, Report};
use crate::runner::{self, RunOptions, RunReport};
use crate::topology::Topology;
use crate::vmm::images;

const SIZE: u32 = 64;

fn topo(text: &str) -> Topology {
    let names: Vec<&str> = images::ALL.iter().map(|(n, _)| *n).collect();
    Topology::parse(text, "<bench>", &names).expect("bench topologies are valid")
}

fn one_way(count: u64, wait: &str) -> String {
    format!(
        r#"
[run]
progress_ms = 0
[[vm]]
name = "tx"
image = "peer"
params = {{ target = "rx", count = {count}, size = {SIZE}, wait = "{wait}" }}
[[vm]]
name = "rx"
image = "peer"
params = {{ expect = {count}, wait = "{wait}" }}
"#
    )
}

fn request_reply(count: u64, wait: &str) -> String {
    format!(
        r#"
[run]
progress_ms = 0
[[vm]]
name = "client"
image = "client"
params = {{ service = "echo", count = {count}, size = {SIZE}, window = 1, wait = "{wait}" }}
[[vm]]
name = "worker"
image = "worker"
params = {{ wait = "{wait}" }}
[[service]]
name = "echo"
members = [{{ vm = "worker" }}]
failover = {{ stall_window_ns = 1000000000 }}
"#
    )
}

/// Runs one case; a run that could not happen or was not clean is recorded in `failures`.
pub(super) fn run_vm(case: &str, text: &str, failures: &mut Vec<String>) -> Option<RunReport> {
    match runner::run(&topo(text), &RunOptions::default()) {
        Ok(r) if r.clean() => Some(r),
        Ok(r) => {
            log::warn!("bench vm run was not clean: {r}");
            failures.push(format!("{case}: the run was not clean ({:?})", r.verdict()));
            Some(r)
        }
        Err(e) => {
            eprintln!("vmq bench vm: {e}");
            failures.push(format!("{case}: {e}"));
            None
        }
    }
}

/// Runs the cases; `quick` keeps the whole bench to a few seconds.
pub fn run(quick: bool) -> Report {
    let (count, host_budget) = if quick {
        (20_000, Duration::from_millis(150))
    } else {
        (200_000, Duration::from_millis(1000))
    };
    let placement = "vCPU threads and the switch thread unpinned";
    let host = SwitchPlacement::two_cores();
    let mut report = Report::default();
    for wait in ["poll", "doorbell"] {
        if let Some(r) = run_vm(
            &format!("vm one-way ({wait})"),
            &one_way(count, wait),
            &mut report.failures,
        ) {
            let base = switch::run_vmq(Case::OneWay, SIZE, 1, Budget::Time(host_budget), host);
            report.records.push(
                BenchRecord::new(
                    &format!("vm one-way ({wait})"),
                    SIZE,
                    1,
                    r.msgs_per_s,
                    "host-peers",
                    base.run.msgs_per_s(),
                    placement,
                )
                .with("p50_us", serde_json::Value::Null)
                .with("p99_us", serde_json::Value::Null)
                .with("exits_per_msg", r.exits_per_msg)
                .with("messages", r.messages),
            );
        }
        if let Some(r) = run_vm(
            &format!("vm request/reply ({wait})"),
            &request_reply(count / 4, wait),
            &mut report.failures,
        ) {
            let base =
                switch::run_vmq(Case::RequestReply, SIZE, 1, Budget::Time(host_budget), host);
            let l = r.latency.unwrap_or_default();
            // Forwarded messages per second on both sides (a pair is two messages).
            report.records.push(
                BenchRecord::new(
                    &format!("vm request/reply ({wait})"),
                    SIZE,
                    1,
                    r.msgs_per_s,
                    "host-peers",
                    2.0 * base.run.msgs_per_s(),
                    placement,
                )
                .with("p50_us", l.p50_us)
                .with("p99_us", l.p99_us)
                .with("exits_per_msg", r.exits_per_msg)
                .with("window", 1)
                .with("messages", r.messages),
            );
        }
    }
    super::notify::run(quick, &mut report);
    if let Ok(c) = super::exits::measure(if quick { 500 } else { 2000 }) {
        report.records.push(
            BenchRecord::new("exit costs", 0, 1, 0.0, "none", 0.0, "one vCPU")
                .with("vm_create_us", c.vm_create_us)
                .with("minimal_run_us", c.minimal_run_us)
                .with("pio_exit_us", c.pio_exit_us)
                .with("ioeventfd_write_us", c.ioeventfd_write_us),
        );
    }
    report
}
