//! [`VsockNetwork`]: the vsock VMs one switch serves, as each of their ports sees them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;

use crate::port::PortId;
use crate::vsock::packet::PacketHeader;
use crate::vsock::relay::{Relay, RelayConfig, RelayConfigError};

/// Control packets (RSTs) vmq may owe one guest at once. A guest is owed at most one per
/// connection it takes part in, and the relay caps those; past this many the oldest are dropped
/// and counted (the relay's sweep resets what they would have ended).
pub const CONTROL_QUEUE_MAX: usize = 4096;

/// Local ports at and above this, on a service's CID, are the connections vmq opens to the
/// service's backends; ports below are what clients connect to.
pub const SERVICE_BACKEND_PORTS: u32 = 1 << 30;

/// Where packets addressed to a service's CID go (see [`VsockNetwork::service_port`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceRoute {
    /// The switch port that terminates clients' connections to the service.
    pub front: PortId,
    /// Each backend VM's member port, by the VM's CID.
    pub backends: HashMap<u64, PortId>,
    /// The port backends report their load on (their connections to it go to their own
    /// member port), if the service takes reports.
    pub load_port: Option<u32>,
}

/// A service that relays connections itself (`connection` mode) and keeps their credit as the
/// relay does: it hears of every part of its packets placed in a guest's rx queue, as the relay
/// hears of its own ([`VsockNetwork::on_delivered`]).
pub trait DeliveryWatch: Send + Sync + std::fmt::Debug {
    /// `part` (a packet from the service's CID, or one part of it) went into a guest's rx
    /// queue.
    fn delivered(&self, part: &PacketHeader);
}

/// One vsock VM: its CID, its port in the switch, the groups it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmAddress {
    /// The guest's CID.
    pub cid: u64,
    /// Its port in the switch.
    pub port: PortId,
    /// Sibling groups: two VMs reach each other when they share one.
    pub groups: Vec<String>,
    /// The port of its host side ([`super::HostPort`]), if it has a `uds-path`: where its
    /// packets to CID 2 go.
    pub host: Option<PortId>,
}

/// Per-VM counters, shared between its port (switch thread) and whoever reports them.
#[derive(Debug, Default)]
pub struct VmCounters {
    /// Packets the guest sent (tx queue).
    pub tx_packets: AtomicU64,
    /// Payload bytes the guest sent.
    pub tx_bytes: AtomicU64,
    /// Packets put in the guest's rx queue.
    pub rx_packets: AtomicU64,
    /// Payload bytes put in its rx queue.
    pub rx_bytes: AtomicU64,
    /// Connection requests it made that were forwarded.
    pub connections_opened: AtomicU64,
    /// Packets of its refused with RST (unknown CID, no shared group, no connection, too many).
    pub refused: AtomicU64,
    /// Connections reset by vmq (credit overrun, protocol fault, peer gone).
    pub resets: AtomicU64,
    /// Packets it sent that were malformed (dropped, answered with RST where possible).
    pub malformed: AtomicU64,
    /// Times deliveries found no rx buffer posted (once until the guest posts one again).
    pub rx_stalls: AtomicU64,
    /// Control packets dropped because too many were owed ([`CONTROL_QUEUE_MAX`]).
    pub control_dropped: AtomicU64,
    /// Pieces that did not fit the rx buffer the guest posted (dropped).
    pub rx_too_small: AtomicU64,
    /// Host<->guest connections opened over its `uds-path`, either way.
    pub host_connections: AtomicU64,
    /// Host<->guest connections refused or dropped before they opened (nobody listening on
    /// `<uds-path>_P`, a bad `CONNECT` line, the guest refusing or not answering, limits).
    pub host_refused: AtomicU64,
}

/// A snapshot of one VM's [`VmCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[allow(missing_docs)]
pub struct VmCounts {
    pub cid: u64,
    pub connected: bool,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub connections_opened: u64,
    pub refused: u64,
    pub resets: u64,
    pub malformed: u64,
    pub rx_stalls: u64,
    pub control_dropped: u64,
    pub rx_too_small: u64,
    pub host_connections: u64,
    pub host_refused: u64,
}

/// What vmq knows about one VM.
#[derive(Debug)]
pub struct VmEntry {
    /// Who it is.
    pub addr: VmAddress,
    /// Whether its VMM is connected and its queues run (packets for it can be delivered).
    pub connected: AtomicBool,
    /// Its counters.
    pub counters: VmCounters,
    /// Wakes the switch loop for this VM (kicks, control packets for it).
    pub doorbell: EventFd,
    /// Times the guest went away ([`VsockNetwork::guest_gone`]): its host side ends its
    /// connections when this moves.
    pub departures: AtomicU64,
    control: Mutex<VecDeque<PacketHeader>>,
}

impl VmEntry {
    /// Control packets owed to this guest, oldest first.
    pub(super) fn control(&self) -> MutexGuard<'_, VecDeque<PacketHeader>> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Owes `hdr` (an RST from vmq) to this guest. Called on the switch thread, which writes
    /// it into the guest's rx queue at its next pass (or, before it sleeps, sees it owed).
    pub fn push_control(&self, hdr: PacketHeader) {
        let mut q = self.control();
        if q.len() >= CONTROL_QUEUE_MAX {
            q.pop_front();
            self.counters
                .control_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(hdr);
    }

    /// Wakes the switch loop for this guest (a kick, its device starting or stopping).
    pub fn ring(&self) {
        let _ = self.doorbell.write(1);
    }

    /// Forgets what was owed (the guest's device went away).
    pub fn clear_control(&self) {
        self.control().clear();
    }

    /// A snapshot of the counters.
    pub fn counts(&self) -> VmCounts {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        VmCounts {
            cid: self.addr.cid,
            connected: self.connected.load(Ordering::Acquire),
            tx_packets: l(&c.tx_packets),
            tx_bytes: l(&c.tx_bytes),
            rx_packets: l(&c.rx_packets),
            rx_bytes: l(&c.rx_bytes),
            connections_opened: l(&c.connections_opened),
            refused: l(&c.refused),
            resets: l(&c.resets),
            malformed: l(&c.malformed),
            rx_stalls: l(&c.rx_stalls),
            control_dropped: l(&c.control_dropped),
            rx_too_small: l(&c.rx_too_small),
            host_connections: l(&c.host_connections),
            host_refused: l(&c.host_refused),
        }
    }
}

/// Errors building a [`VsockNetwork`].
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// Two VMs with one CID.
    #[error("two VMs have guest CID {0}; every VM needs a CID of its own")]
    DuplicateCid(u64),
    /// The relay settings are out of range.
    #[error(transparent)]
    Relay(#[from] RelayConfigError),
    /// A service's CID is a VM's, reserved, or another service's.
    #[error("service CID {0} is taken (a VM's, another service's, or reserved); give the service a CID of its own, 3 or more")]
    ServiceCid(u64),
    /// An eventfd could not be made.
    #[error("cannot create an eventfd for VM CID {cid}: {source}")]
    EventFd {
        /// The VM.
        cid: u64,
        /// Why.
        source: std::io::Error,
    },
}

/// The vsock VMs one switch serves: who is who (CID to port), who may reach whom (groups),
/// the connections vmq relays between them, and what vmq itself owes each guest. Shared by
/// every vsock port of the switch (all on the switch thread) and the serve loop.
#[derive(Debug)]
pub struct VsockNetwork {
    vms: Vec<Arc<VmEntry>>,
    by_cid: HashMap<u64, usize>,
    /// Changed only by the switch thread (a reload), read by it per packet to a service: the
    /// lock is never contended.
    services: Mutex<HashMap<u64, ServiceRoute>>,
    relay: Mutex<Relay>,
    /// Services that relay connections themselves, by CID. Changed by the switch thread (start,
    /// a reload) and read by it per delivery from a service's CID: never contended.
    watches: Mutex<HashMap<u64, Arc<dyn DeliveryWatch>>>,
}

impl VsockNetwork {
    /// A network of `vms`, relaying with `relay`.
    pub fn new(vms: Vec<VmAddress>, relay: RelayConfig) -> Result<Self, NetworkError> {
        let mut by_cid = HashMap::new();
        let mut entries = Vec::with_capacity(vms.len());
        for (i, addr) in vms.into_iter().enumerate() {
            if by_cid.insert(addr.cid, i).is_some() {
                return Err(NetworkError::DuplicateCid(addr.cid));
            }
            let doorbell =
                EventFd::new(libc::EFD_NONBLOCK).map_err(|source| NetworkError::EventFd {
                    cid: addr.cid,
                    source,
                })?;
            entries.push(Arc::new(VmEntry {
                addr,
                connected: AtomicBool::new(false),
                counters: VmCounters::default(),
                doorbell,
                departures: AtomicU64::new(0),
                control: Mutex::new(VecDeque::new()),
            }));
        }
        Ok(Self {
            vms: entries,
            by_cid,
            services: Mutex::new(HashMap::new()),
            relay: Mutex::new(Relay::new(relay)?),
            watches: Mutex::new(HashMap::new()),
        })
    }

    /// Makes `cid` a service's address, reached as `route` says.
    pub fn add_service(&self, cid: u64, route: ServiceRoute) -> Result<(), NetworkError> {
        let mut services = self.services();
        if !crate::vsock::packet::is_guest_cid(cid)
            || self.by_cid.contains_key(&cid)
            || services.contains_key(&cid)
        {
            return Err(NetworkError::ServiceCid(cid));
        }
        services.insert(cid, route);
        Ok(())
    }

    /// Tells `watch` of every packet from service CID `cid` placed in a guest's rx queue (a
    /// `connection` service's own relay).
    pub fn watch_deliveries(&self, cid: u64, watch: Arc<dyn DeliveryWatch>) {
        lock(&self.watches).insert(cid, watch);
    }

    /// `part` (from a [`crate::vsock::relay::Verdict::Forward`], or one part of it) went into
    /// its receiver's rx queue: the relay, or the service that relays it, counts it delivered.
    /// An error only if more was reported than forwarded (a caller's bug).
    pub fn on_delivered(
        &self,
        part: &PacketHeader,
    ) -> Result<bool, crate::vsock::credit::CreditError> {
        // The relay holds connections between VMs only, and takes no service's lock.
        if self.by_cid.contains_key(&part.src_cid) {
            return self.relay().on_delivered(part);
        }
        // A service that relays connections itself counts its own; what the host side or a
        // message service sent is theirs to count.
        let watch = lock(&self.watches).get(&part.src_cid).cloned();
        match watch {
            Some(w) => {
                w.delivered(part);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// `cid` is no service's address any more: packets to it are refused (RST) from now on,
    /// and deliveries from it are nobody's to watch.
    pub fn remove_service(&self, cid: u64) -> Option<ServiceRoute> {
        lock(&self.watches).remove(&cid);
        self.services().remove(&cid)
    }

    /// Routes backend VM `vm`'s packets to service `cid`'s connections to member port `port`,
    /// or (`None`) to no port any more: they are refused (RST). Returns whether `cid` is a
    /// service's.
    pub fn set_backend(&self, cid: u64, vm: u64, port: Option<PortId>) -> bool {
        let mut services = self.services();
        let Some(r) = services.get_mut(&cid) else {
            return false;
        };
        match port {
            Some(p) => r.backends.insert(vm, p),
            None => r.backends.remove(&vm),
        };
        true
    }

    fn services(&self) -> MutexGuard<'_, HashMap<u64, ServiceRoute>> {
        lock(&self.services)
    }

    /// The switch port a packet from VM `from` to `dst_cid:dst_port` goes to when `dst_cid`
    /// is a service: a backend's answer on a connection vmq opened (a port at or above
    /// [`SERVICE_BACKEND_PORTS`]) goes to that backend's member port, anything else to the
    /// service's front; so does a backend's connection to the service's load port. `None` when `dst_cid` is no service's (or `from` is not a backend of
    /// it and uses a backend port).
    pub fn service_port(&self, dst_cid: u64, from: u64, dst_port: u32) -> Option<PortId> {
        let services = self.services();
        let r = services.get(&dst_cid)?;
        if dst_port >= SERVICE_BACKEND_PORTS || Some(dst_port) == r.load_port {
            r.backends.get(&from).copied()
        } else {
            Some(r.front)
        }
    }

    /// The VM with guest CID `cid`.
    pub fn vm(&self, cid: u64) -> Option<&Arc<VmEntry>> {
        self.by_cid.get(&cid).map(|&i| &self.vms[i])
    }

    /// Every VM, in the order given.
    pub fn vms(&self) -> &[Arc<VmEntry>] {
        &self.vms
    }

    /// Whether `from` may open connections to `to`: both known and sharing a group.
    pub fn may_reach(&self, from: u64, to: u64) -> bool {
        match (self.vm(from), self.vm(to)) {
            (Some(a), Some(b)) if from != to => a
                .addr
                .groups
                .iter()
                .any(|g| b.addr.groups.iter().any(|h| h == g)),
            _ => false,
        }
    }

    /// The relayed connections.
    pub fn relay(&self) -> MutexGuard<'_, Relay> {
        lock(&self.relay)
    }

    /// VM `cid` went away (its VMM stopped the device or disconnected): its connections end and
    /// their other ends get an RST.
    pub fn guest_gone(&self, cid: u64) {
        let rsts = self.relay().remove_guest(cid);
        self.send_resets(rsts);
        if let Some(vm) = self.vm(cid) {
            vm.clear_control();
            vm.departures.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Ends connections past the relay's timeouts (call about once a second).
    pub fn sweep(&self, now_ns: u64) {
        let resets = self.relay().sweep(now_ns);
        self.send_resets(resets.iter().flat_map(|r| [r.to_initiator, r.to_acceptor]));
    }

    /// Owes each RST to the guest it is for, counting it there.
    fn send_resets(&self, rsts: impl IntoIterator<Item = PacketHeader>) {
        for rst in rsts {
            if let Some(vm) = self.vm(rst.dst_cid) {
                vm.counters.resets.fetch_add(1, Ordering::Relaxed);
                vm.push_control(rst);
            }
        }
    }

    /// A snapshot of every VM's counters.
    pub fn counts(&self) -> Vec<VmCounts> {
        self.vms.iter().map(|v| v.counts()).collect()
    }
}

/// `m`'s guard, poisoned or not (what it guards stays consistent: every change is one insert
/// or remove).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
