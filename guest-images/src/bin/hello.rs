//! `hello`: the first vmq guest.
//!
//! Mode (`params[PARAM_MODE]`):
//! - 0: print a greeting with a boot parameter, wait on the doorbell (1 ms timeout), write
//!   `0x1234_5678` to the MMIO address `params[PARAM_TEST_ADDR]` (if not 0) and read it back,
//!   then exit with `params[PARAM_EXIT_STATUS]` (or 0xbad if the read-back differs).
//! - 1: spin forever (to test stopping a busy guest).
//! - 2: `params[PARAM_COUNT]` writes to the no-op port, then exit 0 (exit cost).
//! - 3: `params[PARAM_COUNT]` 32-bit writes of `params[PARAM_SIZE]` to `params[PARAM_TEST_ADDR]`
//!   (an ioeventfd), then exit 0.
//! - 4: one doorbell wait with a `params[PARAM_SIZE]` us timeout; exit with its result.
//! - 5: execute `ud2` (a fault: the run ends in a shutdown).
#![no_std]
#![no_main]

use guest_rt::abi::{self, BootBlock};
use guest_rt::{doorbell_wait, exit, mmio_read32, mmio_write32, outb, println};

guest_rt::entry!(main);

fn main(bb: &BootBlock) -> u32 {
    let p = &bb.params;
    match p[abi::PARAM_MODE] {
        0 => hello(bb),
        1 => loop {
            core::hint::spin_loop();
        },
        2 => {
            for _ in 0..p[abi::PARAM_COUNT] {
                outb(abi::PORT_NOP, 0);
            }
            0
        }
        3 => {
            for _ in 0..p[abi::PARAM_COUNT] {
                mmio_write32(p[abi::PARAM_TEST_ADDR], p[abi::PARAM_SIZE] as u32);
            }
            0
        }
        4 => doorbell_wait(p[abi::PARAM_SIZE] as u32),
        5 => {
            // SAFETY: deliberately raises #UD; the VMM sees a shutdown.
            unsafe { core::arch::asm!("ud2") };
            exit(abi::EXIT_PANIC)
        }
        m => {
            println!("unknown mode {m}");
            abi::EXIT_PANIC
        }
    }
}

fn hello(bb: &BootBlock) -> u32 {
    let p = &bb.params;
    println!(
        "hello from {} (service {}, {} MiB, free {:#x}..{:#x})",
        bb.name_str(),
        p[abi::PARAM_SERVICE],
        bb.mem_size >> 20,
        bb.free_start,
        bb.free_end
    );
    let woke = doorbell_wait(1000);
    println!("doorbell wait -> {woke}");
    let addr = p[abi::PARAM_TEST_ADDR];
    if addr != 0 {
        mmio_write32(addr, 0x1234_5678);
        let back = mmio_read32(addr);
        println!("mmio {addr:#x} read back {back:#x}");
        if back != 0x1234_5678 {
            return 0xbad;
        }
    }
    p[abi::PARAM_EXIT_STATUS] as u32
}
