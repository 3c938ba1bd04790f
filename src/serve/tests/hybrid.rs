//! Host programs and guests connected over the VM's `uds-path` (hybrid vsock), with real Unix
//! sockets on the host side and a played guest on the other.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};

use super::*;

/// VM 3 with a `uds-path`, VM 4 without.
fn hybrid_config(dir: &Dir) -> ServeConfig {
    let mut cfg = ServeConfig::default();
    cfg.add_vm_flag(&format!(
        "guest-cid=3,socket={},uds-path={},groups=g",
        dir.sock(3).display(),
        uds(dir).display()
    ))
    .unwrap();
    cfg.add_vm_flag(&format!(
        "guest-cid=4,socket={},groups=g",
        dir.sock(4).display()
    ))
    .unwrap();
    cfg
}

/// Waits until guest 3's device runs (guest 4 is left unconnected in most tests).
fn wait_guest3(server: &Server) {
    let give_up = std::time::Instant::now() + PATIENCE;
    while !server.counts()[0].connected {
        assert!(std::time::Instant::now() < give_up, "device never started");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Guest `g` sends `data` as RW packets of at most 4 KiB, saying it consumed `fwd` bytes.
fn send_with_fwd(g: &mut VmmFrontend, src: SockAddr, dst: SockAddr, fwd: u32, data: &[u8]) {
    for chunk in data.chunks(4096) {
        g.reclaim_tx().unwrap();
        g.send(&packet(SocketType::Stream, Op::Rw, src, dst, fwd, chunk))
            .unwrap();
    }
}

/// Takes RW payload arriving at `g` from `src` until `len` bytes came, passing over credit
/// updates (the host side sends one when the guest is likely to wait for it).
fn recv_bytes(g: &mut VmmFrontend, src: SockAddr, len: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < len {
        let (h, payload) = recv(g);
        assert_eq!(h.src(), src, "{h:?}");
        match h.operation() {
            Some(Op::Rw) => got.extend_from_slice(&payload),
            Some(Op::CreditUpdate) => {}
            _ => panic!("expected data, got {h:?}"),
        }
    }
    got
}

/// The next packet for `g` other than a credit update.
fn recv_past_credit(g: &mut VmmFrontend) -> PacketHeader {
    loop {
        let (h, _) = recv(g);
        if h.operation() != Some(Op::CreditUpdate) {
            return h;
        }
    }
}

fn uds(dir: &Dir) -> PathBuf {
    dir.0.join("vm3.vsock")
}

fn host_stream(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).expect("the host side listens");
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s
}

/// Reads one `\n`-ended line from `s`, byte by byte (nothing after it is taken).
fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).expect("a line arrives") == 1 {
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    String::from_utf8(line).unwrap()
}

/// Guest 3 answers the REQUEST a host program's `CONNECT 5000` makes; returns (host end, guest
/// end) as the guest sees them.
fn accept_host(g: &mut VmmFrontend) -> (SockAddr, SockAddr) {
    let (req, _) = recv(g);
    assert_eq!(req.op, Op::Request as u16, "{req:?}");
    assert_eq!(req.src_cid, 2, "from the host");
    assert_eq!(req.dst(), SockAddr::new(3, 5000));
    g.send(&packet(
        SocketType::Stream,
        Op::Response,
        req.dst(),
        req.src(),
        0,
        &[],
    ))
    .unwrap();
    (req.src(), req.dst())
}

#[test]
fn a_host_program_connects_to_a_guest_port_and_both_directions_carry_bytes() {
    let dir = Dir::new("hybrid-in");
    let server = Server::start(&hybrid_config(&dir)).unwrap();
    let mut g = guest(&dir.sock(3));
    wait_guest3(&server);
    let mut s = host_stream(&uds(&dir));
    // Bytes written right after the line wait for the connection, then go first.
    s.write_all(b"CONNECT 5000\nearly").unwrap();
    let (host, me) = accept_host(&mut g);
    assert_eq!(read_line(&mut s), "OK 5000\n");
    assert_eq!(recv_bytes(&mut g, host, 5), b"early");
    // Host -> guest: 100 KiB arrives intact, in packets no larger than a Linux rx buffer.
    let big = pattern(100 * 1024, 1);
    s.write_all(&big).unwrap();
    let mut got = Vec::new();
    while got.len() < big.len() {
        let (h, payload) = recv(&mut g);
        assert_eq!((h.op, h.src()), (Op::Rw as u16, host), "{h:?}");
        assert!(payload.len() <= 4096);
        got.extend_from_slice(&payload);
        // Read as an application would: credit goes back.
        let update = packet(
            SocketType::Stream,
            Op::CreditUpdate,
            me,
            host,
            got.len() as u32 + 5,
            &[],
        );
        g.reclaim_tx().unwrap();
        g.send(&update).unwrap();
    }
    assert_eq!(got, big);
    // Guest -> host.
    let reply = pattern(10_000, 2);
    send_with_fwd(&mut g, me, host, got.len() as u32 + 5, &reply);
    let mut back = vec![0u8; reply.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, reply);
    // The host program closes its sending side: the guest hears SHUTDOWN; the guest closes,
    // the host program reads EOF and the guest gets the closing RST.
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let shut = recv_past_credit(&mut g);
    assert_eq!(
        (shut.op, shut.flags & 2),
        (Op::Shutdown as u16, 2),
        "{shut:?}"
    );
    g.reclaim_tx().unwrap();
    let mut bye = PacketHeader::new(SocketType::Stream, Op::Shutdown, me, host);
    bye.flags = 3;
    g.send(&bye.encode()).unwrap();
    let rst = recv_past_credit(&mut g);
    assert_eq!((rst.op, rst.src()), (Op::Rst as u16, host));
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let c = server.counts();
    assert_eq!((c[0].host_connections, c[0].host_refused), (1, 0), "{c:?}");
    server.shutdown().unwrap();
    assert!(
        !uds(&dir).exists(),
        "the host socket is removed at shutdown"
    );
}

#[test]
fn a_guest_connects_to_a_host_listener_at_uds_path_underscore_port() {
    let dir = Dir::new("hybrid-out");
    let server = Server::start(&hybrid_config(&dir)).unwrap();
    let mut g = guest(&dir.sock(3));
    wait_guest3(&server);
    let mut listen_path = uds(&dir).into_os_string();
    listen_path.push("_6000");
    let listener = UnixListener::bind(&listen_path).unwrap();
    let (me, host) = (SockAddr::new(3, 1024), SockAddr::new(2, 6000));
    g.send(&packet(SocketType::Stream, Op::Request, me, host, 0, &[]))
        .unwrap();
    let (resp, _) = recv(&mut g);
    assert_eq!(
        (resp.op, resp.src(), resp.dst()),
        (Op::Response as u16, host, me)
    );
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let msg = pattern(9000, 3);
    send_data(&mut g, me, host, &msg);
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, msg);
    s.write_all(b"pong").unwrap();
    assert_eq!(recv_bytes(&mut g, host, 4), b"pong");
    // The guest's VMM goes away: the host program's connection ends.
    drop(g);
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty());
    server.shutdown().unwrap();
}

#[test]
fn the_host_side_honours_the_credit_the_guest_gives() {
    let dir = Dir::new("hybrid-credit");
    let server = Server::start(&hybrid_config(&dir)).unwrap();
    let mut g = guest(&dir.sock(3));
    wait_guest3(&server);
    let mut s = host_stream(&uds(&dir));
    s.write_all(b"CONNECT 5000\n").unwrap();
    let (req, _) = recv(&mut g);
    let (host, me) = (req.src(), req.dst());
    // The guest grants 8 KiB.
    let mut resp = PacketHeader::new(SocketType::Stream, Op::Response, me, host);
    resp.buf_alloc = 8192;
    g.send(&resp.encode()).unwrap();
    assert_eq!(read_line(&mut s), "OK 5000\n");
    let data = pattern(20_000, 4);
    s.write_all(&data).unwrap();
    let first = recv_data(&mut g, host, 8192);
    assert_eq!(first, data[..8192]);
    // With the credit used up, the host side asks for more and sends nothing past it.
    let (ask, _) = recv(&mut g);
    assert_eq!(ask.op, Op::CreditRequest as u16, "{ask:?}");
    assert!(g.recv_timeout(Duration::from_millis(50)).unwrap().is_none());
    // The guest consumed it all: the next 8 KiB come.
    let mut update = PacketHeader::new(SocketType::Stream, Op::CreditUpdate, me, host);
    update.buf_alloc = 8192;
    update.fwd_cnt = 8192;
    g.reclaim_tx().unwrap();
    g.send(&update.encode()).unwrap();
    assert_eq!(recv_data(&mut g, host, 8192), data[8192..16384]);
    server.shutdown().unwrap();
}

#[test]
fn host_connections_nobody_takes_are_refused_and_nothing_hangs() {
    let dir = Dir::new("hybrid-refuse");
    let server = Server::start(&hybrid_config(&dir)).unwrap();
    let mut g = guest(&dir.sock(3));
    let mut g4 = guest(&dir.sock(4));
    wait_connected(&server);
    // Guest 3 to a host port nobody listens on; SEQPACKET to the host (a byte stream only);
    // guest 4, which has no uds-path, to the host: each gets an RST.
    for (ty, from) in [
        (SocketType::Stream, SockAddr::new(3, 1024)),
        (SocketType::SeqPacket, SockAddr::new(3, 1025)),
        (SocketType::Stream, SockAddr::new(4, 1024)),
    ] {
        let g = if from.cid == 3 { &mut g } else { &mut g4 };
        let to = SockAddr::new(2, 7000);
        g.reclaim_tx().unwrap();
        g.send(&packet(ty, Op::Request, from, to, 0, &[])).unwrap();
        let (rst, _) = recv(g);
        assert_eq!((rst.op, rst.src(), rst.dst()), (Op::Rst as u16, to, from));
    }
    // A host program whose guest port is closed (the guest answers RST) is closed without OK.
    let mut s = host_stream(&uds(&dir));
    s.write_all(b"CONNECT 5000\n").unwrap();
    let (req, _) = recv(&mut g);
    g.reclaim_tx().unwrap();
    g.send(&packet(
        SocketType::Stream,
        Op::Rst,
        req.dst(),
        req.src(),
        0,
        &[],
    ))
    .unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "no OK line: {rest:?}");
    // A malformed line is closed at once.
    let mut s = host_stream(&uds(&dir));
    s.write_all(b"HELLO 5000\n").unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let c = server.counts();
    assert_eq!(c[0].host_connections, 1, "{c:?}");
    assert!(c[0].host_refused >= 4, "{c:?}");
    server.shutdown().unwrap();
}
