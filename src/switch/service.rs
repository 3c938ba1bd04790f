//! A service: a named group of backend ports behind one balancing policy, with the health and
//! failover state of each member.

use std::collections::VecDeque;

use serde::Deserialize;

use super::failover::{Failover, FailoverConfig, FailoverConfigError};
use super::health::{BackendHealth, HealthConfig, HealthConfigError};
use super::inflight::Token;
use super::policy::{Candidate, PickRequest, Policy, PolicyConfig, PolicyError};
use crate::port::{Drain, PortId};

/// Service identifier (index into the switch's service table; `dst` of requests to it).
pub type ServiceId = u32;

/// How a service balances, judges health and fails over.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    /// Balancing policy.
    pub policy: PolicyConfig,
    /// Health metrics and weights.
    pub health: HealthConfig,
    /// Stall window, ejection backoff, slow start, panic threshold.
    pub failover: FailoverConfig,
    /// A request not answered this long after it was accepted is failed back to its sender.
    /// Default 1 s.
    pub request_timeout_ns: u64,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            policy: PolicyConfig::default(),
            health: HealthConfig::default(),
            failover: FailoverConfig::default(),
            request_timeout_ns: 1_000_000_000,
        }
    }
}

/// Why a [`ServiceConfig`] was refused. [`ServiceConfigError::field`] names the setting.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServiceConfigError {
    /// The policy settings are invalid.
    #[error("policy: {0}")]
    Policy(#[from] PolicyError),
    /// The health settings are invalid.
    #[error(transparent)]
    Health(#[from] HealthConfigError),
    /// The failover settings are invalid.
    #[error(transparent)]
    Failover(#[from] FailoverConfigError),
    /// The request deadline is 0: every request would fail back at once.
    #[error("request_timeout_ns must be greater than 0 (default 1 s)")]
    ZeroTimeout,
}

impl ServiceConfigError {
    /// The setting at fault as a dotted path in a service table (`health.threshold`,
    /// `policy.maglev.table_size`, `request_timeout_ns`).
    pub fn field(&self) -> String {
        match self {
            Self::Policy(e) if e.field() == "members" => "members".into(),
            Self::Policy(e) => format!("policy.{}", e.field()),
            Self::Health(e) => format!("health.{}", e.field()),
            Self::Failover(e) => format!("failover.{}", e.field()),
            Self::ZeroTimeout => "request_timeout_ns".into(),
        }
    }
}

impl ServiceConfig {
    /// Checks every setting ([`PolicyConfig::validate`], [`HealthConfig::validate`],
    /// [`FailoverConfig::validate`]) and a request deadline above 0.
    pub fn validate(&self) -> Result<(), ServiceConfigError> {
        self.policy.validate()?;
        self.health.validate()?;
        self.failover.validate()?;
        if self.request_timeout_ns == 0 {
            return Err(ServiceConfigError::ZeroTimeout);
        }
        Ok(())
    }

    /// [`ServiceConfig::validate`] plus the policy's checks against `n_backends`
    /// ([`PolicyConfig::validate_for`]).
    pub fn validate_for(&self, n_backends: usize) -> Result<(), ServiceConfigError> {
        self.validate()?;
        self.policy.validate_for(n_backends)?;
        Ok(())
    }
}

/// Per-service counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ServiceStats {
    /// Requests addressed to the service.
    pub requests: u64,
    /// Deliveries to backends (first dispatches and re-dispatches).
    pub dispatches: u64,
    /// Replies delivered to frontends.
    pub replies: u64,
    /// Replies with an error status from a backend.
    pub backend_errors: u64,
    /// Requests re-dispatched after their backend was ejected or broke.
    pub redispatches: u64,
    /// Replies dropped because their request had been re-dispatched or answered already.
    pub late_replies_dropped: u64,
    /// Requests failed back with an error status (no backend before the deadline).
    pub failed_back: u64,
    /// Stalls detected.
    pub stalls: u64,
    /// Ejections.
    pub ejections: u64,
    /// Returns from ejection.
    pub returns: u64,
    /// Backends found not scheduled (their vCPU waited for a CPU) while work waited for them
    /// past the stall window: not stalls, never ejections.
    pub descheduled: u64,
}

/// Where a member stands in its service's membership (apart from its health and failover
/// status, which say whether it serves well).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// Takes new requests.
    Active,
    /// Drained on purpose: takes no new requests, answers those it has (the stall rule and
    /// the deadline still apply to them), then leaves.
    Draining,
    /// Left the service: its slot is kept, with its counters, so member indices never move;
    /// the same port joining again takes the slot back.
    Gone,
}

impl MemberState {
    /// `active`, `draining` or `gone`: the name in snapshots and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Draining => "draining",
            Self::Gone => "gone",
        }
    }
}

/// One backend of a service.
pub(crate) struct Member {
    pub port: PortId,
    pub state: MemberState,
    pub base_weight: f64,
    pub health: BackendHealth,
    pub dispatched: u64,
    pub bytes: u64,
    /// Replies counted at the last sweep.
    pub last_replies: u64,
    /// Progress counter fed to the failover's stall detection (see [`Service::observe`]).
    pub progress: u16,
    /// Sessions its port holds, as of the last sweep and the answers since.
    pub held: u32,
}

impl Member {
    pub fn new(port: PortId, base_weight: f64, health: HealthConfig) -> Self {
        Self {
            port,
            state: MemberState::Active,
            base_weight,
            health: BackendHealth::new(health),
            dispatched: 0,
            bytes: 0,
            last_replies: 0,
            progress: 0,
            held: 0,
        }
    }
}

pub(crate) struct Service {
    pub name: String,
    pub cfg: ServiceConfig,
    pub members: Vec<Member>,
    /// What the policy sees, one entry per member, kept up to date in place.
    pub candidates: Vec<Candidate>,
    pub policy: Box<dyn Policy>,
    pub failover: Failover,
    /// Accepted requests waiting for a backend, oldest first.
    pub wait: VecDeque<Token>,
    pub stats: ServiceStats,
    /// In panic mode as of the last [`Service::refresh`]: too few backends usable, by stalls
    /// (the failover's own panic) or by health.
    pub panic: bool,
    /// Members passed over for the request being dispatched, with their weights.
    excluded: Vec<(usize, f64)>,
    /// Removed ([`Switch::remove_service`](super::Switch::remove_service)): it has no member
    /// and requests to it fail back at once. Its slot keeps its id until a service of the same
    /// name takes it again.
    pub removed: bool,
}

impl Service {
    pub fn new(
        name: &str,
        cfg: ServiceConfig,
        members: Vec<Member>,
        policy: Box<dyn Policy>,
        now_ns: u64,
    ) -> Self {
        let candidates = members
            .iter()
            .map(|m| Candidate::new(m.port, m.base_weight))
            .collect();
        let failover = Failover::new(cfg.failover, members.len(), now_ns);
        let mut svc = Self {
            name: name.to_string(),
            cfg,
            members,
            candidates,
            policy,
            failover,
            wait: VecDeque::new(),
            stats: ServiceStats::default(),
            panic: false,
            excluded: Vec::new(),
            removed: false,
        };
        svc.refresh(now_ns);
        svc
    }

    /// The member the policy picks for `req`, among those not passed over.
    pub fn pick(&mut self, req: &PickRequest) -> Option<usize> {
        self.policy.pick(&self.candidates, req)
    }

    /// Passes member `i` over until [`Service::end_pick`] (it has no room, or it broke).
    pub fn pass_over(&mut self, i: usize) {
        let c = &mut self.candidates[i];
        self.excluded.push((i, c.weight));
        c.weight = 0.0;
    }

    /// The dispatch is over: members passed over get their weights back.
    pub fn end_pick(&mut self) {
        for (i, w) in self.excluded.drain(..) {
            self.candidates[i].weight = w;
        }
    }

    /// Request `req` went to member `i`.
    pub fn on_sent(&mut self, i: usize, req: &PickRequest, now_ns: u64) {
        self.policy.on_sent(i, req);
        let m = &mut self.members[i];
        m.health.on_dispatch(now_ns);
        m.dispatched += 1;
        m.bytes += u64::from(req.bytes);
        let c = &mut self.candidates[i];
        c.in_flight += 1;
        c.queued += 1;
        self.stats.dispatches += 1;
    }

    /// Member `i` answered a request dispatched `latency_ns` ago, with a load report or not.
    pub fn on_reply(
        &mut self,
        i: usize,
        latency_ns: u64,
        ok: bool,
        load: Option<u16>,
        now_ns: u64,
    ) {
        let m = &mut self.members[i];
        m.health.on_reply(latency_ns, ok, now_ns);
        if let Some(load) = load {
            m.health.on_load_report(load, now_ns);
        }
        let c = &mut self.candidates[i];
        c.in_flight = c.in_flight.saturating_sub(1);
        if !ok {
            self.stats.backend_errors += 1;
        }
    }

    /// Member `i` accepted, `latency_ns` after dispatch, a request that leaves a session
    /// behind (its port [holds sessions](crate::port::Port::holds_sessions)): the session counts
    /// as held at once, not only from the next sweep, so a burst of new connections spreads by
    /// what each holds. Its outcome (an error or not) is the session's, counted when it ends
    /// ([`BackendHealth::on_sessions_ended`](super::health::BackendHealth::on_sessions_ended)):
    /// a backend that accepts every connection and resets each is failing every one.
    pub fn on_session_opened(&mut self, i: usize, latency_ns: u64, now_ns: u64) {
        let m = &mut self.members[i];
        m.health.on_accepted(latency_ns, now_ns);
        m.held = m.held.saturating_add(1);
        let c = &mut self.candidates[i];
        c.in_flight = c.in_flight.saturating_sub(1);
        c.held = m.held;
    }

    /// A request dispatched to member `i` passed its deadline unanswered.
    pub fn on_abandon(&mut self, i: usize) {
        self.members[i].health.on_abandon(1);
        let c = &mut self.candidates[i];
        c.in_flight = c.in_flight.saturating_sub(1);
    }

    /// Member `i`'s `n` unanswered requests were taken back for re-dispatch (they are at the
    /// front of the wait queue already).
    pub fn on_recalled(&mut self, i: usize, n: usize) {
        self.members[i].health.on_abandon(n as u32);
        self.candidates[i].in_flight = 0;
        self.stats.redispatches += n as u64;
    }

    /// What the sweep saw of member `i`'s port: `consumed` deliveries drained since the last
    /// sweep, and its rx buffers now. Feeds health and stall detection.
    pub fn observe(&mut self, i: usize, consumed: u16, drain: Drain, now_ns: u64) {
        let m = &mut self.members[i];
        m.held = drain.held;
        if consumed > 0 {
            m.health.on_consumed(u32::from(consumed), now_ns);
        }
        m.health
            .on_free_rx(u32::from(drain.free), u32::from(drain.capacity));
        // A backend makes progress when it drains what was delivered (its rx consumer index
        // moves) and answers what it took (replies arrive); it is pending while either is
        // owed. One that stops draining, or drains but never answers, stops making progress
        // and is stalled after the window.
        let replies = m.health.stats().replies;
        let drained = consumed > 0 || m.health.unconsumed() == 0;
        let answered = replies != m.last_replies || m.health.in_flight() == 0;
        m.last_replies = replies;
        if drained && answered {
            m.progress = m.progress.wrapping_add(1);
        }
        let pending = m.health.unconsumed() > 0 || m.health.in_flight() > 0;
        self.failover.observe(i, m.progress, pending, now_ns);
    }

    /// Recomputes every candidate's weight: base x health score x failover factor, 0 when out
    /// of rotation (unless the service is in panic mode).
    pub fn refresh(&mut self, now_ns: u64) {
        // A backend out of rotation by health is as unusable as an ejected one: when too few
        // are left the service panics and uses every draining backend. Without this, a service
        // whose backends all fell below the health threshold (e.g. its only backend answers
        // with errors) would hold every request until its deadline, and the backends, given
        // nothing to answer, could never win their score back.
        // Only active members count: a service whose members drain or left is as large as
        // what it may still use.
        let (mut usable_count, mut n) = (0usize, 0usize);
        for (i, m) in self.members.iter_mut().enumerate() {
            m.health.refresh(now_ns);
            if m.state != MemberState::Active {
                continue;
            }
            n += 1;
            if self.failover.accepts_without_panic(i) && m.health.in_rotation() {
                usable_count += 1;
            }
        }
        let health_panic =
            n > 0 && (usable_count as f64) < self.cfg.failover.panic_threshold * n as f64;
        let panic = self.failover.panic() || health_panic;
        self.panic = panic;
        for (i, m) in self.members.iter_mut().enumerate() {
            let score = m.health.last_score();
            // Panic mode overrides the health threshold, never a stall: a backend whose queue
            // stopped draining cannot serve, however few the others are. Nor a member drained
            // on purpose, or gone.
            let draining = self.failover.accepts_without_panic(i);
            let usable =
                m.state == MemberState::Active && draining && (panic || m.health.in_rotation());
            let c = &mut self.candidates[i];
            c.weight = if usable {
                m.base_weight * score.max(0.05) * self.failover.weight_factor(i, now_ns).max(0.01)
            } else {
                0.0
            };
            c.in_flight = m.health.in_flight();
            c.held = m.held;
            c.queued = m.health.unconsumed();
            c.drain_per_s = m.health.drain_per_s(now_ns);
        }
        self.policy.on_frame(&self.candidates, now_ns);
    }
}
