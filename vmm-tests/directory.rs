//! The directory on real KVM guests: a client keeps reaching a VM by name across its death and
//! revival (a real switch), refuses hostile directories and keeps its last good copy, and
//! holds its requests while its target is gone from the directory (the test in the switch's
//! place, writing raw messages into the guest's rx queue).
//!
//! They assert on counts only, never on time. Without a usable `/dev/kvm` each test prints
//! "skipping" and passes, unless `CI=true` or `VMQ_REQUIRE_KVM=1`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;
use vmq::abi::image::{client, driver, worker};
use vmq::event::{LoopConfig, SwitchLoop};
use vmq::switch::{MonotonicClock, Notifier, Switch, SwitchConfig, SWITCH_PORT};
use vmq::transport::TransportEvent;
use vmq::virtio::{DeliverError, DevicePort, Payload};
use vmq::vmm::{images, RunOutcome};
use vmq::wire::directory::{self, Entry, EntryKind};
use vmq::wire::{MsgHeader, MsgKind, Status};

mod common;
use common::guest::{clone_kick, Guest};
use common::require_kvm;

/// How long a test waits for a guest to reach a state before it fails (generous: the cores
/// are shared; nothing is asserted about time).
const PATIENCE: Duration = Duration::from_secs(30);

/// The encoded directory listing `ports` (name, id), no services.
fn dir(ports: &[(&str, u32)]) -> Vec<u8> {
    let entries = ports.iter().map(|&(name, id)| Entry {
        id,
        kind: EntryKind::Port,
        name: name.as_bytes(),
    });
    let mut out = vec![0; directory::encoded_len(entries.clone())];
    let n = directory::encode(entries, &mut out).expect("sized by encoded_len");
    out.truncate(n);
    out
}

/// Waits until `done(results)` holds for guest `g`, or fails the test showing its results and
/// console.
fn wait_for(g: &Guest, what: &str, done: impl Fn(&[u64]) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done(&g.results()) {
        assert!(
            Instant::now() < deadline && !g.finished(),
            "{}: {what} never happened: results {:?}, console {:?}",
            g.vm.name(),
            g.results(),
            g.vm.console().lines()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_revived_vm_is_found_by_name_and_answers_every_request_after_its_revival() {
    if !require_kvm() {
        return;
    }
    // The client sends to "w" by name. The first "w" answers K requests and stalls with W
    // more in its queue; the host kills it, which fails those W back and sends the client a
    // directory without "w": the client holds its requests. A new VM comes up as "w", the
    // switch revives the port under its old id, the update names "w" again, and the client
    // sends the rest there.
    const N: u64 = 400;
    const K: u64 = 100;
    const W: u64 = 8;
    let mut client = Guest::start_named(
        "client",
        images::CLIENT,
        &[
            (client::param::COUNT, N),
            (client::param::SIZE, 64),
            (client::param::WINDOW, W),
            (client::param::WAIT, driver::WAIT_DOORBELL),
        ],
        &[(client::param::TARGET, "w")],
    );
    let worker_params = [(worker::param::WAIT, driver::WAIT_DOORBELL)];
    let mut first = Guest::start(
        "w-first",
        images::WORKER,
        &[worker_params[0], (worker::param::STALL_AFTER, K)],
    );
    // The W requests wait in the stalled worker's queue until the kill, however late the
    // host gets to it: no deadline fails them first.
    let cfg = SwitchConfig {
        port_request_timeout_ns: 600_000_000_000,
        ..SwitchConfig::default()
    };
    let mut sw = Switch::new(cfg, Arc::new(MonotonicClock::new())).unwrap();
    assert_eq!(
        sw.add_port("client", client.activated(), client.link.notifier())
            .unwrap(),
        0
    );
    assert_eq!(
        sw.add_port("w", first.activated(), first.link.notifier())
            .unwrap(),
        1
    );
    let kicks = vec![clone_kick(&client), clone_kick(&first)];
    let mut lp = SwitchLoop::new(sw, kicks, LoopConfig::default()).unwrap();

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Stage {
        /// Traffic to the first "w" until it stalls with the client's window in its queue.
        Serving,
        /// The first "w" killed and its port removed; waiting for the client to hear of it.
        Killed,
        /// A new "w" booting.
        Booting,
        /// The port revived with the new VM's queues.
        Revived,
    }
    let mut stage = Stage::Serving;
    let mut second: Option<Guest> = None;
    let mut killed = None;
    let mut sent_at_revival = 0;
    let deadline = Instant::now() + 4 * PATIENCE;
    lp.run(
        |_| client.finished() || Instant::now() > deadline,
        Duration::from_millis(1),
        |sw, _, kicks| {
            let rc = client.results();
            match stage {
                Stage::Serving => {
                    // Stalled, with all W of the client's window taken by the switch (not
                    // still in the client's tx queue).
                    let stalled = first.results()[worker::result::RECEIVED] == K;
                    if stalled && rc[client::result::SENT] == K + W && sw.in_flight() == W as usize
                    {
                        killed = Some(first.stop());
                        sw.remove_port(1);
                        stage = Stage::Killed;
                    }
                }
                Stage::Killed => {
                    // Its W requests failed back, and the update without "w" came.
                    if rc[client::result::TARGET_GONE] == 1 && rc[client::result::RECEIVED] == K + W
                    {
                        second = Some(Guest::start("w-second", images::WORKER, &worker_params));
                        stage = Stage::Booting;
                    }
                }
                Stage::Booting => {
                    let g = second.as_ref().expect("booting");
                    if let Ok(ev) = g.link.events.try_recv() {
                        let TransportEvent::Activated(dev) = ev else {
                            panic!("the new w reset its device before it came up");
                        };
                        sent_at_revival = rc[client::result::SENT];
                        sw.revive_port(1, dev, g.link.notifier()).unwrap();
                        kicks.push((1, clone_kick(g)));
                        stage = Stage::Revived;
                    }
                }
                Stage::Revived => {}
            }
        },
    );
    let oc = client.join();
    let mut second = second.expect("the second w was started");
    let os = second.stop();
    let snap = lp.switch.snapshot();
    let (rc, r1, r2) = (client.results(), first.results(), second.results());
    let console = client.vm.console().lines();
    assert_eq!(stage, Stage::Revived, "client {rc:?}, console {console:?}");
    assert_eq!(
        oc,
        RunOutcome::Exited(0),
        "client {rc:?}, console {console:?}"
    );
    assert_eq!(killed, Some(RunOutcome::Stopped));
    assert_eq!(os, RunOutcome::Stopped, "second w {r2:?}");
    // While "w" was gone the client sent nothing: not one request met a missing port.
    assert_eq!(sent_at_revival, K + W, "client {rc:?}");
    assert_eq!(rc[client::result::STATUS_UNREACHABLE], 0, "{rc:?}");
    // Every request answered once: the W the first "w" held failed back, the rest answered
    // by one "w" or the other, the second one under the same port id.
    assert_eq!(rc[client::result::SENT], N, "{rc:?}");
    assert_eq!(rc[client::result::RECEIVED], N, "{rc:?}");
    assert_eq!(rc[client::result::OK], N - W, "{rc:?}");
    assert_eq!(rc[client::result::ERRORS], W, "{rc:?}");
    assert_eq!(rc[client::result::STATUS_TIMEOUT_OR_BROKEN], W, "{rc:?}");
    assert_eq!(
        (
            rc[client::result::DUPLICATES],
            rc[client::result::MISMATCHES]
        ),
        (0, 0)
    );
    assert_eq!(r1[worker::result::OK], K, "first w {r1:?}");
    assert_eq!(r2[worker::result::OK], N - K - W, "second w {r2:?}");
    assert_eq!(r2[worker::result::PORT_ID], 1, "second w {r2:?}");
    // Hello, the update without "w", the update with it again; each one taken.
    assert_eq!(rc[client::result::DIRECTORIES], 3, "{rc:?}");
    assert_eq!(rc[client::result::TARGET_GONE], 1, "{rc:?}");
    assert_eq!(rc[client::result::RING_ERRORS], 0, "{rc:?}");
    let w = snap.ports.iter().find(|p| p.name == "w").expect("port w");
    assert_eq!(w.stats.revivals, 1);
    assert_eq!(snap.in_flight, 0);
    let t = &snap.totals;
    assert_eq!(
        t.requests_accepted,
        t.replies_delivered + t.failed_back + t.orphaned + t.refused
    );
}

/// The test in the switch's place for one guest: it writes what it likes into the guest's rx
/// queue through vmq's own device side (`DevicePort::deliver`, which the switch's native port
/// uses too), and answers the guest's requests itself, like an echo worker behind the switch.
struct PlayedSwitch {
    dev: DevicePort<GuestMemoryMmap>,
    notifier: Box<dyn Notifier>,
    /// The guest's port id, as this switch tells it in its hello.
    port: u32,
    /// The destination port of every request taken, in order.
    requests: Vec<u32>,
}

impl PlayedSwitch {
    fn new(g: &Guest, port: u32) -> Self {
        Self {
            dev: g.activated(),
            notifier: g.link.notifier(),
            port,
            requests: Vec::new(),
        }
    }

    /// Delivers `header` and `payload` as they are (the header may lie about the length) and
    /// wakes the guest; first waits for an rx buffer (a guest posts its buffers just after it
    /// activates the device).
    fn send_raw(&mut self, header: &MsgHeader, payload: &[u8]) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self
                .dev
                .deliver(header, &Payload::<GuestMemoryMmap>::Bytes(payload))
            {
                Ok(_) => break,
                Err(DeliverError::NoBuffer) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("cannot deliver to the guest: {e:?}"),
            }
        }
        self.dev.publish_rx();
        self.notifier.notify();
    }

    /// A message of `kind` from the switch to port `dst`, carrying `payload`.
    fn send(&mut self, kind: MsgKind, dst: u32, payload: &[u8]) {
        let mut h = MsgHeader::new(kind, dst, 0, payload.len() as u32);
        h.set_src(SWITCH_PORT);
        self.send_raw(&h, payload);
    }

    /// A directory update for the guest's port.
    fn update(&mut self, payload: &[u8]) {
        self.send(MsgKind::DirectoryUpdate, self.port, payload);
    }

    /// Answers every request the guest has published, up to `most`, as an echo worker would
    /// (payload XOR `PAYLOAD_XOR`, `Status::Ok`); returns how many.
    fn answer(&mut self, most: usize) -> usize {
        let mut n = 0;
        while n < most {
            let Some(c) = self.dev.pop_tx().expect("the guest's tx chains are sound") else {
                break;
            };
            assert_eq!(c.header.kind(), Some(MsgKind::Request));
            assert!(!c.header.dst_is_service());
            self.requests.push(c.header.dst());
            let mut buf = vec![0; c.header.len() as usize];
            self.dev.read_payload(&c, &mut buf).unwrap();
            buf.iter_mut().for_each(|b| *b ^= worker::PAYLOAD_XOR);
            let mut h = MsgHeader::reply_to(&c.header, Status::Ok, buf.len() as u32);
            h.set_dst_port(self.port);
            h.set_src(c.header.dst());
            self.dev
                .deliver(&h, &Payload::<GuestMemoryMmap>::Bytes(&buf))
                .expect("the guest keeps rx buffers posted");
            self.dev.complete_tx(c.head).unwrap();
            n += 1;
        }
        self.dev.publish_rx();
        self.dev.publish_tx();
        self.notifier.notify();
        n
    }

    /// Answers requests until `replies` were answered in all, and waits until `g` took them.
    fn answer_until(&mut self, g: &Guest, replies: u64) {
        let deadline = Instant::now() + PATIENCE;
        while (self.requests.len() as u64) < replies {
            if self.answer((replies - self.requests.len() as u64) as usize) == 0 {
                assert!(
                    Instant::now() < deadline && !g.finished(),
                    "{}: never got {replies} replies: results {:?}, console {:?}",
                    g.vm.name(),
                    g.results(),
                    g.vm.console().lines()
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        wait_for(g, "the replies taken", |r| {
            r[client::result::RECEIVED] == replies
        });
    }
}

/// Counts one more refusal in `refused` and waits until guest `g` has reported it.
fn refuse(g: &Guest, refused: &mut u64, what: &str) {
    *refused += 1;
    let want = *refused;
    wait_for(g, what, |r| r[client::result::RING_ERRORS] == want);
}

/// A client that sends `n` requests of `size` bytes to the VM named "w", at most `window`
/// outstanding, parking on the doorbell when idle.
fn client_of_w(n: u64, size: u64, window: u64) -> Guest {
    Guest::start_named(
        "client",
        images::CLIENT,
        &[
            (client::param::COUNT, n),
            (client::param::SIZE, size),
            (client::param::WINDOW, window),
            (client::param::WAIT, driver::WAIT_DOORBELL),
        ],
        &[(client::param::TARGET, "w")],
    )
}

#[test]
fn a_guest_refuses_hostile_directories_and_keeps_its_last_good_copy() {
    if !require_kvm() {
        return;
    }
    const N: u64 = 64;
    // Requests of 2 KiB make its rx buffers hold more than the 1 KiB a directory may take, so
    // that an oversized directory reaches the guest whole and the guest itself refuses it.
    let mut g = client_of_w(N, 2048, 4);
    let mut sw = PlayedSwitch::new(&g, 0);
    let good = dir(&[("client", 0), ("w", 5)]);
    let mut refused = 0;

    // Before any hello, an update is for nobody this guest knows of.
    sw.update(&good);
    refuse(&g, &mut refused, "an update before the hello refused");
    assert_eq!(g.results()[client::result::PORT_ID], u64::MAX);
    // A hello gives the port id even when its directory is refused.
    let mut lying = good.clone();
    lying[0] = 3;
    sw.send(MsgKind::Hello, 0, &lying);
    refuse(&g, &mut refused, "a hello with a lying count refused");
    assert_eq!(g.results()[client::result::PORT_ID], 0);
    sw.update(&dir(&[("client", 0)]));
    wait_for(&g, "a good directory taken", |r| {
        r[client::result::DIRECTORIES] == 1
    });

    // Each of these is built around a directory that names "w": none is taken, so the client,
    // waiting for "w", sends nothing.
    let mut hostile: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut count_past_end = good.clone();
    count_past_end[0] = 3;
    hostile.push(("a count past the entries", count_past_end));
    let mut count_short = good.clone();
    count_short[0] = 1;
    hostile.push(("a count short of the entries (trailing bytes)", count_short));
    let mut name_overflows = good.clone();
    let last_len = name_overflows.len() - 2; // "w": its name_len byte
    name_overflows[last_len] = 200;
    hostile.push(("a name running past the end", name_overflows));
    hostile.push(("cut inside an entry", good[..good.len() - 3].to_vec()));
    let mut bad_kind = good.clone();
    bad_kind[8] = 7;
    hostile.push(("an unknown entry kind", bad_kind));
    hostile.push((
        "the same name twice",
        dir(&[("client", 0), ("w", 5), ("w", 6)]),
    ));
    hostile.push((
        "the same id twice",
        dir(&[("client", 0), ("w", 5), ("v", 5)]),
    ));
    let filler = "f".repeat(60);
    let mut big: Vec<(&str, u32)> = (0..18).map(|i| (filler.as_str(), 10 + i)).collect();
    big.push(("w", 5));
    let big = dir(&big);
    assert!(big.len() > driver::DIRECTORY_MAX && big.len() < 2048);
    hostile.push(("longer than 1 KiB", big));
    hostile.push(("nothing at all", Vec::new()));
    for (what, bytes) in &hostile {
        sw.update(bytes);
        refuse(&g, &mut refused, what);
    }
    // An update addressed to another port.
    sw.send(MsgKind::DirectoryUpdate, 7, &good);
    refuse(&g, &mut refused, "an update for port 7 refused");
    // A header announcing more bytes than arrived.
    let mut h = MsgHeader::new(MsgKind::DirectoryUpdate, 0, 0, good.len() as u32 + 16);
    h.set_src(SWITCH_PORT);
    sw.send_raw(&h, &good);
    refuse(&g, &mut refused, "an update shorter than its header says");
    // Longer than the guest's rx buffer: the device delivers only a header marked TooLarge.
    let huge: Vec<(String, u32)> = (0..40).map(|i| (format!("{filler}{i}"), 10 + i)).collect();
    let huge: Vec<(&str, u32)> = huge.iter().map(|(n, i)| (n.as_str(), *i)).collect();
    sw.update(&dir(&huge));
    refuse(&g, &mut refused, "an update longer than the rx buffer");
    let r = g.results();
    assert_eq!(r[client::result::DIRECTORIES], 1, "{r:?}");
    assert_eq!(r[client::result::SENT], 0, "{r:?}");

    // The good one: "w" is port 5, and the client starts.
    sw.update(&good);
    sw.answer_until(&g, N / 2);
    // Updates that would drop "w" or move it, each malformed: refused mid-traffic, the copy
    // stays, and the client keeps sending to port 5 without a pause.
    let mut moved = dir(&[("client", 0), ("w", 9)]);
    moved.push(0);
    let mut dropped = dir(&[("client", 0)]);
    dropped[0] = 2;
    for (what, bytes) in [
        ("w moved, trailing byte", moved),
        ("w dropped, count 2", dropped),
    ] {
        sw.update(&bytes);
        refuse(&g, &mut refused, what);
    }
    sw.answer_until(&g, N);
    let oc = g.join();
    let r = g.results();
    assert_eq!(
        oc,
        RunOutcome::Exited(0),
        "{r:?} {:?}",
        g.vm.console().lines()
    );
    assert_eq!(r[client::result::OK], N, "{r:?}");
    assert_eq!(r[client::result::RING_ERRORS], refused, "{r:?}");
    assert_eq!(r[client::result::DIRECTORIES], 2, "{r:?}");
    assert_eq!(r[client::result::TARGET_GONE], 0, "{r:?}");
    assert_eq!(sw.requests.len() as u64, N);
    assert!(sw.requests.iter().all(|&d| d == 5), "{:?}", sw.requests);
    assert!(!sw.dev.is_broken());
}

#[test]
fn a_client_holds_its_requests_while_its_target_is_gone_from_the_directory() {
    if !require_kvm() {
        return;
    }
    const N: u64 = 40;
    const W: u64 = 4;
    let mut g = client_of_w(N, 64, W);
    let mut sw = PlayedSwitch::new(&g, 0);
    sw.send(MsgKind::Hello, 0, &dir(&[("client", 0), ("w", 5)]));
    sw.answer_until(&g, 10);
    wait_for(&g, "a full window", |r| r[client::result::SENT] == 10 + W);
    // "w" leaves the directory with W requests outstanding. No request failed: the client
    // learns it from the update alone.
    sw.update(&dir(&[("client", 0)]));
    wait_for(&g, "w noticed gone", |r| {
        r[client::result::TARGET_GONE] == 1
    });
    // Its outstanding requests are still answered, and free its window: it sends nothing.
    sw.answer_until(&g, 10 + W);
    // "w" under another id is not the port it was sending to: still gone.
    sw.update(&dir(&[("client", 0), ("w", 6)]));
    wait_for(&g, "a second update taken", |r| {
        r[client::result::DIRECTORIES] == 3
    });
    // A malformed update, taken after every reply and update above: the client has had its
    // turn to send since the window emptied.
    sw.update(&[1, 2, 3]);
    wait_for(&g, "a fence refused", |r| {
        r[client::result::RING_ERRORS] == 1
    });
    let r = g.results();
    assert_eq!(
        r[client::result::SENT],
        10 + W,
        "nothing sent while w was gone: {r:?}"
    );
    assert_eq!(r[client::result::TARGET_GONE], 1, "{r:?}");
    assert_eq!(sw.answer(usize::MAX), 0, "no request published while gone");
    // "w" back at its id: the client finishes there.
    sw.update(&dir(&[("client", 0), ("w", 5)]));
    sw.answer_until(&g, N);
    let oc = g.join();
    let r = g.results();
    assert_eq!(
        oc,
        RunOutcome::Exited(0),
        "{r:?} {:?}",
        g.vm.console().lines()
    );
    assert_eq!(r[client::result::OK], N, "{r:?}");
    assert_eq!(r[client::result::TARGET_GONE], 1, "{r:?}");
    assert_eq!(r[client::result::DIRECTORIES], 4, "{r:?}");
    assert_eq!(sw.requests.len() as u64, N);
    assert!(sw.requests.iter().all(|&d| d == 5), "{:?}", sw.requests);
}
