//! Load reports of `message` services' backends: they change the picks, and a backend that
//! reports "idle" while it reads nothing is caught.

use super::app::App;
use super::world::*;
use crate::vsock::endpoint::EndpointState;

pub(in crate::serve::tests) const LOAD_PORT: u32 = 5001;

/// Worker `w` reports `load` on its connection `key` to the load port.
pub(in crate::serve::tests) fn report(w: &mut App, key: (u32, u64, u32), load: u16) {
    if let Some(ep) = w.eps.get_mut(&key) {
        let _ = ep.write_message(format!("load {load}").as_bytes(), true);
    }
}

#[test]
fn load_reports_on_the_load_port_change_the_picks() {
    // Eight requests in flight per backend, four in all: no backend is ever full, so the
    // picks follow the weights that health (with the reports) gives.
    let (_dir, server, mut client, mut workers) = world(
        "svc-load",
        &[(4, 1.0), (5, 1.0)],
        8,
        &format!("load_port = {LOAD_PORT}\npolicy = {{ kind = \"wrr\" }}"),
    );
    let keys = connect_reporters(&mut workers);
    // Worker 4 says it is busy (700: below "saturated", which a backend that drains this well
    // could not claim without being suspected), worker 5 idle, every 10 answers (reports live
    // 100 ms).
    let by = exchange(&mut client, &mut workers, 2, 3000, 2, |n, w| {
        if n % 10 == 1 {
            report(&mut w[0], keys[0], 700);
            report(&mut w[1], keys[1], 0);
        }
    });
    assert_eq!(by.values().sum::<u32>(), 3000);
    let (busy, idle) = (by.get(&4).copied().unwrap_or(0), by[&5]);
    // A report of 700 takes its load metric to 0.3 (a health of about 0.82): about 45:55.
    assert!(
        busy * 20 < idle * 19,
        "the busy backend got {busy}, the idle one {idle}: {:?}",
        server.snapshot()
    );
    let snap = snapshot_when(&server, |s| s.services[0].stats.replies == 3000);
    let p = snap
        .ports
        .iter()
        .find(|p| p.name == "svc-echo-vm4")
        .unwrap();
    assert!(
        p.counters["load_reports"] > 0 && p.counters["bad_reports"] == 0,
        "{p:?}"
    );

    server.shutdown().unwrap();
}

#[test]
fn a_backend_that_reports_idle_while_it_does_not_read_is_caught() {
    // Four requests at most on each backend; a stall window long enough that the cross-check,
    // not the stall rule, is what acts first; drain averaged over 20 ms. Health is the load
    // report alone: without the cross-check, the liar would keep its full weight. Reports
    // come every 10 answers, so on a busy machine far apart: they stay fresh for 2 s.
    let (_dir, server, mut client, mut workers) = world(
        "svc-liar",
        &[(4, 1.0), (5, 1.0)],
        4,
        &format!(
            "load_port = {LOAD_PORT}\npolicy = {{ kind = \"wrr\" }}\n\
             failover = {{ stall_window_ns = 3000000000 }}\nrequest_timeout_ms = 20000\n\
             health = {{ ewma_half_life_ns = 20000000, load_report_ttl_ns = 2000000000, weights = {{ drain = 0.0, \
             latency = 0.0, in_flight = 0.0, free_rx = 0.0 }} }}"
        ),
    );
    let keys = connect_reporters(&mut workers);
    // Both report "idle" every 10 answers. Worker 4's application stops reading after the
    // 100th answer and goes on reporting "idle": its requests wait unread, its connections are
    // all taken. Eight client connections, so the others' answers keep coming.
    let mut caught = false;
    let by = exchange(&mut client, &mut workers, 8, 3200, 2, |n, w| {
        if n % 10 == 1 {
            report(&mut w[0], keys[0], 0);
            report(&mut w[1], keys[1], 0);
        }
        if n == 100 {
            w[0].reading = false;
        }
        if n > 100 && n % 10 == 5 && !caught {
            let snap = server.snapshot();
            // Caught: its report was distrusted and its weight follows the queue it does not
            // drain. The count, not the flag: the flag may already have cleared (an ejected
            // member's report is moot) by the time this samples it.
            if snap.is_some_and(|s| {
                let m = &s.services[0].members[0];
                m.load_reports_suspected > 0 && m.weight < 0.1
            }) {
                caught = true;
                w[0].reading = true;
            }
        }
    });
    assert_eq!(by.values().sum::<u32>(), 3200, "{by:?}");
    assert!(
        caught,
        "the report was never suspected: {:?}",
        server.snapshot()
    );
    let snap = snapshot_when(&server, |s| s.services[0].stats.replies == 3200);
    let liar = snap
        .ports
        .iter()
        .find(|p| p.name == "svc-echo-vm4")
        .unwrap();
    assert!(liar.counters["load_reports"] > 0, "{liar:?}");
    server.shutdown().unwrap();
}

/// Each of the two workers opens its load-report connection; returns their keys once both
/// are established.
fn connect_reporters(workers: &mut [App]) -> [(u32, u64, u32); 2] {
    let keys = [
        workers[0].connect_to(LOAD_PORT),
        workers[1].connect_to(LOAD_PORT),
    ];
    let (w4, w5) = workers.split_at_mut(1);
    run_until(&mut [&mut w4[0], &mut w5[0]], |w| {
        w.iter()
            .zip(keys)
            .all(|(a, k)| a.eps[&k].state() == EndpointState::Established)
    });
    keys
}
