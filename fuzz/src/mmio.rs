//! Target `mmio`: register access sequences against [`VirtioMmio`], then the port it hands out.
//!
//! Every access goes through the device's `MmioDevice` interface at fuzzer-chosen offsets,
//! widths and values. A small model of the virtio-mmio v2 rules (status may only gain bits
//! until a reset, `FEATURES_OK` needs `ACKNOWLEDGE | DRIVER` and an acceptable feature set,
//! `DRIVER_OK` needs `FEATURES_OK`, queue registers are frozen while a queue is ready or the
//! device is live, activation needs both queues ready and inside guest memory) runs alongside
//! and must agree with the device on every register read, on the status after every write and
//! on every activation. When the device activates, the port it hands out is driven by a
//! [`Session`] whose rings are the ones the model recorded.

use std::sync::mpsc::Receiver;

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmq::mmio::MmioDevice;
use vmq::transport::{TransportEvent, VirtioMmio};
use vmq::virtio::spec::*;
use vmq::virtio::vmq_device::*;
use vmq::virtio::RingLayout;
use vmq::wire::MAX_PAYLOAD;

use crate::input::Input;
use crate::session::Session;

const MEM_LEN: u64 = 0x10000;
/// The widest access the fuzzer makes (the device takes only 4-byte register accesses and
/// byte-wise config reads; anything up to this is tried).
const MAX_WIDTH: usize = 16;

/// Registers the fuzzer names most of the time (anything else is a raw offset).
const REGS: &[u64] = &[
    REG_MAGIC,
    REG_VERSION,
    REG_DEVICE_ID,
    REG_VENDOR_ID,
    REG_DEVICE_FEATURES,
    REG_DEVICE_FEATURES_SEL,
    REG_DRIVER_FEATURES,
    REG_DRIVER_FEATURES_SEL,
    REG_QUEUE_SEL,
    REG_QUEUE_NUM_MAX,
    REG_QUEUE_NUM,
    REG_QUEUE_READY,
    REG_QUEUE_NOTIFY,
    REG_INTERRUPT_STATUS,
    REG_INTERRUPT_ACK,
    REG_STATUS,
    REG_QUEUE_DESC_LOW,
    REG_QUEUE_DESC_HIGH,
    REG_QUEUE_AVAIL_LOW,
    REG_QUEUE_AVAIL_HIGH,
    REG_QUEUE_USED_LOW,
    REG_QUEUE_USED_HIGH,
    REG_CONFIG_GENERATION,
    REG_CONFIG,
    REG_CONFIG + 2,
    REG_CONFIG + 4,
];

/// One queue as the driver configured it.
#[derive(Clone, Copy, Debug)]
struct Queue {
    ready: bool,
    ring: RingLayout,
}

impl Default for Queue {
    fn default() -> Self {
        Self {
            ready: false,
            ring: RingLayout {
                size: 0,
                desc: 0,
                avail: 0,
                used: 0,
            },
        }
    }
}

impl Queue {
    /// What `DeviceQueue::new` and `DevicePort::new` accept: every part of the ring aligned
    /// and inside memory. The parts and their sizes (with the trailing event fields) come from
    /// [`RingLayout::parts`], the same helper the driver and the device use.
    fn usable(&self) -> bool {
        self.ready
            && self.ring.parts().iter().all(|&(_, addr, align, len)| {
                addr % align == 0 && addr.checked_add(len).is_some_and(|e| e <= MEM_LEN)
            })
    }
}

/// The model of the feature registers.
#[derive(Clone, Copy, Default, Debug)]
struct Features {
    /// `DeviceFeaturesSel`.
    device_sel: u32,
    /// `DriverFeaturesSel`.
    driver_sel: u32,
    /// The 64 bits the driver wrote.
    driver: u64,
    /// The driver wrote a nonzero word past bit 63.
    driver_unknown: bool,
}

impl Features {
    /// `DriverFeatures` written with `val` at the current selector.
    fn write_driver(&mut self, val: u32) {
        match self.driver_sel {
            0 => self.driver = (self.driver & !0xffff_ffff) | val as u64,
            1 => self.driver = (self.driver & 0xffff_ffff) | ((val as u64) << 32),
            _ => self.driver_unknown |= val != 0,
        }
    }

    /// `DeviceFeatures` as read at the current selector.
    fn device_word(&self) -> u32 {
        match self.device_sel {
            0 => DEVICE_FEATURES as u32,
            1 => (DEVICE_FEATURES >> 32) as u32,
            _ => 0,
        }
    }

    /// Features the device accepts: only offered ones, with `VERSION_1`.
    fn acceptable(&self) -> bool {
        !self.driver_unknown
            && self.driver & !DEVICE_FEATURES == 0
            && self.driver & (1 << F_VERSION_1) != 0
    }
}

/// The model of the device's registers.
#[derive(Default, Debug)]
struct Model {
    status: u32,
    features: Features,
    queue_sel: u32,
    queues: [Queue; 2],
    activated: bool,
    interrupt: u32,
    notifies: u64,
    activations: u64,
}

impl Model {
    fn features_ok(&self) -> bool {
        self.status & (STATUS_ACKNOWLEDGE | STATUS_DRIVER) == STATUS_ACKNOWLEDGE | STATUS_DRIVER
            && self.features.acceptable()
    }

    fn live(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0
    }
}

struct Harness {
    dev: VirtioMmio,
    events: Receiver<TransportEvent>,
    kick: EventFd,
    mem: GuestMemoryMmap,
    qmax: u16,
    m: Model,
    session: Option<Session>,
    slot_size: u32,
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_LEN as usize)])
        .expect("guest memory");
    let asked = match inp.u8() % 4 {
        0 => inp.u16(),
        _ => 1 << (inp.u8() % 9),
    };
    let kick = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let (dev, events) = VirtioMmio::new(mem.clone(), asked, Some(kick.try_clone().unwrap()));
    let qmax = dev.queue_num_max();
    let valid = asked.is_power_of_two() && asked <= 32768;
    assert_eq!(qmax, if valid { asked } else { QUEUE_NUM_MAX });
    let slot_size = inp.pick(&[48u32, 256, 1056]);
    let mut h = Harness {
        dev,
        events,
        kick,
        mem,
        qmax,
        m: Model::default(),
        session: None,
        slot_size,
    };
    while !inp.is_empty() {
        h.step(&mut inp);
    }
    h.finish();
}

impl Harness {
    fn step(&mut self, inp: &mut Input<'_>) {
        match inp.u8() % 8 {
            0 | 1 => {
                let (off, width) = self.access(inp);
                self.read(off, width);
            }
            2 | 3 => {
                let (off, width) = self.access(inp);
                let v = self.value(inp);
                self.write(off, &v.to_le_bytes()[..width.min(8)], width);
            }
            4 => self.bring_up(inp),
            5 => match inp.u8() % 2 {
                0 => {
                    self.dev.set_needs_reset();
                    if self.m.live() {
                        self.m.status |= STATUS_NEEDS_RESET;
                        self.m.interrupt |= INT_CONFIG;
                    }
                }
                _ => {
                    self.dev.signal_used();
                    self.m.interrupt |= INT_VRING;
                }
            },
            _ => {
                if let Some(s) = &mut self.session {
                    s.step(inp);
                }
            }
        }
        self.check();
    }

    fn access(&self, inp: &mut Input<'_>) -> (u64, usize) {
        let off = match inp.u8() % 8 {
            0 => inp.u64(),
            1 => inp.u16() as u64 % 0x120,
            _ => inp.pick(REGS),
        };
        let width = match inp.u8() % 8 {
            0 => inp.u8() as usize % (MAX_WIDTH + 1),
            1 => 1,
            2 => 2,
            3 => 8,
            _ => 4,
        };
        (off, width)
    }

    fn value(&self, inp: &mut Input<'_>) -> u64 {
        match inp.u8() % 4 {
            0 => inp.u64(),
            1 => inp.u8() as u64,
            _ => inp.u32() as u64,
        }
    }

    fn rd(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(&mut self, off: u64, v: u32) {
        self.write(off, &v.to_le_bytes(), 4);
    }

    /// A valid bring-up, with fuzzer-chosen features and ring placements (often good ones).
    fn bring_up(&mut self, inp: &mut Input<'_>) {
        self.wr(REG_STATUS, 0);
        self.wr(REG_STATUS, STATUS_ACKNOWLEDGE);
        self.wr(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        let features = match inp.u8() % 4 {
            0 => inp.u64(),
            1 => 1 << F_VERSION_1,
            _ => DEVICE_FEATURES,
        };
        for sel in 0..2 {
            self.wr(REG_DRIVER_FEATURES_SEL, sel);
            self.wr(REG_DRIVER_FEATURES, (features >> (32 * sel)) as u32);
        }
        let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.wr(REG_STATUS, s);
        let size = match inp.u8() % 4 {
            0 => inp.u16(),
            _ => 1 << (inp.u8() % 5),
        };
        for (q, base) in [(0u32, 0x1000u64), (1, 0x3000)] {
            let l = match inp.u8() % 4 {
                0 => RingLayout {
                    size,
                    desc: inp.u64(),
                    avail: inp.u16() as u64,
                    used: inp.u16() as u64,
                },
                _ => RingLayout::contiguous(base, size),
            };
            self.wr(REG_QUEUE_SEL, q);
            self.wr(REG_QUEUE_NUM, l.size as u32);
            self.wr(REG_QUEUE_DESC_LOW, l.desc as u32);
            self.wr(REG_QUEUE_DESC_HIGH, (l.desc >> 32) as u32);
            self.wr(REG_QUEUE_AVAIL_LOW, l.avail as u32);
            self.wr(REG_QUEUE_AVAIL_HIGH, (l.avail >> 32) as u32);
            self.wr(REG_QUEUE_USED_LOW, l.used as u32);
            self.wr(REG_QUEUE_USED_HIGH, (l.used >> 32) as u32);
            if inp.u8() % 8 != 0 {
                self.wr(REG_QUEUE_READY, 1);
            }
        }
        self.wr(REG_STATUS, s | STATUS_DRIVER_OK);
    }

    /// A read, checked against the model.
    fn read(&mut self, off: u64, width: usize) {
        let mut buf = [0xa5u8; MAX_WIDTH];
        let b = &mut buf[..width];
        self.dev.read(off, b);
        if off >= REG_CONFIG {
            let mut cfg = [0u8; CONFIG_SIZE as usize];
            cfg[CONFIG_NUM_QUEUES as usize..][..2].copy_from_slice(&NUM_QUEUES.to_le_bytes());
            cfg[CONFIG_QUEUE_NUM_MAX as usize..][..2].copy_from_slice(&self.qmax.to_le_bytes());
            cfg[CONFIG_MAX_PAYLOAD as usize..][..4].copy_from_slice(&MAX_PAYLOAD.to_le_bytes());
            for (i, &got) in b.iter().enumerate() {
                let want = (off - REG_CONFIG)
                    .checked_add(i as u64)
                    .and_then(|j| cfg.get(j as usize).copied())
                    .unwrap_or(0);
                assert_eq!(got, want, "config byte at {off:#x}+{i}");
            }
            return;
        }
        if width != 4 || off % 4 != 0 {
            assert!(b.iter().all(|&x| x == 0), "a bad-width read returned data");
            return;
        }
        let v = u32::from_le_bytes(b[..].try_into().unwrap());
        let m = &self.m;
        let sel = m.queue_sel as usize;
        let want = match off {
            REG_MAGIC => Some(MAGIC),
            REG_VERSION => Some(VERSION),
            REG_DEVICE_ID => Some(DEVICE_ID),
            REG_VENDOR_ID => Some(VENDOR_ID),
            REG_DEVICE_FEATURES => Some(m.features.device_word()),
            REG_QUEUE_NUM_MAX => Some(if sel < 2 { self.qmax as u32 } else { 0 }),
            REG_QUEUE_READY => Some(m.queues.get(sel).is_some_and(|q| q.ready) as u32),
            REG_INTERRUPT_STATUS => Some(m.interrupt),
            REG_STATUS => Some(m.status),
            REG_CONFIG_GENERATION => Some(0),
            _ => None,
        };
        if let Some(w) = want {
            assert_eq!(v, w, "register {off:#x}");
        }
    }

    /// A write, applied to the model as the virtio-mmio rules say.
    fn write(&mut self, off: u64, data: &[u8], width: usize) {
        let mut buf = [0u8; MAX_WIDTH];
        let padded = &mut buf[..width];
        let n = data.len().min(width);
        padded[..n].copy_from_slice(&data[..n]);
        let before = self.dev.status();
        self.dev.write(off, padded);
        if off >= REG_CONFIG || width != 4 || off % 4 != 0 {
            assert_eq!(
                self.dev.status(),
                before,
                "an ignored write changed the status"
            );
            return;
        }
        let val = u32::from_le_bytes(padded[..].try_into().unwrap());
        let m = &mut self.m;
        match off {
            REG_DEVICE_FEATURES_SEL => m.features.device_sel = val,
            REG_DRIVER_FEATURES_SEL => m.features.driver_sel = val,
            // Frozen once FEATURES_OK (or DRIVER_OK) is set.
            REG_DRIVER_FEATURES if m.status & (STATUS_FEATURES_OK | STATUS_DRIVER_OK) == 0 => {
                m.features.write_driver(val)
            }
            REG_QUEUE_SEL => m.queue_sel = val,
            REG_QUEUE_NUM | REG_QUEUE_READY | REG_QUEUE_DESC_LOW | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_AVAIL_LOW | REG_QUEUE_AVAIL_HIGH | REG_QUEUE_USED_LOW
            | REG_QUEUE_USED_HIGH => {
                let live = m.live();
                let qmax = self.qmax as u32;
                if let Some(q) = m.queues.get_mut(m.queue_sel as usize) {
                    let frozen = live || (q.ready && !(off == REG_QUEUE_READY && val == 0));
                    let lo = |a: u64| (a & !0xffff_ffff) | val as u64;
                    let hi = |a: u64| (a & 0xffff_ffff) | ((val as u64) << 32);
                    if !frozen {
                        match off {
                            REG_QUEUE_NUM => {
                                if val != 0 && val <= qmax && val.is_power_of_two() {
                                    q.ring.size = val as u16;
                                }
                            }
                            REG_QUEUE_READY => q.ready = val != 0 && q.ring.size != 0,
                            REG_QUEUE_DESC_LOW => q.ring.desc = lo(q.ring.desc),
                            REG_QUEUE_DESC_HIGH => q.ring.desc = hi(q.ring.desc),
                            REG_QUEUE_AVAIL_LOW => q.ring.avail = lo(q.ring.avail),
                            REG_QUEUE_AVAIL_HIGH => q.ring.avail = hi(q.ring.avail),
                            REG_QUEUE_USED_LOW => q.ring.used = lo(q.ring.used),
                            _ => q.ring.used = hi(q.ring.used),
                        }
                    }
                }
            }
            REG_QUEUE_NOTIFY => m.notifies += 1,
            REG_INTERRUPT_ACK => m.interrupt &= !val,
            REG_STATUS => self.write_status(val),
            _ => {}
        }
        self.check_events();
    }

    fn write_status(&mut self, val: u32) {
        let m = &mut self.m;
        if val == 0 {
            let was = m.activated;
            let (notifies, activations) = (m.notifies, m.activations);
            *m = Model {
                notifies,
                activations,
                ..Model::default()
            };
            if was {
                match self.events.try_recv() {
                    Ok(TransportEvent::Reset) => {}
                    other => panic!("reset after activation sent {other:?}"),
                }
            }
            self.session = None;
            return;
        }
        let old = m.status;
        let mut new = (val & !STATUS_NEEDS_RESET) | (old & STATUS_NEEDS_RESET);
        if new & old != old {
            return;
        }
        let added = new & !old;
        if added & STATUS_FEATURES_OK != 0 && !(Model { status: new, ..*m }).features_ok() {
            new &= !STATUS_FEATURES_OK;
        }
        if added & STATUS_DRIVER_OK != 0 && new & STATUS_FEATURES_OK == 0 {
            new &= !STATUS_DRIVER_OK;
        }
        m.status = new;
        if new & !old & STATUS_DRIVER_OK != 0 {
            let ok = m.queues.iter().all(Queue::usable);
            if ok {
                m.activated = true;
                m.activations += 1;
                let port = match self.events.try_recv() {
                    Ok(TransportEvent::Activated(p)) => p,
                    other => panic!("a valid DRIVER_OK did not activate: {other:?}"),
                };
                let event_idx = m.features.driver & (1 << F_EVENT_IDX) != 0;
                let (rx, tx) = (m.queues[0].ring, m.queues[1].ring);
                for (q, want) in [(port.rx_queue(), rx), (port.tx_queue(), tx)] {
                    assert_eq!(q.size(), want.size);
                    assert_eq!(q.desc_table(), want.desc);
                    assert_eq!(q.avail_ring(), want.avail);
                    assert_eq!(q.used_ring(), want.used);
                    assert_eq!(q.event_idx_enabled(), event_idx);
                }
                self.session = Some(Session::new(port, self.mem.clone(), rx, tx, self.slot_size));
            } else {
                m.status |= STATUS_NEEDS_RESET;
                m.interrupt |= INT_CONFIG;
            }
        }
    }

    /// No event the model did not expect.
    fn check_events(&mut self) {
        if let Ok(e) = self.events.try_recv() {
            panic!("unexpected transport event {e:?} (model {:?})", self.m);
        }
    }

    fn check(&mut self) {
        let m = &self.m;
        let status = self.dev.status();
        assert_eq!(status, m.status, "status register");
        assert_eq!(self.dev.is_activated(), m.activated);
        if status & STATUS_DRIVER_OK != 0 {
            assert!(
                status & STATUS_FEATURES_OK != 0,
                "DRIVER_OK without FEATURES_OK"
            );
        }
        if status & STATUS_FEATURES_OK != 0 {
            assert!(
                m.features_ok(),
                "FEATURES_OK with features the rules refuse"
            );
            let f = self.dev.negotiated_features();
            assert_eq!(f, m.features.driver);
        }
        if m.activated {
            assert!(
                status & STATUS_DRIVER_OK != 0,
                "activated without DRIVER_OK"
            );
        }
        let c = self.dev.counters();
        assert_eq!(c.activations, m.activations);
        assert_eq!(c.notifies, m.notifies);
        assert_eq!(self.rd(REG_MAGIC), MAGIC);
        self.check_events();
    }

    fn finish(&mut self) {
        // Every QueueNotify that reached the device signalled the kick eventfd.
        let kicked = self.kick.read().unwrap_or(0);
        assert_eq!(kicked, self.m.notifies);
    }
}
