//! `vmq bench handoff`, between KVM guests: a `peer` VM streams one-way messages of 4 KiB to
//! 1 MiB through the switch to another `peer` VM, handing their pages off (`mode = 2`,
//! `[handoff] min_bytes = 0`) against sending their bytes (`mode = 0`, the baseline), in the
//! same run, the same topology otherwise (memfd-backed RAM in both).
//!
//! What each side does per message, both paths: the sender writes the sequence number and one
//! byte per page (`check_stride = 4096`), the receiver checks the same bytes. Copy: the sender's
//! driver copies the message into its tx slot, the switch copies it into the receiver's rx
//! slot, the receiver's driver copies it out. Hand-off: the sender sends a page list, the
//! switch moves the pages into the receiver's window, the receiver reads them in place and
//! releases them, and the sender takes them back from the switch's return notice before it
//! reuses them. Queues of 4 MiB of messages (64 slots of 4 KiB or 64 KiB, 16 of 256 KiB, 4 of
//! 1 MiB), so at most that many messages (and areas of pages) are out.
//!
//! The rate is the runner's (messages over the run, the guests' start-up included: a few ms
//! against runs of about a second). Thread placement: both vCPU threads and the switch thread
//! unpinned; doorbell guests.

use super::{BenchRecord, Report};
use crate::bench::handoff::SIZES;
use crate::runner::RunReport;
use crate::wire::pages::PAGE_SIZE;

/// Queue slots of each peer (and hand-off areas of the sender) for messages of `size`:
/// about 4 MiB in flight, 4 to 64 slots.
fn queue(size: u64) -> u64 {
    ((4 << 20) / size).clamp(4, 64)
}

/// One stream of `count` messages of `size` bytes, handed off or copied.
fn topology(size: u64, count: u64, handoff: bool) -> String {
    let pages = size.div_ceil(PAGE_SIZE);
    let mode = if handoff { 2 } else { 0 };
    let q = queue(size);
    format!(
        r#"
[run]
progress_ms = 0
max_duration_ms = 120000
[handoff]
window_pages = {window}
min_bytes = 0
[[vm]]
name = "tx"
image = "peer"
memory_mib = 64
params = {{ target = "rx", count = {count}, size = {size}, mode = {mode}, queue_size = {q}, check_stride = 4096, wait = "doorbell" }}
[[vm]]
name = "rx"
image = "peer"
memory_mib = 64
params = {{ expect = {count}, size = {size}, queue_size = {q}, check_stride = 4096, wait = "doorbell" }}
"#,
        window = q * pages,
    )
}

/// Messages per run: 256 MiB of payload for the full bench (32 MiB with `quick`), at least
/// 64 messages.
fn count(size: u64, quick: bool) -> u64 {
    let bytes: u64 = if quick { 32 << 20 } else { 256 << 20 };
    (bytes / size).clamp(64, 50_000)
}

/// A clean run's rate, or the failure recorded.
fn rate(case: &str, text: &str, report: &mut Report) -> Option<RunReport> {
    let r = super::vm::run_vm(case, text, &mut report.failures)?;
    r.clean().then_some(r)
}

/// Runs every size both ways; `quick` runs a quarter of the messages once, else the best of
/// two rounds (alternating the paths).
pub fn run(quick: bool, report: &mut Report) {
    // The other halves pin this thread; VM threads would inherit its mask.
    super::unpin_current_thread();
    let rounds = if quick { 1 } else { 2 };
    let placement = "both vCPU threads and the switch thread unpinned, doorbell guests";
    let mut crossover = None;
    let first = report.records.len();
    for size in SIZES {
        let n = count(size, quick);
        let (mut h, mut c): (Option<RunReport>, Option<RunReport>) = (None, None);
        let best = |a: Option<RunReport>, b: Option<RunReport>| match (a, b) {
            (Some(a), Some(b)) if a.msgs_per_s >= b.msgs_per_s => Some(a),
            (a, None) => a,
            (_, b) => b,
        };
        for _ in 0..rounds {
            let x = rate(
                &format!("handoff guests {size} B"),
                &topology(size, n, true),
                report,
            );
            let y = rate(
                &format!("handoff guests {size} B (copy)"),
                &topology(size, n, false),
                report,
            );
            h = best(h, x);
            c = best(c, y);
        }
        let (Some(h), Some(c)) = (h, c) else {
            continue;
        };
        if crossover.is_none() && h.msgs_per_s > c.msgs_per_s {
            crossover = Some(size);
        }
        let stats = h.handoff.as_ref();
        report.records.push(
            BenchRecord::new(
                "handoff guests",
                size as u32,
                1,
                h.msgs_per_s,
                "copy",
                c.msgs_per_s,
                placement,
            )
            .with("copy_gb_per_s", c.msgs_per_s * size as f64 / 1e9)
            .with("exits_per_msg", h.exits_per_msg)
            .with("copy_exits_per_msg", c.exits_per_msg)
            .with("messages", n)
            .with("handed_off", stats.map_or(0, |s| s.handed_off))
            .with(
                "copied",
                stats.map_or(0, |s| s.copied_small + s.copied_full + s.copied_not_member),
            )
            .with("queue_slots", queue(size)),
        );
    }
    let cross = crossover.map_or(serde_json::Value::Null, |c| c.into());
    for r in &mut report.records[first..] {
        r.extra.insert("crossover_bytes".into(), cross.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Topology;
    use crate::vmm::images;

    #[test]
    fn every_size_makes_a_valid_topology_both_ways() {
        let names: Vec<&str> = images::ALL.iter().map(|(n, _)| *n).collect();
        for size in SIZES {
            for handoff in [true, false] {
                let t = topology(size, count(size, true), handoff);
                if let Err(e) = Topology::parse(&t, "<bench>", &names) {
                    panic!("{size} B, handoff {handoff}: {e}");
                }
            }
        }
    }
}
