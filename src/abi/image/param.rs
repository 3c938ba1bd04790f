//! Every parameter slot (an index into `BootBlock::params`), defined once.
//!
//! A parameter of one name sits in one slot in every image that reads it (topologies name
//! parameters without regard to the image): each image's `param` module re-exports the ones
//! it reads from here, so the rule holds by construction. What a parameter means to each image
//! is said below; the images' own modules name the subsets ([`client::param`],
//! [`worker::param`], [`peer::param`], [`hello::param`], [`evil::param`]).
//!
//! [`client::param`]: super::client::param
//! [`worker::param`]: super::worker::param
//! [`peer::param`]: super::peer::param
//! [`hello::param`]: super::hello::param
//! [`evil::param`]: super::evil::param

use crate::abi::platform::NUM_PARAMS;

/// What the image does: `client`: [`mode::client`](crate::abi::mode::client); `evil`: which
/// attack, [`mode::evil`](crate::abi::mode::evil); `hello`: 0 greets and exits with
/// [`EXIT_STATUS`] (see the image's source for the others).
pub const MODE: usize = 0;
/// How many: `client`: requests to send; `evil`: requests of the honest phase; `worker`:
/// replies to send before exiting 0 (0 = serve until the host stops the VM); `peer`: one-way
/// messages to send; `hello`: port or MMIO writes (modes 2 and 3).
pub const COUNT: usize = 1;
/// `client`: the service to send requests to (unless [`TARGET`] is set); `evil`: the service
/// of the honest phase: a name parameter ([`text_param`](super::text_param)) the guest looks
/// up in the switch's directory. `hello`: a number it prints in its greeting.
pub const SERVICE: usize = 2;
/// `worker`: stop draining after this many requests (0 = never), for failover tests.
pub const STALL_AFTER: usize = 3;
/// `hello`: the exit status it reports on success (mode 0).
pub const EXIT_STATUS: usize = 4;
/// `client`, `evil`: payload bytes per request (at most
/// [`MAX_GUEST_PAYLOAD`](super::MAX_GUEST_PAYLOAD)); `worker`: largest request payload
/// expected (sizes the rx slots, at least 1 KiB); `peer`: payload bytes per message (at least
/// 8); `hello`: the value it writes (mode 3) or the doorbell-wait timeout in microseconds
/// (mode 4).
pub const SIZE: usize = 5;
/// `hello`: an MMIO address it writes and reads back (0 = none).
pub const TEST_ADDR: usize = 6;
/// A port (VM) by name, a name parameter ([`text_param`](super::text_param); 0 = not set)
/// the guest looks up in the switch's directory. `client`: where to send instead of
/// [`SERVICE`]; `peer`: where to send its one-way messages; `evil`: the `src` it forges, or
/// where it sends one-way messages before a reset.
pub const TARGET: usize = 8;
/// `client`, `evil` (honest phase): most requests outstanding (0 = as many as its tx ring
/// holds; it is always bounded by the tx ring).
pub const WINDOW: usize = 9;
/// How a guest waits when it has nothing to do: [`WAIT_POLL`](super::driver::WAIT_POLL) or
/// [`WAIT_DOORBELL`](super::driver::WAIT_DOORBELL) (read by the driver of every image with a
/// vmq device).
pub const WAIT: usize = 10;
/// `worker`: busy-loop iterations per request (0 = none).
pub const SLOW: usize = 11;
/// `worker`: answer every n-th request with `Status::BackendError` (0 = never).
pub const ERROR_EVERY: usize = 12;
/// `worker`: exit with [`exit::CRASHED`](super::exit::CRASHED) right after the K-th reply,
/// leaving whatever else it was given unanswered (0 = never).
pub const CRASH_AFTER: usize = 13;
/// `peer`: one-way messages to receive before it may exit.
pub const EXPECT: usize = 14;
/// The queue size the driver asks for (0 = the device's maximum; else a power of two, clamped
/// to the maximum; read by the driver of every image with a vmq device).
pub const QUEUE_SIZE: usize = 15;
/// `worker`: go mute after the K-th reply: keep taking requests off the rx queue but never
/// answer another one (0 = never). The switch sees a backend that drains but does not answer.
pub const MUTE_AFTER: usize = 16;
/// `evil`: the service of its rewrite and reset attacks (a name parameter, like [`SERVICE`]).
pub const SIDE_SERVICE: usize = 17;
/// `client`: the request class of every request (0..=255; selects a byte-share class table,
/// 0 = the default).
pub const CLASS: usize = 18;
/// `client`: the affinity key of its requests (key-hash policies such as Maglev); with
/// [`KEY_SPREAD`] the base of a range.
pub const KEY: usize = 19;
/// `client`: spread the affinity keys over this many values: request `id` carries
/// `KEY + id % KEY_SPREAD` (0 or 1: every request carries [`KEY`]).
pub const KEY_SPREAD: usize = 20;
/// `worker`: lie about its load: spend this many more busy-loop iterations per request
/// (draining slowly) while reporting load 0 (idle) in every reply (0 = honest).
pub const LIE_LOAD: usize = 21;
/// `client`, `peer`: the notification mix of what it sends (the header's
/// [`Notify`](crate::wire::Notify)): 0 = no flag on any message (notified once per switch
/// poll); N = message `k` (counting from 1) immediate when `k` is a multiple of N, else
/// deferred (1: every message immediate); the rule is `traffic::notify_for`.
pub const IMMEDIATE_EVERY: usize = 28;
/// `peer`: check one payload byte in every `CHECK_STRIDE` of a message it receives (0 or 1:
/// every byte); as a sender it writes only those bytes. A stride of a page checks one byte per
/// page, so a bench measures moving the bytes rather than making and checking them.
pub const CHECK_STRIDE: usize = 22;
/// `worker`: 1 = read the pages a request was handed but never release them: its reply
/// returns them (a reply means the request's pages are home); 0 = release them before replying.
pub const KEEP_PAGES: usize = 23;
/// How many times a guest's driver checks its rings before it parks on the doorbell (0 = the
/// driver's default, 4096; read by the driver of every image with a vmq device). A small
/// value makes a guest park whenever it is idle, which makes its notifications countable.
pub const SPIN: usize = 29;

// Different names never share a slot, and every slot is in the boot block.
const _: () = assert!(super::distinct_below(
    &[
        MODE,
        COUNT,
        SERVICE,
        STALL_AFTER,
        EXIT_STATUS,
        SIZE,
        TEST_ADDR,
        TARGET,
        WINDOW,
        WAIT,
        SLOW,
        ERROR_EVERY,
        CRASH_AFTER,
        EXPECT,
        QUEUE_SIZE,
        MUTE_AFTER,
        SIDE_SERVICE,
        CLASS,
        KEY,
        KEY_SPREAD,
        LIE_LOAD,
        IMMEDIATE_EVERY,
        SPIN,
        CHECK_STRIDE,
        KEEP_PAGES,
    ],
    NUM_PARAMS
));
