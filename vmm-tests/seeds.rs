//! Real-KVM runs of the seed features a topology reaches through guest parameters: request
//! classes under byte-share class shares (seed 002), affinity keys under Maglev, and a worker
//! that lies about its load, caught by the cross-check of cooperative load (seed 003). Each runs
//! the example topology of `topologies/` it is about. Counts and shares only, never time.
//!
//! Without a usable `/dev/kvm` each test prints "skipping" and passes, unless `CI=true` or
//! `VMQ_REQUIRE_KVM=1`.

mod common;
use common::{
    assert_client_answered, assert_every_request_answered_once, member, require_kvm, run,
};

const CLASSES: &str = include_str!("../topologies/classes.toml");
const MAGLEV: &str = include_str!("../topologies/maglev.toml");
const LIAR: &str = include_str!("../topologies/liar.toml");

#[test]
fn with_byte_share_classes_each_class_bytes_follow_its_shares() {
    if !require_kvm() {
        return;
    }
    let r = run("classes.toml", CLASSES);
    assert_every_request_answered_once(&r);
    assert_client_answered(&r, "gold", 4000);
    assert_client_answered(&r, "bulk", 4000);
    // Same table in both services, same workers, same sizes: only the clients' class differs.
    // Every request is 256 bytes, so a backend's share of dispatches is its share of bytes.
    // Class 1 gives w0 3/4, class 2 gives it 1/4. Tolerance: the byte-share frame correction
    // lands within a few percentage points here (75.7 / 26.2 measured); 0.05 absolute.
    for (svc, w0_share) in [("bs1", 0.75), ("bs2", 0.25)] {
        let (w0, w1) = (member(&r, svc, "w0"), member(&r, svc, "w1"));
        assert_eq!(w0.dispatched + w1.dispatched, 4000, "{r}");
        assert!(
            (w0.share - w0_share).abs() <= 0.05,
            "{svc}: w0 share {:.3}, configured {w0_share}\n{r}",
            w0.share
        );
    }
}

#[test]
fn with_maglev_the_same_key_lands_on_the_same_worker() {
    if !require_kvm() {
        return;
    }
    let r = run("maglev.toml", MAGLEV);
    assert_every_request_answered_once(&r);
    assert_client_answered(&r, "sticky", 2000);
    assert_client_answered(&r, "spread", 2000);
    // One key: its requests on one worker. The switch passes over a backend with no free
    // receive buffer (every policy, Maglev too: a key waits for nobody), so a worker that had
    // not posted its buffers yet when the client started, or was off its CPU with its queue
    // full, sends a window's worth elsewhere (16 of 2000, seen once on a loaded machine).
    // Without affinity the key would spread about evenly: at most two windows may move.
    let sticky: Vec<u64> = ["w0", "w1", "w2"]
        .iter()
        .map(|w| member(&r, "by_user", w).dispatched)
        .collect();
    assert_eq!(sticky.iter().sum::<u64>(), 2000, "{r}");
    assert!(
        sticky.iter().any(|&n| n >= 2000 - 2 * 16),
        "key 7 moved between workers: {sticky:?}\n{r}"
    );
    // 64 keys: Maglev spreads them over every worker.
    for w in ["w0", "w1", "w2"] {
        assert!(
            member(&r, "by_users", w).dispatched > 0,
            "{w} got no key\n{r}"
        );
    }
}

#[test]
fn a_worker_that_lies_about_its_load_is_caught_and_loses_its_picks() {
    if !require_kvm() {
        return;
    }
    let r = run("liar.toml", LIAR);
    assert_every_request_answered_once(&r);
    assert_client_answered(&r, "client0", 3000);
    let (honest, liar) = (member(&r, "echo", "honest"), member(&r, "echo", "liar"));
    assert!(
        liar.load_reports_suspected >= 1,
        "the liar's reports were never suspected\n{r}"
    );
    assert_eq!(honest.load_reports_suspected, 0, "{r}");
    // Caught, it is scored by the queue it does not drain instead of its "idle" (health is the
    // load report alone here), leaves rotation and the picks go to the honest worker. (Its
    // full 8-entry queue also makes WRR pass it over while full: the share alone does not
    // separate the two; the suspicion count does.) Measured here: 1-2 % of the picks.
    assert!(
        liar.dispatched * 4 < honest.dispatched,
        "liar {} vs honest {}\n{r}",
        liar.dispatched,
        honest.dispatched
    );
}
