//! `client`: sends requests and checks that every one gets exactly one, correct, reply.
//!
//! Parameters (`abi::PARAM_*`): `COUNT` requests of `SIZE` payload bytes (byte `i` of request
//! `id` is `abi::request_byte(id, i)`; ids run 1..=COUNT) to service `SERVICE`, or to port
//! `TARGET` when set (`abi::port_param`); at most `WINDOW` outstanding (0 = the tx ring, which
//! bounds it anyway); `WAIT` = 0 spins, 1 parks on the doorbell when idle; `QUEUE_SIZE`.
//!
//! A reply must carry an outstanding id; with `Status::Ok` its payload must be the request's
//! bytes XOR `abi::WORKER_XOR`. Results: `RES_SENT`, `RES_RECEIVED` (replies to outstanding
//! ids), `RES_OK`, `RES_ERRORS` (+ per-status `RES_STATUS_*`), `RES_DUPLICATES` (replies to ids
//! not outstanding), `RES_MISMATCHES`, `RES_KICKS`, `RES_WAITS`, `RES_WAIT_TIMEOUTS`,
//! `RES_PORT_ID`, `RES_RING_ERRORS`.
//!
//! Exits once every request has its reply: 0 if none was a duplicate or a mismatch, else
//! `abi::EXIT_DUPLICATE` or `abi::EXIT_MISMATCH`. Other statuses: `EXIT_BAD_PARAM`,
//! `EXIT_NO_DEVICE`, `EXIT_RING_FAULT`.
//!
//! `MODE` = `abi::CLIENT_MODE_MALFORMED` makes it hostile, for tests: once every request has its
//! reply it publishes one tx chain whose buffer is at `abi::CLIENT_BAD_ADDR` (outside its
//! memory), then waits until the device asks for a reset and exits with `EXIT_RING_FAULT`.
#![no_std]
#![no_main]

use guest_rt::abi::{self, BootBlock};
use guest_rt::replies::{is_worker_answer, Replies};
use guest_rt::results;
use guest_rt::virtio::{on_error, probe_or_exit, DriverError, FreeMem, Vmq};
use vmq::virtio::Buf;
use vmq::wire::{MsgHeader, MsgKind, Status, HEADER_SIZE};

guest_rt::entry!(main);

const MAX: usize = abi::MAX_GUEST_PAYLOAD as usize + 1024;

struct Client {
    dev: Vmq,
    size: usize,
    next_id: u64,
    replied: Replies,
    /// TSC at send, per request id (empty when memory is short: no latency then).
    sent_at: &'static mut [u64],
}

/// Reads the time-stamp counter (allowed at CPL 3: the VMM leaves CR4.TSD clear).
fn tsc() -> u64 {
    // SAFETY: `rdtsc` has no memory effects and is available on every x86-64 CPU.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Adds one round trip of `cycles` to the histogram at `abi::LATENCY_HIST_ADDR`.
fn record_latency(cycles: u64) {
    let slot = abi::LATENCY_HIST_ADDR as usize + 8 * abi::latency_bucket(cycles);
    let p = core::ptr::with_exposed_provenance_mut::<u64>(slot);
    // SAFETY: the histogram page is identity-mapped guest RAM reserved for it by the memory
    // map (abi), 8-byte aligned, and only this single-threaded guest writes it.
    unsafe { p.write_volatile(p.read_volatile() + 1) };
}

fn main(bb: &BootBlock) -> u32 {
    let p = &bb.params;
    let size = p[abi::PARAM_SIZE];
    if size > abi::MAX_GUEST_PAYLOAD {
        return abi::EXIT_BAD_PARAM;
    }
    let count = p[abi::PARAM_COUNT];
    let mut free = FreeMem::new(bb);
    let Some(replied) = free.alloc_bytes((count as usize).div_ceil(8)) else {
        return abi::EXIT_BAD_PARAM;
    };
    let sent_at = free.alloc_u64s(count as usize).unwrap_or(&mut []);
    let dev = probe_or_exit(bb, &mut free, size);
    let tx_size = u64::from(dev.tx.ring().size());
    let window = match p[abi::PARAM_WINDOW] {
        0 => tx_size,
        w => w.min(tx_size),
    };
    let target = abi::param_port(p[abi::PARAM_TARGET]);
    let service = p[abi::PARAM_SERVICE] as u32;
    let mut c = Client {
        dev,
        size: size as usize,
        next_id: 1,
        replied: Replies::new(replied),
        sent_at,
    };
    let mut buf = [0u8; MAX];
    let mut payload = [0u8; MAX];
    while c.replied.answered < count {
        let mut progress = c.receive(&mut buf);
        if let Err(e) = c.dev.tx.reclaim() {
            on_error(e.into());
        }
        while c.next_id <= count
            && c.next_id - 1 - c.replied.answered < window
            && c.dev.tx.free() > 0
        {
            let id = c.next_id;
            for (i, b) in payload[..c.size].iter_mut().enumerate() {
                *b = abi::request_byte(id, i);
            }
            let hdr = match target {
                Some(port) => MsgHeader::new(MsgKind::Request, port, id, c.size as u32),
                None => MsgHeader::request_to_service(service, id, c.size as u32),
            };
            if let Err(e) = c.dev.tx.send(&hdr, &payload[..c.size]) {
                on_error(e.into());
                break;
            }
            if let Some(t) = c.sent_at.get_mut((id - 1) as usize) {
                *t = tsc();
            }
            c.next_id += 1;
            results::add(abi::RES_SENT, 1);
            progress = true;
        }
        if let Err(e) = c.dev.flush_tx() {
            on_error(e.into());
        }
        if !progress && c.replied.answered < count {
            let tx_full = c.dev.tx.free() == 0;
            if let Err(e) = c.dev.wait(tx_full) {
                on_error(e);
            }
        }
    }
    if p[abi::PARAM_MODE] == abi::CLIENT_MODE_MALFORMED {
        post_malformed(&mut c.dev);
    }
    if results::get(abi::RES_DUPLICATES) > 0 {
        abi::EXIT_DUPLICATE
    } else if results::get(abi::RES_MISMATCHES) > 0 {
        abi::EXIT_MISMATCH
    } else {
        0
    }
}

/// Publishes one tx chain whose buffer lies outside this guest's memory, then waits for the
/// device to set `DEVICE_NEEDS_RESET` and exits with `EXIT_RING_FAULT` (the host stops the VM
/// if the device never does).
fn post_malformed(dev: &mut Vmq) -> ! {
    let bad = Buf::readable(abi::CLIENT_BAD_ADDR, HEADER_SIZE as u32);
    if let Err(e) = dev.tx.reclaim().and_then(|_| dev.tx.ring_mut().add(&[bad])) {
        on_error(e.into());
    }
    if let Err(e) = dev.flush_tx() {
        on_error(e.into());
    }
    loop {
        if dev.needs_reset() {
            results::add(abi::RES_RING_ERRORS, 1);
            guest_rt::exit(abi::EXIT_RING_FAULT);
        }
        if let Err(e) = dev.wait(true) {
            on_error(e);
        }
    }
}

impl Client {
    /// Takes every delivered message; returns whether there was any.
    fn receive(&mut self, buf: &mut [u8]) -> bool {
        let mut any = false;
        while let Some(m) = self.dev.next_message(buf, &mut any) {
            match m.header.kind() {
                Some(MsgKind::Hello) => self.dev.note_hello(&m.header),
                Some(MsgKind::Reply) => self.reply(&m.header, &buf[..m.len]),
                _ => results::add(abi::RES_RING_ERRORS, 1),
            }
        }
        if let Err(e) = self.dev.flush_rx() {
            on_error(DriverError::from(e));
        }
        any
    }

    fn reply(&mut self, h: &MsgHeader, payload: &[u8]) {
        let id = h.msg_id();
        if !self.replied.accept(id, self.next_id) {
            return;
        }
        if let Some(&t) = self.sent_at.get((id - 1) as usize) {
            record_latency(tsc().wrapping_sub(t));
        }
        match h.status() {
            Some(Status::Ok) => {
                let good = is_worker_answer(id, self.size, payload);
                results::add(
                    if good {
                        abi::RES_OK
                    } else {
                        abi::RES_MISMATCHES
                    },
                    1,
                );
            }
            st => {
                results::add(abi::RES_ERRORS, 1);
                let slot = match st {
                    Some(Status::NoBackend) => abi::RES_STATUS_NO_BACKEND,
                    Some(Status::Unreachable) => abi::RES_STATUS_UNREACHABLE,
                    Some(Status::BackendError) => abi::RES_STATUS_BACKEND_ERROR,
                    Some(Status::Timeout | Status::PortBroken) => abi::RES_STATUS_TIMEOUT_OR_BROKEN,
                    _ => abi::RES_STATUS_OTHER,
                };
                results::add(slot, 1);
            }
        }
    }
}
