//! A short soak on real KVM guests: random worker stalls, crashes, kills and restarts under
//! full-rate traffic; nothing may be lost or duplicated, nothing left in flight.

use std::time::Duration;

use vmq::runner::{soak, SoakOptions};

mod common;
use common::require_kvm;

#[test]
fn short_soak_loses_nothing() {
    if !require_kvm() {
        return;
    }
    let r = soak(&SoakOptions {
        duration: Duration::from_secs(3),
        seed: 7,
        fault_every: Duration::from_millis(150),
        round: 2000,
        progress: false,
    })
    .expect("soak runs");
    assert!(r.client_rounds >= 2, "{r:?}");
    assert!(r.requests > 0 && r.requests == r.replies, "{r:?}");
    assert_eq!(
        (r.lost, r.duplicates, r.mismatches, r.bad_rounds),
        (0, 0, 0, 0),
        "{r:?}"
    );
    assert_eq!(r.in_flight_end, 0, "{r:?}");
    let f = r.faults;
    assert!(
        f.kills + f.stalls + f.crashes > 0,
        "faults were injected: {r:?}"
    );
}
