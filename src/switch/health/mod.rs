//! Weighted health of one backend, from what the switch observes at its queues.
//!
//! Each metric is normalised to [0, 1] (1 = healthy) and the score is their weighted mean; a
//! metric with nothing to say yet (no reply seen, no load report, ring size unknown) drops out of
//! the mean rather than counting as perfect or as failed. Below [`HealthConfig::threshold`] the
//! backend leaves rotation, and it comes back at [`HealthConfig::rejoin_threshold`].
//!
//! The backend's own load report (cooperative balancing) is cross-checked against what the switch
//! sees: a report of "idle" from a backend that is not draining its queue, or of "saturated" from
//! one that drains fast with buffers to spare, marks the report suspect and the switch's own
//! observation replaces it until the two agree again.

mod config;

pub use config::{Combine, HealthConfig, HealthConfigError, HealthWeights, LOAD_MAX};

/// Counters of one backend's health tracking.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HealthStats {
    /// Replies seen.
    pub replies: u64,
    /// Replies with an error status.
    pub errors: u64,
    /// Load reports received.
    pub load_reports: u64,
    /// Times the load report became suspect.
    pub reports_suspected: u64,
    /// Times the backend left rotation.
    pub left_rotation: u64,
    /// Sessions it broke (a `connection` service's established connections it reset).
    pub sessions_broken: u64,
}

/// Most samples one sweep's ended sessions add to the error rate.
pub const SESSION_SAMPLES: u32 = 32;

/// Weight of one sample in a value EWMA even when no time has passed, so a burst of replies in
/// one batch still moves the average.
const SAMPLE_FLOOR: f64 = 1.0 / 32.0;

/// Floor of a metric in the geometric mean, so one zero does not make the score exactly zero and
/// scores stay comparable.
const GEO_FLOOR: f64 = 0.01;

fn decay_alpha(dt_ns: u64, half_life_ns: u64) -> f64 {
    if half_life_ns == 0 {
        return 1.0;
    }
    1.0 - (-(dt_ns as f64) / half_life_ns as f64).exp2()
}

/// A time-weighted EWMA of sampled values (latency, error fraction).
#[derive(Clone, Copy, Debug, Default)]
struct ValueEwma {
    value: Option<f64>,
    last_ns: u64,
}

impl ValueEwma {
    fn add(&mut self, sample: f64, now_ns: u64, half_life_ns: u64) {
        self.value = Some(match self.value {
            None => sample,
            Some(v) => {
                let a = decay_alpha(now_ns.saturating_sub(self.last_ns), half_life_ns)
                    .max(SAMPLE_FLOOR);
                v + a * (sample - v)
            }
        });
        self.last_ns = now_ns;
    }
}

/// Health state of one backend.
#[derive(Clone, Debug)]
pub struct BackendHealth {
    cfg: HealthConfig,
    n_free: u32,
    ring_size: u32,
    /// Requests delivered to the rx queue and not yet consumed by the backend.
    unconsumed: u32,
    in_flight: u32,
    /// Drain EWMA (rx buffers consumed per second) as of `drain_last_ns`, plus the count consumed
    /// since then, folded in lazily.
    drain_per_s: f64,
    drain_acc: u64,
    drain_last_ns: u64,
    drain_seen: bool,
    latency: ValueEwma,
    errors: ValueEwma,
    load: Option<(u16, u64)>,
    suspect: bool,
    /// Since when the report and the observation have disagreed (or agreed, when suspect).
    verdict_since: Option<u64>,
    in_rotation: bool,
    last_score: f64,
    stats: HealthStats,
}

/// What the switch observes, reduced to the two facts the cross-check needs.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Observed {
    free_frac: Option<f64>,
    drain_score: f64,
}

impl BackendHealth {
    /// A backend with no history yet: in rotation, score 1.
    pub fn new(cfg: HealthConfig) -> Self {
        Self {
            cfg,
            n_free: 0,
            ring_size: 0,
            unconsumed: 0,
            in_flight: 0,
            drain_per_s: 0.0,
            drain_acc: 0,
            drain_last_ns: 0,
            drain_seen: false,
            latency: ValueEwma::default(),
            errors: ValueEwma::default(),
            load: None,
            suspect: false,
            verdict_since: None,
            in_rotation: true,
            last_score: 1.0,
            stats: HealthStats::default(),
        }
    }

    /// The backend posted rx buffers: `n_free` are now available to the switch out of
    /// `ring_size`.
    pub fn on_rx_posted(&mut self, n_free: u32, ring_size: u32) {
        self.on_free_rx(n_free, ring_size);
    }

    /// The switch's current count of free rx buffers of this backend, out of `ring_size`.
    pub fn on_free_rx(&mut self, n_free: u32, ring_size: u32) {
        self.ring_size = ring_size;
        self.n_free = n_free.min(ring_size);
    }

    /// The backend consumed `n` delivered rx buffers. Drives the drain-rate EWMA.
    pub fn on_consumed(&mut self, n: u32, now_ns: u64) {
        self.unconsumed = self.unconsumed.saturating_sub(n);
        if !self.drain_seen {
            // The rate is measured from the first observation on.
            self.drain_seen = true;
            self.drain_last_ns = now_ns;
        }
        self.drain_acc += u64::from(n);
        self.fold_drain(now_ns);
    }

    fn fold_drain(&mut self, now_ns: u64) {
        if now_ns > self.drain_last_ns {
            self.drain_per_s = self.projected_drain(now_ns);
            self.drain_acc = 0;
            self.drain_last_ns = now_ns;
        }
    }

    fn projected_drain(&self, now_ns: u64) -> f64 {
        let dt = now_ns.saturating_sub(self.drain_last_ns);
        if dt == 0 {
            return self.drain_per_s;
        }
        let inst = self.drain_acc as f64 * 1e9 / dt as f64;
        let a = decay_alpha(dt, self.cfg.ewma_half_life_ns);
        self.drain_per_s + a * (inst - self.drain_per_s)
    }

    /// A request was delivered to this backend's rx queue.
    pub fn on_dispatch(&mut self, now_ns: u64) {
        if !self.drain_seen {
            self.drain_seen = true;
            self.drain_last_ns = now_ns;
        }
        self.unconsumed = self.unconsumed.saturating_add(1);
        self.in_flight = self.in_flight.saturating_add(1);
    }

    /// A reply arrived `latency_ns` after dispatch; `ok` is false for an error status.
    pub fn on_reply(&mut self, latency_ns: u64, ok: bool, now_ns: u64) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let hl = self.cfg.ewma_half_life_ns;
        self.latency.add(latency_ns as f64, now_ns, hl);
        self.errors.add(if ok { 0.0 } else { 1.0 }, now_ns, hl);
        self.stats.replies += 1;
        if !ok {
            self.stats.errors += 1;
        }
    }

    /// A request that opens a session was accepted `latency_ns` after dispatch: a reply, whose
    /// outcome comes when the session ends ([`Self::on_sessions_ended`]).
    pub fn on_accepted(&mut self, latency_ns: u64, now_ns: u64) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.latency
            .add(latency_ns as f64, now_ns, self.cfg.ewma_half_life_ns);
        self.stats.replies += 1;
    }

    /// `ended` sessions the backend carried ended, `broken` of them broken by it (an
    /// established connection its application reset): each is an outcome like a reply's, a
    /// broken one an error. At most [`SESSION_SAMPLES`] samples per call, in proportion, so a
    /// burst of ends moves the error rate as much as that many replies would, no more.
    pub fn on_sessions_ended(&mut self, ended: u16, broken: u16, now_ns: u64) {
        let (ended, broken) = (u32::from(ended), u32::from(broken.min(ended)));
        let samples = ended.min(SESSION_SAMPLES);
        // Broken ones rounded up: one broken session among many is still seen.
        let bad = (broken * samples).div_ceil(ended.max(1));
        let hl = self.cfg.ewma_half_life_ns;
        for k in 0..samples {
            // Spread through the samples: the last ones weigh most.
            let is_bad = (k + 1) * bad / samples > k * bad / samples;
            self.errors.add(if is_bad { 1.0 } else { 0.0 }, now_ns, hl);
        }
        self.stats.sessions_broken += u64::from(broken);
    }

    /// `n` requests in flight here will get no reply from this backend (re-dispatched elsewhere
    /// or failed back); they stop counting as in flight. Their rx buffers stay unconsumed until
    /// [`BackendHealth::on_consumed`] says otherwise.
    pub fn on_abandon(&mut self, n: u32) {
        self.in_flight = self.in_flight.saturating_sub(n);
    }

    /// The backend reported its load, 0 (idle) ..= 1000 (saturated); larger values are clamped.
    pub fn on_load_report(&mut self, load: u16, now_ns: u64) {
        self.load = Some((load.min(LOAD_MAX), now_ns));
        self.stats.load_reports += 1;
    }

    /// Requests dispatched and not yet answered.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Requests delivered and not yet consumed from the rx queue.
    pub fn unconsumed(&self) -> u32 {
        self.unconsumed
    }

    /// Drain-rate EWMA in rx buffers per second, decayed to `now_ns`.
    pub fn drain_per_s(&self, now_ns: u64) -> f64 {
        self.projected_drain(now_ns)
    }

    /// Reply latency EWMA in nanoseconds, if any reply was seen.
    pub fn latency_ns(&self) -> Option<f64> {
        self.latency.value
    }

    /// Error-fraction EWMA in [0, 1], if any reply was seen.
    pub fn error_rate(&self) -> Option<f64> {
        self.errors.value
    }

    fn observed(&self, now_ns: u64) -> Observed {
        let free_frac =
            (self.ring_size > 0).then(|| f64::from(self.n_free) / f64::from(self.ring_size));
        // Nothing waiting: draining is not in question.
        let drain_score = if self.unconsumed == 0 {
            1.0
        } else {
            // The rate that clears the backlog within the latency target.
            let needed =
                f64::from(self.unconsumed) * 1e9 / self.cfg.latency_target_ns.max(1) as f64;
            (self.projected_drain(now_ns) / needed).min(1.0)
        };
        Observed {
            free_frac,
            drain_score,
        }
    }

    fn fresh_load(&self, now_ns: u64) -> Option<u16> {
        let (load, at) = self.load?;
        (now_ns.saturating_sub(at) <= self.cfg.load_report_ttl_ns).then_some(load)
    }

    /// Does the fresh report contradict the observation? `None` when there is no fresh report.
    fn contradiction(&self, obs: Observed, now_ns: u64) -> Option<bool> {
        let load = self.fresh_load(now_ns)?;
        let free = obs.free_frac.unwrap_or(1.0);
        let stuck = self.unconsumed > 0 && obs.drain_score < 0.1 && free < 0.25;
        let flowing = obs.drain_score >= 0.9 && free >= 0.5;
        Some((load <= self.cfg.load_low && stuck) || (load >= self.cfg.load_high && flowing))
    }

    /// Health score in [0, 1] at `now_ns`, without changing state.
    pub fn score(&self, now_ns: u64) -> f64 {
        let w = &self.cfg.weights;
        let obs = self.observed(now_ns);
        let mut sum = 0.0;
        let mut total = 0.0;
        let geometric = self.cfg.combine == Combine::Geometric;
        let mut add = |weight: f64, metric: Option<f64>| {
            if let Some(m) = metric {
                if weight > 0.0 {
                    let m = m.clamp(0.0, 1.0);
                    sum += weight * if geometric { m.max(GEO_FLOOR).ln() } else { m };
                    total += weight;
                }
            }
        };
        let ok = self.cfg.free_rx_ok_fraction.max(f64::MIN_POSITIVE);
        add(w.free_rx, obs.free_frac.map(|f| f / ok));
        add(w.drain, self.drain_seen.then_some(obs.drain_score));
        let target = self.cfg.latency_target_ns.max(1) as f64;
        add(
            w.latency,
            self.latency.value.map(|l| target / l.max(target)),
        );
        add(w.errors, self.errors.value.map(|e| 1.0 - e));
        add(
            w.in_flight,
            Some(1.0 - f64::from(self.in_flight) / f64::from(self.cfg.in_flight_limit.max(1))),
        );
        let load = if self.suspect {
            // Trust the queue: as busy as its worse observed metric says.
            Some(
                obs.drain_score
                    .min(obs.free_frac.map_or(1.0, |f| f / ok).min(1.0)),
            )
        } else {
            self.fresh_load(now_ns)
                .map(|l| 1.0 - f64::from(l) / f64::from(LOAD_MAX))
        };
        add(w.load, load);
        if total > 0.0 && geometric {
            (sum / total).exp()
        } else if total > 0.0 {
            sum / total
        } else {
            1.0
        }
    }

    /// Re-evaluates the load-report cross-check and rotation at `now_ns`; returns the score.
    /// Call it once per frame (or per health tick) for each backend.
    pub fn refresh(&mut self, now_ns: u64) -> f64 {
        self.fold_drain(now_ns);
        let obs = self.observed(now_ns);
        match self.contradiction(obs, now_ns) {
            // No fresh report: nothing to suspect, and the load metric drops out anyway.
            None => {
                self.suspect = false;
                self.verdict_since = None;
            }
            Some(contradicts) => {
                // While trusted we time contradictions; while suspect, agreements.
                if contradicts != self.suspect {
                    let since = *self.verdict_since.get_or_insert(now_ns);
                    let hold = if self.suspect {
                        self.cfg.suspect_clear_ns
                    } else {
                        self.cfg.suspect_after_ns
                    };
                    if now_ns.saturating_sub(since) >= hold {
                        self.suspect = !self.suspect;
                        self.verdict_since = None;
                        if self.suspect {
                            self.stats.reports_suspected += 1;
                        }
                    }
                } else {
                    self.verdict_since = None;
                }
            }
        }
        let s = self.score(now_ns);
        if self.in_rotation && s < self.cfg.threshold {
            self.in_rotation = false;
            self.stats.left_rotation += 1;
        } else if !self.in_rotation && s >= self.cfg.rejoin_threshold {
            self.in_rotation = true;
        }
        self.last_score = s;
        s
    }

    /// Whether the backend is in rotation, as of the last [`BackendHealth::refresh`].
    pub fn in_rotation(&self) -> bool {
        self.in_rotation
    }

    /// The score computed by the last [`BackendHealth::refresh`].
    pub fn last_score(&self) -> f64 {
        self.last_score
    }

    /// Whether the backend's load report is currently distrusted (see the module docs).
    pub fn load_report_suspect(&self) -> bool {
        self.suspect
    }

    /// Counters since creation.
    pub fn stats(&self) -> HealthStats {
        self.stats
    }
}

#[cfg(test)]
mod tests;
