//! The host program's side of a VM's host port: the listener at `uds-path`, `CONNECT` lines,
//! and connections to `<uds-path>_<port>` for the guest.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::Ordering;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::{HostConn, HostPort, VmEntry, FIRST_LOCAL_PORT, LISTENER, MAX_PENDING};
use crate::vsock::endpoint::Endpoint;
use crate::vsock::hybrid::{guest_listener_path, LineKind, LineParser};
use crate::vsock::packet::{PacketHeader, SockAddr, SocketType, HOST_CID};

/// A host program that connected and has not finished its `CONNECT` line.
pub(super) struct Pending {
    stream: UnixStream,
    parser: LineParser,
    since_ns: u64,
}

impl HostPort {
    /// Registers a stream, edge-triggered: events come once per change, so a stream the port
    /// cannot serve yet does not keep the switch loop awake.
    pub(super) fn watch(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let events =
            EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
    }

    /// Handles what epoll reports: new host programs, their `CONNECT` lines, and readiness of
    /// connections (which only marks the port dirty: the pass over connections does the I/O).
    pub(super) fn poll_sockets(&mut self) {
        let mut events = [EpollEvent::default(); 64];
        loop {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("vsock CID {}: host socket wait failed: {e}", self.cid());
                    return;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    LISTENER => self.accept_all(),
                    t if self.pending.contains_key(&t) => self.read_line(t),
                    _ => self.dirty = true,
                }
            }
            if n < events.len() {
                return;
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors, say: the rest wait in the backlog for the next event.
                    log::warn!(
                        "vsock CID {}: cannot accept a host connection: {e}",
                        self.cid()
                    );
                    return;
                }
            };
            if self.pending.len() >= MAX_PENDING || stream.set_nonblocking(true).is_err() {
                self.me
                    .counters
                    .host_refused
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let token = self.token();
            if self.watch(stream.as_raw_fd(), token).is_err() {
                continue;
            }
            let since_ns = self.clock.now_ns();
            self.pending.insert(
                token,
                Pending {
                    stream,
                    parser: LineParser::new(LineKind::Connect),
                    since_ns,
                },
            );
            // The line may have arrived with the connection.
            self.read_line(token);
        }
    }

    /// Reads a pending host program's `CONNECT <port>` line; once whole, opens the connection.
    fn read_line(&mut self, token: u64) {
        let Some(p) = self.pending.get_mut(&token) else {
            return;
        };
        // Read at most what the line may hold, so no stream data is taken before the line ends.
        let mut buf = [0u8; crate::vsock::hybrid::MAX_LINE];
        let (port, rest) = loop {
            let want = buf.len().min(crate::vsock::hybrid::MAX_LINE);
            match p.stream.read(&mut buf[..want]) {
                Ok(0) => return self.drop_pending(token, "closed before its CONNECT line"),
                Ok(n) => match p.parser.feed(&buf[..n]) {
                    Ok(None) => {}
                    Ok(Some((port, used))) => break (port, buf[used..n].to_vec()),
                    Err(e) => return self.drop_pending(token, &e.to_string()),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.drop_pending(token, &e.to_string()),
            }
        };
        let Some(p) = self.pending.remove(&token) else {
            return;
        };
        self.connect_guest(p.stream, token, port, &rest);
    }

    fn drop_pending(&mut self, token: u64, why: &str) {
        if let Some(p) = self.pending.remove(&token) {
            log::debug!("vsock CID {}: host connection dropped: {why}", self.cid());
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                p.stream.as_raw_fd(),
                EpollEvent::default(),
            );
            self.me
                .counters
                .host_refused
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A host program asked for guest port `port`: open the vsock connection (the stream is
    /// answered once the guest accepts). `early` is stream data that came with the line.
    fn connect_guest(&mut self, stream: UnixStream, token: u64, port: u32, early: &[u8]) {
        let refuse = |me: &VmEntry, stream: &UnixStream, epoll: &Epoll| {
            me.counters.host_refused.fetch_add(1, Ordering::Relaxed);
            let _ = epoll.ctl(
                ControlOperation::Delete,
                stream.as_raw_fd(),
                EpollEvent::default(),
            );
        };
        if !self.me.connected.load(Ordering::Acquire)
            || self.conns.len() >= self.cfg.max_connections
        {
            return refuse(&self.me, &stream, &self.epoll);
        }
        let Some(local) = self.allocate_port(port) else {
            return refuse(&self.me, &stream, &self.epoll);
        };
        let ep = match Endpoint::connect(
            self.cfg.endpoint,
            SocketType::Stream,
            SockAddr::new(HOST_CID, local),
            SockAddr::new(self.cid(), port),
        ) {
            Ok(ep) => ep,
            Err(_) => return refuse(&self.me, &stream, &self.epoll),
        };
        let mut conn = HostConn {
            stream,
            token,
            ep,
            out: Vec::new(),
            out_at: 0,
            host_initiated: true,
            ok_owed: true,
            read_eof: false,
            write_shut: false,
            opened_ns: self.clock.now_ns(),
            closed_ns: None,
        };
        // Fits: the send buffer is empty and at least 1 byte, the line at most 64 bytes.
        let taken = conn.ep.write(early);
        debug_assert_eq!(taken, early.len().min(self.cfg.endpoint.send_buf as usize));
        self.local_ports.insert(local);
        self.tokens.insert(token, (local, port));
        self.conns.insert((local, port), conn);
        self.me
            .counters
            .host_connections
            .fetch_add(1, Ordering::Relaxed);
        self.dirty = true;
    }

    /// A free local port for a connection to guest port `peer`.
    fn allocate_port(&mut self, peer: u32) -> Option<u32> {
        for _ in 0..=self.cfg.max_connections {
            let p = self.next_local_port;
            self.next_local_port = if p >= u32::MAX - 1 {
                FIRST_LOCAL_PORT
            } else {
                p + 1
            };
            if !self.local_ports.contains(&p) && !self.conns.contains_key(&(p, peer)) {
                return Some(p);
            }
        }
        None
    }

    /// A guest's REQUEST to CID 2: connect to `<uds-path>_<port>` and accept, or refuse.
    pub(super) fn accept_guest(&mut self, hdr: &PacketHeader) {
        let refuse = |me: &VmEntry| {
            me.counters.host_refused.fetch_add(1, Ordering::Relaxed);
            if let Some(rst) = hdr.rst_reply() {
                me.push_control(rst);
            }
        };
        if hdr.socket_type() != Some(SocketType::Stream)
            || self.conns.len() >= self.cfg.max_connections
        {
            // Hybrid vsock is a byte stream; a SEQPACKET connection to the host is refused.
            return refuse(&self.me);
        }
        let path = guest_listener_path(&self.cfg.uds_path, hdr.dst_port);
        let stream = match connect_nonblocking(&path) {
            Ok(s) => s,
            Err(e) => {
                log::debug!(
                    "vsock CID {}: connection to host port {} refused: {}: {e}",
                    self.cid(),
                    hdr.dst_port,
                    path.display()
                );
                return refuse(&self.me);
            }
        };
        let Ok(ep) = Endpoint::accept(self.cfg.endpoint, hdr) else {
            return refuse(&self.me);
        };
        let token = self.token();
        if self.watch(stream.as_raw_fd(), token).is_err() {
            return refuse(&self.me);
        }
        let key = (hdr.dst_port, hdr.src_port);
        self.tokens.insert(token, key);
        self.conns.insert(
            key,
            HostConn {
                stream,
                token,
                ep,
                out: Vec::new(),
                out_at: 0,
                host_initiated: false,
                ok_owed: false,
                read_eof: false,
                write_shut: false,
                opened_ns: self.clock.now_ns(),
                closed_ns: None,
            },
        );
        self.me
            .counters
            .host_connections
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Closes host programs that did not finish their `CONNECT` line in time.
    pub(super) fn expire_pending(&mut self, now: u64) {
        let late: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| now.saturating_sub(p.since_ns) >= self.cfg.request_timeout_ns)
            .map(|(t, _)| *t)
            .collect();
        for t in late {
            self.drop_pending(t, "no CONNECT line in time");
        }
    }
}

/// Connects to the Unix socket at `path` without blocking: a listener whose backlog is full
/// refuses (`EAGAIN`) rather than stalling the switch thread.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: an all-zero `sockaddr_un` is a valid value of that plain C struct.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path too long for a Unix socket (108 bytes) or not a path",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain syscall with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor owned by nothing else; `OwnedFd` closes it on error.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid `sockaddr_un` that lives across the call, and `len` does not
    // exceed its size (checked against `sun_path` above).
    let rc = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            len as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}
