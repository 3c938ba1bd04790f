//! Guest images built from `guest-images/` by the crate's build script.

/// The `hello` guest: prints a greeting with its boot parameters, exercises the doorbell wait
/// and an MMIO device, and exits with its `EXIT_STATUS` parameter. Other `MODE` values
/// select test and measurement loops (see `guest-images/src/bin/hello.rs`).
pub static HELLO: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hello.elf"));

/// The `client` guest: sends `COUNT` requests to a service (or port) through the vmq
/// device and checks that each gets exactly one reply with the worker's transform of its
/// payload. See `guest-images/src/bin/client.rs` and `abi::image::client`.
pub static CLIENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/client.elf"));

/// The `worker` guest: answers requests with the payload XOR
/// `abi::image::worker::PAYLOAD_XOR` and its load; fault parameters make it slow, erroring,
/// stalling or crashing. See `guest-images/src/bin/worker.rs`.
pub static WORKER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/worker.elf"));

/// The `peer` guest: sends one-way messages to a port and checks that what it receives arrives
/// in order and intact. See `guest-images/src/bin/peer.rs`.
pub static PEER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/peer.elf"));

/// The `evil` guest: behaves like a client, then misbehaves once as its `MODE` says
/// (`abi::mode::evil`: bad chains, index jumps, rewritten descriptors, forged sources, floods,
/// resets mid-flight). For tests. See `guest-images/src/bin/evil.rs`.
pub static EVIL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/evil.elf"));

/// Every built image by name.
pub static ALL: &[(&str, &[u8])] = &[
    ("hello", HELLO),
    ("client", CLIENT),
    ("worker", WORKER),
    ("peer", PEER),
    ("evil", EVIL),
];

/// Looks up an image by name.
pub fn by_name(name: &str) -> Option<&'static [u8]> {
    ALL.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}
