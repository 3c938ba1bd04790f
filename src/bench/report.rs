//! Benchmark records: a table for people, one JSON object per case for machines.

use serde::Serialize;

/// One benchmark case against one baseline.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BenchRecord {
    /// What was measured (`ring`, `one-way`, `request/reply`, `decision`, ...).
    pub case: String,
    /// Payload bytes per message.
    pub msg_size: u32,
    /// Messages per batch (publish/notify granularity).
    pub batch: u32,
    /// vmq messages per second.
    pub vmq_msgs_per_s: f64,
    /// vmq payload GB/s.
    pub vmq_gb_per_s: f64,
    /// The baseline measured in the same run.
    pub baseline: String,
    /// Baseline messages per second.
    pub baseline_msgs_per_s: f64,
    /// vmq / baseline.
    pub ratio: f64,
    /// Thread placement.
    pub placement: String,
    /// Extra fields some cases add (ns per decision, latencies, exits per message, ...).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl BenchRecord {
    /// A record for `case` with throughput figures; `ratio` and GB/s are derived.
    pub fn new(
        case: &str,
        msg_size: u32,
        batch: u32,
        vmq_msgs_per_s: f64,
        baseline: &str,
        baseline_msgs_per_s: f64,
        placement: &str,
    ) -> Self {
        Self {
            case: case.to_string(),
            msg_size,
            batch,
            vmq_msgs_per_s,
            vmq_gb_per_s: vmq_msgs_per_s * msg_size as f64 / 1e9,
            baseline: baseline.to_string(),
            baseline_msgs_per_s,
            ratio: if baseline_msgs_per_s > 0.0 {
                vmq_msgs_per_s / baseline_msgs_per_s
            } else {
                0.0
            },
            placement: placement.to_string(),
            extra: Default::default(),
        }
    }

    /// Adds an extra field.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.to_string(), value.into());
        self
    }
}

/// A set of records printed as a table or as JSON lines.
#[derive(Default, Debug)]
pub struct Report {
    /// The records, in the order measured.
    pub records: Vec<BenchRecord>,
    /// Cases that failed (could not run, or their run was not clean), with why.
    pub failures: Vec<String>,
}

impl Report {
    /// Prints one JSON object per record, one per line.
    pub fn print_json(&self) {
        let _ = self.write_json(&mut std::io::stdout().lock());
    }

    /// Prints an aligned table.
    pub fn print_table(&self) {
        let _ = self.write_table(&mut std::io::stdout().lock());
    }

    /// Writes one JSON object per record, one per line.
    pub fn write_json(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        for r in &self.records {
            writeln!(w, "{}", serde_json::to_string(r).unwrap_or_default())?;
        }
        Ok(())
    }

    /// Writes an aligned table.
    pub fn write_table(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        writeln!(
            w,
            "{:<16} {:>6} {:>6} {:>14} {:>8} {:>10} {:>14} {:>7}",
            "case", "size", "batch", "vmq msg/s", "GB/s", "baseline", "base msg/s", "ratio"
        )?;
        for r in &self.records {
            let mut line = format!(
                "{:<16} {:>6} {:>6} {:>14.0} {:>8.2} {:>10} {:>14.0} {:>7.2}",
                r.case,
                r.msg_size,
                r.batch,
                r.vmq_msgs_per_s,
                r.vmq_gb_per_s,
                r.baseline,
                r.baseline_msgs_per_s,
                r.ratio
            );
            for (k, v) in &r.extra {
                line.push_str(&format!("  {k}={v}"));
            }
            writeln!(w, "{line}")?;
        }
        if let Some(r) = self.records.first() {
            writeln!(w, "placement: {}", r.placement)?;
        }
        Ok(())
    }
}
