//! `worker`: serves requests. The reply to a request carries its payload with every byte XOR
//! `PAYLOAD_XOR`, `Status::Ok`, and in `load` the permille of the rx queue holding
//! delivered, not yet taken, messages.
//!
//! Parameters (`abi::image::worker::param`): `COUNT` replies, then exit 0 (0 = serve until the host stops
//! the VM); `SLOW` busy-loop iterations per request; `ERROR_EVERY` n: every n-th request gets
//! an empty `Status::BackendError` reply; `STALL_AFTER` K: after the K-th request stop touching
//! the queues forever (parked on the doorbell); `CRASH_AFTER` K: exit with `exit::CRASHED`
//! right after the K-th reply, leaving the rest unanswered; `MUTE_AFTER` K: after the K-th
//! reply keep taking requests off the rx queue (and re-posting the buffers) but never answer
//! another one; `WAIT`, `QUEUE_SIZE`, `SIZE`
//! (largest request payload expected: sizes the rx slots, at least 1 KiB).
//!
//! Results: `result::RECEIVED` requests, `result::SENT` replies, `result::OK` ok replies, `result::ERRORS`
//! `BackendError` replies, `result::KICKS`, `result::WAITS`, `result::WAIT_TIMEOUTS`, `result::PORT_ID`,
//! `result::RING_ERRORS`.
#![no_std]
#![no_main]

use guest_rt::abi::image::worker::{param, result, PAYLOAD_XOR};
use guest_rt::abi::image::{exit, MAX_GUEST_PAYLOAD};
use guest_rt::abi::platform::{BootBlock, WAIT_STOP};
use guest_rt::virtio::{on_error, probe_or_exit, FreeMem};
use guest_rt::{doorbell_wait, results};
use vmq::wire::{MsgHeader, MsgKind, Status};

guest_rt::entry!(main);

const MAX: usize = MAX_GUEST_PAYLOAD as usize + 1024;

fn main(bb: &BootBlock) -> u32 {
    let p = &bb.params;
    let size = p[param::SIZE].min(MAX_GUEST_PAYLOAD);
    let (count, slow) = (p[param::COUNT], p[param::SLOW]);
    let (error_every, stall_after, crash_after, mute_after) = (
        p[param::ERROR_EVERY],
        p[param::STALL_AFTER],
        p[param::CRASH_AFTER],
        p[param::MUTE_AFTER],
    );
    let mut free = FreeMem::new(bb);
    let mut dev = probe_or_exit(bb, &mut free, size);
    let mut buf = [0u8; MAX];
    let mut out = [0u8; MAX];
    let (mut requests, mut replies) = (0u64, 0u64);
    loop {
        let mut any = false;
        loop {
            let m = match dev.recv(&mut buf) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    on_error(e.into());
                    continue;
                }
            };
            any = true;
            match m.header.kind() {
                Some(MsgKind::Hello) => {
                    dev.note_hello(&m.header);
                    continue;
                }
                Some(MsgKind::Request) => {}
                _ => {
                    results::add(result::RING_ERRORS, 1);
                    continue;
                }
            }
            requests += 1;
            results::add(result::RECEIVED, 1);
            if mute_after != 0 && replies >= mute_after {
                // Drained (its rx buffer is re-posted below), never answered.
                continue;
            }
            for _ in 0..slow {
                core::hint::spin_loop();
            }
            let mut hdr = if error_every != 0 && requests % error_every == 0 {
                results::add(result::ERRORS, 1);
                MsgHeader::reply_to(&m.header, Status::BackendError, 0)
            } else {
                for (o, b) in out[..m.len].iter_mut().zip(&buf[..m.len]) {
                    *o = b ^ PAYLOAD_XOR;
                }
                results::add(result::OK, 1);
                MsgHeader::reply_to(&m.header, Status::Ok, m.len as u32)
            };
            hdr.set_load(dev.rx_load());
            let len = hdr.len() as usize;
            if let Err(e) = dev.send(&hdr, &out[..len]) {
                on_error(e);
            }
            replies += 1;
            results::add(result::SENT, 1);
            if crash_after != 0 && replies == crash_after {
                let _ = dev.flush_tx();
                return exit::CRASHED;
            }
            if stall_after != 0 && requests == stall_after {
                let _ = dev.flush_tx();
                stall();
            }
            if count != 0 && replies == count {
                if let Err(e) = dev.drain_tx() {
                    on_error(e);
                }
                return 0;
            }
        }
        if let Err(e) = dev.flush_rx().and_then(|_| dev.flush_tx()) {
            on_error(e.into());
        }
        if !any {
            if let Err(e) = dev.wait(dev.tx.free() == 0) {
                on_error(e);
            }
        }
    }
}

/// Never touches the queues again; parks on the doorbell until the host stops the VM.
fn stall() -> ! {
    loop {
        if doorbell_wait(1_000_000) == WAIT_STOP {
            // The VMM ends the run before the next guest instruction; keep waiting meanwhile.
            core::hint::spin_loop();
        }
    }
}
