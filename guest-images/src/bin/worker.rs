//! `worker`: serves requests. The reply to a request carries its payload with every byte XOR
//! `abi::image::worker::PAYLOAD_XOR`, `Status::Ok`, and in `load` the permille of the rx queue holding
//! delivered, not yet taken, messages.
//!
//! Parameters (`abi::image::worker::param`): `COUNT` replies, then exit 0 (0 = serve until the host stops
//! the VM); `SLOW` busy-loop iterations per request; `ERROR_EVERY` n: every n-th request gets
//! an empty `Status::BackendError` reply; `STALL_AFTER` K: after the K-th request stop touching
//! the queues forever (parked on the doorbell); `CRASH_AFTER` K: exit with `abi::image::exit::CRASHED`
//! right after the K-th reply, leaving the rest unanswered; `MUTE_AFTER` K: after the K-th
//! reply keep taking requests off the rx queue (and re-posting the buffers) but never answer
//! another one; `LIE_LOAD` n: a liar, spending n more busy-loop iterations per request while
//! reporting load 0 (idle) in every reply; `WAIT`, `QUEUE_SIZE`, `SIZE`
//! (largest request payload expected: sizes the rx slots, at least 1 KiB).
//!
//! Results: `RES_RECEIVED` requests, `RES_SENT` replies, `RES_OK` ok replies, `RES_ERRORS`
//! `BackendError` replies, `RES_KICKS`, `RES_WAITS`, `RES_WAIT_TIMEOUTS`, `RES_PORT_ID`,
//! `RES_RING_ERRORS`.
#![no_std]
#![no_main]

use guest_rt::abi::{self, platform::BootBlock};
use guest_rt::virtio::{probe_or_exit, FreeMem, Vmq};
use guest_rt::{doorbell_wait, results};
use vmq::traffic::{Worker, WorkerConfig, WorkerHooks, WorkerStop};
use vmq::virtio::RxMsg;

guest_rt::entry!(main);

const MAX: usize = abi::image::MAX_GUEST_PAYLOAD as usize + 1024;

/// Counts what the worker loop does into the results.
struct Report;

impl WorkerHooks<Vmq> for Report {
    fn received(&mut self) {
        results::add(abi::image::worker::result::RECEIVED, 1);
    }

    fn replied(&mut self, ok: bool) {
        results::add(
            if ok {
                abi::image::worker::result::OK
            } else {
                abi::image::worker::result::ERRORS
            },
            1,
        );
        results::add(abi::image::worker::result::SENT, 1);
    }

    fn other(&mut self, dev: &mut Vmq, m: &RxMsg, payload: &mut [u8]) {
        if !dev.note_switch(&m.header, payload) {
            results::add(abi::image::worker::result::RING_ERRORS, 1);
        }
    }
}

fn main(bb: &BootBlock) -> u32 {
    let p = &bb.params;
    let size = p[abi::image::worker::param::SIZE].min(abi::image::MAX_GUEST_PAYLOAD);
    let (count, slow) = (
        p[abi::image::worker::param::COUNT],
        p[abi::image::worker::param::SLOW],
    );
    let (error_every, stall_after, crash_after, mute_after) = (
        p[abi::image::worker::param::ERROR_EVERY],
        p[abi::image::worker::param::STALL_AFTER],
        p[abi::image::worker::param::CRASH_AFTER],
        p[abi::image::worker::param::MUTE_AFTER],
    );
    let mut free = FreeMem::new(bb);
    let mut dev = probe_or_exit(bb, &mut free, size);
    let mut buf = [0u8; MAX];
    let mut worker = Worker::new(WorkerConfig {
        count,
        slow,
        error_every,
        stall_after,
        crash_after,
        mute_after,
        key: abi::image::worker::PAYLOAD_XOR,
        report_load: true,
        lie_load: p[abi::image::worker::param::LIE_LOAD],
    });
    match worker.run(&mut dev, &mut Report, &mut buf) {
        WorkerStop::Done => 0,
        WorkerStop::Crashed => abi::image::exit::CRASHED,
        WorkerStop::Stalled => stall(),
    }
}

/// Never touches the queues again; parks on the doorbell until the host stops the VM.
fn stall() -> ! {
    loop {
        if doorbell_wait(1_000_000) == abi::platform::WAIT_STOP {
            // The VMM ends the run before the next guest instruction; keep waiting meanwhile.
            core::hint::spin_loop();
        }
    }
}
