//! Test modes (no_std): what the `mode` parameter selects in the images that have more than
//! one behaviour, the hostile ones included.

/// Modes of the `client` image ([`client::param::MODE`](crate::abi::image::client::param::MODE)).
pub mod client {
    #[cfg(doc)]
    use crate::abi::image::client::param;
    use crate::abi::platform::MAX_MEM_SIZE;

    /// Send [`param::COUNT`] requests and check every reply.
    pub const NORMAL: u64 = 0;
    /// A hostile guest, for tests. It sends its [`param::COUNT`] requests and waits for their
    /// replies like [`NORMAL`], then publishes one tx chain whose buffer lies at [`BAD_ADDR`],
    /// outside its memory, and waits until the device sets `DEVICE_NEEDS_RESET`; it then exits
    /// with [`exit::RING_FAULT`](crate::abi::image::exit::RING_FAULT).
    pub const MALFORMED: u64 = 1;
    /// Page hand-off (seed 004): every request's payload is written into pages of its own RAM
    /// and the request carries their list instead (header flag
    /// [`HANDOFF`](crate::wire::pages::HANDOFF)), one request outstanding at a time: the
    /// reply means its pages are home, and the next request reuses them. Replies are checked
    /// as in [`NORMAL`]; return notices are taken and counted in
    /// [`result::PAGE_RETURNS`](crate::abi::image::client::result::PAGE_RETURNS). Needs a
    /// topology with `[handoff]`.
    pub const HANDOFF: u64 = 2;
    /// The buffer address of the chain a [`MALFORMED`] client publishes: above
    /// [`MAX_MEM_SIZE`], so outside the memory of any VM.
    pub const BAD_ADDR: u64 = MAX_MEM_SIZE + 0x1000;
}

/// Modes of the `peer` image ([`peer::param::MODE`](crate::abi::image::peer::param::MODE)).
pub mod peer {
    #[cfg(doc)]
    use crate::abi::image::peer::{param, result};

    /// Sends its one-way messages as bytes (copied by the switch into the receiver's rx
    /// buffers).
    pub const COPY: u64 = 0;
    /// Page hand-off (seed 004; the same number as the client's
    /// [`HANDOFF`](super::client::HANDOFF)): each message's payload is written into pages of
    /// its own RAM, from a pool of one area per tx slot, and the message carries their list
    /// (header flag [`HANDOFF`](crate::wire::pages::HANDOFF)); an area is used again once the
    /// switch's return notices gave all of its pages back (counted in
    /// [`result::PAGE_RETURNS`]). Any peer takes handed-off messages whatever its own mode:
    /// it reads them from its receive window, checks them like copied ones and releases the
    /// pages. Needs a topology with `[handoff]`.
    pub const HANDOFF: u64 = 2;
}

/// Modes of the `evil` image ([`evil::param::MODE`](crate::abi::image::evil::param::MODE)).
pub mod evil {
    #[cfg(doc)]
    use crate::abi::{
        image::evil::{param, result},
        platform::MMIO_BASE,
    };

    /// Honest only. It sends [`param::COUNT`] requests of [`param::SIZE`] bytes to
    /// [`param::SERVICE`] (at most [`param::WINDOW`] outstanding), checks every reply like a
    /// `client`, and exits 0. Every other mode starts with this honest phase, then misbehaves
    /// once.
    ///
    /// The modes that break the ring protocol ([`LOOP`] to [`AVAIL_JUMP`], and [`REWRITE`])
    /// then wait until the device sets `DEVICE_NEEDS_RESET`, record it in
    /// [`result::NEEDS_RESET`] and exit with
    /// [`exit::RING_FAULT`](crate::abi::image::exit::RING_FAULT); the host stops the VM if the
    /// device never asks.
    pub const HONEST: u64 = 0;
    /// Publishes a two-descriptor tx chain whose second descriptor links back to the first (a
    /// descriptor loop).
    pub const LOOP: u64 = 1;
    /// Publishes a tx chain whose buffer is at [`client::BAD_ADDR`](super::client::BAD_ADDR),
    /// outside its memory.
    pub const OUTSIDE: u64 = 2;
    /// Publishes a tx chain whose buffer is the first MMIO window, [`MMIO_BASE`].
    pub const MMIO: u64 = 3;
    /// Publishes a tx chain whose buffer starts in its memory with a length of `u32::MAX`.
    pub const GIANT_LEN: u64 = 4;
    /// Publishes a tx chain whose buffer address plus length overflows `u64`.
    pub const ADDR_OVERFLOW: u64 = 5;
    /// Moves its tx avail index more than a queue size ahead of what it published.
    pub const AVAIL_JUMP: u64 = 6;
    /// Rewrites descriptors the device holds. It serves [`param::SIDE_SERVICE`] itself (it
    /// must be that service's only member), uses up its own rx buffers with one-way messages to
    /// itself, and sends a request to that service, which therefore waits in the switch, held.
    /// First a two-descriptor chain: once the switch has taken it, the evil turns its
    /// descriptors into a loop pointing outside memory, posts rx buffers, and checks that the
    /// request still arrives intact (chains of up to four buffers are snapshotted when taken;
    /// [`result::SNAPSHOT_OK`]), then answers it. Then a six-descriptor chain, rewritten into a
    /// loop the same way: the switch walks such chains again when it delivers them, finds the
    /// loop and marks the port broken.
    pub const REWRITE: u64 = 7;
    /// Its honest requests carry the port in [`param::TARGET`] as their `src` (claiming to be
    /// another VM), and it then sends [`FORGED_REPLIES`] replies with guessed in-flight tokens
    /// (it is no backend of anything). Not a protocol fault: the switch restamps `src`, so every
    /// reply must come back to the evil, and drops the forged replies as late. Exits 0.
    pub const FORGE_SRC: u64 = 8;
    /// Floods: the honest phase with no window, as fast as its tx ring allows. Exits 0.
    pub const FLOOD: u64 = 9;
    /// Resets its device mid-flight. After the honest phase it sends [`RESET_BATCH`] requests
    /// to [`param::SIDE_SERVICE`] (meant to be slow), makes sure the switch took them, writes
    /// status 0 with them unanswered, brings the device up again in fresh memory and, once the
    /// switch's hello came back ([`result::REVIVED`]), runs the honest phase again against
    /// [`param::SERVICE`] and then [`RESET_BATCH`] requests against [`param::SIDE_SERVICE`].
    /// With [`param::TARGET`] set it also sends [`RESET_ONEWAYS`] one-way messages to that port
    /// right after the first batch, before the reset (a port that cannot take them yet holds
    /// them in its backlog). Exits 0.
    pub const RESET: u64 = 10;
    /// Page hand-off (seed 004; needs a topology with `[handoff]`): after the honest phase it
    /// sends [`param::SERVICE`] one request whose page list names a page outside its RAM (at
    /// its memory size), then waits for `DEVICE_NEEDS_RESET` like the ring-breaking modes.
    pub const PAGES_OUTSIDE: u64 = 11;
    /// As [`PAGES_OUTSIDE`], naming the page of its own tx descriptor table.
    pub const PAGES_RINGS: u64 = 12;
    /// As [`PAGES_OUTSIDE`], naming one of its pages twice in one list.
    pub const PAGES_DUPLICATE: u64 = 13;
    /// As [`PAGES_OUTSIDE`], with two requests published together naming the same page: the
    /// second names a page the first handed off already.
    pub const PAGES_TWICE: u64 = 14;
    /// Writes to a page it handed off: it sends [`param::SIDE_SERVICE`] (a slow worker) one
    /// request carrying a page of its data, waits until that page reads as zeros (the
    /// stand-in: the hand-off happened), overwrites it, and waits for the reply, which must
    /// carry the original bytes; then the page must read its original bytes again (home,
    /// the write gone). [`result::PAGES_OK`] = 1 when all of that held; exits 0.
    pub const PAGES_WRITE: u64 = 15;
    /// Lends to a receiver that keeps pages: it sends [`param::SIDE_SERVICE`] (a worker that
    /// stops answering, and so releasing, after one reply) [`HOARD`] requests, each carrying a
    /// page of its own, and waits for every answer (errors at the service's deadline); then it
    /// resets its device with the kept pages still lent (the ledger takes them back) and
    /// exits 0.
    pub const PAGES_HOARD: u64 = 16;
    /// Requests a [`PAGES_HOARD`] guest sends.
    pub const HOARD: u64 = 8;
    /// Forged replies a [`FORGE_SRC`] guest sends.
    pub const FORGED_REPLIES: u64 = 256;
    /// Requests a [`RESET`] guest leaves in flight when it resets its device.
    pub const RESET_BATCH: u64 = 8;
    /// One-way messages a [`RESET`] guest with a [`param::TARGET`] sends there before it resets
    /// its device.
    pub const RESET_ONEWAYS: u64 = 4;
}
