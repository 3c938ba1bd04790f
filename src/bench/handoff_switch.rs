//! The switch's half of `vmq bench handoff`: a message's pages handed off through the switch
//! (two [`HandoffPort`]s sharing a [`Hub`]) against the same message copied through it, in
//! the same run.
//!
//! Two host peers in memfd-backed memory play the VMs (no KVM here: what KVM adds, its MMU
//! notifier work and the guest's first-touch faults, is in the mechanism half of the bench).
//! Per message, one at a time: the sender publishes a one-way message whose payload is the
//! list of `pages` pages of its memory; one switch poll delivers it (`handoff`: the hub moves
//! the pages into the receiver's window and the receiver gets their list; `copy`, the
//! baseline, `min_bytes` above every size: the switch copies the bytes into the receiver's
//! buffer); the receiver reads the first word of every page (in its window, or of the copy
//! vmq's driver made in its buffer) and, for a hand-off, releases the pages, which a second
//! poll takes (the sender gets its return notice). Thread placement: the switch and both peers
//! on the bench thread (pinned to CPU 0 where there are two).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{BenchRecord, Report};
use crate::peer::{host_peer_on, peer_bytes, HostPeer, PeerConfig};
use crate::port::handoff::{HandoffConfig, Hub};
use crate::port::{HandoffPort, NativePort, Polling};
use crate::switch::{MonotonicClock, Switch, SwitchConfig};
use crate::vmm::pages::{Member, PageSpace, PAGE_SIZE};
use crate::wire::pages::{self, MAX_PAGES};
use crate::wire::{MsgHeader, MsgKind, HEADER_SIZE};

/// Memory of each peer: rings and 1 MiB slots, then the message, then the window.
const MEM: u64 = 16 << 20;
/// Where the sender's message lies.
const DATA: u64 = 12 << 20;
/// The receiver's window (1 MiB, the top of its memory).
const WINDOW: u64 = MEM - (1 << 20);
const SENDER: u32 = 0;
const RECEIVER: u32 = 1;

struct Rig {
    sw: Switch<GuestMemoryMmap>,
    hub: Arc<Mutex<Hub>>,
    tx: HostPeer,
    rx: HostPeer,
    buf: Vec<u8>,
    id: u64,
}

fn peer_config() -> PeerConfig {
    PeerConfig {
        queue_size: 4,
        slot_size: ((1 << 20) + HEADER_SIZE as u32 + 63) & !63,
        event_idx: false,
    }
}

impl Rig {
    fn new(min_bytes: u64) -> Result<Self, String> {
        let cfg = peer_config();
        if peer_bytes(cfg) > DATA {
            return Err("peer rings do not fit below the message".into());
        }
        let hub = Arc::new(Mutex::new(Hub::new(HandoffConfig { min_bytes })));
        let mut sw = Switch::new(SwitchConfig::default(), Arc::new(MonotonicClock::new()))
            .map_err(|e| e.to_string())?;
        let mut peers = Vec::new();
        for (id, name) in [(SENDER, "tx"), (RECEIVER, "rx")] {
            let (space, mem) = PageSpace::create(name, MEM).map_err(|e| e.to_string())?;
            let (peer, dev) = host_peer_on(mem, cfg).map_err(|e| e.to_string())?;
            let m = Member {
                space,
                window: WINDOW..MEM,
                cap: MAX_PAGES as u64,
                reserved: vec![(0..DATA, "rings and slots")],
            };
            hub.lock()
                .map_err(|e| e.to_string())?
                .join(id, m)
                .map_err(|e| e.to_string())?;
            let port = HandoffPort::new(NativePort::new(dev, Box::new(Polling)), id, hub.clone());
            sw.attach(name, Box::new(port)).map_err(|e| e.to_string())?;
            peers.push(peer);
        }
        let rx = peers.pop().ok_or("no receiver")?;
        let tx = peers.pop().ok_or("no sender")?;
        for i in 0..MAX_PAGES as u64 {
            tx.memory()
                .write_obj(i + 1, GuestAddress(DATA + i * PAGE_SIZE))
                .map_err(|e| e.to_string())?;
        }
        let mut rig = Self {
            sw,
            hub,
            tx,
            rx,
            buf: vec![0; 1 << 20],
            id: 0,
        };
        // The hellos.
        rig.sw.poll();
        rig.drain_sender()?;
        while rig
            .rx
            .rx
            .recv(&mut rig.buf)
            .map_err(|e| e.to_string())?
            .is_some()
        {}
        rig.rx.rx.flush().map_err(|e| e.to_string())?;
        Ok(rig)
    }

    /// Takes what the sender was sent (hello, return notices) and its finished tx slots.
    fn drain_sender(&mut self) -> Result<(), String> {
        let e = |e: crate::virtio::RingError| e.to_string();
        while self.tx.rx.recv(&mut self.buf).map_err(e)?.is_some() {}
        self.tx.rx.flush().map_err(e)?;
        self.tx.tx.reclaim().map_err(e)?;
        Ok(())
    }

    /// One message of `n` pages: (switch ns, receiver ns, return ns).
    fn one(&mut self, n: usize) -> Result<[u64; 3], String> {
        let e = |e: crate::virtio::RingError| e.to_string();
        let refs: Vec<u64> = (0..n as u64).map(|i| DATA + i * PAGE_SIZE).collect();
        let mut list = vec![0u8; pages::list_len(n)];
        pages::encode(&refs, (n as u64 * PAGE_SIZE) as u32, &mut list).ok_or("list")?;
        self.id += 1;
        let mut h = MsgHeader::new(MsgKind::OneWay, RECEIVER, self.id, list.len() as u32);
        h.set_handoff(true);
        self.tx.tx.send(&h, &list).map_err(e)?;
        self.tx.tx.flush().map_err(e)?;
        let t0 = Instant::now();
        self.sw.poll();
        let t1 = Instant::now();
        let m = self
            .rx
            .rx
            .recv(&mut self.buf)
            .map_err(e)?
            .ok_or("nothing delivered")?;
        let mut sum = 0u64;
        let handed = m.header.handoff();
        if handed {
            let (count, _) =
                pages::decode_header(&self.buf[..m.len]).map_err(|e| format!("{e:?}"))?;
            let mut got = Vec::with_capacity(count);
            for i in 0..count {
                let p = pages::page(&self.buf[..m.len], i).map_err(|e| format!("{e:?}"))?;
                let v: u64 = self
                    .rx
                    .memory()
                    .read_obj(GuestAddress(p))
                    .map_err(|e| e.to_string())?;
                sum += v;
                got.push(p);
            }
            let mut rel = vec![0u8; pages::list_len(count)];
            pages::encode(&got, 0, &mut rel).ok_or("list")?;
            let r = MsgHeader::new(MsgKind::PageRelease, 0, 0, rel.len() as u32);
            self.rx.tx.send(&r, &rel).map_err(e)?;
            self.rx.tx.flush().map_err(e)?;
        } else {
            for i in 0..n {
                let at = i * PAGE_SIZE as usize;
                sum += u64::from_le_bytes(self.buf[at..at + 8].try_into().map_err(|_| "short")?);
            }
        }
        self.rx.rx.flush().map_err(e)?;
        let t2 = Instant::now();
        if handed {
            self.sw.poll();
        }
        self.rx.tx.reclaim().map_err(e)?;
        self.drain_sender()?;
        let t3 = Instant::now();
        let want = (n * (n + 1) / 2) as u64;
        if sum != want {
            return Err(format!(
                "the receiver read sum {sum} for {n} pages (handed off: {handed})"
            ));
        }
        let ns = |a: Instant, b: Instant| (b - a).as_nanos() as u64;
        Ok([ns(t0, t1), ns(t1, t2), ns(t2, t3)])
    }

    fn measure(&mut self, n: usize, budget: Duration) -> Result<[f64; 3], String> {
        for _ in 0..4 {
            self.one(n)?;
        }
        let mut parts: [Vec<u64>; 3] = Default::default();
        let start = Instant::now();
        while start.elapsed() < budget || parts[0].len() < 16 {
            for (v, x) in parts.iter_mut().zip(self.one(n)?) {
                v.push(x);
            }
        }
        Ok(parts.map(|mut v| {
            v.sort_unstable();
            v[v.len() / 2] as f64
        }))
    }
}

/// Measures every size of [`super::handoff::SIZES`] both ways and adds `handoff-switch` records
/// (ratio = hand-off msgs/s over copy msgs/s) to `report`.
pub fn run(quick: bool, placement: &str, report: &mut Report) {
    let budget = Duration::from_millis(if quick { 40 } else { 300 });
    let rigs = Rig::new(0).and_then(|h| Ok((h, Rig::new(u64::MAX)?)));
    let (mut hand, mut copy) = match rigs {
        Ok(r) => r,
        Err(e) => {
            report
                .failures
                .push(format!("handoff through the switch: {e}"));
            return;
        }
    };
    for size in super::handoff::SIZES {
        let n = (size / PAGE_SIZE) as usize;
        let (h, c) = match (hand.measure(n, budget), copy.measure(n, budget)) {
            (Ok(h), Ok(c)) => (h, c),
            (Err(e), _) | (_, Err(e)) => {
                report
                    .failures
                    .push(format!("handoff through the switch, {size} B: {e}"));
                return;
            }
        };
        let rate = |p: [f64; 3]| 1e9 / p.iter().sum::<f64>().max(1.0);
        report.records.push(
            BenchRecord::new(
                "handoff-switch",
                size as u32,
                1,
                rate(h),
                "copy-switch",
                rate(c),
                placement,
            )
            .with("switch_ns", h[0].round())
            .with("copy_switch_ns", c[0].round())
            .with("receiver_ns", h[1].round())
            .with("copy_receiver_ns", c[1].round())
            .with("return_ns", h[2].round())
            .with("copy_return_ns", c[2].round())
            .with("pages", n as u64),
        );
    }
    let s = hand.hub.lock().map(|h| h.stats()).unwrap_or_default();
    if s.pages_out != 0 || s.refused_bad != 0 || s.copied_full != 0 {
        report.failures.push(format!(
            "handoff through the switch: pages not all home: {s:?}"
        ));
    }
}
