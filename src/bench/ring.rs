//! `vmq bench ring`: a driver thread hands messages to a device thread through a split ring in
//! a `GuestMemoryMmap`, against an `rtrb` SPSC ring carrying the same messages (and, for 4 KiB,
//! a plain memcpy loop) measured in the same run.
//!
//! The driver side copies header + payload into its slot buffer and publishes every `batch`
//! messages; the device side pops each chain (virtio-queue + vmq's chain walker), copies the
//! payload out, and returns the chain on the used ring, checking notifications once per batch.
//! Both threads poll (no kicks, no interrupts): this measures the queue, not the doorbell.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use super::{pin_current_thread, BenchRecord, Budget, Placement, Report, Run};
use crate::peer::{host_peer, PeerConfig};
use crate::virtio::TX_QUEUE;
use crate::wire::{MsgHeader, MsgKind, HEADER_SIZE};

/// Payload sizes measured.
pub const SIZES: [u32; 3] = [64, 256, 4096];
/// Batch sizes measured.
pub const BATCHES: [u32; 4] = [1, 8, 32, 256];
/// Queue size used by both vmq and the rtrb baseline.
pub const QUEUE_SIZE: u16 = 512;

/// Signals shared by the two sides of a run.
struct Ctl {
    start: Barrier,
    stop: AtomicBool,
    sent: AtomicU64,
}

impl Ctl {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Barrier::new(3),
            stop: AtomicBool::new(false),
            sent: AtomicU64::new(u64::MAX),
        })
    }
}

/// Runs `producer` and `consumer` on their pinned threads under `budget`; the consumer
/// returns (messages, elapsed).
fn drive<P, C>(budget: Budget, placement: Placement, producer: P, consumer: C) -> Run
where
    P: FnOnce(&Ctl, u64) -> u64 + Send + 'static,
    C: FnOnce(&Ctl) -> (u64, Duration) + Send + 'static,
{
    let ctl = Ctl::new();
    let limit = match budget {
        Budget::Count(n) => n,
        Budget::Time(_) => u64::MAX,
    };
    let pctl = ctl.clone();
    let p = std::thread::spawn(move || {
        pin_current_thread(placement.producer);
        pctl.start.wait();
        let sent = producer(&pctl, limit);
        pctl.sent.store(sent, Ordering::Release);
    });
    let cctl = ctl.clone();
    let c = std::thread::spawn(move || {
        pin_current_thread(placement.consumer);
        cctl.start.wait();
        consumer(&cctl)
    });
    ctl.start.wait();
    if let Budget::Time(d) = budget {
        std::thread::sleep(d);
        ctl.stop.store(true, Ordering::Release);
    }
    p.join().expect("producer thread panicked");
    let (msgs, elapsed) = c.join().expect("consumer thread panicked");
    Run { msgs, elapsed }
}

/// The consumer is done once the producer has said how many it sent and all have arrived.
fn consumer_done(ctl: &Ctl, got: u64) -> bool {
    got == ctl.sent.load(Ordering::Acquire)
}

/// vmq: driver `ring` -> device `DevicePort` through a split ring in guest memory.
pub fn run_vmq(size: u32, batch: u32, budget: Budget, placement: Placement) -> Run {
    let cfg = PeerConfig {
        queue_size: QUEUE_SIZE,
        slot_size: HEADER_SIZE as u32 + size,
        event_idx: true,
    };
    let (mut peer, mut port) = host_peer(cfg).expect("bench peer set-up");
    port.disable_kicks(TX_QUEUE).expect("disable kicks");
    let producer = move |ctl: &Ctl, limit: u64| {
        let payload = vec![0xa5u8; size as usize];
        let mut hdr = MsgHeader::new(MsgKind::OneWay, 1, 0, size);
        let mut id = 0u64;
        'outer: while id < limit && !ctl.stop.load(Ordering::Relaxed) {
            for _ in 0..batch {
                if id == limit {
                    break;
                }
                while peer.tx.free() == 0 {
                    peer.tx.reclaim().expect("reclaim");
                    if ctl.stop.load(Ordering::Relaxed) {
                        peer.tx.flush().expect("flush");
                        break 'outer;
                    }
                    std::hint::spin_loop();
                }
                hdr.set_msg_id(id);
                peer.tx.send(&hdr, &payload).expect("send");
                id += 1;
            }
            peer.tx.flush().expect("flush");
        }
        peer.tx.flush().expect("flush");
        id
    };
    let consumer = move |ctl: &Ctl| {
        let mut buf = vec![0u8; size as usize];
        let t0 = Instant::now();
        let mut got = 0u64;
        let mut chains = Vec::with_capacity(QUEUE_SIZE as usize);
        loop {
            chains.clear();
            let n = port
                .pop_tx_batch(QUEUE_SIZE as usize, |c| chains.push(c))
                .expect("pop");
            if n == 0 {
                if consumer_done(ctl, got) {
                    break;
                }
                std::hint::spin_loop();
                continue;
            }
            for (i, c) in chains.iter().enumerate() {
                assert_eq!(c.header.msg_id(), got, "messages arrive in order");
                port.read_payload(c, &mut buf).expect("payload");
                black_box(&buf);
                port.complete_tx(c.head).expect("complete");
                got += 1;
                if (i + 1) % batch as usize == 0 || i + 1 == n {
                    port.publish_tx();
                }
            }
        }
        (got, t0.elapsed())
    };
    drive(budget, placement, producer, consumer)
}

/// The rtrb baseline's message: the same header and payload bytes, by value.
#[derive(Clone, Copy)]
#[repr(C)]
struct Msg<const N: usize> {
    hdr: [u8; HEADER_SIZE],
    payload: [u8; N],
}

fn run_rtrb_n<const N: usize>(batch: u32, budget: Budget, placement: Placement) -> Run {
    let (mut tx, mut rx) = rtrb::RingBuffer::<Msg<N>>::new(QUEUE_SIZE as usize);
    let producer = move |ctl: &Ctl, limit: u64| {
        let payload = vec![0xa5u8; N];
        let mut hdr = MsgHeader::new(MsgKind::OneWay, 1, 0, N as u32);
        let mut id = 0u64;
        while id < limit && !ctl.stop.load(Ordering::Relaxed) {
            let n = (batch as u64).min(limit - id) as usize;
            let Ok(chunk) = tx.write_chunk_uninit(n) else {
                std::hint::spin_loop();
                continue;
            };
            let written = chunk.fill_from_iter((0..n).map(|_| {
                hdr.set_msg_id(id);
                id += 1;
                let mut m = Msg {
                    hdr: hdr.to_bytes(),
                    payload: [0u8; N],
                };
                m.payload.copy_from_slice(&payload);
                m
            }));
            debug_assert_eq!(written, n);
        }
        id
    };
    let consumer = move |ctl: &Ctl| {
        let mut buf = vec![0u8; N];
        let t0 = Instant::now();
        let mut got = 0u64;
        loop {
            let n = rx.slots();
            if n == 0 {
                if consumer_done(ctl, got) {
                    break;
                }
                std::hint::spin_loop();
                continue;
            }
            let chunk = rx.read_chunk(n).expect("slots are readable");
            let (a, b) = chunk.as_slices();
            for m in a.iter().chain(b) {
                let h = MsgHeader::from_bytes(&m.hdr);
                assert_eq!(h.msg_id(), got, "messages arrive in order");
                buf.copy_from_slice(&m.payload);
                black_box(&buf);
                got += 1;
            }
            chunk.commit_all();
        }
        (got, t0.elapsed())
    };
    drive(budget, placement, producer, consumer)
}

/// Baseline: the same messages through an `rtrb` SPSC ring, written and read in `batch` chunks.
pub fn run_rtrb(size: u32, batch: u32, budget: Budget, placement: Placement) -> Run {
    match size {
        64 => run_rtrb_n::<64>(batch, budget, placement),
        256 => run_rtrb_n::<256>(batch, budget, placement),
        4096 => run_rtrb_n::<4096>(batch, budget, placement),
        other => panic!("rtrb baseline is built for sizes {SIZES:?}, not {other}"),
    }
}

/// Baseline: one thread copying `size` bytes per message, nothing else.
pub fn run_memcpy(size: u32, budget: Budget) -> Run {
    let src = vec![0xa5u8; size as usize];
    let mut dst = vec![0u8; size as usize];
    let t0 = Instant::now();
    let mut n = 0u64;
    loop {
        for _ in 0..1024 {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        }
        n += 1024;
        let done = match budget {
            Budget::Count(c) => n >= c,
            Budget::Time(d) => t0.elapsed() >= d,
        };
        if done {
            break;
        }
    }
    Run {
        msgs: n,
        elapsed: t0.elapsed(),
    }
}

fn best(runs: usize, mut f: impl FnMut() -> Run) -> f64 {
    (0..runs).map(|_| f().msgs_per_s()).fold(0.0, f64::max)
}

/// Runs every size x batch case, vmq against rtrb (and memcpy for 4 KiB).
///
/// `quick` uses 120 ms per run and one run per side (well under 30 s in all); otherwise
/// 500 ms per run and the best of three.
pub fn run(quick: bool, placement: Placement) -> Report {
    let (budget, runs) = super::run_budget(quick);
    let place = placement.describe();
    let mut report = Report::default();
    for size in SIZES {
        for batch in BATCHES {
            // Interleave the two so drift on a shared machine hits both alike.
            let vmq = best(runs, || run_vmq(size, batch, budget, placement));
            let base = best(runs, || run_rtrb(size, batch, budget, placement));
            report.records.push(BenchRecord::new(
                "ring", size, batch, vmq, "rtrb", base, &place,
            ));
            if size == 4096 {
                let mc = best(runs, || run_memcpy(size, budget));
                report.records.push(BenchRecord::new(
                    "ring",
                    size,
                    batch,
                    vmq,
                    "memcpy",
                    mc,
                    "memcpy: one thread, unpinned",
                ));
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harness_moves_every_message_in_order() {
        // A functional check of the harness (counts and order, asserted inside), not a timing.
        let p = Placement {
            producer: None,
            consumer: None,
        };
        for batch in [1, 7, 256] {
            assert_eq!(run_vmq(64, batch, Budget::Count(3000), p).msgs, 3000);
            assert_eq!(run_rtrb(64, batch, Budget::Count(3000), p).msgs, 3000);
        }
        assert_eq!(run_vmq(4096, 32, Budget::Count(1000), p).msgs, 1000);
    }
}
