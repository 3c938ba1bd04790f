use super::super::credit::CreditError;
use super::super::packet::*;
use super::super::relay::*;
use super::{hdr, rw, with_credit};

const S: SocketType = SocketType::Stream;
const A: (u64, u32) = (3, 1000);
const B: (u64, u32) = (4, 80);
const KEY: ConnKey = ConnKey {
    initiator: SockAddr { cid: 3, port: 1000 },
    acceptor: SockAddr { cid: 4, port: 80 },
};

fn relay() -> Relay {
    Relay::new(RelayConfig {
        max_conns_per_guest: 4,
        credit_cap: 8192,
        request_timeout_ns: 100,
        close_timeout_ns: 100,
        idle_timeout_ns: None,
    })
    .unwrap()
}

fn forwarded(v: Verdict) -> PacketHeader {
    match v {
        Verdict::Forward(h) => h,
        other => panic!("expected Forward, got {other:?}"),
    }
}

fn refused(v: Verdict) -> (PacketHeader, RelayError) {
    match v {
        Verdict::Refuse { rst, reason } => (rst, reason),
        other => panic!("expected Refuse, got {other:?}"),
    }
}

fn reset(v: Verdict) -> RelayError {
    match v {
        Verdict::Reset {
            to_sender,
            to_peer,
            reason,
        } => {
            assert_eq!(to_sender.operation(), Some(Op::Rst));
            assert_eq!(to_peer.operation(), Some(Op::Rst));
            assert_eq!(
                (to_sender.src(), to_sender.dst()),
                (to_peer.dst(), to_peer.src())
            );
            reason
        }
        other => panic!("expected Reset, got {other:?}"),
    }
}

/// A connection A -> B, established, each side advertising `buf` bytes.
fn established(r: &mut Relay, buf: u32) {
    forwarded(r.on_packet(3, &with_credit(hdr(S, Op::Request, A, B), buf, 0)));
    forwarded(r.on_packet(4, &with_credit(hdr(S, Op::Response, B, A), buf, 0)));
    assert_eq!(r.state(&KEY), Some(ConnState::Established));
}

#[test]
fn handshake_data_and_orderly_close() {
    let mut r = relay();
    established(&mut r, 4096);
    let d = forwarded(r.on_packet(3, &with_credit(rw(S, A, B, 100, 0), 4096, 0)));
    assert_eq!(d.len, 100);
    assert_eq!(r.held(&KEY, true), Some(100));
    assert_eq!(r.on_delivered(&d), Ok(true));
    assert_eq!(r.held(&KEY, true), Some(0));
    forwarded(r.on_packet(4, &with_credit(hdr(S, Op::CreditUpdate, B, A), 4096, 100)));
    let mut sh = hdr(S, Op::Shutdown, A, B);
    sh.flags = SHUTDOWN_SEND;
    forwarded(r.on_packet(3, &sh));
    assert_eq!(r.state(&KEY), Some(ConnState::Closing));
    // The other side may still send after a half close; its headers keep its fwd_cnt.
    forwarded(r.on_packet(4, &with_credit(rw(S, B, A, 10, 0), 4096, 100)));
    let mut sh = with_credit(hdr(S, Op::Shutdown, B, A), 4096, 100);
    sh.flags = SHUTDOWN_SEND;
    forwarded(r.on_packet(4, &sh));
    assert_eq!(r.state(&KEY), Some(ConnState::Closed));
    // Credit updates may still pass while the last bytes are read.
    forwarded(r.on_packet(3, &with_credit(hdr(S, Op::CreditUpdate, A, B), 4096, 0)));
    forwarded(r.on_packet(3, &hdr(S, Op::Rst, A, B)));
    assert!(r.is_empty());
    assert_eq!(r.opened_by(3), 0);
    // The other side's RST for the gone connection is dropped, not answered.
    assert_eq!(r.on_packet(4, &hdr(S, Op::Rst, B, A)), Verdict::Drop);
}

#[test]
fn both_sides_shutting_both_directions_removes_the_entry() {
    let mut r = relay();
    established(&mut r, 4096);
    let mut sh = hdr(S, Op::Shutdown, A, B);
    sh.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    forwarded(r.on_packet(3, &sh));
    let mut sh = hdr(S, Op::Shutdown, B, A);
    sh.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    forwarded(r.on_packet(4, &sh));
    assert!(r.is_empty());
}

#[test]
fn data_and_credit_need_an_established_connection() {
    let mut r = relay();
    for op in [
        Op::CreditUpdate,
        Op::CreditRequest,
        Op::Shutdown,
        Op::Response,
    ] {
        let mut h = hdr(S, op, A, B);
        if op == Op::Shutdown {
            h.flags = SHUTDOWN_SEND;
        }
        let (rst, reason) = refused(r.on_packet(3, &h));
        assert_eq!(reason, RelayError::NoConnection(op));
        assert_eq!((rst.src(), rst.dst()), (h.dst(), h.src()));
    }
    refused(r.on_packet(3, &rw(S, A, B, 1, 0)));
    assert!(r.is_empty());

    // While only requested: the requester may resize its buffer (Linux then sends a
    // CREDIT_UPDATE), but data from either side resets the attempt.
    forwarded(r.on_packet(3, &hdr(S, Op::Request, A, B)));
    let upd = forwarded(r.on_packet(3, &with_credit(hdr(S, Op::CreditUpdate, A, B), 1 << 20, 0)));
    assert_eq!(upd.buf_alloc, 8192);
    reset(r.on_packet(4, &hdr(S, Op::CreditUpdate, B, A)));
    forwarded(r.on_packet(3, &hdr(S, Op::Request, A, B)));
    assert_eq!(
        reset(r.on_packet(3, &rw(S, A, B, 1, 0))),
        RelayError::UnexpectedOp {
            op: Op::Rw,
            state: ConnState::Requested
        }
    );
    assert!(r.is_empty());
}

#[test]
fn response_only_from_the_acceptor_of_a_pending_request() {
    let mut r = relay();
    forwarded(r.on_packet(3, &hdr(S, Op::Request, A, B)));
    // The initiator cannot answer its own request.
    reset(r.on_packet(3, &hdr(S, Op::Response, A, B)));
    established(&mut r, 4096);
    // A second RESPONSE on an established connection is a violation.
    reset(r.on_packet(4, &hdr(S, Op::Response, B, A)));
    assert!(r.is_empty());
}

#[test]
fn a_refused_request_ends_with_the_acceptors_rst() {
    let mut r = relay();
    forwarded(r.on_packet(3, &hdr(S, Op::Request, A, B)));
    forwarded(r.on_packet(4, &hdr(S, Op::Rst, B, A)));
    assert!(r.is_empty());
}

#[test]
fn a_request_for_an_existing_key_is_refused_either_way() {
    let mut r = relay();
    established(&mut r, 4096);
    let (_, reason) = refused(r.on_packet(3, &hdr(S, Op::Request, A, B)));
    assert_eq!(reason, RelayError::Exists);
    let (_, reason) = refused(r.on_packet(4, &hdr(S, Op::Request, B, A)));
    assert_eq!(reason, RelayError::Exists);
    assert_eq!(r.state(&KEY), Some(ConnState::Established), "untouched");
}

#[test]
fn per_guest_cap_charges_the_requester_only() {
    let mut r = relay();
    for port in 0..4 {
        forwarded(r.on_packet(3, &hdr(S, Op::Request, (3, port), B)));
    }
    let (_, reason) = refused(r.on_packet(3, &hdr(S, Op::Request, (3, 9), B)));
    assert_eq!(reason, RelayError::TooManyConnections { cid: 3, max: 4 });
    assert_eq!(r.opened_by(3), 4);
    assert_eq!(r.opened_by(4), 0);
    // Guest 4 keeps its own share.
    forwarded(r.on_packet(4, &hdr(S, Op::Request, (4, 1), (3, 7))));
    // Closing one frees a slot.
    forwarded(r.on_packet(4, &hdr(S, Op::Rst, B, (3, 0))));
    forwarded(r.on_packet(3, &hdr(S, Op::Request, (3, 9), B)));
    assert!(r
        .check_request(3, &hdr(S, Op::Request, (3, 10), B))
        .is_err());
    assert!(r.check_request(5, &hdr(S, Op::Request, (5, 10), B)).is_ok());
}

#[test]
fn buf_alloc_is_capped_in_every_forwarded_header() {
    let mut r = relay();
    let req = forwarded(r.on_packet(3, &with_credit(hdr(S, Op::Request, A, B), 1 << 20, 0)));
    assert_eq!(req.buf_alloc, 8192);
    let resp = forwarded(r.on_packet(4, &with_credit(hdr(S, Op::Response, B, A), 1000, 0)));
    assert_eq!(
        resp.buf_alloc, 1000,
        "a smaller real buffer passes unchanged"
    );
    let upd = forwarded(r.on_packet(4, &with_credit(hdr(S, Op::CreditUpdate, B, A), u32::MAX, 0)));
    assert_eq!((upd.buf_alloc, upd.fwd_cnt), (8192, 0));
}

#[test]
fn a_sender_past_its_credit_is_reset_not_buffered() {
    let mut r = relay();
    established(&mut r, 1 << 20); // capped to 8192
    let d = forwarded(r.on_packet(3, &rw(S, A, B, 8000, 0)));
    assert!(matches!(
        reset(r.on_packet(3, &rw(S, A, B, 193, 0))),
        RelayError::Credit(CreditError::OverCredit {
            len: 193,
            free: 192
        })
    ));
    assert!(r.is_empty());
    // Delivery reports for a gone connection are harmless.
    assert_eq!(r.on_delivered(&d), Ok(false));
}

#[test]
fn a_receiver_cannot_claim_bytes_it_was_not_delivered() {
    let mut r = relay();
    established(&mut r, 4096);
    forwarded(r.on_packet(3, &rw(S, A, B, 4096, 0)));
    // Nothing delivered yet: fwd_cnt 4096 would let A send more while vmq still holds 4096.
    assert!(matches!(
        reset(r.on_packet(4, &with_credit(hdr(S, Op::CreditUpdate, B, A), 4096, 4096))),
        RelayError::Credit(CreditError::FwdCntOutOfRange { .. })
    ));
}

#[test]
fn credit_recovers_after_delivery_and_consumption() {
    let mut r = relay();
    established(&mut r, 4096);
    for round in 1..=5u32 {
        let d = forwarded(r.on_packet(3, &rw(S, A, B, 4096, 0)));
        reset_free(&mut r, &d, round);
    }
    fn reset_free(r: &mut Relay, d: &PacketHeader, round: u32) {
        for (piece, _) in d.split(1000) {
            assert_eq!(r.on_delivered(&piece), Ok(true));
        }
        let upd = with_credit(hdr(S, Op::CreditUpdate, B, A), 4096, 4096 * round);
        forwarded(r.on_packet(4, &upd));
    }
}

#[test]
fn data_after_shutdown_send_and_type_mismatch_reset() {
    let mut r = relay();
    established(&mut r, 4096);
    let mut sh = hdr(S, Op::Shutdown, A, B);
    sh.flags = SHUTDOWN_SEND;
    forwarded(r.on_packet(3, &sh));
    assert_eq!(
        reset(r.on_packet(3, &rw(S, A, B, 1, 0))),
        RelayError::DataAfterShutdown
    );

    established(&mut r, 4096);
    let q = rw(SocketType::SeqPacket, A, B, 1, SEQ_EOM);
    assert!(matches!(
        reset(r.on_packet(3, &q)),
        RelayError::TypeMismatch { .. }
    ));
}

#[test]
fn source_cid_is_stamped_from_the_queue_not_the_header() {
    let mut r = relay();
    // Guest 5 claims to be guest 3.
    let h = forwarded(r.on_packet(5, &hdr(S, Op::Request, A, (4, 81))));
    assert_eq!(h.src_cid, 5);
    assert_eq!(r.opened_by(5), 1);
    assert_eq!(r.opened_by(3), 0);
    // And cannot inject into guest 3's connection.
    established(&mut r, 4096);
    let (_, reason) = refused(r.on_packet(5, &rw(S, A, B, 1, 0)));
    assert_eq!(reason, RelayError::NoConnection(Op::Rw));
}

#[test]
fn invalid_packets_are_refused_and_rst_is_never_answered() {
    let mut r = relay();
    let mut h = hdr(S, Op::Request, A, B);
    h.op = 99;
    let (_, reason) = refused(r.on_packet(3, &h));
    assert_eq!(reason, RelayError::Invalid(PacketError::UnknownOp(99)));
    let mut bad_rst = hdr(S, Op::Rst, A, B);
    bad_rst.flags = 1;
    assert_eq!(r.on_packet(3, &bad_rst), Verdict::Drop);
    let (_, reason) = refused(r.on_packet(3, &hdr(S, Op::Request, A, (3, 9))));
    assert_eq!(reason, RelayError::ToSelf(3));
}

#[test]
fn sweep_ends_stale_requests_and_closings_but_keeps_idle_established() {
    let mut r = relay();
    established(&mut r, 4096);
    forwarded(r.on_packet(3, &hdr(S, Op::Request, (3, 2), B)));
    assert!(r.sweep(50).is_empty());
    let resets = r.sweep(100);
    assert_eq!(resets.len(), 1, "the unanswered request");
    assert_eq!(resets[0].to_initiator.dst(), SockAddr::new(3, 2));
    assert_eq!(resets[0].to_acceptor.dst(), SockAddr::new(4, 80));
    assert!(r.sweep(10_000).is_empty(), "idle established stays");
    let mut sh = hdr(S, Op::Shutdown, A, B);
    sh.flags = SHUTDOWN_SEND;
    forwarded(r.on_packet(3, &sh));
    assert!(r.sweep(10_050).is_empty());
    assert_eq!(r.sweep(10_100).len(), 1, "half closed and idle");
    assert!(r.is_empty());

    let mut r = Relay::new(RelayConfig {
        idle_timeout_ns: Some(10),
        ..RelayConfig::default()
    })
    .unwrap();
    established(&mut r, 4096);
    assert_eq!(r.sweep(10).len(), 1);
}

#[test]
fn remove_guest_resets_the_other_ends() {
    let mut r = relay();
    established(&mut r, 4096);
    forwarded(r.on_packet(5, &hdr(S, Op::Request, (5, 1), (3, 22))));
    forwarded(r.on_packet(5, &hdr(S, Op::Request, (5, 2), (6, 22))));
    let mut rsts = r.remove_guest(3);
    rsts.sort_by_key(|h| h.dst_cid);
    assert_eq!(rsts.len(), 2);
    assert_eq!(
        (rsts[0].dst(), rsts[0].src()),
        (SockAddr::new(4, 80), SockAddr::new(3, 1000))
    );
    assert_eq!(
        (rsts[1].dst(), rsts[1].src()),
        (SockAddr::new(5, 1), SockAddr::new(3, 22))
    );
    assert_eq!(r.len(), 1);
    assert_eq!(r.opened_by(5), 1);
    assert!(r.reset(&KEY).is_none());
}

#[test]
fn config_is_checked() {
    let bad = RelayConfig {
        credit_cap: 0,
        ..RelayConfig::default()
    };
    assert_eq!(Relay::new(bad).unwrap_err(), RelayConfigError::NoCredit);
    let bad = RelayConfig {
        max_conns_per_guest: 0,
        ..RelayConfig::default()
    };
    assert!(Relay::new(bad).is_err());
}

#[test]
fn a_sender_that_uses_the_last_of_its_credit_is_counted_as_stalled_once_per_time() {
    let mut r = relay();
    established(&mut r, 1000);
    // 600 of 1000: credit left, no stall.
    let d = forwarded(r.on_packet(3, &with_credit(rw(S, A, B, 600, 0), 4096, 0)));
    assert_eq!(r.credit_stalls_of(3), 0);
    // The last 400: guest 3 must now wait for guest 4 to read.
    let e = forwarded(r.on_packet(3, &with_credit(rw(S, A, B, 400, 0), 4096, 0)));
    assert_eq!((r.credit_stalls_of(3), r.credit_stalls_of(4)), (1, 0));
    assert_eq!(r.on_delivered(&d), Ok(true));
    assert_eq!(r.on_delivered(&e), Ok(true));
    // Guest 4 reads 500: guest 3 sends those, and stalls a second time.
    forwarded(r.on_packet(4, &with_credit(hdr(S, Op::CreditUpdate, B, A), 1000, 500)));
    forwarded(r.on_packet(3, &with_credit(rw(S, A, B, 500, 0), 4096, 0)));
    assert_eq!(r.credit_stalls_of(3), 2);
}
