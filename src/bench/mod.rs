//! Queue-throughput benchmarks shared by `vmq bench` and the criterion benches.
//!
//! Every figure is a ratio against a baseline measured in the same run on the same machine,
//! with message size, batch size and thread placement stated in the report.

mod affinity;
pub mod exits;
pub mod handoff;
pub mod handoff_guests;
pub mod handoff_switch;
pub mod notify;
mod report;
pub mod ring;
pub mod switch;
pub mod vm;
pub mod vsock;

pub use affinity::{pin_current_thread, unpin_current_thread, Placement};
pub use report::{BenchRecord, Report};

use std::time::Duration;

/// How long each measured run lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    /// Run until this many messages have crossed.
    Count(u64),
    /// Run for this long.
    Time(Duration),
}

/// Time per measured run and runs per case: `quick` is 120 ms and one run (a whole bench in
/// seconds); otherwise 500 ms and the best of three.
pub fn run_budget(quick: bool) -> (Budget, usize) {
    if quick {
        (Budget::Time(Duration::from_millis(120)), 1)
    } else {
        (Budget::Time(Duration::from_millis(500)), 3)
    }
}

/// Outcome of one measured run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Run {
    /// Messages that crossed.
    pub msgs: u64,
    /// Wall time from the start signal to the last message.
    pub elapsed: Duration,
}

impl Run {
    /// Messages per second.
    pub fn msgs_per_s(&self) -> f64 {
        self.msgs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}
