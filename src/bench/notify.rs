//! Notification per message through real KVM guests (part of `vmq bench vm`): a mix of one
//! immediate message in 16 (the rest deferred) and the per-poll default, each against
//! all-immediate measured in the same run (`baseline` = `all-immediate`).
//!
//! Cases, 64-byte messages, guests parking on the doorbell when idle:
//! - `notify rr w16`: a client with 16 requests outstanding against one worker (replies echo
//!   their request's notification); round trips from the client's TSC histogram;
//! - `notify rr w1`: the same with one request outstanding, where a deferred request has
//!   nothing behind it to carry its notification and waits for the coalescing deadline (1 ms):
//!   the price of deferring what someone waits for;
//! - `notify stream`: a peer streaming one-way messages to another, its queues holding two
//!   messages so that they reach the switch a pair at a time, both guests parking as soon as
//!   they are idle (`spin = 1`), the receiver's deadline 100 ms.
//!
//! Figures per message: guest exits (both VMs), notifications the switch sent (all ports).

use super::vm::run_vm;
use super::{BenchRecord, Report};
use crate::runner::RunReport;

const SIZE: u32 = 64;

fn rr(count: u64, window: u64, every: u64) -> String {
    format!(
        r#"
[run]
progress_ms = 0
[[vm]]
name = "client"
image = "client"
params = {{ service = "echo", count = {count}, size = {SIZE}, window = {window}, wait = "doorbell", immediate_every = {every} }}
[[vm]]
name = "worker"
image = "worker"
params = {{ wait = "doorbell" }}
[[service]]
name = "echo"
members = [{{ vm = "worker" }}]
failover = {{ stall_window_ns = 1000000000 }}
"#
    )
}

fn stream(count: u64, every: u64) -> String {
    format!(
        r#"
[run]
progress_ms = 0
[[vm]]
name = "tx"
image = "peer"
params = {{ target = "rx", count = {count}, size = {SIZE}, queue_size = 2, spin = 1, wait = "doorbell", immediate_every = {every} }}
[[vm]]
name = "rx"
image = "peer"
notify_deadline_us = 100000
params = {{ expect = {count}, size = {SIZE}, spin = 1, wait = "doorbell" }}
"#
    )
}

/// Notifications the switch sent, all ports, per message.
fn notifies_per_msg(r: &RunReport) -> f64 {
    let n: u64 = r.switch.ports.iter().map(|p| p.stats.notifies).sum();
    n as f64 / r.messages.max(1) as f64
}

fn record(case: &str, window: u64, mix: &str, r: &RunReport, base: &RunReport) -> BenchRecord {
    let placement = "vCPU threads and the switch thread unpinned (2 CPUs shared)";
    let (l, bl) = (
        r.latency.unwrap_or_default(),
        base.latency.unwrap_or_default(),
    );
    let latency = |v: f64, has: bool| {
        if has {
            serde_json::json!((v * 10.0).round() / 10.0)
        } else {
            serde_json::Value::Null
        }
    };
    let round3 = |v: f64| (v * 1000.0).round() / 1000.0;
    BenchRecord::new(
        case,
        SIZE,
        1,
        r.msgs_per_s,
        "all-immediate",
        base.msgs_per_s,
        placement,
    )
    .with("mix", mix)
    .with("window", window)
    .with("exits_per_msg", round3(r.exits_per_msg))
    .with("base_exits_per_msg", round3(base.exits_per_msg))
    .with("notifies_per_msg", round3(notifies_per_msg(r)))
    .with("base_notifies_per_msg", round3(notifies_per_msg(base)))
    .with("p50_us", latency(l.p50_us, r.latency.is_some()))
    .with("p99_us", latency(l.p99_us, r.latency.is_some()))
    .with("base_p50_us", latency(bl.p50_us, base.latency.is_some()))
    .with("base_p99_us", latency(bl.p99_us, base.latency.is_some()))
    .with("messages", r.messages)
}

/// Runs the cases into `report`; `quick` keeps them to a few seconds.
pub fn run(quick: bool, report: &mut Report) {
    let (rr_count, w1_count, stream_count) = if quick {
        (8_000, 400, 3_200)
    } else {
        (64_000, 3_200, 32_000)
    };
    let f = &mut report.failures;
    let mut recs = Vec::new();
    if let (Some(all), Some(mix), Some(poll)) = (
        run_vm("notify rr w16 all", &rr(rr_count, 16, 1), f),
        run_vm("notify rr w16 1/16", &rr(rr_count, 16, 16), f),
        run_vm("notify rr w16 per-poll", &rr(rr_count, 16, 0), f),
    ) {
        recs.push(record("notify rr w16", 16, "1 in 16", &mix, &all));
        recs.push(record("notify rr w16", 16, "per-poll", &poll, &all));
    }
    if let (Some(all), Some(mix)) = (
        run_vm("notify rr w1 all", &rr(w1_count, 1, 1), f),
        run_vm("notify rr w1 1/16", &rr(w1_count, 1, 16), f),
    ) {
        recs.push(record("notify rr w1", 1, "1 in 16", &mix, &all));
    }
    if let (Some(all), Some(mix)) = (
        run_vm("notify stream all", &stream(stream_count, 1), f),
        run_vm("notify stream 1/16", &stream(stream_count, 16), f),
    ) {
        recs.push(record("notify stream", 0, "1 in 16", &mix, &all));
    }
    report.records.extend(recs);
}
