//! The platform a vmq guest image runs on (no_std): the guest-physical memory map, the I/O
//! ports, the segment selectors and the boot block.
//!
//! Guest-physical memory map (identity mapped, 2 MiB pages, the first 4 GiB):
//!
//! | range                                    | what |
//! |------------------------------------------|------|
//! | `0x0000..0x1000`                         | unused (keep null pointers harmless to find) |
//! | [`GDT_ADDR`] (`0x1000`)                  | GDT: null, kernel code/data, user code/data, TSS |
//! | [`TSS_ADDR`] (`0x2000`)                  | 64-bit TSS (required by VMX; never used) |
//! | [`BOOT_BLOCK_ADDR`] (`0x5000`)           | [`BootBlock`], one page; its address is in `rdi` at entry; its upper half is the parameter text ([`PARAM_TEXT_ADDR`]) |
//! | [`CONSOLE_BUF_ADDR`] (`0x6000`)          | console buffer, one page (see [`PORT_CONSOLE`]) |
//! | [`LATENCY_HIST_ADDR`] (`0x7000`)         | request round-trip histogram a `client` fills ([`client::latency_bucket`](crate::abi::image::client::latency_bucket)) |
//! | [`PAGE_TABLES_ADDR`] (`0x10000`)         | PML4, PDPT and four page directories |
//! | [`STACK_BOTTOM`]..[`STACK_TOP`]          | the guest stack (1 MiB), `rsp` = [`STACK_TOP`] at entry |
//! | [`IMAGE_BASE`] (`0x20_0000`) ..          | the ELF image's `PT_LOAD` segments |
//! | `free_start..free_end` (boot block)      | free RAM for queues and buffers, up to the memory size |
//! | [`MMIO_BASE`] (`0xd000_0000`) ..         | MMIO device windows, [`MMIO_SLOT_SIZE`] apart |
//!
//! The guest starts in 64-bit user mode (CPL 3, IOPL 3), with `rdi` = [`BOOT_BLOCK_ADDR`].

/// Console port. An 8-bit write appends that byte to the VM's console; a 32-bit write of `n`
/// appends the first `n` bytes (at most [`CONSOLE_BUF_SIZE`]) of the console buffer at
/// [`CONSOLE_BUF_ADDR`], so a whole line costs one exit. A `\n` ends a line.
///
/// (`rep outsb` would do the same without a buffer, but software KVMs such as `kvm_pvm` refuse
/// string I/O from user mode.)
pub const PORT_CONSOLE: u16 = 0x3f8;
/// Exit port: a 32-bit write ends the vCPU loop with that exit status.
pub const PORT_EXIT: u16 = 0x501;
/// Doorbell-wait port: a 32-bit write of a timeout in microseconds parks the vCPU until the VM's
/// work eventfd is signalled or the timeout passes. The reason is then in
/// [`BootBlock::wait_result`]. A timeout of 0 only polls the eventfd.
pub const PORT_DOORBELL_WAIT: u16 = 0x510;

/// No-op port: writes are counted and ignored (used to measure the cost of a port-I/O exit).
pub const PORT_NOP: u16 = 0x80;

/// Exit status a guest reports when it panics (or finds no valid boot block).
pub const EXIT_PANIC: u32 = 101;

/// [`BootBlock::wait_result`]: the timeout passed.
pub const WAIT_TIMEOUT: u32 = 0;
/// [`BootBlock::wait_result`]: the work eventfd was signalled.
pub const WAIT_WORK: u32 = 1;
/// [`BootBlock::wait_result`]: the VMM is stopping the VM.
pub const WAIT_STOP: u32 = 2;

/// Guest-physical address of the GDT.
pub const GDT_ADDR: u64 = 0x1000;
/// Guest-physical address of the TSS.
pub const TSS_ADDR: u64 = 0x2000;
/// Guest-physical address of the boot block.
pub const BOOT_BLOCK_ADDR: u64 = 0x5000;
/// Guest-physical address of the parameter text: the upper half of the boot block's page,
/// where the VMM writes the names that name parameters refer to (a port or service name, see
/// [`text_param`](crate::abi::image::text_param)). The guest only reads it.
pub const PARAM_TEXT_ADDR: u64 = BOOT_BLOCK_ADDR + PARAM_TEXT_OFFSET;
/// Offset of the parameter text in the boot block's page (past the [`BootBlock`]).
pub const PARAM_TEXT_OFFSET: u64 = 2048;
/// Bytes of parameter text (every name parameter of a VM together).
pub const PARAM_TEXT_SIZE: usize = 2048;
/// Guest-physical address of the console buffer (see [`PORT_CONSOLE`]).
pub const CONSOLE_BUF_ADDR: u64 = 0x6000;
/// Size of the console buffer.
pub const CONSOLE_BUF_SIZE: u64 = 0x1000;
/// Guest-physical address of the round-trip latency histogram a `client` keeps (its format:
/// [`client::LATENCY_BUCKETS`](crate::abi::image::client::LATENCY_BUCKETS)). The host reads it
/// after the guest exits.
pub const LATENCY_HIST_ADDR: u64 = 0x7000;
/// Guest-physical address of the page tables (6 pages).
pub const PAGE_TABLES_ADDR: u64 = 0x1_0000;
/// Lowest address of the stack.
pub const STACK_BOTTOM: u64 = 0x10_0000;
/// Initial `rsp` (the stack grows down from here).
pub const STACK_TOP: u64 = 0x20_0000;
/// Lowest address an image segment may be loaded at; guest linker scripts start here.
pub const IMAGE_BASE: u64 = 0x20_0000;
/// Base of the MMIO window; device `n` sits at `MMIO_BASE + n * MMIO_SLOT_SIZE`.
pub const MMIO_BASE: u64 = 0xd000_0000;
/// Size of one device's MMIO window.
pub const MMIO_SLOT_SIZE: u64 = 0x1000;
/// Smallest guest memory size the VMM accepts (4 MiB).
pub const MIN_MEM_SIZE: u64 = 4 << 20;
/// Largest guest memory size the VMM accepts (1 GiB, well below [`MMIO_BASE`]).
pub const MAX_MEM_SIZE: u64 = 1 << 30;

/// Selector of the 64-bit user code segment (GDT index 6, RPL 3).
pub const USER_CS: u16 = 0x33;
/// Selector of the user data segment (GDT index 5, RPL 3).
pub const USER_DS: u16 = 0x2b;
/// Selector of the TSS (GDT index 8).
pub const TSS_SELECTOR: u16 = 0x40;

/// `BootBlock::magic`: "VMQBOOT1" in little endian.
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"VMQBOOT1");
/// `BootBlock::version` this build writes. Version 2 added [`BootBlock::results`]; version 3
/// grew it from 16 to 24 slots and version 4 to [`NUM_RESULTS`], so that no two images share a
/// result slot.
pub const BOOT_VERSION: u32 = 4;
/// Number of `u64` parameters in the boot block.
pub const NUM_PARAMS: usize = 32;
/// Number of `u64` result slots in the boot block.
pub const NUM_RESULTS: usize = 32;
/// Bytes of the VM name in the boot block (NUL padded, not necessarily NUL terminated).
pub const NAME_LEN: usize = 32;

/// The boot block: written by the VMM at [`BOOT_BLOCK_ADDR`] before the vCPU starts; its
/// address is passed in `rdi`. Little endian, `repr(C)`, no padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BootBlock {
    /// [`BOOT_MAGIC`].
    pub magic: u64,
    /// [`BOOT_VERSION`].
    pub version: u32,
    /// Written by the VMM after each doorbell wait: [`WAIT_TIMEOUT`], [`WAIT_WORK`] or
    /// [`WAIT_STOP`].
    pub wait_result: u32,
    /// Guest memory size in bytes (RAM spans `0..mem_size`).
    pub mem_size: u64,
    /// Guest-physical base of the first virtio-mmio device window (0 if none).
    pub mmio_base: u64,
    /// Number of virtio-mmio devices, at `mmio_base + i * MMIO_SLOT_SIZE`.
    pub mmio_count: u64,
    /// First free byte of RAM after the image (page aligned).
    pub free_start: u64,
    /// End (exclusive) of free RAM.
    pub free_end: u64,
    /// The VM's name, NUL padded.
    pub name: [u8; NAME_LEN],
    /// Caller-defined parameters; each image's `param` slots in [`crate::abi::image`].
    pub params: [u64; NUM_PARAMS],
    /// Counters the guest writes while it runs and before it exits; each image's `result`
    /// slots in [`crate::abi::image`]. The VMM zeroes them at start and reads them at any time.
    pub results: [u64; NUM_RESULTS],
}

const _: () =
    assert!(core::mem::size_of::<BootBlock>() == 56 + NAME_LEN + 8 * NUM_PARAMS + 8 * NUM_RESULTS);
const _: () = assert!(core::mem::size_of::<BootBlock>() as u64 <= PARAM_TEXT_OFFSET);
const _: () = assert!(PARAM_TEXT_OFFSET as usize + PARAM_TEXT_SIZE <= 4096);

impl BootBlock {
    /// An empty boot block with magic and version set.
    pub const fn new() -> Self {
        Self {
            magic: BOOT_MAGIC,
            version: BOOT_VERSION,
            wait_result: WAIT_TIMEOUT,
            mem_size: 0,
            mmio_base: 0,
            mmio_count: 0,
            free_start: 0,
            free_end: 0,
            name: [0; NAME_LEN],
            params: [0; NUM_PARAMS],
            results: [0; NUM_RESULTS],
        }
    }

    /// Whether magic and version match this build.
    pub fn is_valid(&self) -> bool {
        self.magic == BOOT_MAGIC && self.version == BOOT_VERSION
    }

    /// The name up to its first NUL, if it is UTF-8.
    pub fn name_str(&self) -> &str {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        core::str::from_utf8(&self.name[..end]).unwrap_or("?")
    }
}

impl Default for BootBlock {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: `BootBlock` is `repr(C)`, made only of integers and byte arrays, and has no padding
// (checked by the size assertion above), so every byte pattern is a valid value.
#[cfg(feature = "std")]
unsafe impl vm_memory::ByteValued for BootBlock {}
