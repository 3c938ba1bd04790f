//! The table's rules, without ports or guests: phases, translation, retries, forged packets,
//! credit, deadlines.

use std::sync::Arc;

use super::*;
use crate::port::vsock::{VmAddress, VsockNetwork};
use crate::vsock::packet::{PacketHeader, SockAddr, SocketType};
use crate::vsock::relay::RelayConfig;
use crate::wire::Status;

const SVC: SockAddr = SockAddr {
    cid: 100,
    port: 5000,
};
const CLIENT: SockAddr = SockAddr { cid: 3, port: 2000 };
/// Member ports of backends 4 and 5.
const M4: PortId = 10;
const M5: PortId = 11;

use crate::port::PortId;

fn net() -> VsockNetwork {
    let vms = [3, 4, 5]
        .iter()
        .enumerate()
        .map(|(i, &cid)| VmAddress {
            cid,
            port: i as u32,
            groups: vec!["g".into()],
            host: None,
        })
        .collect();
    VsockNetwork::new(vms, RelayConfig::default()).unwrap()
}

fn table(members: usize) -> ConnTable {
    ConnTable::new(TableConfig {
        cid: SVC.cid,
        port: SVC.port,
        max_connections: 4,
        members,
        relay: RelayConfig {
            credit_cap: 64 * 1024,
            request_timeout_ns: 1_000_000_000,
            ..RelayConfig::default()
        },
    })
    .unwrap()
}

fn pkt(op: Op, src: SockAddr, dst: SockAddr, len: u32, fwd: u32) -> PacketHeader {
    let mut h = PacketHeader::new(SocketType::Stream, op, src, dst);
    (h.len, h.buf_alloc, h.fwd_cnt) = (len, 256 * 1024, fwd);
    h
}

/// What `out` staged and owed, as (receiving CID, header, staged?).
fn sent(out: &mut Vec<Out>) -> Vec<(u64, PacketHeader, bool)> {
    out.drain(..)
        .map(|o| match o {
            Out::Stage { vm, hdr } => (vm.addr.cid, hdr, true),
            Out::Control { vm, hdr } => (vm.addr.cid, hdr, false),
        })
        .collect()
}

struct World {
    net: VsockNetwork,
    t: ConnTable,
    out: Vec<Out>,
}

impl World {
    fn new(members: usize) -> Self {
        Self {
            net: net(),
            t: table(members),
            out: Vec::new(),
        }
    }
    fn vm(&self, cid: u64) -> Arc<VmEntry> {
        self.net.vm(cid).unwrap().clone()
    }
    fn client(&mut self, h: PacketHeader) -> Option<u32> {
        let c = self.vm(3);
        self.t.from_client(&c, &h, &mut self.out)
    }
    /// Member `m` (backend `cid`, port 6000) connects attempt `a` of `id`; returns the local.
    fn connect(&mut self, m: PortId, cid: u64, id: u32, a: u32) -> Option<(u32, PacketHeader)> {
        let vm = self.vm(cid);
        match self.t.connect(m, &vm, 6000, (id, a), &mut self.out) {
            Connect::Opened { local, request } => Some((local, request)),
            Connect::Nothing => None,
        }
    }
    fn answer(&mut self, m: PortId, cid: u64, h: PacketHeader) -> Answer {
        let vm = self.vm(cid);
        self.t.answer(m, &vm, &h, &mut self.out)
    }
    fn backend(&mut self, m: PortId, cid: u64, h: PacketHeader) {
        let vm = self.vm(cid);
        self.t.from_backend(m, &vm, &h, &mut self.out);
    }
    /// A connection from CLIENT accepted by backend 4 (member M4): its local port.
    fn established(&mut self) -> u32 {
        let id = self.client(pkt(Op::Request, CLIENT, SVC, 0, 0)).unwrap();
        let (local, _) = self.connect(M4, 4, id, 0).unwrap();
        let b = SockAddr::new(4, 6000);
        let resp = pkt(Op::Response, b, SockAddr::new(SVC.cid, local), 0, 0);
        assert_eq!(self.answer(M4, 4, resp), Answer::Accepted);
        self.out.clear();
        local
    }
}

#[test]
fn a_connection_is_relayed_with_its_addresses_translated_both_ways() {
    let mut w = World::new(2);
    let id = w
        .client(pkt(Op::Request, CLIENT, SVC, 0, 0))
        .expect("opened");
    assert!(
        w.out.is_empty(),
        "nothing for anybody before a backend is picked"
    );
    let (local, req) = w.connect(M4, 4, id, 0).expect("a REQUEST");
    assert!(local >= SERVICE_BACKEND_PORTS);
    assert_eq!(
        (req.src(), req.dst()),
        (SockAddr::new(100, local), SockAddr::new(4, 6000))
    );
    assert_eq!(req.buf_alloc, 64 * 1024, "the client's credit, capped");
    let b = SockAddr::new(4, 6000);
    let back = SockAddr::new(100, local);
    assert_eq!(
        w.answer(M4, 4, pkt(Op::Response, b, back, 0, 0)),
        Answer::Accepted
    );
    let s = sent(&mut w.out);
    assert_eq!(s.len(), 1);
    let (to, h, staged) = s[0];
    assert!(staged && to == 3);
    assert_eq!((h.op, h.src(), h.dst()), (Op::Response as u16, SVC, CLIENT));
    assert_eq!(h.buf_alloc, 64 * 1024, "the backend's credit, capped");
    // Data both ways.
    w.client(pkt(Op::Rw, CLIENT, SVC, 100, 0));
    let (to, h, _) = sent(&mut w.out)[0];
    assert_eq!((to, h.src(), h.dst(), h.len), (4, back, b, 100));
    w.t.delivered(&h);
    w.backend(M4, 4, pkt(Op::Rw, b, back, 50, 100));
    let (to, h, _) = sent(&mut w.out)[0];
    assert_eq!(
        (to, h.src(), h.dst(), h.len, h.fwd_cnt),
        (3, SVC, CLIENT, 50, 100)
    );
    assert_eq!(w.t.established_by(M4), 1);
    // The client resets: the backend hears of it, from the service's side.
    w.client(pkt(Op::Rst, CLIENT, SVC, 0, 0));
    let (to, h, _) = sent(&mut w.out)[0];
    assert_eq!((to, h.op, h.src(), h.dst()), (4, Op::Rst as u16, back, b));
    assert_eq!(w.t.len(), (0, 0));
    assert_eq!(w.t.counters.reset_by_client, 1);
}

#[test]
fn a_refusal_is_retried_until_every_member_refused_then_the_client_is_reset() {
    let mut w = World::new(2);
    let id = w.client(pkt(Op::Request, CLIENT, SVC, 0, 0)).unwrap();
    for (attempt, (m, cid)) in [(M4, 4), (M5, 5)].into_iter().enumerate() {
        let a = attempt as u32;
        let (local, _) = w.connect(m, cid, id, a).unwrap();
        let rst = pkt(
            Op::Rst,
            SockAddr::new(cid, 6000),
            SockAddr::new(100, local),
            0,
            0,
        );
        assert_eq!(w.answer(m, cid, rst), Answer::Refused);
        assert!(w.out.is_empty(), "the client sees nothing of a refusal");
        let next =
            w.t.on_answer((id, a), Some(Status::BackendError), m, &mut w.out);
        if attempt == 0 {
            assert_eq!(
                next,
                Next::Retry {
                    id,
                    attempt: 1,
                    key: 3
                }
            );
            assert!(w.out.is_empty());
        } else {
            assert_eq!(next, Next::Done, "both members refused");
        }
    }
    let s = sent(&mut w.out);
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(
        (s[0].0, s[0].1.op, s[0].1.src(), s[0].2),
        (3, Op::Rst as u16, SVC, false)
    );
    let c = w.t.counters;
    assert_eq!((c.retried, c.reset_no_backend, c.accepted), (1, 1, 0));
    assert_eq!(w.t.len(), (0, 0));
}

#[test]
fn the_switch_giving_up_resets_the_client_and_an_old_attempt_is_ignored() {
    let mut w = World::new(3);
    let id = w.client(pkt(Op::Request, CLIENT, SVC, 0, 0)).unwrap();
    let (local, _) = w.connect(M4, 4, id, 0).unwrap();
    // An answer for another attempt changes nothing.
    let stale =
        w.t.on_answer((id, 7), Some(Status::NoBackend), M4, &mut w.out);
    assert_eq!(stale, Next::Done);
    assert_eq!(w.t.len(), (1, 1));
    // The deadline: the backend still connecting gets an RST, the client too.
    w.t.on_answer((id, 0), Some(Status::Timeout), u32::MAX, &mut w.out);
    let s = sent(&mut w.out);
    let to_backend = s.iter().find(|x| x.0 == 4).expect("backend reset");
    assert_eq!(to_backend.1.src(), SockAddr::new(100, local));
    assert!(s.iter().any(|x| x.0 == 3 && x.1.op == Op::Rst as u16));
    // Its late RESPONSE is stale: reset again, the client hears nothing.
    let resp = pkt(
        Op::Response,
        SockAddr::new(4, 6000),
        SockAddr::new(100, local),
        0,
        0,
    );
    assert_eq!(w.answer(M4, 4, resp), Answer::Stale { accepted: true });
    let s = sent(&mut w.out);
    assert_eq!(s.len(), 1);
    assert_eq!((s[0].0, s[0].1.op), (4, Op::Rst as u16));
}

#[test]
fn a_connect_moved_to_another_member_resets_the_first_backends_side() {
    let mut w = World::new(2);
    let id = w.client(pkt(Op::Request, CLIENT, SVC, 0, 0)).unwrap();
    let (first, _) = w.connect(M4, 4, id, 0).unwrap();
    // The switch moved the request (backend 4 stalled): backend 5 gets the same attempt.
    let (second, _) = w.connect(M5, 5, id, 0).unwrap();
    let s = sent(&mut w.out);
    assert_eq!(s.len(), 1);
    assert_eq!(
        (s[0].0, s[0].1.op, s[0].1.src()),
        (4, Op::Rst as u16, SockAddr::new(100, first))
    );
    let late = pkt(
        Op::Response,
        SockAddr::new(4, 6000),
        SockAddr::new(100, first),
        0,
        0,
    );
    assert_eq!(w.answer(M4, 4, late), Answer::Stale { accepted: true });
    w.out.clear();
    let resp = pkt(
        Op::Response,
        SockAddr::new(5, 6000),
        SockAddr::new(100, second),
        0,
        0,
    );
    assert_eq!(w.answer(M5, 5, resp), Answer::Accepted);
    let s = sent(&mut w.out);
    assert_eq!(s.len(), 1, "one RESPONSE for the client: {s:?}");
    assert_eq!((s[0].0, s[0].1.op), (3, Op::Response as u16));
    assert_eq!((w.t.counters.moved, w.t.counters.stale), (1, 1));
    // A third member given it now has nothing to do.
    assert!(w.connect(M4, 4, id, 0).is_none());
}

#[test]
fn packets_a_backend_was_not_given_get_an_rst_and_change_nothing() {
    let mut w = World::new(2);
    let local = w.established();
    let b4 = SockAddr::new(4, 6000);
    // Another port of the right VM, a port vmq never opened, another member's connection.
    for (m, cid, src, dst) in [
        (M4, 4, SockAddr::new(4, 6001), SockAddr::new(100, local)),
        (M4, 4, b4, SockAddr::new(100, local + 1000)),
        (M5, 5, SockAddr::new(5, 6000), SockAddr::new(100, local)),
    ] {
        w.backend(m, cid, pkt(Op::Rw, src, dst, 10, 0));
        let s = sent(&mut w.out);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!((s[0].0, s[0].1.op, s[0].2), (cid, Op::Rst as u16, false));
        assert_eq!((s[0].1.src(), s[0].1.dst()), (dst, src));
    }
    // Answering a REQUEST it was never sent: an RST too.
    let vm = w.vm(5);
    let resp = pkt(
        Op::Response,
        SockAddr::new(5, 6000),
        SockAddr::new(100, local),
        0,
        0,
    );
    assert_eq!(
        w.t.answer(M5, &vm, &resp, &mut w.out),
        Answer::Stale { accepted: true }
    );
    assert_eq!(w.t.counters.no_connection, 3);
    assert_eq!(w.t.established_by(M4), 1, "the real connection lives on");
    w.out.clear();
    w.client(pkt(Op::Rw, CLIENT, SVC, 10, 0));
    assert_eq!(sent(&mut w.out)[0].0, 4);
}

#[test]
fn credit_is_checked_end_to_end_and_an_overrun_resets_both_sides() {
    let mut w = World::new(1);
    let local = w.established();
    let b4 = SockAddr::new(4, 6000);
    let back = SockAddr::new(100, local);
    // The backend's buffer is 256 KiB, capped to 64 KiB for the client: 64 KiB pass.
    for _ in 0..16 {
        w.client(pkt(Op::Rw, CLIENT, SVC, 4096, 0));
        let (to, h, _) = sent(&mut w.out)[0];
        assert_eq!(to, 4);
        w.t.delivered(&h);
    }
    // The backend may not claim to have read more than it was given.
    let mut lie = pkt(Op::CreditUpdate, b4, back, 0, 70_000);
    lie.len = 0;
    w.backend(M4, 4, lie);
    let s = sent(&mut w.out);
    assert!(
        s.iter().any(|x| x.0 == 4 && x.1.op == Op::Rst as u16),
        "{s:?}"
    );
    assert!(
        s.iter().any(|x| x.0 == 3 && x.1.op == Op::Rst as u16),
        "{s:?}"
    );
    assert_eq!(w.t.len(), (0, 0));
    // And a client past its credit: reset too.
    let local = w.established();
    for _ in 0..16 {
        w.client(pkt(Op::Rw, CLIENT, SVC, 4096, 0));
    }
    w.out.clear();
    w.client(pkt(Op::Rw, CLIENT, SVC, 1, 0));
    let s = sent(&mut w.out);
    assert!(
        s.iter().any(|x| x.0 == 3 && x.1.op == Op::Rst as u16),
        "{s:?}"
    );
    assert!(
        s.iter()
            .any(|x| x.0 == 4 && x.1.src() == SockAddr::new(100, local)),
        "{s:?}"
    );
    assert_eq!(w.t.counters.reset_by_vmq, 2);
}

#[test]
fn a_request_nobody_accepts_by_the_deadline_and_a_departed_client_are_swept() {
    let mut w = World::new(2);
    w.client(pkt(Op::Request, CLIENT, SVC, 0, 0)).unwrap();
    w.t.sweep(500_000_000, &mut w.out);
    assert!(w.out.is_empty());
    w.t.sweep(1_600_000_000, &mut w.out);
    let s = sent(&mut w.out);
    assert_eq!(s.len(), 1);
    assert_eq!((s[0].0, s[0].1.op), (3, Op::Rst as u16));
    assert_eq!(w.t.counters.reset_no_backend, 1);
    // An established connection whose client's VM goes away: its backend gets the RST.
    let local = w.established();
    w.net.guest_gone(3);
    w.t.sweep(1_700_000_000, &mut w.out);
    let s = sent(&mut w.out);
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(
        (s[0].0, s[0].1.op, s[0].1.src()),
        (4, Op::Rst as u16, SockAddr::new(100, local))
    );
    assert_eq!(w.t.len(), (0, 0));
}

#[test]
fn requests_beyond_the_limit_or_to_another_port_are_refused() {
    let mut w = World::new(1);
    for port in 0..4 {
        let c = SockAddr::new(3, 3000 + port);
        assert!(w.client(pkt(Op::Request, c, SVC, 0, 0)).is_some());
    }
    let fifth = SockAddr::new(3, 4000);
    assert!(w.client(pkt(Op::Request, fifth, SVC, 0, 0)).is_none());
    let other = SockAddr::new(100, 5001);
    assert!(w
        .client(pkt(Op::Request, SockAddr::new(3, 4001), other, 0, 0))
        .is_none());
    let s = sent(&mut w.out);
    assert_eq!(s.len(), 2);
    assert!(s.iter().all(|x| x.0 == 3 && x.1.op == Op::Rst as u16));
    assert_eq!(w.t.counters.refused, 2);
}
