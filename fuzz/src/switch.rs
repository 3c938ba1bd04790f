//! Target `switch`: the switch between honest and hostile in-process peers.
//!
//! Four ports behind one [`Switch`] with a [`ManualClock`]: port 0 is an honest frontend, port 2
//! an honest backend (it echoes every request it gets), ports 1 and 3 are hostile: they may
//! act honestly, but also send forged headers (any kind, source, length, message id), answer
//! requests twice or with guessed ids, stop draining, and write any bytes into their own ring
//! memory (descriptors, avail entries and indices, headers). Service 0 is served by ports 2 and
//! 3, service 1 by the hostile ports only.
//!
//! Invariants:
//! - nothing panics, and the honest peers' drivers never see a protocol error from the switch;
//! - honest ports are never taken down; a port is down exactly when it faulted or was removed,
//!   a port whose device broke is down, and `port_faults` is the sum of the ports' faults; a
//!   hostile port that publishes an avail index past its queue size or a chain with a buffer
//!   outside its memory is down after the next poll;
//! - `requests_accepted == replies_delivered + failed_back + orphaned + refused + in_flight`
//!   after every operation;
//! - the honest frontend never gets two answers to one request, a reply from the honest
//!   backend carries the payload it sent, and once the hostile ports are removed and time
//!   passes every deadline, each request it sent has exactly one answer (but for as many
//!   requests as error notices the switch dropped for it, which get none).

use std::collections::HashMap;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmq::peer::{host_peer, HostPeer, PeerConfig};
use vmq::port::NativePort;
use vmq::switch::{
    ManualClock, PolicyKind, Polling, PoolConfig, ServiceConfig, Switch, SwitchConfig,
};
use vmq::virtio::spec::DESC_SIZE;
use vmq::virtio::RingLayout;
use vmq::wire::{MsgHeader, MsgKind, Status, HEADER_SIZE};

use crate::input::Input;

const QUEUE_SIZE: u16 = 8;
const SLOT: u32 = 128;
const MAX_PAYLOAD: usize = SLOT as usize - HEADER_SIZE;
const FRONTEND: usize = 0;
const BACKEND: usize = 2;
const HOSTILE: [usize; 2] = [1, 3];
/// One-way message ids of the honest frontend start here (requests count up from 0).
const ONEWAY_BASE: u64 = 1 << 40;
const SERVICE_TIMEOUT_NS: u64 = 10_000_000;
const PORT_TIMEOUT_NS: u64 = 20_000_000;
/// Maglev table sizes (primes above the two backends of each service).
const MAGLEV_TABLE_SIZES: [u32; 3] = [3, 61, 251];

fn pattern(id: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (id as usize * 31 + i) as u8).collect()
}

struct Peer {
    h: HostPeer,
    /// Requests received and not yet answered, with their payload (hostile ports answer them
    /// when they like).
    pending: Vec<(MsgHeader, Vec<u8>)>,
    /// Message ids seen in requests, for forged replies.
    seen_ids: Vec<u64>,
}

struct Net {
    sw: Switch<GuestMemoryMmap>,
    clock: ManualClock,
    peers: Vec<Peer>,
    buf: Vec<u8>,
    /// Requests the honest frontend sent, by id: their length, and answers seen so far.
    sent: HashMap<u64, (usize, u32)>,
    next_req: u64,
    next_oneway: u64,
    removed: [bool; 4],
    /// Ports that broke the protocol in a way the next poll must catch.
    must_fall: [bool; 4],
    /// Faults a port had when it was last revived.
    fault_base: [u64; 4],
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let Some(mut n) = Net::new(&mut inp) else {
        return;
    };
    let mut ops = 0;
    while !inp.is_empty() && ops < 400 {
        n.step(&mut inp);
        n.check();
        ops += 1;
    }
    n.quiesce();
}

impl Net {
    fn new(inp: &mut Input<'_>) -> Option<Self> {
        let clock = ManualClock::new(1_000_000);
        let cfg = SwitchConfig {
            batch: inp.pick(&[1, 3, 64]),
            port_request_timeout_ns: PORT_TIMEOUT_NS,
            pool: if inp.bool() {
                PoolConfig {
                    subpool_size: 4,
                    grow_below_free: 1,
                    max_subpools: 2,
                }
            } else {
                PoolConfig::default()
            },
            ..SwitchConfig::default()
        };
        let mut sw = Switch::new(cfg, Arc::new(clock.clone())).expect("switch");
        let mut peers = Vec::new();
        for i in 0..4 {
            let (h, dev) = host_peer(PeerConfig {
                queue_size: QUEUE_SIZE,
                slot_size: SLOT,
                event_idx: inp.bool(),
            })
            .expect("peer");
            sw.add_port(&format!("p{i}"), dev, Box::new(Polling))
                .expect("port");
            peers.push(Peer {
                h,
                pending: Vec::new(),
                seen_ids: Vec::new(),
            });
        }
        for (name, members) in [
            ("mixed", &[(2, 1.0), (3, 1.0)]),
            ("hostile", &[(3, 1.0), (1, 2.0)]),
        ] {
            let mut cfg = ServiceConfig {
                request_timeout_ns: SERVICE_TIMEOUT_NS,
                ..ServiceConfig::default()
            };
            cfg.policy.kind = inp.pick(&PolicyKind::ALL);
            // A small prime table: the same Maglev code, but a rebuild (on every weight
            // bucket change, and the hostile backends' weights change all the time) costs
            // tens of slots instead of 65537.
            cfg.policy.maglev.table_size = inp.pick(&MAGLEV_TABLE_SIZES);
            sw.add_service(name, cfg, members).expect("service");
        }
        Some(Self {
            sw,
            clock,
            peers,
            buf: vec![0; SLOT as usize],
            sent: HashMap::new(),
            next_req: 0,
            next_oneway: ONEWAY_BASE,
            removed: [false; 4],
            must_fall: [false; 4],
            fault_base: [0; 4],
        })
    }

    fn hostile(&self, inp: &mut Input<'_>) -> usize {
        HOSTILE[inp.below(2)]
    }

    fn step(&mut self, inp: &mut Input<'_>) {
        match inp.u8() % 16 {
            0 | 1 => self.front_request(inp),
            2 => self.front_oneway(inp),
            3 => {
                let max = inp.u8() as usize % 8 + 1;
                let status = Status::from_u16(inp.u8() as u16 % 8).unwrap_or(Status::Ok);
                self.serve(BACKEND, max, status);
            }
            4 => self.front_recv(),
            5 => self.hostile_send(inp),
            6 => self.hostile_answer(inp),
            7 => self.hostile_write(inp),
            8 => self.hostile_violation(inp),
            9 => {
                let p = self.hostile(inp);
                self.collect(p);
            }
            10 => {
                let ns = match inp.u8() % 8 {
                    0 => inp.u32() as u64,
                    1 => 10_000,
                    2 => 500_000,
                    3 => 3_000_000,
                    4 => SERVICE_TIMEOUT_NS + 1,
                    5 => PORT_TIMEOUT_NS + 1,
                    _ => 1_000_000,
                };
                self.clock.advance(ns);
            }
            11..=13 => {
                for _ in 0..=inp.u8() % 3 {
                    self.poll();
                }
            }
            14 => {
                let p = self.hostile(inp);
                if inp.bool() {
                    self.sw.remove_port(p as u32);
                    self.removed[p] = true;
                } else if self.sw.port_down(p as u32) {
                    self.revive(p, inp.bool());
                }
            }
            _ => {
                if self.sw.prepare_idle() || inp.bool() {
                    self.sw.resume_polling();
                }
            }
        }
    }

    fn poll(&mut self) {
        self.sw.poll();
        for p in 0..4 {
            if self.must_fall[p] {
                assert!(
                    self.sw.port_down(p as u32),
                    "port {p} broke the protocol and is still up"
                );
            }
        }
    }

    // ---- the honest frontend ---------------------------------------------------------------

    fn front_request(&mut self, inp: &mut Input<'_>) {
        let len = inp.u8() as usize % (MAX_PAYLOAD + 1);
        let id = self.next_req;
        let h = match inp.u8() % 8 {
            0..=2 => MsgHeader::request_to_service(0, id, len as u32),
            3 => MsgHeader::request_to_service(1, id, len as u32),
            4 => MsgHeader::new(MsgKind::Request, 2, id, len as u32),
            5 => MsgHeader::new(MsgKind::Request, 3, id, len as u32),
            6 => MsgHeader::new(MsgKind::Request, 1, id, len as u32),
            _ => {
                if inp.bool() {
                    MsgHeader::request_to_service(9, id, len as u32)
                } else {
                    MsgHeader::new(MsgKind::Request, 77, id, len as u32)
                }
            }
        };
        if self.honest_send(FRONTEND, &h, &pattern(id, len)) {
            self.sent.insert(id, (len, 0));
            self.next_req += 1;
        }
    }

    fn front_oneway(&mut self, inp: &mut Input<'_>) {
        let len = inp.u8() as usize % (MAX_PAYLOAD + 1);
        let dst = inp.pick(&[1u32, 2, 3, 77]);
        let id = self.next_oneway;
        let h = MsgHeader::new(MsgKind::OneWay, dst, id, len as u32);
        if self.honest_send(FRONTEND, &h, &pattern(id, len)) {
            self.next_oneway += 1;
        }
    }

    fn honest_send(&mut self, p: usize, h: &MsgHeader, payload: &[u8]) -> bool {
        let tx = &mut self.peers[p].h.tx;
        tx.reclaim().expect("honest reclaim");
        if tx.free() == 0 {
            return false;
        }
        tx.send(h, payload).expect("honest send");
        tx.flush().expect("honest flush");
        true
    }

    fn front_recv(&mut self) {
        let rx = &mut self.peers[FRONTEND].h.rx;
        while let Some(m) = rx.recv(&mut self.buf).expect("honest frontend receive") {
            let h = m.header;
            // Hostile ports may address requests to it; it does not serve them (they time out).
            if h.kind() != Some(MsgKind::Reply) || h.msg_id() >= ONEWAY_BASE {
                continue;
            }
            let id = h.msg_id();
            let Some((len, answers)) = self.sent.get_mut(&id) else {
                panic!("an answer to request {id}, which the frontend never sent");
            };
            *answers += 1;
            assert_eq!(*answers, 1, "request {id} answered twice");
            if h.src() == BACKEND as u32 && h.status() == Some(Status::Ok) {
                assert_eq!(m.len, *len);
                assert!(
                    self.buf[..m.len] == pattern(id, *len)[..],
                    "reply payload corrupted"
                );
            }
        }
        rx.flush().expect("honest rx flush");
        self.peers[FRONTEND]
            .h
            .tx
            .reclaim()
            .expect("honest frontend reclaim");
    }

    // ---- backends ----------------------------------------------------------------------------

    /// Takes what was delivered to port `p` (re-posting its buffers) and notes the requests.
    fn collect(&mut self, p: usize) {
        let honest = p == BACKEND;
        let peer = &mut self.peers[p];
        loop {
            match peer.h.rx.recv(&mut self.buf) {
                Ok(Some(m)) => {
                    if m.header.kind() == Some(MsgKind::Request) {
                        if honest {
                            assert_eq!(m.len, m.header.len() as usize);
                        }
                        peer.pending.push((m.header, self.buf[..m.len].to_vec()));
                        if peer.seen_ids.len() < 64 {
                            peer.seen_ids.push(m.header.msg_id());
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(!honest, "honest backend got a bad delivery: {e}");
                    break;
                }
            }
        }
        let r = peer.h.rx.flush();
        assert!(!honest || r.is_ok(), "honest backend rx flush");
    }

    /// The honest backend answers up to `max` requests, echoing their payload.
    fn serve(&mut self, p: usize, max: usize, status: Status) {
        self.collect(p);
        let peer = &mut self.peers[p];
        peer.h.tx.reclaim().expect("honest backend reclaim");
        let mut n = 0;
        while n < max && peer.h.tx.free() > 0 && !peer.pending.is_empty() {
            let (req, payload) = peer.pending.remove(0);
            let rep = MsgHeader::reply_to(&req, status, payload.len() as u32);
            peer.h.tx.send(&rep, &payload).expect("honest backend send");
            n += 1;
        }
        peer.h.tx.flush().expect("honest backend flush");
    }

    // ---- hostile ports ------------------------------------------------------------------------

    /// Sends a header made of fuzzer bytes (forged source, kind, length, id) through the
    /// port's own driver.
    fn hostile_send(&mut self, inp: &mut Input<'_>) {
        let p = self.hostile(inp);
        // Its own driver publishes over the violation.
        self.must_fall[p] = false;
        let mut raw = [0u8; HEADER_SIZE];
        let base = match inp.u8() % 4 {
            0 => MsgHeader::request_to_service(inp.u8() as u32 % 3, inp.u64(), 0),
            1 => MsgHeader::new(MsgKind::Request, inp.u8() as u32 % 5, inp.u64(), 0),
            2 => MsgHeader::new(MsgKind::OneWay, inp.u8() as u32 % 5, inp.u64(), 0),
            _ => MsgHeader::new(MsgKind::LoadReport, 0, 0, 0),
        };
        raw.copy_from_slice(&base.to_bytes());
        let len = inp.u8() as usize % (MAX_PAYLOAD + 1);
        raw[12..16].copy_from_slice(&(len as u32).to_le_bytes());
        // Forge some fields.
        for _ in 0..inp.u8() % 4 {
            let i = inp.below(HEADER_SIZE);
            raw[i] = inp.u8();
        }
        let h = MsgHeader::from_bytes(&raw);
        let tx = &mut self.peers[p].h.tx;
        let _ = tx.reclaim();
        if tx.free() > 0 {
            let _ = tx.send(&h, &pattern(0, len));
            let _ = tx.flush();
        }
    }

    /// Answers received requests: honestly, twice, with a guessed id, or with a forged status.
    fn hostile_answer(&mut self, inp: &mut Input<'_>) {
        let p = self.hostile(inp);
        self.must_fall[p] = false;
        self.collect(p);
        let peer = &mut self.peers[p];
        let _ = peer.h.tx.reclaim();
        for _ in 0..inp.u8() % 4 + 1 {
            if peer.h.tx.free() == 0 {
                break;
            }
            let mut rep = match inp.u8() % 4 {
                0 if !peer.seen_ids.is_empty() => {
                    // A reply to any id it has seen, answered or not.
                    let id = peer.seen_ids[inp.below(peer.seen_ids.len())];
                    let mut h = MsgHeader::new(MsgKind::Reply, 0, id, 0);
                    h.set_status(Status::Ok);
                    h
                }
                1 => MsgHeader::new(
                    MsgKind::Reply,
                    inp.u8() as u32 % 4,
                    inp.u64() & 0xffff_00ff,
                    0,
                ),
                _ => match peer.pending.first().map(|r| r.0) {
                    Some(req) => {
                        if inp.bool() {
                            peer.pending.remove(0);
                        }
                        MsgHeader::reply_to(&req, Status::Ok, 0)
                    }
                    None => break,
                },
            };
            rep.set_load(inp.u16());
            let len = inp.u8() as usize % (MAX_PAYLOAD + 1);
            rep.set_len(len as u32);
            let _ = peer.h.tx.send(&rep, &pattern(1, len));
        }
        let _ = peer.h.tx.flush();
    }

    /// Writes fuzzer bytes into the port's own memory, mostly where the rings are.
    fn hostile_write(&mut self, inp: &mut Input<'_>) {
        let p = self.hostile(inp);
        self.must_fall[p] = false;
        let peer = &self.peers[p];
        let tx = peer.h.tx.ring().layout();
        let rx = peer.h.rx.ring().layout();
        let base = match inp.u8() % 8 {
            0 => tx.desc,
            1 => tx.avail,
            2 => rx.desc,
            3 => rx.avail,
            4 => tx.used,
            5 => rx.used,
            6 => 0,
            // The arenas follow the rings.
            _ => tx.desc + RingLayout::total_bytes(QUEUE_SIZE),
        };
        let addr = base + inp.u16() as u64 % 0x400;
        let n = inp.u8() as usize % 32;
        let bytes = inp.bytes(n);
        let _ = peer.h.memory().write_slice(bytes, GuestAddress(addr));
    }

    /// A violation the switch must catch at its next poll, whatever the ring held before: an
    /// avail index more than a queue size ahead of the device, or, as the very next entry the
    /// device pops, a chain whose buffer lies outside the port's memory.
    fn hostile_violation(&mut self, inp: &mut Input<'_>) {
        let p = self.hostile(inp);
        if self.sw.port_down(p as u32) {
            return;
        }
        let next = self.device(p).tx_queue().next_avail();
        let mem = self.peers[p].h.memory().clone();
        let tx = self.peers[p].h.tx.ring().layout();
        let idx_at = GuestAddress(tx.avail + 2);
        if inp.bool() {
            let jump = QUEUE_SIZE + 1 + inp.u8() as u16;
            mem.write_obj(next.wrapping_add(jump), idx_at).unwrap();
        } else {
            let head = inp.u8() as u16 % QUEUE_SIZE;
            let outside = mem.last_addr().0 + 1 + inp.u32() as u64;
            let mut d = [0u8; DESC_SIZE as usize];
            d[0..8].copy_from_slice(&outside.to_le_bytes());
            d[8..12].copy_from_slice(&64u32.to_le_bytes());
            mem.write_slice(&d, GuestAddress(tx.desc + DESC_SIZE * head as u64))
                .unwrap();
            let slot = tx.avail + 4 + 2 * (next % QUEUE_SIZE) as u64;
            mem.write_obj(head, GuestAddress(slot)).unwrap();
            mem.write_obj(next.wrapping_add(1), idx_at).unwrap();
        }
        self.must_fall[p] = true;
    }

    /// The device side of port `p` (a native port), as the switch holds it.
    fn device(&self, p: usize) -> &vmq::virtio::DevicePort<GuestMemoryMmap> {
        self.sw
            .port(p as u32)
            .and_then(|port| port.as_any().downcast_ref::<NativePort<GuestMemoryMmap>>())
            .expect("a native port")
            .device()
    }

    /// Brings a down hostile port back with fresh queues (its guest reset the device).
    fn revive(&mut self, p: usize, event_idx: bool) {
        let (h, dev) = host_peer(PeerConfig {
            queue_size: QUEUE_SIZE,
            slot_size: SLOT,
            event_idx,
        })
        .expect("peer");
        self.sw
            .revive_port(p as u32, dev, Box::new(Polling))
            .expect("a down port revives");
        self.peers[p] = Peer {
            h,
            pending: Vec::new(),
            seen_ids: Vec::new(),
        };
        self.removed[p] = false;
        self.must_fall[p] = false;
        self.fault_base[p] = self.sw.port_stats(p as u32).expect("a port").faults;
    }

    // ---- invariants ---------------------------------------------------------------------------

    /// The invariants after every operation. Reads only the counters (`totals`, `port_stats`,
    /// `in_flight`, `port_down`): the full snapshot is built once per input, in `quiesce`.
    fn check(&mut self) {
        let t = self.sw.totals();
        let in_flight = self.sw.in_flight() as u64;
        assert_eq!(
            t.requests_accepted,
            t.replies_delivered + t.failed_back + t.orphaned + t.refused + in_flight,
            "totals do not add up: {t:?}, {in_flight} in flight"
        );
        let mut faults = 0;
        for p in 0..self.peers.len() {
            let ps = self.sw.port_stats(p as u32).expect("a port");
            let down = self.sw.port_down(p as u32);
            faults += ps.faults;
            let broken = self.device(p).is_broken();
            if HOSTILE.contains(&p) {
                let faults = ps.faults - self.fault_base[p];
                assert_eq!(down, faults > 0 || self.removed[p], "port {p}");
                assert!(faults <= 1, "port {p} faulted twice");
                if broken {
                    assert!(down, "port {p} broke but the switch still serves it");
                }
            } else {
                assert!(!down && ps.faults == 0 && !broken, "honest port {p} fell");
            }
        }
        assert_eq!(t.port_faults, faults);
    }

    /// Takes the hostile ports out, lets time pass every deadline with the honest peers
    /// working, and checks that every request of the honest frontend got exactly one answer
    /// (or none, for as many as the switch dropped error notices for it).
    fn quiesce(&mut self) {
        for p in HOSTILE {
            self.sw.remove_port(p as u32);
            self.removed[p] = true;
        }
        self.check();
        for _ in 0..200 {
            self.clock.advance(1_000_000);
            self.poll();
            self.serve(BACKEND, usize::MAX, Status::Ok);
            self.poll();
            self.front_recv();
            self.check();
            if self.sw.in_flight() == 0 && self.sent.values().all(|&(_, a)| a == 1) {
                break;
            }
        }
        // Every request got exactly one answer, except those whose error notice the switch
        // dropped: it keeps at most a queue's worth of notices for a frontend that does not
        // read them (`notices_dropped`), and a refused request is answered only by a notice.
        // Each dropped notice leaves at most one request unanswered; none gets two.
        let dropped = self
            .sw
            .port_stats(FRONTEND as u32)
            .expect("a port")
            .notices_dropped;
        let mut unanswered = 0;
        for (id, (_, answers)) in &self.sent {
            assert!(*answers <= 1, "request {id} got {answers} answers");
            if *answers == 0 {
                unanswered += 1;
            }
        }
        assert!(
            unanswered <= dropped,
            "{unanswered} requests never answered, {dropped} error notices dropped"
        );
        // The full snapshot agrees with the counters read after every operation.
        let s = self.sw.snapshot();
        assert_eq!(s.totals, self.sw.totals());
        for (p, ps) in s.ports.iter().enumerate() {
            assert_eq!(Some(ps.stats), self.sw.port_stats(p as u32));
            assert_eq!(ps.down, self.sw.port_down(p as u32));
        }
        assert_eq!(s.in_flight, 0);
        assert_eq!(
            s.totals.requests_accepted,
            s.totals.replies_delivered
                + s.totals.failed_back
                + s.totals.orphaned
                + s.totals.refused
        );
    }
}
