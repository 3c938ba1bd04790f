//! [`ConnBackendPort`]: one backend VM of a `connection` service, as a member of the switch's
//! service.
//!
//! A connect request the switch delivers opens a connection to the backend's application (a
//! REQUEST from `service:local`, with the client's credit) and waits for its answer; the
//! answer is the reply: `Ok` when it accepted (the client got its RESPONSE), `BackendError`
//! when it refused, did not answer within the connect timeout, or its VM went away. After a
//! refusal or a timeout the port takes no connect request for `refused_backoff_ns`, so the
//! front's retry goes to another backend. Once a connection is established, the backend's
//! packets are checked against the [`ConnTable`](super::ConnTable), translated and staged for
//! the client's VM; its connections to the load port carry load reports, as in `message` mode.
//!
//! # Bounds
//!
//! - connect requests pending: at most `max_connecting`;
//! - staging: `slots` pieces in transit to clients (each connection at most the credit cap of
//!   them), replies and load reports;
//! - load-report connections: at most four, as in `message` mode.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use super::super::reports::Reporters;
use super::{apply, hand_over, Answer, Connect, Out, SharedTable, CHECK_NS};
use crate::port::vsock::{
    read_piece_between, ringless_port, staged_port_memory, Piece, Staging, VmEntry, PIECE_PAYLOAD,
};
use crate::port::{Drain, Port, PortId};
use crate::switch::Clock;
use crate::virtio::{DeliverError, DeviceError, Payload, TxChain};
use crate::vsock::endpoint::EndpointConfig;
use crate::vsock::packet::{PacketHeader, HEADER_LEN};
use crate::wire::{MsgHeader, MsgKind, Status};

/// Settings of one backend of a `connection` service.
#[derive(Debug, Clone)]
pub struct ConnBackendConfig {
    /// The service's CID (the source of the connections vmq opens).
    pub service_cid: u64,
    /// This port's own id in the switch (the table knows legs by it).
    pub member: PortId,
    /// The vsock port the backend's application listens on.
    pub port: u32,
    /// Connect requests waiting for the backend's answer at once.
    pub max_connecting: u32,
    /// A REQUEST the backend does not answer in this long is given up (and reset).
    pub connect_timeout_ns: u64,
    /// After a refusal or a connect timeout, no connect request is taken for this long.
    pub refused_backoff_ns: u64,
    /// Staging slots (pieces for clients, replies, load reports).
    pub slots: u32,
    /// The service's load port: the backend's connections to it carry load reports.
    pub load_port: Option<u32>,
    /// Buffers of each load-report connection.
    pub report_endpoint: EndpointConfig,
}

/// A connect request waiting for the backend's answer.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// The switch's id of it (the in-flight token).
    token: u64,
    since_ns: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct BackendCounters {
    /// REQUESTs sent to the backend.
    opened: u64,
    accepted: u64,
    refused: u64,
    connect_timeouts: u64,
    /// Connect requests lost with the backend's VM (retried elsewhere).
    lost: u64,
}

/// One backend VM of a `connection` service. See the module documentation.
pub struct ConnBackendPort {
    cfg: ConnBackendConfig,
    vm: Arc<VmEntry>,
    table: Arc<SharedTable>,
    clock: Arc<dyn Clock>,
    staging: Staging,
    /// Staged, not yet handed to the switch.
    outgoing: Vec<TxChain>,
    outs: Vec<Out>,
    /// Connect requests by the service-side port their REQUEST came from.
    pending: HashMap<u32, Pending>,
    departures: u64,
    refused_until: u64,
    consumed: u16,
    last_check: u64,
    reporters: Reporters,
    counters: BackendCounters,
}

impl ConnBackendPort {
    /// Sets the port's id in the switch ([`ConnBackendConfig::member`]), for a port made
    /// before its id was known (a member a reload adds). Call it before the port is placed.
    pub fn set_member(&mut self, member: PortId) {
        self.cfg.member = member;
    }

    /// The backend `vm` of the service `cfg` describes, over its `table`.
    pub fn new(
        vm: Arc<VmEntry>,
        table: Arc<SharedTable>,
        cfg: ConnBackendConfig,
        clock: Arc<dyn Clock>,
    ) -> std::io::Result<Self> {
        cfg.report_endpoint
            .check()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Self {
            staging: Staging::new(cfg.slots)?,
            departures: vm.departures.load(Ordering::Acquire),
            reporters: Reporters::new(vm.clone(), cfg.report_endpoint),
            vm,
            table,
            cfg,
            clock,
            outgoing: Vec::new(),
            outs: Vec::new(),
            pending: HashMap::new(),
            refused_until: 0,
            consumed: 0,
            last_check: 0,
            counters: BackendCounters::default(),
        })
    }

    /// The backend VM's CID.
    pub fn cid(&self) -> u64 {
        self.vm.addr.cid
    }

    fn usable(&self, now: u64) -> bool {
        self.vm.connected.load(Ordering::Acquire) && now >= self.refused_until
    }

    /// Answers connect request `token`. It carries no load report (the reports reach the
    /// switch as they come, from the load port), so it claims nothing about the backend's load.
    fn reply(&mut self, token: u64, status: Status) {
        let mut h = MsgHeader::new(MsgKind::Reply, 0, token, 0);
        h.set_status(status);
        self.consumed = self.consumed.wrapping_add(1);
        match self.staging.stage(h, &[]) {
            Some(chain) => self.outgoing.push(chain),
            // Never with the slot checked free; the switch's deadline answers it instead.
            None => log::error!("service backend CID {}: no slot for a reply", self.cid()),
        }
    }

    /// The backend refused or did not answer: no connect request for a while.
    fn back_off(&mut self, now: u64) {
        self.refused_until = now.saturating_add(self.cfg.refused_backoff_ns);
    }

    /// A connect request: the 8 bytes the front sent (connection id, attempt).
    fn on_request(&mut self, token: u64, req: [u8; 8], now: u64) {
        let id = u32::from_le_bytes([req[0], req[1], req[2], req[3]]);
        let attempt = u32::from_le_bytes([req[4], req[5], req[6], req[7]]);
        let m = self.cfg.member;
        let c =
            self.table
                .lock()
                .connect(m, &self.vm, self.cfg.port, (id, attempt), &mut self.outs);
        apply(&mut self.staging, &mut self.outs, &[], &mut self.outgoing);
        match c {
            Connect::Opened { local, request } => {
                self.outs.push(Out::Stage {
                    vm: self.vm.clone(),
                    hdr: request,
                });
                apply(&mut self.staging, &mut self.outs, &[], &mut self.outgoing);
                self.pending.insert(
                    local,
                    Pending {
                        token,
                        since_ns: now,
                    },
                );
                self.counters.opened += 1;
            }
            Connect::Nothing => self.reply(token, Status::Ok),
        }
    }

    /// A packet the backend sent to the service's CID.
    fn on_packet(&mut self, h: &PacketHeader, data: &[u8], now: u64) {
        if Some(h.dst_port) == self.cfg.load_port {
            self.reporters.on_packet(h, data);
            return;
        }
        let m = self.cfg.member;
        let Some(p) = self.pending.get(&h.dst_port).copied() else {
            self.table
                .lock()
                .from_backend(m, &self.vm, h, &mut self.outs);
            apply(&mut self.staging, &mut self.outs, data, &mut self.outgoing);
            return;
        };
        let answer = self.table.lock().answer(m, &self.vm, h, &mut self.outs);
        apply(&mut self.staging, &mut self.outs, data, &mut self.outgoing);
        let status = match answer {
            Answer::Ignored => return,
            Answer::Accepted | Answer::Stale { accepted: true } => {
                self.counters.accepted += 1;
                Status::Ok
            }
            Answer::Refused | Answer::Stale { accepted: false } => {
                self.counters.refused += 1;
                self.back_off(now);
                Status::BackendError
            }
        };
        self.pending.remove(&h.dst_port);
        self.reply(p.token, status);
    }

    /// Connect requests whose backend did not answer in time, or whose VM went away, are
    /// answered with an error (the front retries them elsewhere).
    fn check(&mut self, now: u64) {
        let departures = self.vm.departures.load(Ordering::Acquire);
        let gone = departures != self.departures;
        self.departures = departures;
        let timeout = self.cfg.connect_timeout_ns;
        let failed: Vec<(u32, Pending)> = self
            .pending
            .iter()
            .filter(|(_, p)| gone || now.saturating_sub(p.since_ns) >= timeout)
            .map(|(&l, &p)| (l, p))
            .collect();
        if failed.is_empty() {
            return;
        }
        let m = self.cfg.member;
        let mut table = self.table.lock();
        for &(local, _) in &failed {
            // A VM gone has nothing left to reset.
            table.connect_failed(m, local, !gone, &mut self.outs);
        }
        drop(table);
        apply(&mut self.staging, &mut self.outs, &[], &mut self.outgoing);
        for (local, p) in failed {
            self.pending.remove(&local);
            if gone {
                self.counters.lost += 1;
            } else {
                self.counters.connect_timeouts += 1;
                self.back_off(now);
            }
            self.reply(p.token, Status::BackendError);
        }
    }
}

impl Port<GuestMemoryMmap> for ConnBackendPort {
    staged_port_memory!();

    fn take_sent(&mut self, max: usize, sent: &mut Vec<TxChain>) -> Result<usize, DeviceError> {
        let now = self.clock.now_ns();
        let departed = self.vm.departures.load(Ordering::Acquire) != self.departures;
        if departed || now.saturating_sub(self.last_check) >= CHECK_NS {
            self.last_check = now;
            self.check(now);
        }
        self.reporters.pump(&mut self.staging, &mut self.outgoing);
        Ok(hand_over(&mut self.outgoing, max, sent))
    }

    fn release(&mut self, msg: &TxChain) -> Result<(), DeviceError> {
        self.staging
            .release(msg, format_args!("service backend CID {}", self.cid()));
        Ok(())
    }

    fn deliver(
        &mut self,
        header: &MsgHeader,
        payload: &Payload<'_, GuestMemoryMmap>,
    ) -> Result<bool, DeliverError> {
        let now = self.clock.now_ns();
        match header.kind() {
            Some(MsgKind::Request) => {
                let full = self.pending.len() >= self.cfg.max_connecting as usize;
                // The REQUEST, the reply, and an RST in case it moves a connection.
                if full || !self.usable(now) || self.staging.free() < 3 {
                    return Err(DeliverError::NoBuffer);
                }
                let mut req = [0u8; 8];
                if payload.len() != 8 {
                    return Ok(false);
                }
                payload.copy_to(&mut req).map_err(DeliverError::Source)?;
                self.on_request(header.msg_id(), req, now);
            }
            Some(MsgKind::OneWay) => {
                let mut piece: Piece = [0; HEADER_LEN + PIECE_PAYLOAD as usize];
                let (src, dst) = (self.cid(), self.cfg.service_cid);
                let Some((h, data)) = read_piece_between(payload, &mut piece, src, dst)? else {
                    return Ok(false);
                };
                // A piece for the client, and the reply if it answers a REQUEST.
                if self.staging.free() < 2 {
                    return Err(DeliverError::NoBuffer);
                }
                self.on_packet(&h, data, now);
            }
            _ => {}
        }
        Ok(true)
    }

    ringless_port!();

    fn drain(&self) -> Drain {
        let cap = self.cfg.max_connecting.min(u32::from(u16::MAX)) as usize;
        let free = if self.usable(self.clock.now_ns()) {
            cap.saturating_sub(self.pending.len())
        } else {
            0
        };
        let table = self.table.lock();
        let (ended, broken) = table.outcomes(self.cfg.member);
        Drain {
            consumed: self.consumed,
            free: free as u16,
            capacity: cap as u16,
            held: table.established_by(self.cfg.member) as u32,
            ended,
            broken,
        }
    }

    fn holds_sessions(&self) -> bool {
        true
    }

    fn arm_kicks(&mut self, _rx_wanted: bool) -> bool {
        !self.outgoing.is_empty()
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = self.counters;
        let established = self.table.lock().established_by(self.cfg.member);
        vec![
            ("cid", self.cid()),
            ("pending_connects", self.pending.len() as u64),
            ("conns_established", established as u64),
            ("connections_opened", c.opened),
            ("accepted", c.accepted),
            ("refused", c.refused),
            ("connect_timeouts", c.connect_timeouts),
            ("connects_lost", c.lost),
            ("load_reports", self.reporters.reports),
            ("bad_reports", self.reporters.bad),
            ("staged", self.staging.in_use() as u64),
        ]
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
