//! [`VmmFrontend`]: a VMM played in Rust, for tests (feature `test-utils`).
//!
//! It does what QEMU does for a `vhost-user-vsock` device, over a real vhost-user socket:
//! guest memory in a memfd (one region at [`FrontendConfig::guest_base`], handed over with
//! SET_MEM_TABLE), SET_OWNER, feature and protocol-feature negotiation, GET_CONFIG, and per
//! queue SET_VRING_NUM/ADDR/BASE/CALL/KICK/ENABLE with ring addresses in this process's
//! mapping. Then it plays the guest's driver on the three split rings with vmq's own driver
//! ([`DriverRing`] over a [`GuestView`]): rx buffers posted up front, packets sent on tx (with
//! a kick when EVENT_IDX asks for one), packets taken from rx, call eventfds waited on.
//!
//! Packets are raw bytes: the 44-byte vsock header and its payload, as the guest would write
//! them.
//!
//! For hostile tests it also sends what a broken VMM would: a bad SET_VRING_ADDR, messages out
//! of order (through [`VmmFrontend::vhost`]), a memory table past the end of its file, garbage
//! bytes; and it can tell when the device closed the connection.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap, MmapRegion,
};
use vmm_sys_util::eventfd::EventFd;

use super::device::{CONFIG_SIZE, VIRTIO_VSOCK_F_SEQPACKET};
use super::{EVENT_QUEUE, NUM_QUEUES, RX_QUEUE, TX_QUEUE, VSOCK_HEADER_SIZE};
use crate::virtio::{Buf, DriverRing, GuestView, RingError, RingLayout};

/// Event buffers the frontend posts on the event queue (Linux posts 8).
const EVENT_BUFFERS: u16 = 8;
/// How long the frontend waits for any reply before it gives up (the socket's read timeout).
const REPLY_LIMIT: Duration = Duration::from_secs(60);
/// Bytes of one event buffer (`struct virtio_vsock_event`: le32 id).
const EVENT_SIZE: u32 = 4;

/// Shape of the frontend's guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrontendConfig {
    /// Descriptors per queue (a power of two).
    pub queue_size: u16,
    /// Bytes of each rx buffer (Linux: 4096 + the 44-byte header).
    pub rx_buf_size: u32,
    /// Bytes of each tx slot: the largest packet [`VmmFrontend::send`] takes.
    pub tx_buf_size: u32,
    /// Negotiate `VIRTIO_RING_F_EVENT_IDX`.
    pub event_idx: bool,
    /// Negotiate `VIRTIO_VSOCK_F_SEQPACKET` (a backend without it, like vhost-device-vsock,
    /// needs `false`).
    pub seqpacket: bool,
    /// Guest-physical address of the memory region (page aligned; not the host address, so
    /// that the device's translation is exercised).
    pub guest_base: u64,
}

impl Default for FrontendConfig {
    fn default() -> Self {
        Self {
            queue_size: 256,
            rx_buf_size: 4096 + VSOCK_HEADER_SIZE as u32,
            tx_buf_size: 4096 + VSOCK_HEADER_SIZE as u32,
            event_idx: true,
            seqpacket: true,
            guest_base: 0x10_0000,
        }
    }
}

/// What went wrong in the played VMM.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// A vhost-user request failed (the device refused it, or the connection is gone).
    #[error("vhost-user request failed: {0}")]
    Vhost(#[from] vhost::Error),
    /// The driver side of a ring failed.
    #[error("driver ring: {0}")]
    Ring(#[from] RingError),
    /// A host call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// What the system said.
        source: io::Error,
    },
    /// Guest memory could not be built.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The device does not offer a feature the frontend needs.
    #[error("the device does not offer features {0:#x}")]
    MissingFeatures(u64),
    /// The device answered GET_CONFIG with the wrong size.
    #[error("GET_CONFIG answered {0} bytes, expected 8")]
    BadConfig(usize),
    /// All tx descriptors are in flight.
    #[error("the tx queue is full")]
    TxFull,
    /// A packet is larger than a tx slot.
    #[error("a {len}-byte packet does not fit a {slot}-byte tx slot")]
    TooLarge {
        /// Packet bytes.
        len: usize,
        /// Slot bytes.
        slot: u32,
    },
}

type Ring = DriverRing<GuestView<GuestMemoryMmap>, Vec<u16>>;

/// Where the guest's rings and buffers lie (guest-physical).
#[derive(Clone, Copy, Debug)]
struct Layout {
    rings: [RingLayout; NUM_QUEUES],
    rx_arena: u64,
    tx_arena: u64,
    ev_arena: u64,
    size: u64,
}

const fn page_up(x: u64) -> u64 {
    (x + 4095) & !4095
}

impl Layout {
    fn new(cfg: &FrontendConfig) -> Self {
        let qs = cfg.queue_size;
        let ring = page_up(RingLayout::total_bytes(qs));
        let base = cfg.guest_base;
        let rings = [0u64, 1, 2].map(|i| RingLayout::contiguous(base + i * ring, qs));
        let rx_arena = base + 3 * ring;
        let tx_arena = rx_arena + page_up(u64::from(qs) * u64::from(cfg.rx_buf_size));
        let ev_arena = tx_arena + page_up(u64::from(qs) * u64::from(cfg.tx_buf_size));
        let end = ev_arena + page_up(u64::from(EVENT_BUFFERS) * u64::from(EVENT_SIZE));
        Self {
            rings,
            rx_arena,
            tx_arena,
            ev_arena,
            size: end - base,
        }
    }
}

/// A VMM with one vsock device, connected to a vmq daemon.
pub struct VmmFrontend {
    vhost: Frontend,
    sock: UnixStream,
    cfg: FrontendConfig,
    mem: GuestMemoryMmap,
    layout: Layout,
    rings: [Ring; NUM_QUEUES],
    kick: [EventFd; NUM_QUEUES],
    call: [EventFd; NUM_QUEUES],
    features: u64,
    cid: Option<u64>,
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> FrontendError {
    move |source| FrontendError::Io { what, source }
}

/// A memfd-backed guest memory of `size` bytes at `base`.
fn memfd_memory(base: u64, size: u64) -> Result<GuestMemoryMmap, FrontendError> {
    // SAFETY: the name is a NUL-terminated string that outlives the call; memfd_create reads
    // only it and returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"vmq-guest".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io_err("memfd_create")(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(io_err("sizing the memfd"))?;
    let len = usize::try_from(size).map_err(|e| FrontendError::Memory(e.to_string()))?;
    let region = MmapRegion::from_file(FileOffset::new(file, 0), len)
        .map_err(|e| FrontendError::Memory(e.to_string()))?;
    let region = GuestRegionMmap::new(region, GuestAddress(base))
        .ok_or_else(|| FrontendError::Memory("region does not fit the address space".into()))?;
    GuestMemoryMmap::from_regions(vec![region]).map_err(|e| FrontendError::Memory(e.to_string()))
}

impl VmmFrontend {
    /// Connects to the daemon at `path` and sets up the guest's memory and rings (rx and event
    /// buffers posted), sending no message yet.
    pub fn connect_raw(path: impl AsRef<Path>, cfg: FrontendConfig) -> Result<Self, FrontendError> {
        if !RingLayout::valid_size(cfg.queue_size) {
            return Err(RingError::InvalidSize(cfg.queue_size).into());
        }
        let layout = Layout::new(&cfg);
        let mem = memfd_memory(cfg.guest_base, layout.size)?;
        let view = GuestView::new(mem.clone());
        let qs = cfg.queue_size;
        let ring = |i: usize| {
            Ring::new(
                view.clone(),
                layout.rings[i],
                vec![0; 2 * qs as usize],
                cfg.event_idx,
            )
        };
        let mut rings = [ring(0)?, ring(1)?, ring(2)?];
        for _ in 0..qs {
            let head = rings[RX_QUEUE as usize]
                .next_head()
                .ok_or(FrontendError::TxFull)?;
            let addr = layout.rx_arena + u64::from(head) * u64::from(cfg.rx_buf_size);
            rings[RX_QUEUE as usize].add(&[Buf::writable(addr, cfg.rx_buf_size)])?;
        }
        for _ in 0..EVENT_BUFFERS.min(qs) {
            let head = rings[EVENT_QUEUE as usize]
                .next_head()
                .ok_or(FrontendError::TxFull)?;
            let addr = layout.ev_arena + u64::from(head) * u64::from(EVENT_SIZE);
            rings[EVENT_QUEUE as usize].add(&[Buf::writable(addr, EVENT_SIZE)])?;
        }
        rings[RX_QUEUE as usize].publish()?;
        rings[EVENT_QUEUE as usize].publish()?;
        let sock = UnixStream::connect(path).map_err(io_err("connecting to the daemon"))?;
        // A give-up limit: a wedged device fails the test instead of hanging it.
        sock.set_read_timeout(Some(REPLY_LIMIT))
            .map_err(io_err("socket timeout"))?;
        let vhost = Frontend::from_stream(
            sock.try_clone().map_err(io_err("cloning the socket"))?,
            NUM_QUEUES as u64,
        );
        let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("eventfd"));
        Ok(Self {
            vhost,
            sock,
            cfg,
            mem,
            layout,
            rings,
            kick: [evt()?, evt()?, evt()?],
            call: [evt()?, evt()?, evt()?],
            features: 0,
            cid: None,
        })
    }

    /// Connects and brings the device up as QEMU does: [`VmmFrontend::negotiate`],
    /// [`VmmFrontend::set_mem_table`], then every queue.
    pub fn connect(path: impl AsRef<Path>, cfg: FrontendConfig) -> Result<Self, FrontendError> {
        let mut fe = Self::connect_raw(path, cfg)?;
        fe.negotiate()?;
        fe.set_mem_table()?;
        fe.start_queues([0; NUM_QUEUES])?;
        Ok(fe)
    }

    /// SET_OWNER, GET/SET_FEATURES (VERSION_1, SEQPACKET, EVENT_IDX if configured, protocol
    /// features), GET/SET_PROTOCOL_FEATURES (CONFIG, MQ, REPLY_ACK: every later request waits
    /// for the device's verdict), GET_QUEUE_NUM, GET_CONFIG. Returns the guest's CID.
    pub fn negotiate(&mut self) -> Result<u64, FrontendError> {
        self.vhost.set_owner()?;
        let offered = self.vhost.get_features()?;
        let mut want =
            (1u64 << VIRTIO_F_VERSION_1) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.cfg.seqpacket {
            want |= 1u64 << VIRTIO_VSOCK_F_SEQPACKET;
        }
        if self.cfg.event_idx {
            want |= 1u64 << VIRTIO_RING_F_EVENT_IDX;
        }
        if offered & want != want {
            return Err(FrontendError::MissingFeatures(want & !offered));
        }
        self.vhost.set_features(want)?;
        self.features = want;
        let proto = self.vhost.get_protocol_features()?;
        let need = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK;
        if !proto.contains(need) {
            return Err(FrontendError::MissingFeatures((need - proto).bits()));
        }
        self.vhost.set_protocol_features(need)?;
        self.vhost.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        let queues = self.vhost.get_queue_num()?;
        if queues != NUM_QUEUES as u64 {
            return Err(FrontendError::Memory(format!("device has {queues} queues")));
        }
        let cid = self.read_cid()?;
        self.cid = Some(cid);
        Ok(cid)
    }

    /// GET_CONFIG of the whole config space: the guest's CID.
    pub fn read_cid(&mut self) -> Result<u64, FrontendError> {
        let (_, bytes) = self.vhost.get_config(
            0,
            CONFIG_SIZE as u32,
            VhostUserConfigFlags::WRITABLE,
            &[0u8; CONFIG_SIZE],
        )?;
        let arr: [u8; CONFIG_SIZE] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| FrontendError::BadConfig(bytes.len()))?;
        Ok(u64::from_le_bytes(arr))
    }

    /// The CID read by [`VmmFrontend::negotiate`].
    pub fn cid(&self) -> Option<u64> {
        self.cid
    }

    /// The virtio features acked.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The memory region as SET_MEM_TABLE describes it (fd, host address, guest address).
    pub fn region_info(&self) -> Result<VhostUserMemoryRegionInfo, FrontendError> {
        let region = self
            .mem
            .iter()
            .next()
            .ok_or_else(|| FrontendError::Memory("no region".into()))?;
        VhostUserMemoryRegionInfo::from_guest_region(region).map_err(FrontendError::Vhost)
    }

    /// SET_MEM_TABLE with the guest's one region.
    pub fn set_mem_table(&mut self) -> Result<(), FrontendError> {
        let info = self.region_info()?;
        self.vhost.set_mem_table(&[info])?;
        Ok(())
    }

    /// Host (this process's) address of guest-physical `gpa`.
    fn host_addr(&self, gpa: u64) -> Result<u64, FrontendError> {
        let info = self.region_info()?;
        Ok(info.userspace_addr + (gpa - info.guest_phys_addr))
    }

    /// SET_VRING_ADDR for queue `index` with the frontend's real ring addresses.
    pub fn set_vring_addr(&mut self, index: u16) -> Result<(), FrontendError> {
        let l = self.layout.rings[index as usize];
        let data = VringConfigData {
            queue_max_size: self.cfg.queue_size,
            queue_size: self.cfg.queue_size,
            flags: 0,
            desc_table_addr: self.host_addr(l.desc)?,
            used_ring_addr: self.host_addr(l.used)?,
            avail_ring_addr: self.host_addr(l.avail)?,
            log_addr: None,
        };
        self.vhost.set_vring_addr(index as usize, &data)?;
        Ok(())
    }

    /// Guest-physical addresses of queue `index`'s avail and used rings.
    pub fn ring_parts(&self, index: u16) -> (u64, u64) {
        let l = self.layout.rings[index as usize];
        (l.avail, l.used)
    }

    /// SET_VRING_ADDR for queue `index` with rings at the given guest-physical addresses
    /// (translated to this process's mapping, as a VMM does).
    pub fn set_vring_addr_gpa(
        &mut self,
        index: u16,
        desc: u64,
        avail: u64,
        used: u64,
    ) -> Result<(), FrontendError> {
        let data = VringConfigData {
            queue_max_size: self.cfg.queue_size,
            queue_size: self.cfg.queue_size,
            flags: 0,
            desc_table_addr: self.host_addr(desc)?,
            used_ring_addr: self.host_addr(used)?,
            avail_ring_addr: self.host_addr(avail)?,
            log_addr: None,
        };
        self.vhost.set_vring_addr(index as usize, &data)?;
        Ok(())
    }

    /// Hostile: SET_VRING_ADDR for queue `index` with a descriptor table at a host address
    /// outside the memory table.
    pub fn send_bad_vring_addr(&mut self, index: u16) -> Result<(), FrontendError> {
        let l = self.layout.rings[index as usize];
        let data = VringConfigData {
            queue_max_size: self.cfg.queue_size,
            queue_size: self.cfg.queue_size,
            flags: 0,
            desc_table_addr: 0x10,
            used_ring_addr: self.host_addr(l.used)?,
            avail_ring_addr: self.host_addr(l.avail)?,
            log_addr: None,
        };
        self.vhost.set_vring_addr(index as usize, &data)?;
        Ok(())
    }

    /// Brings queue `index` up at avail index `base`: NUM, ADDR, BASE, CALL, KICK, ENABLE.
    pub fn start_queue(&mut self, index: u16, base: u16) -> Result<(), FrontendError> {
        let i = index as usize;
        self.vhost.set_vring_num(i, self.cfg.queue_size)?;
        self.set_vring_addr(index)?;
        self.vhost.set_vring_base(i, base)?;
        self.vhost.set_vring_call(i, &self.call[i])?;
        self.vhost.set_vring_kick(i, &self.kick[i])?;
        self.vhost.set_vring_enable(i, true)?;
        Ok(())
    }

    /// Brings all queues up at `bases` (zeros for a fresh device).
    pub fn start_queues(&mut self, bases: [u16; NUM_QUEUES]) -> Result<(), FrontendError> {
        for (i, base) in bases.into_iter().enumerate() {
            self.start_queue(i as u16, base)?;
        }
        Ok(())
    }

    /// Stops the device as QEMU does: SET_VRING_ENABLE 0 and GET_VRING_BASE on every queue.
    /// Returns the bases (the device's next avail index of each queue).
    pub fn stop_queues(&mut self) -> Result<[u16; NUM_QUEUES], FrontendError> {
        let mut bases = [0u16; NUM_QUEUES];
        for (i, base) in bases.iter_mut().enumerate() {
            self.vhost.set_vring_enable(i, false)?;
            // The base is an avail index: 16 bits on a split ring.
            *base = self.vhost.get_vring_base(i)? as u16;
        }
        Ok(bases)
    }

    /// The used index of queue `index` as the device last published it.
    pub fn used_idx(&self, index: u16) -> Result<u16, FrontendError> {
        let view = self.rings[index as usize].memory();
        Ok(crate::virtio::RingMemory::load_u16(
            view,
            self.layout.rings[index as usize].used + 2,
        )?)
    }

    /// Chains the driver made available on queue `index` so far (its avail index).
    pub fn avail_idx(&self, index: u16) -> Result<u16, FrontendError> {
        let view = self.rings[index as usize].memory();
        Ok(crate::virtio::RingMemory::load_u16(
            view,
            self.layout.rings[index as usize].avail + 2,
        )?)
    }

    /// Sends one packet (header and payload) on tx, kicking if the device asks.
    pub fn send(&mut self, packet: &[u8]) -> Result<(), FrontendError> {
        self.reclaim_tx()?;
        let slot = self.cfg.tx_buf_size;
        let len = u32::try_from(packet.len())
            .ok()
            .filter(|&l| l <= slot)
            .ok_or(FrontendError::TooLarge {
                len: packet.len(),
                slot,
            })?;
        let tx = &mut self.rings[TX_QUEUE as usize];
        let head = tx.next_head().ok_or(FrontendError::TxFull)?;
        let addr = self.layout.tx_arena + u64::from(head) * u64::from(slot);
        crate::virtio::RingMemory::write(tx.memory(), addr, packet)?;
        tx.add(&[Buf::readable(addr, len)])?;
        if tx.publish()? {
            self.kick[TX_QUEUE as usize]
                .write(1)
                .map_err(io_err("kicking tx"))?;
        }
        Ok(())
    }

    /// Takes back tx chains the device finished; returns how many.
    pub fn reclaim_tx(&mut self) -> Result<usize, FrontendError> {
        let tx = &mut self.rings[TX_QUEUE as usize];
        Ok(tx.pop_used_batch(usize::MAX, |_| {})?)
    }

    /// Tx chains sent and not yet returned by the device.
    pub fn tx_outstanding(&self) -> u16 {
        self.rings[TX_QUEUE as usize].outstanding()
    }

    /// Takes the next packet the device delivered on rx, if any, and posts its buffer again.
    pub fn recv(&mut self) -> Result<Option<Vec<u8>>, FrontendError> {
        let size = self.cfg.rx_buf_size;
        let arena = self.layout.rx_arena;
        let rx = &mut self.rings[RX_QUEUE as usize];
        let Some(used) = rx.pop_used()? else {
            return Ok(None);
        };
        let addr = arena + u64::from(used.head) * u64::from(size);
        let mut buf = vec![0u8; used.len.min(size) as usize];
        crate::virtio::RingMemory::read(rx.memory(), addr, &mut buf)?;
        let head = rx.next_head().ok_or(FrontendError::TxFull)?;
        let addr = arena + u64::from(head) * u64::from(size);
        rx.add(&[Buf::writable(addr, size)])?;
        if rx.publish()? {
            self.kick[RX_QUEUE as usize]
                .write(1)
                .map_err(io_err("kicking rx"))?;
        }
        Ok(Some(buf))
    }

    /// Waits up to `timeout` for the device to signal rx or tx (its call eventfds); consumes
    /// the signals. Returns whether one came.
    pub fn wait_call(&self, timeout: Duration) -> Result<bool, FrontendError> {
        let mut fds = [RX_QUEUE, TX_QUEUE].map(|q| libc::pollfd {
            fd: self.call[q as usize].as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `fds` is an array of initialised pollfds that outlives the call, passed with
        // its length; poll writes only their `revents`.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(io_err("waiting for a call")(e));
        }
        for q in [RX_QUEUE, TX_QUEUE] {
            let _ = self.call[q as usize].read();
        }
        Ok(r > 0)
    }

    /// Waits up to `timeout` (a give-up limit) for the next rx packet.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>, FrontendError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = self.recv()? {
                return Ok(Some(p));
            }
            if self.rings[RX_QUEUE as usize].enable_interrupts()? {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            self.wait_call(deadline - now)?;
        }
    }

    /// The vhost-user endpoint, to send requests in any order (hostile tests).
    pub fn vhost(&mut self) -> &mut Frontend {
        &mut self.vhost
    }

    /// Queue `index`'s kick eventfd (what SET_VRING_KICK sends).
    pub fn kick_fd(&self, index: u16) -> &EventFd {
        &self.kick[index as usize]
    }

    /// Queue `index`'s call eventfd (what SET_VRING_CALL sends).
    pub fn call_fd(&self, index: u16) -> &EventFd {
        &self.call[index as usize]
    }

    /// Hostile: writes raw bytes on the vhost-user socket.
    pub fn write_raw(&mut self, bytes: &[u8]) -> Result<(), FrontendError> {
        self.sock
            .write_all(bytes)
            .map_err(io_err("writing to the socket"))
    }

    /// Waits up to `timeout` (a give-up limit) for the device to close the connection;
    /// discards anything it sends meanwhile. Returns whether it closed.
    pub fn wait_closed(&mut self, timeout: Duration) -> Result<bool, FrontendError> {
        let deadline = Instant::now() + timeout;
        self.sock
            .set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(io_err("socket timeout"))?;
        let mut buf = [0u8; 256];
        loop {
            match self.sock.read(&mut buf) {
                Ok(0) => return Ok(true),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(true),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(io_err("reading the socket")(e)),
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        self.sock
            .set_read_timeout(Some(REPLY_LIMIT))
            .map_err(io_err("socket timeout"))?;
        Ok(false)
    }
}
