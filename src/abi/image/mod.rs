//! The parameters and results of each guest image (no_std).
//!
//! The host passes an image its parameters in [`BootBlock::params`] and reads the counters it
//! keeps in [`BootBlock::results`]. Each image has its own module naming the slots it reads
//! (`param`) and writes (`result`): [`client`], [`worker`], [`peer`], [`hello`], [`evil`].
//! Slots the guest runtime's driver reads and writes for every image with a vmq device are in
//! [`driver`]; the traffic counters the runner reads from every VM are in [`traffic`]; the
//! images re-export the ones they use.
//!
//! A slot means one thing in every image: a parameter of the same name sits in the same slot
//! in every image that reads it (topologies name parameters without regard to the image), and
//! no two images keep different counters in one result slot. Both are checked at compile time
//! below.
//!
//! | results | what |
//! |---------|------|
//! | 0..6    | [`traffic`]: sent, received, ok, errors, duplicates, mismatches |
//! | 6..11   | [`driver`]: kicks, waits, wait timeouts, port id, ring errors |
//! | 11..16  | [`client`]: error replies by status |
//! | 16..21  | [`evil`]: what its attacks did |
//!
//! [`BootBlock::params`]: crate::abi::platform::BootBlock::params
//! [`BootBlock::results`]: crate::abi::platform::BootBlock::results

pub mod client;
pub mod driver;
pub mod evil;
pub mod hello;
pub mod peer;
pub mod traffic;
pub mod worker;

use crate::abi::platform::{NUM_PARAMS, NUM_RESULTS};

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

/// Largest payload the guest images send (their `SIZE` parameter).
pub const MAX_GUEST_PAYLOAD: u64 = 4096;

/// Encodes port id `port` for a `TARGET` parameter (`port + 1`, so 0 can mean "not set").
pub const fn port_param(port: u32) -> u64 {
    port as u64 + 1
}

/// Decodes a `TARGET` parameter: `None` when not set or out of range.
pub const fn param_port(value: u64) -> Option<u32> {
    if value == 0 || value > u32::MAX as u64 {
        None
    } else {
        Some((value - 1) as u32)
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

// Each image's parameters are distinct slots.
const _: () = {
    {
        use client::param::*;
        assert!(distinct_below(
            &[MODE, COUNT, SERVICE, SIZE, TARGET, WINDOW, WAIT, QUEUE_SIZE],
            NUM_PARAMS
        ));
    }
    {
        use worker::param::*;
        assert!(distinct_below(
            &[
                COUNT,
                STALL_AFTER,
                SIZE,
                SLOW,
                ERROR_EVERY,
                CRASH_AFTER,
                MUTE_AFTER,
                WAIT,
                QUEUE_SIZE
            ],
            NUM_PARAMS
        ));
    }
    {
        use peer::param::*;
        assert!(distinct_below(
            &[COUNT, SIZE, TARGET, EXPECT, WAIT, QUEUE_SIZE],
            NUM_PARAMS
        ));
    }
    {
        use hello::param::*;
        assert!(distinct_below(
            &[MODE, COUNT, SERVICE, EXIT_STATUS, SIZE, TEST_ADDR],
            NUM_PARAMS
        ));
    }
    {
        use evil::param::*;
        assert!(distinct_below(
            &[
                MODE,
                COUNT,
                SERVICE,
                SIZE,
                TARGET,
                WINDOW,
                SIDE_SERVICE,
                WAIT,
                QUEUE_SIZE
            ],
            NUM_PARAMS
        ));
    }
};

// A parameter of one name sits in one slot in every image that reads it, and different names
// never share a slot.
const _: () = {
    let (c, w, p, h, e) = (
        client::param::COUNT,
        worker::param::COUNT,
        peer::param::COUNT,
        hello::param::COUNT,
        evil::param::COUNT,
    );
    assert!(c == w && c == p && c == h && c == e);
    assert!(client::param::MODE == hello::param::MODE && client::param::MODE == evil::param::MODE);
    assert!(client::param::SERVICE == hello::param::SERVICE);
    assert!(client::param::SERVICE == evil::param::SERVICE);
    let s = client::param::SIZE;
    assert!(s == worker::param::SIZE && s == peer::param::SIZE);
    assert!(s == hello::param::SIZE && s == evil::param::SIZE);
    assert!(client::param::TARGET == peer::param::TARGET);
    assert!(client::param::TARGET == evil::param::TARGET);
    assert!(client::param::WINDOW == evil::param::WINDOW);
    assert!(distinct_below(
        &[
            client::param::MODE,
            client::param::COUNT,
            client::param::SERVICE,
            worker::param::STALL_AFTER,
            hello::param::EXIT_STATUS,
            client::param::SIZE,
            hello::param::TEST_ADDR,
            client::param::TARGET,
            client::param::WINDOW,
            driver::param::WAIT,
            worker::param::SLOW,
            worker::param::ERROR_EVERY,
            worker::param::CRASH_AFTER,
            peer::param::EXPECT,
            driver::param::QUEUE_SIZE,
            worker::param::MUTE_AFTER,
            evil::param::SIDE_SERVICE,
        ],
        NUM_PARAMS
    ));
};

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
    ],
    NUM_RESULTS
));
