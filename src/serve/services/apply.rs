//! A reload's plan carried out: every port it needs made first (`prepare`),
//! then applied in order (services removed, members drained and joined, weights and
//! policies set, services added).

use std::collections::HashMap;
use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use super::ServiceSet;
use crate::port::vsock::service::connection::{ConnBackendPort, ConnFrontPort, Out, SharedTable};
use crate::port::vsock::service::{ServiceBackendPort, ServiceFrontPort};
use crate::port::vsock::ServiceRoute;
use crate::port::{Port, PortId};
use crate::serve::config::{BalanceMode, MemberConfig, ServeConfigError, ServiceTable};
use crate::serve::connection;
use crate::serve::control::{ControlError, DrainReport, ReloadReport, RemovedService};
use crate::serve::reload::Plan;
use crate::serve::{backend_name, backend_port, front_name, front_port};
use crate::switch::{MemberState, PolicyConfig, Switch, SwitchError};

/// How a member joins.
enum Joining {
    /// On a port of its own, new or brought back: a `message` service's member.
    Port(Box<ServiceBackendPort>),
    /// The same, of a `connection` service over its table (the port learns its id when placed).
    ConnPort(Box<ConnBackendPort>, Arc<SharedTable>),
    /// It drains: it takes requests again, on the port it has.
    Undrain,
    /// It serves already (a reload that stopped part way added it): only its weight is set.
    Serving,
}

/// The ports a reload needs, made before it changes anything.
pub(super) struct Prepared {
    /// Per changed service (in the plan's order), per member that joins: how.
    joins: Vec<Vec<Joining>>,
    /// Per changed service: its policy, as the switch takes it (shares by member slot).
    policies: Vec<PolicyConfig>,
    /// Per added service: its ports.
    added: Vec<NewService>,
}

/// The ports of a service a reload adds, made before its id is known (each learns its own
/// when placed).
enum NewService {
    /// A `message` service's members and front.
    Message(Vec<ServiceBackendPort>, ServiceFrontPort),
    /// A `connection` service's members and front, over its new table.
    Connection(Vec<ConnBackendPort>, ConnFrontPort, Arc<SharedTable>),
}

impl ServiceSet {
    /// Makes every port `plan` needs and checks every policy against the member slots it will
    /// have: whatever fails here fails before anything changed.
    pub(super) fn prepare(
        &self,
        sw: &Switch<GuestMemoryMmap>,
        plan: &Plan,
        file: &str,
    ) -> Result<Prepared, ControlError> {
        let resources = |e: crate::serve::ServeError| ControlError::Resources(e.to_string());
        let mut p = Prepared {
            joins: Vec::new(),
            policies: Vec::new(),
            added: Vec::new(),
        };
        for c in &plan.changed {
            let t = &c.table;
            let sid = sw
                .service_id(&t.name)
                .ok_or_else(|| ControlError::UnknownService(t.name.clone()))?;
            let slots = sw.members(sid);
            // The VM of each member slot, then of each slot the joins add, in the order the
            // switch adds them.
            let mut slot_vms: Vec<Option<u64>> = slots
                .iter()
                .map(|(port, _)| self.backends.get(port).map(|b| b.1))
                .collect();
            let mut ports = Vec::new();
            for m in &c.joins {
                let existing = sw.port_id(&backend_name(t, m.cid));
                let joining = match existing.and_then(|port| sw.member_state(sid, port)) {
                    Some(MemberState::Draining) => Joining::Undrain,
                    Some(MemberState::Active) => Joining::Serving,
                    // Left, but its port still carries connections: it comes back on it.
                    Some(MemberState::Gone)
                        if existing.is_some_and(|p| self.lingering.contains(&p)) =>
                    {
                        Joining::Undrain
                    }
                    state => {
                        if state.is_none() {
                            slot_vms.push(Some(m.cid));
                        }
                        match self.tables.get(&t.cid) {
                            Some(table) => {
                                // Its id is set when it is placed.
                                let port = connection::member_port(
                                    &self.net,
                                    &self.clock,
                                    &self.cfg,
                                    t,
                                    m,
                                    table,
                                    PortId::MAX,
                                )
                                .map_err(resources)?;
                                Joining::ConnPort(Box::new(port), table.clone())
                            }
                            None => {
                                let port = backend_port(&self.net, &self.clock, t, m)
                                    .map_err(resources)?;
                                Joining::Port(Box::new(port))
                            }
                        }
                    }
                };
                ports.push(joining);
            }
            let policy = by_slot(&t.policy, &t.members, &slot_vms);
            policy.validate_for(slot_vms.len()).map_err(|e| {
                ControlError::Config(ServeConfigError::Invalid {
                    place: format!("{file}: service {}.policy.{}", t.name, e.field()),
                    message: format!(
                        "{e} (with the {} member slots the service has had)",
                        slot_vms.len()
                    ),
                })
            })?;
            p.joins.push(ports);
            p.policies.push(policy);
        }
        for s in &plan.added {
            // The service's id comes when the switch adds it; the ports learn it then.
            let added = match s.mode {
                BalanceMode::Message => NewService::Message(
                    s.members
                        .iter()
                        .map(|m| backend_port(&self.net, &self.clock, s, m))
                        .collect::<Result<_, _>>()
                        .map_err(resources)?,
                    front_port(&self.net, &self.cfg, 0, s).map_err(resources)?,
                ),
                BalanceMode::Connection => {
                    let table = connection::table(&self.cfg, s).map_err(resources)?;
                    NewService::Connection(
                        s.members
                            .iter()
                            .map(|m| {
                                let (net, clock, cfg) = (&self.net, &self.clock, &self.cfg);
                                connection::member_port(net, clock, cfg, s, m, &table, PortId::MAX)
                            })
                            .collect::<Result<_, _>>()
                            .map_err(resources)?,
                        connection::front_port(&self.net, &self.clock, &self.cfg, 0, s, &table)
                            .map_err(resources)?,
                        table,
                    )
                }
            };
            p.added.push(added);
        }
        Ok(p)
    }

    pub(super) fn apply(
        &mut self,
        sw: &mut Switch<GuestMemoryMmap>,
        plan: Plan,
        prepared: Prepared,
    ) -> Result<ReloadReport, ControlError> {
        let step = |step: String| move |source| ControlError::Switch { step, source };
        let mut report = ReloadReport::default();
        for s in &plan.removed {
            report.removed.push(
                self.remove_service(sw, s)
                    .map_err(step(format!("removing service {}", s.name)))?,
            );
            self.record(&s.name, None);
        }
        let changes = plan
            .changed
            .iter()
            .zip(prepared.joins)
            .zip(prepared.policies);
        for ((c, joins), policy) in changes {
            let t = &c.table;
            let sid = sw
                .service_id(&t.name)
                .ok_or_else(|| ControlError::UnknownService(t.name.clone()))?;
            for &cid in &c.drains {
                let Some(port) = sw.port_id(&backend_name(t, cid)) else {
                    continue;
                };
                match sw.drain_member(sid, port) {
                    Ok(d) => report.drained.push(DrainReport {
                        service: t.name.clone(),
                        member: cid,
                        in_flight: d.in_flight,
                        dispatched: d.dispatched,
                        active_left: d.active_left,
                    }),
                    // Drained by command already, and gone.
                    Err(SwitchError::NotAMember { .. }) => {}
                    Err(e) => return Err(step(format!("draining {} member {cid}", t.name))(e)),
                }
            }
            for (m, port) in c.joins.iter().zip(joins) {
                self.join(sw, sid, t, m, port)
                    .map_err(step(format!("adding {} member {}", t.name, m.cid)))?;
                report.joined.push((t.name.clone(), m.cid));
            }
            for &(cid, w) in &c.weights {
                if let Some(port) = sw.port_id(&backend_name(t, cid)) {
                    sw.set_member_weight(sid, port, w)
                        .map_err(step(format!("weighting {} member {cid}", t.name)))?;
                    report.reweighted.push((t.name.clone(), cid, w));
                }
            }
            if c.policy {
                sw.set_policy(sid, &policy)
                    .map_err(step(format!("setting {}'s policy", t.name)))?;
                report.policies.push(t.name.clone());
            }
            // Every step of a change is safe to take again (a member that joined is serving,
            // one that left is no member), so only a whole change is recorded.
            self.record(&t.name, Some(t));
        }
        for (s, added) in plan.added.iter().zip(prepared.added) {
            self.add_service(sw, s, added)
                .map_err(step(format!("adding service {}", s.name)))?;
            report.added.push(s.name.clone());
            self.record(&s.name, Some(s));
        }
        Ok(report)
    }

    /// Service `s` goes: its address first (new connections are refused), then its clients'
    /// connections (reset: a `message` service's by its front as it goes, a `connection`
    /// service's, with their backend legs, from its table), the switch's service, and its
    /// members' ports.
    fn remove_service(
        &mut self,
        sw: &mut Switch<GuestMemoryMmap>,
        s: &ServiceTable,
    ) -> Result<RemovedService, SwitchError> {
        self.net.remove_service(s.cid);
        let mut clients_reset = 0;
        if let Some(table) = self.tables.remove(&s.cid) {
            let mut rsts = Vec::new();
            clients_reset = table.lock().reset_all(&mut rsts) as u64;
            for o in rsts {
                let (Out::Control { vm, hdr } | Out::Stage { vm, hdr }) = o;
                vm.push_control(hdr);
            }
        }
        if let Some(front) = sw.port_id(&front_name(s)).filter(|&p| !sw.port_down(p)) {
            clients_reset += port_counter(sw, front, "conns_open");
            sw.remove_port(front);
        }
        if let Some(sid) = sw.service_id(&s.name) {
            sw.remove_service(sid)?;
        }
        let members: Vec<PortId> = self
            .backends
            .iter()
            .filter(|&(_, &(service, _))| service == s.cid)
            .map(|(&p, _)| p)
            .collect();
        self.lingering.retain(|p| !members.contains(p));
        for p in members {
            if !sw.port_down(p) {
                sw.remove_port(p);
            }
        }
        Ok(RemovedService {
            name: s.name.clone(),
            clients_reset,
        })
    }

    /// Member `m` joins service `sid` (table `t`) as `joining` says.
    fn join(
        &mut self,
        sw: &mut Switch<GuestMemoryMmap>,
        sid: u32,
        t: &ServiceTable,
        m: &MemberConfig,
        joining: Joining,
    ) -> Result<(), SwitchError> {
        let name = backend_name(t, m.cid);
        let existing = |sw: &Switch<GuestMemoryMmap>| {
            sw.port_id(&name).ok_or(SwitchError::UnknownPort(u32::MAX))
        };
        match joining {
            Joining::Undrain => {
                let id = existing(sw)?;
                self.lingering.retain(|&p| p != id);
                sw.add_member(sid, id, m.weight)
            }
            Joining::Serving => {
                let id = existing(sw)?;
                sw.set_member_weight(sid, id, m.weight)
            }
            Joining::ConnPort(mut port, table) => {
                // The port knows its own id (its table knows legs by it).
                port.set_member(sw.port_id(&name).unwrap_or_else(|| sw.next_port_id()));
                self.place_member(sw, sid, t, m, port)?;
                table.lock().set_members(sw.members(sid).len());
                Ok(())
            }
            Joining::Port(port) => self.place_member(sw, sid, t, m, port),
        }
    }

    /// Member `m` of service `sid` (table `t`) joins on `port`, routed there.
    fn place_member(
        &mut self,
        sw: &mut Switch<GuestMemoryMmap>,
        sid: u32,
        t: &ServiceTable,
        m: &MemberConfig,
        port: Box<dyn Port<GuestMemoryMmap>>,
    ) -> Result<(), SwitchError> {
        let id = place(sw, &backend_name(t, m.cid), port)?;
        self.backends.insert(id, (t.cid, m.cid));
        self.net.set_backend(t.cid, m.cid, Some(id));
        sw.add_member(sid, id, m.weight)
    }

    /// Service `s` comes: its members' ports, the switch's service, its front, then its
    /// address (clients may connect from now on).
    fn add_service(
        &mut self,
        sw: &mut Switch<GuestMemoryMmap>,
        s: &ServiceTable,
        added: NewService,
    ) -> Result<(), SwitchError> {
        let mut ids = Vec::new();
        let mut backends = HashMap::new();
        let mut add_member = |sw: &mut Switch<GuestMemoryMmap>, m: &MemberConfig, port| {
            let id = place(sw, &backend_name(s, m.cid), port)?;
            self.backends.insert(id, (s.cid, m.cid));
            backends.insert(m.cid, id);
            ids.push((id, m.weight));
            Ok::<_, SwitchError>(())
        };
        let front = match added {
            NewService::Message(members, front) => {
                for (m, port) in s.members.iter().zip(members) {
                    add_member(sw, m, Box::new(port))?;
                }
                NewFront::Message(front)
            }
            NewService::Connection(members, front, table) => {
                for (m, mut port) in s.members.iter().zip(members) {
                    // The port knows its own id (its table knows legs by it).
                    let name = backend_name(s, m.cid);
                    port.set_member(sw.port_id(&name).unwrap_or_else(|| sw.next_port_id()));
                    add_member(sw, m, Box::new(port))?;
                }
                NewFront::Connection(front, table)
            }
        };
        let sid = sw.add_service(&s.name, s.switch_config(), &ids)?;
        let front = match front {
            NewFront::Message(mut f) => {
                f.set_service(sid);
                place(sw, &front_name(s), Box::new(f))?
            }
            NewFront::Connection(mut f, table) => {
                f.set_service(sid);
                let front = place(sw, &front_name(s), Box::new(f))?;
                // Deliveries are watched before the address routes: none goes uncounted.
                self.net.watch_deliveries(s.cid, table.clone());
                self.tables.insert(s.cid, table);
                front
            }
        };
        let route = ServiceRoute {
            front,
            backends,
            load_port: s.load_port,
        };
        if self.net.add_service(s.cid, route).is_err() {
            // The plan checked the CID against the running services: only a bug gets here.
            log::error!("service {}: CID {} is taken", s.name, s.cid);
        }
        Ok(())
    }
}

/// The front of a service a reload adds, waiting for its id.
enum NewFront {
    Message(ServiceFrontPort),
    Connection(ConnFrontPort, Arc<SharedTable>),
}

/// Puts `port` in the switch as `name`: a new port, or the one that had the name (removed
/// before: a member that left, a service removed) brought back with it.
fn place(
    sw: &mut Switch<GuestMemoryMmap>,
    name: &str,
    port: Box<dyn Port<GuestMemoryMmap>>,
) -> Result<PortId, SwitchError> {
    match sw.port_id(name) {
        None => sw.attach(name, port),
        Some(id) => {
            if !sw.port_down(id) {
                sw.remove_port(id);
            }
            sw.revive(id, port).map(|()| id)
        }
    }
}

/// Counter `name` of port `id`'s kind (0 without it).
fn port_counter(sw: &Switch<GuestMemoryMmap>, id: PortId, name: &str) -> u64 {
    sw.port(id)
        .and_then(|p| p.counters().into_iter().find(|(n, _)| *n == name))
        .map_or(0, |(_, v)| v)
}

/// `policy` as the switch takes it for member slots whose VMs are `slot_vms`: byte-share class
/// shares, listed by member in the configuration, listed by slot (0 for a slot whose VM is not
/// a member any more).
fn by_slot(
    policy: &PolicyConfig,
    members: &[MemberConfig],
    slot_vms: &[Option<u64>],
) -> PolicyConfig {
    let mut p = policy.clone();
    for class in &mut p.byte_share.classes {
        let shares: Vec<f64> = slot_vms
            .iter()
            .map(|vm| {
                vm.and_then(|vm| members.iter().position(|m| m.cid == vm))
                    .and_then(|j| class.shares.get(j).copied())
                    .unwrap_or(0.0)
            })
            .collect();
        class.shares = shares;
    }
    p
}
