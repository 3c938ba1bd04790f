//! `message` services whose backends fail in ways the application cannot help: a guest whose
//! vCPUs stop, and one that lies about its load.

use super::service::*;
use crate::vsock::endpoint::EndpointState;

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
    let snap = server.snapshot().unwrap();
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
    // And the service goes on, on the same client connections.
    let by = exchange(&mut client, &mut workers, 2, 100, 4, |_, _| {});
    assert_eq!(by.values().sum::<u32>(), 100, "{by:?}");
    server.shutdown().unwrap();
}

#[test]
fn a_backend_that_reports_idle_while_it_does_not_read_is_caught() {
    // Four requests at most on each backend; a stall window long enough that the cross-check,
    // not the stall rule, is what acts first; drain averaged over 20 ms. Health is the load
    // report alone: without the cross-check, the liar would keep its full weight.
    let (_dir, server, mut client, mut workers) = world(
        "svc-liar",
        &[(4, 1.0), (5, 1.0)],
        4,
        &format!(
            "load_port = {LOAD_PORT}\npolicy = {{ kind = \"wrr\" }}\n\
             failover = {{ stall_window_ns = 3000000000 }}\nrequest_timeout_ms = 20000\n\
             health = {{ ewma_half_life_ns = 20000000, weights = {{ drain = 0.0, \
             latency = 0.0, in_flight = 0.0, free_rx = 0.0 }} }}"
        ),
    );
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
            // Caught: its report is distrusted and its weight follows the queue it does not
            // drain.
            if snap.is_some_and(|s| {
                let m = &s.services[0].members[0];
                m.load_report_suspect && m.weight < 0.1
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
