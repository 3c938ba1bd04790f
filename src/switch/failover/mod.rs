//! Stall detection, ejection and return of the backends of one service.
//!
//! Outlier detection (Envoy) and rise/fall (HAProxy) driven by the queues instead of by error
//! counts: a backend with work pending whose rx consumer index has not moved for
//! [`FailoverConfig::stall_window_ns`] is stalled. [`Failover::sweep`] ejects stalled backends
//! with a backoff that grows with each ejection, but never more than
//! [`FailoverConfig::max_ejection_percent`] of the service; a stalled backend beyond that cap is
//! kept [`BackendStatus::Stalled`]: it gets no new work but is not ejected. An ejected backend
//! returns once its ejection time is over and it drains again (or has nothing left to drain), and
//! its weight ramps up linearly from [`FailoverConfig::slow_start_min`] over
//! [`FailoverConfig::slow_start_ns`]. When fewer than [`FailoverConfig::panic_threshold`] of the
//! backends are usable, the service panics and uses all of them. A backend retired on purpose
//! ([`Failover::set_retired`]: it drains, or left) is watched like the others but counts in
//! neither the ejection cap nor the panic threshold. Its settings, checked, are in `config`.

mod config;

pub use config::{FailoverConfig, FailoverConfigError};

/// Where a backend stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendStatus {
    /// Takes work at full weight.
    Healthy,
    /// Stalled but not ejected (the ejection cap was reached): no new work, still counted in
    /// rotation for the cap.
    Stalled,
    /// Out of rotation until at least `until_ns`.
    Ejected {
        /// End of the ejection time.
        until_ns: u64,
    },
    /// Back in rotation, weight ramping up since `since_ns`.
    Warming {
        /// When the backend returned.
        since_ns: u64,
    },
}

/// What a sweep changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The backend was ejected for the `count`-th time.
    Ejected {
        /// Backend index.
        backend: usize,
        /// Ejections of this backend so far (drives the backoff).
        count: u32,
    },
    /// The backend stalled but the ejection cap kept it in; it gets no new work.
    Stalled {
        /// Backend index.
        backend: usize,
    },
    /// A stalled (not ejected) backend drains again.
    Recovered {
        /// Backend index.
        backend: usize,
    },
    /// An ejected backend is back, in slow start.
    Returned {
        /// Backend index.
        backend: usize,
    },
    /// Work waited for the backend a whole stall window, but its vCPU spent part of that time
    /// waiting for a CPU: it was not scheduled, so it is not stalled (no ejection).
    Descheduled {
        /// Backend index.
        backend: usize,
    },
    /// Too few usable backends: all are used until enough recover.
    PanicEntered,
    /// Enough backends are usable again.
    PanicLeft,
}

/// Counters of a service's failover.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailoverStats {
    /// Stalls detected (ejected or not).
    pub stalls: u64,
    /// Ejections.
    pub ejections: u64,
    /// Stalls left in because of the ejection cap.
    pub ejections_capped: u64,
    /// Stalled backends that drained again without ejection.
    pub recoveries: u64,
    /// Returns from ejection.
    pub returns: u64,
    /// Times the service entered panic mode.
    pub panics: u64,
    /// Times a backend with work waiting past the stall window was found descheduled rather
    /// than stalled (its vCPU waited for a CPU).
    pub descheduled: u64,
}

#[derive(Clone, Copy, Debug)]
struct Backend {
    status: BackendStatus,
    consumer_idx: u16,
    /// Last time the consumer index moved, or the backend had nothing pending.
    last_progress_ns: u64,
    pending: bool,
    /// The index moved since the backend was ejected.
    moved_since_eject: bool,
    ejections: u32,
    /// Last time the ejection count was raised or lowered.
    count_changed_ns: u64,
    /// Run-queue wait of its vCPU at the sample taken with its last progress, and now.
    wait_since: Option<u64>,
    wait_now: Option<u64>,
    /// The switch's own run-queue wait when its stall clock started.
    switch_wait_since: Option<u64>,
    /// Found descheduled in this episode of no progress (counted once).
    descheduled: bool,
    /// Out of the service on purpose (draining or gone): watched for stalls like any other,
    /// but counted in neither the ejection cap nor the panic threshold.
    retired: bool,
}

impl Backend {
    fn new(now_ns: u64, status: BackendStatus) -> Self {
        Self {
            status,
            consumer_idx: 0,
            last_progress_ns: now_ns,
            pending: false,
            moved_since_eject: false,
            ejections: 0,
            count_changed_ns: now_ns,
            wait_since: None,
            wait_now: None,
            switch_wait_since: None,
            descheduled: false,
            retired: false,
        }
    }

    /// How long it has been without progress, less the time its vCPU waited for a CPU and the
    /// time the switch did: the time it had the chance to drain and did not.
    fn idle_with_cpu(&self, now_ns: u64, switch_wait: Option<u64>) -> u64 {
        let since = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => 0,
        };
        now_ns
            .saturating_sub(self.last_progress_ns)
            .saturating_sub(since(self.wait_since, self.wait_now))
            .saturating_sub(since(self.switch_wait_since, switch_wait))
    }
}

/// Failover state of one service's backends, indexed 0..n.
#[derive(Clone, Debug)]
pub struct Failover {
    cfg: FailoverConfig,
    /// How long, in all, the thread that runs the switch has waited for a CPU, as of the last
    /// sweep (`None`: unknown). While the switch waits it neither delivers nor looks, so that
    /// time counts toward no backend's stall.
    switch_wait: Option<u64>,
    backends: Vec<Backend>,
    panic: bool,
    stats: FailoverStats,
}

impl Failover {
    /// `n` backends, all healthy at `now_ns`.
    pub fn new(cfg: FailoverConfig, n: usize, now_ns: u64) -> Self {
        Self {
            cfg,
            switch_wait: None,
            backends: vec![Backend::new(now_ns, BackendStatus::Healthy); n],
            panic: false,
            stats: FailoverStats::default(),
        }
    }

    /// Adds a backend, in slow start from `now_ns`; returns its index.
    pub fn add_backend(&mut self, now_ns: u64) -> usize {
        self.backends.push(Backend::new(
            now_ns,
            BackendStatus::Warming { since_ns: now_ns },
        ));
        self.backends.len() - 1
    }

    /// Takes `backend` out of the service on purpose (`true`: it drains, or left) or puts it
    /// back (`false`). A retired backend is still watched: one that stalls is ejected at once,
    /// whatever the cap, so its requests move now. It counts toward neither the ejection cap
    /// nor the panic threshold: the service's size is that of the backends it may use.
    pub fn set_retired(&mut self, backend: usize, retired: bool) {
        if let Some(b) = self.backends.get_mut(backend) {
            b.retired = retired;
        }
    }

    /// Whether `backend` is retired ([`Failover::set_retired`]).
    pub fn retired(&self, backend: usize) -> bool {
        self.backends.get(backend).is_some_and(|b| b.retired)
    }

    /// Gives backend slot `backend` (retired, e.g. one that left) a fresh start: in service
    /// again, in slow start from `now_ns`, with no ejection history.
    pub fn rejoin(&mut self, backend: usize, now_ns: u64) {
        if let Some(b) = self.backends.get_mut(backend) {
            let status = if self.cfg.slow_start_ns == 0 {
                BackendStatus::Healthy
            } else {
                BackendStatus::Warming { since_ns: now_ns }
            };
            *b = Backend::new(now_ns, status);
        }
    }

    /// Number of backends.
    pub fn len(&self) -> usize {
        self.backends.len()
    }

    /// True when the service has no backend.
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// Records the backend's rx consumer index (e.g. the used-ring position it has consumed up to)
    /// and whether work is pending for it (delivered and unconsumed, or held for it). Cheap; call
    /// it whenever the queue is looked at. Out-of-range indexes are ignored.
    pub fn observe(&mut self, backend: usize, consumer_idx: u16, pending: bool, now_ns: u64) {
        let Some(b) = self.backends.get_mut(backend) else {
            return;
        };
        let progress = consumer_idx != b.consumer_idx;
        if progress {
            b.consumer_idx = consumer_idx;
            b.moved_since_eject = true;
        }
        // Moved, or nothing to drain: the stall clock starts again when work is pending. (The
        // vCPU's run-queue wait is sampled from the first observation with work pending.)
        if progress || !pending {
            b.last_progress_ns = now_ns;
            b.wait_since = None;
            b.wait_now = None;
            b.switch_wait_since = self.switch_wait;
            b.descheduled = false;
        }
        b.pending = pending;
    }

    /// Whether the sweep should sample `backend`'s run-queue wait now: it has work pending, so
    /// its stall clock runs and the sample taken with each observation covers it.
    pub fn wants_run_queue_wait(&self, backend: usize) -> bool {
        self.backends.get(backend).is_some_and(|b| b.pending)
    }

    /// How long, in all, the backend's vCPU has waited for a CPU (runnable, not running), as
    /// read now; `None` where that cannot be known (then a stall is judged by wall time
    /// alone). Time its vCPU spent waiting for a CPU does not count toward a stall: a backend
    /// is stalled only if it had the chance to drain and did not.
    ///
    /// Call it right after [`Failover::observe`]: the sample taken with the observation that
    /// started the stall clock is the baseline.
    pub fn sample_run_queue_wait(&mut self, backend: usize, wait_ns: Option<u64>) {
        let Some(b) = self.backends.get_mut(backend) else {
            return;
        };
        if b.wait_since.is_none() {
            b.wait_since = wait_ns;
        }
        b.wait_now = wait_ns;
    }

    /// How long, in all, the thread running the switch has waited for a CPU, as read at this
    /// sweep, before the backends are observed. `None` (the default) where it cannot be known.
    pub fn sample_switch_run_queue_wait(&mut self, wait_ns: Option<u64>) {
        self.switch_wait = wait_ns;
        for b in &mut self.backends {
            if b.switch_wait_since.is_none() {
                b.switch_wait_since = wait_ns;
            }
        }
    }

    /// Whether `backend` was found descheduled (work waiting past the stall window while its
    /// vCPU waited for a CPU) and has not made progress since.
    pub fn descheduled(&self, backend: usize) -> bool {
        self.backends.get(backend).is_some_and(|b| b.descheduled)
    }

    /// Takes `backend` out of rotation now, ignoring the cap (a broken port, a reset). It returns
    /// like any ejected backend.
    pub fn force_eject(&mut self, backend: usize, now_ns: u64, out: &mut Vec<Event>) {
        if backend < self.backends.len() {
            self.eject(backend, now_ns, out);
        }
    }

    fn eject(&mut self, i: usize, now_ns: u64, out: &mut Vec<Event>) {
        let cfg = self.cfg;
        let b = &mut self.backends[i];
        b.ejections = b.ejections.saturating_add(1);
        b.count_changed_ns = now_ns;
        let t = cfg
            .base_ejection_ns
            .saturating_mul(u64::from(b.ejections))
            .min(cfg.max_ejection_ns);
        b.status = BackendStatus::Ejected {
            until_ns: now_ns.saturating_add(t),
        };
        b.moved_since_eject = false;
        self.stats.ejections += 1;
        out.push(Event::Ejected {
            backend: i,
            count: b.ejections,
        });
    }

    /// Backends in service (not retired).
    fn in_service(&self) -> usize {
        self.backends.iter().filter(|b| !b.retired).count()
    }

    fn max_ejected(&self) -> usize {
        let n = self.in_service();
        (n * self.cfg.max_ejection_percent as usize / 100).max(1)
    }

    /// Applies time: ejects stalled backends (within the cap), returns recovered ones, ends slow
    /// starts, decays ejection counts and updates panic mode. Appends what changed to `out` (the
    /// buffer is not cleared, so the caller can reuse it without allocating).
    pub fn sweep(&mut self, now_ns: u64, out: &mut Vec<Event>) {
        let cfg = self.cfg;
        let mut ejected = self
            .backends
            .iter()
            .filter(|b| !b.retired && matches!(b.status, BackendStatus::Ejected { .. }))
            .count();
        let cap = self.max_ejected();
        for i in 0..self.backends.len() {
            let b = self.backends[i];
            let overdue =
                b.pending && now_ns.saturating_sub(b.last_progress_ns) >= cfg.stall_window_ns;
            let stalled =
                b.pending && b.idle_with_cpu(now_ns, self.switch_wait) >= cfg.stall_window_ns;
            if overdue && !stalled && !b.descheduled {
                self.backends[i].descheduled = true;
                self.stats.descheduled += 1;
                out.push(Event::Descheduled { backend: i });
            }
            match b.status {
                BackendStatus::Ejected { until_ns } => {
                    if now_ns >= until_ns && (b.moved_since_eject || !b.pending) {
                        let b = &mut self.backends[i];
                        b.status = if cfg.slow_start_ns == 0 {
                            BackendStatus::Healthy
                        } else {
                            BackendStatus::Warming { since_ns: now_ns }
                        };
                        // The stall clock restarts on return.
                        b.last_progress_ns = now_ns;
                        if !b.retired {
                            ejected -= 1;
                        }
                        self.stats.returns += 1;
                        out.push(Event::Returned { backend: i });
                    }
                }
                BackendStatus::Stalled if !stalled => {
                    self.backends[i].status = BackendStatus::Healthy;
                    self.stats.recoveries += 1;
                    out.push(Event::Recovered { backend: i });
                }
                BackendStatus::Stalled if b.retired || ejected < cap => {
                    self.eject(i, now_ns, out);
                    ejected += usize::from(!b.retired);
                }
                BackendStatus::Stalled => {}
                BackendStatus::Healthy | BackendStatus::Warming { .. } if stalled => {
                    self.stats.stalls += 1;
                    if b.retired || ejected < cap {
                        self.eject(i, now_ns, out);
                        ejected += usize::from(!b.retired);
                    } else {
                        self.backends[i].status = BackendStatus::Stalled;
                        self.stats.ejections_capped += 1;
                        out.push(Event::Stalled { backend: i });
                    }
                }
                BackendStatus::Warming { since_ns } => {
                    if now_ns.saturating_sub(since_ns) >= cfg.slow_start_ns {
                        self.backends[i].status = BackendStatus::Healthy;
                    }
                }
                BackendStatus::Healthy => {
                    // Each max_ejection_ns of good behaviour forgives one past ejection.
                    let b = &mut self.backends[i];
                    if b.ejections > 0
                        && now_ns.saturating_sub(b.count_changed_ns) >= cfg.max_ejection_ns
                    {
                        b.ejections -= 1;
                        b.count_changed_ns = now_ns;
                    }
                }
            }
        }
        let usable = self
            .backends
            .iter()
            .filter(|b| !b.retired && Self::usable(b))
            .count();
        let n = self.in_service();
        let panic = n > 0 && (usable as f64) < cfg.panic_threshold * n as f64;
        if panic != self.panic {
            self.panic = panic;
            if panic {
                self.stats.panics += 1;
                out.push(Event::PanicEntered);
            } else {
                out.push(Event::PanicLeft);
            }
        }
    }

    /// [`Failover::sweep`] into a fresh vector.
    pub fn sweep_vec(&mut self, now_ns: u64) -> Vec<Event> {
        let mut v = Vec::new();
        self.sweep(now_ns, &mut v);
        v
    }

    fn usable(b: &Backend) -> bool {
        matches!(
            b.status,
            BackendStatus::Healthy | BackendStatus::Warming { .. }
        )
    }

    /// Status of a backend (`None` when out of range).
    pub fn status(&self, backend: usize) -> Option<BackendStatus> {
        self.backends.get(backend).map(|b| b.status)
    }

    /// Ejections of a backend that still count toward its backoff.
    pub fn ejections(&self, backend: usize) -> u32 {
        self.backends.get(backend).map_or(0, |b| b.ejections)
    }

    /// Whether `backend` is draining as far as stall detection knows (healthy or warming),
    /// whatever the panic mode.
    pub fn accepts_without_panic(&self, backend: usize) -> bool {
        self.backends.get(backend).is_some_and(Self::usable)
    }

    /// Whether the service is in panic mode (as of the last sweep).
    pub fn panic(&self) -> bool {
        self.panic
    }

    /// Whether new work may go to `backend`: healthy or warming, or any backend in panic mode.
    pub fn in_rotation(&self, backend: usize) -> bool {
        self.backends
            .get(backend)
            .is_some_and(|b| self.panic || Self::usable(b))
    }

    /// Factor to multiply the backend's weight by: 0 when it must get no new work, the slow-start
    /// ramp while warming, 1 otherwise. In panic mode every backend gets at least its ramp value,
    /// stalled and ejected ones 1.
    pub fn weight_factor(&self, backend: usize, now_ns: u64) -> f64 {
        let Some(b) = self.backends.get(backend) else {
            return 0.0;
        };
        match b.status {
            BackendStatus::Healthy => 1.0,
            BackendStatus::Warming { since_ns } => {
                if self.cfg.slow_start_ns == 0 {
                    return 1.0;
                }
                let f = now_ns.saturating_sub(since_ns) as f64 / self.cfg.slow_start_ns as f64;
                let min = self.cfg.slow_start_min.clamp(0.0, 1.0);
                (min + (1.0 - min) * f).min(1.0)
            }
            BackendStatus::Stalled | BackendStatus::Ejected { .. } => {
                if self.panic {
                    1.0
                } else {
                    0.0
                }
            }
        }
    }

    /// Counters since creation.
    pub fn stats(&self) -> FailoverStats {
        self.stats
    }
}

#[cfg(test)]
mod tests;
