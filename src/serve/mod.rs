//! `vmq serve`: a vhost-user virtio-vsock backend. Stock Linux guests (QEMU, Cloud Hypervisor,
//! crosvm) get a vsock device each and reach their siblings with plain `AF_VSOCK` sockets,
//! SOCK_STREAM and SOCK_SEQPACKET, through vmq's switch.
//!
//! Threads: one vhost-user daemon per VM (its request loop and vring worker, see
//! [`crate::vhost_user`]) and one switch thread for all of them, where every VM is a
//! [`VsockPort`]. A VM's device tells the switch thread through its [`VmOwner`]: kicks ring the
//! VM's doorbell, a stop ends the VM's connections and gives its port a fresh start. A VMM that
//! disconnects (or restarts) is accepted again on the same socket; a VMM that breaks the
//! vhost-user protocol loses only its own device.
//!
//! A running server takes commands ([`Control`]): drain a member of a service, reload the
//! configuration (what a reload may change is in `reload`, how the switch thread applies it in
//! `services`).

mod config;
mod connection;
mod control;
mod message;
mod owner;
mod reload;
mod services;

pub use config::{
    BalanceMode, LimitsConfig, MemberConfig, ServeConfig, ServeConfigError, ServiceTable, VmConfig,
};
pub use control::{ConfigSource, Control, ControlError, DrainReport, ReloadReport, RemovedService};
pub use message::{front_port_name, member_port_name};
pub use owner::{VmEvent, VmOwner};

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;

use crate::event::{LoopConfig, Stopper, SwitchLoop};
use crate::metrics::{MetricsEndpoint, MetricsError};
use crate::port::vsock::service::connection::SharedTable;
use crate::port::vsock::{
    HostConfig, HostPort, HostPortError, NetworkError, ServiceRoute, SharedQueues, VmAddress,
    VmCounts, VsockNetwork, VsockPort,
};
use crate::port::PortId;
use crate::switch::{
    Clock, MonotonicClock, ReloadStatus, Snapshot, Switch, SwitchConfig, SwitchError,
};
use crate::vhost_user::{DaemonError, DeviceConfig, VsockDaemon, VsockDevice};
use crate::vsock::endpoint::EndpointConfig;
use control::Command;
use message::{add_service, backend_name, backend_port, front_name, front_port};
use services::ServiceSet;

/// Why `vmq serve` could not start (or stop cleanly).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] ServeConfigError),
    /// The VMs do not make a network.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// The switch refused a port.
    #[error("switch: {0}")]
    Switch(#[from] SwitchError),
    /// A VM's host side (its `uds-path`) could not be served.
    #[error("VM CID {cid}: {source}")]
    Host {
        /// The VM.
        cid: u64,
        /// Why.
        source: HostPortError,
    },
    /// A VM's vhost-user socket could not be served.
    #[error("VM CID {cid}: {source}")]
    Daemon {
        /// The VM.
        cid: u64,
        /// Why.
        source: DaemonError,
    },
    /// A resource (memory, eventfd, thread) could not be had.
    #[error("{what}: {source}")]
    Io {
        /// What was being made.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// The switch thread panicked.
    #[error("the switch thread failed; see the log")]
    SwitchThread,
    /// The metrics endpoint could not start.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServeError {
    let what = what.into();
    move |source| ServeError::Io { what, source }
}

/// How the switch thread of `vmq serve` waits. Guests here are whole Linux VMs whose next
/// packet is tens of microseconds away at best (milliseconds under TCG): a short spin catches
/// a quick answer, a long one only takes CPU from the guests (2,000 polls cost the Linux-guest
/// bench a third of its one-way rate, and an idle server a fifth of a core). Nothing in serve
/// needs a timer finer than the relay's once-a-second sweep, so the loop (and the switch's
/// sweep, which has no service to watch here) wakes every 20 ms at most.
const SERVE_LOOP: LoopConfig = LoopConfig {
    spin_polls: 64,
    max_sleep: Duration::from_millis(20),
};

/// A running `vmq serve`: its daemons and its switch thread.
pub struct Server {
    net: Arc<VsockNetwork>,
    snapshot: Arc<Mutex<Option<Snapshot>>>,
    daemons: Vec<(u64, VsockDaemon)>,
    stopper: Stopper,
    switch_thread: Option<JoinHandle<()>>,
    metrics: Option<MetricsEndpoint>,
    control: Control,
}

/// What the switch thread needs to give a VM's port a fresh start.
struct Restarts {
    net: Arc<VsockNetwork>,
    events: Receiver<VmEvent>,
    ports: HashMap<u64, (PortId, SharedQueues)>,
    slots: u32,
    last_sweep: Instant,
    started: Instant,
    /// The switch's snapshot, renewed every [`SNAPSHOT_EVERY`].
    snapshot: Arc<Mutex<Option<Snapshot>>>,
    last_snapshot: Instant,
    /// Drains and reloads to run.
    commands: Receiver<Command>,
    services: ServiceSet,
}

/// How often the switch thread renews the snapshot [`Server::snapshot`] returns.
const SNAPSHOT_EVERY: Duration = Duration::from_millis(100);

impl Restarts {
    fn publish(&self, sw: &Switch<GuestMemoryMmap>) {
        let mut snap = sw.snapshot();
        snap.reload = Some(self.services.status());
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Some(snap);
    }

    /// Acts on what the VMs' devices reported, members that drained and left, and commands;
    /// sweeps the relay about once a second.
    fn tick(&mut self, sw: &mut Switch<GuestMemoryMmap>) {
        while let Ok(VmEvent::Stopped(cid)) = self.events.try_recv() {
            let Some((port, queues)) = self.ports.get(&cid).cloned() else {
                continue;
            };
            sw.remove_port(port);
            self.net.guest_gone(cid);
            match VsockPort::new(self.net.clone(), cid, queues, self.slots) {
                Ok(p) => {
                    if let Err(e) = sw.revive(port, Box::new(p)) {
                        log::error!("vsock CID {cid}: cannot restart its port: {e}");
                    }
                }
                Err(e) => log::error!("vsock CID {cid}: cannot restart its port: {e}"),
            }
        }
        // Departures first: a command that follows finds the ports of members that left
        // removed.
        self.services.departures(sw);
        let mut commanded = false;
        while let Ok(c) = self.commands.try_recv() {
            self.services.command(sw, c);
            commanded = true;
        }
        if commanded || self.last_snapshot.elapsed() >= SNAPSHOT_EVERY {
            self.last_snapshot = Instant::now();
            self.publish(sw);
        }
        if self.last_sweep.elapsed() >= Duration::from_secs(1) {
            self.last_sweep = Instant::now();
            self.net.sweep(self.started.elapsed().as_nanos() as u64);
        }
    }
}

impl Server {
    /// Starts serving `cfg` (checked again here): binds every VM's socket and starts the
    /// switch thread. It reloads only what [`Server::apply`] is given.
    pub fn start(cfg: &ServeConfig) -> Result<Self, ServeError> {
        Self::start_with(cfg, None)
    }

    /// [`Server::start`], reloading from `source` on [`Server::reload`] (SIGHUP, `POST
    /// /reload`).
    pub fn start_with(cfg: &ServeConfig, source: Option<ConfigSource>) -> Result<Self, ServeError> {
        cfg.check("<serve>")?;
        // Ports: the VMs first, in order, then the host sides of those with a `uds-path`.
        let mut next_host = cfg.vm.len() as PortId;
        let addrs: Vec<VmAddress> = cfg
            .vm
            .iter()
            .enumerate()
            .map(|(i, v)| VmAddress {
                cid: v.cid,
                port: i as PortId,
                groups: v.groups.clone(),
                host: v.uds_path.as_ref().map(|_| {
                    next_host += 1;
                    next_host - 1
                }),
            })
            .collect();
        let relay = cfg.relay();
        let net = VsockNetwork::new(addrs, relay.clone())?;
        // Then each service's front and its members' ports.
        let mut next_port = next_host;
        let mut service_ports = Vec::new();
        let mut conn_by_cid: HashMap<u64, Arc<SharedTable>> = HashMap::new();
        let mut member_ports = HashMap::new();
        for s in &cfg.service {
            let front = next_port;
            let backends: Vec<(u64, PortId)> = s
                .members
                .iter()
                .enumerate()
                .map(|(i, m)| (m.cid, front + 1 + i as PortId))
                .collect();
            next_port += 1 + backends.len() as PortId;
            for &(cid, port) in &backends {
                member_ports.insert(port, (s.cid, cid));
            }
            net.add_service(
                s.cid,
                ServiceRoute {
                    front,
                    backends: backends.iter().copied().collect(),
                    load_port: s.load_port,
                },
            )?;
            if s.mode == BalanceMode::Connection {
                let table = connection::table(cfg, s)?;
                net.watch_deliveries(s.cid, table.clone());
                conn_by_cid.insert(s.cid, table);
            }
            service_ports.push((front, backends));
        }
        let net = Arc::new(net);
        let slots = cfg.limits.staging_slots;
        let clock: Arc<dyn Clock> = Arc::new(MonotonicClock::new());
        let switch_cfg = SwitchConfig {
            sweep_interval_ns: SERVE_LOOP.max_sleep.as_nanos() as u64,
            ..SwitchConfig::default()
        };
        let mut sw = Switch::new(switch_cfg, clock.clone())?;
        let (tx, rx) = mpsc::channel();
        let mut ports = HashMap::new();
        let mut kicks = Vec::new();
        let mut owners = Vec::new();
        for (vm, entry) in cfg.vm.iter().zip(net.vms()) {
            let queues: SharedQueues = Arc::new(Mutex::new(None));
            let port = VsockPort::new(net.clone(), vm.cid, queues.clone(), slots)
                .map_err(io(format!("staging memory for VM CID {}", vm.cid)))?;
            let id = sw.attach(&format!("vm{}", vm.cid), Box::new(port))?;
            ports.insert(vm.cid, (id, queues.clone()));
            kicks.push(
                entry
                    .doorbell
                    .try_clone()
                    .map_err(io("a doorbell eventfd"))?,
            );
            owners.push(Arc::new(VmOwner::new(entry.clone(), queues, tx.clone())));
        }
        let mut host_fds = Vec::new();
        for (vm, entry) in cfg.vm.iter().zip(net.vms()) {
            let (Some(uds), Some(expected)) = (&vm.uds_path, entry.addr.host) else {
                continue;
            };
            let host_err = |source| ServeError::Host {
                cid: vm.cid,
                source,
            };
            crate::vhost_user::daemon::clear_stale_socket(uds).map_err(|e| ServeError::Io {
                what: format!("VM CID {}: uds-path", vm.cid),
                source: std::io::Error::other(e.to_string()),
            })?;
            let host = HostPort::new(
                entry.clone(),
                HostConfig {
                    uds_path: uds.clone(),
                    endpoint: EndpointConfig {
                        buf_alloc: relay.credit_cap,
                        send_buf: relay.credit_cap,
                    },
                    max_connections: relay.max_conns_per_guest,
                    staging_slots: slots,
                    request_timeout_ns: relay.request_timeout_ns,
                    close_timeout_ns: relay.close_timeout_ns,
                },
                clock.clone(),
            )
            .map_err(host_err)?;
            let fd = host
                .wake_fd()
                .map_err(io(format!("VM CID {}: host side", vm.cid)))?;
            let id = sw.attach(&format!("host{}", vm.cid), Box::new(host))?;
            debug_assert_eq!(id, expected);
            host_fds.push((id, fd));
            log::info!(
                "vsock CID {}: host connections on {} (guests reach CID 2 port P at {}_P)",
                vm.cid,
                uds.display(),
                uds.display()
            );
        }
        for (k, (s, (front, backends))) in cfg.service.iter().zip(service_ports).enumerate() {
            match conn_by_cid.get(&s.cid) {
                Some(t) => {
                    connection::add(&mut sw, &net, &clock, cfg, k as u32, s, t, front, &backends)?
                }
                None => add_service(&mut sw, &net, &clock, cfg, k as u32, s, front, &backends)?,
            }
        }
        let mut lp = SwitchLoop::new(sw, kicks, SERVE_LOOP).map_err(io("the switch loop"))?;
        for (id, fd) in host_fds {
            lp.watch_fd(id, fd);
        }
        let stopper = lp.stopper();
        let (commands_tx, commands) = mpsc::channel();
        let status = Arc::new(Mutex::new(ReloadStatus {
            last_ok: true,
            ..ReloadStatus::default()
        }));
        let control = Control::new(commands_tx, source, status.clone());
        let mut restarts = Restarts {
            net: net.clone(),
            events: rx,
            ports,
            slots,
            last_sweep: Instant::now(),
            started: Instant::now(),
            snapshot: Arc::new(Mutex::new(None)),
            last_snapshot: Instant::now(),
            commands,
            services: ServiceSet::new(
                net.clone(),
                clock,
                cfg.clone(),
                member_ports,
                conn_by_cid,
                status,
            ),
        };
        let snapshot = restarts.snapshot.clone();
        let switch_thread = std::thread::Builder::new()
            .name("vmq-switch".into())
            .spawn(move || {
                lp.run(
                    |_| false,
                    Duration::from_millis(1),
                    |sw, _, _| restarts.tick(sw),
                );
                restarts.publish(&lp.switch);
            })
            .map_err(io("the switch thread"))?;
        let mut server = Self {
            net,
            snapshot,
            daemons: Vec::new(),
            stopper,
            switch_thread: Some(switch_thread),
            metrics: None,
            control,
        };
        if let Some(m) = &cfg.metrics {
            let control: Arc<dyn crate::metrics::Control> = Arc::new(server.control.clone());
            server.metrics = Some(MetricsEndpoint::start_with_control(
                m.listen,
                server.snapshot.clone(),
                Some(control),
            )?);
        }
        for (vm, owner) in cfg.vm.iter().zip(owners) {
            let dev =
                VsockDevice::new(DeviceConfig::new(vm.cid), owner).map_err(|e| ServeError::Io {
                    what: format!("VM CID {}", vm.cid),
                    source: std::io::Error::other(e.to_string()),
                })?;
            let daemon =
                VsockDaemon::start(&vm.socket, dev).map_err(|source| ServeError::Daemon {
                    cid: vm.cid,
                    source,
                })?;
            log::info!(
                "vsock CID {}: serving vhost-user on {}",
                vm.cid,
                vm.socket.display()
            );
            server.daemons.push((vm.cid, daemon));
        }
        Ok(server)
    }

    /// The VMs, their connections and counters.
    pub fn network(&self) -> &Arc<VsockNetwork> {
        &self.net
    }

    /// The switch's counters and each port's (a VM's packets, bytes, connections by state;
    /// a host side's connections), as of at most 100 ms ago; after
    /// [`shutdown`](Self::shutdown) began, as the switch thread stopped. `None` before the
    /// first.
    pub fn snapshot(&self) -> Option<Snapshot> {
        self.snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A handle on the server's commands (drain, reload), for any thread.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Drains member `member` (a VM's CID) of service `service`; see [`Control::drain`].
    pub fn drain(&self, service: &str, member: u64) -> Result<DrainReport, ControlError> {
        self.control.drain(service, member)
    }

    /// Reads the configuration file again and applies it; see [`Control::reload`].
    pub fn reload(&self) -> Result<ReloadReport, ControlError> {
        self.control.reload()
    }

    /// Applies `cfg` as a reload; see [`Control::apply`].
    pub fn apply(&self, cfg: ServeConfig) -> Result<ReloadReport, ControlError> {
        self.control.apply(cfg, "<reload>")
    }

    /// Where the metrics endpoint listens (`[metrics]`), if it does.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(MetricsEndpoint::local_addr)
    }

    /// Every VM's counters now.
    pub fn counts(&self) -> Vec<VmCounts> {
        self.net.counts()
    }

    /// Stops serving: every daemon closes its VMM's connection and removes its socket, then
    /// the switch thread ends.
    pub fn shutdown(mut self) -> Result<(), ServeError> {
        self.stop()
    }

    /// [`shutdown`](Self::shutdown), then the switch's last snapshot, taken as its thread
    /// stopped.
    pub fn shutdown_with_snapshot(mut self) -> (Result<(), ServeError>, Option<Snapshot>) {
        let r = self.stop();
        (r, self.snapshot())
    }

    fn stop(&mut self) -> Result<(), ServeError> {
        let mut first = Ok(());
        for (cid, d) in self.daemons.drain(..) {
            if let Err(source) = d.shutdown() {
                if first.is_ok() {
                    first = Err(ServeError::Daemon { cid, source });
                }
            }
        }
        if let Some(m) = self.metrics.take() {
            m.stop();
        }
        self.stopper.stop();
        if let Some(t) = self.switch_thread.take() {
            if t.join().is_err() && first.is_ok() {
                first = Err(ServeError::SwitchThread);
            }
        }
        first
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests;
