//! Notification per message (the header's `Notify`): immediate, deferred with a per-port
//! coalescing deadline, and the per-poll default, on the injected clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::*;
use crate::virtio::GuestView;
use crate::wire::Notify;

/// A notifier that records, for each notification, how many rx entries the port had
/// published then (so a test can tell a notification sent mid-batch from one at the end).
struct Probe {
    mem: GuestView<GuestMemoryMmap>,
    rx_used_idx: u64,
    seen: Arc<Mutex<Vec<u16>>>,
    count: Arc<AtomicU64>,
}

impl Notifier for Probe {
    fn notify(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let idx = self.mem.load_u16(self.rx_used_idx).unwrap_or(u16::MAX);
        self.seen.lock().unwrap().push(idx);
    }
}

/// Port 0 sends; port 1 receives with a probe for a notifier.
struct Pair {
    n: Net,
    seen: Arc<Mutex<Vec<u16>>>,
    count: Arc<AtomicU64>,
}

fn pair() -> Pair {
    let clock = ManualClock::new(1_000_000);
    let mut sw = Switch::new(SwitchConfig::default(), Arc::new(clock.clone())).unwrap();
    let (p0, d0) = Peer::new(64);
    let (p1, d1) = Peer::new(64);
    sw.add_port("p0", d0, Box::new(Polling)).unwrap();
    let ring = p1.h.rx.ring();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicU64::new(0));
    let probe = Probe {
        mem: ring.memory().clone(),
        rx_used_idx: ring.layout().used + 2,
        seen: seen.clone(),
        count: count.clone(),
    };
    sw.add_port("p1", d1, Box::new(probe)).unwrap();
    let mut n = Net {
        sw,
        clock,
        peers: vec![p0, p1],
    };
    // Hellos, taken; then both guests "park": they ask to hear about rx and tx.
    n.step();
    for p in &mut n.peers {
        p.recv_all();
    }
    let before = count.load(Ordering::Relaxed);
    for p in &mut n.peers {
        assert!(!p.h.rx.ring_mut().enable_interrupts().unwrap());
        p.h.tx.ring_mut().enable_interrupts().unwrap();
    }
    count.fetch_sub(before, Ordering::Relaxed);
    seen.lock().unwrap().clear();
    Pair { n, seen, count }
}

impl Pair {
    fn notifies(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Port 0 sends one-way messages to port 1, notified as `modes` say, all in one batch.
    fn send(&mut self, modes: &[Notify]) {
        for (i, &m) in modes.iter().enumerate() {
            let mut h = MsgHeader::new(MsgKind::OneWay, 1, i as u64, 8);
            h.set_notify(m);
            assert!(self.n.peers[0].send(&h, &[i as u8; 8]));
        }
    }

    /// Rx entries port 1 has published (without taking them).
    fn published(&self) -> u16 {
        let ring = self.n.peers[1].h.rx.ring();
        ring.memory().load_u16(ring.layout().used + 2).unwrap()
    }

    fn stats(&self) -> PortStats {
        self.n.sw.port_stats(1).unwrap()
    }
}

#[test]
fn deferred_messages_are_published_and_notified_only_at_the_deadline() {
    let mut p = pair();
    p.n.sw.set_notify_deadline(1, 200_000).unwrap();
    let base = p.published();
    p.send(&[Notify::Deferred; 3]);
    p.n.step(); // t0: delivered and published, notification withheld
    assert_eq!(p.published(), base.wrapping_add(3), "published at once");
    assert_eq!(p.notifies(), 0);
    assert_eq!(p.stats().notifies_withheld, 1);
    assert!(
        p.n.sw.until_next_sweep() <= 200_000,
        "the switch wakes up for the deadline"
    );
    for _ in 0..3 {
        p.n.step(); // t0 + 50, 100, 150 us
        assert_eq!(p.notifies(), 0, "nothing before the deadline");
    }
    p.n.step(); // t0 + 200 us: due
    assert_eq!(p.notifies(), 1, "notified when the deadline passes");
    let s = p.stats();
    assert_eq!((s.notifies_deadline, s.notifies_immediate), (1, 0));
    for _ in 0..10 {
        p.n.step();
    }
    assert_eq!(p.notifies(), 1, "one withheld notification, sent once");
    assert_eq!(p.n.peers[1].recv_all().len(), 3);
}

#[test]
fn an_immediate_message_notifies_at_once_mid_batch() {
    let mut p = pair();
    let base = p.published();
    // One batch: an immediate message first, then deferred and per-poll ones.
    p.send(&[
        Notify::Immediate,
        Notify::Deferred,
        Notify::Deferred,
        Notify::PerPoll,
    ]);
    p.n.step();
    let seen = p.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![base.wrapping_add(1)],
        "notified when only the immediate message was published, before the rest of the batch"
    );
    assert_eq!(p.published(), base.wrapping_add(4));
    assert_eq!(p.stats().notifies_immediate, 1);
}

#[test]
fn an_immediate_message_flushes_a_withheld_notification() {
    let mut p = pair();
    p.send(&[Notify::Deferred; 4]);
    p.n.step();
    assert_eq!(p.notifies(), 0);
    p.send(&[Notify::Immediate]);
    p.n.step();
    assert_eq!(
        p.notifies(),
        1,
        "the immediate message notifies, owed or not"
    );
    let s = p.stats();
    assert_eq!((s.notifies_immediate, s.notifies_deadline), (1, 0));
    // Nothing is owed any more: the deadline passing sends nothing.
    for _ in 0..40 {
        p.n.step();
    }
    assert_eq!(p.notifies(), 1);
}

#[test]
fn a_per_poll_message_flushes_a_withheld_notification() {
    let mut p = pair();
    p.send(&[Notify::Deferred; 2]);
    p.n.step();
    assert_eq!(p.notifies(), 0);
    // The guest asked at the first deferred message, so publishing this one alone would not
    // cross its event index: the owed notification goes with it.
    p.send(&[Notify::PerPoll]);
    p.n.step();
    assert_eq!(p.notifies(), 1);
    assert_eq!(p.stats().notifies_deadline, 0);
}

#[test]
fn per_poll_messages_keep_one_notification_per_poll() {
    let mut p = pair();
    let base = p.published();
    p.send(&[Notify::PerPoll; 5]);
    p.n.step();
    assert_eq!(
        *p.seen.lock().unwrap(),
        vec![base.wrapping_add(5)],
        "one notification, after the whole batch was published"
    );
    let s = p.stats();
    assert_eq!((s.notifies_immediate, s.notifies_withheld), (0, 0));
}

#[test]
fn a_zero_deadline_notifies_deferred_messages_within_the_poll() {
    let mut p = pair();
    p.n.sw.set_notify_deadline(1, 0).unwrap();
    p.send(&[Notify::Deferred; 2]);
    p.n.step();
    assert_eq!(p.notifies(), 1);
}

#[test]
fn nothing_waits_past_the_default_deadline() {
    let mut p = pair();
    p.send(&[Notify::Deferred]);
    p.n.step();
    let deferred_at = p.n.clock.now_ns();
    while p.notifies() == 0 {
        assert!(
            p.n.clock.now_ns() - deferred_at <= DEFAULT_NOTIFY_DEADLINE_NS,
            "waited past the deadline"
        );
        p.n.step();
    }
    assert!(p.n.clock.now_ns() - deferred_at >= DEFAULT_NOTIFY_DEADLINE_NS);
}

#[test]
fn a_deferred_reply_and_the_hand_back_of_its_request_notify_nobody() {
    // Port 1 asks port 0 (the client); port 0 answers with the request's notification.
    for (mode, told) in [(Notify::Deferred, 0), (Notify::Immediate, 1)] {
        let mut p = pair();
        p.n.sw.set_notify_deadline(1, 10_000_000).unwrap();
        let mut h = MsgHeader::new(MsgKind::Request, 0, 7, 8);
        h.set_notify(mode);
        assert!(p.n.peers[1].send(&h, &[1; 8]));
        p.n.step();
        assert_eq!(p.n.peers[0].serve(1, Status::Ok), 1);
        p.n.step();
        assert_eq!(
            p.notifies(),
            told,
            "{mode:?}: the reply and the request's chain coming back are notified as the \
             reply is"
        );
        let got = p.n.peers[1].recv_all();
        assert_eq!(got.len(), 1, "the reply is there to read");
        assert_eq!(
            got[0].0.notify(),
            mode,
            "replies echo the request's notification"
        );
    }
}
