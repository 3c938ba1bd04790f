//! The device and daemon against a VMM played in Rust ([`super::frontend::VmmFrontend`]):
//! real vhost-user messages, real memfd memory, real eventfds. The owner is a loopback on its
//! own thread: every tx packet comes back on rx with source and destination swapped.
//!
//! Timeouts here are give-up limits for a broken build, never measurements.

use std::collections::VecDeque;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use vhost::vhost_user::VhostUserFrontend;
use vhost::VhostBackend;
use vhost_user_backend::VringT;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddressSpace, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::frontend::{FrontendConfig, VmmFrontend};
use super::*;

/// Give-up limit for anything that should happen at once.
const LIMIT: Duration = Duration::from_secs(20);

// ---- the loopback owner ----

#[derive(Default)]
struct LoopState {
    queues: Option<DeviceQueues>,
    /// Packets copied out of tx, not yet delivered (they survive a stop).
    pending: VecDeque<Vec<u8>>,
    starts: u64,
    stops: u64,
    event_idx_seen: Option<bool>,
    exit: bool,
    error: Option<String>,
}

struct LoopShared {
    state: Mutex<LoopState>,
    changed: Condvar,
    wake: EventFd,
}

/// Drives the queues on its own thread, holding `state` while it works: `stopped` takes the
/// same lock, so it returns only between two batches, with every popped chain completed.
struct Loopback {
    shared: Arc<LoopShared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Loopback {
    fn new() -> Arc<Self> {
        let shared = Arc::new(LoopShared {
            state: Mutex::new(LoopState::default()),
            changed: Condvar::new(),
            wake: EventFd::new(0).unwrap(),
        });
        let s = shared.clone();
        let thread = thread::spawn(move || loopback_thread(&s));
        Arc::new(Self {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    fn starts(&self) -> u64 {
        self.shared.state.lock().unwrap().starts
    }

    fn stops(&self) -> u64 {
        self.shared.state.lock().unwrap().stops
    }

    fn error(&self) -> Option<String> {
        self.shared.state.lock().unwrap().error.clone()
    }

    fn event_idx_seen(&self) -> Option<bool> {
        self.shared.state.lock().unwrap().event_idx_seen
    }

    /// Waits (give-up limit) until `f` holds for the state.
    fn wait_until(&self, f: impl Fn(&LoopState) -> bool) -> bool {
        let st = self.shared.state.lock().unwrap();
        let (_st, res) = self
            .shared
            .changed
            .wait_timeout_while(st, LIMIT, |s| !f(s))
            .unwrap();
        !res.timed_out()
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap().exit = true;
        self.shared.wake.write(1).unwrap();
        if let Some(t) = self.thread.lock().unwrap().take() {
            t.join().unwrap();
        }
    }
}

impl DeviceOwner for Loopback {
    fn started(&self, queues: DeviceQueues) {
        let mut st = self.shared.state.lock().unwrap();
        st.event_idx_seen = Some(queues.event_idx());
        st.queues = Some(queues);
        st.starts += 1;
        self.shared.changed.notify_all();
        self.shared.wake.write(1).unwrap();
    }

    fn kicked(&self, _index: u16) {
        self.shared.wake.write(1).unwrap();
    }

    fn stopped(&self) {
        let mut st = self.shared.state.lock().unwrap();
        st.queues = None;
        st.stops += 1;
        self.shared.changed.notify_all();
    }
}

fn loopback_thread(shared: &LoopShared) {
    loop {
        // Blocks until a kick, a start or the exit.
        let _ = shared.wake.read();
        let mut st = shared.state.lock().unwrap();
        if st.exit {
            return;
        }
        let Some(q) = st.queues.clone() else {
            continue;
        };
        if let Err(e) = pump(&q, &mut st.pending) {
            st.error.get_or_insert(e);
        }
    }
}

/// Swaps source and destination (CID and port) of a vsock header.
fn swap_ends(pkt: &mut [u8]) {
    let (src, rest) = pkt.split_at_mut(8);
    src.swap_with_slice(&mut rest[..8]);
    let (sp, rest) = pkt[16..24].split_at_mut(4);
    sp.swap_with_slice(rest);
}

/// One batch: every tx packet out (completed at once), then as many pending packets into rx
/// buffers as there are buffers.
fn pump(q: &DeviceQueues, pending: &mut VecDeque<Vec<u8>>) -> Result<(), String> {
    let guard = q.memory().memory();
    let mem: &GuestMemoryMmap = &guard;
    let e = |e: virtio_queue::Error| e.to_string();
    let mut tx_done = false;
    {
        let mut vr = q.tx().get_mut();
        let queue = vr.get_queue_mut();
        // A queue the VMM is stopping is no longer ready: pop returns nothing while its avail
        // ring may still hold chains, so do not loop on `enable_notification`.
        while queue.ready() {
            queue.disable_notification(mem).map_err(e)?;
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let mut pkt = Vec::new();
                for d in chain.readable() {
                    let mut b = vec![0u8; d.len().min(1 << 16) as usize];
                    mem.read_slice(&mut b, d.addr())
                        .map_err(|e| e.to_string())?;
                    pkt.extend_from_slice(&b);
                }
                queue.add_used(mem, head, 0).map_err(e)?;
                tx_done = true;
                if pkt.len() >= VSOCK_HEADER_SIZE {
                    swap_ends(&mut pkt);
                    pending.push_back(pkt);
                }
            }
            if !queue.enable_notification(mem).map_err(e)? {
                break;
            }
        }
    }
    let mut rx_done = false;
    {
        let mut vr = q.rx().get_mut();
        let queue = vr.get_queue_mut();
        while let (true, Some(pkt)) = (queue.ready(), pending.front()) {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                // Out of buffers: ask for a kick when the guest posts more.
                if queue.enable_notification(mem).map_err(e)? {
                    continue;
                }
                break;
            };
            let head = chain.head_index();
            let mut written = 0usize;
            for d in chain.writable() {
                let n = (d.len() as usize).min(pkt.len() - written);
                mem.write_slice(&pkt[written..written + n], d.addr())
                    .map_err(|e| e.to_string())?;
                written += n;
                if written == pkt.len() {
                    break;
                }
            }
            queue.add_used(mem, head, written as u32).map_err(e)?;
            rx_done = true;
            pending.pop_front();
        }
    }
    if tx_done {
        q.notify_guest(TX_QUEUE).map_err(|e| e.to_string())?;
    }
    if rx_done {
        q.notify_guest(RX_QUEUE).map_err(|e| e.to_string())?;
    }
    Ok(())
}

// ---- helpers ----

fn init_log() {
    let _ = env_logger::builder().is_test(true).try_init();
}

struct Fixture {
    _dir: TempDir,
    path: PathBuf,
    owner: Arc<Loopback>,
    device: VsockDevice,
    daemon: Option<VsockDaemon>,
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let base = std::env::temp_dir();
        for n in 0u32.. {
            let p = base.join(format!("vmq-vhu-{}-{n}", std::process::id()));
            if std::fs::create_dir(&p).is_ok() {
                return Self(p);
            }
        }
        unreachable!()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture(cid: u64) -> Fixture {
    init_log();
    let dir = TempDir::new();
    let path = dir.0.join("vsock.sock");
    let owner = Loopback::new();
    let device = VsockDevice::new(DeviceConfig::new(cid), owner.clone()).unwrap();
    let daemon = VsockDaemon::start(&path, device.clone()).unwrap();
    Fixture {
        _dir: dir,
        path,
        owner,
        device,
        daemon: Some(daemon),
    }
}

impl Fixture {
    fn daemon(&self) -> &VsockDaemon {
        self.daemon.as_ref().unwrap()
    }

    /// Waits until the daemon has seen `n` connections end.
    fn wait_ended(&self, n: u64) -> DaemonStats {
        let deadline = std::time::Instant::now() + LIMIT;
        loop {
            let s = self.daemon().stats();
            if s.ended >= n || std::time::Instant::now() >= deadline {
                return s;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A vsock packet from (`src_cid`, `src_port`) to (`dst_cid`, `dst_port`): OP_RW on a stream,
/// carrying `payload`.
fn packet(src_cid: u64, dst_cid: u64, src_port: u32, dst_port: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(VSOCK_HEADER_SIZE + payload.len());
    p.extend_from_slice(&src_cid.to_le_bytes());
    p.extend_from_slice(&dst_cid.to_le_bytes());
    p.extend_from_slice(&src_port.to_le_bytes());
    p.extend_from_slice(&dst_port.to_le_bytes());
    p.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    p.extend_from_slice(&1u16.to_le_bytes()); // type: STREAM
    p.extend_from_slice(&5u16.to_le_bytes()); // op: RW
    p.extend_from_slice(&0u32.to_le_bytes()); // flags
    p.extend_from_slice(&65536u32.to_le_bytes()); // buf_alloc
    p.extend_from_slice(&0u32.to_le_bytes()); // fwd_cnt
    p.extend_from_slice(payload);
    p
}

/// Sends `n` numbered packets from `fe` (as `cid`) and checks that each comes back once, in
/// order, with its ends swapped. Keeps at most a queue's worth in flight.
fn round_trip(fe: &mut VmmFrontend, cid: u64, first: u32, n: u32) {
    for i in first..first + n {
        let sent = packet(cid, 2, 1000 + i, 5000, &i.to_le_bytes());
        fe.send(&sent).unwrap();
        let got = fe.recv_timeout(LIMIT).unwrap().expect("packet came back");
        assert_eq!(got, packet(2, cid, 5000, 1000 + i, &i.to_le_bytes()));
    }
}

// ---- tests ----

#[test]
fn negotiation_and_config_give_the_cid() {
    let f = fixture(42);
    let mut fe = VmmFrontend::connect_raw(&f.path, FrontendConfig::default()).unwrap();
    assert_eq!(fe.negotiate().unwrap(), 42);
    let offered = fe.vhost().get_features().unwrap();
    assert_eq!(offered, config::offered_features());
    assert_ne!(offered & (1 << config::VIRTIO_VSOCK_F_SEQPACKET), 0);
    // A read of the high half alone is inside the config space.
    let (_, hi) = fe
        .vhost()
        .get_config(
            4,
            4,
            vhost::vhost_user::message::VhostUserConfigFlags::WRITABLE,
            &[0; 4],
        )
        .unwrap();
    assert_eq!(hi, vec![0; 4]);
    assert_eq!(f.device.config_space(), 42u64.to_le_bytes());
}

#[test]
fn packets_round_trip_with_event_idx() {
    let f = fixture(3);
    let mut fe = VmmFrontend::connect(&f.path, FrontendConfig::default()).unwrap();
    assert!(f.owner.wait_until(|s| s.starts == 1));
    assert_eq!(f.owner.event_idx_seen(), Some(true));
    round_trip(&mut fe, 3, 0, 600); // more than two laps of a 256-entry ring
    assert_eq!(f.owner.error(), None);
}

#[test]
fn packets_round_trip_without_event_idx() {
    let f = fixture(3);
    let cfg = FrontendConfig {
        event_idx: false,
        queue_size: 16,
        ..Default::default()
    };
    let mut fe = VmmFrontend::connect(&f.path, cfg).unwrap();
    assert!(f.owner.wait_until(|s| s.starts == 1));
    assert_eq!(f.owner.event_idx_seen(), Some(false));
    round_trip(&mut fe, 3, 0, 50);
    assert_eq!(f.owner.error(), None);
}

#[test]
fn stop_and_restart_lose_and_repeat_nothing() {
    let f = fixture(7);
    let cfg = FrontendConfig {
        queue_size: 64,
        ..Default::default()
    };
    let mut fe = VmmFrontend::connect(&f.path, cfg).unwrap();
    assert!(f.owner.wait_until(|s| s.starts == 1));
    let total = 40u32;
    // A burst the device is still working on when the VMM stops it.
    for i in 0..total / 2 {
        fe.send(&packet(7, 2, 1000 + i, 5000, &i.to_le_bytes()))
            .unwrap();
    }
    let bases = fe.stop_queues().unwrap();
    assert!(f.owner.wait_until(|s| s.stops >= 1 && s.queues.is_none()));
    // Every chain the device took before the base is completed; none after it was touched.
    assert_eq!(bases[TX_QUEUE as usize], fe.used_idx(TX_QUEUE).unwrap());
    assert_eq!(bases[RX_QUEUE as usize], fe.used_idx(RX_QUEUE).unwrap());
    assert!(bases[TX_QUEUE as usize] <= fe.avail_idx(TX_QUEUE).unwrap());
    // The guest goes on sending while the device is stopped.
    for i in total / 2..total {
        fe.send(&packet(7, 2, 1000 + i, 5000, &i.to_le_bytes()))
            .unwrap();
    }
    fe.start_queues(bases).unwrap();
    assert!(f.owner.wait_until(|s| s.starts == 2));
    let mut got = Vec::new();
    while got.len() < total as usize {
        let p = fe.recv_timeout(LIMIT).unwrap().expect("packet came back");
        got.push(u32::from_le_bytes(
            p[VSOCK_HEADER_SIZE..].try_into().unwrap(),
        ));
    }
    assert_eq!(got, (0..total).collect::<Vec<_>>());
    assert_eq!(fe.recv().unwrap(), None);
    // And the restarted device keeps working.
    round_trip(&mut fe, 7, total, 10);
    assert_eq!(f.owner.error(), None);
}

#[test]
fn a_new_vmm_reconnects_after_a_disconnect() {
    let f = fixture(9);
    let mut fe = VmmFrontend::connect(&f.path, FrontendConfig::default()).unwrap();
    round_trip(&mut fe, 9, 0, 5);
    drop(fe);
    assert!(f.owner.wait_until(|s| s.stops >= 1 && s.queues.is_none()));
    let s = f.wait_ended(1);
    assert_eq!((s.accepted, s.ended, s.protocol_errors), (1, 1, 0));
    let mut fe = VmmFrontend::connect(&f.path, FrontendConfig::default()).unwrap();
    assert_eq!(fe.cid(), Some(9));
    round_trip(&mut fe, 9, 0, 5);
    assert_eq!(f.owner.starts(), 2);
    assert_eq!(f.owner.error(), None);
}

#[test]
fn reset_device_stops_the_owner() {
    let f = fixture(9);
    let mut fe = VmmFrontend::connect_raw(&f.path, FrontendConfig::default()).unwrap();
    fe.negotiate().unwrap();
    // RESET_DEVICE needs the protocol feature; negotiate asked for CONFIG|MQ|REPLY_ACK only.
    let all = fe.vhost().get_protocol_features().unwrap();
    assert!(all.contains(vhost::vhost_user::VhostUserProtocolFeatures::RESET_DEVICE));
    fe.vhost().set_protocol_features(all).unwrap();
    fe.set_mem_table().unwrap();
    fe.start_queues([0; NUM_QUEUES]).unwrap();
    round_trip(&mut fe, 9, 0, 3);
    fe.vhost().reset_device().unwrap();
    assert!(f.owner.wait_until(|s| s.stops == 1 && s.queues.is_none()));
    assert!(!f.device.is_started());
}

/// Each hostile case: the device closes that connection, logs it as a protocol error, and a
/// well-behaved VMM is served right after.
fn hostile(case: &str, act: impl FnOnce(&mut VmmFrontend) -> bool) {
    let f = fixture(11);
    let mut fe = VmmFrontend::connect_raw(&f.path, FrontendConfig::default()).unwrap();
    let refused = act(&mut fe);
    assert!(refused, "{case}: the device accepted it");
    assert!(
        fe.wait_closed(LIMIT).unwrap(),
        "{case}: connection stayed open"
    );
    let s = f.wait_ended(1);
    assert_eq!((s.ended, s.protocol_errors), (1, 1), "{case}: {s:?}");
    assert_eq!(
        f.owner.starts(),
        f.owner.stops(),
        "{case}: owner left running"
    );
    drop(fe);
    let mut good = VmmFrontend::connect(&f.path, FrontendConfig::default()).unwrap();
    round_trip(&mut good, 11, 0, 3);
    assert_eq!(f.daemon().stats().accepted, 2);
    assert_eq!(f.owner.error(), None, "{case}");
}

#[test]
fn hostile_bad_vring_addr() {
    hostile("bad SET_VRING_ADDR", |fe| {
        fe.negotiate().unwrap();
        fe.set_mem_table().unwrap();
        fe.vhost().set_vring_num(0, 256).unwrap();
        fe.send_bad_vring_addr(0).is_err()
    });
}

#[test]
fn hostile_vring_addr_before_mem_table() {
    hostile("SET_VRING_ADDR before SET_MEM_TABLE", |fe| {
        fe.negotiate().unwrap();
        fe.set_vring_addr(1).is_err()
    });
}

#[test]
fn hostile_kick_before_mem_table() {
    hostile("SET_VRING_KICK before SET_MEM_TABLE", |fe| {
        fe.negotiate().unwrap();
        let kick = fe.kick_fd(0).try_clone().unwrap();
        fe.vhost().set_vring_kick(0, &kick).unwrap();
        fe.set_mem_table().is_err()
    });
}

#[test]
fn hostile_config_offset() {
    hostile("GET_CONFIG past the config space", |fe| {
        fe.negotiate().unwrap();
        fe.vhost()
            .get_config(
                6,
                4,
                vhost::vhost_user::message::VhostUserConfigFlags::WRITABLE,
                &[0; 4],
            )
            .is_err()
    });
}

#[test]
fn hostile_set_config() {
    hostile("SET_CONFIG on a read-only config space", |fe| {
        fe.negotiate().unwrap();
        fe.vhost()
            .set_config(
                0,
                vhost::vhost_user::message::VhostUserConfigFlags::WRITABLE,
                &[1; 8],
            )
            .is_err()
    });
}

#[test]
fn hostile_memory_past_the_end_of_its_file() {
    hostile("SET_MEM_TABLE past the end of the memfd", |fe| {
        fe.negotiate().unwrap();
        let mut info = fe.region_info().unwrap();
        info.memory_size += 1 << 20;
        fe.vhost().set_mem_table(&[info]).is_err()
    });
}

#[test]
fn hostile_rings_outside_memory() {
    hostile("a descriptor table that runs off guest memory", |fe| {
        fe.negotiate().unwrap();
        fe.set_mem_table().unwrap();
        fe.start_queue(RX_QUEUE, 0).unwrap();
        // tx's table starts in the last 16 bytes of memory: 256 descriptors cannot fit.
        let info = fe.region_info().unwrap();
        let last = info.guest_phys_addr + info.memory_size - 16;
        let i = TX_QUEUE as usize;
        fe.vhost().set_vring_num(i, 256).unwrap();
        let (avail, used) = fe.ring_parts(TX_QUEUE);
        fe.set_vring_addr_gpa(TX_QUEUE, last, avail, used).unwrap();
        let (call, kick) = (
            fe.call_fd(TX_QUEUE).try_clone().unwrap(),
            fe.kick_fd(TX_QUEUE).try_clone().unwrap(),
        );
        fe.vhost().set_vring_base(i, 0).unwrap();
        fe.vhost().set_vring_call(i, &call).unwrap();
        fe.vhost().set_vring_kick(i, &kick).unwrap();
        // The device finds out when the queue starts (on its worker), and closes.
        let _ = fe.vhost().set_vring_enable(i, true);
        true
    });
}

#[test]
fn hostile_garbage_bytes() {
    hostile("garbage bytes", |fe| {
        fe.negotiate().unwrap();
        fe.write_raw(&[0xAB; 64]).unwrap();
        true
    });
}

#[test]
fn hostile_set_owner_twice() {
    hostile("SET_OWNER twice", |fe| {
        fe.negotiate().unwrap();
        fe.vhost().set_owner().is_err()
    });
}

#[test]
fn one_vmm_misbehaving_leaves_the_other_device_alone() {
    let a = fixture(20);
    let b = fixture(21);
    let mut fa = VmmFrontend::connect(&a.path, FrontendConfig::default()).unwrap();
    let mut fb = VmmFrontend::connect(&b.path, FrontendConfig::default()).unwrap();
    round_trip(&mut fa, 20, 0, 5);
    round_trip(&mut fb, 21, 0, 5);
    // a's traffic in flight while b's VMM sends garbage.
    for i in 5..10 {
        fa.send(&packet(20, 2, 1000 + i, 5000, &i.to_le_bytes()))
            .unwrap();
    }
    fb.write_raw(b"this is not a vhost-user message").unwrap();
    assert!(fb.wait_closed(LIMIT).unwrap());
    assert_eq!(b.wait_ended(1).protocol_errors, 1);
    for i in 5..10 {
        let p = fa
            .recv_timeout(LIMIT)
            .unwrap()
            .expect("a's packet came back");
        assert_eq!(p, packet(2, 20, 5000, 1000 + i, &i.to_le_bytes()));
    }
    round_trip(&mut fa, 20, 10, 5);
    let sa = a.daemon().stats();
    assert_eq!((sa.accepted, sa.ended, sa.protocol_errors), (1, 0, 0));
    assert!(a.device.is_started());
}

#[test]
fn shutdown_while_serving_closes_the_vmm_and_removes_the_socket() {
    let mut f = fixture(30);
    let mut fe = VmmFrontend::connect(&f.path, FrontendConfig::default()).unwrap();
    round_trip(&mut fe, 30, 0, 3);
    let handle = f.daemon().shutdown_handle();
    let waiter = thread::spawn(move || handle.shutdown());
    f.daemon.take().unwrap().join().unwrap();
    waiter.join().unwrap();
    assert!(!f.path.exists());
    assert!(fe.wait_closed(LIMIT).unwrap());
    assert_eq!(f.owner.stops(), 1);
    assert!(!f.device.is_started());
}

#[test]
fn shutdown_while_waiting_for_a_vmm_removes_the_socket() {
    let mut f = fixture(31);
    assert!(f.path.exists());
    f.daemon.take().unwrap().shutdown().unwrap();
    assert!(!f.path.exists());
}

#[test]
fn a_stale_socket_is_replaced_and_a_regular_file_is_refused() {
    init_log();
    let dir = TempDir::new();
    let stale = dir.0.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let dev = VsockDevice::new(DeviceConfig::new(5), Loopback::new()).unwrap();
    let d = VsockDaemon::start(&stale, dev.clone()).unwrap();
    let mut fe = VmmFrontend::connect_raw(&stale, FrontendConfig::default()).unwrap();
    assert_eq!(fe.negotiate().unwrap(), 5);
    drop(fe);
    d.shutdown().unwrap();

    let file = dir.0.join("precious.txt");
    std::fs::write(&file, b"keep me").unwrap();
    let err = VsockDaemon::start(&file, dev).unwrap_err();
    assert!(matches!(err, DaemonError::NotASocket { .. }), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

#[test]
fn device_config_is_checked() {
    let owner = Loopback::new();
    for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 40] {
        assert_eq!(
            VsockDevice::new(DeviceConfig::new(cid), owner.clone()).unwrap_err(),
            DeviceConfigError::BadCid(cid)
        );
    }
    let bad = DeviceConfig {
        guest_cid: 3,
        max_queue_size: 100,
    };
    assert_eq!(
        VsockDevice::new(bad, owner.clone()).unwrap_err(),
        DeviceConfigError::BadQueueSize(100)
    );
    let dev = VsockDevice::new(DeviceConfig::new(3), owner).unwrap();
    // Out-of-range config reads answer nothing, never panic.
    assert!(vhost_user_backend::VhostUserBackend::get_config(&dev, u32::MAX, u32::MAX).is_empty());
    assert!(vhost_user_backend::VhostUserBackend::get_config(&dev, 8, 1).is_empty());
    assert_eq!(
        vhost_user_backend::VhostUserBackend::get_config(&dev, 0, 8),
        3u64.to_le_bytes().to_vec()
    );
}
