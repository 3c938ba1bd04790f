//! [`VsockDaemon`]: serves one VM's [`VsockDevice`] on a vhost-user socket.
//!
//! The daemon listens on the socket, serves one VMM at a time, and when that VMM goes away
//! (it quit, it restarts, it broke the protocol) stops the device's owner and waits for the
//! next: a VMM that restarts reconnects without vmq restarting. Each daemon runs on threads of
//! its own (its accept loop; vhost-user-backend's request thread and vring worker per
//! connection), so one VM's VMM cannot disturb another VM's device.
//!
//! # Built on `VhostUserDaemon`, one per connection
//!
//! vhost-user-backend's request handler (the code that turns SET_MEM_TABLE and SET_VRING_* into
//! `Queue` state) is private to it; the only way in is `VhostUserDaemon`. Its `serve` handles
//! one connection and tells the worker to exit, and a `VhostUserDaemon` kept across
//! connections would keep the last VMM's state (owner claimed, vrings, memory): the next
//! VMM's SET_OWNER would fail. So the daemon makes a fresh `VhostUserDaemon` (fresh vrings,
//! fresh memory, a fresh worker) for every connection, with `start` (accept) and `wait`
//! (until the request thread ends), and drops it after, which stops and joins its worker.
//!
//! What the library does on its own, found by reading vhost 0.18 and vhost-user-backend 0.24:
//! - A message it cannot parse (garbage, wrong sizes, unknown request, fds where none
//!   belong), a request the handler refuses (SET_OWNER twice, SET_VRING_ADDR outside the
//!   memory table or before one, a queue index past 2, features not offered) ends the
//!   request loop with an error: the connection is over. With REPLY_ACK negotiated the VMM
//!   first hears the failure.
//! - A VMM that hangs up ends it with `Disconnected` (or `PartialMessage` mid-message).
//! - GET_CONFIG outside the config space is answered with an empty payload (the protocol's
//!   error) and the connection goes on; the device ends it (see [`VsockDevice`]).
//! - SET_VRING_KICK before SET_MEM_TABLE is accepted and starts the queue with no memory; the
//!   device ends the connection.
//! - SET_MEM_TABLE maps regions without checking that their files are long enough (the first
//!   access past the end of a file would raise SIGBUS and kill every VM's device); the device
//!   checks before anything reads them. Overflowing region arithmetic is refused by vhost's
//!   message validation; the handler's address translation relies on it.
//! - A panic inside the library's request thread is caught by `wait` (it joins the thread);
//!   the daemon logs it, ends that connection and goes on.
//! - `VhostUserDaemon::accept` spins while a non-blocking listener has no connection; the
//!   daemon waits in `poll` (with its shutdown eventfd) and calls `start` only once the
//!   listener is readable, on a blocking listener.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{Error as BackendError, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::device::{VsockDevice, HANDSHAKE_EVENT};

/// How long the daemon waits for a fresh worker to pick up its vrings: a give-up limit for a
/// thread that is already running, never reached in practice.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// Why a daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Something that is not a socket lies at the socket path.
    #[error(
        "{path}: a file that is not a socket is in the way of the vhost-user socket; \
         remove it or pick another socket path"
    )]
    NotASocket {
        /// The socket path.
        path: PathBuf,
    },
    /// The socket path could not be inspected or a stale socket could not be removed.
    #[error("{path}: cannot clear the way for the vhost-user socket: {source}")]
    Stale {
        /// The socket path.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The socket could not be bound.
    #[error("{path}: cannot listen for the VMM (bind failed): {source}; check the directory exists and is writable")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// A host resource (eventfd, thread) could not be had.
    #[error("cannot set up the vhost-user daemon ({what}): {source}")]
    Host {
        /// What was being made.
        what: &'static str,
        /// What the system said.
        source: io::Error,
    },
    /// Waiting for a VMM failed.
    #[error("{path}: waiting for a VMM failed: {source}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The daemon's thread panicked (a bug in vmq).
    #[error("the vhost-user daemon thread for {path} panicked")]
    Panicked {
        /// The socket path.
        path: PathBuf,
    },
}

/// What a daemon has seen so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DaemonStats {
    /// VMM connections accepted.
    pub accepted: u64,
    /// Connections over: the VMM hung up, broke the protocol, or the daemon shut down.
    pub ended: u64,
    /// Connections the VMM's protocol errors ended (bad or out-of-order messages).
    pub protocol_errors: u64,
}

#[derive(Default)]
struct Stats {
    accepted: AtomicU64,
    ended: AtomicU64,
    protocol_errors: AtomicU64,
}

/// Stops a [`VsockDaemon`] from any thread, promptly: while it waits for a VMM and while it
/// serves one (the connection is shut). Cheap to clone.
#[derive(Clone)]
pub struct ShutdownHandle {
    inner: Arc<ShutdownInner>,
}

struct ShutdownInner {
    requested: AtomicBool,
    evt: EventFd,
    conn: Mutex<Option<vhost_user_backend::ShutdownHandle>>,
}

impl std::fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownHandle")
            .field("requested", &self.is_requested())
            .finish()
    }
}

impl ShutdownHandle {
    fn new() -> io::Result<Self> {
        Ok(Self {
            inner: Arc::new(ShutdownInner {
                requested: AtomicBool::new(false),
                evt: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
                conn: Mutex::new(None),
            }),
        })
    }

    /// Asks the daemon to stop: it closes the VMM's connection if there is one, stops the
    /// device's owner, removes its socket and ends its thread.
    pub fn shutdown(&self) {
        self.inner.requested.store(true, Ordering::SeqCst);
        if let Err(e) = self.inner.evt.write(1) {
            log::error!("vhost-user daemon: cannot signal shutdown: {e}");
        }
        if let Some(c) = self.conn().as_ref() {
            c.shutdown();
        }
    }

    /// Whether shutdown was asked for.
    pub fn is_requested(&self) -> bool {
        self.inner.requested.load(Ordering::SeqCst)
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Option<vhost_user_backend::ShutdownHandle>> {
        self.inner.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the connection to shut; shuts it at once if shutdown was already asked for
    /// (the flag is set before `shutdown` looks, so one of the two sees the other).
    fn set_conn(&self, c: Option<vhost_user_backend::ShutdownHandle>) {
        let mut slot = self.conn();
        if let Some(c) = c.as_ref() {
            if self.is_requested() {
                c.shutdown();
            }
        }
        *slot = c;
    }
}

/// One VM's vhost-user socket, served on a thread of its own until shut down.
pub struct VsockDaemon {
    path: PathBuf,
    shutdown: ShutdownHandle,
    stats: Arc<Stats>,
    thread: Option<JoinHandle<Result<(), DaemonError>>>,
}

impl std::fmt::Debug for VsockDaemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsockDaemon")
            .field("path", &self.path)
            .field("stats", &self.stats())
            .finish()
    }
}

impl VsockDaemon {
    /// Listens on `socket_path` and serves `device` to one VMM after another.
    ///
    /// A stale socket at the path is removed first; anything else there is left alone and
    /// refused ([`DaemonError::NotASocket`]). Errors in setting up (path, bind, threads) are
    /// returned here; everything after happens on the daemon's thread and is logged.
    pub fn start(socket_path: impl AsRef<Path>, device: VsockDevice) -> Result<Self, DaemonError> {
        let path = socket_path.as_ref().to_path_buf();
        clear_stale_socket(&path)?;
        let listener = UnixListener::bind(&path).map_err(|source| DaemonError::Bind {
            path: path.clone(),
            source,
        })?;
        let ours = fs::symlink_metadata(&path)
            .map(|m| (m.dev(), m.ino()))
            .map_err(|source| DaemonError::Bind {
                path: path.clone(),
                source,
            });
        let ours = match ours {
            Ok(o) => o,
            Err(e) => {
                let _ = fs::remove_file(&path);
                return Err(e);
            }
        };
        let shutdown = ShutdownHandle::new().map_err(|source| {
            let _ = fs::remove_file(&path);
            DaemonError::Host {
                what: "the shutdown eventfd",
                source,
            }
        })?;
        let stats = Arc::new(Stats::default());
        let name = format!("vhu-vsock-{}", device.config().guest_cid);
        let server = Server {
            path: path.clone(),
            ours,
            listener: Listener::from(listener),
            device,
            shutdown: shutdown.clone(),
            stats: stats.clone(),
            name: name.clone(),
        };
        let thread = thread::Builder::new()
            .name(name)
            .spawn(move || server.run())
            .map_err(|source| {
                let _ = fs::remove_file(&path);
                DaemonError::Host {
                    what: "the daemon thread",
                    source,
                }
            })?;
        Ok(Self {
            path: socket_path.as_ref().to_path_buf(),
            shutdown,
            stats,
            thread: Some(thread),
        })
    }

    /// The socket the daemon listens on.
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// A handle that stops the daemon from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// What the daemon has seen so far.
    pub fn stats(&self) -> DaemonStats {
        DaemonStats {
            accepted: self.stats.accepted.load(Ordering::SeqCst),
            ended: self.stats.ended.load(Ordering::SeqCst),
            protocol_errors: self.stats.protocol_errors.load(Ordering::SeqCst),
        }
    }

    /// Stops the daemon and waits for its thread: the VMM's connection is closed, the owner
    /// stopped, the socket removed.
    pub fn shutdown(mut self) -> Result<(), DaemonError> {
        self.shutdown.shutdown();
        self.join_thread()
    }

    /// Waits for the daemon to stop (after a [`ShutdownHandle::shutdown`] elsewhere, or a
    /// failure of its listening socket).
    pub fn join(mut self) -> Result<(), DaemonError> {
        self.join_thread()
    }

    fn join_thread(&mut self) -> Result<(), DaemonError> {
        match self.thread.take() {
            Some(t) => t.join().unwrap_or_else(|_| {
                Err(DaemonError::Panicked {
                    path: self.path.clone(),
                })
            }),
            None => Ok(()),
        }
    }
}

impl Drop for VsockDaemon {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shutdown.shutdown();
            if let Err(e) = self.join_thread() {
                log::error!("{e}");
            }
        }
    }
}

/// Removes a socket left at `path` by an earlier run; refuses anything else.
pub(crate) fn clear_stale_socket(path: &Path) -> Result<(), DaemonError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            fs::remove_file(path).map_err(|source| DaemonError::Stale {
                path: path.to_path_buf(),
                source,
            })
        }
        Ok(_) => Err(DaemonError::NotASocket {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DaemonError::Stale {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// What woke the accept loop.
enum Wake {
    Vmm,
    Shutdown,
}

/// Waits until the listener has a connection or shutdown is signalled.
fn wait_for(listener: RawFd, shutdown: RawFd) -> io::Result<Wake> {
    let mut fds = [
        libc::pollfd {
            fd: listener,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: shutdown,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is an array of two initialised `pollfd`s that outlives the call, and
        // its length is passed with it; poll only writes their `revents`.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents != 0 {
            return Ok(Wake::Shutdown);
        }
        // Anything but "a connection is waiting" on a listening socket (an error, a hang-up)
        // would come back at once on every poll: treat it as the socket failing.
        if fds[0].revents & !libc::POLLIN != 0 {
            return Err(io::Error::other(format!(
                "the listening socket failed (poll events {:#x})",
                fds[0].revents
            )));
        }
        if fds[0].revents & libc::POLLIN != 0 {
            return Ok(Wake::Vmm);
        }
    }
}

/// How a connection ended.
enum Ending {
    /// The VMM hung up, or the daemon shut it.
    Closed,
    /// The VMM broke the protocol.
    ProtocolError(String),
}

/// The daemon's thread.
struct Server {
    path: PathBuf,
    /// (device, inode) of the socket this daemon bound: removed at the end only if still ours.
    ours: (u64, u64),
    listener: Listener,
    device: VsockDevice,
    shutdown: ShutdownHandle,
    stats: Arc<Stats>,
    name: String,
}

impl Server {
    fn run(mut self) -> Result<(), DaemonError> {
        let result = self.serve();
        self.remove_socket();
        result
    }

    fn serve(&mut self) -> Result<(), DaemonError> {
        log::info!(
            "{}: waiting for a VMM on {}",
            self.name,
            self.path.display()
        );
        loop {
            if self.shutdown.is_requested() {
                return Ok(());
            }
            let wake = wait_for(
                self.listener.as_raw_fd(),
                self.shutdown.inner.evt.as_raw_fd(),
            )
            .map_err(|source| DaemonError::Listen {
                path: self.path.clone(),
                source,
            })?;
            match wake {
                Wake::Shutdown => return Ok(()),
                Wake::Vmm => self.serve_one(),
            }
        }
    }

    /// Serves one VMM, from accept to the end of its connection.
    fn serve_one(&mut self) {
        let mut daemon = match self.prepare() {
            Ok(d) => d,
            Err(e) => {
                log::error!("{}: cannot serve a VMM: {e}; turning it away", self.name);
                // Take the connection off the backlog so the loop does not spin on it.
                if let Ok(Some(sock)) = self.listener.accept() {
                    drop(sock);
                }
                self.device.end_connection();
                return;
            }
        };
        if let Err(e) = daemon.start(&mut self.listener) {
            log::warn!("{}: accepting the VMM failed: {e}", self.name);
            self.device.end_connection();
            return;
        }
        self.stats.accepted.fetch_add(1, Ordering::SeqCst);
        log::info!("{}: VMM connected", self.name);
        let handle = daemon.shutdown_handle();
        self.shutdown.set_conn(handle.clone());
        if let Some(h) = handle {
            self.device.set_connection_handle(h);
        }
        let result = daemon.wait();
        self.shutdown.set_conn(None);
        let fault = self.device.end_connection();
        // Joins the vring worker.
        drop(daemon);
        let ending = match (fault, result) {
            (Some(what), _) => Ending::ProtocolError(what),
            (None, Ok(())) => Ending::Closed,
            (None, Err(BackendError::HandleRequest(VhostUserError::Disconnected)))
            | (None, Err(BackendError::HandleRequest(VhostUserError::PartialMessage))) => {
                Ending::Closed
            }
            (None, Err(e)) => Ending::ProtocolError(e.to_string()),
        };
        self.stats.ended.fetch_add(1, Ordering::SeqCst);
        match ending {
            Ending::Closed => log::info!("{}: VMM disconnected; waiting for the next", self.name),
            Ending::ProtocolError(what) => {
                self.stats.protocol_errors.fetch_add(1, Ordering::SeqCst);
                log::error!(
                    "{}: closed the VMM's connection after a protocol error: {what}; \
                     waiting for the next VMM",
                    self.name
                );
            }
        }
    }

    /// A fresh library daemon for the next connection, its worker handed the vrings.
    fn prepare(&self) -> Result<VhostUserDaemon<VsockDevice>, String> {
        let evt = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
            .map_err(|e| format!("cannot make an eventfd: {e}"))?;
        let evt2 = evt
            .try_clone()
            .map_err(|e| format!("cannot clone an eventfd: {e}"))?;
        self.device
            .begin_connection(evt2)
            .map_err(|e| format!("cannot make the worker's exit eventfd: {e}"))?;
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let daemon = VhostUserDaemon::new(self.name.clone(), self.device.clone(), mem)
            .map_err(|e| format!("cannot start the vhost-user handler: {e}"))?;
        let handlers = daemon.get_epoll_handlers();
        let worker = handlers
            .first()
            .ok_or_else(|| "the vhost-user handler has no worker".to_string())?;
        worker
            .register_listener(evt.as_raw_fd(), EventSet::IN, u64::from(HANDSHAKE_EVENT))
            .map_err(|e| format!("cannot register with the worker: {e}"))?;
        evt.write(1)
            .map_err(|e| format!("cannot signal the worker: {e}"))?;
        let ok = self.device.wait_handshake(HANDSHAKE_LIMIT);
        let _ =
            worker.unregister_listener(evt.as_raw_fd(), EventSet::IN, u64::from(HANDSHAKE_EVENT));
        if !ok {
            return Err("the vring worker did not pick up its queues".into());
        }
        Ok(daemon)
    }

    fn remove_socket(&self) {
        match fs::symlink_metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.ours => {
                if let Err(e) = fs::remove_file(&self.path) {
                    log::warn!("{}: cannot remove {}: {e}", self.name, self.path.display());
                }
            }
            _ => {}
        }
        log::info!("{}: stopped", self.name);
    }
}
