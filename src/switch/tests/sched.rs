//! Stall detection that tells "not draining" from "not scheduled", driven by injected clocks.

use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::port::NativePort;

/// p0 a frontend, p1 the only backend of "echo", whose vCPU's run-queue wait reads `waited`.
fn net_with_sched(waited: Arc<AtomicU64>) -> Net {
    let clock = ManualClock::new(1_000_000);
    let mut sw = Switch::new(SwitchConfig::default(), Arc::new(clock.clone())).unwrap();
    let mut peers = Vec::new();
    for i in 0..2 {
        let (h, dev) = host_peer(PeerConfig {
            queue_size: 16,
            slot_size: 256,
            event_idx: true,
        })
        .unwrap();
        let mut port = NativePort::new(dev, Box::new(Polling));
        if i == 1 {
            let w = waited.clone();
            port = port.with_run_queue_clock(Box::new(move || Some(w.load(Ordering::Relaxed))));
        }
        sw.attach(&format!("p{i}"), Box::new(port)).unwrap();
        peers.push(Peer {
            h,
            buf: vec![0; 256],
        });
    }
    let mut n = Net { sw, clock, peers };
    n.service("echo", PolicyKind::Wrr, &[(1, 1.0)]);
    n
}

/// [`net_with_sched`] with eight requests from p0 on their way to the backend.
fn with_eight_requests(waited: Arc<AtomicU64>) -> Net {
    let mut n = net_with_sched(waited);
    n.step();
    n.peers[1].recv_all();
    for id in 1..9 {
        let h = MsgHeader::request_to_service(0, id, 16);
        assert!(n.peers[0].send(&h, &payload(id, 16)));
    }
    n
}

#[test]
fn a_backend_that_gets_no_cpu_is_descheduled_and_keeps_its_work() {
    let waited = Arc::new(AtomicU64::new(0));
    let mut n = with_eight_requests(waited.clone());
    // The backend gets no CPU for 50 ms: all that time its vCPU waits.
    for _ in 0..1000 {
        n.step();
        waited.fetch_add(STEP_NS, Ordering::Relaxed);
    }
    let s = n.sw.snapshot();
    assert_eq!(
        s.services[0].stats.ejections, 0,
        "{:?}",
        s.services[0].stats
    );
    assert_eq!(s.services[0].stats.stalls, 0);
    assert_eq!(s.services[0].stats.redispatches, 0);
    assert!(s.services[0].stats.descheduled >= 1);
    assert_eq!(s.services[0].members[0].status, "descheduled");
    // It gets the CPU back and serves everything: every request answered once, by it.
    n.peers[1].serve(16, Status::Ok);
    for _ in 0..25 {
        n.step();
    }
    let replies = n.peers[0].recv_all();
    assert_eq!(
        replies
            .iter()
            .filter(|(h, _)| h.kind() == Some(MsgKind::Reply) && h.status() == Some(Status::Ok))
            .count(),
        8
    );
    assert_eq!(n.sw.snapshot().services[0].members[0].status, "healthy");
}

#[test]
fn a_backend_that_had_the_cpu_and_did_not_drain_is_still_ejected() {
    let waited = Arc::new(AtomicU64::new(0));
    let mut n = with_eight_requests(waited.clone());
    // 20 ms not scheduled, then scheduled and still not draining.
    let mut steps = 0u64;
    while n.sw.snapshot().services[0].stats.ejections == 0 && steps < 1000 {
        if steps < 400 {
            waited.fetch_add(STEP_NS, Ordering::Relaxed);
        }
        n.step();
        steps += 1;
    }
    let s = n.sw.snapshot();
    assert_eq!(s.services[0].stats.ejections, 1);
    // Ejected once it had the CPU for the stall window (5 ms = 100 steps, from step 400 on),
    // give or take one sweep (20 steps): the run-queue wait is sampled once per sweep.
    assert!((480..=520).contains(&steps), "ejected after {steps} steps");
}
