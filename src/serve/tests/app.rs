//! A guest's applications played in Rust for the service tests: endpoints over a played VMM,
//! the guest kernel's part done by [`Endpoint`] as Linux's transport would. Clients connect to
//! a service; backends listen, answer, stop reading, freeze or go slow as a test asks.

use std::collections::{HashMap, HashSet};

use super::world::{SERVICE_CID, SERVICE_PORT};
use super::*;
use crate::vsock::endpoint::{CloseReason, Endpoint, EndpointConfig};

/// A guest's applications: endpoints over its played VMM, the guest kernel's part (packets in
/// and out, credit) done by [`Endpoint`] as Linux's transport would.
pub(in crate::serve::tests) struct App {
    pub(in crate::serve::tests) g: VmmFrontend,
    cid: u64,
    /// Listening on this port (a backend): requests are accepted; others get an RST.
    pub(in crate::serve::tests) listen: Option<u32>,
    pub(in crate::serve::tests) eps: HashMap<(u32, u64, u32), Endpoint>,
    /// The next local port a client connection takes.
    next_port: u32,
    /// A backend's application answers (reads and replies) only while this is set.
    pub(in crate::serve::tests) reading: bool,
    pub(in crate::serve::tests) answered: u64,
    /// A slow application: answers one message in this many pumps (1: every pump).
    pub(in crate::serve::tests) slowness: u32,
    pumps: u32,
    /// Its vCPUs are stopped: neither its kernel nor its application runs (no rx buffer is
    /// taken or posted, nothing is sent).
    pub(in crate::serve::tests) frozen: bool,
    /// Connections accepted.
    pub(in crate::serve::tests) accepted: u64,
    /// A backend's application that resets each connection once it has answered on it.
    pub(in crate::serve::tests) reset_after_answer: bool,
    /// Every source address a packet came from.
    pub(in crate::serve::tests) sources: HashSet<SockAddr>,
    /// Why each connection that ended closed, by its key.
    pub(in crate::serve::tests) closed: HashMap<(u32, u64, u32), Option<CloseReason>>,
}

impl App {
    pub(in crate::serve::tests) fn new(dir: &Dir, cid: u64, listen: Option<u32>) -> Self {
        Self::with_vmm(guest(&dir.sock(cid)), cid, listen)
    }

    /// A guest whose driver posts rx buffers of `rx_buf_size` bytes (vsock header included).
    pub(in crate::serve::tests) fn with_rx_buf(
        dir: &Dir,
        cid: u64,
        listen: Option<u32>,
        rx_buf_size: u32,
    ) -> Self {
        let cfg = FrontendConfig {
            rx_buf_size,
            ..FrontendConfig::default()
        };
        let g = VmmFrontend::connect(dir.sock(cid), cfg).expect("VMM connects");
        Self::with_vmm(g, cid, listen)
    }

    fn with_vmm(g: VmmFrontend, cid: u64, listen: Option<u32>) -> Self {
        Self {
            g,
            cid,
            listen,
            eps: HashMap::new(),
            next_port: 2000,
            reading: true,
            answered: 0,
            slowness: 1,
            pumps: 0,
            frozen: false,
            accepted: 0,
            reset_after_answer: false,
            sources: HashSet::new(),
            closed: HashMap::new(),
        }
    }

    /// Packets in and out until nothing moves; a backend answers what it reads: a message
    /// with the request's bytes and its CID, stream bytes with the same bytes.
    pub(in crate::serve::tests) fn pump(&mut self) -> bool {
        if self.frozen {
            return false;
        }
        let mut moved = false;
        let mut refused = Vec::new();
        while let Some(bytes) = self.g.recv().expect("rx works") {
            moved = true;
            let Ok(h) = PacketHeader::decode(&bytes) else {
                continue;
            };
            self.sources.insert(h.src());
            let data = &bytes[HEADER_LEN..HEADER_LEN + h.len as usize];
            let key = (h.dst_port, h.src_cid, h.src_port);
            if let Some(ep) = self.eps.get_mut(&key) {
                let _ = ep.on_packet(&h, data);
            } else if h.op == Op::Request as u16 && Some(h.dst_port) == self.listen {
                let ep = Endpoint::accept(EndpointConfig::default(), &h).expect("a request");
                self.eps.insert(key, ep);
                self.accepted += 1;
            } else if h.op == Op::Request as u16 {
                // Nobody listens there: Linux answers with an RST.
                refused.extend(h.rst_reply());
            }
        }
        for rst in refused {
            self.g.reclaim_tx().unwrap();
            self.g.send(&rst.encode()).expect("tx works");
        }
        self.pumps += 1;
        if self.reading && self.listen.is_some() && self.pumps % self.slowness == 0 {
            let mut budget = if self.slowness > 1 { 1 } else { usize::MAX };
            for ep in self.eps.values_mut() {
                while budget > 0 {
                    let Some(m) = ep.read_message() else {
                        break;
                    };
                    budget -= 1;
                    let mut reply = m.data;
                    reply.push(self.cid as u8);
                    let _ = ep.write_message(&reply, true);
                    self.answered += 1;
                    if self.reset_after_answer {
                        // The answer goes first, then the RST.
                        while let Some((h, p)) = ep.next_packet(4096) {
                            self.g.reclaim_tx().unwrap();
                            let mut v = h.encode().to_vec();
                            v.extend_from_slice(&p);
                            self.g.send(&v).expect("tx works");
                        }
                        ep.reset();
                        break;
                    }
                }
                let mut buf = [0u8; 4096];
                while ep.socket_type() == SocketType::Stream {
                    let room = ep.send_space().min(buf.len());
                    let n = ep.read(&mut buf[..room]);
                    if n == 0 {
                        break;
                    }
                    ep.write(&buf[..n]);
                }
            }
        }
        for ep in self.eps.values_mut() {
            while let Some((h, p)) = ep.next_packet(4096) {
                self.g.reclaim_tx().unwrap();
                let mut v = h.encode().to_vec();
                v.extend_from_slice(&p);
                self.g.send(&v).expect("tx works");
                moved = true;
            }
        }
        self.g.reclaim_tx().unwrap();
        let closed = &mut self.closed;
        self.eps.retain(|&k, ep| {
            let keep = !ep.is_closed() || ep.messages_ready() > 0;
            if !keep {
                closed.insert(k, ep.close_reason().cloned());
            }
            keep
        });
        moved
    }

    /// Opens a SEQPACKET connection to the service from a port of its own.
    pub(in crate::serve::tests) fn connect(&mut self) -> (u32, u64, u32) {
        self.connect_to(SERVICE_PORT)
    }

    /// Opens a SEQPACKET connection to the service's CID, port `to`.
    pub(in crate::serve::tests) fn connect_to(&mut self, to: u32) -> (u32, u64, u32) {
        self.connect_with(SocketType::SeqPacket, to)
    }

    /// Opens a connection of type `ty` to the service's CID, port `to`.
    pub(in crate::serve::tests) fn connect_with(
        &mut self,
        ty: SocketType,
        to: u32,
    ) -> (u32, u64, u32) {
        self.connect_full(ty, SERVICE_CID, to)
    }

    /// Opens a SEQPACKET connection to `cid:to` from a port of its own.
    pub(in crate::serve::tests) fn connect_at(&mut self, cid: u64, to: u32) -> (u32, u64, u32) {
        self.connect_full(SocketType::SeqPacket, cid, to)
    }

    /// Opens a connection of type `ty` to `cid:to` from a port of its own.
    fn connect_full(&mut self, ty: SocketType, cid: u64, to: u32) -> (u32, u64, u32) {
        let port = self.next_port;
        self.next_port += 1;
        let ep = Endpoint::connect(
            EndpointConfig::default(),
            ty,
            SockAddr::new(self.cid, port),
            SockAddr::new(cid, to),
        )
        .unwrap();
        let key = (port, cid, to);
        self.eps.insert(key, ep);
        key
    }
}
