//! `vmq serve` without guests: VMMs played in Rust over real vhost-user sockets, memfd memory
//! and eventfds, each driving a guest's vsock rings as Linux's driver would.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::vhost_user::frontend::{FrontendConfig, VmmFrontend};
use crate::vsock::packet::{Op, PacketHeader, SockAddr, SocketType, HEADER_LEN, SEQ_EOM};

mod app;
mod connection;
mod connection_faults;
mod drain;
mod hybrid;
mod message;
mod message_failover;
mod message_load;
mod message_policies;
mod metrics;
mod world;

/// Give-up limit for anything a test waits for (never a measure of speed).
const PATIENCE: Duration = Duration::from_secs(20);

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("vmq-serve-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    fn sock(&self, cid: u64) -> PathBuf {
        self.0.join(format!("vm{cid}.sock"))
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(dir: &Dir, vms: &[(u64, &str)]) -> ServeConfig {
    let mut cfg = ServeConfig::default();
    for &(cid, groups) in vms {
        cfg.add_vm_flag(&format!(
            "guest-cid={cid},socket={},groups={groups}",
            dir.sock(cid).display()
        ))
        .unwrap();
    }
    cfg
}

fn guest(sock: &Path) -> VmmFrontend {
    VmmFrontend::connect(sock, FrontendConfig::default()).expect("VMM connects")
}

/// Waits until every VM's device runs (its queues reached the switch thread).
fn wait_connected(server: &Server) {
    let give_up = std::time::Instant::now() + PATIENCE;
    while !server.counts().iter().all(|c| c.connected) {
        assert!(std::time::Instant::now() < give_up, "devices never started");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A packet: header (with credit 256 KiB, fwd_cnt `fwd`) and payload.
fn packet(ty: SocketType, op: Op, src: SockAddr, dst: SockAddr, fwd: u32, data: &[u8]) -> Vec<u8> {
    let mut h = PacketHeader::new(ty, op, src, dst);
    h.buf_alloc = 256 * 1024;
    h.fwd_cnt = fwd;
    h.len = data.len() as u32;
    let mut v = h.encode().to_vec();
    v.extend_from_slice(data);
    v
}

fn recv(g: &mut VmmFrontend) -> (PacketHeader, Vec<u8>) {
    let bytes = g
        .recv_timeout(PATIENCE)
        .expect("rx works")
        .expect("a packet arrives");
    let h = PacketHeader::decode(&bytes).expect("a whole header");
    (h, bytes[HEADER_LEN..].to_vec())
}

/// Guest `a` connects to guest `b`'s port 5000 from port 1024 and `b` accepts.
fn connect(
    a: &mut VmmFrontend,
    b: &mut VmmFrontend,
    ty: SocketType,
    ca: u64,
    cb: u64,
) -> (SockAddr, SockAddr) {
    let (la, lb) = (SockAddr::new(ca, 1024), SockAddr::new(cb, 5000));
    a.send(&packet(ty, Op::Request, la, lb, 0, &[])).unwrap();
    let (req, _) = recv(b);
    assert_eq!((req.op, req.src(), req.dst()), (Op::Request as u16, la, lb));
    b.send(&packet(ty, Op::Response, lb, la, 0, &[])).unwrap();
    let (resp, _) = recv(a);
    assert_eq!((resp.op, resp.src()), (Op::Response as u16, lb));
    (la, lb)
}

#[test]
fn two_guests_connect_and_exchange_seqpacket_messages_with_their_boundaries() {
    let dir = Dir::new("seqpacket");
    let server = Server::start(&config(&dir, &[(3, "g"), (4, "g")])).unwrap();
    let mut a = guest(&dir.sock(3));
    let mut b = guest(&dir.sock(4));
    wait_connected(&server);
    assert_eq!((a.cid(), b.cid()), (Some(3), Some(4)));
    let (la, lb) = connect(&mut a, &mut b, SocketType::SeqPacket, 3, 4);
    let mut sent = 0u32;
    for size in [1usize, 44, 4095, 4096] {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
        let mut p = packet(SocketType::SeqPacket, Op::Rw, la, lb, 0, &data);
        let mut h = PacketHeader::decode(&p).unwrap();
        h.flags = SEQ_EOM;
        p[..HEADER_LEN].copy_from_slice(&h.encode());
        a.send(&p).unwrap();
        sent += size as u32;
        let (got, payload) = recv(&mut b);
        assert_eq!((got.op, got.src(), got.dst()), (Op::Rw as u16, la, lb));
        assert_eq!(got.flags & SEQ_EOM, SEQ_EOM, "the message end is kept");
        assert_eq!(payload, data, "{size} bytes intact");
        a.reclaim_tx().unwrap();
    }
    let c = server.counts();
    assert_eq!(c[1].rx_bytes, u64::from(sent), "{c:?}");
    server.shutdown().unwrap();
    assert!(
        !dir.sock(3).exists() && !dir.sock(4).exists(),
        "sockets removed"
    );
}

#[test]
fn a_forged_source_cid_is_replaced_and_unknown_or_foreign_cids_get_rst() {
    let dir = Dir::new("refuse");
    let server = Server::start(&config(&dir, &[(3, "g"), (4, "g"), (5, "other")])).unwrap();
    let mut a = guest(&dir.sock(3));
    let mut b = guest(&dir.sock(4));
    let _c = guest(&dir.sock(5));
    wait_connected(&server);
    // CID 3 claims to be 9: CID 4 sees the request from 3.
    let (forged, lb) = (SockAddr::new(9, 1024), SockAddr::new(4, 5000));
    a.send(&packet(SocketType::Stream, Op::Request, forged, lb, 0, &[]))
        .unwrap();
    let (req, _) = recv(&mut b);
    assert_eq!(req.src(), SockAddr::new(3, 1024));
    // Unknown CID 77, and CID 5 outside CID 3's groups: each answered with RST from vmq.
    for dst in [77u64, 5] {
        let to = SockAddr::new(dst, 80);
        a.send(&packet(
            SocketType::Stream,
            Op::Request,
            SockAddr::new(3, 2000),
            to,
            0,
            &[],
        ))
        .unwrap();
        let (rst, _) = recv(&mut a);
        assert_eq!(
            (rst.op, rst.src(), rst.dst()),
            (Op::Rst as u16, to, SockAddr::new(3, 2000))
        );
    }
    assert_eq!(server.counts()[0].refused, 2);
    server.shutdown().unwrap();
}

/// Guest `from` sends `data` as RW packets of at most 4 KiB on connection `src` -> `dst`.
fn send_data(from: &mut VmmFrontend, src: SockAddr, dst: SockAddr, data: &[u8]) {
    for chunk in data.chunks(4096) {
        from.reclaim_tx().unwrap();
        from.send(&packet(SocketType::Stream, Op::Rw, src, dst, 0, chunk))
            .unwrap();
    }
}

/// Takes RW payload arriving at `g` until `len` bytes came; every packet must be RW from
/// `src`.
fn recv_data(g: &mut VmmFrontend, src: SockAddr, len: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < len {
        let (h, payload) = recv(g);
        assert_eq!((h.op, h.src()), (Op::Rw as u16, src), "{h:?}");
        got.extend_from_slice(&payload);
    }
    got
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn a_receiver_that_takes_nothing_slows_only_its_own_connection() {
    let dir = Dir::new("stuck");
    let server = Server::start(&config(&dir, &[(3, "g"), (4, "g"), (5, "g")])).unwrap();
    let mut a = guest(&dir.sock(3));
    let mut b = guest(&dir.sock(4));
    // Guest 5 posts 16 rx buffers and, once connected, never takes anything.
    let small = FrontendConfig {
        queue_size: 16,
        ..FrontendConfig::default()
    };
    let mut c = VmmFrontend::connect(dir.sock(5), small).unwrap();
    wait_connected(&server);
    let (ab_a, ab_b) = connect(&mut a, &mut b, SocketType::Stream, 3, 4);
    let (ac_a, ac_c) = connect(&mut a, &mut c, SocketType::Stream, 3, 5);
    // 160 KiB for guest 5: within the credit it gave (256 KiB), far more than its 16 buffers.
    let stuck = pattern(40 * 4096, 5);
    send_data(&mut a, ac_a, ac_c, &stuck);
    // Meanwhile guests 3 and 4 talk both ways, and lose nothing.
    for i in 0..200u32 {
        let msg = pattern(64, i as u8);
        send_data(&mut a, ab_a, ab_b, &msg);
        assert_eq!(recv_data(&mut b, ab_a, 64), msg, "message {i} to guest 4");
        send_data(&mut b, ab_b, ab_a, &msg);
        assert_eq!(
            recv_data(&mut a, ab_b, 64),
            msg,
            "message {i} back to guest 3"
        );
    }
    let held = server.counts();
    assert!(
        held[2].rx_stalls > 0,
        "guest 5 ran out of buffers: {held:?}"
    );
    // Its 16 buffers (the one the request took was posted again) hold 16 pieces; the rest wait.
    assert_eq!(held[2].rx_bytes, 16 * 4096, "{held:?}");
    // Guest 5 starts reading: everything arrives, in order, intact.
    assert_eq!(recv_data(&mut c, ac_a, stuck.len()), stuck);
    server.shutdown().unwrap();
}

#[test]
fn a_sender_past_the_credit_it_was_given_is_reset() {
    let dir = Dir::new("credit");
    let server = Server::start(&config(&dir, &[(3, "g"), (4, "g")])).unwrap();
    let mut a = guest(&dir.sock(3));
    let mut b = guest(&dir.sock(4));
    wait_connected(&server);
    let (la, lb) = (SockAddr::new(3, 1024), SockAddr::new(4, 5000));
    a.send(&packet(SocketType::Stream, Op::Request, la, lb, 0, &[]))
        .unwrap();
    recv(&mut b);
    // Guest 4 grants 8 KiB and reads nothing.
    let mut resp = PacketHeader::new(SocketType::Stream, Op::Response, lb, la);
    resp.buf_alloc = 8192;
    b.send(&resp.encode()).unwrap();
    recv(&mut a);
    // Two 4 KiB packets use the credit up; the third is past it.
    let data = pattern(3 * 4096, 9);
    send_data(&mut a, la, lb, &data);
    assert_eq!(recv_data(&mut b, la, 8192), data[..8192]);
    let (rst_b, _) = recv(&mut b);
    let (rst_a, _) = recv(&mut a);
    assert_eq!((rst_b.op, rst_b.src()), (Op::Rst as u16, la));
    assert_eq!((rst_a.op, rst_a.src()), (Op::Rst as u16, lb));
    assert_eq!(server.counts()[0].resets, 1);
    assert!(
        server.network().relay().is_empty(),
        "the connection is gone"
    );
    server.shutdown().unwrap();
}

#[test]
fn a_vmm_that_goes_away_resets_its_connections_and_comes_back_on_the_same_socket() {
    let dir = Dir::new("reconnect");
    let server = Server::start(&config(&dir, &[(3, "g"), (4, "g")])).unwrap();
    let mut a = guest(&dir.sock(3));
    let b = guest(&dir.sock(4));
    wait_connected(&server);
    let mut b = b;
    let (la, lb) = connect(&mut a, &mut b, SocketType::SeqPacket, 3, 4);
    // Guest 4's VMM goes away: guest 3's connection is reset.
    drop(b);
    let (rst, _) = recv(&mut a);
    assert_eq!((rst.op, rst.src(), rst.dst()), (Op::Rst as u16, lb, la));
    // It comes back on the same socket and the two connect again.
    let mut b = guest(&dir.sock(4));
    wait_connected(&server);
    connect(&mut a, &mut b, SocketType::SeqPacket, 3, 4);
    server.shutdown().unwrap();
}

#[test]
fn hostile_tx_chains_are_counted_and_the_other_guests_go_on() {
    use crate::virtio::driver::Buf;
    let dir = Dir::new("hostile-rings");
    let server = Server::start(&config(&dir, &[(3, "g"), (4, "g"), (5, "g")])).unwrap();
    let mut a = guest(&dir.sock(3));
    let mut b = guest(&dir.sock(4));
    let mut evil = guest(&dir.sock(5));
    wait_connected(&server);
    let (la, lb) = connect(&mut a, &mut b, SocketType::Stream, 3, 4);
    // Guest 5's tx chains: a buffer far outside its memory, one that runs off its end, a
    // device-writable one, and a header split over two buffers with the second outside.
    let end = 1u64 << 40;
    for bufs in [
        vec![Buf::readable(end, 64)],
        vec![Buf::readable(u64::MAX - 8, 64)],
        vec![Buf::writable(0x1000, 64)],
        vec![Buf::readable(0x1000, 20), Buf::readable(end, 24)],
    ] {
        evil.send_chain(&bufs).unwrap();
        // The others' traffic goes on between them.
        send_data(&mut a, la, lb, b"ping");
        assert_eq!(recv_data(&mut b, la, 4), b"ping");
    }
    let give_up = std::time::Instant::now() + PATIENCE;
    while server.counts()[2].malformed < 4 {
        assert!(std::time::Instant::now() < give_up, "{:?}", server.counts());
        std::thread::sleep(Duration::from_millis(1));
    }
    // Nothing of guest 5's reached anyone, and it may still talk once it behaves.
    assert_eq!(server.counts()[0].rx_packets, 1, "only the RESPONSE");
    evil.reclaim_tx().unwrap();
    connect(&mut evil, &mut b, SocketType::Stream, 5, 4);
    server.shutdown().unwrap();
}

#[test]
fn the_switch_snapshot_shows_every_vm_s_counters_and_connections() {
    let dir = Dir::new("snapshot");
    let server = Server::start(&config(&dir, &[(3, "g"), (4, "g")])).unwrap();
    let mut a = guest(&dir.sock(3));
    let mut b = guest(&dir.sock(4));
    wait_connected(&server);
    let (la, lb) = connect(&mut a, &mut b, SocketType::Stream, 3, 4);
    send_data(&mut a, la, lb, &pattern(5000, 1));
    recv_data(&mut b, la, 5000);
    let give_up = std::time::Instant::now() + PATIENCE;
    let snap = loop {
        let s = server.snapshot();
        let rx = s
            .as_ref()
            .and_then(|s| s.ports.get(1))
            .and_then(|p| p.counters.get("rx_bytes").copied());
        if rx == Some(5000) {
            break s.unwrap();
        }
        assert!(std::time::Instant::now() < give_up, "{s:?}");
        std::thread::sleep(Duration::from_millis(5));
    };
    let vm3 = &snap.ports[0];
    assert_eq!(vm3.name, "vm3");
    assert_eq!(vm3.counters["tx_bytes"], 5000);
    assert_eq!(vm3.counters["conns_established"], 1);
    assert_eq!(vm3.counters["connections_opened"], 1);
    let table = snap.to_string();
    assert!(
        table.contains("port vm4:") && table.contains("rx_bytes 5000"),
        "{table}"
    );
    let json = serde_json::to_value(&snap).unwrap();
    assert_eq!(json["ports"][1]["counters"]["rx_bytes"], 5000);
    let (stopped, last) = server.shutdown_with_snapshot();
    stopped.unwrap();
    assert!(last.is_some());
}

#[test]
fn malformed_packets_are_counted_and_refused_and_the_sender_goes_on() {
    let dir = Dir::new("malformed");
    let server = Server::start(&config(&dir, &[(3, "g"), (4, "g")])).unwrap();
    let mut a = guest(&dir.sock(3));
    let mut b = guest(&dir.sock(4));
    wait_connected(&server);
    let (la, lb) = (SockAddr::new(3, 1024), SockAddr::new(4, 5000));
    // Shorter than a header; a header claiming more payload than it carries; an unknown op;
    // a payload on a REQUEST; a reserved destination CID.
    a.send(&[0u8; 20]).unwrap();
    let mut long = PacketHeader::new(SocketType::Stream, Op::Rw, la, lb);
    long.len = 1000;
    a.send(&long.encode()).unwrap();
    let mut bad_op = PacketHeader::new(SocketType::Stream, Op::Request, la, lb);
    bad_op.op = 99;
    a.send(&bad_op.encode()).unwrap();
    a.send(&packet(
        SocketType::Stream,
        Op::Request,
        la,
        lb,
        0,
        b"payload",
    ))
    .unwrap();
    a.send(&packet(
        SocketType::Stream,
        Op::Request,
        la,
        SockAddr::new(1, 5),
        0,
        &[],
    ))
    .unwrap();
    // Every one with a header was answered with an RST from vmq; none reached guest 4.
    for _ in 0..4 {
        let (rst, _) = recv(&mut a);
        assert_eq!(rst.op, Op::Rst as u16, "{rst:?}");
    }
    assert_eq!(server.counts()[0].malformed, 5);
    assert_eq!(server.counts()[1].rx_packets, 0);
    // The same guest then connects and talks as usual.
    a.reclaim_tx().unwrap();
    connect(&mut a, &mut b, SocketType::Stream, 3, 4);
    send_data(&mut a, la, lb, b"after");
    assert_eq!(recv_data(&mut b, la, 5), b"after");
    server.shutdown().unwrap();
}
