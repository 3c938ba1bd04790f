//! The parameters and results of each guest image (no_std).
//!
//! The host passes an image its parameters in [`BootBlock::params`] and reads the counters it
//! keeps in [`BootBlock::results`]. Each image has its own module naming the slots it reads
//! (`param`) and writes (`result`): [`client`], [`worker`], [`peer`], [`hello`], [`evil`].
//! Every parameter slot is defined once, in [`param`]; the images re-export the ones they
//! read. Slots the guest runtime's driver reads and writes for every image with a vmq device
//! are in [`driver`]; the traffic counters the runner reads from every VM are in [`traffic`];
//! the images re-export the ones they use.
//!
//! A slot means one thing in every image: a parameter of the same name sits in the same slot
//! in every image that reads it (topologies name parameters without regard to the image; it
//! holds by construction, and different names never share a slot), and no two images keep
//! different counters in one result slot (checked at compile time below).
//!
//! | results | what |
//! |---------|------|
//! | 0..6    | [`traffic`]: sent, received, ok, errors, duplicates, mismatches |
//! | 6..11   | [`driver`]: kicks, waits, wait timeouts, port id, ring errors |
//! | 11..16  | [`client`]: error replies by status |
//! | 16..21  | [`evil`]: what its attacks did |
//! | 21      | [`driver`]: directories taken from the switch |
//! | 22      | [`client`]: its destination left the directory |
//! | 23      | [`traffic`]: page return notices (client, peer) |
//! | 24      | [`evil`]: its write to a lent page stayed its own |
//!
//! [`BootBlock::params`]: crate::abi::platform::BootBlock::params
//! [`BootBlock::results`]: crate::abi::platform::BootBlock::results

pub mod client;
pub mod driver;
pub mod evil;
pub mod hello;
pub mod param;
pub mod peer;
pub mod traffic;
pub mod worker;

use crate::abi::platform::NUM_RESULTS;

/// Exit statuses of the images (besides the runtime's
/// [`EXIT_PANIC`](crate::abi::platform::EXIT_PANIC)).
pub mod exit {
    /// No vmq virtio-mmio device found, or it refused the driver (features, queues).
    pub const NO_DEVICE: u32 = 10;
    /// The driver saw a ring fault it cannot recover from (the device broke the ring protocol,
    /// or the device asked for a reset).
    pub const RING_FAULT: u32 = 11;
    /// (`client`, `evil`, `peer`): a reply came for an id that was not outstanding, or a
    /// message from a sender it cannot track.
    pub const DUPLICATE: u32 = 12;
    /// (`client`, `evil`, `peer`): a payload mismatch or an out-of-order message.
    pub const MISMATCH: u32 = 13;
    /// (`worker`): [`worker::param::CRASH_AFTER`](super::worker::param::CRASH_AFTER) fired.
    pub const CRASHED: u32 = 14;
    /// A parameter is out of range (e.g. a payload larger than
    /// [`MAX_GUEST_PAYLOAD`](super::MAX_GUEST_PAYLOAD)).
    pub const BAD_PARAM: u32 = 15;
    /// (`peer`): the switch reported messages it could not deliver.
    pub const UNDELIVERED: u32 = 16;
}

/// Largest payload the guest images send (their `SIZE` parameter), but `peer`'s.
pub const MAX_GUEST_PAYLOAD: u64 = 4096;

/// Largest payload a `peer` sends ([`MAX_PAYLOAD`](crate::wire::MAX_PAYLOAD), 1 MiB, the most
/// one hand-off message's pages carry): its buffers come from its free memory, not its stack.
pub const MAX_PEER_PAYLOAD: u64 = crate::wire::MAX_PAYLOAD as u64;

/// Longest name a name parameter carries (a directory entry's longest name,
/// [`MAX_NAME`](crate::wire::directory::MAX_NAME)).
pub const MAX_PARAM_NAME: usize = crate::wire::directory::MAX_NAME;

/// Encodes a name parameter (`TARGET`, `SERVICE`, `SIDE_SERVICE`): the name is `len` bytes at
/// `offset` in the parameter text ([`PARAM_TEXT_ADDR`](crate::abi::platform::PARAM_TEXT_ADDR)),
/// the value `offset << 16 | len`; 0 (an empty name) means "not set". Guests resolve the name
/// in the switch's directory: ports and services are named, never numbered, in parameters.
pub const fn text_param(offset: u32, len: u32) -> u64 {
    ((offset as u64) << 16) | len as u64
}

/// Decodes a name parameter into `(offset, len)` within the parameter text: `None` when not
/// set, longer than [`MAX_PARAM_NAME`] or past
/// [`PARAM_TEXT_SIZE`](crate::abi::platform::PARAM_TEXT_SIZE).
pub const fn param_text(value: u64) -> Option<(usize, usize)> {
    let len = (value & 0xffff) as usize;
    let offset = value >> 16;
    if len == 0
        || len > MAX_PARAM_NAME
        || offset > crate::abi::platform::PARAM_TEXT_SIZE as u64
        || offset as usize + len > crate::abi::platform::PARAM_TEXT_SIZE
    {
        None
    } else {
        Some((offset as usize, len))
    }
}

/// Whether every slot is below `limit` and no two are equal.
const fn distinct_below(slots: &[usize], limit: usize) -> bool {
    let mut i = 0;
    while i < slots.len() {
        if slots[i] >= limit {
            return false;
        }
        let mut j = i + 1;
        while j < slots.len() {
            if slots[i] == slots[j] {
                return false;
            }
            j += 1;
        }
        i += 1;
    }
    true
}

// No two images keep different counters in one result slot.
const _: () = assert!(distinct_below(
    &[
        traffic::SENT,
        traffic::RECEIVED,
        traffic::OK,
        traffic::ERRORS,
        traffic::DUPLICATES,
        traffic::MISMATCHES,
        driver::result::KICKS,
        driver::result::WAITS,
        driver::result::WAIT_TIMEOUTS,
        driver::result::PORT_ID,
        driver::result::RING_ERRORS,
        client::result::STATUS_NO_BACKEND,
        client::result::STATUS_UNREACHABLE,
        client::result::STATUS_BACKEND_ERROR,
        client::result::STATUS_TIMEOUT_OR_BROKEN,
        client::result::STATUS_OTHER,
        evil::result::NEEDS_RESET,
        evil::result::ATTACKS,
        evil::result::SNAPSHOT_OK,
        evil::result::BEFORE_RESET,
        evil::result::REVIVED,
        driver::result::DIRECTORIES,
        client::result::TARGET_GONE,
        traffic::PAGE_RETURNS,
        evil::result::PAGES_OK,
    ],
    NUM_RESULTS
));
