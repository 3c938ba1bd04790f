//! Fuzz harnesses for vmq, one plain function per target so the test suite replays the
//! same code on a fixed corpus (`tests/fuzz_corpus.rs` at the crate root).

pub mod chain;
pub mod input;
pub mod mmio;
pub mod session;
pub mod switch;
