//! Live progress lines while a topology runs.

use std::io::Write;
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;

use crate::event::LoopStats;
use crate::switch::Switch;

pub(super) struct Progress {
    on: bool,
    last: Option<(Instant, u64)>,
    next: Duration,
}

impl Progress {
    pub fn new(on: bool) -> Self {
        Self {
            on,
            last: None,
            next: Duration::ZERO,
        }
    }

    /// Prints a line when `every` has passed: throughput, per-port progress, and per backend
    /// its share, health and status.
    pub fn tick(
        &mut self,
        sw: &Switch<GuestMemoryMmap>,
        stats: &LoopStats,
        t: Duration,
        every: Duration,
    ) {
        if !self.on || t < self.next {
            return;
        }
        self.next = t + every;
        let now = Instant::now();
        let rate = match self.last {
            Some((then, msgs)) => {
                (stats.messages - msgs) as f64 / now.duration_since(then).as_secs_f64().max(1e-6)
            }
            None => 0.0,
        };
        self.last = Some((now, stats.messages));
        let snap = sw.snapshot();
        let mut line = format!("[{:>6.2}s] {:>7.1}k msg/s |", t.as_secs_f64(), rate / 1e3);
        for p in snap.ports.iter().filter(|p| p.stats.requests > 0) {
            line.push_str(&format!(
                " {} {}/{}",
                p.name, p.stats.replies, p.stats.requests
            ));
        }
        for s in &snap.services {
            line.push_str(&format!(" | {}:", s.name));
            for m in &s.members {
                line.push_str(&format!(
                    " {} {:.0}% h={:.2} {}",
                    m.name,
                    m.share * 100.0,
                    m.health,
                    m.status
                ));
            }
        }
        let t = snap.totals;
        line.push_str(&format!(
            " | failed over {} late {} failed back {}",
            t.redispatches, t.late_replies_dropped, t.failed_back
        ));
        let _ = writeln!(std::io::stderr(), "{line}");
    }

    pub fn finish(&mut self) {
        if self.on {
            let _ = std::io::stderr().flush();
        }
    }
}
