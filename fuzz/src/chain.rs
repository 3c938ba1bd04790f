//! Target `chain`: device-side chain parsing, header validation and delivery.
//!
//! The fuzzer picks the hostile port's memory shape (one region, or two with a hole between
//! them), its queue size, EVENT_IDX, and where its rings lie, then runs a [`Session`]
//! program against it. Ring placements `DevicePort::new` refuses end the run early: refusing
//! them, without a panic, is the behaviour under test there.

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmq::peer::device_queue;
use vmq::virtio::DevicePort;
use vmq::virtio::RingLayout;

use crate::input::Input;
use crate::session::Session;

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let cfg = inp.u8();
    let size = 1u16 << (cfg % 5);
    let event_idx = cfg & 0x08 != 0;
    let ranges: &[(GuestAddress, usize)] = if cfg & 0x10 != 0 {
        // Two regions with a hole: accesses that straddle them or fall in the hole.
        &[(GuestAddress(0), 0x8000), (GuestAddress(0xc000), 0x4000)]
    } else {
        &[(GuestAddress(0), 0x10000)]
    };
    let mem = GuestMemoryMmap::<()>::from_ranges(ranges).expect("guest memory");
    let (rx, tx) = if cfg & 0x20 != 0 {
        (layout(&mut inp, size), layout(&mut inp, size))
    } else {
        (
            RingLayout::contiguous(0, size),
            RingLayout::contiguous(0x400, size),
        )
    };
    let slot_size = inp.pick(&[48u32, 64, 256, 1056]);
    let (Ok(rxq), Ok(txq)) = (device_queue(rx, event_idx), device_queue(tx, event_idx)) else {
        return;
    };
    let Ok(port) = DevicePort::new(mem.clone(), rxq, txq) else {
        return;
    };
    Session::new(port, mem, rx, tx, slot_size).run(&mut inp);
}

/// Ring addresses chosen by the fuzzer, aligned as virtio requires (`DeviceQueue` refuses others).
fn layout(inp: &mut Input<'_>, size: u16) -> RingLayout {
    let mut a = || match inp.u8() % 8 {
        0 => inp.u64(),
        _ => inp.u16() as u64,
    };
    RingLayout {
        size,
        desc: a() & !15,
        avail: a() & !1,
        used: a() & !3,
    }
}
