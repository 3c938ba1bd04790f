//! [`Switch`]: the core. Holds the ports, the services and the in-flight table; adds, removes
//! and revives ports; each [`Switch::poll`] takes what ports sent and routes it by kind; a port
//! that breaks or leaves is taken down here.
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
use super::health::BackendHealth;
use super::inflight::{InflightTable, PoolConfig, PoolError, Request, Stage, Target, Token};
use super::membership::Departure;
use super::outbox::Outbound;
use super::policy::PickRequest;
use super::service::{Service, ServiceId};
use super::slot::PortSlot;
use super::stats::Totals;
use super::SwitchError;
use crate::port::{NativePort, Notifier, Port, PortId, RunQueueClock};
use crate::virtio::{DevicePort, TxChain};
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
    scratch: Vec<TxChain>,
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

    /// Adds a native port (vmq virtqueues over `dev`, its guest told through `notifier`); see
    /// [`Switch::attach`].
    pub fn add_port(
        &mut self,
        name: &str,
        dev: DevicePort<M>,
        notifier: Box<dyn Notifier>,
    ) -> Result<PortId, SwitchError> {
        self.attach(name, Box::new(NativePort::new(dev, notifier)))
    }

    /// Adds a port of any kind; its guest gets a hello (its port id and the directory) as soon
    /// as it posts a buffer.
    pub fn attach(&mut self, name: &str, port: Box<dyn Port<M>>) -> Result<PortId, SwitchError> {
        if self.port_id(name).is_some() {
            return Err(SwitchError::DuplicateName(name.to_string()));
        }
        let id = self.ports.len() as PortId;
        self.ports.push(PortSlot::new(name, port));
        self.directory_changed();
        Ok(id)
    }

    /// The id the next port [`Switch::attach`]ed gets.
    pub fn next_port_id(&self) -> PortId {
        self.ports.len() as PortId
    }

    /// The id of the port called `name`.
    pub fn port_id(&self, name: &str) -> Option<PortId> {
        self.ports
            .iter()
            .position(|p| p.name == name)
            .map(|i| i as PortId)
    }

    /// The id of the service called `name` (not one that was removed).
    pub fn service_id(&self, name: &str) -> Option<ServiceId> {
        self.services
            .iter()
            .position(|s| s.name == name && !s.removed)
            .map(|i| i as ServiceId)
    }

    /// Port `id` as the switch drives it, for inspection (downcast with [`Port::as_any`]).
    pub fn port(&self, id: PortId) -> Option<&dyn Port<M>> {
        self.ports.get(id as usize).map(|p| &*p.port)
    }

    /// Requests accepted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Whether a port is down (broken or removed).
    pub fn port_down(&self, port: PortId) -> bool {
        self.ports.get(port as usize).is_none_or(|p| p.down)
    }

    /// Takes a port out (its VM stopped or reset its device): what it published before it went
    /// is handled first (a reply it gave still reaches its frontend, copied out if it must
    /// wait); then its requests are dropped and their late replies counted, and work for it
    /// fails over or back.
    pub fn remove_port(&mut self, port: PortId) {
        let now = self.clock.now_ns();
        self.drain_departing(port, now);
        self.take_down(port, false, now);
    }

    /// Takes what departing port `p` had published: replies, one-way messages and load reports
    /// are handled as in [`Switch::poll`]; new requests are handed back (their frontend is
    /// leaving). At most the port's tx queue is taken: a chain is never taken twice while held.
    fn drain_departing(&mut self, p: PortId, now: u64) {
        let Some(slot) = self.ports.get(p as usize).filter(|s| !s.down) else {
            return;
        };
        let mut left = slot.max_held as usize;
        let mut scratch = std::mem::take(&mut self.scratch);
        while left > 0 && !self.ports[p as usize].down {
            scratch.clear();
            let r = self.ports[p as usize]
                .port
                .take_sent(self.cfg.batch.min(left), &mut scratch);
            left = left.saturating_sub(scratch.len());
            let taken = scratch.len();
            for c in scratch.drain(..) {
                if c.header.kind() == Some(MsgKind::Request) {
                    self.release(p, &c, now);
                } else {
                    self.handle(p, c, now);
                }
            }
            if r.is_err() || taken == 0 {
                break;
            }
        }
        self.scratch = scratch;
    }

    /// Brings a native port that went down back with fresh queues; see [`Switch::revive`].
    pub fn revive_port(
        &mut self,
        port: PortId,
        dev: DevicePort<M>,
        notifier: Box<dyn Notifier>,
    ) -> Result<(), SwitchError> {
        self.revive(port, Box::new(NativePort::new(dev, notifier)))
    }

    /// Brings a port that went down (removed, reset or broken) back: its guest reset its device
    /// and activated it again, or its VM was restarted. The port keeps its id, its name and its
    /// counters; as a backend it returns through the failover's slow start once its ejection
    /// time is over. Nothing of its old queues survives: requests it had in flight were
    /// answered or failed over when it went down.
    pub fn revive(&mut self, port: PortId, new: Box<dyn Port<M>>) -> Result<(), SwitchError> {
        let slot = self
            .ports
            .get_mut(port as usize)
            .ok_or(SwitchError::UnknownPort(port))?;
        if !slot.down {
            return Err(SwitchError::PortUp(port));
        }
        slot.revive(new);
        for &(s, i) in &slot.member_of {
            let svc = &mut self.services[s as usize];
            svc.members[i].health = BackendHealth::new(svc.cfg.health);
        }
        self.directory_changed();
        Ok(())
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

    fn handle(&mut self, p: PortId, c: TxChain, now: u64) {
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

    /// Drops from the services' wait queues every token whose request is no longer waiting
    /// (orphaned, failed back): wait queues hold only live requests, so they stay bounded by
    /// what the frontends can have in flight.
    pub(super) fn prune_waiting(&mut self) {
        let inflight = &self.inflight;
        for svc in &mut self.services {
            svc.wait
                .retain(|t| inflight.get(*t).is_some_and(|r| r.stage == Stage::Waiting));
        }
    }

    /// Port `p` broke (a guest fault: DEVICE_NEEDS_RESET) or was removed.
    pub(super) fn take_down(&mut self, p: PortId, fault: bool, now: u64) {
        let Some(e) = self.ports.get_mut(p as usize) else {
            return;
        };
        if e.down {
            return;
        }
        e.down = true;
        if fault {
            e.stats.faults += 1;
            self.totals.port_faults += 1;
            log::warn!("port {p} ({}) is down after a guest fault", e.name);
        } else {
            log::info!("port {p} ({}) removed", e.name);
        }
        e.port.close();
        // The directory update goes first, into every live outbox: a frontend hears that the
        // port is gone before it hears its requests there failed (which frees its window),
        // so it need not send another request to a port it could know was gone.
        self.directory_changed();
        // As a backend: out of every service, its work re-dispatched.
        let member_of = self.ports[p as usize].member_of.clone();
        let mut events = std::mem::take(&mut self.events);
        for (s, i) in member_of {
            let s = s as usize;
            events.clear();
            self.services[s].failover.force_eject(i, now, &mut events);
            self.services[s].stats.ejections += 1;
            self.redispatch(s, i);
            self.services[s].refresh(now);
        }
        self.events = events;
        // As a frontend: its requests are orphaned (late replies will be dropped); requests
        // others addressed to it directly fail back.
        let mut tokens = std::mem::take(&mut self.tokens);
        self.inflight.involving(p, &mut tokens);
        for &t in &tokens {
            let Some(frontend) = self.inflight.get(t).map(|r| r.frontend) else {
                continue;
            };
            if frontend == p {
                self.inflight.remove(t);
                self.totals.orphaned += 1;
                self.ports[p as usize].stats.orphaned += 1;
            } else {
                self.fail_back(t, Status::PortBroken, now);
            }
        }
        if !tokens.is_empty() {
            self.prune_waiting();
        }
        // What it sent that still waits in other ports' outboxes lives in queues it no longer
        // has (it reset, stopped or broke): nothing may be read from those chains any more, nor
        // released on its queues, which may be new ones by the time those ports drain. One-way
        // messages are dropped and counted; a reply it gave fails its request back, so the
        // frontend still gets exactly one answer.
        let mut stranded = 0u64;
        tokens.clear();
        for (d, e) in self.ports.iter_mut().enumerate() {
            if d != p as usize {
                e.forget_from(p, &mut stranded, &mut tokens);
            }
        }
        self.totals.oneway_undeliverable += stranded;
        self.ports[p as usize].stats.undeliverable += stranded;
        for &t in &tokens {
            self.fail_back_answering(t, now);
        }
        self.tokens = tokens;
        // What waited for it: senders get their chains back and an error.
        let outbox = std::mem::take(&mut self.ports[p as usize].outbox);
        self.ports[p as usize].notices = 0;
        for item in outbox {
            match item {
                Outbound::OneWay { src, chain } => {
                    self.release(src, &chain, now);
                    self.undeliverable(src, chain.header.msg_id(), Status::PortBroken, now);
                }
                Outbound::Request(t) => self.fail_back(t, Status::PortBroken, now),
                Outbound::Reply { backend, chain, .. } => self.release(backend, &chain, now),
                Outbound::CopiedReply { .. }
                | Outbound::Error { .. }
                | Outbound::Notice { .. }
                | Outbound::Hello
                | Outbound::Directory => {}
            }
        }
    }
}
