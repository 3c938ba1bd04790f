//! `hello`: the first vmq guest.
//!
//! Mode (`params[param::MODE]`):
//! - 0: print a greeting with a boot parameter, wait on the doorbell (1 ms timeout), write
//!   `0x1234_5678` to the MMIO address `params[param::TEST_ADDR]` (if not 0) and read it back,
//!   then exit with `params[param::EXIT_STATUS]` (or 0xbad if the read-back differs).
//! - 1: spin forever (to test stopping a busy guest).
//! - 2: `params[param::COUNT]` writes to the no-op port, then exit 0 (exit cost).
//! - 3: `params[param::COUNT]` 32-bit writes of `params[param::SIZE]` to `params[param::TEST_ADDR]`
//!   (an ioeventfd), then exit 0.
//! - 4: one doorbell wait with a `params[param::SIZE]` us timeout; exit with its result.
//! - 5: execute `ud2` (a fault: the run ends in a shutdown).
//! - 6: probe RAM: read the `u64` at `params[param::TEST_ADDR]`, write 1 at `TEST_ADDR + 16`
//!   (armed), spin until the first value changes, write
//!   the new value plus one at `TEST_ADDR + 8`, and exit with the new value (page hand-off
//!   tests: the host moves the page under the running guest).
#![no_std]
#![no_main]

use guest_rt::abi::image::hello::param;
use guest_rt::abi::platform::{BootBlock, EXIT_PANIC, PORT_NOP};
use guest_rt::{doorbell_wait, exit, mmio_read32, mmio_write32, outb, println};

guest_rt::entry!(main);

fn main(bb: &BootBlock) -> u32 {
    let p = &bb.params;
    match p[param::MODE] {
        0 => hello(bb),
        1 => loop {
            core::hint::spin_loop();
        },
        2 => {
            for _ in 0..p[param::COUNT] {
                outb(PORT_NOP, 0);
            }
            0
        }
        3 => {
            for _ in 0..p[param::COUNT] {
                mmio_write32(p[param::TEST_ADDR], p[param::SIZE] as u32);
            }
            0
        }
        4 => doorbell_wait(p[param::SIZE] as u32),
        5 => {
            // SAFETY: deliberately raises #UD; the VMM sees a shutdown.
            unsafe { core::arch::asm!("ud2") };
            exit(EXIT_PANIC)
        }
        6 => probe(p[param::TEST_ADDR]),
        m => {
            println!("unknown mode {m}");
            EXIT_PANIC
        }
    }
}

fn hello(bb: &BootBlock) -> u32 {
    let p = &bb.params;
    println!(
        "hello from {} (service {}, {} MiB, free {:#x}..{:#x})",
        bb.name_str(),
        p[param::SERVICE],
        bb.mem_size >> 20,
        bb.free_start,
        bb.free_end
    );
    let woke = doorbell_wait(1000);
    println!("doorbell wait -> {woke}");
    let addr = p[param::TEST_ADDR];
    if addr != 0 {
        mmio_write32(addr, 0x1234_5678);
        let back = mmio_read32(addr);
        println!("mmio {addr:#x} read back {back:#x}");
        if back != 0x1234_5678 {
            return 0xbad;
        }
    }
    p[param::EXIT_STATUS] as u32
}

fn probe(addr: u64) -> u32 {
    let p = addr as *mut u64;
    // SAFETY: the test gives an 8-byte aligned address of RAM (identity mapped), 16 bytes
    // below a page end; volatile, because the host changes what backs it while we spin.
    unsafe {
        let first = core::ptr::read_volatile(p);
        core::ptr::write_volatile(p.add(2), 1);
        let mut v = first;
        while v == first {
            core::hint::spin_loop();
            v = core::ptr::read_volatile(p);
        }
        core::ptr::write_volatile(p.add(1), v.wrapping_add(1));
        v as u32
    }
}
