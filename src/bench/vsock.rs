//! `vmq bench vsock`: the vsock backend alone. Two guests are played by VMMs written in Rust
//! (vhost-user over a Unix socket, memfd guest memory, the guest's rings driven as Linux's
//! driver would); guest 3 connects to guest 4 and they exchange 64 B and 4 KiB messages through
//! the backend: one-way (guest 4 returns credit as it reads) and round trips (window 1). The
//! baseline, with `--peer PATH`, is rust-vmm's vhost-device-vsock doing the same in the same run
//! (STREAM only: it has no SEQPACKET).
//!
//! Thread placement: both played guests in this thread, spinning on their rings; the backend's
//! threads (vmq: one vhost-user thread per VM and the switch thread) unpinned.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{BenchRecord, Report};
use crate::serve::{ServeConfig, Server};
use crate::vhost_user::frontend::{FrontendConfig, FrontendError, VmmFrontend};
use crate::vsock::packet::{Op, PacketHeader, SockAddr, SocketType, HEADER_LEN, SEQ_EOM};

/// Credit each played guest grants.
const BUF_ALLOC: u32 = 256 * 1024;
/// Give-up limit for one case.
const PATIENCE: Duration = Duration::from_secs(30);

/// A backend under test, stopped when dropped.
enum Backend {
    /// Held for its `Drop`, which stops the server.
    Vmq {
        _server: Server,
    },
    Peer(Child),
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Backend::Peer(c) = self {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn socket(dir: &Path, cid: u64) -> PathBuf {
    dir.join(format!("vm{cid}.sock"))
}

fn start(dir: &Path, peer: Option<&Path>) -> Result<Backend, String> {
    match peer {
        None => {
            let mut cfg = ServeConfig::default();
            for cid in [3u64, 4] {
                cfg.add_vm_flag(&format!(
                    "guest-cid={cid},socket={},groups=bench",
                    socket(dir, cid).display()
                ))
                .map_err(|e| e.to_string())?;
            }
            Server::start(&cfg)
                .map(|s| Backend::Vmq { _server: s })
                .map_err(|e| e.to_string())
        }
        Some(bin) => {
            let mut cmd = Command::new(bin);
            for cid in [3u64, 4] {
                cmd.arg("--vm").arg(format!(
                    "guest-cid={cid},socket={},uds-path={}/uds{cid},groups=bench",
                    socket(dir, cid).display(),
                    dir.display()
                ));
            }
            let child = cmd
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("{}: {e}", bin.display()))?;
            let give_up = Instant::now() + PATIENCE;
            while !(socket(dir, 3).exists() && socket(dir, 4).exists()) {
                if Instant::now() > give_up {
                    return Err("the peer never created its sockets".into());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(Backend::Peer(child))
        }
    }
}

/// A folder for the sockets of one case, removed however the case ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(peer: bool) -> Result<Self, String> {
        let p = std::env::temp_dir().join(format!("vmq-bench-vsock-{}-{peer}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One side of the connection: its guest, its address, and the credit bookkeeping.
struct End {
    g: VmmFrontend,
    me: SockAddr,
    peer: SockAddr,
    ty: SocketType,
    /// Payload bytes this side consumed (its `fwd_cnt`).
    fwd: u32,
    /// Payload bytes sent, and the peer's last `fwd_cnt` and `buf_alloc` (as the backend let
    /// them through: vmq caps the credit).
    sent: u32,
    peer_fwd: u32,
    peer_buf: u32,
}

impl End {
    fn header(&self, op: Op, len: u32) -> PacketHeader {
        let mut h = PacketHeader::new(self.ty, op, self.me, self.peer);
        h.buf_alloc = BUF_ALLOC;
        h.fwd_cnt = self.fwd;
        h.len = len;
        if op == Op::Rw && self.ty == SocketType::SeqPacket {
            h.flags = SEQ_EOM;
        }
        h
    }

    /// Bytes the peer's credit lets this side send now.
    fn credit(&self) -> u32 {
        self.peer_buf
            .saturating_sub(self.sent.wrapping_sub(self.peer_fwd))
    }

    /// Sends `payload` once the peer's credit and the tx ring allow; an error on a give-up.
    fn send(&mut self, op: Op, payload: &[u8], pkt: &mut Vec<u8>) -> Result<(), String> {
        let give_up = Instant::now() + PATIENCE;
        while op == Op::Rw && self.credit() < payload.len() as u32 {
            self.take_credit()?;
            if Instant::now() > give_up {
                return Err("no credit came back".into());
            }
        }
        pkt.clear();
        pkt.extend_from_slice(&self.header(op, payload.len() as u32).encode());
        pkt.extend_from_slice(payload);
        loop {
            match self.g.send(pkt) {
                Ok(()) => break,
                Err(FrontendError::TxFull) if Instant::now() < give_up => std::hint::spin_loop(),
                Err(e) => return Err(e.to_string()),
            }
        }
        if op == Op::Rw {
            self.sent = self.sent.wrapping_add(payload.len() as u32);
        }
        Ok(())
    }

    /// Takes one packet if there is one: counts RW payload consumed, notes credit.
    fn take(&mut self) -> Result<Option<(PacketHeader, usize)>, String> {
        let Some(p) = self.g.recv().map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let h = PacketHeader::decode(&p).map_err(|e| e.to_string())?;
        if h.op == Op::Rst as u16 {
            return Err(format!("the connection was reset: {h:?}"));
        }
        self.peer_fwd = h.fwd_cnt;
        self.peer_buf = h.buf_alloc;
        let n = p.len() - HEADER_LEN;
        if h.op == Op::Rw as u16 {
            self.fwd = self.fwd.wrapping_add(n as u32);
        }
        Ok(Some((h, n)))
    }

    fn take_credit(&mut self) -> Result<(), String> {
        self.take().map(drop)
    }

    /// Waits for the next packet of op `op`.
    fn wait(&mut self, op: Op) -> Result<usize, String> {
        let give_up = Instant::now() + PATIENCE;
        loop {
            if let Some((h, n)) = self.take()? {
                if h.op == op as u16 {
                    return Ok(n);
                }
            } else if Instant::now() > give_up {
                return Err(format!("no {op:?} came"));
            }
        }
    }
}

/// Connects guest 3 to guest 4 and measures `count` messages of `size` bytes; returns
/// messages (one-way) or round trips (request/reply) per second.
fn measure(
    peer: Option<&Path>,
    ty: SocketType,
    round_trip: bool,
    size: usize,
    count: u64,
) -> Result<f64, String> {
    let dir = TempDir::new(peer.is_some())?;
    let dir = dir.0.as_path();
    let backend = start(dir, peer)?;
    let cfg = FrontendConfig {
        seqpacket: peer.is_none(),
        ..FrontendConfig::default()
    };
    let connect = |cid| VmmFrontend::connect(socket(dir, cid), cfg).map_err(|e| e.to_string());
    let (g3, g4) = (connect(3)?, connect(4)?);
    let (a3, a4) = (SockAddr::new(3, 2000), SockAddr::new(4, 5000));
    let end = |g, me, peer| End {
        g,
        me,
        peer,
        ty,
        fwd: 0,
        sent: 0,
        peer_fwd: 0,
        peer_buf: 0,
    };
    let (mut a, mut b) = (end(g3, a3, a4), end(g4, a4, a3));
    let mut pkt = Vec::with_capacity(HEADER_LEN + size);
    // The device starts when the VMM's queues are set; retry the request until it is taken.
    let give_up = Instant::now() + PATIENCE;
    loop {
        a.send(Op::Request, &[], &mut pkt)?;
        let t = Instant::now() + Duration::from_millis(200);
        let mut got = None;
        while Instant::now() < t && got.is_none() {
            got = b.take().ok().flatten();
        }
        if got.is_some_and(|(h, _)| h.op == Op::Request as u16) {
            break;
        }
        if Instant::now() > give_up {
            return Err("guest 4 never saw the connection request".into());
        }
        while a.g.recv().ok().flatten().is_some() {}
    }
    b.send(Op::Response, &[], &mut pkt)?;
    a.wait(Op::Response)?;
    let payload = vec![0x5au8; size];
    let started = Instant::now();
    if round_trip {
        for _ in 0..count {
            a.send(Op::Rw, &payload, &mut pkt)?;
            b.wait(Op::Rw)?;
            b.send(Op::Rw, &payload, &mut pkt)?;
            a.wait(Op::Rw)?;
        }
    } else {
        let total = count * size as u64;
        let mut got = 0u64;
        let mut credited = 0u32;
        let mut sent = 0u64;
        while got < total {
            if sent < count {
                // Send while credit lasts, without waiting for it.
                if a.credit() >= size as u32 {
                    a.send(Op::Rw, &payload, &mut pkt)?;
                    sent += 1;
                } else {
                    a.take_credit()?;
                }
            }
            while let Some((_, n)) = b.take()? {
                got += n as u64;
            }
            // Guest 4 returns credit every 64 KiB it read, as Linux does well before it runs out.
            if b.fwd.wrapping_sub(credited) >= 64 * 1024 || got >= total {
                credited = b.fwd;
                b.send(Op::CreditUpdate, &[], &mut pkt)?;
            }
            if started.elapsed() > PATIENCE * 4 {
                return Err(format!("only {got} of {total} bytes arrived"));
            }
        }
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    drop((a, b, backend));
    Ok(count as f64 / secs)
}

/// Runs the cases; `peer` is a vhost-device-vsock binary to compare with.
pub fn run(quick: bool, peer: Option<&Path>) -> Report {
    let (one_way, trips) = if quick {
        (20_000, 2_000)
    } else {
        (200_000, 20_000)
    };
    let placement = "played guests in one spinning thread; backend threads unpinned";
    let mut report = Report::default();
    for ty in [SocketType::Stream, SocketType::SeqPacket] {
        for (round_trip, count) in [(false, one_way), (true, trips)] {
            for size in [64usize, 4096] {
                let case = format!(
                    "vsock {} {}",
                    if ty == SocketType::Stream {
                        "stream"
                    } else {
                        "seqpacket"
                    },
                    if round_trip { "round-trip" } else { "one-way" }
                );
                let vmq = match measure(None, ty, round_trip, size, count) {
                    Ok(r) => r,
                    Err(e) => {
                        report.failures.push(format!("{case} {size} B: vmq: {e}"));
                        continue;
                    }
                };
                let base = match (peer, ty) {
                    (Some(p), SocketType::Stream) => {
                        match measure(Some(p), ty, round_trip, size, count) {
                            Ok(r) => Some(r),
                            Err(e) => {
                                report.failures.push(format!("{case} {size} B: peer: {e}"));
                                None
                            }
                        }
                    }
                    _ => None,
                };
                let (name, rate) = match (peer, base) {
                    (_, Some(r)) => ("vhost-device-vsock", r),
                    (Some(_), None) if ty == SocketType::SeqPacket => {
                        ("none (peer has no SEQPACKET)", 0.0)
                    }
                    _ => ("none", 0.0),
                };
                report.records.push(
                    BenchRecord::new(&case, size as u32, 1, vmq, name, rate, placement)
                        .with("unit", if round_trip { "round trips" } else { "msgs" })
                        .with("count", count),
                );
            }
        }
    }
    report
}
