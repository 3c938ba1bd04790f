//! The fuzz targets' harnesses (in `fuzz/src/`), replayed deterministically: every input
//! committed under `fuzz/corpus/<target>/` (seeds and what the fuzzer found interesting), then
//! a few hundred inputs from a seeded generator. Long runs use `cargo fuzz`; see
//! `fuzz/README.md`.

#[path = "../fuzz/src/chain.rs"]
mod chain;
#[path = "../fuzz/src/input.rs"]
mod input;
#[path = "../fuzz/src/mmio.rs"]
mod mmio;
#[path = "../fuzz/src/session.rs"]
mod session;
#[path = "../fuzz/src/switch.rs"]
mod switch;

use std::path::Path;

use input::SeedRng;

/// The files of `fuzz/<dir>/<target>`, sorted.
fn inputs(dir: &str, target: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(dir)
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no inputs in {}", dir.display());
    files
}

/// Replays `fuzz/corpus/<target>`, then `seeded` generated inputs of up to `max_len` bytes.
fn replay(target: &str, run: fn(&[u8]), seeded: usize, max_len: usize) {
    for f in &inputs("corpus", target) {
        let data = std::fs::read(f).unwrap();
        let r = std::panic::catch_unwind(|| run(&data));
        assert!(r.is_ok(), "{target}: corpus input {} fails", f.display());
    }
    let mut rng = SeedRng::new(0x0076_6d71 ^ target.len() as u64);
    for i in 0..seeded {
        let data = rng.input(max_len);
        let r = std::panic::catch_unwind(|| run(&data));
        assert!(r.is_ok(), "{target}: seeded input {i} fails: {data:02x?}");
    }
}

#[test]
fn chain_corpus() {
    replay("chain", chain::run, 400, 1024);
}

#[test]
fn mmio_corpus() {
    replay("mmio", mmio::run, 400, 1024);
}

#[test]
fn switch_corpus() {
    replay("switch", switch::run, 200, 2048);
}
