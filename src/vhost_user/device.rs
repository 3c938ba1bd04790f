//! [`VsockDevice`]: the vhost-user virtio-vsock device, and the seam to the code that drives
//! its queues ([`DeviceOwner`], [`DeviceQueues`]).
//!
//! The device negotiates, keeps the config space and follows the VMM's queue set-up; it does
//! not move a single packet. When the guest's memory is known and its rx and tx queues are
//! ready, it hands them to its [`DeviceOwner`], which drives them from a thread of its own.
//!
//! How the device and its owner share the queues across threads is written in [`super::queues`].

use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{
    GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::EventFd;

use super::{NUM_QUEUES, RX_QUEUE, TX_QUEUE};

use super::config::{
    offered_features, offered_protocol_features, DeviceConfig, DeviceConfigError, CONFIG_SIZE,
};
use super::queues::{DeviceOwner, DeviceQueues};

/// The event id under which the daemon hands the device its vrings before a VMM is accepted
/// (ids `0..NUM_QUEUES` are the queues and `NUM_QUEUES` the worker's exit event).
pub(crate) const HANDSHAKE_EVENT: u16 = NUM_QUEUES as u16 + 1;

/// A vhost-user virtio-vsock device for one guest (clones share the device).
///
/// Implements [`VhostUserBackend`] for vhost-user-backend's request handler; the daemon
/// ([`super::VsockDaemon`]) serves it on a socket. It checks what the library does not:
///
/// - every region of a memory table is a regular file (memfd, hugetlbfs, shm) at least as
///   long as the region's offset plus size, before anyone reads it (vm-memory maps past the
///   end of a file without complaint, and the first access would kill the whole process with
///   SIGBUS);
/// - no queue got a kick eventfd before the first memory table (vhost-user-backend accepts
///   SET_VRING_KICK first and would start the queue with no memory);
/// - a started queue's rings lie in guest memory;
/// - GET_CONFIG reads inside the 8-byte config space; SET_CONFIG is refused (read-only).
///
/// A violation is logged and ends the VMM's connection; the daemon then waits for the next.
#[derive(Clone)]
pub struct VsockDevice {
    inner: Arc<Inner>,
}

impl fmt::Debug for VsockDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VsockDevice")
            .field("config", &self.inner.config)
            .finish()
    }
}

struct Inner {
    config: DeviceConfig,
    owner: Arc<dyn DeviceOwner>,
    state: Mutex<State>,
    /// Signalled when the worker handed the device its vrings (the handshake).
    handshake: Condvar,
}

#[derive(Default)]
struct State {
    conn: Option<Conn>,
    generation: u64,
}

/// What the device knows about the connection in progress.
struct Conn {
    /// The vrings of this connection, handed over by the worker before the VMM was accepted.
    vrings: Option<Vec<VringRwLock>>,
    /// The memory the owner sees: set only from checked tables.
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    mem_set: bool,
    event_idx: bool,
    started: bool,
    /// The eventfd the daemon writes to make the worker call us with the vrings.
    handshake_evt: Option<EventFd>,
    /// Ends the connection (set by the daemon once the VMM is accepted).
    shutdown: Option<vhost_user_backend::ShutdownHandle>,
    /// The first protocol violation the device saw.
    fault: Option<String>,
    /// The vring worker's exit event, made before the worker so that failing to make it
    /// fails the connection set-up instead of leaving a worker nobody can stop.
    exit_event: Option<(EventConsumer, EventNotifier)>,
}

impl VsockDevice {
    /// A device for `config`, driven by `owner`.
    pub fn new(
        config: DeviceConfig,
        owner: Arc<dyn DeviceOwner>,
    ) -> Result<Self, DeviceConfigError> {
        if !crate::vsock::packet::is_guest_cid(config.guest_cid) {
            return Err(DeviceConfigError::BadCid(config.guest_cid));
        }
        let qs = config.max_queue_size;
        if !crate::virtio::RingLayout::valid_size(qs) {
            return Err(DeviceConfigError::BadQueueSize(qs));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                owner,
                state: Mutex::new(State::default()),
                handshake: Condvar::new(),
            }),
        })
    }

    /// The device's configuration.
    pub fn config(&self) -> DeviceConfig {
        self.inner.config
    }

    /// The config space: `guest_cid` as le64.
    pub fn config_space(&self) -> [u8; CONFIG_SIZE] {
        self.inner.config.guest_cid.to_le_bytes()
    }

    /// Whether the owner currently holds the queues (between `started` and `stopped`).
    pub fn is_started(&self) -> bool {
        self.lock().conn.as_ref().is_some_and(|c| c.started)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug in the device or its owner; the
        // state is still consistent field by field, so keep serving rather than poison the
        // daemon.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- the daemon's side: one connection at a time ----

    /// A new connection is being set up: forget the last one. `handshake_evt` is the eventfd
    /// the daemon registered under [`HANDSHAKE_EVENT`].
    pub(crate) fn begin_connection(&self, handshake_evt: EventFd) -> io::Result<()> {
        let exit_event = new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)?;
        let mut st = self.lock();
        if let Some(mut old) = st.conn.take() {
            self.stop_owner(&mut old);
        }
        st.conn = Some(Conn {
            vrings: None,
            mem: GuestMemoryAtomic::new(GuestMemoryMmap::new()),
            mem_set: false,
            event_idx: false,
            started: false,
            handshake_evt: Some(handshake_evt),
            shutdown: None,
            fault: None,
            exit_event: Some(exit_event),
        });
        Ok(())
    }

    /// Waits until the worker handed the device its vrings, giving up after `limit`.
    pub(crate) fn wait_handshake(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut st = self.lock();
        loop {
            if st.conn.as_ref().is_some_and(|c| c.vrings.is_some()) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = match self.inner.handshake.wait_timeout(st, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// The VMM is accepted: `handle` ends its connection. Ends it at once if the device
    /// already saw a violation.
    pub(crate) fn set_connection_handle(&self, handle: vhost_user_backend::ShutdownHandle) {
        let mut st = self.lock();
        if let Some(conn) = st.conn.as_mut() {
            if conn.fault.is_some() {
                handle.shutdown();
            }
            conn.shutdown = Some(handle);
        }
    }

    /// The connection is over: stops the owner and forgets the connection. Returns the
    /// protocol violation that ended it, if the device saw one.
    pub(crate) fn end_connection(&self) -> Option<String> {
        let mut st = self.lock();
        let mut conn = st.conn.take()?;
        self.stop_owner(&mut conn);
        conn.fault
    }

    // ---- internals, all with the state lock held ----

    fn stop_owner(&self, conn: &mut Conn) {
        if conn.started {
            conn.started = false;
            self.inner.owner.stopped();
        }
    }

    /// Records a protocol violation and ends the connection.
    fn fault(conn: &mut Conn, what: String) {
        log::error!("vsock device: {what}; closing the VMM's connection");
        if conn.fault.is_none() {
            conn.fault = Some(what);
        }
        if let Some(h) = conn.shutdown.as_ref() {
            h.shutdown();
        }
    }

    /// Starts the owner if memory is set and rx and tx are ready, enabled and lie in memory.
    fn try_start(&self, generation: &mut u64, conn: &mut Conn) {
        if conn.started || !conn.mem_set || conn.fault.is_some() {
            return;
        }
        let Some(vrings) = conn.vrings.as_ref() else {
            return;
        };
        let mem = conn.mem.memory();
        for index in [RX_QUEUE, TX_QUEUE] {
            let state = vrings[index as usize].get_ref();
            if !(state.get_queue().ready() && state.is_enabled()) {
                return;
            }
            if !state.get_queue().is_valid(&*mem) {
                drop(state);
                Self::fault(
                    conn,
                    format!("queue {index}'s rings (size, addresses) do not lie in guest memory"),
                );
                return;
            }
        }
        *generation += 1;
        conn.started = true;
        let queues = DeviceQueues {
            mem: conn.mem.clone(),
            vrings: vrings.clone(),
            event_idx: conn.event_idx,
            generation: *generation,
        };
        self.inner.owner.started(queues);
    }
}

/// Checks that each region of `mem` is a regular file that covers the region: vm-memory
/// maps past the end of a file, and touching such a page raises SIGBUS.
fn check_backing(mem: &GuestMemoryMmap) -> Result<(), String> {
    for region in mem.iter() {
        let start = region.start_addr().0;
        let Some(fo) = region.file_offset() else {
            return Err(format!(
                "memory region at guest address {start:#x} has no file behind it"
            ));
        };
        let meta = fo.file().metadata().map_err(|e| {
            format!("cannot stat the file of memory region at guest address {start:#x}: {e}")
        })?;
        let ft = meta.file_type();
        if !ft.is_file() {
            let kind = if ft.is_char_device() {
                "a character device"
            } else if ft.is_socket() {
                "a socket"
            } else {
                "not a regular file"
            };
            return Err(format!(
                "memory region at guest address {start:#x} is backed by {kind} (fd {}); \
                 share guest memory from a memfd or a file",
                fo.file().as_raw_fd()
            ));
        }
        let end = fo.start().checked_add(region.len());
        if end.is_none_or(|end| end > meta.len()) {
            return Err(format!(
                "memory region at guest address {start:#x} ({} bytes at file offset {:#x}) \
                 runs past the end of its {}-byte file",
                region.len(),
                fo.start(),
                meta.len()
            ));
        }
    }
    Ok(())
}

impl VhostUserBackend for VsockDevice {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        self.inner.config.max_queue_size as usize
    }

    fn features(&self) -> u64 {
        offered_features()
    }

    fn acked_features(&self, features: u64) {
        let mut st = self.lock();
        if let Some(conn) = st.conn.as_mut() {
            // Features change only while the device is stopped (virtio 3.1.1); a VMM that
            // renegotiates restarts the queues after.
            self.stop_owner(conn);
            conn.event_idx = features & (1u64 << crate::virtio::spec::F_EVENT_IDX) != 0;
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        offered_protocol_features()
    }

    fn reset_device(&self) {
        let mut st = self.lock();
        if let Some(conn) = st.conn.as_mut() {
            self.stop_owner(conn);
        }
    }

    fn set_event_idx(&self, enabled: bool) {
        let mut st = self.lock();
        if let Some(conn) = st.conn.as_mut() {
            conn.event_idx = enabled;
        }
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let space = self.config_space();
        let end = u64::from(offset) + u64::from(size);
        if size == 0 || end > CONFIG_SIZE as u64 {
            let mut st = self.lock();
            if let Some(conn) = st.conn.as_mut() {
                Self::fault(
                    conn,
                    format!(
                        "GET_CONFIG asked for {size} bytes at offset {offset}, outside the \
                         {CONFIG_SIZE}-byte vsock config space"
                    ),
                );
            }
            // An empty reply is the library's "error" for the frontend.
            return Vec::new();
        }
        space[offset as usize..end as usize].to_vec()
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        let what = format!(
            "SET_CONFIG wrote {} bytes at offset {offset}, but the vsock config space is \
             read-only",
            buf.len()
        );
        let mut st = self.lock();
        if let Some(conn) = st.conn.as_mut() {
            Self::fault(conn, what.clone());
        }
        Err(io::Error::new(io::ErrorKind::PermissionDenied, what))
    }

    fn update_memory(&self, atomic: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(conn) = st.conn.as_mut() else {
            return Err(io::Error::other("no connection is in progress"));
        };
        let mem = atomic.memory();
        let mut verdict = check_backing(&mem);
        if verdict.is_ok() && !conn.mem_set {
            if let Some(vrings) = conn.vrings.as_ref() {
                if let Some(i) = vrings.iter().position(|v| v.get_ref().get_kick().is_some()) {
                    verdict = Err(format!(
                        "queue {i} got its kick eventfd (SET_VRING_KICK) before any memory \
                         table (SET_MEM_TABLE)"
                    ));
                }
            }
        }
        if let Err(what) = verdict {
            Self::fault(conn, what.clone());
            return Err(io::Error::new(io::ErrorKind::InvalidInput, what));
        }
        match conn.mem.lock() {
            Ok(g) => g.replace((*mem).clone()),
            Err(p) => p.into_inner().replace((*mem).clone()),
        }
        conn.mem_set = true;
        self.try_start(&mut st.generation, conn);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        vec![(1u64 << NUM_QUEUES) - 1]
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // One worker per connection, created by the daemon right after `begin_connection`
        // made this event.
        self.lock().conn.as_mut().and_then(|c| c.exit_event.take())
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        let mut st = self.lock();
        if let Some(conn) = st.conn.as_mut() {
            if conn.started {
                log::debug!("vsock device: queue {queue_index} stopped by the VMM");
            }
            self.stop_owner(conn);
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(conn) = st.conn.as_mut() else {
            return Ok(());
        };
        if device_event == HANDSHAKE_EVENT {
            if let Some(evt) = conn.handshake_evt.take() {
                let _ = evt.read();
            }
            conn.vrings = Some(vrings.to_vec());
            self.inner.handshake.notify_all();
            return Ok(());
        }
        if device_event as usize >= NUM_QUEUES {
            return Ok(());
        }
        if !evset.contains(EventSet::IN) {
            log::warn!("vsock device: queue {device_event}: unexpected kick event {evset:?}");
            return Ok(());
        }
        if !conn.mem_set {
            Self::fault(
                conn,
                format!("queue {device_event} was started before any memory table (SET_MEM_TABLE)"),
            );
            return Ok(());
        }
        self.try_start(&mut st.generation, conn);
        if conn.started {
            self.inner.owner.kicked(device_event);
        }
        Ok(())
    }
}
