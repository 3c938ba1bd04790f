//! Two guests' ends, played by [`Endpoint`]s, talking through a [`Relay`]: packets leave in
//! Linux-sized pieces (up to 64 KiB), are delivered in 4 KiB rx buffers, and connections
//! interleave at random; within one connection order is kept, as virtio queues keep it.

use std::collections::{BTreeMap, VecDeque};

use super::super::endpoint::*;
use super::super::packet::*;
use super::super::relay::*;

/// A small deterministic generator (xorshift64*), so failures replay.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

type Pkt = (PacketHeader, Vec<u8>);

/// Guests' ends keyed by (local, peer); packets in flight per (dst, src) connection direction.
struct Net {
    relay: Relay,
    eps: BTreeMap<(SockAddr, SockAddr), Endpoint>,
    wire: BTreeMap<(SockAddr, SockAddr), VecDeque<Pkt>>,
    ep_cfg: EndpointConfig,
    /// Payload per packet a sender emits, and per rx buffer a receiver posts.
    tx_max: u32,
    rx_max: u32,
    rng: Rng,
    /// Most bytes vmq held at any point, per connection direction.
    max_held: u32,
}

impl Net {
    fn new(seed: u64, cap: u32, ep_cfg: EndpointConfig) -> Self {
        let relay = Relay::new(RelayConfig {
            credit_cap: cap,
            ..RelayConfig::default()
        })
        .unwrap();
        Self {
            relay,
            eps: BTreeMap::new(),
            wire: BTreeMap::new(),
            ep_cfg,
            tx_max: MAX_PAYLOAD,
            rx_max: 4096,
            rng: Rng(seed | 1),
            max_held: 0,
        }
    }

    fn connect(&mut self, ty: SocketType, from: SockAddr, to: SockAddr) {
        let ep = Endpoint::connect(self.ep_cfg, ty, from, to).unwrap();
        self.eps.insert((from, to), ep);
    }

    fn ep(&mut self, local: SockAddr, peer: SockAddr) -> &mut Endpoint {
        self.eps.get_mut(&(local, peer)).expect("endpoint exists")
    }

    fn send(&mut self, h: PacketHeader, body: Vec<u8>) {
        self.wire
            .entry((h.dst(), h.src()))
            .or_default()
            .push_back((h, body));
    }

    /// Every endpoint hands its owed packets to the relay.
    fn transmit(&mut self) {
        let keys: Vec<_> = self.eps.keys().copied().collect();
        for key in keys {
            let max = self.tx_max;
            while let Some((h, body)) = self.eps.get_mut(&key).unwrap().next_packet(max) {
                match self.relay.on_packet(h.src_cid, &h) {
                    Verdict::Forward(f) => self.send(f, body),
                    Verdict::Refuse { rst, .. } => self.send(rst, vec![]),
                    Verdict::Reset {
                        to_sender, to_peer, ..
                    } => {
                        self.send(to_sender, vec![]);
                        self.send(to_peer, vec![]);
                    }
                    Verdict::Drop => {}
                }
            }
        }
    }

    /// Delivers up to `n` packets, each from a randomly chosen connection direction, split into
    /// rx-buffer-sized pieces.
    fn deliver(&mut self, n: usize) {
        for _ in 0..n {
            let busy: Vec<_> = self
                .wire
                .iter()
                .filter(|(_, q)| !q.is_empty())
                .map(|(k, _)| *k)
                .collect();
            if busy.is_empty() {
                return;
            }
            let k = busy[self.rng.below(busy.len() as u64) as usize];
            let (h, body) = self.wire.get_mut(&k).unwrap().pop_front().unwrap();
            for (piece, range) in h.split(self.rx_max) {
                self.relay.on_delivered(&piece).unwrap();
                let key = (piece.dst(), piece.src());
                if let Some(ep) = self.eps.get_mut(&key) {
                    ep.on_packet(&piece, &body[range]).unwrap();
                } else if piece.operation() == Some(Op::Request) {
                    // Everyone listens everywhere.
                    let ep = Endpoint::accept(self.ep_cfg, &piece).unwrap();
                    self.eps.insert(key, ep);
                }
            }
        }
    }

    /// One round: transmit, note what vmq holds, deliver some.
    fn step(&mut self) {
        self.transmit();
        for q in self.wire.values() {
            let held: u32 = q.iter().map(|(h, _)| h.len).sum();
            self.max_held = self.max_held.max(held);
        }
        let n = 1 + self.rng.below(8) as usize;
        self.deliver(n);
    }

    fn quiet(&self) -> bool {
        self.wire.values().all(|q| q.is_empty())
    }

    /// Runs until nothing moves.
    fn settle(&mut self) {
        for _ in 0..100_000 {
            self.step();
            if self.quiet() {
                self.transmit();
                if self.quiet() {
                    return;
                }
            }
        }
        panic!("network did not settle");
    }
}

fn addr(cid: u64, port: u32) -> SockAddr {
    SockAddr::new(cid, port)
}

fn pattern(seed: u32, len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed) as u8)
        .collect()
}

#[test]
fn stream_bytes_arrive_intact_and_in_order_both_ways_on_interleaved_connections() {
    for seed in 1..=4u64 {
        let cap = 16 * 1024;
        let mut net = Net::new(
            seed,
            cap,
            EndpointConfig {
                buf_alloc: 32 * 1024,
                send_buf: 8 * 1024,
            },
        );
        let conns: Vec<(SockAddr, SockAddr)> = (0..3)
            .map(|i| (addr(3, 1000 + i), addr(4 + u64::from(i % 2), 80)))
            .collect();
        for &(a, b) in &conns {
            net.connect(SocketType::Stream, a, b);
        }
        let total = 300_000;
        let data: Vec<Vec<u8>> = (0..conns.len()).map(|i| pattern(i as u32, total)).collect();
        let mut written = vec![[0usize; 2]; conns.len()];
        let mut got: Vec<[Vec<u8>; 2]> = vec![[Vec::new(), Vec::new()]; conns.len()];
        let mut rounds = 0;
        while got.iter().any(|g| g[0].len() < total || g[1].len() < total) {
            rounds += 1;
            assert!(rounds < 200_000, "stalled");
            for (i, &(a, b)) in conns.iter().enumerate() {
                for (dir, (from, to)) in [(a, b), (b, a)].into_iter().enumerate() {
                    let Some(src) = net.eps.get_mut(&(from, to)) else {
                        continue;
                    };
                    let chunk = 1 + net.rng.below(10_000) as usize;
                    let end = (written[i][dir] + chunk).min(total);
                    written[i][dir] += src.write(&data[i][written[i][dir]..end]);
                    if let Some(dst) = net.eps.get_mut(&(to, from)) {
                        let mut buf = vec![0; net.rng.below(12_000) as usize];
                        let n = dst.read(&mut buf);
                        got[i][dir].extend_from_slice(&buf[..n]);
                    }
                }
            }
            net.step();
        }
        for (i, g) in got.iter().enumerate() {
            assert!(g[0] == data[i] && g[1] == data[i], "seed {seed} conn {i}");
        }
        assert!(net.max_held <= cap, "vmq held {} > cap {cap}", net.max_held);
    }
}

#[test]
fn seqpacket_keeps_boundaries_from_1_byte_to_64_kib() {
    let mut sizes: Vec<usize> = vec![
        1, 2, 3, 100, 4095, 4096, 4097, 8191, 8192, 8193, 12_288, 40_000, 65_535, 65_536,
    ];
    let mut rng = Rng(7);
    sizes.extend((0..40).map(|_| 1 + rng.below(65_536) as usize));
    for (tx_max, seed) in [(MAX_PAYLOAD, 1), (4096, 2), (1000, 3)] {
        let mut net = Net::new(
            seed,
            64 * 1024,
            EndpointConfig {
                buf_alloc: 64 * 1024,
                send_buf: 64 * 1024,
            },
        );
        net.tx_max = tx_max;
        let (a, b) = (addr(3, 7), addr(4, 9));
        net.connect(SocketType::SeqPacket, a, b);
        net.settle();
        let mut next = 0;
        let mut got = Vec::new();
        let mut rounds = 0;
        while got.len() < sizes.len() {
            rounds += 1;
            assert!(rounds < 100_000, "stalled after {} messages", got.len());
            if next < sizes.len() {
                let msg = pattern(next as u32, sizes[next]);
                if net.ep(a, b).write_message(&msg, next % 3 == 0).is_ok() {
                    next += 1;
                }
            }
            if net.rng.below(2) == 0 {
                if let Some(m) = net.ep(b, a).read_message() {
                    got.push(m);
                }
            }
            net.step();
        }
        for (i, m) in got.iter().enumerate() {
            assert_eq!(m.data.len(), sizes[i], "message {i}");
            assert!(m.data == pattern(i as u32, sizes[i]), "message {i} bytes");
            assert_eq!(m.eor, i % 3 == 0, "message {i} EOR");
        }
    }
}

#[test]
fn credit_exhaustion_stalls_within_the_cap_and_recovers() {
    let cap = 8192;
    let mut net = Net::new(
        5,
        cap,
        EndpointConfig {
            buf_alloc: 64 * 1024,
            send_buf: 64 * 1024,
        },
    );
    let (a, b) = (addr(3, 7), addr(4, 9));
    net.connect(SocketType::Stream, a, b);
    net.settle();
    let data = pattern(1, 50_000);
    assert_eq!(net.ep(a, b).write(&data), 50_000);
    net.settle();
    // B reads nothing: A got exactly the capped credit through and then asked for more.
    assert_eq!(net.ep(a, b).peer_free(), 0);
    assert_eq!(net.ep(a, b).unsent(), 50_000 - cap as usize);
    assert_eq!(net.ep(b, a).readable(), cap as usize);
    assert!(net.max_held <= cap);
    // B reads: credit flows back and everything arrives.
    let mut got = Vec::new();
    for _ in 0..10_000 {
        let mut buf = [0u8; 3000];
        let n = net.ep(b, a).read(&mut buf);
        got.extend_from_slice(&buf[..n]);
        net.step();
        if got.len() == data.len() {
            break;
        }
    }
    assert!(got == data);
    assert!(net.max_held <= cap);
}

#[test]
fn shutdown_both_ways_then_orderly_close_empties_the_relay() {
    let mut net = Net::new(9, 64 * 1024, EndpointConfig::default());
    let (a, b) = (addr(3, 7), addr(4, 9));
    net.connect(SocketType::Stream, a, b);
    net.settle();
    net.ep(a, b).write(b"request");
    net.ep(a, b).shutdown(SHUTDOWN_SEND);
    net.settle();
    let key = ConnKey {
        initiator: a,
        acceptor: b,
    };
    assert_eq!(net.relay.state(&key), Some(ConnState::Closing));
    let mut buf = [0u8; 64];
    assert_eq!(net.ep(b, a).read(&mut buf), 7);
    assert!(net.ep(b, a).is_eof());
    net.ep(b, a).write(b"response");
    net.ep(b, a).shutdown(SHUTDOWN_SEND);
    net.settle();
    assert_eq!(net.relay.state(&key), Some(ConnState::Closed));
    assert_eq!(net.ep(a, b).read(&mut buf), 8);
    assert!(net.ep(a, b).is_eof());
    // A closes fully: B answers with RST, as Linux does, and the entry goes.
    net.ep(a, b).shutdown(SHUTDOWN_RCV | SHUTDOWN_SEND);
    net.settle();
    assert!(net.relay.is_empty());
    assert!(net.ep(a, b).is_closed() && net.ep(b, a).is_closed());
    assert_eq!(net.ep(b, a).close_reason(), Some(&CloseReason::PeerClosed));
    assert_eq!(net.ep(a, b).close_reason(), Some(&CloseReason::PeerReset));
}

#[test]
fn rst_mid_stream_closes_both_ends_and_the_entry() {
    let mut net = Net::new(11, 16 * 1024, EndpointConfig::default());
    let (a, b) = (addr(3, 7), addr(4, 9));
    net.connect(SocketType::Stream, a, b);
    net.settle();
    net.ep(a, b).write(&pattern(0, 100_000));
    net.step();
    net.ep(b, a).reset();
    net.settle();
    assert!(net.relay.is_empty());
    assert!(net.ep(a, b).is_closed() && net.ep(b, a).is_closed());
    assert_eq!(net.ep(a, b).close_reason(), Some(&CloseReason::PeerReset));
}

#[test]
fn connecting_to_a_port_nobody_accepts_is_refused() {
    let mut net = Net::new(13, 16 * 1024, EndpointConfig::default());
    let (a, b) = (addr(3, 7), addr(4, 9));
    net.connect(SocketType::Stream, a, b);
    net.transmit();
    // B's kernel has no listener: it answers the REQUEST with an RST.
    let (req, _) = net.wire.get_mut(&(b, a)).unwrap().pop_front().unwrap();
    let rst = req.rst_reply().unwrap();
    match net.relay.on_packet(4, &rst) {
        Verdict::Forward(f) => net.send(f, vec![]),
        v => panic!("{v:?}"),
    }
    net.settle();
    assert_eq!(net.ep(a, b).close_reason(), Some(&CloseReason::Refused));
    assert!(net.relay.is_empty());
}
