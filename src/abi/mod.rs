//! The contract between the VMM and a vmq guest image (no_std): port numbers, the guest-physical
//! memory map and the boot block.
//!
//! Guest-physical memory map (identity mapped, 2 MiB pages, the first 4 GiB):
//!
//! | range                                    | what |
//! |------------------------------------------|------|
//! | `0x0000..0x1000`                         | unused (keep null pointers harmless to find) |
//! | [`GDT_ADDR`] (`0x1000`)                  | GDT: null, kernel code/data, user code/data, TSS |
//! | [`TSS_ADDR`] (`0x2000`)                  | 64-bit TSS (required by VMX; never used) |
//! | [`BOOT_BLOCK_ADDR`] (`0x5000`)           | [`BootBlock`], one page; its address is in `rdi` at entry |
//! | [`CONSOLE_BUF_ADDR`] (`0x6000`)          | console buffer, one page (see [`PORT_CONSOLE`]) |
//! | [`LATENCY_HIST_ADDR`] (`0x7000`)         | request round-trip histogram a `client` fills ([`latency_bucket`]) |
//! | [`PAGE_TABLES_ADDR`] (`0x10000`)         | PML4, PDPT and four page directories |
//! | [`STACK_BOTTOM`]..[`STACK_TOP`]          | the guest stack (1 MiB), `rsp` = [`STACK_TOP`] at entry |
//! | [`IMAGE_BASE`] (`0x20_0000`) ..          | the ELF image's `PT_LOAD` segments |
//! | `free_start..free_end` (boot block)      | free RAM for queues and buffers, up to the memory size |
//! | [`MMIO_BASE`] (`0xd000_0000`) ..         | MMIO device windows, [`MMIO_SLOT_SIZE`] apart |
//!
//! The guest starts in 64-bit user mode (CPL 3, IOPL 3), with `rdi` = [`BOOT_BLOCK_ADDR`].
//!
//! The vmq virtio-mmio device (register offsets, ids, feature and status bits, config space) is
//! described in [`crate::virtio::spec`] and [`crate::virtio::vmq_device`]. Guest images read their parameters from [`BootBlock::params`]
//! (`PARAM_*` indices) and write their counters to [`BootBlock::results`] (`RES_*` indices).

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

/// Exit status a guest reports when it panics.
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
/// Guest-physical address of the console buffer (see [`PORT_CONSOLE`]).
pub const CONSOLE_BUF_ADDR: u64 = 0x6000;
/// Size of the console buffer.
pub const CONSOLE_BUF_SIZE: u64 = 0x1000;
/// Guest-physical address of the round-trip latency histogram a `client` keeps:
/// [`LATENCY_BUCKETS`] little-endian `u64` counts of requests whose round trip (send to reply,
/// in TSC cycles) fell in bucket [`latency_bucket`]. The host reads it after the guest exits.
pub const LATENCY_HIST_ADDR: u64 = 0x7000;
/// Buckets of the latency histogram.
pub const LATENCY_BUCKETS: usize = 256;

/// Histogram bucket of `cycles`: exact below 16, then four buckets per power of two (about
/// 19 % wide), the last one open-ended.
pub const fn latency_bucket(cycles: u64) -> usize {
    if cycles < 16 {
        return cycles as usize;
    }
    let e = 63 - cycles.leading_zeros() as usize; // >= 4
    let sub = ((cycles >> (e - 2)) & 3) as usize;
    let i = 16 + (e - 4) * 4 + sub;
    if i < LATENCY_BUCKETS {
        i
    } else {
        LATENCY_BUCKETS - 1
    }
}

/// Smallest cycle count that falls in bucket `i` (inverse of [`latency_bucket`]).
pub const fn latency_bucket_floor(i: usize) -> u64 {
    if i < 16 {
        return i as u64;
    }
    let e = (i - 16) / 4 + 4;
    let sub = ((i - 16) % 4) as u64;
    (1u64 << e) | (sub << (e - 2))
}

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
/// `BootBlock::version` this build writes. Version 2 added [`BootBlock::results`].
pub const BOOT_VERSION: u32 = 2;
/// Number of `u64` parameters in the boot block.
pub const NUM_PARAMS: usize = 32;
/// Number of `u64` result slots in the boot block (see the `RES_*` indices).
pub const NUM_RESULTS: usize = 16;
/// Bytes of the VM name in the boot block (NUL padded, not necessarily NUL terminated).
pub const NAME_LEN: usize = 32;

/// Parameter index: what the guest should do (guest-specific meaning; `client`:
/// [`CLIENT_MODE_NORMAL`] or [`CLIENT_MODE_MALFORMED`]).
pub const PARAM_MODE: usize = 0;
/// Parameter index: how many messages/iterations.
pub const PARAM_COUNT: usize = 1;
/// Parameter index: a service id to talk to or to serve.
pub const PARAM_SERVICE: usize = 2;
/// Parameter index: stop draining after this many messages (0 = never), for failover tests.
pub const PARAM_STALL_AFTER: usize = 3;
/// Parameter index: the exit status the guest should report on success.
pub const PARAM_EXIT_STATUS: usize = 4;
/// Parameter index: a payload or buffer size.
pub const PARAM_SIZE: usize = 5;
/// Parameter index: an address the guest should poke (test hook; `hello` uses it as an MMIO
/// address).
pub const PARAM_TEST_ADDR: usize = 6;
/// Parameter index: a destination port, encoded with [`port_param`] (0 = not set). `client`
/// sends to this port instead of [`PARAM_SERVICE`]; `peer` sends its one-way messages here.
pub const PARAM_TARGET: usize = 8;
/// Parameter index: most requests a `client` keeps outstanding (0 = as many as its tx ring
/// holds; it is always bounded by the tx ring).
pub const PARAM_WINDOW: usize = 9;
/// Parameter index: how a guest waits when it has nothing to do: [`WAIT_POLL`] or
/// [`WAIT_DOORBELL`].
pub const PARAM_WAIT: usize = 10;
/// Parameter index: `worker` busy-loop iterations per request (0 = none).
pub const PARAM_SLOW: usize = 11;
/// Parameter index: `worker` answers every n-th request with `Status::BackendError`
/// (0 = never).
pub const PARAM_ERROR_EVERY: usize = 12;
/// Parameter index: `worker` exits with [`EXIT_CRASHED`] right after its K-th reply, leaving
/// whatever else it was given unanswered (0 = never).
pub const PARAM_CRASH_AFTER: usize = 13;
/// Parameter index: how many one-way messages a `peer` must receive before it may exit.
pub const PARAM_EXPECT: usize = 14;
/// Parameter index: the queue size the guest driver asks for (0 = the device's maximum; else a
/// power of two, clamped to the maximum).
pub const PARAM_QUEUE_SIZE: usize = 15;
/// Parameter index: `worker` goes mute after its K-th reply: it keeps taking requests off its
/// rx queue but never answers another one (0 = never). The switch sees a backend that drains
/// but does not answer.
pub const PARAM_MUTE_AFTER: usize = 16;
/// Parameter index: a second service id a guest uses besides [`PARAM_SERVICE`] (`evil`: the
/// service of its [`EVIL_REWRITE`] and [`EVIL_RESET`] phases).
pub const PARAM_SIDE_SERVICE: usize = 17;
/// First parameter index not assigned here; guests may define their own from this one on.
pub const PARAM_FIRST_FREE: usize = 18;

/// [`PARAM_MODE`] of `client`: send [`PARAM_COUNT`] requests and check every reply.
pub const CLIENT_MODE_NORMAL: u64 = 0;
/// [`PARAM_MODE`] of `client`: a hostile guest, for tests. It sends its [`PARAM_COUNT`] requests
/// and waits for their replies like [`CLIENT_MODE_NORMAL`], then publishes one tx chain whose
/// buffer lies at [`CLIENT_BAD_ADDR`], outside its memory, and waits until the device sets
/// `DEVICE_NEEDS_RESET`; it then exits with [`EXIT_RING_FAULT`].
pub const CLIENT_MODE_MALFORMED: u64 = 1;
/// The buffer address of the chain a [`CLIENT_MODE_MALFORMED`] client publishes: above
/// [`MAX_MEM_SIZE`], so outside the memory of any VM.
pub const CLIENT_BAD_ADDR: u64 = MAX_MEM_SIZE + 0x1000;

/// [`PARAM_MODE`] of `evil`: honest only. It sends [`PARAM_COUNT`] requests of [`PARAM_SIZE`]
/// bytes to [`PARAM_SERVICE`] (at most [`PARAM_WINDOW`] outstanding), checks every reply like a
/// `client`, and exits 0. Every other mode starts with this honest phase, then misbehaves once.
///
/// The modes that break the ring protocol ([`EVIL_LOOP`] to [`EVIL_AVAIL_JUMP`], and
/// [`EVIL_REWRITE`]) then wait until the device sets `DEVICE_NEEDS_RESET`, record it in
/// [`RES_EVIL_NEEDS_RESET`] and exit with [`EXIT_RING_FAULT`]; the host stops the VM if the
/// device never asks.
pub const EVIL_HONEST: u64 = 0;
/// `evil`: publishes a two-descriptor tx chain whose second descriptor links back to the first
/// (a descriptor loop).
pub const EVIL_LOOP: u64 = 1;
/// `evil`: publishes a tx chain whose buffer is at [`CLIENT_BAD_ADDR`], outside its memory.
pub const EVIL_OUTSIDE: u64 = 2;
/// `evil`: publishes a tx chain whose buffer is the first MMIO window, [`MMIO_BASE`].
pub const EVIL_MMIO: u64 = 3;
/// `evil`: publishes a tx chain whose buffer starts in its memory with a length of `u32::MAX`.
pub const EVIL_GIANT_LEN: u64 = 4;
/// `evil`: publishes a tx chain whose buffer address plus length overflows `u64`.
pub const EVIL_ADDR_OVERFLOW: u64 = 5;
/// `evil`: moves its tx avail index more than a queue size ahead of what it published.
pub const EVIL_AVAIL_JUMP: u64 = 6;
/// `evil`: rewrites descriptors the device holds. It serves [`PARAM_SIDE_SERVICE`] itself (it
/// must be that service's only member), uses up its own rx buffers with one-way messages to
/// itself, and sends a request to that service, which therefore waits in the switch, held.
/// First a two-descriptor chain: once the switch has taken it, the evil turns its descriptors
/// into a loop pointing outside memory, posts rx buffers, and checks that the request still
/// arrives intact (chains of up to four buffers are snapshotted when taken;
/// [`RES_EVIL_SNAPSHOT_OK`]), then answers it. Then a six-descriptor chain, rewritten into a
/// loop the same way: the switch walks such chains again when it delivers them, finds the loop
/// and marks the port broken.
pub const EVIL_REWRITE: u64 = 7;
/// `evil`: its honest requests carry the port in [`PARAM_TARGET`] as their `src` (claiming to
/// be another VM), and it then sends [`EVIL_FORGED_REPLIES`] replies with guessed in-flight
/// tokens (it is no backend of anything). Not a protocol fault: the switch restamps `src`, so
/// every reply must come back to the evil, and drops the forged replies as late. Exits 0.
pub const EVIL_FORGE_SRC: u64 = 8;
/// `evil`: floods: the honest phase with no window, as fast as its tx ring allows. Exits 0.
pub const EVIL_FLOOD: u64 = 9;
/// `evil`: resets its device mid-flight. After the honest phase it sends [`EVIL_RESET_BATCH`]
/// requests to [`PARAM_SIDE_SERVICE`] (meant to be slow), makes sure the switch took them,
/// writes status 0 with them unanswered, brings the device up again in fresh memory and, once
/// the switch's hello came back ([`RES_EVIL_REVIVED`]), runs the honest phase again against
/// [`PARAM_SERVICE`] and then [`EVIL_RESET_BATCH`] requests against [`PARAM_SIDE_SERVICE`].
/// With [`PARAM_TARGET`] set it also sends [`EVIL_RESET_ONEWAYS`] one-way messages to that port
/// right after the first batch, before the reset (a port that cannot take them yet holds them
/// in its backlog). Exits 0.
pub const EVIL_RESET: u64 = 10;
/// Forged replies an [`EVIL_FORGE_SRC`] guest sends.
pub const EVIL_FORGED_REPLIES: u64 = 256;
/// Requests an [`EVIL_RESET`] guest leaves in flight when it resets its device.
pub const EVIL_RESET_BATCH: u64 = 8;
/// One-way messages an [`EVIL_RESET`] guest with a [`PARAM_TARGET`] sends there before it
/// resets its device.
pub const EVIL_RESET_ONEWAYS: u64 = 4;

/// [`PARAM_WAIT`]: spin on the rings, never sleep (one core per guest).
pub const WAIT_POLL: u64 = 0;
/// [`PARAM_WAIT`]: spin a bounded while, then ask for a notification and park the vCPU on the
/// doorbell-wait port.
pub const WAIT_DOORBELL: u64 = 1;

/// Encodes port id `port` for [`PARAM_TARGET`] (`port + 1`, so 0 can mean "not set").
pub const fn port_param(port: u32) -> u64 {
    port as u64 + 1
}

/// Decodes a [`PARAM_TARGET`] value: `None` when not set or out of range.
pub const fn param_port(value: u64) -> Option<u32> {
    if value == 0 || value > u32::MAX as u64 {
        None
    } else {
        Some((value - 1) as u32)
    }
}

/// Result index: messages sent (client: requests; worker: replies; peer: one-way messages).
pub const RES_SENT: usize = 0;
/// Result index: messages received (client: replies of any status; worker: requests; peer:
/// one-way messages), not counting the hello.
pub const RES_RECEIVED: usize = 1;
/// Result index: client: replies with `Status::Ok` and the right payload; worker: replies sent
/// with `Status::Ok`; peer: messages that arrived in order and intact.
pub const RES_OK: usize = 2;
/// Result index: client: replies with an error status (the sum of the `RES_STATUS_*` slots);
/// worker: replies sent with `Status::BackendError`; peer: error notices from the switch.
pub const RES_ERRORS: usize = 3;
/// Result index: client: replies whose id is not outstanding (never sent, or answered twice);
/// peer: messages from a sender id it cannot track.
pub const RES_DUPLICATES: usize = 4;
/// Result index: client: `Ok` replies whose payload is not the worker's transform of the
/// request; peer: messages out of order or with a corrupt payload.
pub const RES_MISMATCHES: usize = 5;
/// Result index: QueueNotify writes (kicks) the guest made.
pub const RES_KICKS: usize = 6;
/// Result index: doorbell waits the guest made.
pub const RES_WAITS: usize = 7;
/// Result index: doorbell waits that ended by their timeout (a safety net; should stay low).
pub const RES_WAIT_TIMEOUTS: usize = 8;
/// Result index: the guest's port id from the switch's hello (`u64::MAX` before it came).
pub const RES_PORT_ID: usize = 9;
/// Result index: ring or protocol errors the guest's driver saw (bad messages, ring faults).
pub const RES_RING_ERRORS: usize = 10;
/// Result index: client: error replies with `Status::NoBackend`.
pub const RES_STATUS_NO_BACKEND: usize = 11;
/// Result index: client: error replies with `Status::Unreachable`.
pub const RES_STATUS_UNREACHABLE: usize = 12;
/// Result index: client: error replies with `Status::BackendError`.
pub const RES_STATUS_BACKEND_ERROR: usize = 13;
/// Result index: client: error replies with `Status::Timeout` or `Status::PortBroken`.
pub const RES_STATUS_TIMEOUT_OR_BROKEN: usize = 14;
/// Result index: client: error replies with any other status.
pub const RES_STATUS_OTHER: usize = 15;

/// Result index (`evil`, in place of the client's per-status slots): 1 once the guest saw its
/// device set `DEVICE_NEEDS_RESET`.
pub const RES_EVIL_NEEDS_RESET: usize = 11;
/// Result index (`evil`): hostile acts published (bad chains, index jumps, forged replies,
/// rewritten chains, resets).
pub const RES_EVIL_ATTACKS: usize = 12;
/// Result index (`evil`, [`EVIL_REWRITE`]): 1 when the short chain it rewrote after the switch
/// took it still arrived with its original payload and no fault.
pub const RES_EVIL_SNAPSHOT_OK: usize = 13;
/// Result index (`evil`, [`EVIL_RESET`]): replies to the side-service batch received before the
/// reset (the rest were in flight when it reset).
pub const RES_EVIL_BEFORE_RESET: usize = 14;
/// Result index (`evil`, [`EVIL_RESET`]): hellos received after the device came back.
pub const RES_EVIL_REVIVED: usize = 15;

/// Exit status: no vmq virtio-mmio device found, or it refused the driver (features, queues).
pub const EXIT_NO_DEVICE: u32 = 10;
/// Exit status: the driver saw a ring fault it cannot recover from (the device broke the ring
/// protocol, or the device asked for a reset).
pub const EXIT_RING_FAULT: u32 = 11;
/// Exit status (client): a reply came for an id that was not outstanding.
pub const EXIT_DUPLICATE: u32 = 12;
/// Exit status (client, peer): a payload mismatch or an out-of-order message.
pub const EXIT_MISMATCH: u32 = 13;
/// Exit status (worker): [`PARAM_CRASH_AFTER`] fired.
pub const EXIT_CRASHED: u32 = 14;
/// Exit status: a parameter is out of range (e.g. a payload larger than [`MAX_GUEST_PAYLOAD`]).
pub const EXIT_BAD_PARAM: u32 = 15;

/// Exit status (peer): the switch reported messages it could not deliver.
pub const EXIT_UNDELIVERED: u32 = 16;

/// Largest payload the guest images send ([`PARAM_SIZE`]).
pub const MAX_GUEST_PAYLOAD: u64 = 4096;

/// The byte a `worker` XORs into every payload byte of a request to make its reply; a
/// `client` checks for it.
pub const WORKER_XOR: u8 = 0x5a;

/// Byte `i` of the payload of a `client` request with id `msg_id`.
pub const fn request_byte(msg_id: u64, i: usize) -> u8 {
    (msg_id as u8).wrapping_mul(31).wrapping_add(i as u8) ^ ((msg_id >> 8) as u8)
}

/// Byte `i` (counting after the 8-byte sequence number) of the `seq`-th one-way message a
/// `peer` with port id `src` sends.
pub const fn peer_byte(src: u32, seq: u64, i: usize) -> u8 {
    (seq as u8)
        .wrapping_mul(13)
        .wrapping_add((i as u8).wrapping_mul(7))
        .wrapping_add((src as u8).wrapping_mul(101))
}

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
    /// Caller-defined parameters; see the `PARAM_*` indices.
    pub params: [u64; NUM_PARAMS],
    /// Counters the guest writes while it runs and before it exits; see the `RES_*` indices.
    /// The VMM zeroes them at start and reads them at any time.
    pub results: [u64; NUM_RESULTS],
}

const _: () =
    assert!(core::mem::size_of::<BootBlock>() == 56 + NAME_LEN + 8 * NUM_PARAMS + 8 * NUM_RESULTS);
const _: () = assert!(core::mem::size_of::<BootBlock>() <= 4096);

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
