//! `message` services whose backend stops making progress: its application stops reading, its
//! vCPUs stop, its VMM goes away. Its work fails over; the client sees one answer per request.

use super::app::App;
use super::world::*;
use super::*;

/// Three backends; worker 5 is stopped by `stop` after the 100th answer. Every request is
/// answered once, and its work failed over. Returns the world, for what comes after.
pub(in crate::serve::tests) fn a_backend_stops_after_100(
    name: &str,
    stop: impl Fn(&mut App),
) -> (Dir, Server, App, Vec<App>) {
    let (dir, server, mut client, mut workers) = world(
        name,
        &[(4, 1.0), (5, 1.0), (6, 1.0)],
        32,
        "policy = { kind = \"wrr\" }\nfailover = { stall_window_ns = 50000000, max_ejection_percent = 50 }",
    );
    let by = exchange(&mut client, &mut workers, 2, 400, 4, |n, w| {
        if n == 100 {
            stop(&mut w[1]);
        }
    });
    assert_eq!(
        by.values().sum::<u32>(),
        400,
        "every request answered once: {by:?}"
    );
    let snap = snapshot_when(&server, |s| s.services[0].stats.replies == 400);
    let s = &snap.services[0];
    assert!(
        s.stats.redispatches > 0 && s.stats.stalls + s.stats.ejections > 0,
        "{s:?}"
    );
    (dir, server, client, workers)
}

#[test]
fn a_backend_whose_application_stops_reading_fails_over_and_nothing_is_lost() {
    // Worker 5's application stops reading: its kernel still takes packets, but its fwd_cnt
    // stops.
    let (_dir, server, mut client, mut workers) =
        a_backend_stops_after_100("svc-stall", |w| w.reading = false);
    let late = server.snapshot().unwrap().services[0]
        .stats
        .late_replies_dropped;
    // It wakes up: its late answers are dropped, the client sees none of them.
    workers[1].reading = true;
    run_until(&mut [&mut client, &mut workers[1]], |a| {
        a[1].eps.values().all(|e| e.messages_ready() == 0) && a[1].pump()
    });
    let snap = snapshot_when(&server, |s| s.services[0].stats.late_replies_dropped > late);
    assert_each_answered_once(&snap, &mut client);
    server.shutdown().unwrap();
}

#[test]
fn a_backend_whose_vcpus_stop_fails_over_and_nothing_is_lost() {
    // Worker 5's guest stops: its kernel takes no packet and posts no buffer, so what vmq
    // sends it waits in vmq.
    let (_dir, server, mut client, mut workers) =
        a_backend_stops_after_100("svc-vcpu", |w| w.frozen = true);
    // It runs again: whatever it answers now reaches no client.
    workers[1].frozen = false;
    run_until(&mut [&mut client, &mut workers[1]], |a| {
        let quiet = !a[1].pump();
        quiet && !a[0].pump()
    });
    assert_each_answered_once(&server.snapshot().unwrap(), &mut client);
    // And the service goes on, on the same client connections.
    let by = exchange(&mut client, &mut workers, 2, 100, 4, |_, _| {});
    assert_eq!(by.values().sum::<u32>(), 100, "{by:?}");
    server.shutdown().unwrap();
}

#[test]
fn a_backend_whose_vmm_goes_away_fails_over_and_nothing_is_lost() {
    let (dir, server, mut client, mut workers) = world(
        "svc-crash",
        &[(4, 1.0), (5, 1.0), (6, 1.0)],
        32,
        "failover = { stall_window_ns = 50000000, max_ejection_percent = 50 }",
    );
    // Worker 5 stops answering after the 100th answer and crashes 40 answers later: its VMM
    // closes the vhost-user socket (its requests in flight are gone with it) and a VMM that
    // never starts the device takes its place.
    let by = exchange(&mut client, &mut workers, 2, 400, 4, |n, w| {
        if n == 100 {
            w[1].reading = false;
        }
        if n == 140 {
            w[1].g = VmmFrontend::connect_raw(dir.sock(5), FrontendConfig::default())
                .expect("the socket accepts again");
        }
    });
    assert_eq!(
        by.values().sum::<u32>(),
        400,
        "every request answered once: {by:?}"
    );
    let snap = snapshot_when(&server, |s| s.services[0].stats.replies == 400);
    let s = &snap.services[0];
    assert!(s.stats.redispatches > 0, "{s:?}");
    let crashed = snap
        .ports
        .iter()
        .find(|p| p.name == "svc-echo-vm5")
        .unwrap();
    assert!(crashed.counters["requests_dropped"] > 0, "{crashed:?}");
    assert_eq!(crashed.counters["conns_open"], 0, "{crashed:?}");
    server.shutdown().unwrap();
}

/// The 400 requests of [`a_backend_stops_after_100`] were answered, and no client connection
/// holds an answer beyond one per request.
fn assert_each_answered_once(snap: &Snapshot, client: &mut App) {
    assert_eq!(
        snap.services[0].stats.replies, 400,
        "{:?}",
        snap.services[0]
    );
    for ep in client.eps.values_mut() {
        assert!(
            ep.read_message().is_none(),
            "no answer beyond one per request"
        );
    }
}
