//! What one guest can hold of what the switch shares: a hostile or careless port may lose its
//! own work, never take the in-flight table, a backend's descriptors or unbounded memory.

use vm_memory::{Bytes, GuestAddress};

use super::*;

fn request(id: u64, len: usize) -> MsgHeader {
    MsgHeader::request_to_service(0, id, len as u32)
}

/// Requests from port `p` to service 0, `ids` in order, as far as its tx ring takes them.
fn send_requests(n: &mut Net, p: usize, ids: std::ops::Range<u64>) {
    for id in ids {
        assert!(n.peers[p].send(&request(id, 16), &payload(id, 16)));
    }
}

#[test]
fn a_guest_that_republishes_a_held_head_breaks_its_own_port_only() {
    let mut n = net(3, 2);
    n.service("echo", PolicyKind::Wrr, &[(2, 1.0)]);
    n.step();
    n.peers.iter_mut().for_each(|p| {
        p.recv_all();
    });
    // Port 1 sends one honest request, then publishes the same head in its avail ring again
    // and again, as if each were a new request.
    send_requests(&mut n, 1, 1..2);
    let l = n.peers[1].h.tx.ring().layout();
    let mem = n.peers[1].h.memory().clone();
    let head: u16 = mem.read_obj(GuestAddress(l.avail + 4)).unwrap();
    for round in 0..200u16 {
        let idx: u16 = mem.read_obj(GuestAddress(l.avail + 2)).unwrap();
        mem.write_obj(head, GuestAddress(l.avail + 4 + 2 * u64::from(idx % 2)))
            .unwrap();
        mem.write_obj(idx.wrapping_add(1), GuestAddress(l.avail + 2))
            .unwrap();
        n.step();
        if n.sw.port_down(1) {
            assert!(round <= 1, "caught at its first repeat, not round {round}");
            break;
        }
    }
    assert!(n.sw.port_down(1));
    let s = n.sw.snapshot();
    assert_eq!(s.ports[1].stats.faults, 1);
    assert!(n.sw.in_flight() <= 1, "{} in flight", n.sw.in_flight());
    // The honest frontend is served as before.
    let answers = run_requests(&mut n, 0, 300, &[2], serve_ok(2), 5000);
    assert_exactly_once(&answers, 300);
    assert!(answers.values().all(|a| a == &[Status::Ok]));
}

#[test]
fn a_frontend_that_never_reads_does_not_pin_its_backend() {
    // p0 never reads its rx queue; p1 serves "echo" alone; p2 is an honest frontend; p3 fills
    // p0's rx queue with one-way messages first.
    let mut n = net(4, 16);
    n.service("echo", PolicyKind::Wrr, &[(1, 1.0)]);
    n.step();
    for p in 1..4 {
        n.peers[p].recv_all();
    }
    for id in 0..15 {
        let h = MsgHeader::new(MsgKind::OneWay, 0, id, 4);
        assert!(n.peers[3].send(&h, &[1, 2, 3, 4]));
    }
    n.step();
    // p0 sends a tx ring's worth of requests; the backend answers them all.
    send_requests(&mut n, 0, 1..17);
    for _ in 0..50 {
        n.step();
        n.peers[1].serve(16, Status::Ok);
    }
    let t = n.sw.snapshot().totals;
    assert_eq!(t.replies_copied, 16, "{t:?}");
    // The backend's tx queue is free again: the honest frontend gets every reply.
    let answers = run_requests_from(&mut n, 2, 0, 200, &[1], 5000);
    assert_exactly_once(&answers, 200);
    assert!(answers.values().all(|a| a == &[Status::Ok]));
    // When p0 finally reads, it gets its 16 replies, intact, exactly once.
    let got = n.peers[0].recv_all();
    n.step();
    let got: Vec<_> = got
        .into_iter()
        .chain(n.peers[0].recv_all())
        .filter(|(h, _)| h.kind() == Some(MsgKind::Reply))
        .collect();
    assert_eq!(got.len(), 16);
    for (h, p) in &got {
        assert_eq!(h.status(), Some(Status::Ok));
        assert_eq!(p, &payload(h.msg_id(), 16));
    }
    assert_totals_add_up(&n.sw);
}

#[test]
fn a_frontend_that_resets_in_a_loop_leaves_nothing_in_wait_queues() {
    // The only backend never drains: requests wait for it. The frontend resets its device with
    // requests waiting, again and again.
    let mut n = net(2, 16);
    n.service("echo", PolicyKind::Wrr, &[(1, 1.0)]);
    for _ in 0..100 {
        n.step();
        n.peers[0].recv_all();
        send_requests(&mut n, 0, 1..17);
        n.step();
        n.sw.remove_port(0);
        n.revive(0, 16);
        let waiting = n.sw.snapshot().services[0].waiting;
        assert!(waiting <= 16, "{waiting} tokens wait for 0 live requests");
    }
    assert_eq!(n.sw.snapshot().services[0].waiting, 0);
    assert_totals_add_up(&n.sw);
}
