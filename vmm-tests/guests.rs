//! Real-KVM tests of the vmq device end to end: guest images (`peer`, `client`, `worker`) bring
//! up the virtio-mmio device, and a real `Switch` on a host thread moves their messages.
//!
//! They assert on counts only, never on time. Without a usable `/dev/kvm` each test prints
//! "skipping" and passes, unless `CI=true` or `VMQ_REQUIRE_KVM=1`.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;
use vmq::abi::image::{client, driver, peer, worker};
use vmq::switch::{
    HealthWeights, MonotonicClock, PolicyKind, ServiceConfig, Snapshot, Switch, SwitchConfig,
};
use vmq::vmm::{images, IoeventMode, RunOutcome};

mod common;
use common::guest::{clone_kick, Guest};
use common::require_kvm;

/// The switch on its own thread: polls while there is work; when idle, asks the guests to kick
/// and sleeps on their kick eventfds (bounded by the next sweep).
struct SwitchLoop {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(Switch<GuestMemoryMmap>, u64)>,
}

impl SwitchLoop {
    fn spawn(mut sw: Switch<GuestMemoryMmap>, kicks: Vec<EventFd>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut idle = 0u32;
            let mut sleeps = 0u64;
            while !s.load(Ordering::Relaxed) {
                if sw.poll() > 0 {
                    idle = 0;
                    continue;
                }
                idle += 1;
                if idle < 256 {
                    std::hint::spin_loop();
                    continue;
                }
                idle = 0;
                if !sw.prepare_idle() {
                    sleeps += 1;
                    let mut fds: Vec<libc::pollfd> = kicks
                        .iter()
                        .map(|k| libc::pollfd {
                            fd: k.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        })
                        .collect();
                    let ms = (sw.until_next_sweep() / 1_000_000).clamp(1, 10) as i32;
                    // SAFETY: `fds` is a valid array of pollfds that outlives the call.
                    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
                    for k in &kicks {
                        let _ = k.read();
                    }
                }
                sw.resume_polling();
            }
            (sw, sleeps)
        });
        Self { stop, thread }
    }

    fn finish(self) -> (Snapshot, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let (sw, sleeps) = self.thread.join().expect("switch thread");
        (sw.snapshot(), sleeps)
    }
}

fn switch() -> Switch<GuestMemoryMmap> {
    Switch::new(SwitchConfig::default(), Arc::new(MonotonicClock::new())).expect("switch")
}

/// A service config for tests of the data path: no stall ejection or deadline within a run,
/// however the shared test machine schedules the vCPUs.
fn patient_service() -> ServiceConfig {
    let mut cfg = ServiceConfig::default();
    cfg.failover.stall_window_ns = 10_000_000_000;
    cfg.request_timeout_ns = 60_000_000_000;
    cfg
}

#[test]
fn vmq_device_comes_up_and_kicks_through_the_ioeventfd() {
    if !require_kvm() {
        return;
    }
    // A peer with nothing to send or receive: brings the device up, posts its rx buffers (which
    // wants one kick, the device asked for it initially), exits.
    let mut g = Guest::start(
        "bringup",
        images::PEER,
        &[(peer::param::WAIT, driver::WAIT_DOORBELL)],
    );
    let port = g.activated();
    assert_eq!(
        g.join(),
        RunOutcome::Exited(0),
        "{:?}",
        g.vm.console().lines()
    );
    let kicks = g
        .link
        .kick
        .read()
        .expect("the QueueNotify write reached the kick eventfd");
    assert!(kicks >= 1);
    assert_eq!(
        g.results()[peer::result::KICKS],
        kicks,
        "every guest kick arrived"
    );
    let dev = g.link.device().counters();
    match g.link.ioevent_mode() {
        // KVM absorbed the notify: the device never saw it.
        IoeventMode::InKernel => assert_eq!(dev.notifies, 0),
        IoeventMode::MmioExit => assert_eq!(dev.notifies, kicks),
    }
    assert_eq!(dev.activations, 1);
    assert_eq!(dev.rejected, 0, "the guest driver follows the spec");
    assert_eq!(port.rx_queue_size(), vmq::virtio::vmq_device::QUEUE_NUM_MAX);
    assert_eq!(
        port.rx_buffers_available(),
        vmq::virtio::vmq_device::QUEUE_NUM_MAX
    );
    assert!(g.vm.virtio_mmio().1 >= 1);
    eprintln!(
        "bring-up: {} MMIO exits, {} kick(s), ioeventfd {:?}",
        g.vm.counters().snapshot().mmio,
        kicks,
        g.link.ioevent_mode()
    );
}

#[test]
fn two_peers_exchange_messages_in_order_and_intact() {
    if !require_kvm() {
        return;
    }
    const N: u64 = 3000;
    let params = [
        (peer::param::COUNT, N),
        (peer::param::EXPECT, N),
        (peer::param::SIZE, 200),
        (peer::param::WAIT, driver::WAIT_DOORBELL),
        (peer::param::QUEUE_SIZE, 64),
    ];
    // Ports are added in this order, so "a" is port 0 and "b" port 1; each finds the other by
    // name in the directory.
    let mut a = Guest::start_named(
        "peer-a",
        images::PEER,
        &params,
        &[(peer::param::TARGET, "b")],
    );
    let mut b = Guest::start_named(
        "peer-b",
        images::PEER,
        &params,
        &[(peer::param::TARGET, "a")],
    );
    let mut sw = switch();
    let started = Instant::now();
    assert_eq!(
        sw.add_port("a", a.activated(), a.link.notifier()).unwrap(),
        0
    );
    assert_eq!(
        sw.add_port("b", b.activated(), b.link.notifier()).unwrap(),
        1
    );
    let lp = SwitchLoop::spawn(sw, vec![clone_kick(&a), clone_kick(&b)]);
    let (oa, ob) = (a.join(), b.join());
    let elapsed = started.elapsed();
    let (snap, sleeps) = lp.finish();
    for (g, o, id) in [(&a, oa, 0), (&b, ob, 1)] {
        let r = g.results();
        assert_eq!(
            o,
            RunOutcome::Exited(0),
            "{}: results {r:?}, console {:?}",
            g.vm.name(),
            g.vm.console().lines()
        );
        assert_eq!(r[peer::result::PORT_ID], id);
        assert_eq!(r[peer::result::SENT], N);
        assert_eq!(r[peer::result::RECEIVED], N);
        assert_eq!(r[peer::result::OK], N, "every message in order and intact");
        assert_eq!(
            r[peer::result::MISMATCHES] + r[peer::result::DUPLICATES] + r[peer::result::ERRORS],
            0
        );
        assert_eq!(r[peer::result::RING_ERRORS], 0);
    }
    assert_eq!(snap.ports.len(), 2);
    let (ra, rb) = (a.results(), b.results());
    let exits = a.vm.counters().snapshot().pio + b.vm.counters().snapshot().pio;
    eprintln!(
        "peers: {} messages in {elapsed:?} ({:.0} msg/s), kicks {}+{}, doorbell waits {}+{}, \
         port-I/O exits {exits} ({:.3}/message), switch sleeps {sleeps}",
        2 * N,
        (2 * N) as f64 / elapsed.as_secs_f64(),
        ra[peer::result::KICKS],
        rb[peer::result::KICKS],
        ra[peer::result::WAITS],
        rb[peer::result::WAITS],
        exits as f64 / (2 * N) as f64,
    );
}

#[test]
fn client_gets_exactly_one_transformed_reply_per_request_through_a_service() {
    if !require_kvm() {
        return;
    }
    const N: u64 = 3000;
    let mut client = Guest::start_named(
        "client",
        images::CLIENT,
        &[
            (client::param::COUNT, N),
            (client::param::SIZE, 128),
            (client::param::WINDOW, 32),
            (client::param::WAIT, driver::WAIT_DOORBELL),
        ],
        &[(client::param::SERVICE, "echo")],
    );
    let mut worker = Guest::start(
        "worker",
        images::WORKER,
        &[
            (worker::param::SIZE, 128),
            (worker::param::WAIT, driver::WAIT_DOORBELL),
        ],
    );
    let mut sw = switch();
    let started = Instant::now();
    let c = sw
        .add_port("client", client.activated(), client.link.notifier())
        .unwrap();
    let w = sw
        .add_port("worker", worker.activated(), worker.link.notifier())
        .unwrap();
    let svc = sw
        .add_service("echo", patient_service(), &[(w, 1.0)])
        .unwrap();
    assert_eq!((c, w, svc), (0, 1, 0));
    let lp = SwitchLoop::spawn(sw, vec![clone_kick(&client), clone_kick(&worker)]);
    let oc = client.join();
    let elapsed = started.elapsed();
    let ow = worker.stop();
    let (snap, sleeps) = lp.finish();
    let (rc, rw) = (client.results(), worker.results());
    assert_eq!(
        oc,
        RunOutcome::Exited(0),
        "client results {rc:?}, console {:?}",
        client.vm.console().lines()
    );
    assert_eq!(
        ow,
        RunOutcome::Stopped,
        "worker results {rw:?}, console {:?}",
        worker.vm.console().lines()
    );
    assert_eq!(rc[client::result::SENT], N);
    assert_eq!(
        rc[client::result::RECEIVED],
        N,
        "exactly one reply per request"
    );
    assert_eq!(
        rc[client::result::OK],
        N,
        "every payload transformed correctly: {rc:?}"
    );
    assert_eq!(
        rc[client::result::DUPLICATES]
            + rc[client::result::MISMATCHES]
            + rc[client::result::ERRORS],
        0
    );
    assert_eq!(rw[worker::result::RECEIVED], N);
    assert_eq!(rw[worker::result::SENT], N);
    assert_eq!(rw[worker::result::PORT_ID], 1);
    let s = &snap.services[0];
    assert_eq!(s.stats.requests, N);
    assert_eq!(s.stats.replies, N);
    assert_eq!(
        s.stats.redispatches + s.stats.failed_back + s.stats.late_replies_dropped,
        0
    );
    let exits = client.vm.counters().snapshot().pio + worker.vm.counters().snapshot().pio;
    eprintln!(
        "client/worker: {N} requests in {elapsed:?} ({:.0} req/s), client kicks {} waits {}, \
         worker kicks {} waits {}, port-I/O exits {exits} ({:.3}/request), switch sleeps {sleeps}",
        N as f64 / elapsed.as_secs_f64(),
        rc[client::result::KICKS],
        rc[client::result::WAITS],
        rw[worker::result::KICKS],
        rw[worker::result::WAITS],
        exits as f64 / N as f64,
    );
}

#[test]
fn worker_error_replies_reach_the_client_once_each() {
    if !require_kvm() {
        return;
    }
    const N: u64 = 500;
    let mut client = Guest::start_named(
        "client-e",
        images::CLIENT,
        &[
            (client::param::COUNT, N),
            (client::param::SIZE, 16),
            (client::param::WAIT, driver::WAIT_DOORBELL),
        ],
        &[(client::param::SERVICE, "echo")],
    );
    let mut worker = Guest::start(
        "worker-e",
        images::WORKER,
        &[
            (worker::param::COUNT, N),
            (worker::param::ERROR_EVERY, 5),
            (worker::param::WAIT, driver::WAIT_DOORBELL),
        ],
    );
    let mut sw = switch();
    sw.add_port("client", client.activated(), client.link.notifier())
        .unwrap();
    let w = sw
        .add_port("worker", worker.activated(), worker.link.notifier())
        .unwrap();
    sw.add_service("echo", patient_service(), &[(w, 1.0)])
        .unwrap();
    let lp = SwitchLoop::spawn(sw, vec![clone_kick(&client), clone_kick(&worker)]);
    let (oc, ow) = (client.join(), worker.join());
    lp.finish();
    let (rc, rw) = (client.results(), worker.results());
    assert_eq!(oc, RunOutcome::Exited(0), "client {rc:?}");
    assert_eq!(ow, RunOutcome::Exited(0), "worker {rw:?}");
    assert_eq!(rc[client::result::RECEIVED], N);
    assert_eq!(rc[client::result::ERRORS], N / 5);
    assert_eq!(rc[client::result::STATUS_BACKEND_ERROR], N / 5);
    assert_eq!(rc[client::result::OK], N - N / 5);
    assert_eq!(rw[worker::result::ERRORS], N / 5);
}

#[test]
fn a_client_finds_a_vm_added_after_it_started_by_name_through_a_directory_update() {
    if !require_kvm() {
        return;
    }
    const N: u64 = 200;
    // The client's target does not exist yet: it holds the hello's directory, which does not
    // name "late", and waits for an update that does.
    let mut client = Guest::start_named(
        "client-late",
        images::CLIENT,
        &[
            (client::param::COUNT, N),
            (client::param::SIZE, 64),
            (client::param::WINDOW, 8),
            (client::param::WAIT, driver::WAIT_DOORBELL),
        ],
        &[(client::param::TARGET, "late")],
    );
    let mut sw = switch();
    assert_eq!(
        sw.add_port("client", client.activated(), client.link.notifier())
            .unwrap(),
        0
    );
    // Drive the switch here until the client took its hello (its first directory).
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.results()[client::result::DIRECTORIES] == 0 {
        assert!(
            Instant::now() < deadline,
            "the client never took its hello: {:?}, console {:?}",
            client.results(),
            client.vm.console().lines()
        );
        sw.poll();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        client.results()[client::result::SENT],
        0,
        "nothing to send to yet"
    );
    // Now the VM it names comes: a new port, announced to the client by a directory update.
    let mut worker = Guest::start(
        "worker-late",
        images::WORKER,
        &[(worker::param::WAIT, driver::WAIT_DOORBELL)],
    );
    let w = sw
        .add_port("late", worker.activated(), worker.link.notifier())
        .unwrap();
    assert_eq!(w, 1);
    let lp = SwitchLoop::spawn(sw, vec![clone_kick(&client), clone_kick(&worker)]);
    let oc = client.join();
    let ow = worker.stop();
    let (snap, _) = lp.finish();
    let (rc, rw) = (client.results(), worker.results());
    assert_eq!(
        oc,
        RunOutcome::Exited(0),
        "client {rc:?}, console {:?}",
        client.vm.console().lines()
    );
    assert_eq!(ow, RunOutcome::Stopped, "worker {rw:?}");
    assert_eq!(
        rc[client::result::OK],
        N,
        "every request reached \"late\": {rc:?}"
    );
    assert!(
        rc[client::result::DIRECTORIES] >= 2,
        "hello + update: {rc:?}"
    );
    assert_eq!(rc[client::result::RING_ERRORS], 0);
    assert_eq!(rw[worker::result::RECEIVED], N);
    assert_eq!(rw[worker::result::PORT_ID], 1);
    assert!(snap.totals.directory_updates >= 1);
}

/// Polls `cond` until it holds, failing after 30 s (a hang guard: nothing is asserted about
/// time).
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn weighted_round_robin_gives_each_worker_exactly_its_weight() {
    if !require_kvm() {
        return;
    }
    const N: u64 = 3000;
    const WEIGHTS: [f64; 3] = [1.0, 2.0, 3.0];
    // WRR passes over a worker with no free rx buffer and takes it back at the next sweep, so
    // in a whole run the shares depend on how soon each worker's vCPU got to post its buffers
    // (on a loaded machine: tens of picks). Here the switch sees no request before every
    // worker has posted its whole rx queue, and with at most 32 requests outstanding in 256
    // buffers none runs out: every pick is WRR's alone, whatever the scheduling. Health is
    // flat (every metric weighted 0), so the effective weights are the configured ones.
    let worker_params = [(worker::param::WAIT, driver::WAIT_DOORBELL)];
    let mut workers: Vec<Guest> = (0..WEIGHTS.len())
        .map(|i| Guest::start(&format!("wrr-w{i}"), images::WORKER, &worker_params))
        .collect();
    let mut sw = switch();
    let mut members = Vec::new();
    for (i, (w, weight)) in workers.iter().zip(WEIGHTS).enumerate() {
        let port = w.activated();
        wait_until("a worker's rx buffers", || {
            port.rx_buffers_available() == port.rx_queue_size()
        });
        let id = sw
            .add_port(&format!("w{i}"), port, w.link.notifier())
            .unwrap();
        members.push((id, weight));
    }
    let mut cfg = patient_service();
    cfg.policy.kind = PolicyKind::Wrr;
    cfg.health.weights = HealthWeights {
        free_rx: 0.0,
        drain: 0.0,
        latency: 0.0,
        errors: 0.0,
        in_flight: 0.0,
        load: 0.0,
    };
    sw.add_service("echo", cfg, &members).unwrap();
    let mut clients: Vec<Guest> = (0..2)
        .map(|i| {
            Guest::start_named(
                &format!("wrr-c{i}"),
                images::CLIENT,
                &[
                    (client::param::COUNT, N),
                    (client::param::SIZE, 64),
                    (client::param::WINDOW, 16),
                    (client::param::WAIT, driver::WAIT_DOORBELL),
                ],
                &[(client::param::SERVICE, "echo")],
            )
        })
        .collect();
    for (i, c) in clients.iter().enumerate() {
        sw.add_port(&format!("c{i}"), c.activated(), c.link.notifier())
            .unwrap();
    }
    let kicks = workers.iter().chain(&clients).map(clone_kick).collect();
    let lp = SwitchLoop::spawn(sw, kicks);
    let outcomes: Vec<RunOutcome> = clients.iter_mut().map(|c| c.join()).collect();
    for w in &mut workers {
        assert_eq!(w.stop(), RunOutcome::Stopped, "{:?}", w.results());
    }
    let (snap, _) = lp.finish();
    for (c, o) in clients.iter().zip(outcomes) {
        let r = c.results();
        assert_eq!(o, RunOutcome::Exited(0), "{}: {r:?}", c.vm.name());
        assert_eq!(
            (r[client::result::RECEIVED], r[client::result::OK]),
            (N, N),
            "{}: {r:?}",
            c.vm.name()
        );
    }
    let s = &snap.services[0];
    assert_eq!(
        (s.stats.dispatches, s.stats.redispatches),
        (2 * N, 0),
        "{s:?}"
    );
    // Smooth EDF: over n picks each worker gets n x weight / sum of weights, within one.
    let sum: f64 = WEIGHTS.iter().sum();
    let got: Vec<(&str, u64)> = s
        .members
        .iter()
        .map(|m| (m.name.as_str(), m.dispatched))
        .collect();
    eprintln!("wrr 1:2:3 over {} requests: {got:?}", 2 * N);
    for (m, weight) in s.members.iter().zip(WEIGHTS) {
        let want = (2 * N) as f64 * weight / sum;
        assert!(
            (m.dispatched as f64 - want).abs() <= 1.0,
            "{}: {} dispatches, {want} for weight {weight}: {s:?}",
            m.name,
            m.dispatched
        );
    }
}
