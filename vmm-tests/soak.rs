//! A short soak on real KVM guests: random worker stalls, crashes, kills and restarts under
//! full-rate traffic; nothing may be lost or duplicated, nothing left in flight.

use std::time::Duration;

use vmq::runner::{soak, SoakOptions};

mod common;
use common::require_kvm;

/// Caps this process's open files a little above what the soak needs at any one time (5 VMs,
/// their eventfds, the switch loop), so that a descriptor leaked per restart fails the soak.
fn open_files() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(16, |d| d.count() as u64)
}

fn limit_open_files(headroom: u64) {
    let open = open_files();
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a valid rlimit struct we own.
    let r = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    assert_eq!(r, 0, "cannot read the open-file limit");
    lim.rlim_cur = (open + headroom).min(lim.rlim_max);
    // SAFETY: setrlimit reads a valid rlimit struct and changes only this process's soft limit,
    // never above its hard limit.
    let r = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    assert_eq!(r, 0, "cannot lower the open-file limit");
}

#[test]
fn short_soak_loses_nothing() {
    if !require_kvm() {
        return;
    }
    // A leak of one descriptor per restart (dozens of restarts here) runs into the limit, and
    // the count at the end must be back where it started; the headroom covers the peak of
    // a VM restarting beside its old self.
    let before = open_files();
    limit_open_files(96);
    let r = soak(&SoakOptions {
        duration: Duration::from_secs(3),
        seed: 7,
        fault_every: Duration::from_millis(150),
        round: 2000,
        progress: false,
    })
    .expect("soak runs");
    assert!(r.client_rounds >= 2, "{r:?}");
    assert!(
        r.clients.requests > 0 && r.clients.requests == r.clients.replies,
        "{r:?}"
    );
    assert_eq!(
        (
            r.clients.lost,
            r.clients.duplicates,
            r.clients.mismatches,
            r.bad_rounds
        ),
        (0, 0, 0, 0),
        "{r:?}"
    );
    assert_eq!(r.in_flight_end, 0, "{r:?}");
    // Things made once per process (the KVM handle, the event loop's) may stay.
    let after = open_files();
    assert!(
        after <= before + 8,
        "descriptors leaked: {before} open before, {after} after"
    );
    let f = r.faults;
    assert!(
        f.kills + f.stalls + f.crashes > 0,
        "faults were injected: {r:?}"
    );
}
