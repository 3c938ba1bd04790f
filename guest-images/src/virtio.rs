//! The guest driver of the vmq virtio-mmio device: probe, feature negotiation, queue set-up and
//! a message pair ([`MsgTx`] on queue 1, [`MsgRx`] on queue 0) with kick and wait helpers.
//!
//! Memory for the rings, slot buffers and driver state comes from the free RAM the boot block
//! announces ([`FreeMem`]); guest memory is identity mapped, so guest-physical addresses are
//! pointers.

use vmq::abi::image::driver::{self, param, result};
use vmq::abi::image::{exit, MAX_PEER_PAYLOAD};
use vmq::abi::platform::{self, BootBlock};
use vmq::traffic::{self, Link};
use vmq::virtio::spec::*;
use vmq::virtio::vmq_device::{DEVICE_ID, RX_QUEUE, TX_QUEUE};
use vmq::virtio::{DriverRing, MsgRx, MsgTx, RawMemory, RingError, RingLayout, RxMsg, SlotArena};
use vmq::wire::directory::{DirectoryCopy, EntryKind};
use vmq::wire::{MsgHeader, MsgKind, HEADER_SIZE};

use crate::{doorbell_wait, mmio_read32, mmio_write32, results};

/// The driver's send side.
pub type Tx = MsgTx<RawMemory, &'static mut [u16]>;
/// The driver's receive side.
pub type Rx = MsgRx<RawMemory, &'static mut [u16]>;

/// Spins on the rings before a doorbell wait (a wait costs a port-I/O exit or two).
const SPIN: u32 = 4096;
/// Safety-net timeout of one doorbell wait, in microseconds.
const WAIT_TIMEOUT_US: u32 = 10_000;
/// Most directory bytes a guest keeps ([`driver::DIRECTORY_MAX`], what the smallest rx slot
/// [`Options::from_params`] makes holds).
pub use driver::DIRECTORY_MAX;

/// Why the driver could not bring the device up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// No vmq device in any announced MMIO slot.
    NoDevice,
    /// The device does not offer `VIRTIO_F_VERSION_1`, or refused `FEATURES_OK`.
    Features,
    /// A queue is missing or already live.
    Queue,
    /// Not enough free RAM for rings and buffers.
    NoMemory,
    /// The device set `DEVICE_NEEDS_RESET` at `DRIVER_OK` (it refused the queues).
    Refused,
    /// Ring set-up failed.
    Ring(RingError),
}

/// Why the driver stopped working.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverError {
    /// The ring protocol broke (the device returned nonsense).
    Ring(RingError),
    /// The device set `DEVICE_NEEDS_RESET`.
    NeedsReset,
}

impl From<RingError> for DriverError {
    fn from(e: RingError) -> Self {
        Self::Ring(e)
    }
}

impl From<RingError> for ProbeError {
    fn from(e: RingError) -> Self {
        Self::Ring(e)
    }
}

/// A bump allocator over the boot block's free RAM.
#[derive(Debug)]
pub struct FreeMem {
    next: u64,
    end: u64,
}

impl FreeMem {
    /// All of the free RAM the boot block announces.
    pub fn new(bb: &BootBlock) -> Self {
        Self {
            next: bb.free_start,
            end: bb.free_end.min(bb.mem_size),
        }
    }

    /// `bytes` zeroed bytes aligned to `align` (a power of two), or `None` when RAM runs out.
    pub fn alloc(&mut self, bytes: u64, align: u64) -> Option<u64> {
        let start = self.next.checked_add(align - 1)? & !(align - 1);
        let end = start.checked_add(bytes)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        // SAFETY: `start..end` is free RAM (boot block), identity mapped, and handed out once.
        unsafe {
            core::ptr::write_bytes(
                core::ptr::with_exposed_provenance_mut::<u8>(start as usize),
                0,
                bytes as usize,
            )
        };
        Some(start)
    }

    /// A zeroed `u16` slice of `n` entries that lives as long as the guest.
    pub fn alloc_u16(&mut self, n: usize) -> Option<&'static mut [u16]> {
        let at = self.alloc(n as u64 * 2, 8)?;
        // SAFETY: freshly allocated, zeroed (a valid `u16` pattern), aligned, never handed out
        // again, and guest RAM stays mapped for the guest's whole life.
        Some(unsafe {
            core::slice::from_raw_parts_mut(core::ptr::with_exposed_provenance_mut(at as usize), n)
        })
    }

    /// A zeroed byte slice of `n` bytes that lives as long as the guest.
    pub fn alloc_bytes(&mut self, n: usize) -> Option<&'static mut [u8]> {
        let at = self.alloc(n as u64, 8)?;
        // SAFETY: as for `alloc_u16`.
        Some(unsafe {
            core::slice::from_raw_parts_mut(core::ptr::with_exposed_provenance_mut(at as usize), n)
        })
    }

    /// `n` zeroed `u64`s, or `None` when free memory is short.
    pub fn alloc_u64s(&mut self, n: usize) -> Option<&'static mut [u64]> {
        let at = self.alloc((n as u64).checked_mul(8)?, 8)?;
        // SAFETY: as for `alloc_u16`: fresh, 8-byte aligned, identity-mapped free RAM handed out
        // once; the VMM zeroed guest memory, and any bit pattern is a valid u64.
        Some(unsafe {
            core::slice::from_raw_parts_mut(core::ptr::with_exposed_provenance_mut(at as usize), n)
        })
    }

    /// The range not handed out yet, as ring memory.
    fn ring_memory(bb: &BootBlock) -> RawMemory {
        let end = bb.free_end.min(bb.mem_size);
        let len = end.saturating_sub(bb.free_start);
        // SAFETY: free RAM is identity mapped and stays mapped; the view covers exactly it, and
        // the driver only touches rings and slots it allocated there.
        unsafe {
            RawMemory::new(
                core::ptr::with_exposed_provenance_mut(bb.free_start as usize),
                bb.free_start,
                len,
            )
        }
    }
}

/// How the driver is set up.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Queue size asked for (0 = the device's maximum; rounded down to a power of two).
    pub queue_size: u16,
    /// Bytes per slot buffer (header + largest payload).
    pub slot_size: u32,
    /// Park the vCPU on the doorbell when idle (else only spin).
    pub doorbell: bool,
}

impl Options {
    /// From the boot parameters: [`param::QUEUE_SIZE`], [`param::WAIT`] and a slot
    /// for `max_payload` bytes (at least 1 KiB, for the switch's hello directory).
    pub fn from_params(bb: &BootBlock, max_payload: u64) -> Self {
        let payload = max_payload.clamp(1024, MAX_PEER_PAYLOAD + 1024);
        Self {
            queue_size: bb.params[param::QUEUE_SIZE].min(u64::from(MAX_QUEUE_SIZE)) as u16,
            slot_size: ((HEADER_SIZE as u64 + payload + 63) & !63) as u32,
            doorbell: bb.params[param::WAIT] == driver::WAIT_DOORBELL,
        }
    }
}

/// A live vmq device: its two message queues and the helpers to kick and wait.
pub struct Vmq {
    base: u64,
    /// Messages to the switch (queue 1).
    pub tx: Tx,
    /// Messages from the switch (queue 0).
    pub rx: Rx,
    doorbell: bool,
    /// Spins on the rings before a doorbell wait ([`param::SPIN`]; 0 = [`SPIN`]).
    spin: u32,
    port_id: Option<u32>,
    /// The last whole, well-formed directory the switch sent (hello or update).
    dir: DirectoryCopy<DIRECTORY_MAX>,
}

fn reg(base: u64, off: u64) -> u64 {
    base + off
}

fn find_device(bb: &BootBlock) -> Option<u64> {
    (0..bb.mmio_count.min(64))
        .map(|i| bb.mmio_base + i * platform::MMIO_SLOT_SIZE)
        .find(|&b| {
            mmio_read32(reg(b, REG_MAGIC)) == MAGIC
                && mmio_read32(reg(b, REG_VERSION)) == VERSION
                && mmio_read32(reg(b, REG_DEVICE_ID)) == DEVICE_ID
        })
}

impl Vmq {
    /// Finds the device, resets it, negotiates `VERSION_1` (+ `EVENT_IDX` when offered), sets
    /// up rx (queue 0) and tx (queue 1) in `free`, sets `DRIVER_OK` and posts every rx buffer.
    pub fn probe(bb: &BootBlock, free: &mut FreeMem, opts: Options) -> Result<Self, ProbeError> {
        let base = find_device(bb).ok_or(ProbeError::NoDevice)?;
        let set_status = |s: u32| mmio_write32(reg(base, REG_STATUS), s);
        set_status(0);
        let mut status = STATUS_ACKNOWLEDGE;
        set_status(status);
        status |= STATUS_DRIVER;
        set_status(status);

        let mut offered = 0u64;
        for sel in 0..2u32 {
            mmio_write32(reg(base, REG_DEVICE_FEATURES_SEL), sel);
            offered |= u64::from(mmio_read32(reg(base, REG_DEVICE_FEATURES))) << (32 * sel);
        }
        if offered & (1 << F_VERSION_1) == 0 {
            set_status(status | STATUS_FAILED);
            return Err(ProbeError::Features);
        }
        let features = offered & ((1 << F_VERSION_1) | (1 << F_EVENT_IDX));
        for sel in 0..2u32 {
            mmio_write32(reg(base, REG_DRIVER_FEATURES_SEL), sel);
            mmio_write32(
                reg(base, REG_DRIVER_FEATURES),
                (features >> (32 * sel)) as u32,
            );
        }
        status |= STATUS_FEATURES_OK;
        set_status(status);
        if mmio_read32(reg(base, REG_STATUS)) & STATUS_FEATURES_OK == 0 {
            set_status(status | STATUS_FAILED);
            return Err(ProbeError::Features);
        }
        let event_idx = features & (1 << F_EVENT_IDX) != 0;

        let mem = FreeMem::ring_memory(bb);
        let mut rings = [None, None];
        for (q, slot) in rings.iter_mut().enumerate() {
            mmio_write32(reg(base, REG_QUEUE_SEL), q as u32);
            let max =
                mmio_read32(reg(base, REG_QUEUE_NUM_MAX)).min(u32::from(MAX_QUEUE_SIZE)) as u16;
            if max < 2 || mmio_read32(reg(base, REG_QUEUE_READY)) != 0 {
                set_status(status | STATUS_FAILED);
                return Err(ProbeError::Queue);
            }
            let want = if opts.queue_size == 0 {
                max
            } else {
                opts.queue_size.min(max)
            };
            let size = 1u16 << (15 - want.leading_zeros().min(15));
            let size = size.max(2);
            let nomem = ProbeError::NoMemory;
            let ring_at = free
                .alloc(RingLayout::total_bytes(size), 4096)
                .ok_or(nomem)?;
            let arena = free
                .alloc(SlotArena::bytes(size, opts.slot_size), 64)
                .ok_or(nomem)?;
            let state = free.alloc_u16(2 * size as usize).ok_or(nomem)?;
            let layout = RingLayout::contiguous(ring_at, size);
            let ring = DriverRing::new(mem, layout, state, event_idx)?;
            let w = |off, val: u64| mmio_write32(reg(base, off), val as u32);
            w(REG_QUEUE_NUM, u64::from(size));
            w(REG_QUEUE_DESC_LOW, layout.desc);
            w(REG_QUEUE_DESC_HIGH, layout.desc >> 32);
            w(REG_QUEUE_AVAIL_LOW, layout.avail);
            w(REG_QUEUE_AVAIL_HIGH, layout.avail >> 32);
            w(REG_QUEUE_USED_LOW, layout.used);
            w(REG_QUEUE_USED_HIGH, layout.used >> 32);
            w(REG_QUEUE_READY, 1);
            *slot = Some((
                ring,
                SlotArena {
                    base: arena,
                    slot_size: opts.slot_size,
                },
            ));
        }
        let [Some((rx_ring, rx_arena)), Some((tx_ring, tx_arena))] = rings else {
            return Err(ProbeError::Queue);
        };
        status |= STATUS_DRIVER_OK;
        set_status(status);
        if mmio_read32(reg(base, REG_STATUS)) & STATUS_NEEDS_RESET != 0 {
            set_status(status | STATUS_FAILED);
            return Err(ProbeError::Refused);
        }
        let mut dev = Self {
            base,
            tx: MsgTx::new(tx_ring, tx_arena),
            rx: MsgRx::new(rx_ring, rx_arena),
            doorbell: opts.doorbell,
            spin: match bb.params[param::SPIN] {
                0 => SPIN,
                n => n.min(u64::from(u32::MAX)) as u32,
            },
            port_id: None,
            dir: DirectoryCopy::new(),
        };
        dev.rx.post_all()?;
        dev.flush_rx()?;
        results::set(result::PORT_ID, u64::MAX);
        Ok(dev)
    }

    /// This guest's port id, once the switch's hello came (see [`Vmq::note_hello`]).
    pub fn port_id(&self) -> Option<u32> {
        self.port_id
    }

    /// Records the port id a hello carries (its `dst`) in the results, and its directory
    /// (`payload`, see [`Vmq::note_directory`]).
    pub fn note_hello(&mut self, hello: &MsgHeader, payload: &[u8]) {
        self.port_id = Some(hello.dst());
        results::set(result::PORT_ID, u64::from(hello.dst()));
        self.note_directory(hello, payload);
    }

    /// Keeps the directory a hello or a directory update carries in place of the one held, if
    /// it is whole (not cut by the switch to fit a slot), at most [`DIRECTORY_MAX`] bytes, and
    /// well formed (`vmq::wire::directory::DirectoryCopy`). Anything else is counted in
    /// [`result::RING_ERRORS`] and changes nothing: the switch's bytes are checked like any
    /// message's.
    pub fn note_directory(&mut self, hdr: &MsgHeader, payload: &[u8]) {
        match self.dir.replace(payload, hdr.len() as usize) {
            Ok(()) => results::add(result::DIRECTORIES, 1),
            Err(_) => results::add(result::RING_ERRORS, 1),
        }
    }

    /// Handles what the switch itself sends: a hello or a directory update. Returns `false`
    /// for any other message (the caller's to handle). An update that comes before the hello
    /// or is addressed to another port is not this port's: it is counted in
    /// [`result::RING_ERRORS`] and changes nothing.
    pub fn note_switch(&mut self, hdr: &MsgHeader, payload: &[u8]) -> bool {
        match hdr.kind() {
            Some(MsgKind::Hello) => self.note_hello(hdr, payload),
            Some(MsgKind::DirectoryUpdate) if self.port_id == Some(hdr.dst()) => {
                self.note_directory(hdr, payload)
            }
            Some(MsgKind::DirectoryUpdate) => results::add(result::RING_ERRORS, 1),
            _ => return false,
        }
        true
    }

    /// The id the held directory gives the port or service called `name`.
    pub fn lookup(&self, kind: EntryKind, name: &[u8]) -> Option<u32> {
        self.dir.lookup(kind, name)
    }

    /// Waits until the directory names `name` (a port or service that may come later: its
    /// VM added or revived, its service added) and returns its id. Meant for before traffic
    /// starts: any message other than a hello or a directory update is counted in
    /// [`result::RING_ERRORS`] and dropped. `buf` takes the payloads.
    pub fn await_name(&mut self, kind: EntryKind, name: &[u8], buf: &mut [u8]) -> u32 {
        loop {
            if let Some(id) = self.lookup(kind, name) {
                return id;
            }
            let mut progress = false;
            while let Some(m) = self.next_message(buf, &mut progress) {
                let payload = &buf[..m.len.min(buf.len())];
                if !self.note_switch(&m.header, payload) {
                    results::add(result::RING_ERRORS, 1);
                }
            }
            if let Err(e) = self.flush_rx() {
                on_error(e.into());
            }
            if !progress {
                if let Err(e) = self.wait(false) {
                    on_error(e);
                }
            }
        }
    }

    fn kick(&self, queue: u16) {
        mmio_write32(reg(self.base, REG_QUEUE_NOTIFY), u32::from(queue));
        results::add(result::KICKS, 1);
    }

    /// Publishes queued tx messages; kicks queue 1 only if the device asked for it.
    pub fn flush_tx(&mut self) -> Result<(), RingError> {
        if self.tx.flush()? {
            self.kick(TX_QUEUE);
        }
        Ok(())
    }

    /// Publishes re-posted rx buffers; kicks queue 0 only if the device asked for it.
    pub fn flush_rx(&mut self) -> Result<(), RingError> {
        if self.rx.flush()? {
            self.kick(RX_QUEUE);
        }
        Ok(())
    }

    /// Takes the next received message (payload into `buf`); its slot is re-posted at the
    /// next [`Vmq::flush_rx`].
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<Option<RxMsg>, RingError> {
        self.rx.recv(buf)
    }

    /// The next delivered message, with its payload in `buf`; `None` when none is waiting.
    /// A message that fails validation is counted ([`on_error`]) and skipped. Sets `progress`
    /// whenever something was taken off the queue, good or bad.
    pub fn next_message(&mut self, buf: &mut [u8], progress: &mut bool) -> Option<RxMsg> {
        loop {
            match self.rx.recv(buf) {
                Ok(Some(m)) => {
                    *progress = true;
                    return Some(m);
                }
                Ok(None) => return None,
                Err(e) => {
                    *progress = true;
                    on_error(e.into());
                }
            }
        }
    }

    /// Resets the device (status 0): it forgets both queues and stops using them. Bring it
    /// up again with [`Vmq::probe`], which sets up fresh rings in the free memory it is given.
    pub fn reset(&self) {
        mmio_write32(reg(self.base, REG_STATUS), 0);
    }

    /// Whether the device asked for a reset (`DEVICE_NEEDS_RESET`); one MMIO exit.
    pub fn needs_reset(&self) -> bool {
        mmio_read32(reg(self.base, REG_STATUS)) & STATUS_NEEDS_RESET != 0
    }

    /// Waits for work: spins a bounded while on the rx used ring (and the tx used ring with
    /// `want_tx`), then, in doorbell mode, asks for a notification and re-checks before parking
    /// the vCPU (no lost wake-up: a notification after the re-check leaves the work eventfd
    /// signalled and the wait returns at once). Returns early when work shows up; callers loop.
    /// A wait that times out checks whether the device needs a reset.
    pub fn wait(&mut self, want_tx: bool) -> Result<(), DriverError> {
        for _ in 0..self.spin {
            if self.rx.ring().has_used()? || (want_tx && self.tx.ring().has_used()?) {
                return Ok(());
            }
            core::hint::spin_loop();
        }
        if !self.doorbell {
            return Ok(());
        }
        let mut ready = self.rx.ring_mut().enable_interrupts()?;
        if want_tx {
            ready |= self.tx.ring_mut().enable_interrupts()?;
        }
        if !ready {
            results::add(result::WAITS, 1);
            if doorbell_wait(WAIT_TIMEOUT_US) == platform::WAIT_TIMEOUT {
                results::add(result::WAIT_TIMEOUTS, 1);
                if self.needs_reset() {
                    return Err(DriverError::NeedsReset);
                }
            }
        }
        self.rx.ring_mut().disable_interrupts()?;
        self.tx.ring_mut().disable_interrupts()?;
        Ok(())
    }

    /// Sends one message, waiting for a free tx slot if needed (reclaiming finished ones).
    /// Publishes (and maybe kicks) before waiting, so the device can make room.
    pub fn send(&mut self, hdr: &MsgHeader, payload: &[u8]) -> Result<(), DriverError> {
        traffic::send(self, hdr, payload)
    }

    /// Waits until the device has finished with every tx message (the switch delivered them,
    /// or answered the requests among them).
    pub fn drain_tx(&mut self) -> Result<(), DriverError> {
        traffic::drain_tx(self)
    }
}

/// The guest runs vmq's traffic loops: it publishes with a kick when the device asks, waits by
/// spinning then parking on the doorbell, and deals with errors as [`on_error`] says.
impl Link for Vmq {
    type Memory = RawMemory;
    type State = &'static mut [u16];
    type Error = DriverError;

    fn tx(&mut self) -> &mut Tx {
        &mut self.tx
    }

    fn rx(&mut self) -> &mut Rx {
        &mut self.rx
    }

    fn flush_tx(&mut self) -> Result<(), DriverError> {
        Ok(Vmq::flush_tx(self)?)
    }

    fn flush_rx(&mut self) -> Result<(), DriverError> {
        Ok(Vmq::flush_rx(self)?)
    }

    fn wait(&mut self, want_tx: bool) -> Result<(), DriverError> {
        Vmq::wait(self, want_tx)
    }

    fn fault(&mut self, e: DriverError) {
        on_error(e);
    }
}

/// What a guest image does with a driver error: a bad message is counted
/// ([`result::RING_ERRORS`]) and skipped; anything else ends the guest with
/// [`exit::RING_FAULT`].
pub fn on_error(e: DriverError) {
    results::add(result::RING_ERRORS, 1);
    if !matches!(e, DriverError::Ring(RingError::BadMessage(_))) {
        crate::println!("vmq driver error: {e:?}");
        crate::exit(exit::RING_FAULT);
    }
}

/// Brings the device up for an image, or ends the guest with [`exit::NO_DEVICE`].
pub fn probe_or_exit(bb: &BootBlock, free: &mut FreeMem, max_payload: u64) -> Vmq {
    match Vmq::probe(bb, free, Options::from_params(bb, max_payload)) {
        Ok(d) => d,
        Err(e) => {
            crate::println!("vmq probe failed: {e:?}");
            crate::exit(exit::NO_DEVICE)
        }
    }
}
