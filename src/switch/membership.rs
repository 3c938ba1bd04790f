//! Membership: services are added and removed, and a port joins a service, drains on purpose
//! and leaves it, while the switch runs.
//!
//! Member indices never move. A member that left keeps its slot (state
//! [`MemberState::Gone`], weight 0, its counters) and the same port joining again takes the
//! slot back; a new port gets a slot at the end. So everything indexed by member stays valid
//! through every change: in-flight records ([`Backend::member`]), the ports' `member_of`, the
//! failover and health state, the candidates and each policy's per-index state (wrr's
//! schedule, Maglev's table, byte-share's byte counts and its class shares, which are listed
//! by member index). A policy sees a draining or gone member as a candidate of weight 0, which
//! every policy already passes over; those that keep per-index state adapt to a longer
//! candidate list on their own (wrr and Maglev rebuild, byte-share starts a newcomer level with
//! the least served).
//!
//! A draining member gets no new requests and keeps those it has: it answers them, or the
//! stall rule and the deadline move or fail them as for any member. It leaves at the first
//! sweep that finds it owes nothing: no request of the service dispatched to it, and no reply
//! of its waiting in a frontend's outbox on its own descriptors. Its owner learns that from
//! [`Switch::take_departed`] and may then remove its port: nothing of it is lost any more.
//!
//! [`Backend::member`]: super::inflight::Backend

use vm_memory::GuestMemoryBackend;

use super::outbox::Outbound;
use super::policy::{new_policy, Candidate, PolicyConfig};
use super::service::{Member, MemberState, Service, ServiceConfig, ServiceId};
use super::{PortId, Switch, SwitchError};
use crate::wire::Status;

/// A member that drained and left its service ([`Switch::take_departed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Departure {
    /// The service it left.
    pub service: ServiceId,
    /// Its port.
    pub port: PortId,
}

/// What a member owed when its drain began ([`Switch::drain_member`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainStarted {
    /// Requests dispatched to it and not answered yet: what it finishes before it leaves.
    pub in_flight: usize,
    /// Requests dispatched to it since it joined: the figure it keeps from now on.
    pub dispatched: u64,
    /// Members of the service still taking new requests.
    pub active_left: usize,
}

impl<M: GuestMemoryBackend + Clone + Send + 'static> Switch<M> {
    /// Adds a service served by `members` (port, base weight). A service removed before
    /// ([`Switch::remove_service`]) gives its id to the next one of the same name.
    pub fn add_service(
        &mut self,
        name: &str,
        cfg: ServiceConfig,
        members: &[(PortId, f64)],
    ) -> Result<ServiceId, SwitchError> {
        if self.service_id(name).is_some() {
            return Err(SwitchError::DuplicateName(name.to_string()));
        }
        cfg.validate_for(members.len())
            .map_err(|source| SwitchError::Service {
                service: name.to_string(),
                source,
            })?;
        let reuse = self
            .services
            .iter()
            .position(|s| s.removed && s.name == name);
        let id = reuse.unwrap_or(self.services.len()) as ServiceId;
        let mut ms = Vec::with_capacity(members.len());
        for &(port, w) in members {
            if port as usize >= self.ports.len() {
                return Err(SwitchError::UnknownPort(port));
            }
            if !(w.is_finite() && w > 0.0) {
                return Err(SwitchError::BadWeight {
                    service: name.to_string(),
                    weight: w,
                });
            }
            ms.push(Member::new(port, w, cfg.health));
        }
        let policy = new_policy(&cfg.policy, ms.len())?;
        for (i, m) in ms.iter().enumerate() {
            self.ports[m.port as usize].member_of.push((id, i));
        }
        let now = self.clock.now_ns();
        let svc = Service::new(name, cfg, ms, policy, now);
        match reuse {
            Some(i) => self.services[i] = svc,
            None => self.services.push(svc),
        }
        self.directory_changed();
        Ok(id)
    }

    /// Adds port `port` to service `s` with base weight `weight`. It joins in slow start. A
    /// member that drains is taken back as it is (at `weight`); one that left gets its slot
    /// back with fresh health. Policies with byte-share class shares (listed by member index)
    /// give a new index no share until [`Switch::set_policy`] lists one.
    pub fn add_member(
        &mut self,
        s: ServiceId,
        port: PortId,
        weight: f64,
    ) -> Result<(), SwitchError> {
        let now = self.clock.now_ns();
        if port as usize >= self.ports.len() {
            return Err(SwitchError::UnknownPort(port));
        }
        let svc = self.live_service(s)?;
        if !(weight.is_finite() && weight > 0.0) {
            return Err(SwitchError::BadWeight {
                service: svc.name.clone(),
                weight,
            });
        }
        let i = match svc.members.iter().position(|m| m.port == port) {
            Some(i) => match svc.members[i].state {
                MemberState::Active => {
                    return Err(SwitchError::AlreadyMember {
                        service: svc.name.clone(),
                        port,
                    })
                }
                MemberState::Draining => {
                    // It still serves (and is still in `member_of`): it only takes new
                    // requests again.
                    let m = &mut svc.members[i];
                    m.state = MemberState::Active;
                    m.base_weight = weight;
                    svc.failover.set_retired(i, false);
                    svc.refresh(now);
                    log::info!("service {}: port {port} active again", svc.name);
                    return Ok(());
                }
                MemberState::Gone => {
                    let old = &svc.members[i];
                    let mut m = Member::new(port, weight, svc.cfg.health);
                    m.dispatched = old.dispatched;
                    m.bytes = old.bytes;
                    svc.members[i] = m;
                    svc.failover.rejoin(i, now);
                    i
                }
            },
            None => {
                let n = svc.members.len() + 1;
                svc.cfg
                    .policy
                    .validate_for(n)
                    .map_err(|e| SwitchError::Service {
                        service: svc.name.clone(),
                        source: e.into(),
                    })?;
                svc.members.push(Member::new(port, weight, svc.cfg.health));
                svc.candidates.push(Candidate::new(port, weight));
                let f = svc.failover.add_backend(now);
                debug_assert_eq!(f, n - 1);
                n - 1
            }
        };
        svc.refresh(now);
        log::info!("service {}: port {port} joins (weight {weight})", svc.name);
        self.ports[port as usize].member_of.push((s, i));
        Ok(())
    }

    /// Sets the base weight of member `port` of service `s` (active or draining).
    pub fn set_member_weight(
        &mut self,
        s: ServiceId,
        port: PortId,
        weight: f64,
    ) -> Result<(), SwitchError> {
        let now = self.clock.now_ns();
        let svc = self.live_service(s)?;
        if !(weight.is_finite() && weight > 0.0) {
            return Err(SwitchError::BadWeight {
                service: svc.name.clone(),
                weight,
            });
        }
        let i = member_index(&svc.members, &svc.name, port)?;
        svc.members[i].base_weight = weight;
        svc.refresh(now);
        Ok(())
    }

    /// Drains member `port` of service `s`: from now on it gets no new request; what it has
    /// it answers (the stall rule and the deadline still apply: a draining member that stalls
    /// has its requests re-dispatched to the others), and it leaves once it owes nothing
    /// ([`Switch::take_departed`]). Draining a member that drains already changes nothing.
    pub fn drain_member(
        &mut self,
        s: ServiceId,
        port: PortId,
    ) -> Result<DrainStarted, SwitchError> {
        let now = self.clock.now_ns();
        let svc = self.live_service(s)?;
        let i = member_index(&svc.members, &svc.name, port)?;
        if svc.members[i].state == MemberState::Active {
            svc.members[i].state = MemberState::Draining;
            svc.failover.set_retired(i, true);
            svc.refresh(now);
            log::info!("service {}: port {port} drains", svc.name);
        }
        let dispatched = svc.members[i].dispatched;
        let active_left = svc
            .members
            .iter()
            .filter(|m| m.state == MemberState::Active)
            .count();
        Ok(DrainStarted {
            in_flight: self.inflight.owed_by(s, port, i),
            dispatched,
            active_left,
        })
    }

    /// Where member `port` of service `s` stands, if it is (or was) one.
    pub fn member_state(&self, s: ServiceId, port: PortId) -> Option<MemberState> {
        let svc = self.services.get(s as usize).filter(|svc| !svc.removed)?;
        svc.members.iter().find(|m| m.port == port).map(|m| m.state)
    }

    /// Every member slot of service `s`, by index: its port and its state (gone ones
    /// included: policies that list something per member, such as byte-share class shares,
    /// list it by this index).
    pub fn members(&self, s: ServiceId) -> Vec<(PortId, MemberState)> {
        self.services
            .get(s as usize)
            .filter(|svc| !svc.removed)
            .map(|svc| svc.members.iter().map(|m| (m.port, m.state)).collect())
            .unwrap_or_default()
    }

    /// The members that drained and left since the last call, in the order they left.
    pub fn take_departed(&mut self) -> Vec<Departure> {
        std::mem::take(&mut self.departed)
    }

    /// Gives service `s` a new policy (the old one's state goes with it). `cfg` is checked
    /// against the service's member slots, gone ones included: byte-share class shares are
    /// listed by member index.
    pub fn set_policy(&mut self, s: ServiceId, cfg: &PolicyConfig) -> Result<(), SwitchError> {
        let now = self.clock.now_ns();
        let svc = self.live_service(s)?;
        let policy = new_policy(cfg, svc.members.len()).map_err(|e| SwitchError::Service {
            service: svc.name.clone(),
            source: e.into(),
        })?;
        svc.cfg.policy = cfg.clone();
        svc.policy = policy;
        svc.refresh(now);
        Ok(())
    }

    /// Removes service `s` at once: its members leave it (their ports stay: they may serve
    /// elsewhere; the owner removes what it made for the service), requests addressed to it
    /// that are not answered yet fail back with `Unreachable` (a reply that still comes is
    /// dropped as late), and new ones fail back the same way. Its id goes to the next service
    /// added with its name.
    pub fn remove_service(&mut self, s: ServiceId) -> Result<(), SwitchError> {
        let now = self.clock.now_ns();
        let svc = self.live_service(s)?;
        svc.removed = true;
        svc.wait.clear();
        let mut left = Vec::new();
        for (i, m) in svc.members.iter_mut().enumerate() {
            if m.state != MemberState::Gone {
                m.state = MemberState::Gone;
                svc.failover.set_retired(i, true);
                left.push((m.port, i));
            }
        }
        svc.refresh(now);
        log::info!("service {} removed", svc.name);
        for (port, i) in left {
            self.ports[port as usize]
                .member_of
                .retain(|&(a, b)| (a, b) != (s, i));
        }
        let mut tokens = std::mem::take(&mut self.tokens);
        self.inflight.unanswered_for(s, &mut tokens);
        for &t in &tokens {
            self.fail_back(t, Status::Unreachable, now);
        }
        self.tokens = tokens;
        self.directory_changed();
        Ok(())
    }

    /// Lets every draining member that owes nothing leave (the sweep calls it). A member whose
    /// port went down owes nothing: its requests were re-dispatched then.
    pub(super) fn settle_draining(&mut self, now: u64) {
        for s in 0..self.services.len() {
            if self.services[s].removed {
                continue;
            }
            for i in 0..self.services[s].members.len() {
                let m = &self.services[s].members[i];
                if m.state != MemberState::Draining {
                    continue;
                }
                let port = m.port;
                if !self.ports[port as usize].down && self.owes(s as ServiceId, port, i) {
                    continue;
                }
                let svc = &mut self.services[s];
                svc.members[i].state = MemberState::Gone;
                // Nothing is pending for it any more: its stall clock stops (it is not
                // observed again).
                let progress = svc.members[i].progress;
                svc.failover.observe(i, progress, false, now);
                svc.refresh(now);
                log::info!("service {}: port {port} drained and left", svc.name);
                self.ports[port as usize]
                    .member_of
                    .retain(|&(a, b)| (a, b) != (s as ServiceId, i));
                self.departed.push(Departure {
                    service: s as ServiceId,
                    port,
                });
            }
        }
    }

    /// Whether member `i` (port `port`) of service `s` still owes an answer, or holds one:
    /// a request dispatched to it, or a reply of its that waits for a frontend on its own
    /// descriptors (removing its port now would turn that reply into an error).
    fn owes(&self, s: ServiceId, port: PortId, i: usize) -> bool {
        self.inflight.owed_by(s, port, i) > 0
            || self.ports.iter().any(|p| {
                p.outbox
                    .iter()
                    .any(|o| matches!(o, Outbound::Reply { backend, .. } if *backend == port))
            })
    }

    /// Service `s`, unless it does not exist or was removed.
    fn live_service(&mut self, s: ServiceId) -> Result<&mut Service, SwitchError> {
        self.services
            .get_mut(s as usize)
            .filter(|svc| !svc.removed)
            .ok_or(SwitchError::UnknownService(s))
    }
}

/// The index of the member of `members` on port `port` that has not left.
fn member_index(members: &[Member], service: &str, port: PortId) -> Result<usize, SwitchError> {
    members
        .iter()
        .position(|m| m.port == port && m.state != MemberState::Gone)
        .ok_or_else(|| SwitchError::NotAMember {
            service: service.to_string(),
            port,
        })
}
