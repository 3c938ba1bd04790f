//! `evil`: a hostile guest, for tests. It behaves honestly first, then misbehaves once, in the
//! way `MODE` says (`abi::mode::evil`), and reports what it saw.
//!
//! Honest phase: `COUNT` requests of `SIZE` bytes (byte `i` of request `id` is
//! `abi::image::client::request_byte(id, i)`) to the service named by `SERVICE`, at most `WINDOW` outstanding (0 = the tx
//! ring; `EVIL_FLOOD` always uses the whole tx ring), every reply checked like a `client` does.
//! `SERVICE`, `SIDE_SERVICE` and `TARGET` are name parameters (`abi::image::text_param`): the
//! evil looks them up in the switch's directory before it starts, like a client.
//!
//! Then, by mode:
//! - `EVIL_HONEST`, `EVIL_FLOOD`: nothing more; exit 0.
//! - `EVIL_LOOP`, `EVIL_OUTSIDE`, `EVIL_MMIO`, `EVIL_GIANT_LEN`, `EVIL_ADDR_OVERFLOW`: publish one
//!   bad tx chain; `EVIL_AVAIL_JUMP`: publish a tx avail index more than a queue size ahead.
//! - `EVIL_REWRITE`: rewrite held chains (see `abi::mode::evil::REWRITE`); needs `SIDE_SERVICE`, which
//!   only this VM serves.
//! - `EVIL_FORGE_SRC`: the honest requests carry `src` = `TARGET`; then forged replies.
//! - `EVIL_RESET`: reset the device with requests to `SIDE_SERVICE` in flight, come back, and
//!   run honest traffic again.
//! - `EVIL_PAGES_*` (page hand-off, `abi::mode::evil::PAGES_OUTSIDE` ..= `PAGES_HOARD`): a bad
//!   page list; a write to a page it lent; lending to a receiver that keeps pages, then a reset.
//!
//! The protocol-fault modes wait for `DEVICE_NEEDS_RESET` (`RES_EVIL_NEEDS_RESET`) and exit
//! with `EXIT_RING_FAULT`; the others exit 0, or `EXIT_DUPLICATE` / `EXIT_MISMATCH` when a reply
//! came twice or wrong. Results: as a client (`RES_SENT`, `RES_RECEIVED`, `RES_OK`,
//! `RES_ERRORS`, `RES_DUPLICATES`, `RES_MISMATCHES`, ...) plus `RES_EVIL_*`.
#![no_std]
#![no_main]

use guest_rt::abi::{self, platform::BootBlock};
use guest_rt::results;
use guest_rt::virtio::{on_error, DriverError, FreeMem, Options, Vmq};
use vmq::traffic::{
    fill_request, xor_in_place, Client, ClientHooks, Destination, Exchange, Verdict,
};
use vmq::virtio::spec::{DESC_F_NEXT, DESC_SIZE};
use vmq::virtio::{Buf, RingMemory, RxMsg};
use vmq::wire::directory::EntryKind;
use vmq::wire::pages::{self, PAGE_SIZE};
use vmq::wire::{MsgHeader, MsgKind, Status, HEADER_SIZE};

guest_rt::entry!(main);

const MAX: usize = abi::image::MAX_GUEST_PAYLOAD as usize + 1024;
/// Message id of probes: one-way messages to [`NOWHERE`], which the switch returns at once.
const PROBE_ID: u64 = u64::MAX - 1;
/// Message id of the one-way messages the evil sends itself to use up its rx buffers.
const SELF_ID: u64 = u64::MAX - 2;
/// A port id no topology has.
const NOWHERE: u32 = 0x7fff_fff0;
/// Payload bytes of the chains rewritten in `EVIL_REWRITE`.
const CHAIN_PAYLOAD: u32 = 80;

struct Evil {
    bb: BootBlock,
    free: FreeMem,
    dev: Vmq,
    size: usize,
    /// Its requests and their replies (ids in sending order, each reply checked).
    client: Client<'static>,
    buf: &'static mut [u8],
    out: &'static mut [u8],
    /// Guest-physical scratch for hand-made chains (4 KiB).
    chains: u64,
    /// Everything else it receives.
    watch: Watch,
    /// The port `TARGET` names, looked up in the directory (`None`: not set).
    target: Option<u32>,
}

/// What the evil sees besides the replies to its requests (the client loop's hooks).
struct Watch {
    /// Serve requests delivered to this VM (as the side service's backend).
    serve: bool,
    /// The id of the request the evil expects to receive as a backend, and what it saw.
    mirror_id: u64,
    mirror_got: u64,
    mirror_intact: bool,
    hellos: u64,
}

fn fail(e: impl Into<DriverError>) {
    on_error(e.into());
}

fn main(bb: &BootBlock) -> u32 {
    let p = &bb.params;
    let size = p[abi::image::evil::param::SIZE];
    if size > abi::image::MAX_GUEST_PAYLOAD {
        return abi::image::exit::BAD_PARAM;
    }
    let (mode, count) = (
        p[abi::image::evil::param::MODE],
        p[abi::image::evil::param::COUNT],
    );
    let mut free = FreeMem::new(bb);
    let ids = 2 * count + 2 * abi::mode::evil::RESET_BATCH + 64;
    let (Some(seen), Some(buf), Some(out), Some(chains)) = (
        free.alloc_bytes(ids.div_ceil(8) as usize),
        free.alloc_bytes(MAX),
        free.alloc_bytes(MAX),
        free.alloc(4096, 64),
    ) else {
        return abi::image::exit::BAD_PARAM;
    };
    let dev = probe(bb, &mut free, size);
    let mut ev = Evil {
        bb: *bb,
        free,
        dev,
        size: size as usize,
        client: Client::new(seen, abi::image::worker::PAYLOAD_XOR, None),
        buf,
        out,
        chains,
        watch: Watch {
            serve: false,
            mirror_id: 0,
            mirror_got: 0,
            mirror_intact: true,
            hellos: 0,
        },
        target: None,
    };
    let Some(service) = guest_rt::param_name(bb, abi::image::evil::param::SERVICE) else {
        return abi::image::exit::BAD_PARAM;
    };
    let service = ev.dev.await_name(EntryKind::Service, service, ev.buf);
    // Unset: a service id no directory gives (the modes that need it are told to set it).
    let side = match guest_rt::param_name(bb, abi::image::evil::param::SIDE_SERVICE) {
        Some(name) => ev.dev.await_name(EntryKind::Service, name, ev.buf),
        None => NOWHERE,
    };
    ev.target = guest_rt::param_name(bb, abi::image::evil::param::TARGET)
        .map(|name| ev.dev.await_name(EntryKind::Port, name, ev.buf));
    let tx_size = u64::from(ev.dev.tx.ring().size());
    let window = match (mode, p[abi::image::evil::param::WINDOW]) {
        (abi::mode::evil::FLOOD, _) | (_, 0) => tx_size,
        (_, w) => w.min(tx_size),
    };
    let forged = if mode == abi::mode::evil::FORGE_SRC {
        ev.target
    } else {
        None
    };
    ev.exchange(service, count, window, forged);
    match mode {
        abi::mode::evil::HONEST | abi::mode::evil::FLOOD => {}
        abi::mode::evil::LOOP
        | abi::mode::evil::OUTSIDE
        | abi::mode::evil::MMIO
        | abi::mode::evil::GIANT_LEN
        | abi::mode::evil::ADDR_OVERFLOW => {
            ev.publish_bad_chain(mode);
            ev.wait_needs_reset();
        }
        abi::mode::evil::AVAIL_JUMP => {
            ev.jump_avail_index();
            ev.wait_needs_reset();
        }
        abi::mode::evil::REWRITE => {
            ev.rewrite(side);
            ev.wait_needs_reset();
        }
        abi::mode::evil::PAGES_OUTSIDE
        | abi::mode::evil::PAGES_RINGS
        | abi::mode::evil::PAGES_DUPLICATE
        | abi::mode::evil::PAGES_TWICE => {
            ev.bad_pages(service, mode);
            ev.wait_needs_reset();
        }
        abi::mode::evil::PAGES_WRITE => ev.write_lent_page(side),
        abi::mode::evil::PAGES_HOARD => ev.hoard(side),
        abi::mode::evil::FORGE_SRC => ev.forge_replies(),
        abi::mode::evil::RESET => ev.reset_mid_flight(service, side, count, window),
        _ => return abi::image::exit::BAD_PARAM,
    }
    if results::get(abi::image::evil::result::DUPLICATES) > 0 {
        abi::image::exit::DUPLICATE
    } else if results::get(abi::image::evil::result::MISMATCHES) > 0 {
        abi::image::exit::MISMATCH
    } else {
        0
    }
}

fn probe(bb: &BootBlock, free: &mut FreeMem, size: u64) -> Vmq {
    match Vmq::probe(bb, free, Options::from_params(bb, size)) {
        Ok(d) => d,
        Err(e) => {
            guest_rt::println!("vmq probe failed: {e:?}");
            guest_rt::exit(abi::image::exit::NO_DEVICE)
        }
    }
}

impl ClientHooks<Vmq> for Watch {
    fn sent(&mut self, _id: u64) {
        results::add(abi::image::evil::result::SENT, 1);
    }

    fn answered(&mut self, _id: u64, verdict: Verdict) {
        results::count_answer(verdict);
    }

    fn foreign(&self, h: &MsgHeader) -> bool {
        h.msg_id() == PROBE_ID || h.msg_id() == SELF_ID
    }

    fn other(&mut self, dev: &mut Vmq, m: &RxMsg, payload: &mut [u8]) {
        let h = m.header;
        match h.kind() {
            Some(MsgKind::Hello) => {
                self.hellos += 1;
                dev.note_hello(&h, payload);
            }
            Some(MsgKind::DirectoryUpdate) => dev.note_directory(&h, payload),
            // Its own probes and one-way messages coming back.
            Some(MsgKind::Reply) => {}
            Some(MsgKind::Request) => self.request(dev, &h, payload),
            Some(MsgKind::OneWay) if h.msg_id() == SELF_ID => {}
            // Pages it lent came home.
            Some(MsgKind::PageReturn) => {}
            _ => results::add(abi::image::evil::result::RING_ERRORS, 1),
        }
    }
}

impl Watch {
    /// A request delivered to this VM as a backend (`EVIL_REWRITE`'s side service): checks it
    /// is the one it sent, intact, and answers it like a worker.
    fn request(&mut self, dev: &mut Vmq, h: &MsgHeader, payload: &mut [u8]) {
        self.mirror_got += 1;
        let intact = payload.len() == CHAIN_PAYLOAD as usize
            && payload
                .iter()
                .enumerate()
                .all(|(i, &b)| b == abi::image::client::request_byte(self.mirror_id, i));
        self.mirror_intact &= intact;
        if !self.serve {
            return;
        }
        xor_in_place(payload, abi::image::worker::PAYLOAD_XOR);
        let hdr = MsgHeader::reply_to(h, Status::Ok, payload.len() as u32);
        if let Err(e) = dev.send(&hdr, payload) {
            fail(e);
        }
    }
}

impl Evil {
    fn header(&self, service: u32, id: u64, len: u32) -> MsgHeader {
        MsgHeader::request_to_service(service, id, len)
    }

    fn fill_payload(&mut self, id: u64, len: usize) {
        fill_request(id, &mut self.out[..len]);
    }

    /// Sends `n` requests to `dst`, at most `window` outstanding, `src` set to `forged` when
    /// given, and waits for every reply.
    fn exchange(&mut self, dst: u32, n: u64, window: u64, forged: Option<u32>) {
        let ex = Exchange {
            dst: Destination::Service(dst),
            count: n,
            window,
            size: self.size,
            src: forged,
            class: 0,
            key: 0,
            key_spread: 0,
        };
        self.client
            .exchange(&mut self.dev, &mut self.watch, &ex, self.buf, self.out);
    }

    /// A fresh page of its free RAM holding the first `len` bytes of request `id`.
    fn data_page(&mut self, id: u64, len: usize) -> u64 {
        let Some(p) = self.free.alloc(PAGE_SIZE, PAGE_SIZE) else {
            guest_rt::exit(abi::image::exit::BAD_PARAM);
        };
        let mut bytes = [0u8; PAGE_SIZE as usize];
        fill_request(id, &mut bytes[..len]);
        self.store(p, &bytes[..len]);
        p
    }

    /// Queues request `id` to service `dst` carrying the page list `refs` (`total` bytes);
    /// published by the next flush.
    fn send_pages(&mut self, dst: u32, id: u64, refs: &[u64], total: usize) {
        let mut list = [0u8; pages::list_len(pages::MAX_PAGES)];
        let n = pages::encode(refs, total as u32, &mut list).unwrap_or(0);
        let mut h = self.header(dst, id, n as u32);
        h.set_handoff(true);
        if let Err(e) = self.dev.send(&h, &list[..n]) {
            fail(e);
        }
        self.client.counters.sent += 1;
        self.watch.sent(id);
    }

    /// Waits until `n` more replies than `base` came.
    fn await_replies(&mut self, base: u64, n: u64) {
        while self.client.replies.answered < base + n {
            if !self.receive() {
                if let Err(e) = self.dev.wait(false) {
                    fail(e);
                }
            }
            self.flush();
        }
    }

    /// `EVIL_PAGES_*` faults: one request (two for `PAGES_TWICE`) with a bad page list.
    fn bad_pages(&mut self, dst: u32, mode: u64) {
        let len = self.size.clamp(1, PAGE_SIZE as usize);
        let id = self.client.take_id();
        let p = self.data_page(id, len);
        match mode {
            abi::mode::evil::PAGES_OUTSIDE => self.send_pages(dst, id, &[self.bb.mem_size], len),
            abi::mode::evil::PAGES_RINGS => {
                let ring = self.dev.tx.ring().layout().desc & !(PAGE_SIZE - 1);
                self.send_pages(dst, id, &[ring], len)
            }
            abi::mode::evil::PAGES_DUPLICATE => self.send_pages(dst, id, &[p, p], 2 * len),
            _ => {
                self.send_pages(dst, id, &[p], len);
                let again = self.client.take_id();
                self.send_pages(dst, again, &[p], len);
            }
        }
        results::add(abi::image::evil::result::ATTACKS, 1);
        self.flush();
    }

    /// `EVIL_PAGES_WRITE`: writes to a page it handed off (see the mode).
    fn write_lent_page(&mut self, dst: u32) {
        let len = self.size.clamp(8, PAGE_SIZE as usize);
        let base = self.client.replies.answered;
        let ok_before = results::get(abi::image::evil::result::OK);
        let id = self.client.take_id();
        let p = self.data_page(id, len);
        let first = |ev: &Self| {
            let mut b = [0u8; 8];
            let _ = ev.dev.tx.ring().memory().read(p, &mut b);
            u64::from_le_bytes(b)
        };
        let original = first(self);
        self.send_pages(dst, id, &[p], len);
        self.flush();
        // The stand-in reads as zeros once the page is lent (the request's bytes never start
        // with eight zero bytes).
        let mut written = false;
        while self.client.replies.answered == base {
            if first(self) == 0 {
                self.store(p, &[0xee; 64]);
                results::add(abi::image::evil::result::ATTACKS, 1);
                written = true;
                break;
            }
            if self.receive() {
                self.flush();
            }
        }
        self.await_replies(base, 1);
        // Its one reply was an answer with the original bytes (a mismatch would count as
        // such, an error reply would not count as ok).
        let ok = written
            && results::get(abi::image::evil::result::OK) == ok_before + 1
            && results::get(abi::image::evil::result::MISMATCHES) == 0
            && first(self) == original;
        results::set(abi::image::evil::result::PAGES_OK, u64::from(ok));
    }

    /// `EVIL_PAGES_HOARD`: lends to a receiver that keeps pages, then resets with them out.
    fn hoard(&mut self, dst: u32) {
        let len = self.size.clamp(1, PAGE_SIZE as usize);
        let base = self.client.replies.answered;
        for _ in 0..abi::mode::evil::HOARD {
            let id = self.client.take_id();
            let p = self.data_page(id, len);
            self.send_pages(dst, id, &[p], len);
        }
        results::add(abi::image::evil::result::ATTACKS, 1);
        self.flush();
        self.await_replies(base, abi::mode::evil::HOARD);
        self.dev.reset();
    }

    /// Publishes tx and re-posts rx buffers.
    fn flush(&mut self) {
        if let Err(e) = self.dev.flush_tx().and_then(|_| self.dev.flush_rx()) {
            fail(e);
        }
    }

    /// Takes every delivered message without re-posting rx buffers (see [`Evil::flush`]);
    /// returns whether there was any.
    fn receive(&mut self) -> bool {
        self.client
            .receive(&mut self.dev, &mut self.watch, self.buf)
    }

    fn tx_desc(&self, i: u16) -> u64 {
        self.dev.tx.ring().layout().desc + DESC_SIZE * u64::from(i)
    }

    fn load16(&self, addr: u64) -> u16 {
        self.dev.tx.ring().memory().load_u16(addr).unwrap_or(0)
    }

    fn store(&self, addr: u64, data: &[u8]) {
        if let Err(e) = self.dev.tx.ring().memory().write(addr, data) {
            fail(e);
        }
    }

    /// The descriptors of the tx chain at `head`, read from the table this VM wrote.
    fn chain(&self, head: u16, out: &mut [u16; 8]) -> usize {
        let mut n = 0;
        let mut i = head;
        while n < out.len() {
            out[n] = i;
            n += 1;
            if self.load16(self.tx_desc(i) + 12) & DESC_F_NEXT == 0 {
                break;
            }
            i = self.load16(self.tx_desc(i) + 14);
        }
        n
    }

    /// Makes the last descriptor of the chain at `head` link back to `head`.
    fn close_loop(&self, head: u16) {
        let mut d = [0u16; 8];
        let n = self.chain(head, &mut d);
        let last = self.tx_desc(d[n - 1]);
        let flags = self.load16(last + 12) | DESC_F_NEXT;
        self.store(last + 12, &flags.to_le_bytes());
        self.store(last + 14, &head.to_le_bytes());
    }

    fn publish_bad_chain(&mut self, mode: u64) {
        let hdr = self.header(0, self.client.next_id, 0);
        self.store(self.chains, &hdr.to_bytes());
        let h = HEADER_SIZE as u32;
        let (addr, len) = match mode {
            abi::mode::evil::OUTSIDE => (abi::mode::client::BAD_ADDR, h),
            abi::mode::evil::MMIO => (abi::platform::MMIO_BASE, h),
            abi::mode::evil::GIANT_LEN => (self.chains, u32::MAX),
            abi::mode::evil::ADDR_OVERFLOW => (u64::MAX - 15, 64),
            _ => (self.chains, h),
        };
        let r = if mode == abi::mode::evil::LOOP {
            let bufs = [
                Buf::readable(self.chains, h),
                Buf::readable(self.chains + 64, 16),
            ];
            self.dev
                .tx
                .ring_mut()
                .add(&bufs)
                .map(|head| self.close_loop(head))
        } else {
            self.dev
                .tx
                .ring_mut()
                .add(&[Buf::readable(addr, len)])
                .map(|_| ())
        };
        if let Err(e) = r.and_then(|_| self.dev.flush_tx()) {
            fail(e);
        }
        results::add(abi::image::evil::result::ATTACKS, 1);
    }

    fn jump_avail_index(&mut self) {
        let layout = self.dev.tx.ring().layout();
        let idx = self.load16(layout.avail + 2);
        let jumped = idx.wrapping_add(layout.size).wrapping_add(1);
        // No kick (a publish would store the driver's own index again): the switch reads the
        // index at its next poll, at the latest after its sweep period.
        if let Err(e) = self
            .dev
            .tx
            .ring()
            .memory()
            .store_u16(layout.avail + 2, jumped)
        {
            fail(e);
        }
        results::add(abi::image::evil::result::ATTACKS, 1);
    }

    /// Waits until the device sets `DEVICE_NEEDS_RESET`, records it, and exits.
    fn wait_needs_reset(&mut self) -> ! {
        loop {
            self.receive();
            let seen = match self.dev.wait(true) {
                Err(DriverError::NeedsReset) => true,
                _ => self.dev.needs_reset(),
            };
            if seen {
                results::set(abi::image::evil::result::NEEDS_RESET, 1);
                guest_rt::exit(abi::image::exit::RING_FAULT);
            }
        }
    }

    /// Rx buffers the device can still use: published avail index minus its used index.
    fn device_free_rx(&self) -> u16 {
        let ring = self.dev.rx.ring();
        let l = ring.layout();
        let m = ring.memory();
        let avail = m.load_u16(l.avail + 2).unwrap_or(0);
        let used = m.load_u16(l.used + 2).unwrap_or(0);
        avail.wrapping_sub(used)
    }

    /// Waits until the device returns the tx chain at `head`.
    fn wait_tx_returned(&mut self, head: u16) {
        loop {
            loop {
                match self.dev.tx.ring_mut().pop_used() {
                    Ok(Some(u)) if u.head == head => return,
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => fail(e),
                }
            }
            if let Err(e) = self.dev.wait(true) {
                fail(e);
            }
        }
    }

    fn send_oneway(&mut self, dst: u32, id: u64) -> u16 {
        let hdr = MsgHeader::new(MsgKind::OneWay, dst, id, 0);
        match self.dev.tx.send(&hdr, &[]) {
            Ok(head) => head,
            Err(e) => {
                fail(e);
                0
            }
        }
    }

    /// Sends a one-way message to a port that does not exist and waits for the switch to
    /// return it: everything published before it has been taken by the switch.
    fn probe_taken(&mut self) {
        let head = self.send_oneway(NOWHERE, PROBE_ID);
        if let Err(e) = self.dev.flush_tx() {
            fail(e);
        }
        self.wait_tx_returned(head);
    }

    /// Uses up every rx buffer the device holds, with one-way messages to itself (which the
    /// switch returns as soon as it delivered them), and re-posts none.
    fn exhaust_rx(&mut self) {
        let Some(me) = self.dev.port_id() else {
            guest_rt::exit(abi::image::exit::BAD_PARAM);
        };
        loop {
            self.receive();
            let free = self.device_free_rx();
            if free == 0 {
                return;
            }
            let k = free.min(self.dev.tx.free().saturating_sub(1));
            let mut last = None;
            for _ in 0..k {
                last = Some(self.send_oneway(me, SELF_ID));
            }
            if let Err(e) = self.dev.flush_tx() {
                fail(e);
            }
            if let Some(head) = last {
                self.wait_tx_returned(head);
            }
        }
    }

    /// Puts a request to `dst` on the tx ring as a chain of a header buffer and `pieces`
    /// payload buffers (not published). Returns its head.
    fn add_split_request(&mut self, dst: u32, pieces: u32, at: u64) -> u16 {
        let id = self.client.take_id();
        self.watch.mirror_id = id;
        let hdr = self.header(dst, id, CHAIN_PAYLOAD);
        self.fill_payload(id, CHAIN_PAYLOAD as usize);
        self.store(at, &hdr.to_bytes());
        let payload: &[u8] = &self.out[..CHAIN_PAYLOAD as usize];
        if let Err(e) = self
            .dev
            .tx
            .ring()
            .memory()
            .write(at + HEADER_SIZE as u64, payload)
        {
            fail(e);
        }
        let mut bufs = [Buf::readable(0, 0); 8];
        bufs[0] = Buf::readable(at, HEADER_SIZE as u32);
        let piece = CHAIN_PAYLOAD / pieces;
        for k in 0..pieces {
            let off = HEADER_SIZE as u64 + u64::from(k * piece);
            bufs[1 + k as usize] = Buf::readable(at + off, piece);
        }
        results::add(abi::image::evil::result::SENT, 1);
        match self.dev.tx.ring_mut().add(&bufs[..1 + pieces as usize]) {
            Ok(head) => head,
            Err(e) => {
                fail(e);
                0
            }
        }
    }

    /// `EVIL_REWRITE`: see `abi::mode::evil::REWRITE`.
    fn rewrite(&mut self, side: u32) {
        self.watch.serve = true;
        // A short chain (header + one payload buffer): snapshotted when the switch takes it.
        self.exhaust_rx();
        let base = self.client.replies.answered;
        let head = self.add_split_request(side, 1, self.chains);
        self.probe_taken();
        let mut d = [0u16; 8];
        let n = self.chain(head, &mut d);
        for &i in &d[..n] {
            self.store(self.tx_desc(i), &abi::mode::client::BAD_ADDR.to_le_bytes());
        }
        self.close_loop(head);
        results::add(abi::image::evil::result::ATTACKS, 1);
        // Let it through: it must arrive intact, and its answer must come back.
        while self.client.replies.answered == base {
            let progress = self.receive();
            self.flush();
            if let Err(e) = self.dev.tx.reclaim() {
                fail(e);
            }
            if !progress {
                if let Err(e) = self.dev.wait(true) {
                    fail(e);
                }
            }
        }
        let ok = self.watch.mirror_got == 1 && self.watch.mirror_intact && !self.dev.needs_reset();
        results::set(abi::image::evil::result::SNAPSHOT_OK, u64::from(ok));
        // A long chain (header + five payload buffers): walked again on every read.
        self.exhaust_rx();
        let head = self.add_split_request(side, 5, self.chains + 2048);
        self.probe_taken();
        self.close_loop(head);
        results::add(abi::image::evil::result::ATTACKS, 1);
        self.flush();
    }

    /// `EVIL_FORGE_SRC`'s second act: replies for tokens it was never given.
    fn forge_replies(&mut self) {
        let victim = self.target.unwrap_or(0);
        let per_gen = abi::mode::evil::FORGED_REPLIES / 4;
        for k in 0..abi::mode::evil::FORGED_REPLIES {
            let token = ((1 + k / per_gen) << 32) | (k % per_gen);
            let mut hdr = MsgHeader::new(MsgKind::Reply, victim, token, 8);
            hdr.set_src(victim);
            if let Err(e) = self.dev.send(&hdr, &[0xee; 8]) {
                fail(e);
            }
            results::add(abi::image::evil::result::ATTACKS, 1);
        }
        if let Err(e) = self.dev.drain_tx() {
            fail(e);
        }
        self.receive();
    }

    /// `EVIL_RESET`: see `abi::mode::evil::RESET`.
    fn reset_mid_flight(&mut self, service: u32, side: u32, count: u64, window: u64) {
        let base = self.client.replies.answered;
        for _ in 0..abi::mode::evil::RESET_BATCH {
            let id = self.client.take_id();
            self.fill_payload(id, self.size);
            let hdr = self.header(side, id, self.size as u32);
            let out: &[u8] = &self.out[..self.size];
            if let Err(e) = self.dev.send(&hdr, out) {
                fail(e);
            }
            results::add(abi::image::evil::result::SENT, 1);
        }
        if let Some(port) = self.target {
            for seq in 0..abi::mode::evil::RESET_ONEWAYS {
                let hdr = MsgHeader::new(MsgKind::OneWay, port, seq, 0);
                if let Err(e) = self.dev.send(&hdr, &[]) {
                    fail(e);
                }
                results::add(abi::image::evil::result::ATTACKS, 1);
            }
        }
        self.probe_taken();
        self.receive();
        results::set(
            abi::image::evil::result::BEFORE_RESET,
            self.client.replies.answered - base,
        );
        self.dev.reset();
        results::add(abi::image::evil::result::ATTACKS, 1);
        self.watch.hellos = 0;
        self.dev = probe(&self.bb, &mut self.free, self.size as u64);
        while self.watch.hellos == 0 {
            let progress = self.receive();
            self.flush();
            if !progress {
                if let Err(e) = self.dev.wait(false) {
                    fail(e);
                }
            }
        }
        results::set(abi::image::evil::result::REVIVED, self.watch.hellos);
        self.exchange(service, count, window, None);
        self.exchange(side, abi::mode::evil::RESET_BATCH, window, None);
    }
}
