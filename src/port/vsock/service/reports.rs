//! [`Reporters`]: a backend's connections to its service's load port, and the load reports
//! they carry (seed 003: the backend tells the switch how loaded it is).
//!
//! A report is one SEQPACKET message `load N`, N from 0 (idle) to 1000 (saturated); it becomes
//! the switch's load report for the backend's member port, merged into its health and checked
//! against how it drains.
//!
//! Bounds: at most [`MAX_REPORTERS`] connections per backend, each an [`Endpoint`] with the
//! buffers it was given.

use std::collections::HashMap;
use std::sync::Arc;

use crate::port::vsock::{Staging, VmEntry};
use crate::virtio::TxChain;
use crate::vsock::endpoint::{Endpoint, EndpointConfig};
use crate::vsock::packet::{Op, PacketHeader, SocketType};
use crate::wire::{MsgHeader, MsgKind};

/// Load-report connections one backend may have open.
pub const MAX_REPORTERS: usize = 4;

/// One backend's connections to the load port.
pub(super) struct Reporters {
    vm: Arc<VmEntry>,
    endpoint: EndpointConfig,
    eps: HashMap<u32, Endpoint>,
    /// Load reports taken, and messages on the load port that were none.
    pub reports: u64,
    pub bad: u64,
    /// The last report taken, if any.
    pub last: Option<u16>,
}

impl Reporters {
    /// No connections yet, for backend `vm`; each will have `endpoint`'s buffers.
    pub fn new(vm: Arc<VmEntry>, endpoint: EndpointConfig) -> Self {
        Self {
            vm,
            endpoint,
            eps: HashMap::new(),
            reports: 0,
            bad: 0,
            last: None,
        }
    }

    /// Resets every report connection (the backend's port is leaving the switch).
    pub fn close(&mut self) {
        for (_, ep) in std::mem::take(&mut self.eps) {
            super::reset_to(&self.vm, &ep);
        }
    }

    /// A packet of the backend's to the load port.
    pub fn on_packet(&mut self, hdr: &PacketHeader, data: &[u8]) {
        if let Some(ep) = self.eps.get_mut(&hdr.src_port) {
            let _ = ep.on_packet(hdr, data);
            return;
        }
        let accepted = (hdr.op == Op::Request as u16
            && hdr.ty == SocketType::SeqPacket as u16
            && self.eps.len() < MAX_REPORTERS)
            .then(|| Endpoint::accept(self.endpoint, hdr).ok())
            .flatten();
        match accepted {
            Some(ep) => {
                self.eps.insert(hdr.src_port, ep);
            }
            None if hdr.op != Op::Rst as u16 => {
                if let Some(rst) = hdr.rst_reply() {
                    self.vm.push_control(rst);
                }
            }
            None => {}
        }
    }

    /// Takes the reports the backend sent, each staged as the switch's load report, and stages
    /// what the report connections owe the backend.
    pub fn pump(&mut self, staging: &mut Staging, sent: &mut Vec<TxChain>) {
        for ep in self.eps.values_mut() {
            while let Some(m) = ep.read_message() {
                let text = String::from_utf8_lossy(&m.data);
                let load = text
                    .trim()
                    .strip_prefix("load ")
                    .and_then(|n| n.trim().parse::<u16>().ok())
                    .filter(|&n| n <= crate::wire::LOAD_MAX);
                let Some(load) = load else {
                    self.bad += 1;
                    continue;
                };
                let mut h = MsgHeader::new(MsgKind::LoadReport, 0, 0, 0);
                h.set_load(load);
                if let Some(chain) = staging.stage(h, &[]) {
                    sent.push(chain);
                    self.reports += 1;
                    self.last = Some(load);
                }
            }
            staging.stage_owed(ep, self.vm.addr.port, usize::MAX, 0, sent);
        }
        self.eps.retain(|_, ep| !ep.is_closed());
    }
}
