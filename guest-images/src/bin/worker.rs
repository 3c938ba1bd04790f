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
//! reporting load 0 (idle) in every reply; `KEEP_PAGES` 1: never release handed-off pages (the
//! reply returns them); `WAIT`, `QUEUE_SIZE`, `SIZE`
//! (largest request payload expected: sizes the rx slots, at least 1 KiB).
//!
//! Page hand-off: a request whose payload is a page list (header flag `HANDOFF`) is read from
//! the pages it names, which must lie in this VM's receive window (above its free memory); the
//! worker releases them (`MsgKind::PageRelease`) and answers the bytes as any request's. A
//! one-way message is not served; one that carries pages has them released unread.
//!
//! Results: `RES_RECEIVED` requests, `RES_SENT` replies, `RES_OK` ok replies, `RES_ERRORS`
//! `BackendError` replies, `RES_KICKS`, `RES_WAITS`, `RES_WAIT_TIMEOUTS`, `RES_PORT_ID`,
//! `RES_RING_ERRORS`.
#![no_std]
#![no_main]

use guest_rt::abi::{self, platform::BootBlock};
use guest_rt::virtio::{on_error, probe_or_exit, FreeMem, Vmq};
use guest_rt::{doorbell_wait, results};
use vmq::traffic::{Worker, WorkerConfig, WorkerHooks, WorkerStop};
use vmq::virtio::RxMsg;
use vmq::wire::pages::{self, MAX_PAGES, PAGE_SIZE};
use vmq::wire::{MsgHeader, MsgKind};

guest_rt::entry!(main);

const MAX: usize = abi::image::MAX_GUEST_PAYLOAD as usize + 1024;

/// Counts what the worker loop does into the results; reads handed-off pages in its receive
/// window (`window..mem_size`, above its free memory).
struct Report {
    window: u64,
    mem_size: u64,
    /// Never release a request's pages: the reply returns them (`KEEP_PAGES`).
    keep_pages: bool,
}

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

    /// A hello or a directory update is noted; a one-way message is not served, but one that
    /// was handed pages gives them back at once (else they would stay borrowed until its port
    /// goes down); anything else is a ring error.
    fn other(&mut self, dev: &mut Vmq, m: &RxMsg, payload: &mut [u8]) {
        if m.header.kind() == Some(MsgKind::OneWay) {
            if m.header.handoff() && self.release(dev, payload).is_none() {
                results::add(abi::image::worker::result::RING_ERRORS, 1);
            }
            return;
        }
        if !dev.note_switch(&m.header, payload) {
            results::add(abi::image::worker::result::RING_ERRORS, 1);
        }
    }

    /// Reads the bytes of the pages the request was handed, in order, into `payload`, then
    /// gives the pages back (a release naming all of them).
    fn pages(&mut self, dev: &mut Vmq, m: &RxMsg, payload: &mut [u8]) -> Option<usize> {
        let list = payload.get(..m.len)?;
        let (_, total) = pages::decode_header(list).ok()?;
        let mut refs = [0u64; MAX_PAGES];
        let count = self.window_refs(list, &mut refs)?;
        let total = total as usize;
        if total > payload.len() {
            return None;
        }
        for (i, &r) in refs[..count].iter().enumerate() {
            let at = i * PAGE_SIZE as usize;
            let n = (total.saturating_sub(at)).min(PAGE_SIZE as usize);
            // SAFETY: `r..r + n` is a page of this guest's receive window (checked above:
            // RAM above its free memory, identity mapped), where the switch put a page it
            // was handed; only reads.
            let src = unsafe {
                core::slice::from_raw_parts(core::ptr::with_exposed_provenance::<u8>(r as usize), n)
            };
            payload[at..at + n].copy_from_slice(src);
        }
        if !self.keep_pages {
            self.release_refs(dev, &refs[..count])?;
        }
        Some(total)
    }
}

impl Report {
    /// The pages of list `list`, each checked to lie in its receive window.
    fn window_refs(&self, list: &[u8], refs: &mut [u64; MAX_PAGES]) -> Option<usize> {
        let (count, _) = pages::decode_header(list).ok()?;
        for (i, r) in refs[..count].iter_mut().enumerate() {
            *r = pages::page(list, i).ok()?;
            if *r < self.window || r.checked_add(PAGE_SIZE)? > self.mem_size {
                return None;
            }
        }
        Some(count)
    }

    /// Gives back the pages a message's list names, unread.
    fn release(&mut self, dev: &mut Vmq, list: &[u8]) -> Option<()> {
        let mut refs = [0u64; MAX_PAGES];
        let count = self.window_refs(list, &mut refs)?;
        self.release_refs(dev, &refs[..count])
    }

    /// Sends a release naming `refs`.
    fn release_refs(&mut self, dev: &mut Vmq, refs: &[u64]) -> Option<()> {
        let mut rel = [0u8; pages::list_len(MAX_PAGES)];
        let n = pages::encode(refs, 0, &mut rel)?;
        let hdr = MsgHeader::new(MsgKind::PageRelease, 0, 0, n as u32);
        if let Err(e) = dev.send(&hdr, &rel[..n]) {
            on_error(e);
        }
        Some(())
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
    let mut report = Report {
        window: bb.free_end,
        mem_size: bb.mem_size,
        keep_pages: p[abi::image::worker::param::KEEP_PAGES] != 0,
    };
    match worker.run(&mut dev, &mut report, &mut buf) {
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
