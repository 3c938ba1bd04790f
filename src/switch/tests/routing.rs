//! Hello, unicast and unknown destinations.

use super::*;

#[test]
fn hello_tells_each_port_its_id_and_the_directory() {
    let mut n = net(2, 16);
    n.service("echo", PolicyKind::Wrr, &[(1, 1.0)]);
    n.step();
    let got = n.peers[1].recv_all();
    assert_eq!(got.len(), 1);
    let (h, dir) = &got[0];
    assert_eq!(h.kind(), Some(MsgKind::Hello));
    assert_eq!(h.dst(), 1);
    assert_eq!(h.src(), SWITCH_PORT);
    assert_eq!(u32::from_le_bytes(dir[0..4].try_into().unwrap()), 3);
    // p0, p1, then the service "echo" with id 0 and kind 1.
    let mut off = 4;
    let mut names = Vec::new();
    for _ in 0..3 {
        let id = u32::from_le_bytes(dir[off..off + 4].try_into().unwrap());
        let kind = dir[off + 4];
        let len = dir[off + 5] as usize;
        names.push((
            id,
            kind,
            String::from_utf8(dir[off + 6..off + 6 + len].to_vec()).unwrap(),
        ));
        off += 6 + len;
    }
    assert_eq!(
        names,
        vec![
            (0, 0, "p0".into()),
            (1, 0, "p1".into()),
            (0, 1, "echo".into())
        ]
    );
}

/// The (kind, name, id) entries of a directory payload.
fn dir_entries(dir: &[u8]) -> Vec<(crate::wire::directory::EntryKind, String, u32)> {
    crate::wire::directory::entries(dir)
        .map(|e| (e.kind, String::from_utf8(e.name.to_vec()).unwrap(), e.id))
        .collect()
}

#[test]
fn ports_and_services_that_come_and_go_send_every_live_port_one_directory_update() {
    use crate::wire::directory::EntryKind::{Port, Service};
    let mut n = net(3, 16);
    n.step();
    for p in &mut n.peers {
        assert_eq!(p.recv_all()[0].0.kind(), Some(MsgKind::Hello));
    }
    let updates = |n: &mut Net, p: usize| -> Vec<_> {
        n.peers[p]
            .recv_all()
            .into_iter()
            .inspect(|(h, _)| {
                assert_eq!(h.kind(), Some(MsgKind::DirectoryUpdate));
                assert_eq!(h.dst(), p as u32);
                assert_eq!(h.src(), SWITCH_PORT);
            })
            .map(|(_, d)| dir_entries(&d))
            .collect()
    };
    // Several changes before the ports read: one update each, carrying all of them.
    n.service("echo", PolicyKind::Wrr, &[(1, 1.0)]);
    n.sw.remove_port(2);
    n.step();
    let want = vec![
        (Port, "p0".to_string(), 0),
        (Port, "p1".to_string(), 1),
        (Service, "echo".to_string(), 0),
    ];
    assert_eq!(updates(&mut n, 0), vec![want.clone()]);
    assert_eq!(updates(&mut n, 1), vec![want.clone()]);
    // A port that is down gets nothing, and is not listed.
    assert!(n.peers[2].recv_all().is_empty());
    // Revived, it is listed again under its id; it gets a hello, the others an update.
    n.revive(2, 16);
    n.step();
    let hello = n.peers[2].recv_all();
    assert_eq!(hello.len(), 1);
    assert_eq!(hello[0].0.kind(), Some(MsgKind::Hello));
    let with_p2 = vec![
        (Port, "p0".to_string(), 0),
        (Port, "p1".to_string(), 1),
        (Port, "p2".to_string(), 2),
        (Service, "echo".to_string(), 0),
    ];
    assert_eq!(dir_entries(&hello[0].1), with_p2);
    assert_eq!(updates(&mut n, 0), vec![with_p2.clone()]);
    assert_eq!(updates(&mut n, 1), vec![with_p2]);
    // A new port gets the next id; a removed service leaves the directory.
    let (peer, dev) = Peer::new(16);
    n.peers.push(peer);
    let id = n.sw.add_port("late", dev, Box::new(Polling)).unwrap();
    assert_eq!(id, 3);
    let echo = n.sw.service_id("echo").unwrap();
    n.sw.remove_service(echo).unwrap();
    n.step();
    let last = vec![
        (Port, "p0".to_string(), 0),
        (Port, "p1".to_string(), 1),
        (Port, "p2".to_string(), 2),
        (Port, "late".to_string(), 3),
    ];
    for p in 0..3 {
        assert_eq!(updates(&mut n, p), vec![last.clone()]);
    }
    assert_eq!(n.peers[3].recv_all()[0].0.kind(), Some(MsgKind::Hello));
    // Queued: 3 for the service (removing p2 found them waiting), 2 for the revival, 3 for
    // the new port (removing the service found them waiting).
    assert_eq!(n.sw.snapshot().totals.directory_updates, 3 + 2 + 3);
}

#[test]
fn a_frontend_hears_a_port_is_gone_before_its_requests_there_fail() {
    use crate::wire::directory::EntryKind::Port;
    let mut n = net(2, 16);
    n.step();
    for p in &mut n.peers {
        p.recv_all();
    }
    for id in 0..4 {
        assert!(n.peers[0].send(&MsgHeader::new(MsgKind::Request, 1, id, 8), &payload(id, 8)));
    }
    n.step();
    assert_eq!(n.peers[1].recv_all().len(), 4, "delivered, never answered");
    n.sw.remove_port(1);
    n.step();
    // The update first: a client that holds its requests while its target is out of the
    // directory sends nothing more when the errors free its window.
    let got = n.peers[0].recv_all();
    assert_eq!(got.len(), 5);
    assert_eq!(got[0].0.kind(), Some(MsgKind::DirectoryUpdate));
    assert_eq!(dir_entries(&got[0].1), vec![(Port, "p0".to_string(), 0)]);
    for (h, _) in &got[1..] {
        assert_eq!(h.kind(), Some(MsgKind::Reply));
        assert_eq!(h.status(), Some(Status::PortBroken));
    }
}

#[test]
fn one_way_unicast_arrives_in_order_and_intact() {
    let mut n = net(2, 8);
    n.step();
    n.peers[1].recv_all();
    let mut got = Vec::new();
    let mut sent = 0u64;
    while got.len() < 500 {
        while sent < 500 {
            let h = MsgHeader::new(MsgKind::OneWay, 1, sent, 20);
            if !n.peers[0].send(&h, &payload(sent, 20)) {
                break;
            }
            sent += 1;
        }
        n.step();
        got.extend(n.peers[1].recv_all());
    }
    for (i, (h, p)) in got.iter().enumerate() {
        assert_eq!(h.msg_id(), i as u64);
        assert_eq!(h.src(), 0, "the switch stamps the source");
        assert_eq!(p, &payload(i as u64, 20));
    }
    assert_eq!(n.sw.snapshot().totals.oneway_delivered, 500);
    // The cheap counters read what the snapshot reports.
    let s = n.sw.snapshot();
    assert_eq!(n.sw.totals(), s.totals);
    for p in &s.ports {
        assert_eq!(n.sw.port_stats(p.id), Some(p.stats));
    }
    assert_eq!(n.sw.port_stats(0).unwrap().sent, 500);
    assert_eq!(n.sw.port_stats(1).unwrap().received, 500);
    assert_eq!(n.sw.port_stats(2), None);
}

#[test]
fn one_way_to_unknown_port_comes_back_as_an_error() {
    let mut n = net(1, 8);
    n.step();
    n.peers[0].recv_all();
    n.peers[0].send(&MsgHeader::new(MsgKind::OneWay, 42, 9, 0), &[]);
    n.step();
    n.step();
    let got = n.peers[0].recv_all();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.msg_id(), 9);
    assert_eq!(got[0].0.status(), Some(Status::Unreachable));
    assert_eq!(n.sw.snapshot().totals.oneway_undeliverable, 1);
}
