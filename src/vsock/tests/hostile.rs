//! Random packet sequences from hostile guests: nothing panics, and state never grows past the
//! documented bounds.

use proptest::prelude::*;

use super::super::endpoint::*;
use super::super::packet::*;
use super::super::relay::*;

/// A header from a small, collision-prone domain: few CIDs and ports so packets hit each
/// other's connections, every op and type including junk, lengths around the limits.
fn header() -> impl Strategy<Value = PacketHeader> {
    let cid = prop::sample::select(vec![0u64, 1, 2, 3, 4, 5, CID_ANY, u64::MAX]);
    let port = prop::sample::select(vec![1u32, 2, 3, PORT_ANY]);
    let len = prop::sample::select(vec![0u32, 1, 100, 4096, 65_536, 65_537, u32::MAX]);
    let credit = prop::sample::select(vec![0u32, 1, 100, 4096, 1 << 20, u32::MAX]);
    (
        (cid.clone(), cid, port.clone(), port),
        (len, 0u16..4, 0u16..9, 0u32..5),
        (credit.clone(), credit),
    )
        .prop_map(
            |(
                (src_cid, dst_cid, src_port, dst_port),
                (len, ty, op, flags),
                (buf_alloc, fwd_cnt),
            )| {
                PacketHeader {
                    src_cid,
                    dst_cid,
                    src_port,
                    dst_port,
                    len,
                    ty,
                    op,
                    flags,
                    buf_alloc,
                    fwd_cnt,
                }
            },
        )
}

#[derive(Debug, Clone)]
enum RelayAction {
    Packet(u64, PacketHeader),
    /// Report delivery of the n-th most recent forwarded header.
    Deliver(usize),
    Sweep(u64),
    RemoveGuest(u64),
}

fn relay_action() -> impl Strategy<Value = RelayAction> {
    prop_oneof![
        8 => (3u64..6, header()).prop_map(|(c, h)| RelayAction::Packet(c, h)),
        2 => (0usize..4).prop_map(RelayAction::Deliver),
        1 => (0u64..50).prop_map(RelayAction::Sweep),
        1 => (3u64..6).prop_map(RelayAction::RemoveGuest),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn relay_survives_hostile_guests_within_bounds(
        actions in prop::collection::vec(relay_action(), 1..300)
    ) {
        let cfg = RelayConfig {
            max_conns_per_guest: 3,
            credit_cap: 8192,
            request_timeout_ns: 20,
            close_timeout_ns: 20,
            idle_timeout_ns: None,
        };
        let cap = cfg.credit_cap;
        let mut relay = Relay::new(cfg).unwrap();
        let mut forwarded: Vec<PacketHeader> = Vec::new();
        let mut clock = 0;
        for action in actions {
            match action {
                RelayAction::Packet(from, h) => match relay.on_packet(from, &h) {
                    Verdict::Forward(f) => {
                        prop_assert_eq!(f.src_cid, from);
                        prop_assert!(f.validate().is_ok());
                        prop_assert!(f.buf_alloc <= cap);
                        forwarded.push(f);
                    }
                    Verdict::Refuse { rst, .. } => {
                        prop_assert_eq!(rst.operation(), Some(Op::Rst));
                        prop_assert_eq!(rst.dst_cid, from);
                        prop_assert!(h.op != Op::Rst as u16);
                    }
                    Verdict::Reset { to_sender, to_peer, .. } => {
                        prop_assert_eq!(to_sender.dst_cid, from);
                        prop_assert_eq!(to_peer.src_cid, from);
                    }
                    Verdict::Drop => {}
                },
                RelayAction::Deliver(back) => {
                    if let Some(f) = forwarded.len().checked_sub(back + 1).map(|i| forwarded.remove(i)) {
                        // Each forwarded header is delivered at most once, so this never
                        // over-reports.
                        prop_assert!(relay.on_delivered(&f).is_ok());
                    }
                }
                RelayAction::Sweep(dt) => {
                    clock += dt;
                    for r in relay.sweep(clock) {
                        prop_assert_eq!(r.to_initiator.operation(), Some(Op::Rst));
                    }
                }
                RelayAction::RemoveGuest(cid) => {
                    relay.remove_guest(cid);
                    prop_assert_eq!(relay.opened_by(cid), 0);
                }
            }
            // Three guests, three connections each.
            prop_assert!(relay.len() <= 9);
            for cid in 3..6 {
                prop_assert!(relay.opened_by(cid) <= 3);
            }
            prop_assert!(relay.total_held() <= 2 * u64::from(cap) * relay.len() as u64);
        }
        // Everything ends: a long enough quiet time empties the table of all but idle
        // established connections, and removing the guests empties it.
        relay.sweep(clock + 1000);
        for cid in 3..6 {
            relay.remove_guest(cid);
        }
        prop_assert!(relay.is_empty());
    }
}

#[derive(Debug, Clone)]
enum EpAction {
    /// A packet from the guest; `honest_len` hands in exactly `len` payload bytes.
    Packet(PacketHeader, bool, bool),
    /// A packet that passes validation and carries a plausible `fwd_cnt`, so the endpoint
    /// goes deep into its states: (op, len, flags, buf_alloc, fwd_cnt is the latest possible).
    Plausible(u16, u32, u32, u32, bool),
    Write(usize),
    WriteMessage(usize, bool),
    Read(usize),
    ReadMessage,
    Shutdown(u32),
    Reset,
    Drain(u32),
}

fn ep_action() -> impl Strategy<Value = EpAction> {
    prop_oneof![
        6 => (header(), any::<bool>(), any::<bool>()).prop_map(|(h, a, b)| EpAction::Packet(h, a, b)),
        6 => (
            prop::sample::select(vec![3u16, 4, 5, 5, 5, 6, 7]),
            1u32..9000,
            0u32..4,
            prop::sample::select(vec![0u32, 1, 4096, 65_536]),
            any::<bool>(),
        )
            .prop_map(|(op, len, flags, ba, latest)| EpAction::Plausible(op, len, flags, ba, latest)),
        2 => (0usize..20_000).prop_map(EpAction::Write),
        2 => (0usize..20_000, any::<bool>()).prop_map(|(n, e)| EpAction::WriteMessage(n, e)),
        2 => (0usize..20_000).prop_map(EpAction::Read),
        1 => Just(EpAction::ReadMessage),
        1 => (0u32..4).prop_map(EpAction::Shutdown),
        1 => Just(EpAction::Reset),
        3 => prop::sample::select(vec![0u32, 1, 100, 4096, 65_536, u32::MAX]).prop_map(EpAction::Drain),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn endpoint_survives_a_hostile_guest_within_bounds(
        seq in any::<bool>(),
        guest_buf in prop::sample::select(vec![0u32, 100, 4096, u32::MAX]),
        actions in prop::collection::vec(ep_action(), 1..200),
    ) {
        let ty = if seq { SocketType::SeqPacket } else { SocketType::Stream };
        let cfg = EndpointConfig { buf_alloc: 8192, send_buf: 16_384 };
        let guest = SockAddr::new(3, 1);
        let local = SockAddr::new(HOST_CID, 2);
        let mut req = PacketHeader::new(ty, Op::Request, guest, local);
        req.buf_alloc = guest_buf;
        let mut ep = Endpoint::accept(cfg, &req).unwrap();
        let payload = vec![0xA5u8; 70_000];
        for action in actions {
            match action {
                EpAction::Packet(mut h, addressed, honest_len) => {
                    if addressed {
                        h.src_cid = guest.cid;
                        h.src_port = guest.port;
                        h.dst_cid = local.cid;
                        h.dst_port = local.port;
                    }
                    let n = if honest_len { (h.len as usize).min(payload.len()) } else { 7 };
                    let _ = ep.on_packet(&h, &payload[..n]);
                }
                EpAction::Plausible(op, len, flags, buf_alloc, latest) => {
                    let mut h = PacketHeader::new(ty, Op::from_raw(op).unwrap(), guest, local);
                    h.buf_alloc = buf_alloc;
                    h.fwd_cnt = if latest { ep.credit().tx_cnt() } else { 0 };
                    match h.operation() {
                        Some(Op::Rw) => {
                            h.len = len;
                            h.flags = if seq && flags & SEQ_EOM != 0 {
                                flags & (SEQ_EOM | SEQ_EOR)
                            } else {
                                0
                            };
                        }
                        Some(Op::Shutdown) => h.flags = flags.max(1),
                        _ => {}
                    }
                    let _ = ep.on_packet(&h, &payload[..h.len as usize]);
                }
                EpAction::Write(n) => {
                    let took = ep.write(&payload[..n]);
                    prop_assert!(took <= n);
                }
                EpAction::WriteMessage(n, eor) => {
                    let _ = ep.write_message(&payload[..n], eor);
                }
                EpAction::Read(n) => {
                    let mut buf = vec![0; n];
                    prop_assert!(ep.read(&mut buf) <= n);
                }
                EpAction::ReadMessage => {
                    if let Some(m) = ep.read_message() {
                        prop_assert!(!m.data.is_empty() && m.data.len() <= 8192);
                    }
                }
                EpAction::Shutdown(f) => ep.shutdown(f),
                EpAction::Reset => ep.reset(),
                EpAction::Drain(max) => {
                    // Without input, what the endpoint owes is finite: data within credit plus
                    // a handful of control packets.
                    let mut count = 0;
                    loop {
                        let free = ep.peer_free();
                        let Some((h, body)) = ep.next_packet(max) else { break };
                        prop_assert!(h.validate().is_ok(), "emitted invalid {:?}", h);
                        prop_assert_eq!(h.len as usize, body.len());
                        prop_assert!(h.len <= max.min(MAX_PAYLOAD));
                        prop_assert!(h.len <= free, "sent {} with {} credit", h.len, free);
                        prop_assert_eq!((h.src(), h.dst()), (local, guest));
                        prop_assert_eq!(h.buf_alloc, 8192);
                        count += 1;
                        prop_assert!(count <= 16_384 + 8, "endless output");
                    }
                }
            }
            prop_assert!(ep.readable() <= 8192);
            prop_assert!(ep.unsent() <= 16_384);
            prop_assert!(ep.messages_ready() <= ep.readable());
        }
    }
}
