//! Ports coming and going: [`Switch::attach`] and [`Switch::add_port`], removal, revival, and
//! `take_down` of a port that broke or left (its work failed over or back, its
//! messages in others' outboxes dropped or answered).

use vm_memory::GuestMemoryBackend;

use super::health::BackendHealth;
use super::inflight::Stage;
use super::outbox::Outbound;
use super::service::ServiceId;
use super::slot::PortSlot;
use super::{Switch, SwitchError};
use crate::port::{NativePort, Notifier, Port, PortId};
use crate::virtio::DevicePort;
use crate::wire::{MsgKind, Status};

impl<M: GuestMemoryBackend + Clone + Send + 'static> Switch<M> {
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
