use super::super::packet::*;
use super::{hdr, rw};

const A: (u64, u32) = (3, 1000);
const B: (u64, u32) = (4, 80);

#[test]
fn encode_decode_round_trip_is_little_endian() {
    let h = PacketHeader {
        src_cid: 0x0102_0304_0506_0708,
        dst_cid: 3,
        src_port: 0xAABB_CCDD,
        dst_port: 80,
        len: 5,
        ty: 2,
        op: 5,
        flags: 3,
        buf_alloc: 0x1122_3344,
        fwd_cnt: 0x5566_7788,
    };
    let b = h.encode();
    assert_eq!(b.len(), HEADER_LEN);
    assert_eq!(&b[0..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(&b[16..20], &[0xDD, 0xCC, 0xBB, 0xAA]);
    assert_eq!(&b[28..32], &[2, 0, 5, 0]);
    assert_eq!(PacketHeader::decode(&b), Ok(h));
    // Trailing payload bytes are not the header's business.
    let mut long = b.to_vec();
    long.extend_from_slice(b"hello");
    assert_eq!(PacketHeader::decode(&long), Ok(h));
}

#[test]
fn decode_refuses_short_input_only() {
    assert_eq!(
        PacketHeader::decode(&[0; 43]),
        Err(PacketError::Truncated(43))
    );
    // Junk field values decode; validation is a separate step.
    let junk = PacketHeader::decode(&[0xFF; 44]).unwrap();
    assert_eq!(junk.op, 0xFFFF);
    assert!(junk.validate().is_err());
    assert!(PacketError::Truncated(3).to_string().contains("got 3"));
}

#[test]
fn validate_accepts_what_linux_sends() {
    for ty in [SocketType::Stream, SocketType::SeqPacket] {
        for op in [
            Op::Request,
            Op::Response,
            Op::Rst,
            Op::CreditUpdate,
            Op::CreditRequest,
        ] {
            assert_eq!(hdr(ty, op, A, B).validate(), Ok((ty, op)));
        }
        let mut s = hdr(ty, Op::Shutdown, A, B);
        for f in [SHUTDOWN_RCV, SHUTDOWN_SEND, SHUTDOWN_RCV | SHUTDOWN_SEND] {
            s.flags = f;
            assert!(s.validate().is_ok());
        }
        assert!(rw(ty, A, B, MAX_PAYLOAD, 0).validate().is_ok());
    }
    for f in [SEQ_EOM, SEQ_EOM | SEQ_EOR] {
        assert!(rw(SocketType::SeqPacket, A, B, 1, f).validate().is_ok());
    }
    // The host is a fine destination.
    assert!(hdr(SocketType::Stream, Op::Request, A, (HOST_CID, 5))
        .validate()
        .is_ok());
}

#[test]
fn validate_refuses_unknown_type_and_op() {
    let mut h = hdr(SocketType::Stream, Op::Request, A, B);
    h.ty = 3;
    assert_eq!(h.validate(), Err(PacketError::UnknownType(3)));
    h.ty = 0;
    assert_eq!(h.validate(), Err(PacketError::UnknownType(0)));
    let mut h = hdr(SocketType::Stream, Op::Request, A, B);
    for op in [0, 8, 0xFFFF] {
        h.op = op;
        assert_eq!(h.validate(), Err(PacketError::UnknownOp(op)));
    }
}

#[test]
fn validate_checks_lengths() {
    let s = SocketType::Stream;
    assert_eq!(
        rw(s, A, B, MAX_PAYLOAD + 1, 0).validate(),
        Err(PacketError::PayloadTooLong(MAX_PAYLOAD + 1))
    );
    assert_eq!(rw(s, A, B, 0, 0).validate(), Err(PacketError::EmptyRw));
    let mut h = hdr(s, Op::CreditUpdate, A, B);
    h.len = 4;
    assert_eq!(
        h.validate(),
        Err(PacketError::PayloadOnControl {
            op: Op::CreditUpdate,
            len: 4
        })
    );
    let msg = h.validate().unwrap_err().to_string();
    assert!(msg.contains("CreditUpdate") && msg.contains('4'), "{msg}");
}

#[test]
fn validate_checks_flags_per_op() {
    let (s, q) = (SocketType::Stream, SocketType::SeqPacket);
    // Stream data carries no message marks.
    assert!(matches!(
        rw(s, A, B, 1, SEQ_EOM).validate(),
        Err(PacketError::BadFlags { .. })
    ));
    // EOR only with EOM, nothing beyond the two bits.
    assert!(rw(q, A, B, 1, SEQ_EOR).validate().is_err());
    assert!(rw(q, A, B, 1, 4).validate().is_err());
    // SHUTDOWN needs a direction and nothing else.
    let mut sh = hdr(s, Op::Shutdown, A, B);
    assert!(sh.validate().is_err());
    sh.flags = 4;
    assert!(sh.validate().is_err());
    // Other ops carry no flags.
    let mut r = hdr(s, Op::Request, A, B);
    r.flags = 1;
    assert!(r.validate().is_err());
}

#[test]
fn validate_refuses_reserved_destinations_and_wildcard_ports() {
    for cid in [0, 1, CID_ANY, CID_ANY + 1, u64::MAX] {
        let h = hdr(SocketType::Stream, Op::Request, A, (cid, 80));
        assert_eq!(h.validate(), Err(PacketError::ReservedCid(cid)));
    }
    let h = hdr(SocketType::Stream, Op::Request, A, (4, PORT_ANY));
    assert_eq!(h.validate(), Err(PacketError::WildcardPort));
    let h = hdr(SocketType::Stream, Op::Request, (3, PORT_ANY), B);
    assert_eq!(h.validate(), Err(PacketError::WildcardPort));
}

#[test]
fn source_cid_is_stamped_not_trusted() {
    let mut h = hdr(SocketType::Stream, Op::Request, (2, 1000), B);
    h.stamp_source(3);
    assert_eq!(h.src(), SockAddr::new(3, 1000));
}

#[test]
fn rst_reply_swaps_addresses_and_never_answers_rst() {
    let mut h = rw(SocketType::SeqPacket, A, B, 10, SEQ_EOM);
    h.buf_alloc = 7;
    let r = h.rst_reply().unwrap();
    assert_eq!((r.src(), r.dst()), (h.dst(), h.src()));
    assert_eq!((r.op, r.ty, r.len, r.flags, r.buf_alloc), (3, 2, 0, 0, 0));
    assert!(r.validate().is_ok());
    assert_eq!(r.rst_reply(), None);
    // An unknown type is answered as STREAM so the reply itself is valid.
    let mut junk = h;
    junk.ty = 77;
    assert_eq!(junk.rst_reply().unwrap().ty, SocketType::Stream as u16);
}

#[test]
fn split_keeps_message_marks_on_the_last_piece() {
    let h = rw(SocketType::SeqPacket, A, B, 10_000, SEQ_EOM | SEQ_EOR);
    let pieces: Vec<_> = h.split(4096).collect();
    assert_eq!(pieces.len(), 3);
    assert_eq!(
        pieces.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(),
        vec![0..4096, 4096..8192, 8192..10_000]
    );
    assert_eq!(pieces[0].0.flags, 0);
    assert_eq!(pieces[1].0.flags, 0);
    assert_eq!(pieces[2].0.flags, SEQ_EOM | SEQ_EOR);
    assert!(pieces.iter().all(|(p, r)| p.len as usize == r.len()));
    // Small packets, control packets and max 0 come out whole.
    assert_eq!(h.split(20_000).count(), 1);
    assert_eq!(h.split(0).count(), 1);
    assert_eq!(hdr(SocketType::Stream, Op::Rst, A, B).split(1).count(), 1);
    // Exact multiple: no empty tail.
    assert_eq!(rw(SocketType::Stream, A, B, 8192, 0).split(4096).count(), 2);
}
