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
//! - 7: page reader (the hand-off bench's receiver): a control block at
//!   `params[param::TEST_ADDR]` holds `[seq, pages, ack, sum, cycles]`; each time `seq` changes the
//!   guest reads the first `u64` of each of `pages` pages from `params[param::SIZE]` on, writes
//!   their sum to `sum`, the TSC cycles the reading took to the fifth `u64`, and `seq` to
//!   `ack`; it exits 0 when `seq` is `u64::MAX`.
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
        7 => reader(p[param::TEST_ADDR], p[param::SIZE]),
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

fn reader(ctl: u64, window: u64) -> u32 {
    let c = ctl as *mut u64;
    let mut last = 0;
    loop {
        // SAFETY: the host gives a RAM control block of five u64 and a window of RAM pages
        // (identity mapped); volatile, because the host writes them while we read. `rdtsc`
        // has no memory effects.
        unsafe {
            let seq = core::ptr::read_volatile(c);
            if seq == last {
                core::hint::spin_loop();
                continue;
            }
            if seq == u64::MAX {
                return 0;
            }
            let pages = core::ptr::read_volatile(c.add(1)).min(4096);
            let t0 = core::arch::x86_64::_rdtsc();
            let mut sum = 0u64;
            for i in 0..pages {
                sum = sum.wrapping_add(core::ptr::read_volatile((window + i * 4096) as *const u64));
            }
            let t1 = core::arch::x86_64::_rdtsc();
            core::ptr::write_volatile(c.add(3), sum);
            core::ptr::write_volatile(c.add(4), t1.wrapping_sub(t0));
            core::ptr::write_volatile(c.add(2), seq);
            last = seq;
        }
    }
}
