//! The traffic loops over host peers and a real switch, in one thread taking turns.

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use super::*;
use crate::abi::image::worker::PAYLOAD_XOR;
use crate::peer::{host_peer, HostPeer, PeerConfig};
use crate::switch::{ManualClock, Polling, ServiceConfig, Switch, SwitchConfig};
use crate::virtio::RxMsg;
use crate::wire::{MsgHeader, MsgKind};

const SLOT: u32 = 512;

/// A switch with a client port and `workers` worker ports in service 0.
fn net(workers: usize) -> (Switch<GuestMemoryMmap>, HostPeer, Vec<HostPeer>, u32) {
    let cfg = PeerConfig {
        queue_size: 16,
        slot_size: SLOT,
        event_idx: true,
    };
    let clock = Arc::new(ManualClock::new(1_000_000));
    let mut sw = Switch::new(SwitchConfig::default(), clock).unwrap();
    let (client, port) = host_peer(cfg).unwrap();
    sw.add_port("client", port, Box::new(Polling)).unwrap();
    let mut peers = Vec::new();
    let mut members = Vec::new();
    for i in 0..workers {
        let (peer, port) = host_peer(cfg).unwrap();
        members.push((
            sw.add_port(&format!("w{i}"), port, Box::new(Polling))
                .unwrap(),
            1.0,
        ));
        peers.push(peer);
    }
    let svc = sw
        .add_service("echo", ServiceConfig::default(), &members)
        .unwrap();
    (sw, client, peers, svc)
}

/// Counts what the hooks hear, to check they agree with the loops' counters.
#[derive(Default)]
struct Heard {
    sent: u64,
    verdicts: Vec<Verdict>,
    hellos: u64,
}

impl ClientHooks<HostPeer> for Heard {
    fn sent(&mut self, _id: u64) {
        self.sent += 1;
    }
    fn answered(&mut self, _id: u64, verdict: Verdict) {
        self.verdicts.push(verdict);
    }
    fn other(&mut self, _link: &mut HostPeer, msg: &RxMsg, _payload: &mut [u8]) {
        assert_eq!(msg.header.kind(), Some(MsgKind::Hello));
        self.hellos += 1;
    }
}

/// Steps the client's exchange, the switch and the workers until every request has its reply.
fn exchange(
    workers: usize,
    wcfg: WorkerConfig,
    ex: Exchange,
) -> (ClientCounters, Heard, Vec<Worker>) {
    let (mut sw, mut cpeer, mut wpeers, svc) = net(workers);
    let ex = Exchange {
        dst: match ex.dst {
            Destination::Service(_) => Destination::Service(svc),
            d => d,
        },
        ..ex
    };
    let mut bits = vec![0u8; ex.count.div_ceil(8) as usize];
    let mut client = Client::new(&mut bits, PAYLOAD_XOR, Some(ex.size));
    let mut ws: Vec<Worker> = (0..workers).map(|_| Worker::new(wcfg)).collect();
    let mut heard = Heard::default();
    let (mut buf, mut out) = (vec![0u8; SLOT as usize], vec![0u8; SLOT as usize]);
    for _ in 0..100_000 {
        if client.replies.answered == ex.count {
            break;
        }
        client.step(&mut cpeer, &mut heard, &ex, (1, 0), &mut buf, &mut out);
        sw.poll();
        for (w, p) in ws.iter_mut().zip(wpeers.iter_mut()) {
            assert!(w.step(p, &mut (), &mut buf).is_ok());
        }
        sw.poll();
    }
    (client.counters, heard, ws)
}

#[test]
fn client_gets_one_xor_answer_per_request_through_the_switch() {
    let wcfg = WorkerConfig {
        key: PAYLOAD_XOR,
        report_load: true,
        ..WorkerConfig::default()
    };
    let ex = Exchange {
        dst: Destination::Service(0),
        count: 500,
        window: 8,
        size: 100,
        src: None,
        class: 0,
        key: 0,
        key_spread: 0,
    };
    let (c, heard, ws) = exchange(2, wcfg, ex);
    assert_eq!(
        c,
        ClientCounters {
            sent: 500,
            received: 500,
            ok: 500,
            ..ClientCounters::default()
        }
    );
    assert_eq!(heard.sent, 500);
    assert_eq!(heard.hellos, 1);
    assert!(heard.verdicts.iter().all(|v| *v == Verdict::Ok));
    assert_eq!(ws.iter().map(|w| w.counters.replies).sum::<u64>(), 500);
    assert!(
        ws.iter().all(|w| w.counters.replies > 0),
        "both workers served"
    );
}

#[test]
fn a_plain_echo_is_a_mismatch_and_error_replies_are_counted() {
    // Key 0 echoes the payload unchanged: every Ok reply is a mismatch for an XOR client.
    let ex = Exchange {
        dst: Destination::Service(0),
        count: 40,
        window: 4,
        size: 16,
        src: None,
        class: 0,
        key: 0,
        key_spread: 0,
    };
    let wcfg = WorkerConfig {
        error_every: 4,
        ..WorkerConfig::default()
    };
    let (c, _, ws) = exchange(1, wcfg, ex);
    assert_eq!((c.sent, c.received), (40, 40));
    assert_eq!((c.mismatches, c.errors, c.ok), (30, 10, 0));
    assert_eq!(
        ws[0].counters,
        WorkerCounters {
            requests: 40,
            replies: 40,
            ok: 30,
            errors: 10,
        }
    );
}

#[test]
fn replies_accept_each_sent_id_once() {
    let mut bits = [0u8; 2];
    let mut r = Replies::new(&mut bits);
    assert!(!r.accept(0, 5), "id 0 is never sent");
    assert!(!r.accept(5, 5), "not sent yet");
    assert!(r.accept(3, 5));
    assert!(!r.accept(3, 5), "answered already");
    assert!(!r.accept(17, 100), "beyond the record");
    assert_eq!(r.answered, 1);
}

#[test]
fn the_worker_stops_as_configured() {
    let (mut sw, mut cpeer, mut wpeers, svc) = net(1);
    let mut w = Worker::new(WorkerConfig {
        crash_after: 3,
        ..WorkerConfig::default()
    });
    for id in 1..=5u64 {
        let h = MsgHeader::request_to_service(svc, id, 4);
        cpeer.tx.send(&h, &[1, 2, 3, 4]).unwrap();
    }
    cpeer.tx.flush().unwrap();
    sw.poll();
    assert_eq!(
        w.step(&mut wpeers[0], &mut (), &mut [0u8; 64]),
        Err(WorkerStop::Crashed)
    );
    assert_eq!((w.counters.requests, w.counters.replies), (3, 3));
}
