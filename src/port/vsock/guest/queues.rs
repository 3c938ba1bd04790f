//! The device's rings of a [`VsockPort`]: the guest's tx queue taken, its rx queue filled with
//! switch deliveries and vmq's control packets, and the [`Port`] impl the switch drives.

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

use vhost_user_backend::VringT;
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryMmap};

use super::{VsockPort, MAX_PIECES};
use crate::port::vsock::{staged_port_memory, SharedQueues, PIECE_PAYLOAD};
use crate::port::{Drain, Port};
use crate::vhost_user::DeviceQueues;
use crate::virtio::{DeliverError, DeviceError, Payload, TxChain};
use crate::vsock::packet::{PacketHeader, HEADER_LEN};
use crate::wire::{MsgHeader, MsgKind};

impl VsockPort {
    /// Writes what vmq owes the guest (control packets) into its rx queue while it has buffers.
    fn flush_control(&mut self, q: &DeviceQueues, mem: &GuestMemoryMmap) {
        let mut control = self.me.control();
        if control.is_empty() {
            return;
        }
        let mut rx = q.rx().get_mut();
        let queue = rx.get_queue_mut();
        while let (true, Some(hdr)) = (queue.ready(), control.front()) {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let bytes = hdr.encode();
            let n = write_chain(mem, chain, &[&bytes]).unwrap_or_else(|| {
                self.me
                    .counters
                    .rx_too_small
                    .fetch_add(1, Ordering::Relaxed);
                0
            });
            if queue.add_used(mem, head, n as u32).is_err() {
                break;
            }
            self.rx_used = true;
            self.consumed = self.consumed.wrapping_add(1);
            control.pop_front();
        }
    }

    fn publish_queues(&mut self, q: &DeviceQueues) {
        for (used, index) in [
            (&mut self.rx_used, crate::vhost_user::RX_QUEUE),
            (&mut self.tx_used, crate::vhost_user::TX_QUEUE),
        ] {
            if std::mem::take(used) {
                if let Err(e) = q.notify_guest(index) {
                    log::warn!("vsock CID {}: cannot notify queue {index}: {e}", self.cid);
                }
            }
        }
    }
}

fn lock(shared: &SharedQueues) -> MutexGuard<'_, Option<DeviceQueues>> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes `parts` into the writable buffers of `chain`; returns the bytes written, or `None`
/// when they do not fit (nothing useful written) or the chain is bad.
fn write_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    parts: &[&[u8]],
) -> Option<usize> {
    let mut w = chain.writer(mem).ok()?;
    let total: usize = parts.iter().map(|p| p.len()).sum();
    if w.available_bytes() < total {
        return None;
    }
    for p in parts {
        w.write_all(p).ok()?;
    }
    Some(total)
}

/// Reads the readable buffers of `chain` into `buf` (at most its length); returns the bytes
/// read, or `None` for a bad chain.
fn read_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    buf: &mut [u8],
) -> Option<usize> {
    let mut r = chain.reader(mem).ok()?;
    let n = r.available_bytes().min(buf.len());
    r.read_exact(&mut buf[..n]).ok()?;
    Some(n)
}

impl Port<GuestMemoryMmap> for VsockPort {
    staged_port_memory!();

    fn take_sent(&mut self, max: usize, sent: &mut Vec<TxChain>) -> Result<usize, DeviceError> {
        let shared = self.shared();
        let guard = lock(&shared);
        let Some(q) = self.own(&guard) else {
            return Ok(0);
        };
        let mem_guard = q.memory().memory();
        let mem: &GuestMemoryMmap = &mem_guard;
        self.flush_control(q, mem);
        let before = sent.len();
        self.stage_owed_resets(sent);
        {
            let mut tx = q.tx().get_mut();
            let queue = tx.get_queue_mut();
            let mut taken = 0;
            while taken < max && queue.ready() && self.staging.free() >= MAX_PIECES {
                let Some(chain) = queue.pop_descriptor_chain(mem) else {
                    break;
                };
                let head = chain.head_index();
                let len = read_chain(mem, chain, &mut self.packet);
                // The bytes are ours now: the descriptors go straight back.
                if queue.add_used(mem, head, 0).is_err() {
                    return Err(self.broke());
                }
                self.tx_used = true;
                taken += 1;
                match len {
                    Some(n) => self.handle_packet(n, sent),
                    None => {
                        self.me.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        self.flush_control(q, mem);
        self.publish_queues(q);
        Ok(sent.len() - before)
    }

    fn release(&mut self, msg: &TxChain) -> Result<(), DeviceError> {
        self.staging
            .release(msg, format_args!("vsock CID {}", self.cid));
        Ok(())
    }

    fn deliver(
        &mut self,
        header: &MsgHeader,
        payload: &Payload<'_, GuestMemoryMmap>,
    ) -> Result<bool, DeliverError> {
        // Hellos and switch notices mean nothing to a vsock guest.
        if header.kind() != Some(MsgKind::OneWay) {
            return Ok(true);
        }
        let shared = self.shared();
        let guard = lock(&shared);
        let Some(q) = self.own(&guard) else {
            return Err(DeliverError::NoBuffer);
        };
        let len = payload.len() as usize;
        let mut piece = [0u8; HEADER_LEN + PIECE_PAYLOAD as usize];
        if len < HEADER_LEN || len > piece.len() {
            return Ok(false);
        }
        payload.copy_to(&mut piece).map_err(DeliverError::Source)?;
        let Ok(hdr) = PacketHeader::decode(&piece[..HEADER_LEN]) else {
            return Ok(false);
        };
        let mem_guard = q.memory().memory();
        let mem: &GuestMemoryMmap = &mem_guard;
        self.flush_control(q, mem);
        // A piece larger than the guest's rx buffers goes out in parts, each in one buffer with
        // its own header; message flags (EOM/EOR) only on the last. Parts already written when
        // the buffers ran out are remembered, and the switch offers the same piece again.
        let data = &piece[HEADER_LEN..len];
        let me = (header.src(), header.msg_id());
        let mut at = match self.carry.take() {
            Some((src, id, at)) if (src, id) == me && at <= data.len() => at,
            _ => 0,
        };
        let mut rx = q.rx().get_mut();
        let queue = rx.get_queue_mut();
        loop {
            let chain = match queue.ready().then(|| queue.pop_descriptor_chain(mem)) {
                Some(Some(chain)) => chain,
                _ => {
                    if !std::mem::replace(&mut self.rx_stalled, true) {
                        self.me.counters.rx_stalls.fetch_add(1, Ordering::Relaxed);
                    }
                    self.carry = (at > 0).then_some((me.0, me.1, at));
                    return Err(DeliverError::NoBuffer);
                }
            };
            self.rx_stalled = false;
            let head = chain.head_index();
            let part = chain.writer(mem).ok().and_then(|mut w| {
                let n = w
                    .available_bytes()
                    .checked_sub(HEADER_LEN)?
                    .min(data.len() - at);
                if n == 0 && !data.is_empty() {
                    return None;
                }
                let h = hdr.part(at, n);
                w.write_all(&h.encode()).ok()?;
                w.write_all(&data[at..at + n]).ok()?;
                Some(h)
            });
            let written = part.map_or(0, |h| HEADER_LEN + h.len as usize);
            if queue.add_used(mem, head, written as u32).is_err() {
                return Err(DeliverError::Dest(self.broke()));
            }
            self.rx_used = true;
            self.consumed = self.consumed.wrapping_add(1);
            let Some(part) = part else {
                // An rx buffer that cannot hold even a header and a byte: the connection
                // cannot go on. Both ends get an RST and the relay forgets it.
                self.me
                    .counters
                    .rx_too_small
                    .fetch_add(1, Ordering::Relaxed);
                drop(rx);
                self.reset_connection(&hdr, header.src());
                return Ok(false);
            };
            let c = &self.me.counters;
            c.rx_packets.fetch_add(1, Ordering::Relaxed);
            c.rx_bytes.fetch_add(u64::from(part.len), Ordering::Relaxed);
            if self.net.on_delivered(&part).is_err() {
                log::debug!("vsock CID {}: delivered more than was forwarded", self.cid);
            }
            at += part.len as usize;
            if at >= data.len() {
                return Ok(true);
            }
        }
    }

    fn publish(&mut self) -> bool {
        if !(self.rx_used || self.tx_used) {
            return false;
        }
        let shared = self.shared();
        let guard = lock(&shared);
        if let Some(q) = self.own(&guard) {
            self.publish_queues(q);
        }
        false
    }

    fn notify(&self) {}

    fn drain(&self) -> Drain {
        let guard = lock(&self.queues);
        let (free, capacity) = guard.as_ref().map_or((0, 0), |q| {
            let mem = q.memory().memory();
            let rx = q.rx().get_mut();
            let queue = rx.get_queue();
            let avail = queue
                .avail_idx(&*mem, Ordering::Acquire)
                .map_or(0, |a| a.0.wrapping_sub(queue.next_avail()));
            (avail, queue.size())
        });
        Drain {
            consumed: self.consumed,
            free,
            capacity,
            held: 0,
            ended: 0,
            broken: 0,
        }
    }

    fn arm_kicks(&mut self, rx_wanted: bool) -> bool {
        let shared = self.shared();
        let guard = lock(&shared);
        let Some(q) = self.own(&guard) else {
            return false;
        };
        let mem = q.memory().memory();
        let owed = !self.me.control().is_empty();
        let mut busy = false;
        {
            let mut tx = q.tx().get_mut();
            let queue = tx.get_queue_mut();
            if queue.ready() {
                busy |= queue.enable_notification(&*mem).unwrap_or(false)
                    && self.staging.free() >= MAX_PIECES;
            }
        }
        if rx_wanted || owed {
            let mut rx = q.rx().get_mut();
            let queue = rx.get_queue_mut();
            if queue.ready() {
                busy |= queue.enable_notification(&*mem).unwrap_or(false) && owed;
            }
        }
        busy
    }

    fn disarm_kicks(&mut self) {
        let guard = lock(&self.queues);
        let Some(q) = guard.as_ref() else {
            return;
        };
        let mem = q.memory().memory();
        for vring in [q.tx(), q.rx()] {
            let mut v = vring.get_mut();
            let queue = v.get_queue_mut();
            if queue.ready() {
                let _ = queue.disable_notification(&*mem);
            }
        }
    }

    fn run_queue_wait_ns(&self) -> Option<u64> {
        // The vCPUs run in another process (the VMM's); vmq cannot see their scheduling.
        None
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = self.me.counts();
        let (states, credit_stalls) = {
            let relay = self.net.relay();
            (relay.states_of(self.cid), relay.credit_stalls_of(self.cid))
        };
        let [requested, established, closing, closed] = states;
        vec![
            ("cid", c.cid),
            ("tx_packets", c.tx_packets),
            ("tx_bytes", c.tx_bytes),
            ("rx_packets", c.rx_packets),
            ("rx_bytes", c.rx_bytes),
            ("connections_opened", c.connections_opened),
            ("refused", c.refused),
            ("resets", c.resets),
            ("malformed", c.malformed),
            ("rx_stalls", c.rx_stalls),
            ("credit_stalls", credit_stalls),
            ("control_dropped", c.control_dropped),
            ("rx_too_small", c.rx_too_small),
            ("host_connections", c.host_connections),
            ("host_refused", c.host_refused),
            ("conns_requested", requested as u64),
            ("conns_established", established as u64),
            ("conns_closing", closing as u64),
            ("conns_closed", closed as u64),
            ("staged", self.staged() as u64),
        ]
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
