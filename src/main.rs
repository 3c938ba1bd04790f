//! The `vmq` command line.
fn main() {}
