//! Renewing the shared snapshot from the switch thread, at most every so often.

use std::time::{Duration, Instant};

use vm_memory::GuestMemoryBackend;

use super::SharedSnapshot;
use crate::switch::Switch;

/// Renews a [`SharedSnapshot`] from the switch thread, no more often than `every`: call
/// [`tick`](Self::tick) between polls, [`publish`](Self::publish) once more at the end.
#[derive(Debug)]
pub struct Publisher {
    shared: SharedSnapshot,
    every: Duration,
    last: Option<Instant>,
}

impl Publisher {
    /// How often `vmq serve` and `vmq run` renew theirs.
    pub const EVERY: Duration = Duration::from_millis(100);

    /// A publisher into `shared`, renewing it every `every`.
    pub fn new(shared: SharedSnapshot, every: Duration) -> Self {
        Self {
            shared,
            every,
            last: None,
        }
    }

    /// Publishes a fresh snapshot of `sw` if `every` has passed since the last one.
    pub fn tick<M: GuestMemoryBackend + Clone>(&mut self, sw: &Switch<M>) {
        if self.last.is_none_or(|t| t.elapsed() >= self.every) {
            self.publish(sw);
        }
    }

    /// Publishes a fresh snapshot of `sw` now.
    pub fn publish<M: GuestMemoryBackend + Clone>(&mut self, sw: &Switch<M>) {
        self.last = Some(Instant::now());
        let snap = sw.snapshot();
        *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = Some(snap);
    }
}
