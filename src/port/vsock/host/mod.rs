//! [`HostPort`]: the host side of one vsock VM, as a port of the switch: host programs reach
//! the guest over a Unix socket, the hybrid-vsock convention of Firecracker and
//! vhost-device-vsock ([`crate::vsock::hybrid`]).
//!
//! - **Host to guest**: a program connects to the VM's `uds-path` and writes `CONNECT <port>\n`;
//!   the host port opens a vsock connection from CID 2 (a port it allocates) to that guest port
//!   and, once the guest accepts, answers `OK <port>\n` (the guest port, as vhost-device-vsock
//!   does). A refusal closes the socket.
//! - **Guest to host**: a guest connecting to CID 2 port `P` is connected to the Unix socket
//!   `<uds-path>_P`; nobody listening there (or its backlog full) refuses with an RST.
//!
//! vmq terminates these connections itself: each is an [`Endpoint`] beside its Unix stream.
//! Packets the guest sends to CID 2 reach this port through the switch like any sibling's (its
//! port stamps the source CID and stages them); packets for the guest leave as staged one-way
//! messages to the guest's port, so they queue behind what the switch already holds for it.
//! Every socket is nonblocking and registered, edge-triggered, in the port's own epoll set,
//! whose descriptor the switch loop watches ([`HostPort::wake_fd`]): the loop sleeps until a
//! host program or the guest moves.
//!
//! # Bounds (per VM)
//!
//! - connections: at most `max_connections`, each holding at most the endpoint's `buf_alloc`
//!   (received from the guest, not yet written to the host program: the credit the guest was
//!   given) plus `send_buf` (read from the host program, not yet sent: read only while there is
//!   room) plus one write chunk of [`CHUNK`] bytes;
//! - host programs that have connected but not finished their `CONNECT` line: at most
//!   [`MAX_PENDING`], each a 64-byte line buffer, closed after `request_timeout`;
//! - staged pieces: `staging_slots` of [`SLOT_SIZE`](super::SLOT_SIZE) bytes;
//! - a connection the guest does not answer is reset after `request_timeout`; one closed with
//!   data the host program does not read is dropped after `close_timeout`.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::{
    read_piece_between, ringless_port, staged_port_memory, Piece, Staging, VmEntry, PIECE_PAYLOAD,
};
use crate::port::{Drain, Port, PortId};
use crate::switch::Clock;
use crate::virtio::{DeliverError, DeviceError, Payload, TxChain};
use crate::vsock::endpoint::{CloseReason, EndpointConfig, EndpointState};
use crate::vsock::packet::{Op, HEADER_LEN, HOST_CID};
use crate::wire::{MsgHeader, MsgKind};

mod conn;
mod sockets;

use conn::{pump_stream, HostConn};
use sockets::Pending;

/// Host programs that may be connected without having sent their `CONNECT` line yet.
pub const MAX_PENDING: usize = 64;

/// Most bytes moved between a Unix stream and an endpoint in one read or write.
pub const CHUNK: usize = 64 * 1024;

/// First port the host side allocates for connections it opens (as Firecracker does, far
/// above the ports guests listen on); allocation wraps back here below `u32::MAX`.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// While the switch spins, the sockets are asked for events once in this many passes.
const SOCKET_POLL_EVERY: u32 = 16;

/// How often timeouts are checked.
const TIMEOUT_CHECK_NS: u64 = 100_000_000;

/// Epoll token of the listener; streams get tokens from 1 up.
const LISTENER: u64 = 0;

/// Settings of one VM's host side.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The Unix socket host programs connect to; guests' connections to CID 2 port `P` go to
    /// `<uds_path>_P`.
    pub uds_path: PathBuf,
    /// Buffers of each connection.
    pub endpoint: EndpointConfig,
    /// Host<->guest connections at once (both directions together).
    pub max_connections: usize,
    /// Staged pieces for the guest.
    pub staging_slots: u32,
    /// A connection the guest does not accept, or a `CONNECT` line not finished, in this long
    /// is dropped.
    pub request_timeout_ns: u64,
    /// A closed connection whose host program does not take the rest is dropped after this.
    pub close_timeout_ns: u64,
}

/// The host side of one vsock VM. See the module documentation.
pub struct HostPort {
    me: Arc<VmEntry>,
    guest_port: PortId,
    cfg: HostConfig,
    clock: Arc<dyn Clock>,
    listener: UnixListener,
    epoll: Epoll,
    staging: Staging,
    pending: HashMap<u64, Pending>,
    /// Connections by (our port, the guest's port).
    conns: HashMap<(u32, u32), HostConn>,
    /// Which connection an epoll token is.
    tokens: HashMap<u64, (u32, u32)>,
    /// Local ports of the connections the host side opened.
    local_ports: HashSet<u32>,
    next_token: u64,
    next_local_port: u32,
    /// The guest's departures seen (`VmEntry::departures`): a new one ends every connection.
    departures: u64,
    /// Something moved since the last pass over the connections.
    dirty: bool,
    /// Sockets are asked for events on the first pass after a sleep and on every
    /// [`SOCKET_POLL_EVERY`]th pass while the switch spins, not on every pass (a syscall).
    sockets_due: bool,
    passes: u32,
    /// Connections that ended in a pass (kept to reuse its allocation).
    ended: Vec<(u32, u32)>,
    last_timeout_check: u64,
    consumed: u16,
    /// Scratch for stream reads.
    chunk: Vec<u8>,
}

/// Why a host port could not be made.
#[derive(Debug, thiserror::Error)]
pub enum HostPortError {
    /// The Unix socket could not be bound.
    #[error("{path}: cannot listen for host connections: {source}; check the directory exists and is writable")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// Epoll or staging memory could not be had.
    #[error("host side of VM CID {cid}: {source}")]
    Resource {
        /// The VM.
        cid: u64,
        /// What the system said.
        source: io::Error,
    },
}

impl HostPort {
    /// The host side of the VM `me` (whose port in the switch is `me.addr.port`), listening on
    /// `cfg.uds_path` (bound here; the caller removed any stale socket there).
    pub fn new(
        me: Arc<VmEntry>,
        cfg: HostConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, HostPortError> {
        let cid = me.addr.cid;
        let resource = |source| HostPortError::Resource { cid, source };
        cfg.endpoint
            .check()
            .map_err(|e| resource(io::Error::other(e.to_string())))?;
        let listener = UnixListener::bind(&cfg.uds_path).map_err(|source| HostPortError::Bind {
            path: cfg.uds_path.clone(),
            source,
        })?;
        listener.set_nonblocking(true).map_err(resource)?;
        let epoll = Epoll::new().map_err(resource)?;
        epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, LISTENER),
            )
            .map_err(resource)?;
        let staging = Staging::new(cfg.staging_slots).map_err(resource)?;
        let now = clock.now_ns();
        Ok(Self {
            guest_port: me.addr.port,
            departures: me.departures.load(Ordering::Acquire),
            me,
            cfg,
            clock,
            listener,
            epoll,
            staging,
            pending: HashMap::new(),
            conns: HashMap::new(),
            tokens: HashMap::new(),
            local_ports: HashSet::new(),
            next_token: LISTENER + 1,
            next_local_port: FIRST_LOCAL_PORT,
            // The listener may already have connections waiting.
            dirty: true,
            sockets_due: true,
            passes: 0,
            ended: Vec::new(),
            last_timeout_check: now,
            consumed: 0,
            chunk: vec![0; CHUNK],
        })
    }

    /// A descriptor that is readable while this port has socket events to handle: the switch
    /// loop sleeps on it.
    pub fn wake_fd(&self) -> io::Result<OwnedFd> {
        // SAFETY: `dup` on a descriptor this port owns and keeps open; the result is a new
        // descriptor (checked below) that nothing else owns.
        let fd = unsafe { libc::dup(self.epoll.as_raw_fd()) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh, valid descriptor owned by no one else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Host<->guest connections open now.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The Unix socket host programs connect to.
    pub fn uds_path(&self) -> &Path {
        &self.cfg.uds_path
    }

    fn cid(&self) -> u64 {
        self.me.addr.cid
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    /// Ends every connection: the guest went away (nothing more can reach it).
    fn drop_all(&mut self) {
        for (key, c) in std::mem::take(&mut self.conns) {
            self.forget(key, c);
        }
    }

    /// Drops a connection taken out of the table: its stream closes.
    fn forget(&mut self, key: (u32, u32), c: HostConn) {
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            c.stream.as_raw_fd(),
            EpollEvent::default(),
        );
        self.tokens.remove(&c.token);
        if c.host_initiated {
            self.local_ports.remove(&key.0);
        }
    }

    /// One pass over the connections: host program -> endpoint, endpoint -> host program,
    /// endpoint -> guest (staged), then what ended. Stages at most `max` pieces.
    fn pump(&mut self, max: usize, sent: &mut Vec<TxChain>) {
        let now = self.clock.now_ns();
        let check_timeouts = now.saturating_sub(self.last_timeout_check) >= TIMEOUT_CHECK_NS;
        if check_timeouts {
            self.last_timeout_check = now;
            self.expire_pending(now);
        }
        // The table is taken out for the pass (nothing below touches it), so each connection
        // is reached once, without a key list or a rehash per connection.
        let mut conns = std::mem::take(&mut self.conns);
        let mut ended = std::mem::take(&mut self.ended);
        let mut staged = 0;
        for (key, c) in conns.iter_mut() {
            if pump_stream(c, &mut self.chunk) {
                self.dirty = true;
            }
            staged += self.stage_packets(c, max.saturating_sub(staged), sent);
            if self.finished(c, now, check_timeouts) {
                ended.push(*key);
            }
        }
        self.conns = conns;
        for key in ended.drain(..) {
            if let Some(c) = self.conns.remove(&key) {
                self.forget(key, c);
            }
        }
        self.ended = ended;
    }

    /// Stages what the endpoint owes the guest, at most `max` pieces; returns how many.
    fn stage_packets(&mut self, c: &mut HostConn, max: usize, sent: &mut Vec<TxChain>) -> usize {
        let owed = self
            .staging
            .stage_owed(&mut c.ep, self.guest_port, max, 0, sent);
        // Sending freed room in the send buffer: the stream may be read again.
        self.dirty |= owed.data && !c.read_eof;
        owed.packets
    }

    /// Whether a connection is over (and may be dropped, which closes its stream).
    fn finished(&self, c: &mut HostConn, now: u64, check_timeouts: bool) -> bool {
        let state = c.ep.state();
        if state == EndpointState::Connecting {
            if check_timeouts && now.saturating_sub(c.opened_ns) >= self.cfg.request_timeout_ns {
                c.ep.reset();
                self.me
                    .counters
                    .host_refused
                    .fetch_add(1, Ordering::Relaxed);
            }
            return false;
        }
        if state != EndpointState::Closed {
            return false;
        }
        if matches!(c.ep.close_reason(), Some(CloseReason::Refused)) {
            self.me
                .counters
                .host_refused
                .fetch_add(1, Ordering::Relaxed);
            return true;
        }
        if !c.ep.is_closed() {
            // An RST is still owed to the guest.
            return false;
        }
        // Closed: what the guest sent before is still written out, for a while.
        let closed = *c.closed_ns.get_or_insert(now);
        let drained = c.out_at >= c.out.len() && c.ep.readable() == 0;
        drained || now.saturating_sub(closed) >= self.cfg.close_timeout_ns
    }
}

impl Port<GuestMemoryMmap> for HostPort {
    staged_port_memory!();

    fn take_sent(&mut self, max: usize, sent: &mut Vec<TxChain>) -> Result<usize, DeviceError> {
        let departures = self.me.departures.load(Ordering::Acquire);
        if departures != self.departures {
            self.departures = departures;
            self.drop_all();
        }
        self.passes = self.passes.wrapping_add(1);
        if std::mem::take(&mut self.sockets_due) || self.passes % SOCKET_POLL_EVERY == 0 {
            self.poll_sockets();
        }
        let before = sent.len();
        let now = self.clock.now_ns();
        let timeouts_due = now.saturating_sub(self.last_timeout_check) >= TIMEOUT_CHECK_NS
            && !(self.conns.is_empty() && self.pending.is_empty());
        if std::mem::take(&mut self.dirty) || timeouts_due {
            self.pump(max, sent);
        }
        Ok(sent.len() - before)
    }

    fn release(&mut self, msg: &TxChain) -> Result<(), DeviceError> {
        self.staging
            .release(msg, format_args!("vsock CID {} host side", self.cid()));
        // Staging room came back: connections waiting on it may go on.
        self.dirty = true;
        Ok(())
    }

    fn deliver(
        &mut self,
        header: &MsgHeader,
        payload: &Payload<'_, GuestMemoryMmap>,
    ) -> Result<bool, DeliverError> {
        if header.kind() != Some(MsgKind::OneWay) {
            return Ok(true);
        }
        self.consumed = self.consumed.wrapping_add(1);
        let mut piece: Piece = [0; HEADER_LEN + PIECE_PAYLOAD as usize];
        let Some((hdr, data)) = read_piece_between(payload, &mut piece, self.cid(), HOST_CID)?
        else {
            return Ok(false);
        };
        let key = (hdr.dst_port, hdr.src_port);
        self.dirty = true;
        if let Some(c) = self.conns.get_mut(&key) {
            if let Err(e) = c.ep.on_packet(&hdr, data) {
                log::debug!("vsock CID {}: host connection reset: {e}", self.cid());
                self.me.counters.resets.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(true);
        }
        match hdr.operation() {
            Some(Op::Request) => self.accept_guest(&hdr),
            Some(Op::Rst) => {}
            _ => {
                if let Some(rst) = hdr.rst_reply() {
                    self.me.push_control(rst);
                }
            }
        }
        Ok(true)
    }

    ringless_port!();

    fn drain(&self) -> Drain {
        // Never a service's backend: nothing to judge. Every delivery is taken at once.
        Drain::taking_all(self.consumed)
    }

    fn arm_kicks(&mut self, _rx_wanted: bool) -> bool {
        // Sockets wake the loop through `wake_fd`, and the first pass after it looks at them;
        // work left from the last pass must not wait.
        self.sockets_due = true;
        self.dirty
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let open = |s| self.conns.values().filter(|c| c.ep.state() == s).count() as u64;
        vec![
            ("cid", self.cid()),
            ("conns_connecting", open(EndpointState::Connecting)),
            ("conns_established", open(EndpointState::Established)),
            ("conns_closed", open(EndpointState::Closed)),
            ("pending_lines", self.pending.len() as u64),
            ("staged", self.staging.in_use() as u64),
        ]
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Drop for HostPort {
    fn drop(&mut self) {
        // The socket file is this port's: remove it so a restart can bind again.
        let _ = std::fs::remove_file(&self.cfg.uds_path);
    }
}
