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

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::virtio::spec::{F_EVENT_IDX, F_VERSION_1};
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap, MmapRegion,
};
use vmm_sys_util::eventfd::EventFd;

use super::config::{CONFIG_SIZE, VIRTIO_VSOCK_F_SEQPACKET};
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

mod control;
mod memory;
mod rings;

use memory::{memfd_memory, Layout};

type Ring = DriverRing<GuestView<GuestMemoryMmap>, Vec<u16>>;

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

    /// The CID read by [`VmmFrontend::negotiate`].
    pub fn cid(&self) -> Option<u64> {
        self.cid
    }

    /// The virtio features acked.
    pub fn features(&self) -> u64 {
        self.features
    }
}
