//! `peer`: VM-to-VM unicast. Sends one-way messages to a port while receiving, and checks that
//! the messages of every sender arrive in order and intact.
//!
//! Message `seq` (0, 1, ...) from the peer with port id `src` carries `SIZE` payload bytes
//! (at least 8): `seq` as a little-endian `u64`, then byte `i` = `payload_byte(src, seq, i)`;
//! its `msg_id` is `seq`. The peer waits for the switch's hello (its port id) before sending.
//!
//! Parameters (`abi::image::peer::param`): `COUNT` messages to the port (VM) named by `TARGET`
//! (a name parameter, looked up in the switch's directory once it names it); `EXPECT`
//! messages to receive; `SIZE`; `WAIT`; `QUEUE_SIZE`.
//!
//! Results: `result::SENT`, `result::RECEIVED`, `result::OK` (in order and intact), `result::MISMATCHES`
//! (out of order or corrupt), `result::DUPLICATES` (senders with port ids >= 64, which it cannot
//! track), `result::ERRORS` (error notices from the switch: undeliverable messages), `result::KICKS`,
//! `result::WAITS`, `result::WAIT_TIMEOUTS`, `result::PORT_ID`, `result::RING_ERRORS`.
//!
//! Exits once it sent `COUNT` messages, the switch took them all, and it received `EXPECT`:
//! 0 if everything arrived in order and intact, else `exit::MISMATCH`, `exit::DUPLICATE` or
//! `exit::UNDELIVERED`.
#![no_std]
#![no_main]

use guest_rt::abi::image::peer::{param, payload_byte, result};
use guest_rt::abi::image::{exit, MAX_GUEST_PAYLOAD};
use guest_rt::abi::platform::BootBlock;
use guest_rt::results;
use guest_rt::virtio::{on_error, probe_or_exit, FreeMem, Vmq};
use vmq::wire::directory::EntryKind;
use vmq::wire::{MsgHeader, MsgKind, Status};

guest_rt::entry!(main);

const MAX: usize = MAX_GUEST_PAYLOAD as usize + 1024;
const SENDERS: usize = 64;

struct Peer {
    dev: Vmq,
    next_seq: [u64; SENDERS],
    received: u64,
}

fn main(bb: &BootBlock) -> u32 {
    let p = &bb.params;
    let size = p[param::SIZE].max(8);
    if size > MAX_GUEST_PAYLOAD {
        return exit::BAD_PARAM;
    }
    let (count, expect) = (p[param::COUNT], p[param::EXPECT]);
    let target = guest_rt::param_name(bb, param::TARGET);
    if count > 0 && target.is_none() {
        return exit::BAD_PARAM;
    }
    let mut free = FreeMem::new(bb);
    let dev = probe_or_exit(bb, &mut free, size);
    let mut peer = Peer {
        dev,
        next_seq: [0; SENDERS],
        received: 0,
    };
    let mut buf = [0u8; MAX];
    let mut payload = [0u8; MAX];
    let size = size as usize;
    let mut seq = 0u64;
    let mut dst = None;
    loop {
        let mut progress = peer.receive(&mut buf);
        if dst.is_none() {
            dst = target.and_then(|t| peer.dev.lookup(EntryKind::Port, t));
        }
        if let Err(e) = peer.dev.tx.reclaim() {
            on_error(e.into());
        }
        if let (Some(me), Some(dst)) = (peer.dev.port_id(), dst) {
            while seq < count && peer.dev.tx.free() > 0 {
                payload[..8].copy_from_slice(&seq.to_le_bytes());
                for (i, b) in payload[8..size].iter_mut().enumerate() {
                    *b = payload_byte(me, seq, i);
                }
                let hdr = MsgHeader::new(MsgKind::OneWay, dst, seq, size as u32);
                if let Err(e) = peer.dev.tx.send(&hdr, &payload[..size]) {
                    on_error(e.into());
                    break;
                }
                seq += 1;
                results::add(result::SENT, 1);
                progress = true;
            }
        }
        if let Err(e) = peer.dev.flush_tx() {
            on_error(e.into());
        }
        let sent_all = seq >= count;
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

impl Peer {
    fn receive(&mut self, buf: &mut [u8]) -> bool {
        let mut any = false;
        while let Some(m) = self.dev.next_message(buf, &mut any) {
            let h = m.header;
            match h.kind() {
                Some(MsgKind::Hello | MsgKind::DirectoryUpdate) => {
                    self.dev.note_switch(&h, &buf[..m.len]);
                }
                Some(MsgKind::OneWay) => self.one_way(&h, &buf[..m.len]),
                _ if h.status() != Some(Status::Ok) => results::add(result::ERRORS, 1),
                _ => results::add(result::RING_ERRORS, 1),
            }
        }
        if let Err(e) = self.dev.flush_rx() {
            on_error(e.into());
        }
        any
    }

    fn one_way(&mut self, h: &MsgHeader, payload: &[u8]) {
        self.received += 1;
        results::add(result::RECEIVED, 1);
        let src = h.src();
        let Some(next) = self.next_seq.get_mut(src as usize) else {
            results::add(result::DUPLICATES, 1);
            return;
        };
        let Some(head) = payload.get(..8) else {
            results::add(result::MISMATCHES, 1);
            return;
        };
        let mut s = [0u8; 8];
        s.copy_from_slice(head);
        let seq = u64::from_le_bytes(s);
        let intact = payload[8..]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == payload_byte(src, seq, i));
        let good = seq == *next && intact && h.msg_id() == seq;
        *next = seq.wrapping_add(1);
        results::add(if good { result::OK } else { result::MISMATCHES }, 1);
    }
}
