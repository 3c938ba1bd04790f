//! Guest images built from `guest-images/` by the crate's build script.

/// The `hello` guest: prints a greeting with its boot parameters, exercises the doorbell wait
/// and an MMIO device, and exits with `params[PARAM_EXIT_STATUS]`. Other `PARAM_MODE` values
/// select test and measurement loops (see `guest-images/src/bin/hello.rs`).
pub static HELLO: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hello.elf"));

/// Every built image by name.
pub static ALL: &[(&str, &[u8])] = &[("hello", HELLO)];

/// Looks up an image by name.
pub fn by_name(name: &str) -> Option<&'static [u8]> {
    ALL.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}
