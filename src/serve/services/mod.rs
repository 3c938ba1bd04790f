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

mod apply;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;

use super::config::{ServeConfig, ServiceTable};
use super::control::{Command, ControlError, DrainReport, ReloadReport};
use super::member_port_name;
use super::reload::plan;
use crate::port::vsock::service::connection::SharedTable;
use crate::port::vsock::VsockNetwork;
use crate::port::PortId;
use crate::switch::{Clock, ReloadStatus, Switch, SwitchError};

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
}
