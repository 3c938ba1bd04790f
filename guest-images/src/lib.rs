//! The runtime of vmq guest images: entry, port I/O, console, exit, doorbell wait, MMIO and the
//! memory intrinsics the compiler expects. The guest runs in 64-bit user mode with IOPL 3, so
//! `in`/`out` are allowed and exit to the VMM.
#![no_std]

use core::arch::asm;
use core::fmt::{self, Write};

pub use vmq::abi;
use vmq::abi::platform::{self, BootBlock};

pub mod virtio;

/// The results area of the boot block ([`BootBlock::results`], each image's `abi::image::*::result` slots): counters
/// the VMM can read while the guest runs and after it exits.
pub mod results {
    use vmq::abi::image::traffic;
    use vmq::abi::platform::{self, BootBlock};
    use vmq::traffic::Verdict;

    fn slot(i: usize) -> *mut u64 {
        let i = i.min(platform::NUM_RESULTS - 1);
        let at = platform::BOOT_BLOCK_ADDR as usize
            + core::mem::offset_of!(BootBlock, results)
            + i * core::mem::size_of::<u64>();
        core::ptr::with_exposed_provenance_mut(at)
    }

    /// Sets result `i`.
    pub fn set(i: usize, v: u64) {
        // SAFETY: the boot block page is mapped RAM at a fixed address; `slot` keeps the index
        // inside the results array, which is 8-byte aligned (repr(C), u64 fields).
        unsafe { slot(i).write_volatile(v) }
    }

    /// Reads result `i`.
    pub fn get(i: usize) -> u64 {
        // SAFETY: as for `set`.
        unsafe { slot(i).read_volatile() }
    }

    /// Adds `n` to result `i`.
    pub fn add(i: usize, n: u64) {
        set(i, get(i).wrapping_add(n));
    }

    /// Counts a client's answer in the traffic slots (`abi::image::traffic`): a duplicate, or
    /// a received reply that was ok, a mismatch or an error. Returns whether it was received
    /// (not a duplicate).
    pub fn count_answer(verdict: Verdict) -> bool {
        let slot = match verdict {
            Verdict::Duplicate => {
                add(traffic::DUPLICATES, 1);
                return false;
            }
            Verdict::Ok => traffic::OK,
            Verdict::Mismatch => traffic::MISMATCHES,
            Verdict::Failed(_) => traffic::ERRORS,
        };
        add(traffic::RECEIVED, 1);
        add(slot, 1);
        true
    }
}

/// Defines the image entry: `_start` aligns the stack and calls `$main(&BootBlock) -> u32`;
/// its return value becomes the exit status.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        core::arch::global_asm!(
            ".section .text._start,\"ax\",@progbits",
            ".globl _start",
            "_start:",
            "    and rsp, -16",
            "    call {entry}",
            "    ud2",
            entry = sym __vmq_entry,
        );

        extern "C" fn __vmq_entry(bb: u64) -> ! {
            let f: fn(&$crate::abi::platform::BootBlock) -> u32 = $main;
            $crate::exit(f(&$crate::boot_block(bb)))
        }
    };
}

/// Copies the boot block the VMM wrote at `addr` (passed in `rdi`). Exits with status
/// [`platform::EXIT_PANIC`] if it is not there or has the wrong magic or version.
pub fn boot_block(addr: u64) -> BootBlock {
    if addr != platform::BOOT_BLOCK_ADDR {
        exit(platform::EXIT_PANIC);
    }
    // SAFETY: the VMM wrote a BootBlock at this fixed, mapped, aligned address before start.
    let bb = unsafe { core::ptr::read_volatile(addr as *const BootBlock) };
    if !bb.is_valid() {
        exit(platform::EXIT_PANIC);
    }
    bb
}

/// Writes a byte to a port.
#[inline(always)]
pub fn outb(port: u16, val: u8) {
    // SAFETY: port I/O at IOPL 3 only exits to the VMM; it touches no guest memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") val, options(nomem, nostack, preserves_flags))
    }
}

/// Writes a 32-bit value to a port. Not `nomem`: the VMM may write guest memory meanwhile
/// (the doorbell wait result).
#[inline(always)]
pub fn outl(port: u16, val: u32) {
    // SAFETY: port I/O at IOPL 3 only exits to the VMM.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") val, options(nostack, preserves_flags)) }
}

/// Sends `bytes` to the console with one exit per [`platform::CONSOLE_BUF_SIZE`] bytes, through the
/// console buffer.
pub fn console_write(bytes: &[u8]) {
    for chunk in bytes.chunks(platform::CONSOLE_BUF_SIZE as usize) {
        let buf = platform::CONSOLE_BUF_ADDR as *mut u8;
        // SAFETY: the console buffer is a mapped RAM page the VMM reserves for this; the chunk
        // fits in it and cannot overlap `bytes` (which lives in the image, stack or heap).
        unsafe { core::ptr::copy_nonoverlapping(chunk.as_ptr(), buf, chunk.len()) };
        outl(platform::PORT_CONSOLE, chunk.len() as u32);
    }
}

/// The name a name parameter (`TARGET`, `SERVICE`, `SIDE_SERVICE`) gives, read from the
/// parameter text the VMM wrote ([`platform::PARAM_TEXT_ADDR`]); `None` when the parameter is
/// not set or points outside the text ([`vmq::abi::image::param_text`]).
pub fn param_name(bb: &BootBlock, slot: usize) -> Option<&'static [u8]> {
    let (offset, len) = vmq::abi::image::param_text(*bb.params.get(slot)?)?;
    let at = core::ptr::with_exposed_provenance::<u8>(platform::PARAM_TEXT_ADDR as usize + offset);
    // SAFETY: `param_text` keeps `offset + len` inside the parameter text, half a page of
    // identity-mapped RAM in the boot block's page, written by the VMM before the guest started
    // and never written again (the guest does not write it, and runs single-threaded).
    Some(unsafe { core::slice::from_raw_parts(at, len) })
}

/// Ends the guest with `status`.
pub fn exit(status: u32) -> ! {
    loop {
        outl(platform::PORT_EXIT, status);
    }
}

/// Parks the vCPU until the VM's work eventfd is signalled or `timeout_us` passes. Returns
/// [`platform::WAIT_WORK`], [`platform::WAIT_TIMEOUT`] or [`platform::WAIT_STOP`].
pub fn doorbell_wait(timeout_us: u32) -> u32 {
    outl(platform::PORT_DOORBELL_WAIT, timeout_us);
    let at = (platform::BOOT_BLOCK_ADDR as usize + core::mem::offset_of!(BootBlock, wait_result))
        as *const u32;
    // SAFETY: the boot block is mapped at its fixed address; the VMM just wrote the field.
    unsafe { core::ptr::read_volatile(at) }
}

/// A 32-bit MMIO read.
pub fn mmio_read32(addr: u64) -> u32 {
    // SAFETY: MMIO addresses are identity mapped and not RAM: the access exits to the VMM.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

/// A 32-bit MMIO write.
pub fn mmio_write32(addr: u64, val: u32) {
    // SAFETY: as for `mmio_read32`.
    unsafe { core::ptr::write_volatile(addr as *mut u32, val) }
}

/// A console writer that buffers up to a line and sends it with one exit.
pub struct Console {
    buf: [u8; 256],
    len: usize,
}

impl Console {
    /// An empty writer.
    pub const fn new() -> Self {
        Self {
            buf: [0; 256],
            len: 0,
        }
    }

    /// Sends what is buffered.
    pub fn flush(&mut self) {
        if self.len > 0 {
            console_write(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl Default for Console {
    fn default() -> Self {
        Self::new()
    }
}

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
            if b == b'\n' {
                self.flush();
            }
        }
        Ok(())
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.flush();
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let mut c = Console::new();
    let _ = c.write_fmt(args);
}

/// Prints to the console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::_print(format_args!($($arg)*)) };
}

/// Prints a line to the console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::_print(format_args!("{}\n", format_args!($($arg)*))) };
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut c = Console::new();
    let _ = writeln!(c, "panic: {info}");
    c.flush();
    exit(platform::EXIT_PANIC)
}

// The memory intrinsics. Written with string instructions so that the compiler cannot turn
// them back into calls to themselves.

/// `memcpy`.
///
/// # Safety
/// As C's `memcpy`.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid and do not overlap.
    unsafe {
        asm!("rep movsb", inout("rdi") dst => _, inout("rsi") src => _, inout("rcx") n => _,
             options(nostack, preserves_flags))
    };
    dst
}

/// `memmove`.
///
/// # Safety
/// As C's `memmove`.
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize).wrapping_add(n) {
        // SAFETY: copying forwards is correct when dst is below src or past its end.
        unsafe { memcpy(dst, src, n) };
    } else if n > 0 {
        // SAFETY: overlapping with dst above src: copy backwards (DF set, then cleared again).
        unsafe {
            asm!("std", "rep movsb", "cld",
                 inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
                 inout("rcx") n => _, options(nostack))
        };
    }
    dst
}

/// `memset`.
///
/// # Safety
/// As C's `memset`.
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees `dst..dst + n` is valid for writes.
    unsafe {
        asm!("rep stosb", inout("rdi") dst => _, inout("rcx") n => _, in("al") c as u8,
             options(nostack, preserves_flags))
    };
    dst
}

/// `memcmp`.
///
/// # Safety
/// As C's `memcmp`.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller guarantees both ranges are valid for `n` bytes; volatile reads
        // keep the compiler from recognising this loop as a call to memcmp.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// `bcmp` (equality-only `memcmp`, emitted by the compiler for slice comparisons).
///
/// # Safety
/// As C's `bcmp`.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: forwarded with the caller's guarantees.
    unsafe { memcmp(a, b, n) }
}
