//! Exit counters of one vCPU.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts of vCPU exits to user space and of doorbell waits. Updated by the vCPU thread with
/// relaxed atomics; read them at any time (e.g. `c.pio.load(Ordering::Relaxed)`) or take a
/// [`ExitCounters::snapshot`].
#[derive(Debug, Default)]
pub struct ExitCounters {
    /// Port-I/O exits (console, exit, doorbell and unknown ports).
    pub pio: AtomicU64,
    /// MMIO exits (handled or not).
    pub mmio: AtomicU64,
    /// Any other exit (interrupted runs, shutdown, ...).
    pub other: AtomicU64,
    /// MMIO exits that no registered device covered.
    pub mmio_unhandled: AtomicU64,
    /// Port-I/O exits on ports the VMM does not know.
    pub pio_unhandled: AtomicU64,
    /// Doorbell waits.
    pub doorbell_waits: AtomicU64,
    /// Doorbell waits ended by the work eventfd.
    pub doorbell_work: AtomicU64,
    /// Doorbell waits ended by their timeout.
    pub doorbell_timeouts: AtomicU64,
}

/// A plain copy of [`ExitCounters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct ExitSnapshot {
    pub pio: u64,
    pub mmio: u64,
    pub other: u64,
    pub mmio_unhandled: u64,
    pub pio_unhandled: u64,
    pub doorbell_waits: u64,
    pub doorbell_work: u64,
    pub doorbell_timeouts: u64,
}

impl ExitCounters {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> ExitSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ExitSnapshot {
            pio: r(&self.pio),
            mmio: r(&self.mmio),
            other: r(&self.other),
            mmio_unhandled: r(&self.mmio_unhandled),
            pio_unhandled: r(&self.pio_unhandled),
            doorbell_waits: r(&self.doorbell_waits),
            doorbell_work: r(&self.doorbell_work),
            doorbell_timeouts: r(&self.doorbell_timeouts),
        }
    }
}
