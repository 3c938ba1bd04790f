//! [`Switch`]: the data path. Reads what ports send, routes it, holds requests until their one
//! answer, and fails work over when a backend stops draining or breaks.

use std::sync::Arc;

use vm_memory::GuestMemoryBackend;

use super::clock::Clock;
use super::failover::{Event, Failover};
use super::health::BackendHealth;
use super::inflight::{Inflight, Stage, Target};
use super::policy::{new_policy, Candidate, PickRequest};
use super::pool::{BlockPool, PoolConfig, Token};
use super::port::{Backlog, Notifier, PortEntry, PortId};
use super::service::{Member, Service, ServiceConfig, ServiceId};
use super::stats::Totals;
use super::SwitchError;
use crate::virtio::{DeliverError, DevicePort, TxChain, RX_QUEUE, TX_QUEUE};
use crate::wire::{MsgHeader, MsgKind, Status};

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

/// Outcome of one dispatch attempt.
enum Dispatch {
    /// Delivered to a backend.
    Sent,
    /// No backend could take it now; it waits.
    NoRoom,
    /// It was answered (failed back) or dropped; stop tracking it here.
    Done,
}

/// The switch. Generic over the guest memory type of its ports; it never learns what a port
/// is (a KVM guest, a host thread, a vhost-user frontend).
pub struct Switch<M> {
    pub(super) cfg: SwitchConfig,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) ports: Vec<PortEntry<M>>,
    pub(super) services: Vec<Service>,
    pub(super) inflight: BlockPool<Inflight>,
    pub(super) totals: Totals,
    scratch: Vec<TxChain>,
    tokens: Vec<Token>,
    zeroed: Vec<(usize, f64)>,
    events: Vec<Event>,
    next_sweep_ns: u64,
}

impl<M: GuestMemoryBackend + Clone> Switch<M> {
    /// A switch with no ports, reading time from `clock`.
    pub fn new(cfg: SwitchConfig, clock: Arc<dyn Clock>) -> Result<Self, SwitchError> {
        let inflight = BlockPool::new(cfg.pool)?;
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
            zeroed: Vec::new(),
            events: Vec::new(),
            next_sweep_ns: now,
        })
    }

    /// Adds a port; its guest will get a hello (its port id and the directory) as soon as it
    /// posts an rx buffer.
    pub fn add_port(
        &mut self,
        name: &str,
        dev: DevicePort<M>,
        notifier: Box<dyn Notifier>,
    ) -> Result<PortId, SwitchError> {
        if self.port_id(name).is_some() {
            return Err(SwitchError::DuplicateName(name.to_string()));
        }
        let id = self.ports.len() as PortId;
        let mem = dev.view().clone();
        let ci = dev.rx_consumer_index();
        let mut backlog = std::collections::VecDeque::new();
        backlog.push_back(Backlog::Hello);
        self.ports.push(PortEntry {
            name: name.to_string(),
            dev,
            mem,
            notifier,
            member_of: Vec::new(),
            backlog,
            stats: Default::default(),
            last_consumer_idx: ci,
            consumed_since_sweep: 0,
            notices: 0,
            rx_dirty: false,
            tx_dirty: false,
            down: false,
        });
        Ok(id)
    }

    /// Adds a service served by `members` (port, base weight).
    pub fn add_service(
        &mut self,
        name: &str,
        cfg: ServiceConfig,
        members: &[(PortId, f64)],
    ) -> Result<ServiceId, SwitchError> {
        if self.service_id(name).is_some() {
            return Err(SwitchError::DuplicateName(name.to_string()));
        }
        let id = self.services.len() as ServiceId;
        let now = self.clock.now_ns();
        let mut ms = Vec::with_capacity(members.len());
        for (i, &(port, w)) in members.iter().enumerate() {
            if port as usize >= self.ports.len() {
                return Err(SwitchError::UnknownPort(port));
            }
            if !(w.is_finite() && w > 0.0) {
                return Err(SwitchError::BadWeight {
                    service: name.to_string(),
                    weight: w,
                });
            }
            self.ports[port as usize].member_of.push((id, i));
            ms.push(Member {
                port,
                base_weight: w,
                health: BackendHealth::new(cfg.health),
                dispatched: 0,
                bytes: 0,
                last_replies: 0,
                progress: 0,
            });
        }
        let candidates = ms
            .iter()
            .map(|m| Candidate::new(m.port, m.base_weight))
            .collect();
        let policy = new_policy(&cfg.policy, ms.len())?;
        let failover = Failover::new(cfg.failover, ms.len(), now);
        let mut svc = Service {
            name: name.to_string(),
            cfg,
            members: ms,
            candidates,
            policy,
            failover,
            wait: Default::default(),
            stats: Default::default(),
            panic: false,
        };
        svc.refresh(now);
        self.services.push(svc);
        Ok(id)
    }

    /// The id of the port called `name`.
    pub fn port_id(&self, name: &str) -> Option<PortId> {
        self.ports
            .iter()
            .position(|p| p.name == name)
            .map(|i| i as PortId)
    }

    /// The id of the service called `name`.
    pub fn service_id(&self, name: &str) -> Option<ServiceId> {
        self.services
            .iter()
            .position(|s| s.name == name)
            .map(|i| i as ServiceId)
    }

    /// Requests accepted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Whether a port is down (broken or removed).
    pub fn port_down(&self, port: PortId) -> bool {
        self.ports.get(port as usize).is_none_or(|p| p.down)
    }

    /// Takes a port out (its VM stopped or reset its device): its requests are dropped and
    /// their late replies counted, work for it fails over or back.
    pub fn remove_port(&mut self, port: PortId) {
        let now = self.clock.now_ns();
        self.take_down(port, false, now);
    }

    /// Brings a port that went down (removed, reset or broken) back with fresh queues: its guest
    /// reset its device and activated it again, or its VM was restarted. The port keeps its id,
    /// its name and its counters; as a backend it returns through the failover's slow start
    /// once its ejection time is over. Nothing of its old queues survives: requests it had in
    /// flight were answered or failed over when it went down.
    pub fn revive_port(
        &mut self,
        port: PortId,
        dev: DevicePort<M>,
        notifier: Box<dyn Notifier>,
    ) -> Result<(), SwitchError> {
        let e = self
            .ports
            .get_mut(port as usize)
            .ok_or(SwitchError::UnknownPort(port))?;
        if !e.down {
            return Err(SwitchError::PortUp(port));
        }
        e.mem = dev.view().clone();
        e.last_consumer_idx = dev.rx_consumer_index();
        e.consumed_since_sweep = 0;
        e.dev = dev;
        e.notifier = notifier;
        e.backlog.clear();
        e.notices = 0;
        e.backlog.push_back(Backlog::Hello);
        e.rx_dirty = false;
        e.tx_dirty = false;
        e.down = false;
        e.stats.revivals += 1;
        for &(s, i) in &e.member_of {
            let svc = &mut self.services[s as usize];
            svc.members[i].health = BackendHealth::new(svc.cfg.health);
        }
        Ok(())
    }

    /// One pass of the data path: backlogs, waiting requests, then up to `batch` new messages
    /// from every port, notifications, and a sweep when one is due. Returns the messages moved.
    pub fn poll(&mut self) -> usize {
        let now = self.clock.now_ns();
        let mut work = 0;
        for d in 0..self.ports.len() {
            if !self.ports[d].down && !self.ports[d].backlog.is_empty() {
                work += self.drain_backlog(d as PortId, now);
            }
        }
        for s in 0..self.services.len() {
            work += self.dispatch_waiting(s, now);
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        for p in 0..self.ports.len() {
            if self.ports[p].down {
                continue;
            }
            scratch.clear();
            let r = self.ports[p]
                .dev
                .pop_tx_batch(self.cfg.batch, |c| scratch.push(c));
            for c in scratch.drain(..) {
                self.handle(p as PortId, c, now);
                work += 1;
            }
            if r.is_err() {
                self.take_down(p as PortId, true, now);
            }
        }
        self.scratch = scratch;
        self.notify_ports();
        if now >= self.next_sweep_ns {
            self.sweep(now);
            self.next_sweep_ns = now + self.cfg.sweep_interval_ns;
        }
        work
    }

    /// Before the caller sleeps: asks every port's guest to kick on new tx entries (and on new
    /// rx buffers where deliveries wait). Returns whether work is already there, in which case
    /// the caller must not sleep.
    pub fn prepare_idle(&mut self) -> bool {
        let mut busy = false;
        for p in self.ports.iter_mut().filter(|p| !p.down) {
            busy |= p.dev.enable_kicks(TX_QUEUE).unwrap_or(false);
            if !p.backlog.is_empty() {
                busy |= p.dev.enable_kicks(RX_QUEUE).unwrap_or(false);
            }
        }
        busy || self.services.iter().any(|s| !s.wait.is_empty())
    }

    /// Back to polling after a sleep: kicks off again.
    pub fn resume_polling(&mut self) {
        for p in self.ports.iter_mut().filter(|p| !p.down) {
            let _ = p.dev.disable_kicks(TX_QUEUE);
            let _ = p.dev.disable_kicks(RX_QUEUE);
        }
    }

    /// Nanoseconds until the next sweep is due (the longest a caller may sleep).
    pub fn until_next_sweep(&self) -> u64 {
        self.next_sweep_ns.saturating_sub(self.clock.now_ns())
    }

    // ---- messages -------------------------------------------------------------------------

    fn handle(&mut self, p: PortId, c: TxChain, now: u64) {
        // The port may have gone down while the switch handled an earlier message of the same
        // batch: the rest of the batch dies with it (accepting a request for a frontend that
        // is down would leave it in flight for good).
        if self.ports[p as usize].down {
            return;
        }
        let len = c.header.len() as u64;
        let st = &mut self.ports[p as usize].stats;
        st.sent += 1;
        st.bytes_sent += len;
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
                self.complete_tx(p, c.head, now);
            }
            // Guests have nothing to say with a hello; `parse` rejected unknown kinds.
            Some(MsgKind::Hello) | None => self.complete_tx(p, c.head, now),
        }
    }

    fn complete_tx(&mut self, p: PortId, head: u16, now: u64) {
        let e = &mut self.ports[p as usize];
        if e.down {
            return;
        }
        if e.dev.complete_tx(head).is_ok() {
            e.tx_dirty = true;
        } else {
            self.take_down(p, true, now);
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
                    svc.policy
                        .pick(&svc.candidates, &req)
                        .map(|i| svc.members[i].port)
                })
        } else {
            Some(c.header.dst())
        };
        let Some(d) = dst.filter(|&d| !self.port_down(d)) else {
            self.complete_tx(p, c.head, now);
            self.undeliverable(p, c.header.msg_id(), Status::Unreachable, now);
            return;
        };
        if !self.ports[d as usize].backlog.is_empty() {
            self.ports[d as usize]
                .backlog
                .push_back(Backlog::OneWay { src: p, chain: c });
            return;
        }
        let mut hdr = c.header;
        hdr.set_src(p);
        match self.deliver_chain(d, p, &hdr, &c) {
            Ok(fits) => {
                self.complete_tx(p, c.head, now);
                if fits {
                    self.totals.oneway_delivered += 1;
                } else {
                    self.undeliverable(p, c.header.msg_id(), Status::TooLarge, now);
                }
            }
            Err(DeliverError::NoBuffer) => self.ports[d as usize]
                .backlog
                .push_back(Backlog::OneWay { src: p, chain: c }),
            Err(DeliverError::Dest(_)) => {
                self.take_down(d, true, now);
                self.complete_tx(p, c.head, now);
                self.undeliverable(p, c.header.msg_id(), Status::PortBroken, now);
            }
            Err(DeliverError::Source(_)) => self.take_down(p, true, now),
        }
    }

    fn undeliverable(&mut self, p: PortId, msg_id: u64, status: Status, now: u64) {
        self.totals.oneway_undeliverable += 1;
        self.ports[p as usize].stats.undeliverable += 1;
        self.notice(p, msg_id, status, now);
    }

    fn notice(&mut self, p: PortId, msg_id: u64, status: Status, now: u64) {
        let e = &mut self.ports[p as usize];
        if e.down {
            return;
        }
        // Notices answer messages whose chains went back already, so the sender's ring does
        // not bound them: a guest that sends to nowhere and never reads its rx queue gets at
        // most a queue's worth waiting, and the rest are counted and dropped.
        if e.notices >= u32::from(e.dev.rx_queue_size()) {
            e.stats.notices_dropped += 1;
            return;
        }
        e.notices += 1;
        e.backlog.push_back(Backlog::Notice { msg_id, status });
        if e.backlog.len() == 1 {
            self.drain_backlog(p, now);
        }
    }

    fn accept_request(&mut self, p: PortId, c: TxChain, now: u64) {
        self.totals.requests_accepted += 1;
        self.ports[p as usize].stats.requests += 1;
        let (target, timeout) = if c.header.dst_is_service() {
            let s = c.header.dst();
            match self.services.get_mut(s as usize) {
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
        let entry = Inflight {
            frontend: p,
            chain: c,
            target: target.unwrap_or(Target::Port(SWITCH_PORT)),
            stage: Stage::Waiting,
            backend: None,
            accepted_ns: now,
            dispatched_ns: 0,
            deadline_ns: now.saturating_add(timeout),
            dispatches: 0,
        };
        let tok = match self.inflight.alloc(entry) {
            Ok(t) => t,
            Err(_) => {
                // In-flight table full: refuse at once, never silently.
                self.totals.refused += 1;
                self.complete_tx(p, c.head, now);
                self.notice(p, c.header.msg_id(), Status::NoBackend, now);
                return;
            }
        };
        match target {
            None => self.fail_back(tok, Status::Unreachable, now),
            Some(Target::Port(d)) => {
                if self.port_down(d) {
                    self.fail_back(tok, Status::Unreachable, now);
                } else if !self.ports[d as usize].backlog.is_empty() {
                    self.ports[d as usize]
                        .backlog
                        .push_back(Backlog::Request(tok));
                } else if let Dispatch::NoRoom = self.dispatch_to_port(tok, d, now) {
                    self.ports[d as usize]
                        .backlog
                        .push_back(Backlog::Request(tok));
                }
            }
            Some(Target::Service(s)) => {
                let s = s as usize;
                if !self.services[s].wait.is_empty() {
                    self.services[s].wait.push_back(tok);
                } else if let Dispatch::NoRoom = self.try_dispatch(s, tok, now) {
                    self.services[s].wait.push_back(tok);
                }
            }
        }
    }

    /// Delivers request `tok` to port `d` (a port-addressed request).
    fn dispatch_to_port(&mut self, tok: Token, d: PortId, now: u64) -> Dispatch {
        let Some(e) = self.inflight.get(tok).copied() else {
            return Dispatch::Done;
        };
        let mut hdr = e.chain.header;
        hdr.set_src(e.frontend);
        hdr.set_msg_id(tok.0);
        match self.deliver_chain(d, e.frontend, &hdr, &e.chain) {
            Ok(true) => {
                self.mark_dispatched(tok, d, None, now);
                Dispatch::Sent
            }
            Ok(false) => {
                self.fail_back(tok, Status::TooLarge, now);
                Dispatch::Done
            }
            Err(DeliverError::NoBuffer) => Dispatch::NoRoom,
            Err(DeliverError::Dest(_)) => {
                self.take_down(d, true, now);
                self.fail_back(tok, Status::PortBroken, now);
                Dispatch::Done
            }
            Err(DeliverError::Source(_)) => {
                self.take_down(e.frontend, true, now);
                Dispatch::Done
            }
        }
    }

    fn mark_dispatched(&mut self, tok: Token, port: PortId, member: Option<usize>, now: u64) {
        if let Some(e) = self.inflight.get_mut(tok) {
            e.stage = Stage::Dispatched;
            e.backend = Some((port, member));
            e.dispatched_ns = now;
            e.dispatches += 1;
        }
    }

    /// Sends request `tok` of service `s` to the backend its policy picks; a backend without
    /// an rx buffer is passed over for the next best.
    fn try_dispatch(&mut self, s: usize, tok: Token, now: u64) -> Dispatch {
        let Some(e) = self.inflight.get(tok).copied() else {
            return Dispatch::Done;
        };
        let req = PickRequest {
            class: e.chain.header.class(),
            key: e.chain.header.key(),
            bytes: e.chain.header.len(),
        };
        let mut hdr = e.chain.header;
        hdr.set_src(e.frontend);
        hdr.set_msg_id(tok.0);
        let mut outcome = Dispatch::NoRoom;
        let mut zeroed = std::mem::take(&mut self.zeroed);
        let mut broken = None;
        loop {
            let svc = &mut self.services[s];
            let Some(i) = svc.policy.pick(&svc.candidates, &req) else {
                break;
            };
            let port = svc.members[i].port;
            let pe = &self.ports[port as usize];
            let result = if pe.down || !pe.backlog.is_empty() {
                Err(DeliverError::NoBuffer)
            } else {
                self.deliver_chain(port, e.frontend, &hdr, &e.chain)
            };
            match result {
                Ok(true) => {
                    let svc = &mut self.services[s];
                    svc.policy.on_sent(i, &req);
                    let m = &mut svc.members[i];
                    m.health.on_dispatch(now);
                    m.dispatched += 1;
                    m.bytes += req.bytes as u64;
                    let c = &mut svc.candidates[i];
                    c.in_flight += 1;
                    c.queued += 1;
                    svc.stats.dispatches += 1;
                    self.mark_dispatched(tok, port, Some(i), now);
                    outcome = Dispatch::Sent;
                    break;
                }
                Ok(false) => {
                    self.fail_back(tok, Status::TooLarge, now);
                    outcome = Dispatch::Done;
                    break;
                }
                Err(DeliverError::NoBuffer) | Err(DeliverError::Dest(_)) => {
                    if let Err(DeliverError::Dest(_)) = result {
                        broken = Some(port);
                    }
                    let c = &mut self.services[s].candidates[i];
                    zeroed.push((i, c.weight));
                    c.weight = 0.0;
                }
                Err(DeliverError::Source(_)) => {
                    broken = Some(e.frontend);
                    outcome = Dispatch::Done;
                    break;
                }
            }
        }
        for (i, w) in zeroed.drain(..) {
            self.services[s].candidates[i].weight = w;
        }
        self.zeroed = zeroed;
        if let Some(b) = broken {
            self.take_down(b, true, now);
        }
        outcome
    }

    fn dispatch_waiting(&mut self, s: usize, now: u64) -> usize {
        let mut n = 0;
        while let Some(&tok) = self.services[s].wait.front() {
            let waiting = self
                .inflight
                .get(tok)
                .is_some_and(|e| e.stage == Stage::Waiting);
            if waiting {
                match self.try_dispatch(s, tok, now) {
                    Dispatch::NoRoom => break,
                    Dispatch::Sent => n += 1,
                    Dispatch::Done => {}
                }
            }
            self.services[s].wait.pop_front();
        }
        n
    }

    fn handle_reply(&mut self, b: PortId, c: TxChain, now: u64) {
        let tok = Token(c.header.msg_id());
        let valid = self.inflight.get(tok).and_then(|e| {
            (e.stage == Stage::Dispatched && e.backend.map(|x| x.0) == Some(b)).then_some((
                e.frontend,
                e.backend.and_then(|x| x.1),
                e.target,
                e.dispatched_ns,
            ))
        });
        let Some((frontend, member, target, dispatched_ns)) = valid else {
            // Re-dispatched, timed out, or its frontend is gone: exactly one answer already
            // went (or will go) elsewhere.
            self.totals.late_replies_dropped += 1;
            for &(s, _) in &self.ports[b as usize].member_of {
                self.services[s as usize].stats.late_replies_dropped += 1;
            }
            self.complete_tx(b, c.head, now);
            return;
        };
        if let (Target::Service(s), Some(i)) = (target, member) {
            let svc = &mut self.services[s as usize];
            let ok = c.header.status() == Some(Status::Ok);
            let m = &mut svc.members[i];
            m.health
                .on_reply(now.saturating_sub(dispatched_ns), ok, now);
            m.health.on_load_report(c.header.load(), now);
            svc.candidates[i].in_flight = svc.candidates[i].in_flight.saturating_sub(1);
            if !ok {
                svc.stats.backend_errors += 1;
            }
        }
        if let Some(e) = self.inflight.get_mut(tok) {
            e.stage = Stage::Answering;
        }
        let fe = &mut self.ports[frontend as usize];
        fe.backlog.push_back(Backlog::Reply {
            token: tok,
            backend: b,
            chain: c,
        });
        if fe.backlog.len() == 1 {
            self.drain_backlog(frontend, now);
        }
    }

    /// Answers request `tok` with an error status.
    fn fail_back(&mut self, tok: Token, status: Status, now: u64) {
        let Some(e) = self.inflight.get_mut(tok) else {
            return;
        };
        e.stage = Stage::Answering;
        let f = e.frontend;
        // Counted when the error reaches the frontend (`after_backlog_delivery`): until then
        // the request is in flight, and orphaned if the frontend goes down first.
        let fe = &mut self.ports[f as usize];
        fe.backlog.push_back(Backlog::Error { token: tok, status });
        if fe.backlog.len() == 1 {
            self.drain_backlog(f, now);
        }
    }

    /// The frontend has its answer: return its held chain and free the block.
    fn finish(&mut self, tok: Token, now: u64) {
        if let Some(e) = self.inflight.free(tok) {
            self.complete_tx(e.frontend, e.chain.head, now);
        }
    }

    /// Delivers what waits for port `d`, in order, until its rx queue is full.
    fn drain_backlog(&mut self, d: PortId, now: u64) -> usize {
        let mut n = 0;
        while let Some(item) = self.ports[d as usize].backlog.pop_front() {
            if self.ports[d as usize].down {
                self.ports[d as usize].backlog.push_front(item);
                break;
            }
            let result = match &item {
                Backlog::OneWay { src, chain } => {
                    let mut hdr = chain.header;
                    hdr.set_src(*src);
                    self.deliver_chain(d, *src, &hdr, chain)
                }
                Backlog::Request(tok) => match self.dispatch_to_port(*tok, d, now) {
                    Dispatch::NoRoom => Err(DeliverError::NoBuffer),
                    _ => Ok(true),
                },
                Backlog::Reply {
                    token,
                    backend,
                    chain,
                } => {
                    let orig = self.inflight.get(*token).map(|e| e.chain.header.msg_id());
                    match orig {
                        Some(id) => {
                            let mut hdr = chain.header;
                            hdr.set_msg_id(id);
                            hdr.set_src(*backend);
                            hdr.set_dst_port(d);
                            self.deliver_chain(d, *backend, &hdr, chain)
                        }
                        None => Ok(true),
                    }
                }
                Backlog::Error { token, status } => {
                    match self.inflight.get(*token).map(|e| e.chain.header) {
                        Some(orig) => self.deliver_notice(d, &orig, orig.msg_id(), *status),
                        None => Ok(true),
                    }
                }
                Backlog::Notice { msg_id, status } => {
                    let orig = MsgHeader::new(MsgKind::Reply, d, *msg_id, 0);
                    self.deliver_notice(d, &orig, *msg_id, *status)
                }
                Backlog::Hello => {
                    let dir = self.directory();
                    let mut h = MsgHeader::new(MsgKind::Hello, d, 0, dir.len() as u32);
                    h.set_src(SWITCH_PORT);
                    let e = &mut self.ports[d as usize];
                    e.dev
                        .deliver::<M>(&h, &crate::virtio::Payload::Bytes(&dir))
                        .map(|r| r.1)
                }
            };
            match result {
                Err(DeliverError::NoBuffer) => {
                    self.ports[d as usize].backlog.push_front(item);
                    break;
                }
                Err(DeliverError::Dest(_)) => {
                    self.ports[d as usize].backlog.push_front(item);
                    self.take_down(d, true, now);
                    break;
                }
                Err(DeliverError::Source(_)) => {
                    let src = match &item {
                        Backlog::OneWay { src, .. } => Some(*src),
                        Backlog::Reply { backend, .. } => Some(*backend),
                        _ => None,
                    };
                    // The sender broke its own chain. A broken backend's reply is lost with
                    // it; the request is failed back.
                    if let Backlog::Reply { token, .. } = item {
                        self.fail_back_answering(token, now);
                    }
                    if let Some(s) = src {
                        self.take_down(s, true, now);
                    }
                }
                Ok(fits) => {
                    n += 1;
                    self.ports[d as usize].rx_dirty = true;
                    self.after_backlog_delivery(d, item, fits, now);
                }
            }
        }
        n
    }

    fn after_backlog_delivery(&mut self, d: PortId, item: Backlog, fits: bool, now: u64) {
        match item {
            Backlog::OneWay { src, chain } => {
                self.complete_tx(src, chain.head, now);
                if fits {
                    self.totals.oneway_delivered += 1;
                } else {
                    self.undeliverable(src, chain.header.msg_id(), Status::TooLarge, now);
                }
            }
            Backlog::Reply {
                token,
                backend,
                chain,
            } => {
                self.complete_tx(backend, chain.head, now);
                if self.inflight.get(token).is_some() {
                    self.totals.replies_delivered += 1;
                    self.ports[d as usize].stats.replies += 1;
                    if let Some(Target::Service(s)) = self.inflight.get(token).map(|e| e.target) {
                        self.services[s as usize].stats.replies += 1;
                    }
                    self.finish(token, now);
                }
            }
            Backlog::Error { token, status } => {
                if let Some(e) = self.inflight.get(token) {
                    if let Target::Service(s) = e.target {
                        if let Some(svc) = self.services.get_mut(s as usize) {
                            svc.stats.failed_back += 1;
                        }
                    }
                    self.ports[d as usize].stats.failed_back += 1;
                    self.totals.failed_back += 1;
                    if status == Status::Timeout {
                        self.totals.timeouts += 1;
                    }
                }
                self.finish(token, now)
            }
            Backlog::Notice { .. } => {
                let e = &mut self.ports[d as usize];
                e.notices = e.notices.saturating_sub(1);
            }
            Backlog::Request(_) | Backlog::Hello => {}
        }
    }

    /// A reply could not be delivered because its backend broke: the request it answered gets
    /// an error instead (queued behind what is already waiting for the frontend).
    fn fail_back_answering(&mut self, tok: Token, now: u64) {
        if let Some(e) = self.inflight.get_mut(tok) {
            e.stage = Stage::Waiting;
        }
        self.fail_back(tok, Status::PortBroken, now);
    }

    fn deliver_notice(
        &mut self,
        d: PortId,
        orig: &MsgHeader,
        msg_id: u64,
        status: Status,
    ) -> Result<bool, DeliverError> {
        let mut h = MsgHeader::new(MsgKind::Reply, d, msg_id, 0);
        h.set_src(SWITCH_PORT);
        h.set_class(orig.class());
        h.set_status(status);
        self.ports[d as usize]
            .dev
            .deliver::<M>(&h, &crate::virtio::Payload::Bytes(&[]))
            .map(|r| r.1)
    }

    /// Delivers `hdr` + the payload of `chain` (held in port `src`) into port `dst`.
    fn deliver_chain(
        &mut self,
        dst: PortId,
        src: PortId,
        hdr: &MsgHeader,
        chain: &TxChain,
    ) -> Result<bool, DeliverError> {
        let (d, s) = (dst as usize, src as usize);
        let r = if d == s {
            let e = &mut self.ports[d];
            e.dev.deliver(hdr, &chain.payload(&e.mem))
        } else if d < s {
            let (lo, hi) = self.ports.split_at_mut(s);
            lo[d].dev.deliver(hdr, &chain.payload(&hi[0].mem))
        } else {
            let (lo, hi) = self.ports.split_at_mut(d);
            hi[0].dev.deliver(hdr, &chain.payload(&lo[s].mem))
        };
        if let Ok((_, _)) = r {
            let e = &mut self.ports[d];
            e.rx_dirty = true;
            e.stats.received += 1;
            e.stats.bytes_received += hdr.len() as u64;
        }
        r.map(|(_, fits)| fits)
    }

    /// The directory sent in hellos: every port and service with its id.
    ///
    /// Layout: `count: u32`, then per entry `id: u32, kind: u8 (0 port, 1 service),
    /// name_len: u8, name bytes`; all little-endian.
    fn directory(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let n = self.ports.len() + self.services.len();
        out.extend_from_slice(&(n as u32).to_le_bytes());
        let names = self
            .ports
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u32, 0u8, p.name.as_str()))
            .chain(
                self.services
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (i as u32, 1u8, s.name.as_str())),
            );
        for (id, kind, name) in names {
            let name = &name.as_bytes()[..name.len().min(255)];
            out.extend_from_slice(&id.to_le_bytes());
            out.push(kind);
            out.push(name.len() as u8);
            out.extend_from_slice(name);
        }
        out
    }

    fn notify_ports(&mut self) {
        for e in self.ports.iter_mut().filter(|e| !e.down) {
            let mut notify = false;
            if e.rx_dirty {
                e.rx_dirty = false;
                notify |= e.dev.publish_rx();
            }
            if e.tx_dirty {
                e.tx_dirty = false;
                notify |= e.dev.publish_tx();
            }
            if notify {
                e.stats.notifies += 1;
                e.notifier.notify();
            }
        }
    }

    // ---- health, failover, deadlines ------------------------------------------------------

    /// Reads every backend's queues into its health, runs failover, re-dispatches the work of
    /// ejected backends and fails back requests past their deadline. `poll` calls it every
    /// `sweep_interval_ns`.
    pub fn sweep(&mut self, now: u64) {
        // Consumer progress, once per port.
        for e in self.ports.iter_mut() {
            let ci = e.dev.rx_consumer_index();
            e.consumed_since_sweep = ci.wrapping_sub(e.last_consumer_idx);
            e.last_consumer_idx = ci;
        }
        let mut events = std::mem::take(&mut self.events);
        for s in 0..self.services.len() {
            let ports = &self.ports;
            let svc = &mut self.services[s];
            for (i, m) in svc.members.iter_mut().enumerate() {
                let e = &ports[m.port as usize];
                if e.down {
                    continue;
                }
                let delta = e.consumed_since_sweep;
                let (free, size) = (e.dev.rx_buffers_available(), e.dev.rx_queue_size());
                if delta > 0 {
                    m.health.on_consumed(delta as u32, now);
                }
                m.health.on_free_rx(free as u32, size as u32);
                // A backend makes progress when it drains what was delivered (its rx consumer
                // index moves) and answers what it took (replies arrive); it is pending while
                // either is owed. One that stops draining, or drains but never answers, stops
                // making progress and is stalled after the window.
                let replies = m.health.stats().replies;
                let drained = delta > 0 || m.health.unconsumed() == 0;
                let answered = replies != m.last_replies || m.health.in_flight() == 0;
                m.last_replies = replies;
                if drained && answered {
                    m.progress = m.progress.wrapping_add(1);
                }
                let pending = m.health.unconsumed() > 0 || m.health.in_flight() > 0;
                svc.failover.observe(i, m.progress, pending, now);
            }
            events.clear();
            svc.failover.sweep(now, &mut events);
            for ev in events.drain(..) {
                match ev {
                    Event::Ejected { backend, .. } => {
                        self.services[s].stats.ejections += 1;
                        self.redispatch(s, backend);
                    }
                    Event::Stalled { backend } => {
                        // Kept in rotation by the ejection cap, but it is not draining: its
                        // unanswered requests go elsewhere now rather than at their deadline.
                        self.services[s].stats.stalls += 1;
                        self.redispatch(s, backend);
                    }
                    Event::Returned { .. } => self.services[s].stats.returns += 1,
                    _ => {}
                }
            }
            self.services[s].refresh(now);
        }
        self.events = events;
        self.expire(now);
    }

    /// Takes every unanswered request of member `i` of service `s` back to the front of the
    /// service's wait queue, under a new token so the old backend's reply will be late.
    fn redispatch(&mut self, s: usize, i: usize) {
        let port = self.services[s].members[i].port;
        let mut tokens = std::mem::take(&mut self.tokens);
        tokens.clear();
        tokens.extend(self.inflight.iter().filter_map(|(t, e)| {
            (e.stage == Stage::Dispatched
                && e.target == Target::Service(s as u32)
                && e.backend == Some((port, Some(i))))
            .then_some(t)
        }));
        // Oldest first at the front of the queue.
        tokens.sort_by_key(|t| self.inflight.get(*t).map_or(0, |e| e.accepted_ns));
        let svc = &mut self.services[s];
        for &t in tokens.iter().rev() {
            if let Some(nt) = self.inflight.rebind(t) {
                if let Some(e) = self.inflight.get_mut(nt) {
                    e.stage = Stage::Waiting;
                    e.backend = None;
                }
                svc.wait.push_front(nt);
            }
        }
        let n = tokens.len() as u64;
        svc.members[i].health.on_abandon(n as u32);
        svc.candidates[i].in_flight = 0;
        svc.stats.redispatches += n;
        self.totals.redispatches += n;
        self.tokens = tokens;
    }

    /// Fails back every request past its deadline: waiting ones with `NoBackend`, dispatched
    /// ones with `Timeout` (a reply that still comes is dropped as late).
    fn expire(&mut self, now: u64) {
        let mut tokens = std::mem::take(&mut self.tokens);
        tokens.clear();
        tokens.extend(self.inflight.iter().filter_map(|(t, e)| {
            (e.stage != Stage::Answering && now >= e.deadline_ns).then_some(t)
        }));
        for &t in &tokens {
            let Some(e) = self.inflight.get(t).copied() else {
                continue;
            };
            let status = if e.stage == Stage::Waiting {
                Status::NoBackend
            } else {
                if let (Target::Service(s), Some((_, Some(i)))) = (e.target, e.backend) {
                    let svc = &mut self.services[s as usize];
                    svc.members[i].health.on_abandon(1);
                    svc.candidates[i].in_flight = svc.candidates[i].in_flight.saturating_sub(1);
                }
                Status::Timeout
            };
            self.fail_back(t, status, now);
        }
        self.tokens = tokens;
    }

    /// Port `p` broke (a guest fault: DEVICE_NEEDS_RESET) or was removed.
    fn take_down(&mut self, p: PortId, fault: bool, now: u64) {
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
        }
        if fault {
            log::warn!("port {p} ({}) is down after a guest fault", e.name);
        } else {
            log::info!("port {p} ({}) removed", e.name);
        }
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
        tokens.clear();
        tokens.extend(self.inflight.iter().filter_map(|(t, e)| {
            (e.frontend == p || (e.target == Target::Port(p) && e.stage == Stage::Dispatched))
                .then_some(t)
        }));
        for &t in &tokens {
            let Some(e) = self.inflight.get(t).copied() else {
                continue;
            };
            if e.frontend == p {
                self.inflight.free(t);
                self.totals.orphaned += 1;
                self.ports[p as usize].stats.orphaned += 1;
            } else {
                self.fail_back(t, Status::PortBroken, now);
            }
        }
        self.tokens = tokens;
        // What it sent that still waits in other ports' backlogs lives in queues it no longer
        // has (it reset, stopped or broke): nothing may be read from those chains any more, nor
        // returned on its queues, which may be new ones by the time those ports drain. One-way
        // messages are dropped and counted; a reply it gave fails its request back, so the
        // frontend still gets exactly one answer.
        let mut stranded = 0u64;
        let mut answers = std::mem::take(&mut self.tokens);
        answers.clear();
        for (d, e) in self.ports.iter_mut().enumerate() {
            if d == p as usize {
                continue;
            }
            e.backlog.retain(|item| match item {
                Backlog::OneWay { src, .. } if *src == p => {
                    stranded += 1;
                    false
                }
                Backlog::Reply { token, backend, .. } if *backend == p => {
                    answers.push(*token);
                    false
                }
                _ => true,
            });
        }
        self.totals.oneway_undeliverable += stranded;
        self.ports[p as usize].stats.undeliverable += stranded;
        for &t in &answers {
            self.fail_back_answering(t, now);
        }
        self.tokens = answers;
        // What waited for it: senders get their chains back and an error.
        let backlog = std::mem::take(&mut self.ports[p as usize].backlog);
        self.ports[p as usize].notices = 0;
        for item in backlog {
            match item {
                Backlog::OneWay { src, chain } => {
                    self.complete_tx(src, chain.head, now);
                    self.undeliverable(src, chain.header.msg_id(), Status::PortBroken, now);
                }
                Backlog::Request(t) => self.fail_back(t, Status::PortBroken, now),
                Backlog::Reply { backend, chain, .. } => self.complete_tx(backend, chain.head, now),
                Backlog::Error { .. } | Backlog::Notice { .. } | Backlog::Hello => {}
            }
        }
    }
}

/// Ports whose guest memory the switch can serve.
impl<M> Switch<M> {
    /// A port's device side, for inspection.
    pub fn device(&self, port: PortId) -> Option<&DevicePort<M>> {
        self.ports.get(port as usize).map(|e| &e.dev)
    }
}
