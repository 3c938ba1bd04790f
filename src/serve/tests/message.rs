//! `message` services without guests: what a client sees (answers in order, refusals, a reset
//! when no backend lives) and what a hostile backend cannot do.

use super::app::App;
use super::connection::port_counters;
use super::world::*;
use super::*;
use crate::serve::front_port_name;
use crate::vsock::endpoint::{CloseReason, EndpointState};

#[test]
fn a_message_service_spreads_requests_by_weight_and_answers_each_in_order() {
    // Health left out (drain, latency, in flight, free buffers): what is measured here is the
    // policy's spread over the weights, not how loaded each backend looks.
    let (_dir, server, mut client, mut workers) = world(
        "svc-weights",
        &[(4, 1.0), (5, 2.0), (6, 3.0)],
        32,
        "policy = { kind = \"wrr\" }\n\
         health = { weights = { drain = 0.0, latency = 0.0, in_flight = 0.0, free_rx = 0.0 } }",
    );
    let by = exchange(&mut client, &mut workers, 2, 600, 4, |_, _| {});
    assert_eq!(by.values().sum::<u32>(), 600, "{by:?}");
    // Weighted round robin over 1:2:3.
    let (a, b, c) = (by[&4], by[&5], by[&6]);
    assert!(a < b && b < c, "weights 1:2:3 give {a}:{b}:{c}");
    // Health scores (reply latency, drain) move the weights a little around 1:2:3.
    assert!(
        (70..=130).contains(&a) && (250..=350).contains(&c),
        "{a}:{b}:{c}"
    );
    let snap = snapshot_when(&server, |s| s.services[0].stats.replies == 600);
    let s = &snap.services[0];
    assert_eq!(s.stats.requests, 600, "{s:?}");
    assert_eq!(s.stats.late_replies_dropped, 0);
    server.shutdown().unwrap();
}

#[test]
fn with_every_backend_stopped_the_client_connection_is_reset_after_the_deadline() {
    let dir = Dir::new("svc-dead");
    let cfg = service_config(&dir, &[(4, 1.0)], "request_timeout_ms = 200");
    let server = Server::start(&cfg).unwrap();
    let mut client = App::new(&dir, 3, None);
    let mut worker = App::new(&dir, 4, Some(SERVICE_PORT));
    worker.reading = false;
    wait_connected(&server);
    let key = client.connect();
    run_until(&mut [&mut client, &mut worker], |a| {
        a[0].eps[&key].state() == EndpointState::Established
    });
    client
        .eps
        .get_mut(&key)
        .unwrap()
        .write_message(b"anyone?", true)
        .unwrap();
    run_until(&mut [&mut client, &mut worker], |a| {
        a[0].eps
            .get(&key)
            .is_none_or(|e| e.state() == EndpointState::Closed)
    });
    let snap = snapshot_when(&server, |s| s.services[0].stats.failed_back == 1);
    let front = snap.ports.iter().find(|p| p.name == "svc-echo").unwrap();
    assert_eq!(front.counters["reset_no_backend"], 1, "{front:?}");
    assert_eq!(snap.services[0].stats.failed_back, 1);
    server.shutdown().unwrap();
}

#[test]
fn a_service_refuses_stream_connections_and_wrong_ports_and_a_bad_config_says_why() {
    let dir = Dir::new("svc-refuse");
    let cfg = service_config(&dir, &[(4, 1.0)], "");
    let server = Server::start(&cfg).unwrap();
    let mut client = App::new(&dir, 3, None);
    let _worker = App::new(&dir, 4, Some(SERVICE_PORT));
    wait_connected(&server);
    let svc = SockAddr::new(SERVICE_CID, SERVICE_PORT);
    let me = SockAddr::new(3, 2000);
    client
        .g
        .send(&packet(SocketType::Stream, Op::Request, me, svc, 0, &[]))
        .unwrap();
    let (h, _) = recv(&mut client.g);
    assert_eq!(h.op, Op::Rst as u16, "STREAM refused in message mode");
    client.g.reclaim_tx().unwrap();
    let other = SockAddr::new(SERVICE_CID, SERVICE_PORT + 1);
    client
        .g
        .send(&packet(
            SocketType::SeqPacket,
            Op::Request,
            me,
            other,
            0,
            &[],
        ))
        .unwrap();
    let (h, _) = recv(&mut client.g);
    assert_eq!(h.op, Op::Rst as u16, "another port refused");
    server.shutdown().unwrap();

    for (extra, field) in [
        ("mode = \"connections\"", "connection"),
        ("connect_timeout_ms = 0", "connect_timeout_ms"),
        ("max_message_kib = 65", "max_message_kib"),
        (
            "failover = { stall_window_ns = 0 }",
            "failover.stall_window_ns",
        ),
    ] {
        let text = format!(
            "[[vm]]\ncid = 3\nsocket = \"/tmp/x.sock\"\n[[service]]\nname = \"s\"\ncid = 9\nport = 1\n{extra}\nmembers = [{{ cid = 3 }}]\n"
        );
        let e = ServeConfig::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(e.contains(field), "{extra}: {e}");
    }
    let text = "[[vm]]\ncid = 3\nsocket = \"/tmp/x.sock\"\n[[service]]\nname = \"s\"\ncid = 3\nport = 1\nmembers = [{ cid = 3 }]\n";
    let e = ServeConfig::parse(text, "t.toml").unwrap_err().to_string();
    assert!(e.contains("service[0] (s).cid"), "{e}");
    // A name that would make one service's port names another's.
    let text = text.replace("name = \"s\"\ncid = 3", "name = \"a-vm5\"\ncid = 9");
    let e = ServeConfig::parse(&text, "t.toml").unwrap_err().to_string();
    assert!(e.contains("service[0] (a-vm5).name"), "{e}");
}

#[test]
fn a_backend_that_answers_what_it_was_not_asked_harms_nobody_else() {
    let (_dir, server, mut client, mut workers) = world(
        "svc-hostile",
        &[(4, 1.0), (5, 1.0)],
        32,
        "policy = { kind = \"wrr\" }",
    );
    // Worker 4 sends data on a connection of the service's it was never given, and, once
    // its connections are idle, a message on each that answers nothing.
    let forged = SockAddr::new(SERVICE_CID, crate::port::vsock::SERVICE_BACKEND_PORTS + 777);
    workers[0]
        .g
        .send(&packet(
            SocketType::SeqPacket,
            Op::Rw,
            SockAddr::new(4, SERVICE_PORT),
            forged,
            0,
            b"hi",
        ))
        .unwrap();
    let (h, _) = recv(&mut workers[0].g);
    assert_eq!(
        (h.op, h.src()),
        (Op::Rst as u16, forged),
        "no such connection"
    );
    workers[0].g.reclaim_tx().unwrap();
    let by = exchange(&mut client, &mut workers, 2, 100, 4, |_, _| {});
    assert_eq!(by.values().sum::<u32>(), 100, "{by:?}");
    snapshot_when(&server, |s| s.services[0].stats.replies == 100);
    let idle = workers[0].eps.len();
    assert!(idle > 0);
    for ep in workers[0].eps.values_mut() {
        ep.write_message(b"unasked", true).unwrap();
    }
    let snap = snapshot_when(&server, |s| {
        let bad = s.ports.iter().find(|p| p.name == "svc-echo-vm4").unwrap();
        workers[0].pump();
        bad.counters["unsolicited"] == idle as u64
    });
    let bad = snap
        .ports
        .iter()
        .find(|p| p.name == "svc-echo-vm4")
        .unwrap();
    assert_eq!(
        bad.counters["conns_open"], 0,
        "its connections were reset: {bad:?}"
    );
    // Nothing reached the client, and the service goes on (on new connections).
    for ep in client.eps.values_mut() {
        assert!(
            ep.read_message().is_none(),
            "an answer nobody asked for got through"
        );
    }
    let by = exchange(&mut client, &mut workers, 2, 100, 4, |_, _| {});
    assert_eq!(by.values().sum::<u32>(), 100, "{by:?}");
    server.shutdown().unwrap();
}

#[test]
fn a_backend_that_shuts_its_receiving_side_gets_no_request_there_and_none_is_lost() {
    let (_dir, server, mut client, mut workers) = world(
        "svc-shut",
        &[(4, 1.0), (5, 1.0)],
        32,
        "policy = { kind = \"wrr\" }",
    );
    let by = exchange(&mut client, &mut workers, 2, 100, 4, |_, _| {});
    assert_eq!(by.values().sum::<u32>(), 100, "{by:?}");
    // Worker 4 shuts the receiving side of every connection the service gave it: they stay
    // open, but a request written there would never be read.
    let shut = workers[0].eps.len();
    assert!(shut > 0);
    for ep in workers[0].eps.values_mut() {
        ep.shutdown(crate::vsock::packet::SHUTDOWN_RCV);
    }
    workers[0].pump();
    let by = exchange(&mut client, &mut workers, 2, 200, 4, |_, _| {});
    assert_eq!(
        by.values().sum::<u32>(),
        200,
        "every request answered once: {by:?}"
    );
    assert!(
        by.get(&4).copied().unwrap_or(0) > 0,
        "worker 4 still serves: {by:?}"
    );
    let snap = snapshot_when(&server, |s| s.services[0].stats.replies == 300);
    assert_eq!(
        snap.services[0].stats.failed_back, 0,
        "{:?}",
        snap.services[0]
    );
    server.shutdown().unwrap();
}

#[test]
fn one_client_vm_gets_no_more_service_connections_than_the_per_vm_limit() {
    let dir = Dir::new("svc-per-client");
    let mut cfg = service_config(&dir, &[(4, 1.0)], "");
    cfg.limits.max_connections_per_vm = 2;
    let server = Server::start(&cfg).unwrap();
    let mut client = App::new(&dir, 3, None);
    let mut worker = App::new(&dir, 4, Some(SERVICE_PORT));
    wait_connected(&server);
    let keys: Vec<_> = (0..3).map(|_| client.connect()).collect();
    run_until(&mut [&mut client, &mut worker], |a| {
        keys.iter().all(|k| {
            a[0].eps
                .get(k)
                .is_none_or(|e| e.state() != EndpointState::Connecting)
        })
    });
    let open = keys
        .iter()
        .filter(|k| {
            client
                .eps
                .get(k)
                .is_some_and(|e| e.state() == EndpointState::Established)
        })
        .count();
    assert_eq!(open, 2, "the third connection is refused");
    server.shutdown().unwrap();
}

#[test]
fn a_client_whose_rx_buffers_cannot_hold_a_reply_is_reset_at_both_ends() {
    let dir = Dir::new("svc-tiny-rx");
    let cfg = service_config(&dir, &[(4, 1.0)], "");
    let server = Server::start(&cfg).unwrap();
    // Room for a header and not one byte more: the connection opens, no reply fits.
    let mut client = App::with_rx_buf(&dir, 3, None, HEADER_LEN as u32);
    let mut worker = App::new(&dir, 4, Some(SERVICE_PORT));
    wait_connected(&server);
    let key = client.connect();
    run_until(&mut [&mut client, &mut worker], |a| {
        a[0].eps
            .get(&key)
            .is_some_and(|e| e.state() == EndpointState::Established)
    });
    let ep = client.eps.get_mut(&key).unwrap();
    ep.write_message(b"ping", true).unwrap();
    run_until(&mut [&mut client, &mut worker], |a| {
        a[0].closed.contains_key(&key)
    });
    assert_eq!(client.closed[&key], Some(CloseReason::PeerReset));
    // The service's end learnt it too: the connection is gone, not left waiting.
    let front = port_counters(&server, &front_port_name("echo"), |c| c["conns_open"] == 0);
    assert_eq!(front["conns_open"], 0, "{front:?}");
    let c = server.counts().into_iter().find(|v| v.cid == 3).unwrap();
    assert_eq!((c.rx_too_small, c.resets), (1, 1), "{c:?}");
    server.shutdown().unwrap();
}
