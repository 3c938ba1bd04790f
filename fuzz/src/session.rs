//! A hostile port and an honest one, driven by a program of fuzzer-chosen operations.
//!
//! The hostile port is a real [`DevicePort`] over guest memory the fuzzer writes at will:
//! descriptors, avail entries and indices, message headers, raw bytes. The honest port is a
//! [`host_peer`]: the driver side is vmq's own ring driver, which never misbehaves. Messages
//! move between the two through the real `deliver` path, both ways.
//!
//! Invariants checked after every operation (a failed check panics, which the fuzzer reports):
//! - every failure is a typed error, and one caused by the guest marks the hostile port broken;
//!   a broken port stays broken and refuses `pop_tx_batch`, `complete_tx`, `deliver` and
//!   `read_payload` with [`DeviceError::Broken`];
//! - the honest port never breaks, and its memory changes only inside the rx buffers it posted
//!   and its rx used ring;
//! - what the honest port receives is exactly the hostile chain's header and payload (or a
//!   `TooLarge` header when it does not fit).

use std::ops::Range;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmq::peer::{host_peer, HostPeer, PeerConfig};
use vmq::virtio::spec::{DESC_F_NEXT, DESC_F_WRITE, DESC_SIZE};
use vmq::virtio::RingLayout;
use vmq::virtio::{DeliverError, DeviceError, DevicePort, Payload, TxChain, RX_QUEUE, TX_QUEUE};
use vmq::wire::{MsgHeader, MsgKind, Status, HEADER_SIZE, WIRE_VERSION};

use crate::input::Input;

/// Chains popped from the hostile port and not yet completed, at most.
const MAX_HELD: usize = 64;

/// The honest side: a host peer and its device port.
struct Honest {
    peer: HostPeer,
    port: DevicePort<GuestMemoryMmap>,
    /// The byte ranges of its memory the device must not write: everything but the posted rx
    /// buffers and the rx used ring.
    protected: Vec<Range<usize>>,
    /// Its memory before the device last acted on it, and after (reused between checks).
    before: Vec<u8>,
    after: Vec<u8>,
    slot_size: u32,
    buf: Vec<u8>,
    next_id: u64,
}

impl Honest {
    fn new(slot_size: u32) -> Self {
        let (peer, port) = host_peer(PeerConfig {
            queue_size: 8,
            slot_size,
            event_idx: true,
        })
        .expect("honest peer");
        let len = mem_len(peer.memory());
        let rx = peer.rx.ring().layout();
        let mut writable = vec![(rx.used, RingLayout::used_bytes(rx.size))];
        // Every rx descriptor is posted (the peer posts them all and re-posts what it takes).
        for i in 0..rx.size {
            let mut d = [0u8; DESC_SIZE as usize];
            peer.memory()
                .read_slice(&mut d, GuestAddress(rx.desc + DESC_SIZE * i as u64))
                .expect("rx descriptor");
            let addr = u64::from_le_bytes(d[0..8].try_into().unwrap());
            let n = u32::from_le_bytes(d[8..12].try_into().unwrap());
            writable.push((addr, n as u64));
        }
        // What lies between the writable ranges is protected.
        writable.sort_unstable();
        let mut protected = Vec::new();
        let mut next = 0usize;
        for (addr, n) in writable {
            let (start, end) = (addr as usize, (addr + n) as usize);
            assert!(end <= len, "an honest buffer outside its memory");
            if start > next {
                protected.push(next..start);
            }
            next = next.max(end);
        }
        if len > next {
            protected.push(next..len);
        }
        Self {
            peer,
            port,
            protected,
            before: Vec::new(),
            after: Vec::new(),
            slot_size,
            buf: vec![0; slot_size as usize],
            next_id: 0,
        }
    }

    /// Copies its whole memory into `into` (sized on first use).
    fn read_memory(&self, into: &mut Vec<u8>) {
        into.resize(mem_len(self.peer.memory()), 0);
        self.peer
            .memory()
            .read_slice(into, GuestAddress(0))
            .expect("honest memory");
    }

    /// Records its memory before the device acts on it.
    fn mark(&mut self) {
        let mut before = std::mem::take(&mut self.before);
        self.read_memory(&mut before);
        self.before = before;
    }

    /// Checks that nothing outside the posted rx buffers and the rx used ring changed since
    /// the last mark, and that the port did not break. Marks the memory as it is now, so a
    /// device call that follows at once needs no new [`Honest::mark`].
    fn check_untouched(&mut self) {
        let mut after = std::mem::take(&mut self.after);
        self.read_memory(&mut after);
        for r in &self.protected {
            if self.before[r.clone()] != after[r.clone()] {
                let i = r
                    .clone()
                    .find(|&i| self.before[i] != after[i])
                    .expect("a changed byte");
                panic!("honest port memory changed at {i:#x} outside its rx buffers and used ring");
            }
        }
        self.after = std::mem::replace(&mut self.before, after);
        assert!(!self.port.is_broken(), "the honest port broke");
    }
}

fn mem_len(mem: &GuestMemoryMmap) -> usize {
    (mem.last_addr().0 + 1) as usize
}

/// A session: one hostile port, one honest port, and the chains held between operations.
pub struct Session {
    port: DevicePort<GuestMemoryMmap>,
    mem: GuestMemoryMmap,
    rx: RingLayout,
    tx: RingLayout,
    held: Vec<TxChain>,
    honest: Honest,
}

impl Session {
    /// A session over `port`, whose rings the driver placed at `rx` and `tx` in `mem`.
    /// `slot_size` picks the honest peer's rx buffer size (so some deliveries do not fit).
    pub fn new(
        port: DevicePort<GuestMemoryMmap>,
        mem: GuestMemoryMmap,
        rx: RingLayout,
        tx: RingLayout,
        slot_size: u32,
    ) -> Self {
        Self {
            port,
            mem,
            rx,
            tx,
            held: Vec::new(),
            honest: Honest::new(slot_size),
        }
    }

    /// Runs operations until the input is used up.
    pub fn run(&mut self, inp: &mut Input<'_>) {
        while !inp.is_empty() {
            self.step(inp);
        }
    }

    fn layout(&self, queue: bool) -> RingLayout {
        if queue {
            self.tx
        } else {
            self.rx
        }
    }

    /// An address: usually inside memory, sometimes anything.
    fn addr(&self, inp: &mut Input<'_>) -> u64 {
        match inp.u8() % 8 {
            0 => inp.u64(),
            1 => mem_len(&self.mem) as u64 - (inp.u8() as u64),
            _ => inp.u16() as u64,
        }
    }

    /// One operation. Public so the mmio target can interleave its own.
    pub fn step(&mut self, inp: &mut Input<'_>) {
        let was_broken = self.port.is_broken();
        match inp.u8() % 16 {
            // Raw bytes anywhere in the hostile memory.
            0 => {
                let addr = inp.u16() as u64;
                let n = inp.u8() as usize;
                let bytes = inp.bytes(n);
                let _ = self.mem.write_slice(bytes, GuestAddress(addr));
            }
            // A descriptor.
            1 => {
                let l = self.layout(inp.bool());
                let i = inp.u8() as u64 % l.size as u64;
                let addr = self.addr(inp);
                let len = match inp.u8() % 4 {
                    0 => inp.u32(),
                    1 => inp.u16() as u32,
                    _ => inp.u8() as u32,
                };
                let flags = match inp.u8() % 4 {
                    0 => inp.u16(),
                    _ => inp.u8() as u16 & (DESC_F_NEXT | DESC_F_WRITE),
                };
                let next = match inp.u8() % 4 {
                    0 => inp.u16(),
                    _ => inp.u8() as u16 % l.size,
                };
                let mut d = [0u8; DESC_SIZE as usize];
                d[0..8].copy_from_slice(&addr.to_le_bytes());
                d[8..12].copy_from_slice(&len.to_le_bytes());
                d[12..14].copy_from_slice(&flags.to_le_bytes());
                d[14..16].copy_from_slice(&next.to_le_bytes());
                let _ = self
                    .mem
                    .write_slice(&d, GuestAddress(l.desc + DESC_SIZE * i));
            }
            // Make a head available (an in-range head, usually) and bump the avail index.
            2 => {
                let l = self.layout(inp.bool());
                let head = match inp.u8() % 8 {
                    0 => inp.u16(),
                    _ => inp.u8() as u16 % l.size,
                };
                let idx_at = GuestAddress(l.avail + 2);
                if let Ok(idx) = self.mem.read_obj::<u16>(idx_at) {
                    let slot = l.avail + 4 + 2 * (idx % l.size) as u64;
                    let _ = self.mem.write_obj(head, GuestAddress(slot));
                    let _ = self.mem.write_obj(idx.wrapping_add(1), idx_at);
                }
            }
            // Set an avail index outright.
            3 => {
                let l = self.layout(inp.bool());
                let v = inp.u16();
                let _ = self.mem.write_obj(v, GuestAddress(l.avail + 2));
            }
            // A message header, valid unless the fuzzer says otherwise.
            4 => {
                let addr = inp.u16() as u64;
                let bytes = self.header_bytes(inp);
                let _ = self.mem.write_slice(&bytes, GuestAddress(addr));
            }
            5 | 6 => self.pop(inp),
            7 => self.read_payload(inp),
            8 | 9 => self.deliver_to_honest(inp),
            10 => self.deliver_to_hostile(inp),
            11 => {
                self.port.publish_rx();
            }
            12 => {
                self.port.publish_tx();
            }
            13 => self.complete(inp),
            14 => {
                let q = if inp.bool() { RX_QUEUE } else { TX_QUEUE };
                // Ring errors here are typed and do not break the port; nothing to check
                // but that they do not panic.
                let _ = if inp.bool() {
                    self.port.enable_kicks(q).map(|_| ())
                } else {
                    self.port.disable_kicks(q)
                };
            }
            _ => {
                let _ = self.port.rx_buffers_available();
                let _ = self.port.rx_consumer_index();
                let _ = self.port.counters();
            }
        }
        if was_broken {
            assert!(self.port.is_broken(), "a broken port came back to life");
        }
        self.check_broken_refuses();
    }

    fn header_bytes(&self, inp: &mut Input<'_>) -> [u8; HEADER_SIZE] {
        let sel = inp.u8();
        let kind = match sel % 8 {
            0 => inp.u8(),
            k => k.min(5),
        };
        let mut h = MsgHeader::new(
            MsgKind::from_u8(kind).unwrap_or(MsgKind::OneWay),
            inp.u8() as u32,
            inp.u64(),
            match inp.u8() % 4 {
                0 => inp.u32(),
                _ => inp.u16() as u32 % 2048,
            },
        );
        if sel & 0x80 != 0 {
            h.set_dst_service(inp.u8() as u32);
        }
        h.set_status(Status::from_u16(inp.u8() as u16 % 8).unwrap_or(Status::Ok));
        let mut b = h.to_bytes();
        b[1] = kind;
        if sel & 0x40 != 0 {
            // Break a byte of it.
            let i = inp.u8() as usize % HEADER_SIZE;
            b[i] = inp.u8();
        } else {
            b[0] = WIRE_VERSION;
        }
        b
    }

    fn pop(&mut self, inp: &mut Input<'_>) {
        let max = inp.u8() as usize % 8 + 1;
        let mut got = Vec::new();
        let r = self.port.pop_tx_batch(max, |c| got.push(c));
        match r {
            Ok(n) => assert_eq!(n, got.len()),
            Err(DeviceError::Broken) => assert!(self.port.is_broken()),
            Err(e) => assert!(self.port.is_broken(), "fault {e} did not break the port"),
        }
        for c in got {
            assert!(c.head < self.tx.size, "popped head {} out of range", c.head);
            assert!(
                c.header.len() as u64 + HEADER_SIZE as u64 <= c.total as u64,
                "a header announcing more than its chain carries was accepted"
            );
            if self.held.len() < MAX_HELD {
                self.held.push(c);
            }
        }
    }

    fn held(&self, inp: &mut Input<'_>) -> Option<TxChain> {
        if self.held.is_empty() {
            None
        } else {
            Some(self.held[inp.below(self.held.len())])
        }
    }

    fn read_payload(&mut self, inp: &mut Input<'_>) {
        let Some(c) = self.held(inp) else {
            return;
        };
        let len = c.header.len() as usize;
        let short = inp.u8() % 8 == 0 && len > 0;
        let mut buf = vec![0u8; if short { len - 1 } else { len }];
        let broken = self.port.is_broken();
        match self.port.read_payload(&c, &mut buf) {
            Ok(n) => {
                assert!(!broken, "read_payload served a broken port");
                assert_eq!(n, len);
            }
            Err(DeviceError::Broken) => assert!(broken),
            // The caller's buffer was too small: not the guest's fault.
            Err(DeviceError::Ring { .. }) if short => {
                assert_eq!(self.port.is_broken(), broken)
            }
            Err(e) => assert!(self.port.is_broken(), "fault {e} did not break the port"),
        }
    }

    /// Delivers a held chain of the hostile port into the honest port's rx queue.
    fn deliver_to_honest(&mut self, inp: &mut Input<'_>) {
        let Some(c) = self.held(inp) else {
            return;
        };
        // What the hostile chain's payload reads as now (reading may break a port whose chain
        // was rewritten; deliver must then fail the same way).
        let mut expected = vec![0u8; c.header.len() as usize];
        let readable = if self.port.is_broken() {
            None
        } else {
            Some(self.port.read_payload(&c, &mut expected).is_ok())
        };
        let mut hdr = c.header;
        hdr.set_src(inp.u32());
        self.honest.mark();
        let r = self.honest.port.deliver(
            &hdr,
            &Payload::Chain {
                mem: self.port.view(),
                chain: &c,
            },
        );
        self.honest.check_untouched();
        match r {
            Ok((written, fits)) => {
                let needed = HEADER_SIZE as u32 + hdr.len();
                let room = self.honest.slot_size;
                assert_eq!(fits, needed <= room);
                assert_eq!(written, if fits { needed } else { HEADER_SIZE as u32 });
                if fits {
                    assert_ne!(readable, Some(false), "payload unreadable but delivered");
                }
                // Marked by the check above: nothing touched the memory since.
                self.honest.port.publish_rx();
                self.honest.check_untouched();
                let h = &mut self.honest;
                let m = h
                    .peer
                    .rx
                    .recv(&mut h.buf)
                    .expect("honest peer reads its delivery")
                    .expect("a delivery is there");
                h.peer.rx.flush().expect("re-post");
                if fits {
                    assert_eq!(m.header, hdr);
                    if readable == Some(true) {
                        assert!(h.buf[..m.len] == expected[..], "payload corrupted");
                    }
                } else {
                    assert_eq!(m.header.status(), Some(Status::TooLarge));
                    assert_eq!(m.len, 0);
                }
            }
            Err(DeliverError::NoBuffer) => panic!("the honest peer keeps its rx queue full"),
            Err(DeliverError::Dest(e)) => panic!("honest destination refused: {e}"),
            // The hostile chain was rewritten after validation: the caller takes the source
            // down. Only a chain too long to keep inline is walked again.
            Err(DeliverError::Source(_)) => {
                assert_ne!(readable, Some(true), "payload readable but delivery failed")
            }
        }
    }

    /// Delivers a message (bytes, or a chain of the honest port) into the hostile rx queue.
    fn deliver_to_hostile(&mut self, inp: &mut Input<'_>) {
        let max_payload = self.honest.slot_size as usize - HEADER_SIZE;
        let from_chain = inp.bool();
        let len = if from_chain {
            inp.u16() as usize % (max_payload + 1)
        } else {
            inp.u16() as usize % 8192
        };
        let payload: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
        let broken = self.port.is_broken();
        let id = self.honest.next_id;
        self.honest.next_id += 1;
        let hdr = MsgHeader::new(MsgKind::OneWay, 0, id, len as u32);
        let r = if from_chain {
            let h = &mut self.honest;
            h.peer.tx.reclaim().expect("reclaim");
            h.peer.tx.send(&hdr, &payload).expect("honest send");
            h.peer.tx.flush().expect("flush");
            let c = h
                .port
                .pop_tx()
                .expect("honest chain")
                .expect("a chain is there");
            let r = self.port.deliver(
                &hdr,
                &Payload::Chain {
                    mem: h.port.view(),
                    chain: &c,
                },
            );
            h.port.complete_tx(c.head).expect("complete honest chain");
            h.port.publish_tx();
            h.peer.tx.reclaim().expect("reclaim");
            assert!(!h.port.is_broken(), "the honest port broke");
            r
        } else {
            self.port
                .deliver::<GuestMemoryMmap>(&hdr, &Payload::Bytes(&payload))
        };
        match r {
            Ok(_) => assert!(!broken, "delivered into a broken port"),
            Err(DeliverError::NoBuffer) => assert!(!broken),
            Err(DeliverError::Dest(DeviceError::Broken)) => assert!(broken),
            Err(DeliverError::Dest(e)) => {
                assert!(self.port.is_broken(), "fault {e} did not break the port")
            }
            Err(DeliverError::Source(e)) => panic!("the honest source chain failed: {e}"),
        }
    }

    fn complete(&mut self, inp: &mut Input<'_>) {
        let head = if !self.held.is_empty() && inp.u8() % 4 != 0 {
            let i = inp.below(self.held.len());
            self.held.swap_remove(i).head
        } else {
            inp.u16()
        };
        let broken = self.port.is_broken();
        match self.port.complete_tx(head) {
            Ok(()) => assert!(!broken && head < self.tx.size),
            Err(DeviceError::Broken) => assert!(broken),
            Err(e) => assert!(self.port.is_broken(), "fault {e} did not break the port"),
        }
    }

    /// A broken port refuses everything with `Broken` and counts no new fault.
    fn check_broken_refuses(&mut self) {
        if !self.port.is_broken() {
            return;
        }
        let faults = self.port.counters().faults;
        assert!(faults >= 1, "broken without a counted fault");
        assert_eq!(self.port.pop_tx_batch(8, |_| ()), Err(DeviceError::Broken));
        assert_eq!(self.port.complete_tx(0), Err(DeviceError::Broken));
        let h = MsgHeader::new(MsgKind::OneWay, 0, 0, 0);
        assert_eq!(
            self.port
                .deliver::<GuestMemoryMmap>(&h, &Payload::Bytes(&[])),
            Err(DeliverError::Dest(DeviceError::Broken))
        );
        if let Some(c) = self.held.first().copied() {
            let mut buf = vec![0u8; c.header.len() as usize];
            assert_eq!(
                self.port.read_payload(&c, &mut buf),
                Err(DeviceError::Broken)
            );
        }
        assert_eq!(
            self.port.counters().faults,
            faults,
            "a broken port faulted again"
        );
    }
}
