//! Driver ([`crate::virtio::driver`]) against device ([`DeviceQueue`] + [`DevicePort`]) on
//! correct ring layouts of our own, plus hostile rings.

use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::peer::{device_queue, host_peer, HostPeer, PeerConfig};
use crate::virtio::spec::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
use crate::virtio::{
    need_event, Buf, DriverRing, GuestView, RingError, RingLayout, RX_QUEUE, TX_QUEUE,
};
use crate::wire::{MsgHeader, MsgKind, WireError, HEADER_SIZE};

/// A copied hand-off message's payload is its pages' bytes in list order (not address
/// order), cut at `len` inside the last page, and never more than its pages hold.
#[test]
fn a_pages_payload_reads_its_pages_in_list_order_up_to_its_length() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap();
    for (page, byte) in [(0x1000u64, 1u8), (0x2000, 2), (0x3000, 3)] {
        mem.write_slice(&[byte; 4096], GuestAddress(page)).unwrap();
    }
    let view = GuestView::new(mem);
    let pages = [0x3000, 0x1000];
    let p = Payload::Pages {
        mem: &view,
        pages: &pages,
        len: 4096 + 10,
    };
    assert_eq!(p.len(), 4106);
    let mut buf = vec![0u8; 4106];
    assert_eq!(p.copy_to(&mut buf).unwrap(), 4106);
    assert!(buf[..4096].iter().all(|&b| b == 3) && buf[4096..].iter().all(|&b| b == 1));
    let over = Payload::Pages {
        mem: &view,
        pages: &pages[..1],
        len: 9000,
    };
    assert_eq!(over.len(), 4096, "no more than its pages hold");
}

type Ring = DriverRing<GuestView<GuestMemoryMmap>, Vec<u16>>;

/// One side of a queue: a memory with one ring at 0x1000 and a data area after it.
struct Side {
    mem: GuestMemoryMmap,
    ring: Ring,
    data: u64,
    slot: u64,
}

fn side(size: u16, slot: u64, event_idx: bool) -> (Side, DeviceQueue) {
    let layout = RingLayout::contiguous(0x1000, size);
    let data = (layout.end() + 0xfff) & !0xfff;
    let bytes = data + slot * size as u64;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), bytes as usize)]).unwrap();
    let ring = DriverRing::new(
        GuestView::new(mem.clone()),
        layout,
        vec![0; 2 * size as usize],
        event_idx,
    )
    .unwrap();
    let q = device_queue(layout, event_idx).unwrap();
    (
        Side {
            mem,
            ring,
            data,
            slot,
        },
        q,
    )
}

/// A port whose tx queue is `tx` (the driver's ring in `s`) and whose rx queue is idle.
fn tx_port(s: &Side, size: u16, event_idx: bool, tx: DeviceQueue) -> DevicePort<GuestMemoryMmap> {
    let idle = device_queue(RingLayout::contiguous(0x1000, size), event_idx).unwrap();
    DevicePort::new(s.mem.clone(), idle, tx).unwrap()
}

/// A port whose rx queue is `rx` (the driver's ring in `s`) and whose tx queue is idle.
fn rx_port(s: &Side, size: u16, event_idx: bool, rx: DeviceQueue) -> DevicePort<GuestMemoryMmap> {
    let idle = device_queue(RingLayout::contiguous(0x1000, size), event_idx).unwrap();
    DevicePort::new(s.mem.clone(), rx, idle).unwrap()
}

/// The peer configuration of the hostile-ring tests: eight entries of 256 bytes.
const SMALL: PeerConfig = PeerConfig {
    queue_size: 8,
    slot_size: 256,
    event_idx: true,
};

/// One descriptor as it lies in a descriptor table.
fn desc_bytes(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..16].copy_from_slice(&next.to_le_bytes());
    d
}

/// Splits `total` bytes at `cuts` (fractions) into at most `parts` non-empty lengths.
fn split(total: u32, parts: usize, seed: u64) -> Vec<u32> {
    let mut lens = Vec::new();
    let mut left = total;
    let mut s = seed | 1;
    for i in 0..parts {
        if left == 0 {
            break;
        }
        if i + 1 == parts {
            lens.push(left);
            break;
        }
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let n = 1 + (s % left as u64) as u32;
        lens.push(n);
        left -= n;
    }
    if lens.is_empty() {
        lens.push(0);
    }
    lens
}

fn msg_bytes(id: u64, len: u32) -> (MsgHeader, Vec<u8>) {
    let h = MsgHeader::new(MsgKind::OneWay, 1, id, len);
    let payload = (0..len)
        .map(|i| (id as u32).wrapping_mul(31).wrapping_add(i) as u8)
        .collect();
    (h, payload)
}

/// Driver A sends chains split any way on its tx queue; the device pops each, delivers it into
/// chains B posted (also split any way) on its rx queue; both drivers get their chains back.
fn roundtrip(size: u16, msgs: &[(u32, usize, usize)], batch: usize, event_idx: bool) {
    let slot = 512u64;
    let (mut a, a_tx) = side(size, slot, event_idx);
    let (mut b, b_rx) = side(size, slot, event_idx);
    // Port A only sends, port B only receives: give each an idle queue for the other role.
    let (_a_idle, a_rx) = side(size, slot, event_idx);
    let (_b_idle, b_tx) = side(size, slot, event_idx);
    let _ = (a_rx, b_tx);
    let mut a_port = tx_port(&a, size, event_idx, a_tx);
    let mut b_port = rx_port(&b, size, event_idx, b_rx);

    let mut sent = 0usize;
    let mut received = 0usize;
    let mut posted: std::collections::VecDeque<(u16, Vec<Buf>)> = Default::default();
    let mut outstanding: std::collections::HashMap<u16, ()> = Default::default();
    let mut held = None;
    while received < msgs.len() {
        // B posts rx chains while it has descriptors.
        loop {
            let rx_split = msgs.get(received + posted.len()).map(|m| m.2).unwrap_or(1);
            let parts = split(slot as u32, rx_split, (received + posted.len()) as u64 + 7);
            if parts.len() > b.ring.num_free() as usize {
                break;
            }
            let head = b.ring.next_head().unwrap();
            let mut addr = b.data + head as u64 * b.slot;
            let bufs: Vec<Buf> = parts
                .iter()
                .map(|&l| {
                    let buf = Buf::writable(addr, l);
                    addr += l as u64;
                    buf
                })
                .collect();
            assert_eq!(b.ring.add(&bufs).unwrap(), head);
            posted.push_back((head, bufs));
        }
        b.ring.publish().unwrap();
        // A adds up to `batch` messages.
        let mut added = 0;
        while added < batch && sent < msgs.len() {
            let (len, tx_split, _) = msgs[sent];
            let (h, p) = msg_bytes(sent as u64, len);
            let mut bytes = h.to_bytes().to_vec();
            bytes.extend_from_slice(&p);
            let parts = split(bytes.len() as u32, tx_split, sent as u64);
            if parts.len() > a.ring.num_free() as usize {
                break;
            }
            let head = a.ring.next_head().unwrap();
            let mut addr = a.data + head as u64 * a.slot;
            let mut off = 0usize;
            let mut bufs = Vec::new();
            for &l in &parts {
                a.mem
                    .write_slice(&bytes[off..off + l as usize], GuestAddress(addr))
                    .unwrap();
                bufs.push(Buf::readable(addr, l));
                addr += l as u64;
                off += l as usize;
            }
            assert_eq!(a.ring.add(&bufs).unwrap(), head);
            outstanding.insert(head, ());
            sent += 1;
            added += 1;
        }
        a.ring.publish().unwrap();
        // The device moves everything it can; a chain B has no buffer for stays held (in
        // A's memory) and is retried next round.
        loop {
            let chain = match held.take() {
                Some(c) => c,
                None => match a_port.pop_tx().unwrap() {
                    Some(c) => c,
                    None => break,
                },
            };
            match b_port.deliver(&chain.header, &chain.payload(a_port.view())) {
                Ok((_, fits)) => assert!(fits),
                Err(DeliverError::NoBuffer) => {
                    held = Some(chain);
                    break;
                }
                Err(e) => panic!("deliver failed: {e:?}"),
            }
            a_port.complete_tx(chain.head).unwrap();
        }
        a_port.publish_tx();
        b_port.publish_rx();
        // A reclaims.
        while let Some(u) = a.ring.pop_used().unwrap() {
            assert_eq!(u.len, 0);
            assert!(outstanding.remove(&u.head).is_some());
        }
        // B reads.
        while let Some(u) = b.ring.pop_used().unwrap() {
            let (head, bufs) = posted.pop_front().unwrap();
            assert_eq!(u.head, head, "device used rx chains in order");
            let mut got = Vec::new();
            let mut left = u.len as usize;
            for buf in &bufs {
                let n = left.min(buf.len as usize);
                let mut v = vec![0u8; n];
                b.mem.read_slice(&mut v, GuestAddress(buf.addr)).unwrap();
                got.extend_from_slice(&v);
                left -= n;
            }
            let (h, p) = msg_bytes(received as u64, msgs[received].0);
            assert_eq!(MsgHeader::parse(&got, got.len() - HEADER_SIZE).unwrap(), h);
            assert_eq!(&got[HEADER_SIZE..], &p[..]);
            received += 1;
        }
    }
    assert!(outstanding.is_empty());
    assert_eq!(a.ring.num_free(), size);
    assert_eq!(a_port.counters().tx_chains, msgs.len() as u64);
    assert_eq!(b_port.counters().rx_chains, msgs.len() as u64);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_chain_shape_roundtrips(
        shift in 1u32..=8,
        msgs in prop::collection::vec((0u32..400, 1usize..6, 1usize..6), 1..80),
        batch in 1usize..40,
        event_idx in any::<bool>(),
    ) {
        let size = 1u16 << shift;
        // Chains longer than the queue cannot be added; cap the splits to the queue size.
        let msgs: Vec<_> = msgs.into_iter()
            .map(|(l, t, r)| (l, t.min(size as usize), r.min(size as usize)))
            .collect();
        roundtrip(size, &msgs, batch, event_idx);
    }

    #[test]
    fn walker_never_panics_on_random_tables(
        table in prop::collection::vec((any::<u64>(), any::<u32>(), any::<u16>(), any::<u16>()), 8),
        head in 0u16..10,
    ) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        for (i, (addr, len, flags, next)) in table.iter().enumerate() {
            // Keep a third of the addresses in range so both outcomes happen.
            let addr = if i % 3 == 0 { addr % 0x10000 } else { *addr };
            let d = desc_bytes(addr, len % 0x2000, flags & 7, next % 10);
            mem.write_slice(&d, GuestAddress(0x100 + 16 * i as u64)).unwrap();
        }
        let mut segs = Vec::new();
        if chain::walk(&GuestView::new(mem), 0x100, 8, head, false, |s| segs.push(s)).is_ok() {
            for s in segs {
                prop_assert!(s.addr + s.len as u64 <= 0x10000);
            }
        }
    }
}

#[test]
fn long_run_wraps_16_bit_indices() {
    // 70 000 messages through a 4-entry ring: every index wraps at least once.
    let cfg = PeerConfig {
        queue_size: 4,
        slot_size: 128,
        event_idx: true,
    };
    let (mut a, mut a_port) = host_peer(cfg).unwrap();
    let (mut b, mut b_port) = host_peer(cfg).unwrap();
    let mut buf = [0u8; 96];
    for i in 0..70_000u64 {
        let (h, p) = msg_bytes(i, (i % 90) as u32);
        a.tx.send(&h, &p).unwrap();
        a.tx.flush().unwrap();
        let chain = a_port.pop_tx().unwrap().unwrap();
        b_port
            .deliver(&chain.header, &chain.payload(a_port.view()))
            .unwrap();
        a_port.complete_tx(chain.head).unwrap();
        a_port.publish_tx();
        b_port.publish_rx();
        assert_eq!(a.tx.reclaim().unwrap(), 1);
        let m = b.rx.recv(&mut buf).unwrap().unwrap();
        assert_eq!(m.header.msg_id(), i);
        assert_eq!(&buf[..m.len], &p[..]);
        b.rx.flush().unwrap();
    }
    assert_eq!(a_port.tx_queue().next_avail(), (70_000u32 % 65536) as u16);
    assert_eq!(b.rx.ring().counters().used, 70_000);
}

#[test]
fn event_idx_kicks_follow_avail_event() {
    let (mut s, q) = side(8, 64, true);
    let mut port = tx_port(&s, 8, true, q);
    let head = |s: &mut Side| {
        let a = s.data;
        let (h, _) = msg_bytes(0, 0);
        s.mem.write_slice(&h.to_bytes(), GuestAddress(a)).unwrap();
        s.ring.add(&[Buf::readable(a, HEADER_SIZE as u32)]).unwrap()
    };
    // The device asked for kicks from index 0: the first publish kicks.
    port.enable_kicks(TX_QUEUE).unwrap();
    head(&mut s);
    assert!(s.ring.publish().unwrap());
    // The device has not looked yet, so its avail_event still says 0: no kick for index 2.
    head(&mut s);
    assert!(!s.ring.publish().unwrap());
    // The device drains and re-arms at 2: the next publish kicks again.
    while let Some(c) = port.pop_tx().unwrap() {
        port.complete_tx(c.head).unwrap();
    }
    assert!(!port.enable_kicks(TX_QUEUE).unwrap());
    head(&mut s);
    head(&mut s);
    assert!(s.ring.publish().unwrap(), "event 2 lies in [2, 4)");
    // A device that polls (kicks disabled) is never kicked.
    port.disable_kicks(TX_QUEUE).unwrap();
    while let Some(c) = port.pop_tx().unwrap() {
        port.complete_tx(c.head).unwrap();
    }
    for _ in 0..3 {
        while s.ring.pop_used().unwrap().is_some() {}
        head(&mut s);
        assert!(!s.ring.publish().unwrap());
    }
    let c = s.ring.counters();
    assert_eq!((c.kicks, c.kicks_suppressed), (2, 4));
}

/// A page run with a page outside the sender's memory is the sender's fault: nothing is
/// written, and the receiver keeps its rx buffer for the next delivery.
#[test]
fn a_pages_payload_with_a_page_outside_memory_is_refused_before_anything_is_written() {
    let (mut s, q) = side(8, 8192, false);
    let mut port = rx_port(&s, 8, false, q);
    s.ring.add(&[Buf::writable(s.data, 8192)]).unwrap();
    s.ring.publish().unwrap();
    let src = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x2000)]).unwrap();
    let view = GuestView::new(src);
    let (h, _) = msg_bytes(1, 0);
    let bad = Payload::Pages {
        mem: &view,
        pages: &[0x1000, 0x8000],
        len: 8000,
    };
    assert!(matches!(
        port.deliver::<GuestMemoryMmap>(&h, &bad),
        Err(DeliverError::Source(_))
    ));
    let good = Payload::Pages {
        mem: &view,
        pages: &[0x1000],
        len: 100,
    };
    let (written, whole) = port.deliver::<GuestMemoryMmap>(&h, &good).unwrap();
    assert_eq!((written, whole), (HEADER_SIZE as u32 + 100, true));
    port.publish_rx();
    assert!(
        s.ring.pop_used().unwrap().is_some(),
        "the same buffer took the good one"
    );
}

#[test]
fn event_idx_interrupts_follow_used_event() {
    let (mut s, q) = side(8, 64, true);
    let mut port = rx_port(&s, 8, true, q);
    for i in 0..8u64 {
        s.ring.add(&[Buf::writable(s.data + i * 64, 64)]).unwrap();
    }
    s.ring.publish().unwrap();
    let (h, _) = msg_bytes(1, 0);
    let deliver = |port: &mut DevicePort<GuestMemoryMmap>| {
        port.deliver::<GuestMemoryMmap>(&h, &Payload::Bytes(&[]))
            .unwrap();
        port.publish_rx()
    };
    // Driver wants an interrupt for the next used entry (used_event = 0).
    assert!(!s.ring.enable_interrupts().unwrap());
    assert!(deliver(&mut port));
    // It has not consumed yet: used_event still 0, so index 1 -> 2 does not interrupt.
    assert!(!deliver(&mut port));
    // Driver consumes both and asks to be woken after 3 more.
    while s.ring.pop_used().unwrap().is_some() {}
    assert!(!s.ring.enable_interrupts_after(3).unwrap());
    assert!(!deliver(&mut port));
    assert!(!deliver(&mut port));
    assert!(deliver(&mut port), "third used entry crosses used_event");
    // Batched: two deliveries before one check still interrupt when the event lies between.
    while s.ring.pop_used().unwrap().is_some() {}
    s.ring.enable_interrupts().unwrap();
    port.deliver::<GuestMemoryMmap>(&h, &Payload::Bytes(&[]))
        .unwrap();
    port.deliver::<GuestMemoryMmap>(&h, &Payload::Bytes(&[]))
        .unwrap();
    assert!(port.publish_rx());
    let c = port.counters();
    assert_eq!((c.notifies, c.notifies_suppressed), (3, 3));
}

proptest! {
    /// Random interleavings of driver publishes and device re-arms: a kick happens exactly when
    /// the device's avail_event lies in the window of indices the publish made available.
    #[test]
    fn kick_decision_matches_spec(ops in prop::collection::vec(0u8..4, 1..200)) {
        let (mut s, q) = side(16, 64, true);
        let mut port = tx_port(&s, 16, true, q);
        let (h, _) = msg_bytes(0, 0);
        s.mem.write_slice(&h.to_bytes(), GuestAddress(s.data)).unwrap();
        let mut published: u16 = 0;
        let mut pending = 0u16;
        for op in ops {
            match op {
                0 if s.ring.num_free() > 0 => {
                    s.ring.add(&[Buf::readable(s.data, HEADER_SIZE as u32)]).unwrap();
                    pending += 1;
                }
                1 => {
                    let event = s.ring.memory().load_u16(s.ring.layout().avail_event()).unwrap();
                    let kicked = s.ring.publish().unwrap();
                    let old = published;
                    let new = old.wrapping_add(pending);
                    // Independent statement of the rule: event in [old, new).
                    let expect = pending > 0 && event.wrapping_sub(old) < new.wrapping_sub(old);
                    prop_assert_eq!(kicked, expect);
                    prop_assert_eq!(kicked, pending > 0 && need_event(event, new, old));
                    published = new;
                    pending = 0;
                }
                2 => {
                    while let Some(c) = port.pop_tx().unwrap() {
                        port.complete_tx(c.head).unwrap();
                    }
                    port.enable_kicks(TX_QUEUE).unwrap();
                }
                _ => while s.ring.pop_used().unwrap().is_some() {},
            }
        }
    }
}

// ---- hostile rings -------------------------------------------------------------------------

/// Writes descriptors and avail entries straight into a peer's tx ring, as a hostile guest would.
fn inject(
    mem: &GuestMemoryMmap,
    l: RingLayout,
    descs: &[(u16, u64, u32, u16, u16)],
    heads: &[u16],
    idx: u16,
) {
    for &(i, addr, len, flags, next) in descs {
        let d = desc_bytes(addr, len, flags, next);
        mem.write_slice(&d, GuestAddress(l.desc + 16 * i as u64))
            .unwrap();
    }
    for (k, &h) in heads.iter().enumerate() {
        mem.write_obj(h, GuestAddress(l.avail + 4 + 2 * k as u64))
            .unwrap();
    }
    mem.write_obj(idx, GuestAddress(l.avail + 2)).unwrap();
}

/// A peer of [`SMALL`] with a valid header (of a message with 8 payload bytes) at 0x100, for
/// the chains that need one.
fn peer_with_header() -> (HostPeer, DevicePort<GuestMemoryMmap>) {
    let (peer, port) = host_peer(SMALL).unwrap();
    let (h, _) = msg_bytes(1, 8);
    peer.memory()
        .write_slice(&h.to_bytes(), GuestAddress(0x100))
        .unwrap();
    (peer, port)
}

fn hostile(
    descs: &[(u16, u64, u32, u16, u16)],
    heads: &[u16],
    idx: u16,
) -> (DeviceError, PortCounters, DevicePort<GuestMemoryMmap>) {
    let (peer, mut port) = peer_with_header();
    let l = peer.tx.ring().layout();
    inject(peer.memory(), l, descs, heads, idx);
    let err = port.pop_tx().expect_err("hostile chain must be rejected");
    let c = port.counters();
    (err, c, port)
}

#[test]
fn descriptor_loop_is_rejected() {
    let (e, c, mut port) = hostile(
        &[
            (0, 0x100, 16, DESC_F_NEXT, 1),
            (1, 0x110, 16, DESC_F_NEXT, 0),
        ],
        &[0],
        1,
    );
    assert_eq!(e, DeviceError::BadChain(ChainError::Loop { size: 8 }));
    assert_eq!(c.faults, 1);
    assert!(port.is_broken());
    assert_eq!(port.pop_tx().unwrap_err(), DeviceError::Broken);
}

#[test]
fn chain_longer_than_queue_is_rejected() {
    // Eight descriptors that all say "more follows": the chain cannot end within the queue.
    let descs: Vec<_> = (0..8u16)
        .map(|i| (i, 0x100 + 4 * i as u64, 4, DESC_F_NEXT, i + 1))
        .collect();
    let (e, ..) = hostile(&descs, &[0], 1);
    assert_eq!(e, DeviceError::BadChain(ChainError::Loop { size: 8 }));
}

#[test]
fn out_of_range_head_and_next_are_rejected() {
    let (e, ..) = hostile(&[], &[9], 1);
    assert_eq!(
        e,
        DeviceError::BadChain(ChainError::IndexOutOfRange { index: 9, size: 8 })
    );
    let (e, ..) = hostile(&[(0, 0x100, 32, DESC_F_NEXT, 1000)], &[0], 1);
    assert_eq!(
        e,
        DeviceError::BadChain(ChainError::IndexOutOfRange {
            index: 1000,
            size: 8
        })
    );
}

#[test]
fn buffers_outside_memory_or_overflowing_are_rejected() {
    for (addr, len) in [(1u64 << 40, 64u32), (u64::MAX - 8, 64), (0x100, u32::MAX)] {
        let (e, ..) = hostile(&[(0, addr, len, 0, 0)], &[0], 1);
        assert_eq!(
            e,
            DeviceError::BadChain(ChainError::BufferOutOfRange { addr, len })
        );
    }
}

#[test]
fn avail_index_jump_is_rejected() {
    let (e, c, _) = hostile(&[], &[], 100);
    assert_eq!(e, DeviceError::AvailIndexJump { queue: TX_QUEUE });
    assert_eq!(c.faults, 1);
}

#[test]
fn a_head_the_device_holds_cannot_be_taken_again() {
    // One valid request chain (head 0, header and 8 payload bytes at 0x100), published twice
    // before the device returned it: the second take is a protocol fault, so a guest can never
    // have more in flight than its tx queue holds.
    let (peer, mut port) = peer_with_header();
    let desc = [(0, 0x100, HEADER_SIZE as u32 + 8, 0, 0)];
    inject(peer.memory(), peer.tx.ring().layout(), &desc, &[0, 0], 2);
    let mut taken = Vec::new();
    let e = port.pop_tx_batch(8, |c| taken.push(c.head));
    assert_eq!(
        e,
        Err(DeviceError::HeldHead {
            queue: TX_QUEUE,
            head: 0
        })
    );
    assert_eq!(taken, [0]);
    let c = port.counters();
    assert_eq!((c.faults, c.tx_chains), (1, 1));
    assert_eq!(port.tx_held(), 1);
    assert!(port.is_broken());
}

#[test]
fn a_returned_head_can_be_published_again() {
    let (peer, mut port) = peer_with_header();
    let l = peer.tx.ring().layout();
    let desc = [(0, 0x100, HEADER_SIZE as u32 + 8, 0, 0)];
    inject(peer.memory(), l, &desc, &[0], 1);
    let first = port.pop_tx().unwrap().unwrap();
    assert_eq!(port.tx_held(), 1);
    port.complete_tx(first.head).unwrap();
    assert_eq!(port.tx_held(), 0);
    inject(peer.memory(), l, &desc, &[0, 0], 2);
    assert_eq!(port.pop_tx().unwrap().map(|c| c.head), Some(0));
    assert_eq!(port.counters().faults, 0);
}

#[test]
fn header_that_lies_about_length_is_rejected() {
    // The header at 0x100 announces 8 payload bytes; the chain carries 4.
    let (e, ..) = hostile(&[(0, 0x100, HEADER_SIZE as u32 + 4, 0, 0)], &[0], 1);
    assert_eq!(
        e,
        DeviceError::BadHeader(WireError::LengthPastChain {
            len: 8,
            available: 4
        })
    );
}

#[test]
fn indirect_and_wrong_direction_are_rejected() {
    let (e, ..) = hostile(&[(0, 0x100, 64, DESC_F_INDIRECT, 0)], &[0], 1);
    assert_eq!(e, DeviceError::BadChain(ChainError::Indirect));
    let (e, ..) = hostile(&[(0, 0x100, 64, DESC_F_WRITE, 0)], &[0], 1);
    assert_eq!(e, DeviceError::BadChain(ChainError::WrongDirection));
}

#[test]
fn hostile_rx_chain_breaks_only_the_destination() {
    let (mut a, mut a_port) = host_peer(SMALL).unwrap();
    let (b, mut b_port) = host_peer(SMALL).unwrap();
    // B rewrites its first posted rx descriptor to point outside its memory.
    let l = b.rx.ring().layout();
    let d = desc_bytes(1 << 40, 256, DESC_F_WRITE, 0);
    b.memory().write_slice(&d, GuestAddress(l.desc)).unwrap();
    let (h, p) = msg_bytes(5, 10);
    a.tx.send(&h, &p).unwrap();
    a.tx.flush().unwrap();
    let chain = a_port.pop_tx().unwrap().unwrap();
    let e = b_port
        .deliver(&chain.header, &chain.payload(a_port.view()))
        .unwrap_err();
    assert!(matches!(
        e,
        DeliverError::Dest(DeviceError::BadChain(ChainError::BufferOutOfRange { .. }))
    ));
    assert!(b_port.is_broken());
    assert!(!a_port.is_broken());
    // A's request is still held and readable: it can go elsewhere.
    let mut buf = [0u8; 16];
    assert_eq!(a_port.read_payload(&chain, &mut buf).unwrap(), 10);
    assert_eq!(&buf[..10], &p[..]);
}

#[test]
fn short_chain_is_immune_to_rewrites_after_pop() {
    // Chains of up to four buffers are snapshotted when validated: rewriting the descriptor
    // afterwards cannot redirect the copy.
    let (mut a, mut a_port) = host_peer(SMALL).unwrap();
    let (mut b, mut b_port) = host_peer(SMALL).unwrap();
    let (h, p) = msg_bytes(5, 10);
    let head = a.tx.send(&h, &p).unwrap();
    a.tx.flush().unwrap();
    let chain = a_port.pop_tx().unwrap().unwrap();
    let at = a.tx.ring().layout().desc + 16 * head as u64;
    a.memory().write_obj(1u64 << 40, GuestAddress(at)).unwrap();
    b_port
        .deliver(&chain.header, &chain.payload(a_port.view()))
        .unwrap();
    b_port.publish_rx();
    let mut buf = [0u8; 16];
    let m = b.rx.recv(&mut buf).unwrap().unwrap();
    assert_eq!(&buf[..m.len], &p[..]);
}

/// `a` sends a message with 40 payload bytes at 0x100 in six buffers of 12 bytes (too long to
/// snapshot, so it is walked again on every read); its port pops it. Returns the chain's head.
fn pop_long_chain(a: &mut HostPeer, a_port: &mut DevicePort<GuestMemoryMmap>) -> (u16, TxChain) {
    let (h, p) = msg_bytes(5, 40);
    let mut bytes = h.to_bytes().to_vec();
    bytes.extend_from_slice(&p);
    a.memory().write_slice(&bytes, GuestAddress(0x100)).unwrap();
    let bufs: Vec<Buf> = (0..6).map(|i| Buf::readable(0x100 + 12 * i, 12)).collect();
    let head = a.tx.ring_mut().add(&bufs).unwrap();
    a.tx.flush().unwrap();
    (head, a_port.pop_tx().unwrap().unwrap())
}

#[test]
fn long_chain_rewritten_after_pop_is_caught_at_copy_time() {
    let (mut a, mut a_port) = host_peer(SMALL).unwrap();
    let (_b, mut b_port) = host_peer(SMALL).unwrap();
    let (head, chain) = pop_long_chain(&mut a, &mut a_port);
    // The hostile sender turns its held head descriptor into a self-loop.
    let at = a.tx.ring().layout().desc + 16 * head as u64;
    a.memory().write_obj(head, GuestAddress(at + 14)).unwrap();
    let free_before = b_port.rx_buffers_available();
    let e = b_port
        .deliver(&chain.header, &chain.payload(a_port.view()))
        .unwrap_err();
    assert_eq!(e, DeliverError::Source(ChainError::Loop { size: 8 }));
    // The destination's rx buffer was not consumed, and only the source is to blame.
    assert_eq!(b_port.rx_buffers_available(), free_before);
    assert!(!b_port.is_broken());
}

#[test]
fn read_payload_on_a_broken_port_is_refused_without_a_second_fault() {
    // Found by the `chain` fuzz target: a held long chain, rewritten after the port broke,
    // was walked again by read_payload, which counted a second fault and returned the walk's
    // error instead of `Broken`.
    let (mut a, mut a_port) = host_peer(SMALL).unwrap();
    let (head, chain) = pop_long_chain(&mut a, &mut a_port);
    let mut buf = vec![0u8; 40];
    assert_eq!(a_port.read_payload(&chain, &mut buf).unwrap(), 40);
    // The guest publishes an avail index far ahead: the port breaks.
    let l = a.tx.ring().layout();
    a.memory()
        .write_obj(999u16, GuestAddress(l.avail + 2))
        .unwrap();
    assert!(matches!(
        a_port.pop_tx(),
        Err(DeviceError::AvailIndexJump { .. })
    ));
    assert_eq!(a_port.counters().faults, 1);
    // Then it rewrites the held chain's head descriptor to point outside its memory.
    let at = l.desc + 16 * head as u64;
    a.memory().write_obj(1u64 << 40, GuestAddress(at)).unwrap();
    assert_eq!(
        a_port.read_payload(&chain, &mut buf),
        Err(DeviceError::Broken)
    );
    assert_eq!(a_port.counters().faults, 1, "one fault, counted once");
}

// ---- a hostile device, seen by the driver --------------------------------------------------

#[test]
fn driver_rejects_bad_used_ids_and_index_jumps() {
    let (mut s, _q) = side(8, 64, true);
    let l = s.ring.layout();
    s.ring.add(&[Buf::readable(s.data, 8)]).unwrap();
    s.ring.publish().unwrap();
    // Used id 5 was never made available.
    s.mem.write_obj(5u32, GuestAddress(l.used + 4)).unwrap();
    s.mem.write_obj(1u16, GuestAddress(l.used + 2)).unwrap();
    assert_eq!(s.ring.pop_used(), Err(RingError::BadUsedId(5)));
    // Used index far beyond what is outstanding.
    s.mem.write_obj(40u16, GuestAddress(l.used + 2)).unwrap();
    assert_eq!(
        s.ring.pop_used(),
        Err(RingError::UsedIndexJump {
            last: 0,
            published: 40
        })
    );
}

#[test]
fn driver_rejects_bad_chains_and_layouts() {
    let (mut s, _q) = side(4, 64, false);
    assert_eq!(s.ring.add(&[]), Err(RingError::EmptyChain));
    assert_eq!(
        s.ring
            .add(&[Buf::writable(0x8000, 1), Buf::readable(0x8000, 1)]),
        Err(RingError::WritableBeforeReadable)
    );
    let five = [Buf::readable(0x8000, 1); 5];
    assert_eq!(
        s.ring.add(&five),
        Err(RingError::QueueFull { needed: 5, free: 4 })
    );
    let mem = GuestView::new(s.mem.clone());
    assert_eq!(
        DriverRing::new(
            mem.clone(),
            RingLayout::contiguous(0x1000, 3),
            vec![0; 6],
            false
        )
        .err(),
        Some(RingError::InvalidSize(3))
    );
    assert!(matches!(
        DriverRing::new(
            mem.clone(),
            RingLayout::contiguous(1 << 30, 4),
            vec![0; 8],
            false
        )
        .err(),
        Some(RingError::OutOfBounds { .. })
    ));
    assert!(matches!(
        DriverRing::new(mem, RingLayout::contiguous(0x1000, 4), vec![0; 7], false).err(),
        Some(RingError::StateTooSmall {
            needed: 8,
            given: 7
        })
    ));
}

#[test]
fn without_event_idx_no_notify_flag_suppresses_kicks() {
    let (mut s, q) = side(4, 64, false);
    let mut port = tx_port(&s, 4, false, q);
    s.ring.add(&[Buf::readable(s.data, 8)]).unwrap();
    assert!(s.ring.publish().unwrap());
    port.disable_kicks(TX_QUEUE).unwrap();
    s.ring.add(&[Buf::readable(s.data, 8)]).unwrap();
    assert!(!s.ring.publish().unwrap());
    port.enable_kicks(TX_QUEUE).unwrap();
    s.ring.add(&[Buf::readable(s.data, 8)]).unwrap();
    assert!(s.ring.publish().unwrap());
}

#[test]
fn activation_counts_the_trailing_event_fields() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let size = 8;
    let ok = RingLayout::contiguous(0x1000, size);
    // Each ring's entries end exactly at the end of memory: only its event field is outside.
    let avail = 0x10000 - (RingLayout::avail_bytes(size) - 2);
    let used = 0x10000 - (RingLayout::used_bytes(size) - 2);
    let q = |l: RingLayout| DeviceQueue::new(size, l, true).unwrap();
    assert!(DevicePort::new(mem.clone(), q(ok), q(ok)).is_ok());
    assert_eq!(
        DevicePort::new(mem.clone(), q(RingLayout { avail, ..ok }), q(ok)).err(),
        Some(DeviceError::Queue {
            queue: RX_QUEUE,
            source: QueueError::OutsideMemory {
                part: "avail ring",
                addr: avail,
                len: RingLayout::avail_bytes(size)
            }
        })
    );
    assert_eq!(
        DevicePort::new(mem, q(ok), q(RingLayout { used, ..ok })).err(),
        Some(DeviceError::Queue {
            queue: TX_QUEUE,
            source: QueueError::OutsideMemory {
                part: "used ring",
                addr: used,
                len: RingLayout::used_bytes(size)
            }
        })
    );
}

/// `virtio-queue`, an independent device side, as the reference for what [`DeviceQueue`]
/// accepts at activation and how it arms and disarms kicks.
mod against_virtio_queue {
    use proptest::prelude::*;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use crate::virtio::{DeviceQueue, GuestView, RingLayout};

    fn reference(max: u16, l: RingLayout, event_idx: bool) -> Result<Queue, virtio_queue::Error> {
        let mut q = Queue::new(max)?;
        q.try_set_size(l.size)?;
        q.try_set_desc_table_address(GuestAddress(l.desc))?;
        q.try_set_avail_ring_address(GuestAddress(l.avail))?;
        q.try_set_used_ring_address(GuestAddress(l.used))?;
        q.set_event_idx(event_idx);
        q.set_ready(true);
        Ok(q)
    }

    fn memory(two_regions: bool) -> GuestMemoryMmap {
        let ranges: &[(GuestAddress, usize)] = if two_regions {
            &[(GuestAddress(0), 0x8000), (GuestAddress(0xc000), 0x4000)]
        } else {
            &[(GuestAddress(0), 0x10000)]
        };
        GuestMemoryMmap::<()>::from_ranges(ranges).unwrap()
    }

    /// Mostly aligned addresses around the memory's ends, some not, some near overflow.
    fn addr() -> impl Strategy<Value = u64> {
        prop_oneof![
            4 => (0u64..0x1100).prop_map(|x| x * 16),
            2 => 0u64..0x11000,
            1 => Just(u64::MAX - 3),
            1 => 0xffff_0000u64..0x1_0001_0000,
        ]
    }

    /// Mostly powers of two, some not.
    fn size() -> impl Strategy<Value = u16> {
        prop_oneof![3 => (0u32..12).prop_map(|s| 1u16 << s), 1 => 0u16..=1024]
    }

    proptest! {
        #[test]
        fn activation_accepts_what_virtio_queue_accepts(
            max_shift in 0u32..17,
            size in size(),
            desc in addr(),
            avail in addr(),
            used in addr(),
            event_idx: bool,
            two_regions: bool,
        ) {
            let max = 1u16.checked_shl(max_shift).unwrap_or(0);
            let layout = RingLayout { size, desc, avail, used };
            let mem = memory(two_regions);
            let want = reference(max, layout, event_idx).is_ok_and(|q| q.is_valid(&mem));
            let view = GuestView::new(mem.clone());
            let got = DeviceQueue::new(max, layout, event_idx)
                .and_then(|q| q.check_memory(&view));
            prop_assert_eq!(got.is_ok(), want, "{:?}: {:?}", layout, got);
        }

        #[test]
        fn kicks_are_armed_like_virtio_queue(
            shift in 0u32..8,
            event_idx: bool,
            popped in 0u16..300,
            avail_idx: u16,
            enable: bool,
        ) {
            let size = 1u16 << shift;
            let layout = RingLayout::contiguous(0x1000, size);
            let (mine, theirs) = (memory(false), memory(false));
            for m in [&mine, &theirs] {
                m.write_obj(avail_idx.to_le(), GuestAddress(layout.avail + 2)).unwrap();
                m.write_obj(0x5555u16, GuestAddress(layout.used)).unwrap();
            }
            let view = GuestView::new(mine.clone());
            let mut q = DeviceQueue::new(size, layout, event_idx).unwrap();
            let mut r = reference(size, layout, event_idx).unwrap();
            // Pop `popped` entries on both sides (the avail ring holds head 0 everywhere).
            for i in 0..popped {
                mine.write_obj((i + 1).to_le(), GuestAddress(layout.avail + 2)).unwrap();
                assert!(q.avail_ready(&view, true).is_ok_and(|n| n == 1));
                q.pop_avail(&view).unwrap();
            }
            mine.write_obj(avail_idx.to_le(), GuestAddress(layout.avail + 2)).unwrap();
            r.set_next_avail(popped);
            prop_assert_eq!(q.next_avail(), popped);
            if enable {
                let got = q.enable_kicks(&view).unwrap();
                prop_assert_eq!(got, r.enable_notification(&theirs).unwrap());
            } else {
                q.disable_kicks(&view).unwrap();
                r.disable_notification(&theirs).unwrap();
            }
            let mut a = vec![0u8; RingLayout::used_bytes(size) as usize];
            let mut b = a.clone();
            mine.read_slice(&mut a, GuestAddress(layout.used)).unwrap();
            theirs.read_slice(&mut b, GuestAddress(layout.used)).unwrap();
            prop_assert_eq!(a, b);
        }
    }
}
