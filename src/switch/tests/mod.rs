//! The switch end to end with in-process peers (host threads' worth of driver code, run
//! step by step here) and an injected clock: no wall-clock anywhere.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use proptest::prelude::*;
use vm_memory::GuestMemoryMmap;

use super::*;
use crate::peer::{host_peer, HostPeer, PeerConfig};
use crate::virtio::DevicePort;
use crate::wire::{MsgHeader, MsgKind, Status};

const STEP_NS: u64 = 50_000;

struct Peer {
    h: HostPeer,
    buf: Vec<u8>,
}

impl Peer {
    /// A host peer with queues of `queue_size` entries of 256 bytes, and its device port.
    fn new(queue_size: u16) -> (Self, DevicePort<GuestMemoryMmap>) {
        let (h, dev) = host_peer(PeerConfig {
            queue_size,
            slot_size: 256,
            event_idx: true,
        })
        .unwrap();
        let peer = Peer {
            h,
            buf: vec![0; 256],
        };
        (peer, dev)
    }

    /// Everything delivered since last time (rx buffers re-posted and published).
    fn recv_all(&mut self) -> Vec<(MsgHeader, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(m) = self.h.rx.recv(&mut self.buf).unwrap() {
            out.push((m.header, self.buf[..m.len].to_vec()));
        }
        self.h.rx.flush().unwrap();
        self.h.tx.reclaim().unwrap();
        out
    }

    fn send(&mut self, h: &MsgHeader, payload: &[u8]) -> bool {
        self.h.tx.reclaim().unwrap();
        if self.h.tx.free() == 0 {
            return false;
        }
        self.h.tx.send(h, payload).unwrap();
        self.h.tx.flush().unwrap();
        true
    }

    /// Serves up to `max` requests: echo the payload with `status`. Returns requests served.
    fn serve(&mut self, max: usize, status: Status) -> usize {
        let mut n = 0;
        while n < max {
            if self.h.tx.free() == 0 {
                self.h.tx.reclaim().unwrap();
                if self.h.tx.free() == 0 {
                    break;
                }
            }
            let Some(m) = self.h.rx.recv(&mut self.buf).unwrap() else {
                break;
            };
            if m.header.kind() != Some(MsgKind::Request) {
                continue;
            }
            let rep = MsgHeader::reply_to(&m.header, status, m.len as u32);
            let payload = self.buf[..m.len].to_vec();
            self.h.tx.send(&rep, &payload).unwrap();
            n += 1;
        }
        self.h.rx.flush().unwrap();
        self.h.tx.flush().unwrap();
        n
    }
}

struct Net {
    sw: Switch<GuestMemoryMmap>,
    clock: ManualClock,
    peers: Vec<Peer>,
}

fn net(n: usize, queue_size: u16) -> Net {
    let clock = ManualClock::new(1_000_000);
    let mut sw = Switch::new(SwitchConfig::default(), Arc::new(clock.clone())).unwrap();
    let mut peers = Vec::new();
    for i in 0..n {
        let (peer, dev) = Peer::new(queue_size);
        sw.add_port(&format!("p{i}"), dev, Box::new(Polling))
            .unwrap();
        peers.push(peer);
    }
    Net { sw, clock, peers }
}

impl Net {
    fn step(&mut self) {
        self.clock.advance(STEP_NS);
        self.sw.poll();
    }

    /// Revives port `p` (removed before) with a fresh host peer of `queue_size` entries.
    fn revive(&mut self, p: usize, queue_size: u16) {
        let (peer, dev) = Peer::new(queue_size);
        self.sw
            .revive_port(p as u32, dev, Box::new(Polling))
            .unwrap();
        self.peers[p] = peer;
    }

    fn service(&mut self, name: &str, policy: PolicyKind, members: &[(u32, f64)]) -> ServiceId {
        let mut cfg = ServiceConfig::default();
        cfg.policy.kind = policy;
        self.sw.add_service(name, cfg, members).unwrap()
    }
}

/// Backends that serve up to `max` requests a step, all `Ok`.
fn serve_ok(max: usize) -> impl FnMut(&mut Net, usize, u64) -> Option<(usize, Status)> {
    move |_, _, _| Some((max, Status::Ok))
}

fn payload(id: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (id as usize * 7 + i) as u8).collect()
}

/// Runs `total` requests from port 0 to service `svc` with backends `backends` serving as
/// `serve` says (per step: how many to serve and with which status; None = stalled).
/// Returns the answers the client saw, by msg id.
fn run_requests(
    n: &mut Net,
    svc: ServiceId,
    total: u64,
    backends: &[usize],
    serve: impl FnMut(&mut Net, usize, u64) -> Option<(usize, Status)>,
    max_steps: usize,
) -> HashMap<u64, Vec<Status>> {
    run_requests_at(n, 0, svc, total, backends, serve, max_steps, true)
}

/// [`run_requests`] from port `frontend`, with backends serving everything `Ok`; done when
/// every request has its answer (other ports may still have requests in flight).
fn run_requests_from(
    n: &mut Net,
    frontend: usize,
    svc: ServiceId,
    total: u64,
    backends: &[usize],
    max_steps: usize,
) -> HashMap<u64, Vec<Status>> {
    run_requests_at(
        n,
        frontend,
        svc,
        total,
        backends,
        serve_ok(16),
        max_steps,
        false,
    )
}

#[allow(clippy::too_many_arguments)]
fn run_requests_at(
    n: &mut Net,
    frontend: usize,
    svc: ServiceId,
    total: u64,
    backends: &[usize],
    mut serve: impl FnMut(&mut Net, usize, u64) -> Option<(usize, Status)>,
    max_steps: usize,
    until_idle: bool,
) -> HashMap<u64, Vec<Status>> {
    let mut answers: HashMap<u64, Vec<Status>> = HashMap::new();
    let mut sent = 0u64;
    for step in 0..max_steps {
        while sent < total {
            let h = MsgHeader::request_to_service(svc, sent, 16);
            if !n.peers[frontend].send(&h, &payload(sent, 16)) {
                break;
            }
            sent += 1;
        }
        n.step();
        for &b in backends {
            if let Some((k, st)) = serve(n, b, step as u64) {
                n.peers[b].serve(k, st);
            }
        }
        n.step();
        for (h, p) in n.peers[frontend].recv_all() {
            if h.kind() == Some(MsgKind::Reply) {
                if h.status() == Some(Status::Ok) {
                    assert_eq!(
                        p,
                        payload(h.msg_id(), 16),
                        "reply payload echoes the request"
                    );
                }
                answers
                    .entry(h.msg_id())
                    .or_default()
                    .push(h.status().unwrap());
            }
        }
        if answers.len() as u64 == total && (!until_idle || n.sw.in_flight() == 0) {
            break;
        }
    }
    answers
}

fn assert_exactly_once(answers: &HashMap<u64, Vec<Status>>, total: u64) {
    for id in 0..total {
        let a = answers
            .get(&id)
            .unwrap_or_else(|| panic!("request {id} got no answer"));
        assert_eq!(a.len(), 1, "request {id} got {} answers", a.len());
    }
}

fn assert_totals_add_up(sw: &Switch<GuestMemoryMmap>) {
    let s = sw.snapshot();
    let t = s.totals;
    assert_eq!(
        t.requests_accepted,
        t.replies_delivered + t.failed_back + t.orphaned + t.refused + s.in_flight as u64,
        "{t:?}"
    );
}

fn shares(sw: &Switch<GuestMemoryMmap>) -> Vec<f64> {
    sw.snapshot().services[0]
        .members
        .iter()
        .map(|m| m.share)
        .collect()
}

mod bounds;
mod config;
mod faults;
mod membership;
mod notify;
mod routing;
mod sched;
mod services;
