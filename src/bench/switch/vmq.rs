//! vmq's side of the switch bench: host peers driving real rings through one switch thread.

use super::*;
use crate::switch::Clock;
use vm_memory::GuestMemoryMmap;

/// Sends `limit` messages (or until told to stop) in batches, then says how many it sent.
/// One-way messages go round robin over `dsts`; requests go to service `service`.
struct VmqFrontend {
    peer: HostPeer,
    case: Case,
    dsts: Vec<u32>,
    next_dst: usize,
    service: u32,
    payload: Vec<u8>,
    buf: Vec<u8>,
    id: u64,
    limit: u64,
    batch: u32,
    stopped: bool,
}

impl VmqFrontend {
    /// Takes replies (request/reply): counts them and re-posts their buffers.
    fn take_replies(&mut self, ctl: &Ctl) {
        let (mut moved, mut n, mut ids) = (0u32, 0u64, 0u64);
        while let Some(m) = self.peer.rx.recv(&mut self.buf).expect("recv reply") {
            moved += 1;
            if m.header.kind() == Some(MsgKind::Hello) {
                continue;
            }
            assert_eq!(m.header.kind(), Some(MsgKind::Reply), "a reply");
            assert_eq!(m.header.status(), Some(Status::Ok), "an Ok reply");
            assert_eq!(m.len, self.payload.len(), "the payload echoed");
            black_box(&self.buf);
            ids = ids.wrapping_add(m.header.msg_id());
            n += 1;
        }
        if moved > 0 {
            self.peer.rx.flush().expect("re-post rx");
        }
        ctl.count(n, ids);
    }
}

impl Side for VmqFrontend {
    fn step(&mut self, ctl: &Ctl) {
        if self.case == Case::RequestReply {
            self.take_replies(ctl);
        }
        if self.stopped {
            return;
        }
        if self.id >= self.limit || ctl.stop.load(Ordering::Relaxed) {
            self.peer.tx.flush().expect("flush");
            ctl.sent.store(self.id, Ordering::Release);
            self.stopped = true;
            return;
        }
        if (self.peer.tx.free() as u32) < self.batch {
            self.peer.tx.reclaim().expect("reclaim");
        }
        let n = (self.peer.tx.free() as u64)
            .min(self.batch as u64)
            .min(self.limit - self.id);
        for _ in 0..n {
            let size = self.payload.len() as u32;
            let hdr = match self.case {
                Case::OneWay => {
                    let dst = self.dsts[self.next_dst];
                    self.next_dst = if self.next_dst + 1 == self.dsts.len() {
                        0
                    } else {
                        self.next_dst + 1
                    };
                    MsgHeader::new(MsgKind::OneWay, dst, self.id, size)
                }
                Case::RequestReply => MsgHeader::request_to_service(self.service, self.id, size),
            };
            self.peer.tx.send(&hdr, &self.payload).expect("send");
            self.id += 1;
        }
        if n > 0 {
            self.peer.tx.flush().expect("flush");
        }
    }
}

/// One-way: receives, checks order (ids `first`, `first + stride`, ...), counts.
/// Request/reply: the shared echo [`Worker`] answers every request with its payload.
struct VmqBackend {
    peer: HostPeer,
    /// The echo worker (request/reply).
    echo: Option<Worker>,
    buf: Vec<u8>,
    order: InOrder,
}

impl Side for VmqBackend {
    fn step(&mut self, ctl: &Ctl) {
        if let Some(worker) = self.echo.as_mut() {
            // The shared worker waits for a tx slot when its ring is full; here every side runs
            // on one thread, so it steps only when it can answer every request waiting (else
            // it would spin while the frontend, on the same thread, cannot take replies).
            let pending = rx_pending(&self.peer.rx);
            if pending == 0 {
                return;
            }
            if self.peer.tx.free() < pending {
                self.peer.tx.reclaim().expect("reclaim");
            }
            if self.peer.tx.free() >= pending {
                // Never stops: no count, no fault configured.
                let _ = worker.step(&mut self.peer, &mut (), &mut self.buf);
            }
            return;
        }
        let (mut moved, mut n, mut ids) = (0u32, 0u64, 0u64);
        while let Some(m) = self.peer.rx.recv(&mut self.buf).expect("recv") {
            moved += 1;
            if m.header.kind() == Some(MsgKind::Hello) {
                continue;
            }
            ids = ids.wrapping_add(self.order.take(m.header.msg_id()));
            black_box(&self.buf);
            n += 1;
        }
        if moved > 0 {
            self.peer.rx.flush().expect("re-post rx");
        }
        ctl.count(n, ids);
    }
}

/// The switch and its host peers for one case: a frontend and `backends` echo backends of
/// service "echo", `size`-byte messages, the frontend stopping after `limit`.
struct Wired<B> {
    sw: Switch<GuestMemoryMmap>,
    front: VmqFrontend,
    backs: B,
}

fn wire(
    case: Case,
    size: u32,
    backends: usize,
    limit: u64,
    clock: Arc<dyn Clock>,
) -> Wired<impl Iterator<Item = VmqBackend>> {
    assert!(backends >= 1, "at least one backend");
    let cfg = PeerConfig {
        queue_size: QUEUE_SIZE,
        slot_size: HEADER_SIZE as u32 + size,
        event_idx: true,
    };
    let swcfg = SwitchConfig {
        batch: BATCH as usize,
        ..SwitchConfig::default()
    };
    let mut sw = Switch::new(swcfg, clock).expect("switch config");
    let (fpeer, fport) = host_peer(cfg).expect("frontend peer");
    sw.add_port("frontend", fport, Box::new(Polling))
        .expect("add frontend");
    let mut back_ports = Vec::with_capacity(backends);
    let mut back_peers = Vec::with_capacity(backends);
    for i in 0..backends {
        let (peer, port) = host_peer(cfg).expect("backend peer");
        back_ports.push(
            sw.add_port(&format!("backend{i}"), port, Box::new(Polling))
                .expect("add backend"),
        );
        back_peers.push(peer);
    }
    let members: Vec<_> = back_ports.iter().map(|&p| (p, 1.0)).collect();
    let service = sw
        .add_service("echo", ServiceConfig::default(), &members)
        .expect("add service");
    sw.resume_polling();
    let buf_len = cfg.slot_size as usize;
    let front = VmqFrontend {
        peer: fpeer,
        case,
        dsts: back_ports,
        next_dst: 0,
        service,
        payload: vec![0xa5; size as usize],
        buf: vec![0; buf_len],
        id: 0,
        limit,
        batch: BATCH,
        stopped: false,
    };
    let backs = back_peers
        .into_iter()
        .enumerate()
        .map(move |(i, peer)| VmqBackend {
            peer,
            // A plain echo: key 0, no load report.
            echo: (case == Case::RequestReply).then(|| Worker::new(WorkerConfig::default())),
            buf: vec![0; buf_len],
            order: InOrder::nth_of(i, backends),
        });
    Wired { sw, front, backs }
}

/// vmq: frontend -> switch -> `backends` backends, one switch thread.
pub fn run_vmq(
    case: Case,
    size: u32,
    backends: usize,
    budget: Budget,
    placement: SwitchPlacement,
) -> SwitchRun {
    let Wired {
        mut sw,
        front,
        backs,
    } = wire(
        case,
        size,
        backends,
        limit(budget),
        Arc::new(MonotonicClock::new()),
    );
    let sides = Sides::new(front, backs, case == Case::RequestReply);
    drive(budget, placement, sides, move |ctl: &Ctl| {
        let mut s = HubStats::start();
        while !ctl.done.load(Ordering::Acquire) {
            s.pass(sw.poll());
        }
        s.totals = sw.snapshot().totals;
        s
    })
}

#[cfg(test)]
mod lockstep {
    //! A fixed-count, single-threaded run of the switch bench's vmq side: the peers take one
    //! turn, then the switch polls once, until every message is counted. Deterministic (a
    //! manual clock), so that a profiler counting instructions or cache misses (callgrind's
    //! inclusive costs of `peer_pass` and `switch_pass`) gives per-message figures for each
    //! side. `LS_CASE=oneway` (else request/reply), `LS_N` messages (default 100 000).

    use super::*;
    use crate::switch::ManualClock;
    use vm_memory::GuestMemoryMmap;

    #[inline(never)]
    fn peer_pass(sides: &mut [Box<dyn Side>], ctl: &Ctl) {
        for s in sides.iter_mut() {
            s.step(ctl);
        }
    }

    #[inline(never)]
    fn switch_pass(sw: &mut Switch<GuestMemoryMmap>) -> usize {
        sw.poll()
    }

    #[test]
    #[ignore = "a profiling driver, not a check"]
    fn lockstep_profile() {
        let case = match std::env::var("LS_CASE").as_deref() {
            Ok("oneway") => Case::OneWay,
            _ => Case::RequestReply,
        };
        let n: u64 = std::env::var("LS_N").map_or(100_000, |s| s.parse().expect("LS_N"));
        let size = 64u32;
        let backends = case.default_backends();
        let clock = Arc::new(ManualClock::new(1_000_000));
        let Wired {
            mut sw,
            front,
            backs,
        } = wire(case, size, backends, n, clock.clone());
        let mut sides: Vec<Box<dyn Side>> = vec![Box::new(front)];
        sides.extend(backs.map(|b| Box::new(b) as Box<dyn Side>));
        let ctl = Ctl::new(1);
        let mut polls = 0u64;
        while ctl.got.load(Ordering::Acquire) != ctl.sent.load(Ordering::Acquire) {
            peer_pass(&mut sides, &ctl);
            switch_pass(&mut sw);
            // About one busy poll's worth of time: sweeps run as in a timed run.
            clock.advance(20_000);
            polls += 1;
        }
        assert_eq!(ctl.id_sum.load(Ordering::Acquire), n * (n - 1) / 2);
        eprintln!("lockstep: {} x {n}, {polls} polls", case.name());
    }
}
