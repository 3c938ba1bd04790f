//! In-process peers: a host thread plays a VM's driver over a `GuestMemoryMmap`.
//!
//! [`host_peer`] lays out a port's two rings and their slot buffers in a fresh guest memory and
//! returns both ends: the driver side ([`HostPeer`], what a guest image would run) and the
//! device side ([`DevicePort`], what the switch serves). Tests and benchmarks use it to run the
//! real queues without booting a VM; the switch cannot tell the difference. A [`HostPeer`] is a
//! [`Link`](crate::traffic::Link): it runs the traffic loops (windowed client, echo worker).
//!
//! Feature `test-utils`; not part of the default surface.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::virtio::{DeviceError, DevicePort, DeviceQueue, GuestView};
use crate::virtio::{DriverRing, MsgRx, MsgTx, RingError, RingLayout, SlotArena};

/// Shape of a host peer's port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    /// Descriptors per queue (power of two, 2..=32768).
    pub queue_size: u16,
    /// Bytes per slot buffer: header plus the largest payload.
    pub slot_size: u32,
    /// Negotiate `VIRTIO_F_RING_EVENT_IDX`.
    pub event_idx: bool,
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            queue_size: 256,
            slot_size: 4096 + crate::wire::HEADER_SIZE as u32,
            event_idx: true,
        }
    }
}

/// Why a host peer could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Guest memory could not be allocated.
    #[error("cannot allocate {bytes} bytes of peer memory: {reason}")]
    Memory {
        /// Bytes asked for.
        bytes: u64,
        /// What vm-memory said.
        reason: String,
    },
    /// The driver side rejected the layout.
    #[error("driver ring set-up failed: {0}")]
    Ring(#[from] RingError),
    /// The device side rejected the queues.
    #[error("device port set-up failed: {0}")]
    Device(#[from] DeviceError),
    /// The queue configuration was rejected.
    #[error("queue configuration rejected: {0}")]
    Queue(String),
}

/// The driver ends of a peer's port.
pub struct HostPeer {
    /// Messages the peer sends (its tx queue).
    pub tx: MsgTx<GuestView<GuestMemoryMmap>, Vec<u16>>,
    /// Messages delivered to the peer (its rx queue).
    pub rx: MsgRx<GuestView<GuestMemoryMmap>, Vec<u16>>,
    mem: GuestMemoryMmap,
}

impl HostPeer {
    /// The peer's guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }
}

/// `x` rounded up to a 4 KiB page.
pub(crate) const fn page_up(x: u64) -> u64 {
    (x + 4095) & !4095
}

/// Builds a peer: memory, two driver rings (rx posted full), and the matching device port.
pub fn host_peer(cfg: PeerConfig) -> Result<(HostPeer, DevicePort<GuestMemoryMmap>), PeerError> {
    if !RingLayout::valid_size(cfg.queue_size) {
        return Err(RingError::InvalidSize(cfg.queue_size).into());
    }
    let size = peer_bytes(cfg);
    let mem =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size as usize)]).map_err(|e| {
            PeerError::Memory {
                bytes: size,
                reason: e.to_string(),
            }
        })?;
    host_peer_on(mem, cfg)
}

/// Bytes a peer of shape `cfg` uses from address 0 ([`host_peer_on`] needs at least that).
pub fn peer_bytes(cfg: PeerConfig) -> u64 {
    let ring_bytes = page_up(RingLayout::total_bytes(cfg.queue_size));
    let arena_bytes = page_up(SlotArena::bytes(cfg.queue_size, cfg.slot_size));
    0x1000 + 2 * ring_bytes + 2 * arena_bytes
}

/// [`host_peer`] in memory the caller made (say memfd-backed RAM for page hand-off): the rings
/// and slots take [`peer_bytes`] from address 0, the rest is the caller's.
pub fn host_peer_on(
    mem: GuestMemoryMmap,
    cfg: PeerConfig,
) -> Result<(HostPeer, DevicePort<GuestMemoryMmap>), PeerError> {
    let qs = cfg.queue_size;
    if !RingLayout::valid_size(qs) {
        return Err(RingError::InvalidSize(qs).into());
    }
    let ring_bytes = page_up(RingLayout::total_bytes(qs));
    let arena_bytes = page_up(SlotArena::bytes(qs, cfg.slot_size));
    let rx_ring = 0x1000u64;
    let tx_ring = rx_ring + ring_bytes;
    let rx_arena = tx_ring + ring_bytes;
    let tx_arena = rx_arena + arena_bytes;
    let size = tx_arena + arena_bytes;
    use vm_memory::GuestMemoryBackend;
    if mem.last_addr().0 + 1 < size {
        return Err(PeerError::Memory {
            bytes: size,
            reason: "the memory given is smaller".into(),
        });
    }
    let rmem = GuestView::new(mem.clone());
    let rx_layout = RingLayout::contiguous(rx_ring, qs);
    let tx_layout = RingLayout::contiguous(tx_ring, qs);
    let state = || vec![0u16; 2 * qs as usize];
    let mut rx = MsgRx::new(
        DriverRing::new(rmem.clone(), rx_layout, state(), cfg.event_idx)?,
        SlotArena {
            base: rx_arena,
            slot_size: cfg.slot_size,
        },
    );
    let tx = MsgTx::new(
        DriverRing::new(rmem, tx_layout, state(), cfg.event_idx)?,
        SlotArena {
            base: tx_arena,
            slot_size: cfg.slot_size,
        },
    );
    rx.post_all()?;
    rx.flush()?;
    let port = DevicePort::new(
        mem.clone(),
        device_queue(rx_layout, cfg.event_idx)?,
        device_queue(tx_layout, cfg.event_idx)?,
    )?;
    Ok((HostPeer { tx, rx, mem }, port))
}

/// A device-side queue configured at `layout`, ready.
pub fn device_queue(layout: RingLayout, event_idx: bool) -> Result<DeviceQueue, PeerError> {
    DeviceQueue::new(layout.size, layout, event_idx).map_err(|e| PeerError::Queue(e.to_string()))
}

/// Spins on the rings this many times per [`Link::wait`](crate::traffic::Link::wait).
const WAIT_SPINS: u32 = 4096;

/// A host peer runs the traffic loops: publishing needs no notification (the switch polls
/// host peers), waiting spins a bounded while, and any error is a bug in the test.
impl crate::traffic::Link for HostPeer {
    type Memory = GuestView<GuestMemoryMmap>;
    type State = Vec<u16>;
    type Error = RingError;

    fn tx(&mut self) -> &mut MsgTx<GuestView<GuestMemoryMmap>, Vec<u16>> {
        &mut self.tx
    }

    fn rx(&mut self) -> &mut MsgRx<GuestView<GuestMemoryMmap>, Vec<u16>> {
        &mut self.rx
    }

    fn flush_tx(&mut self) -> Result<(), RingError> {
        self.tx.flush().map(drop)
    }

    fn flush_rx(&mut self) -> Result<(), RingError> {
        self.rx.flush().map(drop)
    }

    fn wait(&mut self, want_tx: bool) -> Result<(), RingError> {
        for _ in 0..WAIT_SPINS {
            if self.rx.ring().has_used()? || (want_tx && self.tx.ring().has_used()?) {
                return Ok(());
            }
            std::hint::spin_loop();
        }
        Ok(())
    }

    fn fault(&mut self, e: RingError) {
        panic!("host peer: {e}");
    }
}
