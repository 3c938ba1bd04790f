//! `client`: sends requests and checks that every one gets exactly one, correct, reply.
//!
//! Parameters (`abi::image::client::param`): `COUNT` requests of `SIZE` payload bytes (byte `i` of request
//! `id` is `abi::image::client::request_byte(id, i)`; ids run 1..=COUNT) to the service named by
//! `SERVICE`, or to the port (VM) named by `TARGET` when set (name parameters,
//! `abi::image::text_param`): the client looks the name up in the switch's directory, waiting
//! for a directory update if it is not there yet; at most `WINDOW` outstanding (0 = the tx
//! ring, which bounds it anyway); every request with class `CLASS` and affinity key `KEY` +
//! `id % KEY_SPREAD` (`vmq::traffic::Exchange::key_of`); `WAIT` = 0 spins, 1 parks on the
//! doorbell when idle; `QUEUE_SIZE`; `IMMEDIATE_EVERY` n: request `id` immediate when `id` is a
//! multiple of n, else deferred (0: no notification flag; replies come back notified as their
//! request asked).
//!
//! A reply must carry an outstanding id; with `Status::Ok` its payload must be the request's
//! bytes XOR `abi::image::worker::PAYLOAD_XOR`. Results: `RES_SENT`, `RES_RECEIVED` (replies to outstanding
//! ids), `RES_OK`, `RES_ERRORS` (+ per-status `RES_STATUS_*`), `RES_DUPLICATES` (replies to ids
//! not outstanding), `RES_MISMATCHES`, `RES_KICKS`, `RES_WAITS`, `RES_WAIT_TIMEOUTS`,
//! `RES_PORT_ID`, `RES_RING_ERRORS`.
//!
//! Once started, a directory update that no longer lists its destination under the id it
//! resolved (the VM went away, the service was removed) is counted in `TARGET_GONE`, and no
//! new request goes out until an update lists it there again (ids are stable: a revived VM
//! keeps its id); replies to outstanding requests still come.
//!
//! Exits once every request has its reply: 0 if none was a duplicate or a mismatch, else
//! `abi::image::exit::DUPLICATE` or `abi::image::exit::MISMATCH`. Other statuses: `EXIT_BAD_PARAM`,
//! `EXIT_NO_DEVICE`, `EXIT_RING_FAULT`.
//!
//! `MODE` = `abi::mode::client::HANDOFF` sends every request as a page list instead of bytes
//! (page hand-off, one request at a time; see that mode).
//!
//! `MODE` = `abi::mode::client::MALFORMED` makes it hostile, for tests: once every request has its
//! reply it publishes one tx chain whose buffer is at `abi::mode::client::BAD_ADDR` (outside its
//! memory), then waits until the device asks for a reset and exits with `EXIT_RING_FAULT`.
#![no_std]
#![no_main]

use guest_rt::abi::{self, platform::BootBlock};
use guest_rt::results;
use guest_rt::virtio::{on_error, probe_or_exit, FreeMem, Vmq};
use vmq::traffic::{Client, ClientHooks, Destination, Exchange, Verdict};
use vmq::virtio::{Buf, RxMsg};
use vmq::wire::directory::EntryKind;
use vmq::wire::pages::{self, list_len, MAX_PAGES, PAGE_SIZE};
use vmq::wire::{MsgHeader, MsgKind, Status, HEADER_SIZE};

guest_rt::entry!(main);

const MAX: usize = abi::image::MAX_GUEST_PAYLOAD as usize + 1024;

/// What the client loop reports: counters into the results, round trips into the histogram.
struct Report {
    /// TSC at send, per request id (empty when memory is short: no latency then).
    sent_at: &'static mut [u64],
    /// The destination's kind, name and the id it had when the client started.
    target: (EntryKind, &'static [u8], u32),
    /// The last directory taken does not list the destination under that id: send nothing.
    gone: bool,
}

/// Reads the time-stamp counter (allowed at CPL 3: the VMM leaves CR4.TSD clear).
fn tsc() -> u64 {
    // SAFETY: `rdtsc` has no memory effects and is available on every x86-64 CPU.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Adds one round trip of `cycles` to the histogram at `abi::platform::LATENCY_HIST_ADDR`.
fn record_latency(cycles: u64) {
    let slot =
        abi::platform::LATENCY_HIST_ADDR as usize + 8 * abi::image::client::latency_bucket(cycles);
    let p = core::ptr::with_exposed_provenance_mut::<u64>(slot);
    // SAFETY: the histogram page is identity-mapped guest RAM reserved for it by the memory
    // map (abi), 8-byte aligned, and only this single-threaded guest writes it.
    unsafe { p.write_volatile(p.read_volatile() + 1) };
}

fn main(bb: &BootBlock) -> u32 {
    let p = &bb.params;
    let size = p[abi::image::client::param::SIZE];
    if size > abi::image::MAX_GUEST_PAYLOAD {
        return abi::image::exit::BAD_PARAM;
    }
    let count = p[abi::image::client::param::COUNT];
    let mut free = FreeMem::new(bb);
    let Some(replied) = free.alloc_bytes((count as usize).div_ceil(8)) else {
        return abi::image::exit::BAD_PARAM;
    };
    let sent_at = free.alloc_u64s(count as usize).unwrap_or(&mut []);
    let mut dev = probe_or_exit(bb, &mut free, size);
    let tx_size = u64::from(dev.tx.ring().size());
    let window = match p[abi::image::client::param::WINDOW] {
        0 => tx_size,
        w => w.min(tx_size),
    };
    let target = guest_rt::param_name(bb, abi::image::client::param::TARGET);
    let service = guest_rt::param_name(bb, abi::image::client::param::SERVICE);
    let class = p[abi::image::client::param::CLASS];
    if class > u64::from(u8::MAX) || (target.is_none() && service.is_none()) {
        return abi::image::exit::BAD_PARAM;
    }
    let mut buf = [0u8; MAX];
    let (kind, name) = match (target, service) {
        (Some(vm), _) => (EntryKind::Port, vm),
        (None, Some(s)) => (EntryKind::Service, s),
        (None, None) => return abi::image::exit::BAD_PARAM,
    };
    let id = dev.await_name(kind, name, &mut buf);
    let dst = match kind {
        EntryKind::Port => Destination::Port(id),
        EntryKind::Service => Destination::Service(id),
    };
    let mut client = Client::new(
        replied,
        abi::image::worker::PAYLOAD_XOR,
        Some(size as usize),
    )
    .with_immediate_every(p[abi::image::client::param::IMMEDIATE_EVERY]);
    let ex = Exchange {
        dst,
        count,
        window,
        size: size as usize,
        src: None,
        class: class as u8,
        key: p[abi::image::client::param::KEY] as u32,
        key_spread: p[abi::image::client::param::KEY_SPREAD].min(u64::from(u32::MAX)) as u32,
    };
    let mut payload = [0u8; MAX];
    let mut report = Report {
        sent_at,
        target: (kind, name, id),
        gone: false,
    };
    if p[abi::image::client::param::MODE] == abi::mode::client::HANDOFF {
        handoff_exchange(&mut dev, &mut free, &mut client, &mut report, &ex, &mut buf);
    } else {
        client.exchange(&mut dev, &mut report, &ex, &mut buf, &mut payload);
    }
    if p[abi::image::client::param::MODE] == abi::mode::client::MALFORMED {
        post_malformed(&mut dev);
    }
    if results::get(abi::image::client::result::DUPLICATES) > 0 {
        abi::image::exit::DUPLICATE
    } else if results::get(abi::image::client::result::MISMATCHES) > 0 {
        abi::image::exit::MISMATCH
    } else {
        0
    }
}

/// Page hand-off (`abi::mode::client::HANDOFF`): each request's bytes go into pages of this
/// guest's RAM, and the request carries their list; one at a time, since the reply means the
/// pages are home and the next request reuses them.
fn handoff_exchange(
    dev: &mut Vmq,
    free: &mut FreeMem,
    client: &mut Client<'_>,
    report: &mut Report,
    ex: &Exchange,
    buf: &mut [u8],
) {
    let pages = ex.size.div_ceil(PAGE_SIZE as usize).clamp(1, MAX_PAGES);
    let Some(area) = free.alloc(pages as u64 * PAGE_SIZE, PAGE_SIZE) else {
        guest_rt::exit(abi::image::exit::BAD_PARAM);
    };
    let mut refs = [0u64; MAX_PAGES];
    for (i, r) in refs[..pages].iter_mut().enumerate() {
        *r = area + i as u64 * PAGE_SIZE;
    }
    let mut list = [0u8; list_len(MAX_PAGES)];
    let Some(n) = pages::encode(&refs[..pages], ex.size as u32, &mut list) else {
        guest_rt::exit(abi::image::exit::BAD_PARAM);
    };
    let base = client.replies.answered;
    for k in 0..ex.count {
        let id = client.take_id();
        // SAFETY: `area` is `pages` pages of free RAM this guest allocated for its payloads,
        // identity mapped; nothing else uses it, and no request is out while it is written
        // (the previous reply came, so its pages are home).
        let payload = unsafe {
            core::slice::from_raw_parts_mut(
                core::ptr::with_exposed_provenance_mut::<u8>(area as usize),
                ex.size,
            )
        };
        vmq::traffic::fill_request(id, payload);
        let mut hdr = match ex.dst {
            Destination::Port(port) => MsgHeader::new(MsgKind::Request, port, id, n as u32),
            Destination::Service(s) => MsgHeader::request_to_service(s, id, n as u32),
        };
        hdr.set_handoff(true);
        hdr.set_class(ex.class);
        hdr.set_key(ex.key_of(id));
        if let Err(e) = dev.send(&hdr, &list[..n]) {
            on_error(e);
        }
        if let Err(e) = dev.flush_tx() {
            on_error(e.into());
        }
        client.counters.sent += 1;
        report.sent(id);
        while client.replies.answered < base + k + 1 {
            if !client.receive(dev, report, buf) {
                if let Err(e) = dev.wait(false) {
                    on_error(e);
                }
            }
            if let Err(e) = dev.flush_rx() {
                on_error(e.into());
            }
        }
    }
}

/// Publishes one tx chain whose buffer lies outside this guest's memory, then waits for the
/// device to set `DEVICE_NEEDS_RESET` and exits with `EXIT_RING_FAULT` (the host stops the VM
/// if the device never does).
fn post_malformed(dev: &mut Vmq) -> ! {
    let bad = Buf::readable(abi::mode::client::BAD_ADDR, HEADER_SIZE as u32);
    if let Err(e) = dev.tx.reclaim().and_then(|_| dev.tx.ring_mut().add(&[bad])) {
        on_error(e.into());
    }
    if let Err(e) = dev.flush_tx() {
        on_error(e.into());
    }
    loop {
        if dev.needs_reset() {
            results::add(abi::image::client::result::RING_ERRORS, 1);
            guest_rt::exit(abi::image::exit::RING_FAULT);
        }
        if let Err(e) = dev.wait(true) {
            on_error(e);
        }
    }
}

impl ClientHooks<Vmq> for Report {
    fn sent(&mut self, id: u64) {
        if let Some(t) = self.sent_at.get_mut((id - 1) as usize) {
            *t = tsc();
        }
        results::add(abi::image::client::result::SENT, 1);
    }

    fn answered(&mut self, id: u64, verdict: Verdict) {
        if !results::count_answer(verdict) {
            return;
        }
        if let Some(&t) = self.sent_at.get((id - 1) as usize) {
            record_latency(tsc().wrapping_sub(t));
        }
        if let Verdict::Failed(st) = verdict {
            let slot = match st {
                Some(Status::NoBackend) => abi::image::client::result::STATUS_NO_BACKEND,
                Some(Status::Unreachable) => abi::image::client::result::STATUS_UNREACHABLE,
                Some(Status::BackendError) => abi::image::client::result::STATUS_BACKEND_ERROR,
                Some(Status::Timeout | Status::PortBroken) => {
                    abi::image::client::result::STATUS_TIMEOUT_OR_BROKEN
                }
                _ => abi::image::client::result::STATUS_OTHER,
            };
            results::add(slot, 1);
        }
    }

    fn other(&mut self, dev: &mut Vmq, m: &RxMsg, payload: &mut [u8]) {
        if m.header.kind() == Some(MsgKind::PageReturn) {
            // Its pages are home; a reply already said so for its requests.
            results::add(abi::image::client::result::PAGE_RETURNS, 1);
            return;
        }
        if !dev.note_switch(&m.header, payload) {
            results::add(abi::image::client::result::RING_ERRORS, 1);
            return;
        }
        // Looked up again after every hello or update, taken or refused (a refused one
        // leaves the copy, and so the answer, as it was).
        let (kind, name, id) = self.target;
        let gone = dev.lookup(kind, name) != Some(id);
        if gone && !self.gone {
            results::add(abi::image::client::result::TARGET_GONE, 1);
        }
        self.gone = gone;
    }

    fn hold(&self) -> bool {
        self.gone
    }
}
