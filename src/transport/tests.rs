//! Register sequences against [`VirtioMmio`] over plain guest memory (no KVM).

use std::sync::mpsc::Receiver;

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::mmio::MmioDevice;
use crate::virtio::spec::*;
use crate::virtio::vmq_device::*;
use crate::virtio::{DriverRing, GuestView, MsgTx, RingLayout, SlotArena};
use crate::wire::{MsgHeader, MsgKind};

const MEM: usize = 1 << 20;
const RX_RING: u64 = 0x1000;
const TX_RING: u64 = 0x8000;

fn device(kick: Option<EventFd>) -> (VirtioMmio, Receiver<TransportEvent>, GuestMemoryMmap) {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let (dev, rx) = VirtioMmio::new(mem.clone(), QUEUE_NUM_MAX, kick);
    (dev, rx, mem)
}

fn rd(dev: &VirtioMmio, off: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn wr(dev: &VirtioMmio, off: u64, v: u32) {
    dev.write(off, &v.to_le_bytes());
}

fn negotiate(dev: &VirtioMmio, features: u64) -> u32 {
    wr(dev, REG_STATUS, 0);
    wr(dev, REG_STATUS, STATUS_ACKNOWLEDGE);
    wr(dev, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    for sel in 0..2 {
        wr(dev, REG_DRIVER_FEATURES_SEL, sel);
        wr(dev, REG_DRIVER_FEATURES, (features >> (32 * sel)) as u32);
    }
    wr(
        dev,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    rd(dev, REG_STATUS)
}

fn setup_queue(dev: &VirtioMmio, q: u32, layout: RingLayout) {
    wr(dev, REG_QUEUE_SEL, q);
    wr(dev, REG_QUEUE_NUM, u32::from(layout.size));
    wr(dev, REG_QUEUE_DESC_LOW, layout.desc as u32);
    wr(dev, REG_QUEUE_DESC_HIGH, (layout.desc >> 32) as u32);
    wr(dev, REG_QUEUE_AVAIL_LOW, layout.avail as u32);
    wr(dev, REG_QUEUE_AVAIL_HIGH, (layout.avail >> 32) as u32);
    wr(dev, REG_QUEUE_USED_LOW, layout.used as u32);
    wr(dev, REG_QUEUE_USED_HIGH, (layout.used >> 32) as u32);
    wr(dev, REG_QUEUE_READY, 1);
}

const OK_SO_FAR: u32 = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;

fn bring_up(dev: &VirtioMmio, size: u16) {
    assert_eq!(negotiate(dev, DEVICE_FEATURES), OK_SO_FAR);
    setup_queue(dev, 0, RingLayout::contiguous(RX_RING, size));
    setup_queue(dev, 1, RingLayout::contiguous(TX_RING, size));
    wr(dev, REG_STATUS, OK_SO_FAR | STATUS_DRIVER_OK);
}

#[test]
fn identity_registers_and_config_space() {
    let (dev, _rx, _mem) = device(None);
    assert_eq!(rd(&dev, REG_MAGIC), MAGIC);
    assert_eq!(rd(&dev, REG_VERSION), 2);
    assert_eq!(rd(&dev, REG_DEVICE_ID), DEVICE_ID);
    assert_eq!(rd(&dev, REG_VENDOR_ID), VENDOR_ID);
    wr(&dev, REG_DEVICE_FEATURES_SEL, 0);
    assert_eq!(rd(&dev, REG_DEVICE_FEATURES), 1 << F_EVENT_IDX);
    wr(&dev, REG_DEVICE_FEATURES_SEL, 1);
    assert_eq!(rd(&dev, REG_DEVICE_FEATURES), 1 << (F_VERSION_1 - 32));
    wr(&dev, REG_DEVICE_FEATURES_SEL, 7);
    assert_eq!(rd(&dev, REG_DEVICE_FEATURES), 0);
    wr(&dev, REG_QUEUE_SEL, 1);
    assert_eq!(rd(&dev, REG_QUEUE_NUM_MAX), u32::from(QUEUE_NUM_MAX));
    wr(&dev, REG_QUEUE_SEL, 2);
    assert_eq!(rd(&dev, REG_QUEUE_NUM_MAX), 0, "queue 2 does not exist");
    assert_eq!(rd(&dev, REG_CONFIG_GENERATION), 0);
    let mut c = [0u8; 8];
    dev.read(REG_CONFIG, &mut c);
    assert_eq!(u16::from_le_bytes([c[0], c[1]]), NUM_QUEUES);
    assert_eq!(u16::from_le_bytes([c[2], c[3]]), QUEUE_NUM_MAX);
    assert_eq!(
        u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        crate::wire::MAX_PAYLOAD
    );
    let mut b = [0xaa_u8; 2];
    dev.read(REG_CONFIG + CONFIG_QUEUE_NUM_MAX, &mut b);
    assert_eq!(u16::from_le_bytes(b), QUEUE_NUM_MAX);
    dev.read(REG_CONFIG + 0x40, &mut b);
    assert_eq!(b, [0, 0], "past the config space reads zero");
}

#[test]
fn unknown_offsets_and_bad_widths_are_harmless() {
    let (dev, _rx, _mem) = device(None);
    for off in [0x018, 0x0a8, 0x0c0, 0x0f8] {
        assert_eq!(rd(&dev, off), 0, "offset {off:#x}");
        wr(&dev, off, 0xdead_beef);
    }
    assert_eq!(rd(&dev, 0x0b0), u32::MAX, "no shared memory regions");
    let mut b = [0xff_u8; 2];
    dev.read(REG_MAGIC, &mut b);
    assert_eq!(b, [0, 0], "16-bit register reads are refused");
    dev.read(REG_MAGIC + 1, &mut [0u8; 4]);
    dev.write(REG_STATUS, &[1]);
    dev.write(REG_STATUS, &[1, 0, 0, 0, 0, 0, 0, 0]);
    dev.write(REG_CONFIG, &[1, 2, 3, 4]);
    assert_eq!(
        rd(&dev, REG_STATUS),
        0,
        "narrow or wide status writes are ignored"
    );
    wr(&dev, REG_MAGIC, 0);
    assert_eq!(rd(&dev, REG_MAGIC), MAGIC);
    assert!(dev.counters().rejected >= 12, "{:?}", dev.counters());
}

#[test]
fn valid_bring_up_hands_out_a_working_port() {
    let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let (dev, events, mem) = device(Some(kick.try_clone().unwrap()));
    bring_up(&dev, 64);
    assert_eq!(rd(&dev, REG_STATUS), OK_SO_FAR | STATUS_DRIVER_OK);
    assert!(dev.is_activated());
    assert_eq!(dev.negotiated_features(), DEVICE_FEATURES);
    let mut port = match events.try_recv() {
        Ok(TransportEvent::Activated(p)) => p,
        other => panic!("expected an activation, got {other:?}"),
    };
    assert_eq!(port.rx_queue_size(), 64);
    assert!(port.tx_queue().event_idx_enabled());

    // A message the driver sends on queue 1 comes out of the port.
    let rmem = GuestView::new(mem.clone());
    let ring = DriverRing::new(
        rmem,
        RingLayout::contiguous(TX_RING, 64),
        vec![0u16; 128],
        true,
    )
    .unwrap();
    let mut tx = MsgTx::new(
        ring,
        SlotArena {
            base: 0x20000,
            slot_size: 128,
        },
    );
    tx.send(&MsgHeader::new(MsgKind::OneWay, 3, 9, 4), b"ping")
        .unwrap();
    assert!(tx.flush().unwrap(), "a fresh ring wants the first kick");
    wr(&dev, REG_QUEUE_NOTIFY, 1);
    assert_eq!(
        kick.read().unwrap(),
        1,
        "QueueNotify signals the kick eventfd"
    );
    let chain = port.pop_tx().unwrap().expect("the message");
    assert_eq!(chain.header.msg_id(), 9);
    assert_eq!(dev.counters().notifies, 1);

    // Queue registers are frozen after DRIVER_OK.
    wr(&dev, REG_QUEUE_SEL, 0);
    wr(&dev, REG_QUEUE_NUM, 32);
    wr(&dev, REG_QUEUE_READY, 0);
    assert_eq!(rd(&dev, REG_QUEUE_READY), 1);
    assert!(events.try_recv().is_err(), "nothing else happened");
}

#[test]
fn bad_queue_sizes_are_refused() {
    let (dev, events, _mem) = device(None);
    assert_eq!(negotiate(&dev, DEVICE_FEATURES), OK_SO_FAR);
    wr(&dev, REG_QUEUE_SEL, 0);
    for bad in [0, 3, 48, u32::from(QUEUE_NUM_MAX) * 2, 65536, u32::MAX] {
        wr(&dev, REG_QUEUE_NUM, bad);
    }
    wr(&dev, REG_QUEUE_READY, 1);
    assert_eq!(rd(&dev, REG_QUEUE_READY), 0, "no size, not ready");
    assert_eq!(dev.counters().rejected, 7);
    // Queue 5 does not exist.
    wr(&dev, REG_QUEUE_SEL, 5);
    wr(&dev, REG_QUEUE_NUM, 16);
    assert_eq!(rd(&dev, REG_QUEUE_READY), 0);
    // DRIVER_OK with unready queues: no port, DEVICE_NEEDS_RESET.
    wr(&dev, REG_STATUS, OK_SO_FAR | STATUS_DRIVER_OK);
    assert_ne!(rd(&dev, REG_STATUS) & STATUS_NEEDS_RESET, 0);
    assert_ne!(rd(&dev, REG_INTERRUPT_STATUS) & INT_CONFIG, 0);
    assert!(events.try_recv().is_err());
    assert_eq!(dev.counters().failed_activations, 1);
}

#[test]
fn rings_outside_memory_fail_activation() {
    let (dev, events, _mem) = device(None);
    assert_eq!(negotiate(&dev, DEVICE_FEATURES), OK_SO_FAR);
    setup_queue(&dev, 0, RingLayout::contiguous(RX_RING, 64));
    setup_queue(&dev, 1, RingLayout::contiguous(MEM as u64 - 0x100, 64));
    wr(&dev, REG_STATUS, OK_SO_FAR | STATUS_DRIVER_OK);
    assert_ne!(rd(&dev, REG_STATUS) & STATUS_NEEDS_RESET, 0);
    assert!(events.try_recv().is_err());
    // A misaligned descriptor table is refused as well.
    assert_eq!(negotiate(&dev, DEVICE_FEATURES), OK_SO_FAR);
    setup_queue(&dev, 0, RingLayout::contiguous(RX_RING, 64));
    let mut l = RingLayout::contiguous(TX_RING, 64);
    l.desc += 4;
    setup_queue(&dev, 1, l);
    wr(&dev, REG_STATUS, OK_SO_FAR | STATUS_DRIVER_OK);
    assert_ne!(rd(&dev, REG_STATUS) & STATUS_NEEDS_RESET, 0);
    assert_eq!(dev.counters().failed_activations, 2);
}

#[test]
fn bad_features_keep_features_ok_clear() {
    let (dev, events, _mem) = device(None);
    // A feature the device does not offer.
    let s = negotiate(&dev, DEVICE_FEATURES | 1 << 28);
    assert_eq!(s & STATUS_FEATURES_OK, 0);
    // No VERSION_1: legacy drivers are refused.
    let s = negotiate(&dev, 1 << F_EVENT_IDX);
    assert_eq!(s & STATUS_FEATURES_OK, 0);
    // A bit in a feature word the device has none in.
    wr(&dev, REG_STATUS, 0);
    wr(&dev, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    wr(&dev, REG_DRIVER_FEATURES_SEL, 1);
    wr(&dev, REG_DRIVER_FEATURES, 1);
    wr(&dev, REG_DRIVER_FEATURES_SEL, 2);
    wr(&dev, REG_DRIVER_FEATURES, 1);
    wr(&dev, REG_STATUS, OK_SO_FAR);
    assert_eq!(rd(&dev, REG_STATUS) & STATUS_FEATURES_OK, 0);
    // DRIVER_OK without FEATURES_OK is ignored.
    wr(
        &dev,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK,
    );
    assert_eq!(rd(&dev, REG_STATUS), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    assert!(events.try_recv().is_err());
    // Without EVENT_IDX is fine: the queues then use flags.
    assert_eq!(negotiate(&dev, 1 << F_VERSION_1), OK_SO_FAR);
    setup_queue(&dev, 0, RingLayout::contiguous(RX_RING, 8));
    setup_queue(&dev, 1, RingLayout::contiguous(TX_RING, 8));
    wr(&dev, REG_STATUS, OK_SO_FAR | STATUS_DRIVER_OK);
    match events.try_recv() {
        Ok(TransportEvent::Activated(p)) => assert!(!p.tx_queue().event_idx_enabled()),
        other => panic!("expected an activation, got {other:?}"),
    }
}

#[test]
fn status_bits_cannot_be_cleared_and_features_freeze() {
    let (dev, _events, _mem) = device(None);
    assert_eq!(negotiate(&dev, DEVICE_FEATURES), OK_SO_FAR);
    wr(&dev, REG_STATUS, STATUS_ACKNOWLEDGE);
    assert_eq!(rd(&dev, REG_STATUS), OK_SO_FAR);
    wr(&dev, REG_DRIVER_FEATURES_SEL, 0);
    wr(&dev, REG_DRIVER_FEATURES, 0);
    assert_eq!(dev.negotiated_features(), DEVICE_FEATURES);
}

#[test]
fn reset_after_activation_reports_and_allows_a_new_bring_up() {
    let (dev, events, _mem) = device(None);
    bring_up(&dev, 16);
    assert!(matches!(
        events.try_recv(),
        Ok(TransportEvent::Activated(_))
    ));
    dev.set_needs_reset();
    let s = rd(&dev, REG_STATUS);
    assert_eq!(s, OK_SO_FAR | STATUS_DRIVER_OK | STATUS_NEEDS_RESET);
    assert_ne!(rd(&dev, REG_INTERRUPT_STATUS) & INT_CONFIG, 0);
    // Echoing the status back does not clear NEEDS_RESET.
    wr(&dev, REG_STATUS, s);
    assert_ne!(rd(&dev, REG_STATUS) & STATUS_NEEDS_RESET, 0);
    wr(&dev, REG_INTERRUPT_ACK, INT_CONFIG);
    assert_eq!(rd(&dev, REG_INTERRUPT_STATUS), 0);
    wr(&dev, REG_STATUS, 0);
    assert_eq!(rd(&dev, REG_STATUS), 0);
    assert!(matches!(events.try_recv(), Ok(TransportEvent::Reset)));
    assert!(!dev.is_activated());
    wr(&dev, REG_QUEUE_SEL, 0);
    assert_eq!(rd(&dev, REG_QUEUE_READY), 0, "reset clears the queues");
    bring_up(&dev, 32);
    match events.try_recv() {
        Ok(TransportEvent::Activated(p)) => assert_eq!(p.rx_queue_size(), 32),
        other => panic!("expected a second activation, got {other:?}"),
    }
    // The first reset reports the activation it ends; a second one has nothing to report.
    wr(&dev, REG_STATUS, 0);
    assert!(matches!(events.try_recv(), Ok(TransportEvent::Reset)));
    wr(&dev, REG_STATUS, 0);
    assert!(events.try_recv().is_err());
    // NEEDS_RESET before DRIVER_OK means nothing.
    dev.set_needs_reset();
    assert_eq!(rd(&dev, REG_STATUS), 0);
    assert_eq!(
        dev.counters().resets,
        5,
        "every bring-up starts with a reset"
    );
}

#[test]
fn used_interrupt_bit_is_acked() {
    let (dev, _events, _mem) = device(None);
    dev.signal_used();
    assert_eq!(rd(&dev, REG_INTERRUPT_STATUS), INT_VRING);
    wr(&dev, REG_INTERRUPT_ACK, INT_VRING);
    assert_eq!(rd(&dev, REG_INTERRUPT_STATUS), 0);
}
