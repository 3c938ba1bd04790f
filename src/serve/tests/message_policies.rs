//! Every policy's spread over the messages of a `message` service.

use super::world::*;

/// Health left out (drain, latency, in flight, free buffers): what is measured is the policy's
/// spread, not how loaded each backend looks.
const NO_HEALTH: &str =
    "health = { weights = { drain = 0.0, latency = 0.0, in_flight = 0.0, free_rx = 0.0 } }";

#[test]
fn byte_share_gives_each_backend_its_share_of_the_bytes() {
    let (_dir, server, mut client, mut workers) = world(
        "svc-bytes",
        &[(4, 1.0), (5, 3.0)],
        32,
        &format!("policy = {{ kind = \"byte_share\" }}\n{NO_HEALTH}"),
    );
    let by = exchange(&mut client, &mut workers, 2, 800, 4, |_, _| {});
    assert_eq!(by.values().sum::<u32>(), 800, "{by:?}");
    // Requests are 13 to 15 bytes: bytes follow the count closely. Shares 1:3 of 800.
    let (a, b) = (by[&4], by[&5]);
    assert!(
        (160..=240).contains(&a) && a + b == 800,
        "shares 1:3 give {a}:{b}"
    );
    server.shutdown().unwrap();
}

#[test]
fn maglev_keeps_each_connection_on_one_backend_and_spreads_the_connections() {
    let (_dir, server, mut client, mut workers) = world(
        "svc-maglev",
        &[(4, 1.0), (5, 1.0), (6, 1.0)],
        32,
        &format!("policy = {{ kind = \"maglev\" }}\n{NO_HEALTH}"),
    );
    let per_conn = exchange_per_conn(&mut client, &mut workers, 8, 400, 4, |_, _| {});
    let mut used = std::collections::HashSet::new();
    for (i, by) in per_conn.iter().enumerate() {
        assert_eq!(
            by.len(),
            1,
            "connection {i} went to several backends: {by:?}"
        );
        assert_eq!(by.values().sum::<u32>(), 50, "connection {i}: {by:?}");
        used.extend(by.keys().copied());
    }
    assert!(used.len() >= 2, "eight connections all on {used:?}");
    server.shutdown().unwrap();
}

#[test]
fn p2c_sends_less_to_a_backend_that_holds_requests_longer() {
    a_slow_backend_gets_less("svc-p2c", "p2c");
}

/// Two backends, one answering one message in 20 pumps, under `policy`: the slow one gets
/// fewer, and every request is answered once.
pub(in crate::serve::tests) fn a_slow_backend_gets_less(name: &str, policy: &str) {
    let (_dir, server, mut client, mut workers) = world(
        name,
        &[(4, 1.0), (5, 1.0)],
        32,
        &format!("policy = {{ kind = \"{policy}\" }}"),
    );
    workers[0].slowness = 20;
    let by = exchange(&mut client, &mut workers, 4, 400, 4, |_, _| {});
    assert_eq!(by.values().sum::<u32>(), 400, "{by:?}");
    let (slow, fast) = (by.get(&4).copied().unwrap_or(0), by[&5]);
    assert!(
        slow < fast,
        "{policy}: the slow backend got {slow}, the fast one {fast}"
    );
    server.shutdown().unwrap();
}

#[test]
fn a_slow_backend_gets_less_and_every_request_is_answered_once() {
    a_slow_backend_gets_less("svc-slow", "expected_delay");
}
