//! `connection` services without guests, when backends refuse, stay silent, stall, reset or
//! forge: the client sees exactly one accepted connection while any backend accepts, and an
//! RST (counted) when none does.

use super::app::App;
use super::connection::{conn_mode, connections, port_counters};
use super::world::{run_until, snapshot_when, world, SERVICE_CID, SERVICE_PORT};
use super::*;
use crate::port::vsock::SERVICE_BACKEND_PORTS;
use crate::vsock::endpoint::CloseReason;

/// A port nobody listens on: a backend listening there refuses the service's connections.
const ELSEWHERE: u32 = 9999;

#[test]
fn a_refused_connection_is_retried_on_another_backend_invisibly() {
    // Backend 4 (the heavier) refuses: nobody listens on the service's port there.
    let (_dir, server, mut client, mut workers) = world(
        "conn-refused",
        &[(4, 3.0), (5, 1.0)],
        8,
        &conn_mode("policy = { kind = \"wrr\" }"),
    );
    workers[0].listen = Some(ELSEWHERE);
    let by = connections(&mut client, &mut workers, 10, 1);
    assert_eq!(by.get(&5), Some(&10), "{by:?}");
    let front = port_counters(&server, "svc-echo", |c| c["conns_open"] == 0);
    assert!(front["retried"] >= 1, "{front:?}");
    assert_eq!(front["reset_no_backend"], 0, "{front:?}");
    let vm4 = port_counters(&server, "svc-echo-vm4", |_| true);
    assert!(vm4["refused"] >= 1 && vm4["accepted"] == 0, "{vm4:?}");
    // The refusals are error replies: they count against its health.
    let snap = snapshot_when(&server, |s| s.services[0].stats.backend_errors >= 1);
    let s = &snap.services[0].stats;
    assert_eq!(s.replies, 10 + front["retried"], "{s:?}");
    assert_eq!(s.backend_errors, vm4["refused"], "{s:?}");
    server.shutdown().unwrap();
}

/// Pumps a backend that was silent until it has read what waited for it.
fn wake(w: &mut App) {
    run_until(&mut [w], |a| !a[0].pump());
}

#[test]
fn a_silent_backend_is_passed_over_after_the_connect_timeout() {
    // Backend 4 (the heavier) never answers; the stall window is long, so only the connect
    // timeout moves its connections.
    let (_dir, server, mut client, mut workers) = world(
        "conn-silent",
        &[(4, 3.0), (5, 1.0)],
        8,
        &conn_mode(
            "policy = { kind = \"wrr\" }\nconnect_timeout_ms = 200\n\
             failover = { stall_window_ns = 60000000000 }",
        ),
    );
    let by = connections(&mut client, &mut workers[1..], 4, 1);
    assert_eq!(by.get(&5), Some(&4), "{by:?}");
    let vm4 = port_counters(&server, "svc-echo-vm4", |c| c["connect_timeouts"] >= 1);
    assert_eq!(vm4["pending_connects"], 0, "{vm4:?}");
    // A snapshot from after the 4 connections (an earlier one may show the retry already).
    let front = port_counters(&server, "svc-echo", |c| {
        c["retried"] >= 1 && c["connections_accepted"] >= 4
    });
    assert_eq!(
        (front["connections_accepted"], front["reset_no_backend"]),
        (4, 0),
        "{front:?}"
    );
    // It wakes and accepts what it was asked long ago: vmq resets those, the client hears
    // nothing of them.
    wake(&mut workers[0]);
    run_until(&mut [&mut client, &mut workers[0]], |a| a[1].eps.is_empty());
    client.pump();
    assert!(client.eps.is_empty());
    let svc = SockAddr::new(SERVICE_CID, SERVICE_PORT);
    assert!(client.sources.iter().all(|&s| s == svc));
    server.shutdown().unwrap();
}

#[test]
fn a_stalled_backends_connects_move_to_another_and_its_side_is_reset() {
    // Backend 4 (the heavier) never answers; its connect timeout is long, so the switch's
    // stall rule moves its connect requests.
    let (_dir, server, mut client, mut workers) = world(
        "conn-stall",
        &[(4, 3.0), (5, 1.0)],
        8,
        &conn_mode(
            "policy = { kind = \"wrr\" }\nconnect_timeout_ms = 10000\n\
             failover = { stall_window_ns = 100000000, max_ejection_percent = 50 }",
        ),
    );
    let by = connections(&mut client, &mut workers[1..], 4, 1);
    assert_eq!(by.get(&5), Some(&4), "{by:?}");
    let snap = snapshot_when(&server, |s| s.services[0].stats.redispatches >= 1);
    assert!(snap.services[0].stats.stalls + snap.services[0].stats.ejections >= 1);
    let front = port_counters(&server, "svc-echo", |c| c["moved"] >= 1);
    assert_eq!(front["reset_no_backend"], 0, "{front:?}");
    // Its side of the connection that moved was reset: when it wakes it keeps none, and the
    // client hears nothing of it. (A backend that accepts before it reads the reset gets
    // another: the table's tests show that.)
    wake(&mut workers[0]);
    run_until(&mut [&mut client, &mut workers[0]], |a| a[1].eps.is_empty());
    assert_eq!(workers[0].accepted, 1);
    client.pump();
    assert!(
        client.eps.is_empty(),
        "no second connection reached the client"
    );
    assert_eq!(client.closed.len(), 4);
    server.shutdown().unwrap();
}

#[test]
fn when_no_backend_accepts_the_client_gets_an_rst_and_it_is_counted() {
    let (_dir, server, mut client, mut workers) =
        world("conn-none", &[(4, 1.0), (5, 1.0)], 8, &conn_mode(""));
    for w in workers.iter_mut() {
        w.listen = Some(ELSEWHERE);
    }
    let key = client.connect_with(SocketType::Stream, SERVICE_PORT);
    let (w4, w5) = workers.split_at_mut(1);
    run_until(&mut [&mut client, &mut w4[0], &mut w5[0]], |a| {
        a[0].closed.contains_key(&key)
    });
    assert_eq!(client.closed[&key], Some(CloseReason::Refused));
    let front = port_counters(&server, "svc-echo", |c| c["reset_no_backend"] == 1);
    assert_eq!((front["retried"], front["conns_open"]), (1, 0), "{front:?}");
    for name in ["svc-echo-vm4", "svc-echo-vm5"] {
        assert_eq!(port_counters(&server, name, |_| true)["refused"], 1);
    }
    server.shutdown().unwrap();
}

/// Opens a SEQPACKET connection from `client` to the service and has backend `w` answer one
/// message on it; returns the client's key.
fn open_one(client: &mut App, w: &mut App) -> (u32, u64, u32) {
    let key = client.connect();
    let ep = client.eps.get_mut(&key).unwrap();
    ep.write_message(b"hello", true).unwrap();
    run_until(&mut [client, w], |a| a[0].eps[&key].messages_ready() == 1);
    let answer = client.eps.get_mut(&key).unwrap().read_message().unwrap();
    assert_eq!(answer.data, b"hello\x04");
    key
}

#[test]
fn resets_pass_both_ways() {
    let (_dir, server, mut client, mut workers) =
        world("conn-resets", &[(4, 1.0)], 8, &conn_mode(""));
    let w = &mut workers[0];
    // The client resets: the backend's connection ends.
    let a = open_one(&mut client, w);
    client.eps.get_mut(&a).unwrap().reset();
    run_until(&mut [&mut client, w], |x| x[1].eps.is_empty());
    // The backend resets: the client's connection ends, with the reset.
    let b = open_one(&mut client, w);
    w.eps.values_mut().for_each(|e| e.reset());
    run_until(&mut [&mut client, w], |x| x[0].closed.contains_key(&b));
    assert_eq!(client.closed[&b], Some(CloseReason::PeerReset));
    let front = port_counters(&server, "svc-echo", |c| {
        c["reset_by_client"] == 1 && c["reset_by_backend"] == 1
    });
    assert_eq!(
        (front["conns_open"], front["reset_by_vmq"]),
        (0, 0),
        "{front:?}"
    );
    server.shutdown().unwrap();
}

#[test]
fn a_backend_forging_addresses_gets_rsts_and_harms_nobody() {
    let (_dir, server, mut client, mut workers) = world(
        "conn-forged",
        &[(4, 1.0), (5, 1.0)],
        8,
        &conn_mode("policy = { kind = \"wrr\" }"),
    );
    // Data and an accept for connections vmq never opened.
    let me = SockAddr::new(5, SERVICE_PORT);
    for (op, to, data) in [
        (Op::Rw, SERVICE_BACKEND_PORTS + 777, &b"hi"[..]),
        (Op::Response, SERVICE_BACKEND_PORTS + 5, &[][..]),
    ] {
        let forged = SockAddr::new(SERVICE_CID, to);
        let g = &mut workers[1].g;
        g.send(&packet(SocketType::SeqPacket, op, me, forged, 0, data))
            .unwrap();
        let (h, _) = recv(g);
        assert_eq!((h.op, h.src(), h.dst()), (Op::Rst as u16, forged, me));
        g.reclaim_tx().unwrap();
    }
    // A real connection through backend 4; backend 5 writes on it.
    let key = open_one(&mut client, &mut workers[0]);
    let local = workers[0].eps.keys().next().unwrap().2;
    let theirs = SockAddr::new(SERVICE_CID, local);
    let g = &mut workers[1].g;
    g.send(&packet(
        SocketType::SeqPacket,
        Op::Rw,
        me,
        theirs,
        0,
        b"evil",
    ))
    .unwrap();
    let (h, _) = recv(g);
    assert_eq!((h.op, h.src()), (Op::Rst as u16, theirs));
    // The connection lives on, and only its backend's answers reach the client.
    let ep = client.eps.get_mut(&key).unwrap();
    ep.write_message(b"again", true).unwrap();
    run_until(&mut [&mut client, &mut workers[0]], |a| {
        a[0].eps[&key].messages_ready() == 1
    });
    let ep = client.eps.get_mut(&key).unwrap();
    assert_eq!(ep.read_message().unwrap().data, b"again\x04");
    assert!(ep.read_message().is_none());
    let front = port_counters(&server, "svc-echo", |c| c["no_connection"] == 3);
    assert_eq!(front["reset_by_vmq"], 0, "{front:?}");
    server.shutdown().unwrap();
}

/// Opens one SEQPACKET connection from `client`, sends `msg`, and returns the CID of the
/// backend whose answer came back. Worker 4's connection is left to its backend (which resets
/// it); the client closes the others.
fn one_answer(client: &mut App, workers: &mut [App], msg: &[u8]) -> u8 {
    let key = client.connect();
    client
        .eps
        .get_mut(&key)
        .unwrap()
        .write_message(msg, true)
        .unwrap();
    let mut from = None;
    let mut apps: Vec<&mut App> = std::iter::once(client).chain(workers.iter_mut()).collect();
    run_until(&mut apps, |a| {
        if let Some(ep) = a[0].eps.get_mut(&key) {
            if let Some(m) = ep.read_message() {
                assert_eq!(&m.data[..msg.len()], msg);
                from = Some(m.data[msg.len()]);
                if from != Some(4) {
                    ep.shutdown(crate::vsock::packet::SHUTDOWN_BOTH);
                }
            }
        }
        from.is_some() && !a[0].eps.contains_key(&key)
    });
    from.unwrap()
}

#[test]
fn a_backend_that_resets_its_established_connections_loses_health_and_new_connections() {
    // Errors alone in health: refusals and, now, resets of established connections.
    let (_dir, server, mut client, mut workers) = world(
        "conn-resetter",
        &[(4, 1.0), (5, 1.0)],
        8,
        &conn_mode(
            "policy = { kind = \"wrr\" }\n\
             health = { weights = { drain = 0.0, latency = 0.0, in_flight = 0.0, free_rx = 0.0 } }\n\
             failover = { stall_window_ns = 60000000000 }",
        ),
    );
    // Worker 4's application answers, then resets the connection.
    workers[0].reset_after_answer = true;
    let mut by = [0u32; 2];
    for n in 0..12 {
        let cid = one_answer(&mut client, &mut workers, format!("m{n}").as_bytes());
        by[usize::from(cid - 4)] += 1;
    }
    assert!(by[0] > 0, "wrr gave worker 4 nothing to reset: {by:?}");
    // The switch sees its resets at the next sweep: its health falls below worker 5's.
    let snap = snapshot_when(&server, |s| {
        let m = &s.services[0].members;
        m[0].health < 0.1 && m[1].health > 0.9
    });
    let m = &snap.services[0].members;
    assert!(m[0].weight < m[1].weight / 2.0, "{m:?}");
    // And new connections go mostly to worker 5.
    let before = workers[0].accepted;
    for n in 0..12 {
        one_answer(&mut client, &mut workers, format!("n{n}").as_bytes());
    }
    assert!(
        workers[0].accepted - before <= 2,
        "worker 4 kept getting connections: {} of 12",
        workers[0].accepted - before
    );
    let front = port_counters(&server, "svc-echo", |c| {
        c["reset_by_backend"] == u64::from(by[0]) + workers[0].accepted - before
    });
    assert_eq!(front["reset_by_vmq"], 0, "{front:?}");
    server.shutdown().unwrap();
}
