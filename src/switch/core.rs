//! [`Switch`]: the core. Holds the ports, the services and the in-flight table; each
//! [`Switch::poll`] takes what ports sent and routes it by kind. Ports are added, removed,
//! revived and taken down in [`ports`](super::ports).
//!
//! The rest of the data path lives with the state it owns: a port's outbox and notifications
//! in [`outbox`](super::outbox), dispatch and answers in [`dispatch`](super::dispatch), health
//! and failover rounds in [`sweep`](super::sweep); services and their members are added,
//! drained and removed in [`membership`](super::membership).

use std::sync::Arc;

use vm_memory::GuestMemoryBackend;

use super::clock::Clock;
use super::dispatch::Dispatch;
use super::failover::Event;
use super::inflight::{InflightTable, PoolConfig, PoolError, Request, Stage, Target, Token};
use super::membership::Departure;
use super::outbox::Outbound;
use super::policy::PickRequest;
use super::service::Service;
use super::slot::PortSlot;
use super::stats::Totals;
use super::SwitchError;
use crate::port::{PortId, RunQueueClock};
use crate::virtio::TxChain;
use crate::wire::{MsgKind, Notify, Status};

/// The `src` the switch stamps on messages it makes itself (error replies, hellos).
pub const SWITCH_PORT: PortId = u32::MAX;

/// Data-path settings that are not per service.
#[derive(Clone, Copy, Debug, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SwitchConfig {
    /// Most messages taken from one port per poll, so one busy port cannot starve the rest.
    pub batch: usize,
    /// Health and failover sweep period.
    pub sweep_interval_ns: u64,
    /// Deadline of requests addressed to a port rather than a service.
    pub port_request_timeout_ns: u64,
    /// The in-flight table.
    pub pool: PoolConfig,
}

/// Largest [`SwitchConfig::batch`]: the switch keeps a buffer of this many chains.
pub const MAX_BATCH: usize = 65_536;

/// Why a [`SwitchConfig`] was refused. [`SwitchConfigError::field`] names the setting.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SwitchConfigError {
    /// `batch` is 0 (nothing would ever be taken) or above [`MAX_BATCH`].
    #[error("batch {0} must be in 1..={MAX_BATCH} (default 64)")]
    Batch(usize),
    /// A period or deadline is 0.
    #[error("{field} must be greater than 0")]
    Zero {
        /// The setting.
        field: &'static str,
    },
    /// The in-flight pool settings are invalid.
    #[error(transparent)]
    Pool(#[from] PoolError),
}

impl SwitchConfigError {
    /// The setting at fault, as named in a `[switch]` table (`batch`, `pool.max_subpools`).
    pub fn field(&self) -> String {
        match self {
            Self::Batch(_) => "batch".into(),
            Self::Zero { field } => (*field).into(),
            Self::Pool(e) => format!("pool.{}", e.field().unwrap_or("")),
        }
    }
}

impl SwitchConfig {
    /// Checks every setting: `batch` in 1..=[`MAX_BATCH`], the sweep interval and the port
    /// request deadline above 0, and the pool ([`PoolConfig::validate`]).
    pub fn validate(&self) -> Result<(), SwitchConfigError> {
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return Err(SwitchConfigError::Batch(self.batch));
        }
        for (field, v) in [
            ("sweep_interval_ns", self.sweep_interval_ns),
            ("port_request_timeout_ns", self.port_request_timeout_ns),
        ] {
            if v == 0 {
                return Err(SwitchConfigError::Zero { field });
            }
        }
        self.pool.validate()?;
        Ok(())
    }
}

impl Default for SwitchConfig {
    fn default() -> Self {
        Self {
            batch: 64,
            sweep_interval_ns: 1_000_000,
            port_request_timeout_ns: 1_000_000_000,
            pool: PoolConfig::default(),
        }
    }
}

/// The switch. Generic over the guest memory type its ports' messages live in; it never learns
/// what a port is (a KVM guest's virtqueues, a host thread, a vhost-user frontend): it drives
/// every port through the [`Port`] seam.
pub struct Switch<M> {
    pub(super) cfg: SwitchConfig,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) ports: Vec<PortSlot<M>>,
    pub(super) services: Vec<Service>,
    pub(super) inflight: InflightTable,
    pub(super) totals: Totals,
    /// Reused buffers, so the hot path and the sweep never allocate.
    pub(super) scratch: Vec<TxChain>,
    pub(super) tokens: Vec<Token>,
    pub(super) events: Vec<Event>,
    pub(super) next_sweep_ns: u64,
    /// How long the thread running the switch has waited for a CPU (see
    /// [`Switch::set_run_queue_clock`]).
    pub(super) run_queue: Option<Box<dyn RunQueueClock>>,
    /// Members that drained and left, until [`Switch::take_departed`].
    pub(super) departed: Vec<Departure>,
    /// The encoded directory hellos and updates carry, made when one is first delivered after
    /// a change ([`Switch::directory_changed`] drops it): not once per delivery attempt.
    pub(super) directory: Option<Vec<u8>>,
}

impl<M: GuestMemoryBackend + Clone + Send + 'static> Switch<M> {
    /// A switch with no ports, reading time from `clock`.
    pub fn new(cfg: SwitchConfig, clock: Arc<dyn Clock>) -> Result<Self, SwitchError> {
        cfg.validate()?;
        let inflight = InflightTable::new(cfg.pool)?;
        let now = clock.now_ns();
        Ok(Self {
            cfg,
            clock,
            ports: Vec::new(),
            services: Vec::new(),
            inflight,
            totals: Totals::default(),
            scratch: Vec::with_capacity(cfg.batch),
            tokens: Vec::new(),
            events: Vec::new(),
            next_sweep_ns: now,
            run_queue: None,
            departed: Vec::new(),
            directory: None,
        })
    }

    /// Tells the switch how long the thread that runs it has waited for a CPU. Time the switch
    /// spent waiting counts toward no backend's stall: it delivered and looked at nothing then.
    pub fn set_run_queue_clock(&mut self, clock: Box<dyn RunQueueClock>) {
        self.run_queue = Some(clock);
    }

    /// One pass of the data path: outboxes, waiting requests, then up to `batch` new messages
    /// from every port, notifications, and a sweep when one is due. Returns the messages moved.
    pub fn poll(&mut self) -> usize {
        let now = self.clock.now_ns();
        let mut work = 0;
        for d in 0..self.ports.len() {
            if !self.ports[d].down && !self.ports[d].outbox.is_empty() {
                work += self.drain_outbox(d as PortId, now);
            }
        }
        for s in 0..self.services.len() {
            work += self.dispatch_waiting(s, now);
        }
        self.flush_urgent(now);
        let mut scratch = std::mem::take(&mut self.scratch);
        for p in 0..self.ports.len() {
            if self.ports[p].down {
                continue;
            }
            scratch.clear();
            let r = self.ports[p].port.take_sent(self.cfg.batch, &mut scratch);
            for c in scratch.drain(..) {
                // An immediate message is published and notified before the next is handled.
                let immediate = c.header.notify() == Notify::Immediate;
                self.handle(p as PortId, c, now);
                if immediate {
                    self.flush_urgent(now);
                }
                work += 1;
            }
            if r.is_err() {
                self.take_down(p as PortId, true, now);
            }
        }
        self.scratch = scratch;
        self.notify_ports(now);
        if now >= self.next_sweep_ns {
            self.sweep(now);
            self.next_sweep_ns = now.saturating_add(self.cfg.sweep_interval_ns);
        }
        work
    }

    /// Before the caller sleeps: asks every port's guest to kick on new messages (and on new
    /// buffers where deliveries wait). Returns whether work is already there, in which case
    /// the caller must not sleep.
    pub fn prepare_idle(&mut self) -> bool {
        let mut busy = false;
        for p in self.ports.iter_mut().filter(|p| !p.down) {
            busy |= p.port.arm_kicks(!p.outbox.is_empty());
        }
        busy || self.services.iter().any(|s| !s.wait.is_empty())
    }

    /// Back to polling after a sleep: kicks off again.
    pub fn resume_polling(&mut self) {
        for p in self.ports.iter_mut().filter(|p| !p.down) {
            p.port.disarm_kicks();
        }
    }

    /// Nanoseconds until the next sweep or the next withheld notification is due (the longest
    /// a caller may sleep).
    pub fn until_next_sweep(&self) -> u64 {
        let due = self
            .ports
            .iter()
            .filter_map(|p| p.notify_due())
            .fold(self.next_sweep_ns, u64::min);
        due.saturating_sub(self.clock.now_ns())
    }

    /// Sets port `port`'s coalescing deadline: the longest a notification its guest asked for
    /// may be withheld because everything new for it was deferred (`Notify::Deferred`), in
    /// ns. 0 notifies deferred messages within the poll that delivers them, like per-poll
    /// ones. Default [`DEFAULT_NOTIFY_DEADLINE_NS`](super::slot::DEFAULT_NOTIFY_DEADLINE_NS)
    /// (1 ms). Kept when the port is revived.
    pub fn set_notify_deadline(&mut self, port: PortId, ns: u64) -> Result<(), SwitchError> {
        let slot = self
            .ports
            .get_mut(port as usize)
            .ok_or(SwitchError::UnknownPort(port))?;
        slot.notify_deadline_ns = ns;
        Ok(())
    }

    // ---- routing by kind ------------------------------------------------------------------

    pub(super) fn handle(&mut self, p: PortId, c: TxChain, now: u64) {
        // The port may have gone down while the switch handled an earlier message of the same
        // batch: the rest of the batch dies with it (accepting a request for a frontend that
        // is down would leave it in flight for good).
        if self.ports[p as usize].down {
            return;
        }
        let st = &mut self.ports[p as usize].stats;
        st.sent += 1;
        st.bytes_sent += u64::from(c.header.len());
        match c.header.kind() {
            Some(MsgKind::Request) => self.accept_request(p, c, now),
            Some(MsgKind::Reply) => self.handle_reply(p, c, now),
            Some(MsgKind::OneWay) => self.route_oneway(p, c, now),
            Some(MsgKind::LoadReport) => {
                for &(s, i) in &self.ports[p as usize].member_of {
                    self.services[s as usize].members[i]
                        .health
                        .on_load_report(c.header.load(), now);
                }
                self.release(p, &c, now);
            }
            // Guests have nothing to say with a hello or a directory; page releases are taken
            // by ports that hand pages off (one that does not has none to release); `parse`
            // rejected unknown kinds.
            Some(
                MsgKind::Hello
                | MsgKind::DirectoryUpdate
                | MsgKind::PageRelease
                | MsgKind::PageReturn,
            )
            | None => self.release(p, &c, now),
        }
    }

    fn route_oneway(&mut self, p: PortId, c: TxChain, now: u64) {
        let dst = if c.header.dst_is_service() {
            self.services
                .get_mut(c.header.dst() as usize)
                .and_then(|svc| {
                    let req = PickRequest {
                        class: c.header.class(),
                        key: c.header.key(),
                        bytes: c.header.len(),
                    };
                    svc.pick(&req).map(|i| svc.members[i].port)
                })
        } else {
            Some(c.header.dst())
        };
        match dst.filter(|&d| !self.port_down(d)) {
            Some(d) => self.offer_oneway(d, p, c, now),
            None => {
                self.release(p, &c, now);
                self.undeliverable(p, c.header.msg_id(), Status::Unreachable, now);
            }
        }
    }

    fn accept_request(&mut self, p: PortId, c: TxChain, now: u64) {
        let slot = &self.ports[p as usize];
        if self.inflight.held_by(p) >= slot.max_held {
            // More requests than its queue can hold: the port handed over a message it still
            // held. A protocol fault of that port alone.
            log::warn!(
                "port {p} ({}) has more requests in flight than its queue holds",
                slot.name
            );
            self.take_down(p, true, now);
            return;
        }
        self.totals.requests_accepted += 1;
        self.ports[p as usize].stats.requests += 1;
        let (target, timeout) = if c.header.dst_is_service() {
            let s = c.header.dst();
            match self.services.get_mut(s as usize).filter(|svc| !svc.removed) {
                Some(svc) => {
                    svc.stats.requests += 1;
                    (Some(Target::Service(s)), svc.cfg.request_timeout_ns)
                }
                None => (None, 0),
            }
        } else {
            (
                Some(Target::Port(c.header.dst())),
                self.cfg.port_request_timeout_ns,
            )
        };
        let record = Request {
            frontend: p,
            chain: c,
            target: target.unwrap_or(Target::Port(SWITCH_PORT)),
            stage: Stage::Waiting,
            backend: None,
            accepted_ns: now,
            dispatched_ns: 0,
            deadline_ns: now.saturating_add(timeout),
        };
        let Ok(tok) = self.inflight.insert(record) else {
            // In-flight table full: refuse at once, never silently.
            self.totals.refused += 1;
            self.release(p, &c, now);
            self.notice(p, c.header.msg_id(), Status::NoBackend, now);
            return;
        };
        match target {
            None => self.fail_back(tok, Status::Unreachable, now),
            Some(Target::Port(d)) if self.port_down(d) => {
                self.fail_back(tok, Status::Unreachable, now)
            }
            Some(Target::Port(d)) => self.offer(d, Outbound::Request(tok), now),
            Some(Target::Service(s)) => {
                let s = s as usize;
                let queued = !self.services[s].wait.is_empty();
                if queued || matches!(self.try_dispatch(s, tok, now), Dispatch::NoRoom) {
                    self.services[s].wait.push_back(tok);
                }
            }
        }
    }

    // ---- ports going down -----------------------------------------------------------------
}
