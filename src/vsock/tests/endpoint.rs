use super::super::credit::CreditError;
use super::super::endpoint::*;
use super::super::packet::*;
use super::{hdr, rw, with_credit};

const S: SocketType = SocketType::Stream;
const Q: SocketType = SocketType::SeqPacket;
/// The guest's end and ours.
const G: (u64, u32) = (3, 5000);
const H: (u64, u32) = (HOST_CID, 1024);

/// A guest packet carrying the guest's credit (64 KiB buffer, nothing consumed), as Linux
/// headers always do.
fn g(h: PacketHeader) -> PacketHeader {
    with_credit(h, 65536, 0)
}

fn cfg(buf_alloc: u32, send_buf: u32) -> EndpointConfig {
    EndpointConfig {
        buf_alloc,
        send_buf,
    }
}

/// An endpoint that accepted the guest's request (guest buffer `guest_buf`), RESPONSE taken.
fn accepted(ty: SocketType, c: EndpointConfig, guest_buf: u32) -> Endpoint {
    let req = with_credit(hdr(ty, Op::Request, G, H), guest_buf, 0);
    let mut ep = Endpoint::accept(c, &req).unwrap();
    let (resp, body) = ep.next_packet(4096).unwrap();
    assert_eq!(resp.operation(), Some(Op::Response));
    assert_eq!((resp.src(), resp.dst()), (req.dst(), req.src()));
    assert_eq!(resp.buf_alloc, c.buf_alloc);
    assert!(body.is_empty());
    assert_eq!(ep.state(), EndpointState::Established);
    ep
}

/// Drains every packet the endpoint owes, with `max` bytes per packet.
fn drain(ep: &mut Endpoint, max: u32) -> Vec<(PacketHeader, Vec<u8>)> {
    std::iter::from_fn(|| ep.next_packet(max))
        .take(10_000)
        .collect()
}

fn ops(pkts: &[(PacketHeader, Vec<u8>)]) -> Vec<Op> {
    pkts.iter().map(|(h, _)| h.operation().unwrap()).collect()
}

#[test]
fn connect_sends_request_and_waits_for_response() {
    let mut ep = Endpoint::connect(
        cfg(4096, 4096),
        S,
        SockAddr::new(H.0, H.1),
        SockAddr::new(G.0, G.1),
    )
    .unwrap();
    assert_eq!(ep.write(b"early"), 5, "buffered while connecting");
    let pkts = drain(&mut ep, 4096);
    assert_eq!(ops(&pkts), vec![Op::Request]);
    assert_eq!(pkts[0].0.buf_alloc, 4096);
    ep.on_packet(&with_credit(hdr(S, Op::Response, G, H), 8192, 0), &[])
        .unwrap();
    assert_eq!(ep.state(), EndpointState::Established);
    let pkts = drain(&mut ep, 4096);
    assert_eq!(ops(&pkts), vec![Op::Rw]);
    assert_eq!(pkts[0].1, b"early");
}

#[test]
fn a_refused_connect_closes_without_answering() {
    let mut ep = Endpoint::connect(
        cfg(4096, 4096),
        S,
        SockAddr::new(H.0, H.1),
        SockAddr::new(G.0, G.1),
    )
    .unwrap();
    drain(&mut ep, 4096);
    ep.on_packet(&hdr(S, Op::Rst, G, H), &[]).unwrap();
    assert!(ep.is_closed());
    assert_eq!(ep.close_reason(), Some(&CloseReason::Refused));
    assert!(drain(&mut ep, 4096).is_empty());
}

#[test]
fn anything_but_response_while_connecting_is_a_violation() {
    let mut ep = Endpoint::connect(
        cfg(4096, 4096),
        S,
        SockAddr::new(H.0, H.1),
        SockAddr::new(G.0, G.1),
    )
    .unwrap();
    drain(&mut ep, 4096);
    let err = ep.on_packet(&rw(S, G, H, 1, 0), b"x").unwrap_err();
    assert!(matches!(
        err,
        EndpointError::UnexpectedOp { op: Op::Rw, .. }
    ));
    assert_eq!(ops(&drain(&mut ep, 4096)), vec![Op::Rst]);
    assert!(ep.is_closed());
}

#[test]
fn accept_refuses_non_requests() {
    let h = hdr(S, Op::Response, G, H);
    assert_eq!(
        Endpoint::accept(EndpointConfig::default(), &h).unwrap_err(),
        EndpointError::NotARequest(2)
    );
    let bad = cfg(0, 1);
    assert!(matches!(
        Endpoint::accept(bad, &hdr(S, Op::Request, G, H)),
        Err(EndpointError::BufferSize {
            field: "buf_alloc",
            ..
        })
    ));
    assert!(cfg(1, MAX_BUFFER + 1).check().is_err());
}

#[test]
fn sending_respects_the_guests_credit_and_packet_size() {
    let mut ep = accepted(S, cfg(4096, 65536), 10_000);
    let data: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
    assert_eq!(ep.write(&data), 20_000);
    let pkts = drain(&mut ep, 4096);
    // 10 000 bytes of credit in 4 KiB packets, then one CREDIT_REQUEST, then silence.
    let lens: Vec<u32> = pkts.iter().map(|(h, _)| h.len).collect();
    assert_eq!(lens, vec![4096, 4096, 1808, 0]);
    assert_eq!(ops(&pkts).last(), Some(&Op::CreditRequest));
    assert_eq!(ep.peer_free(), 0);
    // The guest consumes 6000 bytes: more goes out.
    ep.on_packet(
        &with_credit(hdr(S, Op::CreditUpdate, G, H), 10_000, 6000),
        &[],
    )
    .unwrap();
    let pkts = drain(&mut ep, 4096);
    let lens: Vec<u32> = pkts.iter().map(|(h, _)| h.len).collect();
    assert_eq!(lens, vec![4096, 1904, 0]);
    let sent: Vec<u8> = pkts.iter().flat_map(|(_, b)| b.clone()).collect();
    assert_eq!(sent, data[10_000..16_000]);
}

#[test]
fn guest_exceeding_our_credit_is_reset() {
    let mut ep = accepted(S, cfg(100, 100), 4096);
    ep.on_packet(&rw(S, G, H, 60, 0), &[1; 60]).unwrap();
    let err = ep.on_packet(&rw(S, G, H, 41, 0), &[2; 41]).unwrap_err();
    assert_eq!(
        err,
        EndpointError::Credit(CreditError::OverCredit { len: 41, free: 40 })
    );
    assert_eq!(ops(&drain(&mut ep, 4096)), vec![Op::Rst]);
    // What arrived within credit stays readable.
    let mut buf = [0; 100];
    assert_eq!(ep.read(&mut buf), 60);
    assert!(ep.is_eof());
}

#[test]
fn reading_returns_credit_and_sends_updates_when_the_guest_is_likely_waiting() {
    let mut ep = accepted(S, cfg(1000, 1000), 4096);
    ep.on_packet(&rw(S, G, H, 900, 0), &[7; 900]).unwrap();
    assert!(
        drain(&mut ep, 4096).is_empty(),
        "nothing read, nothing to say"
    );
    let mut buf = [0; 10];
    assert_eq!(ep.read(&mut buf), 10);
    // The guest believes 100 bytes are free (< 1/4): it hears of the read at once.
    let pkts = drain(&mut ep, 4096);
    assert_eq!(ops(&pkts), vec![Op::CreditUpdate]);
    assert_eq!((pkts[0].0.buf_alloc, pkts[0].0.fwd_cnt), (1000, 10));
    // A CREDIT_REQUEST is always answered.
    ep.on_packet(&hdr(S, Op::CreditRequest, G, H), &[]).unwrap();
    assert_eq!(ops(&drain(&mut ep, 4096)), vec![Op::CreditUpdate]);
}

#[test]
fn data_packets_carry_the_credit_too() {
    let mut ep = accepted(S, cfg(1000, 1000), 4096);
    ep.on_packet(&g(rw(S, G, H, 900, 0)), &[7; 900]).unwrap();
    let mut buf = [0; 900];
    ep.read(&mut buf);
    ep.write(b"hi");
    let pkts = drain(&mut ep, 4096);
    assert_eq!(ops(&pkts), vec![Op::Rw], "no separate update needed");
    assert_eq!(pkts[0].0.fwd_cnt, 900);
}

#[test]
fn shutdown_goes_after_the_data_and_the_guests_rst_ends_it() {
    let mut ep = accepted(S, cfg(4096, 4096), 4096);
    ep.write(b"bye");
    ep.shutdown(SHUTDOWN_SEND | SHUTDOWN_RCV);
    assert_eq!(ep.write(b"more"), 0);
    let pkts = drain(&mut ep, 4096);
    assert_eq!(ops(&pkts), vec![Op::Rw, Op::Shutdown]);
    assert_eq!(pkts[1].0.flags, SHUTDOWN_SEND | SHUTDOWN_RCV);
    ep.on_packet(&hdr(S, Op::Rst, G, H), &[]).unwrap();
    assert!(ep.is_closed());
    assert_eq!(ep.close_reason(), Some(&CloseReason::PeerReset));
}

#[test]
fn guest_shutdowns_half_then_full() {
    let mut ep = accepted(S, cfg(4096, 4096), 4096);
    ep.on_packet(&g(rw(S, G, H, 3, 0)), b"abc").unwrap();
    let mut sh = g(hdr(S, Op::Shutdown, G, H));
    sh.flags = SHUTDOWN_SEND;
    ep.on_packet(&sh, &[]).unwrap();
    assert!(!ep.is_eof(), "data still buffered");
    let mut buf = [0; 8];
    assert_eq!(ep.read(&mut buf), 3);
    assert!(ep.is_eof());
    // We may still send.
    assert_eq!(ep.write(b"reply"), 5);
    assert_eq!(ops(&drain(&mut ep, 4096)), vec![Op::Rw]);
    // Data after the guest's SHUTDOWN(SEND) is a violation.
    let mut ep2 = ep.clone();
    assert_eq!(
        ep2.on_packet(&rw(S, G, H, 1, 0), b"x"),
        Err(EndpointError::DataAfterShutdown)
    );
    // The full shutdown is answered with RST, as Linux does.
    sh.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    ep.on_packet(&sh, &[]).unwrap();
    assert_eq!(ops(&drain(&mut ep, 4096)), vec![Op::Rst]);
    assert_eq!(ep.close_reason(), Some(&CloseReason::PeerClosed));
}

#[test]
fn packets_to_a_closed_endpoint_get_one_rst_each_and_rst_gets_none() {
    let mut ep = accepted(S, cfg(4096, 4096), 4096);
    ep.reset();
    assert_eq!(ops(&drain(&mut ep, 4096)), vec![Op::Rst]);
    assert_eq!(ep.close_reason(), Some(&CloseReason::LocalReset));
    for _ in 0..3 {
        assert_eq!(
            ep.on_packet(&rw(S, G, H, 1, 0), b"x"),
            Err(EndpointError::Closed(5))
        );
    }
    assert_eq!(
        ops(&drain(&mut ep, 4096)),
        vec![Op::Rst],
        "flags, not a queue"
    );
    ep.on_packet(&hdr(S, Op::Rst, G, H), &[]).unwrap();
    assert!(drain(&mut ep, 4096).is_empty());
}

#[test]
fn misrouted_packets_change_nothing() {
    let mut ep = accepted(S, cfg(4096, 4096), 4096);
    let err = ep.on_packet(&rw(S, (9, 5000), H, 1, 0), b"x").unwrap_err();
    assert!(matches!(err, EndpointError::Misrouted { .. }));
    assert_eq!(ep.state(), EndpointState::Established);
    assert!(drain(&mut ep, 4096).is_empty());
}

#[test]
fn violations_reset() {
    let cases: Vec<(PacketHeader, Vec<u8>)> = vec![
        (rw(S, G, H, 5, 0), vec![0; 4]),      // len mismatch
        (rw(Q, G, H, 1, SEQ_EOM), vec![0]),   // wrong type
        (hdr(S, Op::Request, G, H), vec![]),  // request again
        (hdr(S, Op::Response, G, H), vec![]), // response to nothing
        (with_credit(hdr(S, Op::CreditUpdate, G, H), 1, 9), vec![]), // fwd_cnt past tx_cnt
        (rw(S, G, H, 0, 0), vec![]),          // empty RW
    ];
    for (h, body) in cases {
        let mut ep = accepted(S, cfg(4096, 4096), 4096);
        assert!(ep.on_packet(&h, &body).is_err(), "{h:?}");
        assert_eq!(ops(&drain(&mut ep, 4096)), vec![Op::Rst], "{h:?}");
        assert!(matches!(ep.close_reason(), Some(CloseReason::Violation(_))));
    }
}

#[test]
fn seqpacket_reassembles_and_splits_messages() {
    let mut ep = accepted(Q, cfg(65536, 65536), 65536);
    ep.on_packet(&g(rw(Q, G, H, 3, 0)), b"abc").unwrap();
    assert_eq!(ep.read_message(), None, "not complete yet");
    ep.on_packet(&g(rw(Q, G, H, 2, SEQ_EOM)), b"de").unwrap();
    ep.on_packet(&g(rw(Q, G, H, 1, SEQ_EOM | SEQ_EOR)), b"f")
        .unwrap();
    assert_eq!(ep.messages_ready(), 2);
    let m = ep.read_message().unwrap();
    assert_eq!((m.data.as_slice(), m.eor), (&b"abcde"[..], false));
    let m = ep.read_message().unwrap();
    assert_eq!((m.data.as_slice(), m.eor), (&b"f"[..], true));
    assert_eq!(ep.read(&mut [0; 4]), 0, "stream read on seqpacket");

    let msg: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    ep.write_message(&msg, true).unwrap();
    ep.write_message(b"z", false).unwrap();
    assert_eq!(ep.write(b"no"), 0);
    let pkts = drain(&mut ep, 4096);
    let shape: Vec<(u32, u32)> = pkts.iter().map(|(h, _)| (h.len, h.flags)).collect();
    assert_eq!(
        shape,
        vec![
            (4096, 0),
            (4096, 0),
            (1808, SEQ_EOM | SEQ_EOR),
            (1, SEQ_EOM)
        ]
    );
    let sent: Vec<u8> = pkts[..3].iter().flat_map(|(_, b)| b.clone()).collect();
    assert_eq!(sent, msg);
}

#[test]
fn seqpacket_write_limits() {
    let mut ep = accepted(Q, cfg(4096, 8192), 5000);
    assert_eq!(ep.write_message(&[], false), Err(WriteError::Empty));
    assert_eq!(
        ep.write_message(&[0; 5001], false),
        Err(WriteError::TooLarge {
            len: 5001,
            max: 5000
        })
    );
    ep.write_message(&[0; 5000], false).unwrap();
    assert_eq!(
        ep.write_message(&[0; 4000], false),
        Err(WriteError::Full {
            len: 4000,
            free: 3192
        })
    );
    ep.shutdown(SHUTDOWN_SEND);
    assert_eq!(ep.write_message(&[0; 1], false), Err(WriteError::Closed));
    let mut s = accepted(S, cfg(4096, 8192), 5000);
    assert_eq!(s.write_message(b"x", false), Err(WriteError::NotSeqPacket));
}

#[test]
fn shut_rcv_discards_and_keeps_the_guest_moving() {
    let mut ep = accepted(S, cfg(100, 100), 4096);
    ep.on_packet(&rw(S, G, H, 80, 0), &[0; 80]).unwrap();
    ep.shutdown(SHUTDOWN_RCV);
    assert_eq!(ep.readable(), 0);
    // More than the buffer over time, never held.
    for _ in 0..10 {
        ep.on_packet(&rw(S, G, H, 100, 0), &[0; 100]).unwrap();
        assert_eq!(ep.readable(), 0);
    }
    let pkts = drain(&mut ep, 4096);
    assert_eq!(
        ops(&pkts),
        vec![Op::Shutdown],
        "the SHUTDOWN carries the credit"
    );
    assert_eq!(pkts[0].0.fwd_cnt, 1080);
}
