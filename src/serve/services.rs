//! The services of a running `vmq serve` as the switch thread changes them: a member drained
//! by command, members that drained and leave, a reload's plan applied.
//!
//! What happens to each kind of connection:
//! - a client's connection to a service that stays is never touched: a reload that moves
//!   members changes where its next messages go, not the connection;
//! - a member that drains keeps its connections (and its route) until it has answered what it
//!   has; then its port is removed, which resets vmq's connections to its application (RST),
//!   and packets of its for them are refused;
//! - a member of a `connection` service that drains takes no new client connection and keeps
//!   those it carries (its port and route too) until the last closes;
//! - a removed service's clients' connections are reset (RST) at once, and new ones refused:
//!   its CID is nobody's any more. Requests they had in flight are dropped with them (counted
//!   as orphaned); the reset tells each client its outstanding messages will not be answered.
//!   Its members' connections are reset the same way; a `connection` service's backend legs
//!   get their RST from its table with the clients'.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;

use super::config::{BalanceMode, MemberConfig, ServeConfig, ServeConfigError, ServiceTable};
use super::connection;
use super::control::{Command, ControlError, DrainReport, ReloadReport, RemovedService};
use super::reload::{plan, Plan};
use super::{backend_name, backend_port, front_name, front_port, member_port_name};
use crate::port::vsock::service::connection::{ConnBackendPort, ConnFrontPort, Out, SharedTable};
use crate::port::vsock::service::{ServiceBackendPort, ServiceFrontPort};
use crate::port::vsock::{ServiceRoute, VsockNetwork};
use crate::port::{Port, PortId};
use crate::switch::{Clock, MemberState, PolicyConfig, ReloadStatus, Switch, SwitchError};

/// What the switch thread keeps to change the services.
pub(super) struct ServiceSet {
    net: Arc<VsockNetwork>,
    clock: Arc<dyn Clock>,
    /// What runs: the last configuration applied, less the members drained by command since.
    cfg: ServeConfig,
    /// Every member port ever made, by port: its service's CID and its VM's CID. Ports are
    /// never forgotten by the switch (a name keeps its port), so neither are they here.
    backends: HashMap<PortId, (u64, u64)>,
    /// The table of each `connection` service, by its CID.
    tables: HashMap<u64, Arc<SharedTable>>,
    /// Members of `connection` services that drained and left the switch's service while
    /// connections they carry are still open: their ports and routes stay until the last
    /// closes. At most one entry per member port.
    lingering: Vec<PortId>,
    /// When the lingering members' connections were last counted (a pass over their tables:
    /// at most every [`LINGER_CHECK`], not every tick).
    lingering_checked: Instant,
    status: Arc<Mutex<ReloadStatus>>,
}

/// How often the connections of lingering members are counted.
const LINGER_CHECK: Duration = Duration::from_millis(100);

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
struct Prepared {
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
    pub fn new(
        net: Arc<VsockNetwork>,
        clock: Arc<dyn Clock>,
        cfg: ServeConfig,
        backends: HashMap<PortId, (u64, u64)>,
        tables: HashMap<u64, Arc<SharedTable>>,
        status: Arc<Mutex<ReloadStatus>>,
    ) -> Self {
        Self {
            net,
            clock,
            cfg,
            backends,
            tables,
            lingering: Vec::new(),
            lingering_checked: Instant::now(),
            status,
        }
    }

    /// The reloads and drains so far.
    pub fn status(&self) -> ReloadStatus {
        self.lock_status().clone()
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, ReloadStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs command `c` and answers it.
    pub fn command(&mut self, sw: &mut Switch<GuestMemoryMmap>, c: Command) {
        match c {
            Command::Drain {
                service,
                member,
                reply,
            } => {
                let r = self.drain(sw, &service, member);
                match &r {
                    Ok(d) => log::info!("{d}"),
                    Err(e) => log::warn!("drain of {service} member {member} refused: {e}"),
                }
                let _ = reply.send(r);
            }
            Command::Reload { cfg, file, reply } => {
                let r = self.reload(sw, *cfg, &file);
                let mut s = self.lock_status();
                match &r {
                    Ok(report) => {
                        log::info!("reloaded {file}: {report}");
                        s.applied += 1;
                        s.last_ok = true;
                        s.last = report.to_string();
                    }
                    Err(e) => {
                        log::warn!("reload of {file}: {e}");
                        s.refused += 1;
                        s.last_ok = false;
                        s.last = e.to_string();
                    }
                }
                drop(s);
                let _ = reply.send(r);
            }
        }
    }

    /// Members that drained and left: their ports go (closing vmq's connections to their
    /// applications) and so do their routes. A member of a `connection` service goes once the
    /// client connections it carries have closed.
    pub fn departures(&mut self, sw: &mut Switch<GuestMemoryMmap>) {
        let departed = sw.take_departed();
        let recheck =
            !self.lingering.is_empty() && self.lingering_checked.elapsed() >= LINGER_CHECK;
        if departed.is_empty() && !recheck {
            return;
        }
        if recheck {
            self.lingering_checked = Instant::now();
        }
        let mut candidates = if recheck {
            std::mem::take(&mut self.lingering)
        } else {
            Vec::new()
        };
        candidates.extend(departed.iter().map(|d| d.port));
        for port in candidates {
            let route = self.backends.get(&port).copied();
            let open = route
                .and_then(|(service, _)| self.tables.get(&service))
                .map_or(0, |t| t.lock().established_by(port));
            if open > 0 {
                if !self.lingering.contains(&port) {
                    self.lingering.push(port);
                }
                continue;
            }
            if let Some((service, vm)) = route {
                self.net.set_backend(service, vm, None);
                log::info!("service CID {service}: member {vm} drained and left");
            }
            sw.remove_port(port);
        }
    }

    fn drain(
        &mut self,
        sw: &mut Switch<GuestMemoryMmap>,
        service: &str,
        member: u64,
    ) -> Result<DrainReport, ControlError> {
        let not_a_member = || ControlError::NotAMember {
            service: service.to_string(),
            member,
        };
        let sid = sw
            .service_id(service)
            .ok_or_else(|| ControlError::UnknownService(service.to_string()))?;
        let port = sw
            .port_id(&member_port_name(service, member))
            .ok_or_else(not_a_member)?;
        let started = sw.drain_member(sid, port).map_err(|e| match e {
            SwitchError::NotAMember { .. } => not_a_member(),
            source => ControlError::Switch {
                step: format!("draining {service} member {member}"),
                source,
            },
        })?;
        // What runs no longer lists it: a reload of a file that does adds it back.
        if let Some(t) = self.cfg.service.iter_mut().find(|t| t.name == service) {
            t.members.retain(|m| m.cid != member);
        }
        self.lock_status().drains += 1;
        Ok(DrainReport {
            service: service.to_string(),
            member,
            in_flight: started.in_flight,
            dispatched: started.dispatched,
            active_left: started.active_left,
        })
    }

    fn reload(
        &mut self,
        sw: &mut Switch<GuestMemoryMmap>,
        new: ServeConfig,
        file: &str,
    ) -> Result<ReloadReport, ControlError> {
        let plan = plan(&self.cfg, &new, file)?;
        if plan.is_empty() {
            self.cfg = new;
            return Ok(ReloadReport::default());
        }
        let prepared = self.prepare(sw, &plan, file)?;
        let report = self.apply(sw, plan, prepared)?;
        self.cfg = new;
        Ok(report)
    }

    /// Records in the running configuration that service `table` runs as it says (`None`:
    /// service `name` is gone), so a reload that fails part way and is tried again plans only
    /// what is left.
    fn record(&mut self, name: &str, table: Option<&ServiceTable>) {
        let at = self.cfg.service.iter().position(|t| t.name == name);
        match (at, table) {
            (Some(i), Some(t)) => self.cfg.service[i] = t.clone(),
            (None, Some(t)) => self.cfg.service.push(t.clone()),
            (Some(i), None) => {
                self.cfg.service.remove(i);
            }
            (None, None) => {}
        }
    }

    /// Makes every port `plan` needs and checks every policy against the member slots it will
    /// have: whatever fails here fails before anything changed.
    fn prepare(
        &self,
        sw: &Switch<GuestMemoryMmap>,
        plan: &Plan,
        file: &str,
    ) -> Result<Prepared, ControlError> {
        let resources = |e: super::ServeError| ControlError::Resources(e.to_string());
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

    fn apply(
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
