//! [`VirtioMmio`]: the register file of one vmq device and its activation.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::TransportError;
use crate::mmio::MmioDevice;
use crate::virtio::spec::*;
use crate::virtio::vmq_device::{
    CONFIG_MAX_PAYLOAD, CONFIG_NUM_QUEUES, CONFIG_QUEUE_NUM_MAX, CONFIG_SIZE, DEVICE_FEATURES,
    DEVICE_ID, NUM_QUEUES, QUEUE_NUM_MAX, RX_QUEUE, TX_QUEUE, VENDOR_ID,
};
use crate::virtio::{DevicePort, DeviceQueue, RingLayout};
use crate::wire::MAX_PAYLOAD;

/// What the device tells its owner.
// One event per activation: boxing the port would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum TransportEvent {
    /// The driver set `DRIVER_OK`: here is the port over its two queues, ready for the switch.
    Activated(DevicePort<GuestMemoryMmap>),
    /// The driver reset the device (status 0) after an activation: the port handed out with
    /// `Activated` is dead. The owner must stop serving it (e.g. `Switch::remove_port`) before
    /// the guest reuses that memory; until then the switch may read stale rings, which is safe
    /// (every access is bounds-checked against this VM's memory) but meaningless.
    Reset,
}

impl std::fmt::Debug for TransportEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Activated(p) => write!(
                f,
                "Activated(rx {} tx {})",
                p.rx_queue_size(),
                p.tx_queue().size()
            ),
            Self::Reset => write!(f, "Reset"),
        }
    }
}

/// Counters of one device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportCounters {
    /// QueueNotify writes that reached the device (an MMIO exit: only when KVM did not absorb
    /// them through an ioeventfd).
    pub notifies: u64,
    /// Activations (`DRIVER_OK` that built a port).
    pub activations: u64,
    /// Resets (status 0 written).
    pub resets: u64,
    /// Guest accesses refused or ignored: read-only or unknown registers, wrong widths, queue
    /// configuration at the wrong time, bad queue sizes, refused features or status values.
    pub rejected: u64,
    /// Activations that failed (the device then set `DEVICE_NEEDS_RESET`).
    pub failed_activations: u64,
}

/// One queue's registers as the driver wrote them.
#[derive(Clone, Copy, Debug, Default)]
struct QueueRegs {
    num: u16,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

/// The register file (everything but the interrupt status).
#[derive(Debug, Default)]
struct Regs {
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    /// The driver wrote a nonzero value to a feature word the device has none in.
    driver_features_unknown: bool,
    queue_sel: u32,
    queues: [QueueRegs; 2],
    activated: bool,
}

struct State {
    regs: Regs,
    events: Sender<TransportEvent>,
    counters: TransportCounters,
}

/// The vmq virtio-mmio device (virtio-mmio version 2, device id
/// [`DEVICE_ID`](crate::virtio::vmq_device::DEVICE_ID)).
///
/// Offers `F_VERSION_1 | F_EVENT_IDX` and two queues of up to
/// [`VirtioMmio::queue_num_max`] entries. The config space at 0x100 is read-only and
/// holds `num_queues: u16` (2), `queue_num_max: u16` and `max_payload: u32` (little endian;
/// see [`crate::virtio::vmq_device`]). `ConfigGeneration` is always 0: the config never changes.
///
/// Register accesses (below 0x100) must be 32 bits wide; others are ignored (reads return 0).
/// `SHMLenLow/High` read as `0xffff_ffff` (no shared-memory regions); other unknown or
/// write-only registers read as 0.
pub struct VirtioMmio {
    mem: GuestMemoryMmap,
    queue_num_max: u16,
    kick: Option<EventFd>,
    interrupt_status: AtomicU32,
    state: Mutex<State>,
}

impl std::fmt::Debug for VirtioMmio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioMmio")
            .field("status", &self.status())
            .field("counters", &self.counters())
            .finish()
    }
}

impl VirtioMmio {
    /// A device over `mem` offering queues of up to `queue_num_max` entries (a power of two
    /// in 1..=32768; other values fall back to
    /// [`QUEUE_NUM_MAX`](crate::virtio::vmq_device::QUEUE_NUM_MAX)). QueueNotify writes that reach
    /// the device signal `kick` (the MMIO-exit fallback when KVM cannot absorb them in an
    /// ioeventfd registered for the same eventfd). Returns the device and the receiver of its
    /// [`TransportEvent`]s.
    pub fn new(
        mem: GuestMemoryMmap,
        queue_num_max: u16,
        kick: Option<EventFd>,
    ) -> (Self, Receiver<TransportEvent>) {
        let (tx, rx) = channel();
        let queue_num_max = if queue_num_max.is_power_of_two() && queue_num_max <= MAX_QUEUE_SIZE {
            queue_num_max
        } else {
            QUEUE_NUM_MAX
        };
        let dev = Self {
            mem,
            queue_num_max,
            kick,
            interrupt_status: AtomicU32::new(0),
            state: Mutex::new(State {
                regs: Regs::default(),
                events: tx,
                counters: TransportCounters::default(),
            }),
        };
        (dev, rx)
    }

    /// The largest queue size the device offers.
    pub fn queue_num_max(&self) -> u16 {
        self.queue_num_max
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.lock().regs.status
    }

    /// Whether the device is activated (`DRIVER_OK` accepted and a port handed out).
    pub fn is_activated(&self) -> bool {
        self.lock().regs.activated
    }

    /// The features both sides agreed on (valid once `FEATURES_OK` is set).
    pub fn negotiated_features(&self) -> u64 {
        let st = self.lock();
        st.regs.driver_features & DEVICE_FEATURES
    }

    /// Counters so far.
    pub fn counters(&self) -> TransportCounters {
        self.lock().counters
    }

    /// Sets `DEVICE_NEEDS_RESET` and raises the config-change interrupt bit: the owner calls
    /// this when the switch found the port broken. The guest sees the bit in `Status` and must
    /// reset the device. Has no effect before `DRIVER_OK` (nothing to reset yet).
    pub fn set_needs_reset(&self) {
        let mut st = self.lock();
        if st.regs.status & STATUS_DRIVER_OK != 0 {
            st.regs.status |= STATUS_NEEDS_RESET;
            self.interrupt_status.fetch_or(INT_CONFIG, Ordering::SeqCst);
        }
    }

    /// Raises the used-ring interrupt bit (`InterruptStatus` bit 0). The owner's notifier calls
    /// it together with waking the guest; guests that poll may ignore it.
    pub fn signal_used(&self) {
        self.interrupt_status.fetch_or(INT_VRING, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means another access panicked; the registers are still plain data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn config_space(&self) -> [u8; CONFIG_SIZE as usize] {
        let mut c = [0u8; CONFIG_SIZE as usize];
        let nq = CONFIG_NUM_QUEUES as usize;
        let qm = CONFIG_QUEUE_NUM_MAX as usize;
        let mp = CONFIG_MAX_PAYLOAD as usize;
        c[nq..nq + 2].copy_from_slice(&NUM_QUEUES.to_le_bytes());
        c[qm..qm + 2].copy_from_slice(&self.queue_num_max.to_le_bytes());
        c[mp..mp + 4].copy_from_slice(&MAX_PAYLOAD.to_le_bytes());
        c
    }

    fn read_reg(&self, st: &mut State, reg: u64) -> u32 {
        let r = &st.regs;
        let sel = r.queue_sel as usize;
        match reg {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => DEVICE_ID,
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match r.device_features_sel {
                0 => DEVICE_FEATURES as u32,
                1 => (DEVICE_FEATURES >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => {
                if sel < r.queues.len() {
                    u32::from(self.queue_num_max)
                } else {
                    0
                }
            }
            REG_QUEUE_READY => r.queues.get(sel).is_some_and(|q| q.ready).into(),
            REG_INTERRUPT_STATUS => self.interrupt_status.load(Ordering::SeqCst),
            REG_STATUS => r.status,
            REG_CONFIG_GENERATION => 0,
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH => u32::MAX,
            _ => {
                log::debug!("virtio-mmio: read of write-only or unknown register {reg:#x}");
                st.counters.rejected += 1;
                0
            }
        }
    }

    fn write_reg(&self, st: &mut State, reg: u64, val: u32) {
        match reg {
            REG_DEVICE_FEATURES_SEL => st.regs.device_features_sel = val,
            REG_DRIVER_FEATURES_SEL => st.regs.driver_features_sel = val,
            REG_DRIVER_FEATURES => self.write_driver_features(st, val),
            REG_QUEUE_SEL => st.regs.queue_sel = val,
            REG_QUEUE_NUM | REG_QUEUE_READY | REG_QUEUE_DESC_LOW | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_AVAIL_LOW | REG_QUEUE_AVAIL_HIGH | REG_QUEUE_USED_LOW
            | REG_QUEUE_USED_HIGH => self.write_queue_reg(st, reg, val),
            REG_QUEUE_NOTIFY => {
                st.counters.notifies += 1;
                if let Some(k) = &self.kick {
                    // A full counter only means a kick is already pending.
                    let _ = k.write(1);
                }
            }
            REG_INTERRUPT_ACK => {
                self.interrupt_status.fetch_and(!val, Ordering::SeqCst);
            }
            REG_STATUS => self.write_status(st, val),
            _ => reject(
                st,
                format_args!("write of {val:#x} to read-only or unknown register {reg:#x}"),
            ),
        }
    }

    fn write_driver_features(&self, st: &mut State, val: u32) {
        if st.regs.status & (STATUS_FEATURES_OK | STATUS_DRIVER_OK) != 0 {
            return reject(
                st,
                format_args!("driver features written after FEATURES_OK"),
            );
        }
        match st.regs.driver_features_sel {
            0 => {
                st.regs.driver_features = (st.regs.driver_features & !0xffff_ffff) | u64::from(val)
            }
            1 => {
                st.regs.driver_features =
                    (st.regs.driver_features & 0xffff_ffff) | (u64::from(val) << 32)
            }
            sel => {
                if val != 0 {
                    st.regs.driver_features_unknown = true;
                    reject(
                        st,
                        format_args!(
                            "driver features word {sel} = {val:#x}: the device offers none there"
                        ),
                    );
                }
            }
        }
    }

    fn write_queue_reg(&self, st: &mut State, reg: u64, val: u32) {
        if st.regs.status & STATUS_DRIVER_OK != 0 {
            return reject(
                st,
                format_args!("queue register {reg:#x} written after DRIVER_OK"),
            );
        }
        let sel = st.regs.queue_sel;
        let max = self.queue_num_max;
        let Some(q) = st.regs.queues.get_mut(sel as usize) else {
            return reject(
                st,
                format_args!(
                    "queue register {reg:#x} written for queue {sel}, which does not exist"
                ),
            );
        };
        if q.ready && !(reg == REG_QUEUE_READY && val == 0) {
            return reject(
                st,
                format_args!("queue {sel} register {reg:#x} written while the queue is ready"),
            );
        }
        let lo = |a: u64| (a & !0xffff_ffff) | u64::from(val);
        let hi = |a: u64| (a & 0xffff_ffff) | (u64::from(val) << 32);
        match reg {
            REG_QUEUE_NUM => {
                if val == 0 || val > u32::from(max) || !val.is_power_of_two() {
                    return reject(
                        st,
                        format_args!("queue {sel} size {val} is not a power of two in 1..={max}"),
                    );
                }
                q.num = val as u16;
            }
            REG_QUEUE_READY => {
                if val == 0 {
                    q.ready = false;
                } else if q.num == 0 {
                    reject(
                        st,
                        format_args!("queue {sel} made ready before its size was set"),
                    );
                } else {
                    q.ready = true;
                }
            }
            REG_QUEUE_DESC_LOW => q.desc = lo(q.desc),
            REG_QUEUE_DESC_HIGH => q.desc = hi(q.desc),
            REG_QUEUE_AVAIL_LOW => q.avail = lo(q.avail),
            REG_QUEUE_AVAIL_HIGH => q.avail = hi(q.avail),
            REG_QUEUE_USED_LOW => q.used = lo(q.used),
            REG_QUEUE_USED_HIGH => q.used = hi(q.used),
            _ => {}
        }
    }

    fn write_status(&self, st: &mut State, val: u32) {
        if val == 0 {
            self.reset(st);
            return;
        }
        let old = st.regs.status;
        // NEEDS_RESET belongs to the device: a driver echoing it back changes nothing.
        let mut new = (val & !STATUS_NEEDS_RESET) | (old & STATUS_NEEDS_RESET);
        if new & old != old {
            return reject(
                st,
                format_args!("status {val:#x} clears bits of {old:#x}; only a reset (0) may"),
            );
        }
        let added = new & !old;
        if added & STATUS_FEATURES_OK != 0 {
            if let Err(why) = self.check_features(&st.regs, new) {
                log::warn!("virtio-mmio: FEATURES_OK refused: {why}");
                st.counters.rejected += 1;
                new &= !STATUS_FEATURES_OK;
            }
        }
        if added & STATUS_DRIVER_OK != 0 && new & STATUS_FEATURES_OK == 0 {
            log::warn!("virtio-mmio: DRIVER_OK without FEATURES_OK ignored");
            st.counters.rejected += 1;
            new &= !STATUS_DRIVER_OK;
        }
        st.regs.status = new;
        if new & !old & STATUS_DRIVER_OK != 0 {
            self.activate(st);
        }
    }

    fn check_features(&self, regs: &Regs, status: u32) -> Result<(), String> {
        let need = STATUS_ACKNOWLEDGE | STATUS_DRIVER;
        if status & need != need {
            return Err(format!("status {status:#x} lacks ACKNOWLEDGE | DRIVER"));
        }
        if regs.driver_features_unknown {
            return Err("the driver set feature bits above 63".into());
        }
        let extra = regs.driver_features & !DEVICE_FEATURES;
        if extra != 0 {
            return Err(format!(
                "the driver asked for features {extra:#x} the device does not offer (offers {:#x})",
                DEVICE_FEATURES
            ));
        }
        if regs.driver_features & (1 << F_VERSION_1) == 0 {
            return Err(
                "the driver did not accept F_VERSION_1 (legacy drivers are not supported)".into(),
            );
        }
        Ok(())
    }

    fn activate(&self, st: &mut State) {
        match self.build_port(&st.regs) {
            Ok(port) => {
                st.regs.activated = true;
                st.counters.activations += 1;
                if st.events.send(TransportEvent::Activated(port)).is_err() {
                    log::warn!("virtio-mmio: activated, but nobody listens for the port");
                }
            }
            Err(e) => {
                log::warn!("virtio-mmio: activation failed: {e}; setting DEVICE_NEEDS_RESET");
                st.counters.failed_activations += 1;
                st.regs.status |= STATUS_NEEDS_RESET;
                self.interrupt_status.fetch_or(INT_CONFIG, Ordering::SeqCst);
            }
        }
    }

    fn build_port(&self, regs: &Regs) -> Result<DevicePort<GuestMemoryMmap>, TransportError> {
        let event_idx = regs.driver_features & (1 << F_EVENT_IDX) != 0;
        let rx = self.build_queue(regs, RX_QUEUE, event_idx)?;
        let tx = self.build_queue(regs, TX_QUEUE, event_idx)?;
        Ok(DevicePort::new(self.mem.clone(), rx, tx)?)
    }

    fn build_queue(
        &self,
        regs: &Regs,
        queue: u16,
        event_idx: bool,
    ) -> Result<DeviceQueue, TransportError> {
        let r = regs.queues[queue as usize];
        if !r.ready {
            return Err(TransportError::QueueNotReady { queue });
        }
        let layout = RingLayout {
            size: r.num,
            desc: r.desc,
            avail: r.avail,
            used: r.used,
        };
        DeviceQueue::new(self.queue_num_max, layout, event_idx)
            .map_err(|source| TransportError::Queue { queue, source })
    }

    fn reset(&self, st: &mut State) {
        let was_active = st.regs.activated;
        st.regs = Regs::default();
        st.counters.resets += 1;
        self.interrupt_status.store(0, Ordering::SeqCst);
        if was_active {
            // The owner may be gone; then nobody serves the port anyway.
            let _ = st.events.send(TransportEvent::Reset);
        }
    }
}

fn reject(st: &mut State, what: std::fmt::Arguments<'_>) {
    log::warn!("virtio-mmio: {what}; ignored");
    st.counters.rejected += 1;
}

impl MmioDevice for VirtioMmio {
    fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let cfg = REG_CONFIG;
        if offset >= cfg {
            let c = self.config_space();
            let start = offset - cfg;
            for (i, b) in data.iter_mut().enumerate() {
                *b = usize::try_from(start + i as u64)
                    .ok()
                    .and_then(|j| c.get(j).copied())
                    .unwrap_or(0);
            }
            return;
        }
        let mut st = self.lock();
        if data.len() != 4 || offset % 4 != 0 {
            return reject(
                &mut st,
                format_args!(
                    "{}-byte read at {offset:#x}: registers are 32-bit",
                    data.len()
                ),
            );
        }
        let v = self.read_reg(&mut st, offset);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let mut st = self.lock();
        if offset >= REG_CONFIG {
            return reject(
                &mut st,
                format_args!("write to the read-only config space at {offset:#x}"),
            );
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return reject(
                &mut st,
                format_args!(
                    "{}-byte write at {offset:#x}: registers are 32-bit",
                    data.len()
                ),
            );
        };
        if offset % 4 != 0 {
            return reject(&mut st, format_args!("unaligned write at {offset:#x}"));
        }
        self.write_reg(&mut st, offset, u32::from_le_bytes(bytes));
    }
}
