//! `vsock-probe`: the AF_VSOCK test program that runs inside the Linux test guests.
//!
//! Every subcommand prints `VMQ-PROBE ok ...` on success or `VMQ-PROBE fail <reason>` (and
//! exits 1) on failure; every blocking call has a give-up limit (`--timeout`, seconds), so the
//! program never hangs forever. Messages carry a checkable pattern (sequence number + bytes
//! derived from it), so corruption, reordering and (SEQPACKET) broken boundaries are caught.
//!
//! ```text
//! serve  --port P --type T [--count N] [--announce 1]
//!                                              echo every message back (N connections, 0 = any;
//!                                              announce: first send our own CID, 4 bytes LE)
//! listen-once --port P --type T                serve --count 1
//! send   --cid C --port P --type T --size S --count N [--window W]
//! conns  --cid C --port P --type T --count N [--size S]
//!                                              N connections one after another to an announcing
//!                                              server: peer address checked, one echo each,
//!                                              connections counted by the CID that served them
//! sink   --port P --type T                     receive a blast, verify, acknowledge
//! blast  --cid C --port P --type T --size S --count N
//! sizes  --cid C --port P [--type T] [--sizes 1,2,...]
//! common: [--timeout SECONDS] (default 30)
//! ```

use std::collections::HashMap;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

/// `SO_VM_SOCKETS_CONNECT_TIMEOUT` (linux/vm_sockets.h; the `_OLD` timeval form, same on 64-bit).
const SO_VM_SOCKETS_CONNECT_TIMEOUT: libc::c_int = 6;
/// Sizes `sizes` checks by default: around the byte, cache line, page and 64 KiB packet limits.
const DEFAULT_SIZES: &[usize] = &[
    1, 2, 63, 64, 65, 4095, 4096, 4097, 65535, 65536, 65537, 131072, 262144,
];
/// Largest message the echo server and sink take in one receive (above any size we send).
const MAX_MSG: usize = 1 << 20;
/// Start of a blast: magic, message size, message count.
const BLAST_MAGIC: u32 = 0x424d_5156; // "VQMB"

type Res<T> = Result<T, String>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Stream,
    Seqpacket,
}

impl Kind {
    fn parse(s: &str) -> Res<Kind> {
        match s {
            "stream" => Ok(Kind::Stream),
            "seqpacket" => Ok(Kind::Seqpacket),
            _ => Err(format!("--type must be stream or seqpacket, not {s:?}")),
        }
    }

    fn raw(self) -> libc::c_int {
        match self {
            Kind::Stream => libc::SOCK_STREAM,
            Kind::Seqpacket => libc::SOCK_SEQPACKET,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Stream => "stream",
            Kind::Seqpacket => "seqpacket",
        }
    }
}

/// `--key value` options.
struct Opts {
    map: HashMap<String, String>,
}

impl Opts {
    fn parse(args: &[String]) -> Res<Opts> {
        let mut map = HashMap::new();
        let mut it = args.iter();
        while let Some(k) = it.next() {
            let key = k
                .strip_prefix("--")
                .ok_or_else(|| format!("expected --option, got {k:?}"))?;
            let v = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
            map.insert(key.to_string(), v.clone());
        }
        Ok(Opts { map })
    }

    fn num<T: std::str::FromStr>(&self, key: &str, default: Option<T>) -> Res<T> {
        match self.map.get(key) {
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{key} {v:?} is not a valid number")),
            None => default.ok_or_else(|| format!("--{key} is required")),
        }
    }

    fn kind(&self, default: Option<Kind>) -> Res<Kind> {
        match self.map.get("type") {
            Some(v) => Kind::parse(v),
            None => default.ok_or_else(|| "--type stream|seqpacket is required".to_string()),
        }
    }

    fn timeout(&self) -> Res<Duration> {
        Ok(Duration::from_secs(self.num("timeout", Some(30u64))?))
    }
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

/// An AF_VSOCK socket.
struct Sock {
    fd: OwnedFd,
    kind: Kind,
}

impl Sock {
    fn new(kind: Kind) -> Res<Sock> {
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_VSOCK, kind.raw() | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(os_err(&format!(
                "socket(AF_VSOCK, {}) (is the vsock module loaded?)",
                kind.name()
            )));
        }
        // SAFETY: fd is a fresh descriptor we own.
        Ok(Sock {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            kind,
        })
    }

    fn raw(&self) -> libc::c_int {
        self.fd.as_raw_fd()
    }

    fn set_timeval(&self, level: libc::c_int, opt: libc::c_int, t: Duration) -> Res<()> {
        let tv = libc::timeval {
            tv_sec: t.as_secs() as libc::time_t,
            tv_usec: t.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: tv outlives the call and its size is passed.
        let r = unsafe {
            libc::setsockopt(
                self.raw(),
                level,
                opt,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(os_err("setsockopt"));
        }
        Ok(())
    }

    /// Receives and sends give up after `t`.
    fn set_io_timeout(&self, t: Duration) -> Res<()> {
        self.set_timeval(libc::SOL_SOCKET, libc::SO_RCVTIMEO, t)?;
        self.set_timeval(libc::SOL_SOCKET, libc::SO_SNDTIMEO, t)
    }

    /// Connects to `cid:port`, retrying while nobody listens there yet (the server may still
    /// be starting), until `timeout`.
    fn connect(cid: u32, port: u32, kind: Kind, timeout: Duration) -> Res<Sock> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = Sock::new(kind)?;
            // vsock's own connect timeout is 2 s, short for a TCG guest on busy cores.
            s.set_timeval(libc::AF_VSOCK, SO_VM_SOCKETS_CONNECT_TIMEOUT, timeout)?;
            s.set_io_timeout(timeout)?;
            let a = addr(cid, port);
            // SAFETY: a is a valid sockaddr_vm of the size passed.
            let r = unsafe {
                libc::connect(
                    s.raw(),
                    (&a as *const libc::sockaddr_vm).cast(),
                    size_of::<libc::sockaddr_vm>() as libc::socklen_t,
                )
            };
            if r == 0 {
                return Ok(s);
            }
            let e = io::Error::last_os_error();
            let retry = matches!(
                e.raw_os_error(),
                Some(libc::ECONNREFUSED | libc::ECONNRESET | libc::EINTR)
            );
            if !retry || Instant::now() >= deadline {
                return Err(format!(
                    "connect to cid {cid} port {port} ({}): {e}{}",
                    kind.name(),
                    if retry { " (gave up retrying)" } else { "" }
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn listen(port: u32, kind: Kind) -> Res<Sock> {
        let s = Sock::new(kind)?;
        let a = addr(libc::VMADDR_CID_ANY, port);
        // SAFETY: a is a valid sockaddr_vm of the size passed.
        let r = unsafe {
            libc::bind(
                s.raw(),
                (&a as *const libc::sockaddr_vm).cast(),
                size_of::<libc::sockaddr_vm>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(os_err(&format!("bind port {port} ({})", kind.name())));
        }
        // SAFETY: plain listen(2) on our socket.
        if unsafe { libc::listen(s.raw(), 16) } < 0 {
            return Err(os_err(&format!("listen on port {port}")));
        }
        Ok(s)
    }

    /// The address at one end of the connection: ours (`getsockname`) or the peer's.
    fn name(&self, peer: bool) -> Res<(u32, u32)> {
        // SAFETY: zeroed sockaddr_vm is valid; the call fills at most len bytes of it.
        let mut a: libc::sockaddr_vm = unsafe { zeroed() };
        let mut len = size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        let p = (&mut a as *mut libc::sockaddr_vm).cast();
        // SAFETY: p points at a sockaddr_vm of len bytes, valid for the call.
        let r = unsafe {
            if peer {
                libc::getpeername(self.raw(), p, &mut len)
            } else {
                libc::getsockname(self.raw(), p, &mut len)
            }
        };
        if r < 0 {
            return Err(os_err(if peer { "getpeername" } else { "getsockname" }));
        }
        Ok((a.svm_cid, a.svm_port))
    }

    /// Accepts one connection within `timeout`; returns it with the peer's cid and port.
    fn accept(&self, timeout: Duration) -> Res<(Sock, u32, u32)> {
        let mut p = libc::pollfd {
            fd: self.raw(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r < 0 {
            return Err(os_err("poll for a connection"));
        }
        if r == 0 {
            return Err(format!(
                "no connection arrived within {} s",
                timeout.as_secs()
            ));
        }
        // SAFETY: zeroed sockaddr_vm is valid; accept fills at most len bytes.
        let mut a: libc::sockaddr_vm = unsafe { zeroed() };
        let mut len = size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        let fd = unsafe {
            libc::accept4(
                self.raw(),
                (&mut a as *mut libc::sockaddr_vm).cast(),
                &mut len,
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(os_err("accept"));
        }
        // SAFETY: fd is a fresh descriptor we own.
        let s = Sock {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            kind: self.kind,
        };
        s.set_io_timeout(timeout)?;
        Ok((s, a.svm_cid, a.svm_port))
    }

    /// Sends all of `buf`: one message (SEQPACKET) or bytes (STREAM).
    fn send(&self, buf: &[u8]) -> Res<()> {
        let mut off = 0;
        while off < buf.len() {
            // SAFETY: the pointer and length are within buf.
            let n = unsafe {
                libc::send(
                    self.raw(),
                    buf[off..].as_ptr().cast(),
                    buf.len() - off,
                    libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("send of {} bytes: {}", buf.len(), explain(e)));
            }
            if self.kind == Kind::Seqpacket && n as usize != buf.len() {
                return Err(format!(
                    "seqpacket send of {} bytes sent only {n}",
                    buf.len()
                ));
            }
            off += n as usize;
        }
        Ok(())
    }

    /// One receive into `buf`; returns the length (the whole message's for SEQPACKET, which
    /// fails when it did not fit), 0 at the end of the connection.
    fn recv(&self, buf: &mut [u8]) -> Res<usize> {
        loop {
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            // SAFETY: zeroed msghdr is valid; it points at iov, which points into buf.
            let mut m: libc::msghdr = unsafe { zeroed() };
            m.msg_iov = &mut iov;
            m.msg_iovlen = 1;
            let flags = if self.kind == Kind::Seqpacket {
                libc::MSG_TRUNC // return the real message length
            } else {
                0
            };
            // SAFETY: m is a valid msghdr for the duration of the call.
            let n = unsafe { libc::recvmsg(self.raw(), &mut m, flags) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("receive: {}", explain(e)));
            }
            let n = n as usize;
            if self.kind == Kind::Seqpacket && (m.msg_flags & libc::MSG_TRUNC != 0 || n > buf.len())
            {
                return Err(format!(
                    "seqpacket message of {n} bytes did not fit the {} byte buffer",
                    buf.len()
                ));
            }
            return Ok(n);
        }
    }

    /// Receives exactly `buf.len()` bytes (STREAM) or one message of exactly that size
    /// (SEQPACKET, boundaries checked).
    fn recv_exact(&self, buf: &mut [u8], scratch: &mut [u8]) -> Res<()> {
        match self.kind {
            Kind::Stream => {
                let mut off = 0;
                while off < buf.len() {
                    let n = self.recv(&mut buf[off..])?;
                    if n == 0 {
                        return Err(format!(
                            "connection closed after {off} of {} bytes",
                            buf.len()
                        ));
                    }
                    off += n;
                }
                Ok(())
            }
            Kind::Seqpacket => {
                let n = self.recv(scratch)?;
                if n == 0 {
                    return Err("connection closed while a message was due".into());
                }
                if n != buf.len() {
                    return Err(format!(
                        "message boundary broken: got a {n} byte message, expected {}",
                        buf.len()
                    ));
                }
                buf.copy_from_slice(&scratch[..n]);
                Ok(())
            }
        }
    }
}

fn explain(e: io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EAGAIN) => "timed out (see --timeout)".into(),
        _ => e.to_string(),
    }
}

fn addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; all-zero is valid (reserved fields must be zero).
    let mut a: libc::sockaddr_vm = unsafe { zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_port = port;
    a.svm_cid = cid;
    a
}

/// The content of message `seq` of `len` bytes: its sequence number (little endian, first 8
/// bytes when they fit) and bytes derived from both.
fn fill(seq: u64, buf: &mut [u8]) {
    for (j, b) in buf.iter_mut().enumerate() {
        *b = (seq as u8)
            .wrapping_mul(31)
            .wrapping_add(j as u8)
            .wrapping_add((j >> 8) as u8);
    }
    if buf.len() >= 8 {
        buf[..8].copy_from_slice(&seq.to_le_bytes());
    }
}

/// Checks `buf` is message `seq`; tells where it differs.
fn check(seq: u64, buf: &[u8], want: &mut [u8]) -> Res<()> {
    fill(seq, want);
    if buf == &want[..] {
        return Ok(());
    }
    let at = buf.iter().zip(want.iter()).position(|(a, b)| a != b);
    let got_seq = (buf.len() >= 8).then(|| u64::from_le_bytes(buf[..8].try_into().unwrap()));
    Err(format!(
        "message {seq} ({} bytes) corrupted: first difference at byte {at:?}, carried seq {got_seq:?}",
        buf.len()
    ))
}

fn rate(n: u64, d: Duration) -> u64 {
    let ns = d.as_nanos().max(1);
    (n as u128 * 1_000_000_000 / ns) as u64
}

/// Echoes one connection until its peer closes it; returns the bytes echoed.
fn echo(s: &Sock) -> Res<u64> {
    let mut buf = vec![0u8; MAX_MSG];
    let mut total = 0u64;
    loop {
        let n = s.recv(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        s.send(&buf[..n])?;
        total += n as u64;
    }
}

fn serve(o: &Opts, default_count: u64) -> Res<()> {
    let port: u32 = o.num("port", None)?;
    let kind = o.kind(None)?;
    let count: u64 = o.num("count", Some(default_count))?;
    let announce = o.num("announce", Some(0u8))? != 0;
    let timeout = o.timeout()?;
    let l = Sock::listen(port, kind)?;
    println!("VMQ-PROBE listening port={port} type={}", kind.name());
    let mut workers = Vec::new();
    let mut n = 0u64;
    while count == 0 || n < count {
        let (s, cid, p) = match l.accept(timeout) {
            Ok(c) => c,
            // An open-ended server ends when idle; a counted one fails.
            Err(e) if count == 0 && n > 0 => {
                println!("VMQ-PROBE idle: {e}");
                break;
            }
            Err(e) => return Err(format!("serve port {port}: {e}")),
        };
        n += 1;
        println!("VMQ-PROBE accepted n={n} cid={cid} port={p}");
        if announce {
            // Our own address on this connection: the CID the client was served by.
            let (me, _) = s.name(false)?;
            s.send(&me.to_le_bytes())?;
        }
        workers.push(thread::spawn(move || echo(&s)));
    }
    let mut bytes = 0u64;
    let mut errors = Vec::new();
    for (i, w) in workers.into_iter().enumerate() {
        match w.join() {
            Ok(Ok(b)) => bytes += b,
            Ok(Err(e)) => errors.push(format!("connection {}: {e}", i + 1)),
            Err(_) => errors.push(format!("connection {}: echo thread panicked", i + 1)),
        }
    }
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    println!("VMQ-PROBE ok served={n} bytes={bytes}");
    Ok(())
}

fn send(o: &Opts) -> Res<()> {
    let cid: u32 = o.num("cid", None)?;
    let port: u32 = o.num("port", None)?;
    let kind = o.kind(None)?;
    let size: usize = o.num("size", None)?;
    let count: u64 = o.num("count", None)?;
    let window: u64 = o.num("window", Some(1))?;
    let timeout = o.timeout()?;
    if size == 0 || size > MAX_MSG || window == 0 {
        return Err(format!(
            "--size must be 1..={MAX_MSG} and --window at least 1"
        ));
    }
    let s = Sock::connect(cid, port, kind, timeout)?;
    let (mut out, mut inb, mut want) = (vec![0u8; size], vec![0u8; size], vec![0u8; size]);
    let mut scratch = vec![0u8; MAX_MSG];
    let (mut sent, mut got) = (0u64, 0u64);
    let start = Instant::now();
    while got < count {
        while sent < count && sent - got < window {
            fill(sent, &mut out);
            s.send(&out).map_err(|e| format!("message {sent}: {e}"))?;
            sent += 1;
        }
        s.recv_exact(&mut inb, &mut scratch)
            .map_err(|e| format!("echo of message {got}: {e}"))?;
        check(got, &inb, &mut want)?;
        got += 1;
    }
    let el = start.elapsed();
    println!(
        "VMQ-PROBE ok sent={count} bytes={} elapsed_ns={} rtt_per_s={}",
        count * size as u64,
        el.as_nanos(),
        rate(count, el)
    );
    Ok(())
}

fn conns(o: &Opts) -> Res<()> {
    let cid: u32 = o.num("cid", None)?;
    let port: u32 = o.num("port", None)?;
    let kind = o.kind(None)?;
    let count: u64 = o.num("count", None)?;
    let size: usize = o.num("size", Some(64))?;
    let timeout = o.timeout()?;
    if size == 0 || size > MAX_MSG {
        return Err(format!("--size must be 1..={MAX_MSG}"));
    }
    let (mut out, mut inb, mut want) = (vec![0u8; size], vec![0u8; size], vec![0u8; size]);
    let mut scratch = vec![0u8; MAX_MSG];
    let mut by_cid: std::collections::BTreeMap<u32, u64> = Default::default();
    let start = Instant::now();
    for i in 0..count {
        let s =
            Sock::connect(cid, port, kind, timeout).map_err(|e| format!("connection {i}: {e}"))?;
        let peer = s.name(true)?;
        if peer != (cid, port) {
            return Err(format!(
                "connection {i}: the peer is cid {} port {}, not the address connected to",
                peer.0, peer.1
            ));
        }
        let mut who = [0u8; 4];
        s.recv_exact(&mut who, &mut scratch)
            .map_err(|e| format!("connection {i}: the server's CID: {e}"))?;
        *by_cid.entry(u32::from_le_bytes(who)).or_insert(0) += 1;
        fill(i, &mut out);
        s.send(&out).map_err(|e| format!("connection {i}: {e}"))?;
        s.recv_exact(&mut inb, &mut scratch)
            .map_err(|e| format!("connection {i}: echo: {e}"))?;
        check(i, &inb, &mut want).map_err(|e| format!("connection {i}: {e}"))?;
    }
    let el = start.elapsed();
    let by: Vec<String> = by_cid.iter().map(|(c, n)| format!("{c}:{n}")).collect();
    println!(
        "VMQ-PROBE ok conns={count} by_cid={} elapsed_ns={} conns_per_s={}",
        by.join(","),
        el.as_nanos(),
        rate(count, el)
    );
    Ok(())
}

fn blast(o: &Opts) -> Res<()> {
    let cid: u32 = o.num("cid", None)?;
    let port: u32 = o.num("port", None)?;
    let kind = o.kind(None)?;
    let size: usize = o.num("size", None)?;
    let count: u64 = o.num("count", None)?;
    let timeout = o.timeout()?;
    if size == 0 || size > MAX_MSG {
        return Err(format!("--size must be 1..={MAX_MSG}"));
    }
    let s = Sock::connect(cid, port, kind, timeout)?;
    let mut head = [0u8; 16];
    head[..4].copy_from_slice(&BLAST_MAGIC.to_le_bytes());
    head[4..8].copy_from_slice(&(size as u32).to_le_bytes());
    head[8..].copy_from_slice(&count.to_le_bytes());
    let start = Instant::now();
    s.send(&head)?;
    let mut out = vec![0u8; size];
    for i in 0..count {
        fill(i, &mut out);
        s.send(&out).map_err(|e| format!("message {i}: {e}"))?;
    }
    // The sink acknowledges with the count it verified: the end-to-end confirmation.
    let mut ack = [0u8; 8];
    let mut scratch = vec![0u8; 64];
    s.recv_exact(&mut ack, &mut scratch)
        .map_err(|e| format!("sink's acknowledgement: {e}"))?;
    let acked = u64::from_le_bytes(ack);
    if acked != count {
        return Err(format!("the sink acknowledged {acked} of {count} messages"));
    }
    let el = start.elapsed();
    println!(
        "VMQ-PROBE ok sent={count} bytes={} elapsed_ns={} msgs_per_s={}",
        count * size as u64,
        el.as_nanos(),
        rate(count, el)
    );
    Ok(())
}

fn sink(o: &Opts) -> Res<()> {
    let port: u32 = o.num("port", None)?;
    let kind = o.kind(None)?;
    let timeout = o.timeout()?;
    let l = Sock::listen(port, kind)?;
    println!("VMQ-PROBE listening port={port} type={}", kind.name());
    let (s, cid, p) = l.accept(timeout)?;
    println!("VMQ-PROBE accepted n=1 cid={cid} port={p}");
    let mut scratch = vec![0u8; MAX_MSG];
    let mut head = [0u8; 16];
    s.recv_exact(&mut head, &mut scratch)
        .map_err(|e| format!("blast header: {e}"))?;
    let magic = u32::from_le_bytes(head[..4].try_into().unwrap());
    let size = u32::from_le_bytes(head[4..8].try_into().unwrap()) as usize;
    let count = u64::from_le_bytes(head[8..].try_into().unwrap());
    if magic != BLAST_MAGIC || size == 0 || size > MAX_MSG {
        return Err(format!(
            "bad blast header (magic {magic:#x}, size {size}): not a blast peer?"
        ));
    }
    let (mut inb, mut want) = (vec![0u8; size], vec![0u8; size]);
    let start = Instant::now();
    for i in 0..count {
        s.recv_exact(&mut inb, &mut scratch)
            .map_err(|e| format!("message {i} of {count}: {e}"))?;
        check(i, &inb, &mut want)?;
    }
    let el = start.elapsed();
    s.send(&count.to_le_bytes())?;
    println!(
        "VMQ-PROBE ok received={count} bytes={} elapsed_ns={} msgs_per_s={}",
        count * size as u64,
        el.as_nanos(),
        rate(count, el)
    );
    Ok(())
}

fn sizes(o: &Opts) -> Res<()> {
    let cid: u32 = o.num("cid", None)?;
    let port: u32 = o.num("port", None)?;
    let kind = o.kind(Some(Kind::Seqpacket))?;
    let timeout = o.timeout()?;
    let list: Vec<usize> = match o.map.get("sizes") {
        Some(v) => v
            .split(',')
            .map(|x| {
                x.parse()
                    .map_err(|_| format!("--sizes: {x:?} is not a number"))
            })
            .collect::<Res<_>>()?,
        None => DEFAULT_SIZES.to_vec(),
    };
    if let Some(bad) = list.iter().find(|&&x| x == 0 || x > MAX_MSG) {
        return Err(format!("--sizes: {bad} is not in 1..={MAX_MSG}"));
    }
    let s = Sock::connect(cid, port, kind, timeout)?;
    let mut scratch = vec![0u8; MAX_MSG];
    let start = Instant::now();
    let mut bytes = 0u64;
    for (i, &n) in list.iter().enumerate() {
        let (mut out, mut inb, mut want) = (vec![0u8; n], vec![0u8; n], vec![0u8; n]);
        fill(i as u64, &mut out);
        s.send(&out).map_err(|e| format!("size {n}: {e}"))?;
        s.recv_exact(&mut inb, &mut scratch)
            .map_err(|e| format!("echo of size {n}: {e}"))?;
        check(i as u64, &inb, &mut want).map_err(|e| format!("size {n}: {e}"))?;
        bytes += n as u64;
    }
    let shown: Vec<String> = list.iter().map(|n| n.to_string()).collect();
    println!(
        "VMQ-PROBE ok sent={} bytes={bytes} elapsed_ns={} sizes={}",
        list.len(),
        start.elapsed().as_nanos(),
        shown.join(",")
    );
    Ok(())
}

const USAGE: &str = "usage: vsock-probe serve|listen-once|send|sink|blast|sizes [--option value]...
  serve --port P --type stream|seqpacket [--count N (default 1, 0 = until idle)] [--announce 1]
  listen-once --port P --type T
  send --cid C --port P --type T --size S --count N [--window W]
  conns --cid C --port P --type T --count N [--size S]
  sink --port P --type T
  blast --cid C --port P --type T --size S --count N
  sizes --cid C --port P [--type T] [--sizes 1,2,...]
  every command: [--timeout SECONDS] (default 30)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let r = Opts::parse(&args[1..]).and_then(|o| match cmd.as_str() {
        "serve" => serve(&o, 1),
        "listen-once" => serve(&o, 1),
        "send" => send(&o),
        "conns" => conns(&o),
        "sink" => sink(&o),
        "blast" => blast(&o),
        "sizes" => sizes(&o),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(format!("unknown command {cmd:?}\n{USAGE}")),
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("VMQ-PROBE fail {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}
