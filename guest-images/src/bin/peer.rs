//! `peer`: VM-to-VM unicast. Sends one-way messages to a port while receiving, and checks that
//! the messages of every sender arrive in order and intact.
//!
//! Message `seq` (0, 1, ...) from the peer with port id `src` carries `SIZE` payload bytes
//! (at least 8): `seq` as a little-endian `u64`, then byte `i` = `payload_byte(src, seq, i)`;
//! its `msg_id` is `seq`. The peer waits for the switch's hello (its port id) before sending.
//! With `CHECK_STRIDE` n > 1 only every n-th byte after the sequence number is written and
//! checked (a bench's setting: the bytes move, few are made and read).
//!
//! Parameters (`abi::image::peer::param`): `MODE` (`abi::mode::peer`: copy or page hand-off);
//! `COUNT` messages to the port (VM) named by `TARGET` (a name parameter, looked up in the
//! switch's directory once it names it); `EXPECT` messages to receive; `SIZE` (up to 1 MiB,
//! `abi::image::MAX_PEER_PAYLOAD`: its buffers come from free memory); `CHECK_STRIDE`;
//! `WAIT`; `QUEUE_SIZE`; `IMMEDIATE_EVERY` n: message `seq` immediate when `seq + 1` is a
//! multiple of n, else deferred (0: no notification flag).
//!
//! Page hand-off: in `mode::peer::HANDOFF` it writes each message into an area of its own
//! pages (one area per tx slot) and sends their list; an area is used again once return
//! notices brought all of its pages home. Whatever its mode, a handed-off message it receives
//! is read from its receive window (above its free memory: a page outside it is a mismatch),
//! checked like a copied one, and its pages released at once.
//!
//! Results: `result::SENT`, `result::RECEIVED`, `result::OK` (in order and intact), `result::MISMATCHES`
//! (out of order or corrupt), `result::DUPLICATES` (senders with port ids >= 64, which it cannot
//! track), `result::ERRORS` (error notices from the switch: undeliverable messages),
//! `result::PAGE_RETURNS`, `result::KICKS`, `result::WAITS`, `result::WAIT_TIMEOUTS`,
//! `result::PORT_ID`, `result::RING_ERRORS`.
//!
//! Exits once it sent `COUNT` messages, the switch took them all (and, handing off, every
//! page came home: a return notice announces a message's pages whether they moved or were
//! copied), and it received `EXPECT`: 0 if everything arrived in order and intact,
//! else `exit::MISMATCH`, `exit::DUPLICATE` or `exit::UNDELIVERED`.
#![no_std]
#![no_main]

use guest_rt::abi::image::peer::{param, payload_byte, result};
use guest_rt::abi::image::{exit, MAX_PEER_PAYLOAD};
use guest_rt::abi::mode;
use guest_rt::abi::platform::BootBlock;
use guest_rt::results;
use guest_rt::virtio::{on_error, probe_or_exit, FreeMem, Vmq};
use vmq::traffic::notify_for;
use vmq::wire::directory::EntryKind;
use vmq::wire::pages::{self, MAX_PAGES, PAGE_SIZE};
use vmq::wire::{MsgHeader, MsgKind, Status};

guest_rt::entry!(main);

const SENDERS: usize = 64;

struct Peer {
    dev: Vmq,
    next_seq: [u64; SENDERS],
    received: u64,
    /// Checks (and, sending, writes) one payload byte in every `stride`.
    stride: usize,
    /// Its receive window, `window..mem_size`, where handed-off pages arrive.
    window: u64,
    mem_size: u64,
    /// Its hand-off areas, when it hands off.
    pool: Option<Pool>,
    /// A page list under construction (releases, sends).
    list: &'static mut [u8],
}

/// One area of `pages` pages per tx slot; `out[k]` counts area `k`'s pages not yet home.
struct Pool {
    base: u64,
    pages: usize,
    out: &'static mut [u16],
}

impl Pool {
    fn area_bytes(&self) -> u64 {
        self.pages as u64 * PAGE_SIZE
    }

    fn free_area(&self) -> Option<usize> {
        self.out.iter().position(|&n| n == 0)
    }

    /// Takes a return notice: each page it lists is one of an area's pages home. A page that
    /// is not one of its own, or not out, is a ring error (the notice comes from the switch,
    /// whose bytes are checked like any message's).
    fn returned(&mut self, list: &[u8]) {
        let Ok((count, _)) = pages::decode_header(list) else {
            results::add(result::RING_ERRORS, 1);
            return;
        };
        for i in 0..count {
            let area = pages::page(list, i).ok().and_then(|p| {
                let k = p.checked_sub(self.base)? / self.area_bytes();
                self.out.get_mut(k as usize).filter(|n| **n > 0)
            });
            match area {
                Some(n) => *n -= 1,
                None => results::add(result::RING_ERRORS, 1),
            }
        }
        results::add(result::PAGE_RETURNS, 1);
    }

    fn all_home(&self) -> bool {
        self.out.iter().all(|&n| n == 0)
    }
}

fn main(bb: &BootBlock) -> u32 {
    let p = &bb.params;
    let size = p[param::SIZE].max(8);
    if size > MAX_PEER_PAYLOAD {
        return exit::BAD_PARAM;
    }
    let (count, expect) = (p[param::COUNT], p[param::EXPECT]);
    let every = p[param::IMMEDIATE_EVERY];
    let handoff = match p[param::MODE] {
        mode::peer::COPY => false,
        mode::peer::HANDOFF => true,
        _ => return exit::BAD_PARAM,
    };
    let target = guest_rt::param_name(bb, param::TARGET);
    if count > 0 && target.is_none() {
        return exit::BAD_PARAM;
    }
    let mut free = FreeMem::new(bb);
    let dev = probe_or_exit(bb, &mut free, size);
    let size = size as usize;
    // What one rx slot can hold (`Options::from_params`' payload), with room for a hello.
    let Some(buf) = free.alloc_bytes(size.max(1024) + 1024) else {
        return exit::BAD_PARAM;
    };
    let Some(list) = free.alloc_bytes(pages::list_len(MAX_PAGES)) else {
        return exit::BAD_PARAM;
    };
    let (payload, pool) = if handoff {
        let slots = usize::from(dev.tx.ring().size());
        let pages = size.div_ceil(PAGE_SIZE as usize);
        let (Some(base), Some(out)) = (
            free.alloc((slots * pages) as u64 * PAGE_SIZE, PAGE_SIZE),
            free.alloc_u16(slots),
        ) else {
            return exit::BAD_PARAM;
        };
        (None, Some(Pool { base, pages, out }))
    } else {
        let Some(payload) = free.alloc_bytes(size) else {
            return exit::BAD_PARAM;
        };
        (Some(payload), None)
    };
    let mut peer = Peer {
        dev,
        next_seq: [0; SENDERS],
        received: 0,
        stride: (p[param::CHECK_STRIDE] as usize).max(1),
        window: bb.free_end,
        mem_size: bb.mem_size,
        pool,
        list,
    };
    let mut payload = payload;
    let mut seq = 0u64;
    let mut dst = None;
    loop {
        let mut progress = peer.receive(buf);
        if dst.is_none() {
            dst = target.and_then(|t| peer.dev.lookup(EntryKind::Port, t));
        }
        if let Err(e) = peer.dev.tx.reclaim() {
            on_error(e.into());
        }
        if let (Some(me), Some(dst)) = (peer.dev.port_id(), dst) {
            while seq < count && peer.dev.tx.free() > 0 {
                let mut hdr = MsgHeader::new(MsgKind::OneWay, dst, seq, size as u32);
                hdr.set_notify(notify_for(seq + 1, every));
                let sent = match payload.as_deref_mut() {
                    Some(payload) => {
                        fill(payload, me, seq, peer.stride);
                        peer.dev.tx.send(&hdr, payload).map(|_| true)
                    }
                    None => peer.send_pages(&mut hdr, me, seq, size),
                };
                match sent {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        on_error(e.into());
                        break;
                    }
                }
                seq += 1;
                results::add(result::SENT, 1);
                progress = true;
            }
        }
        if let Err(e) = peer.dev.flush_tx() {
            on_error(e.into());
        }
        // Handing off, it waits for its pages too, unless a message was undeliverable (whose
        // pages it cannot tell from the others': it exits with `exit::UNDELIVERED` anyway).
        let home = peer.pool.as_ref().is_none_or(Pool::all_home);
        let sent_all = seq >= count && (home || results::get(result::ERRORS) > 0);
        if sent_all && peer.received >= expect && peer.dev.tx.ring().outstanding() == 0 {
            break;
        }
        if !progress {
            let want_tx = peer.dev.tx.ring().outstanding() > 0;
            if let Err(e) = peer.dev.wait(want_tx) {
                on_error(e);
            }
        }
    }
    if results::get(result::MISMATCHES) > 0 {
        exit::MISMATCH
    } else if results::get(result::DUPLICATES) > 0 {
        exit::DUPLICATE
    } else if results::get(result::ERRORS) > 0 {
        exit::UNDELIVERED
    } else {
        0
    }
}

/// Writes message `seq`'s sequence number and its checked bytes (every `stride`-th) into
/// `payload`.
fn fill(payload: &mut [u8], me: u32, seq: u64, stride: usize) {
    payload[..8].copy_from_slice(&seq.to_le_bytes());
    for i in (0..payload.len() - 8).step_by(stride) {
        payload[8 + i] = payload_byte(me, seq, i);
    }
}

impl Peer {
    /// Hand-off: writes message `seq` into a free area and sends its page list. `Ok(false)`
    /// when every area is still out (the caller sends again once notices bring one home).
    fn send_pages(
        &mut self,
        hdr: &mut MsgHeader,
        me: u32,
        seq: u64,
        size: usize,
    ) -> Result<bool, vmq::virtio::RingError> {
        let Some(pool) = self.pool.as_mut() else {
            return Ok(false);
        };
        let Some(k) = pool.free_area() else {
            return Ok(false);
        };
        let area = pool.base + k as u64 * pool.area_bytes();
        // SAFETY: area `k` is `pages` pages of free RAM this guest allocated for its hand-off
        // pool, identity mapped, `size` bytes or more; it is home (no page of it out, so no
        // other VM can see it) and nothing else in this guest uses it.
        let bytes = unsafe {
            core::slice::from_raw_parts_mut(
                core::ptr::with_exposed_provenance_mut::<u8>(area as usize),
                size,
            )
        };
        fill(bytes, me, seq, self.stride);
        let mut refs = [0u64; MAX_PAGES];
        for (i, r) in refs[..pool.pages].iter_mut().enumerate() {
            *r = area + i as u64 * PAGE_SIZE;
        }
        let Some(n) = pages::encode(&refs[..pool.pages], size as u32, self.list) else {
            return Ok(false);
        };
        hdr.set_handoff(true);
        hdr.set_len(n as u32);
        self.dev.tx.send(hdr, &self.list[..n])?;
        pool.out[k] = pool.pages as u16;
        Ok(true)
    }

    fn receive(&mut self, buf: &mut [u8]) -> bool {
        let mut any = false;
        while let Some(m) = self.dev.next_message(buf, &mut any) {
            let h = m.header;
            let payload = &buf[..m.len];
            match h.kind() {
                Some(MsgKind::Hello | MsgKind::DirectoryUpdate) => {
                    self.dev.note_switch(&h, payload);
                }
                Some(MsgKind::OneWay) if h.handoff() => self.one_way_pages(&h, payload),
                Some(MsgKind::OneWay) => self.one_way(&h, payload.len(), |i| payload.get(i)),
                Some(MsgKind::PageReturn) => match self.pool.as_mut() {
                    Some(pool) => pool.returned(payload),
                    None => results::add(result::RING_ERRORS, 1),
                },
                _ if h.status() != Some(Status::Ok) => results::add(result::ERRORS, 1),
                _ => results::add(result::RING_ERRORS, 1),
            }
        }
        if let Err(e) = self.dev.flush_rx() {
            on_error(e.into());
        }
        any
    }

    /// A handed-off message: its list must name pages of the receive window carrying `total`
    /// bytes; they are checked in place, then released (a bad list is a mismatch and
    /// releases nothing).
    fn one_way_pages(&mut self, h: &MsgHeader, list: &[u8]) {
        let mut refs = [0u64; MAX_PAGES];
        let read = pages::decode_header(list).ok().and_then(|(count, total)| {
            for (i, r) in refs[..count].iter_mut().enumerate() {
                *r = pages::page(list, i).ok()?;
                if *r < self.window || r.checked_add(PAGE_SIZE)? > self.mem_size {
                    return None;
                }
            }
            Some((count, total as usize))
        });
        let Some((count, total)) = read else {
            self.received += 1;
            results::add(result::RECEIVED, 1);
            results::add(result::MISMATCHES, 1);
            return;
        };
        let page = PAGE_SIZE as usize;
        self.one_way(h, total, |i| {
            let r = *refs.get(i / page)?;
            // SAFETY: `r` is a page of this guest's receive window (checked above: RAM above
            // its free memory, identity mapped) where the switch put a page it was handed,
            // and `i % page` lies within it; only read, before the page is released.
            Some(unsafe { &*core::ptr::with_exposed_provenance::<u8>(r as usize + i % page) })
        });
        let Some(n) = pages::encode(&refs[..count], 0, self.list) else {
            return;
        };
        let rel = MsgHeader::new(MsgKind::PageRelease, 0, 0, n as u32);
        if let Err(e) = self.dev.send(&rel, &self.list[..n]) {
            on_error(e);
        }
    }

    /// Checks one message of `len` bytes whose byte `i` `byte(i)` reads.
    fn one_way<'a>(&mut self, h: &MsgHeader, len: usize, byte: impl Fn(usize) -> Option<&'a u8>) {
        self.received += 1;
        results::add(result::RECEIVED, 1);
        let src = h.src();
        let Some(next) = self.next_seq.get_mut(src as usize) else {
            results::add(result::DUPLICATES, 1);
            return;
        };
        let mut s = [0u8; 8];
        for (i, b) in s.iter_mut().enumerate() {
            match byte(i) {
                Some(v) if len >= 8 => *b = *v,
                _ => {
                    results::add(result::MISMATCHES, 1);
                    return;
                }
            }
        }
        let seq = u64::from_le_bytes(s);
        let intact = (0..len - 8)
            .step_by(self.stride)
            .all(|i| byte(8 + i) == Some(&payload_byte(src, seq, i)));
        let good = seq == *next && intact && h.msg_id() == seq;
        *next = seq.wrapping_add(1);
        results::add(if good { result::OK } else { result::MISMATCHES }, 1);
    }
}
