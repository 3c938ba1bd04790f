//! [`DevicePort`]: one VM's rx and tx queues, device side.

use vm_memory::GuestMemoryBackend;

use super::chain::{self, ChainError, Seg};
use super::tx_chain::parse_tx_chain;
use super::{DeviceError, DeviceQueue, Payload, TxChain};
use crate::virtio::vmq_device::{RX_QUEUE, TX_QUEUE};
use crate::virtio::GuestView;
use crate::wire::{MsgHeader, Status, HEADER_SIZE};

/// Why a delivery did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliverError {
    /// The destination has no rx buffer posted: back-pressure, try later.
    NoBuffer,
    /// The destination port broke the protocol (and is now marked broken).
    Dest(DeviceError),
    /// The source chain changed under us and no longer walks (the source broke the protocol).
    Source(ChainError),
}

/// Per-port counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortCounters {
    /// Chains popped from tx.
    pub tx_chains: u64,
    /// Bytes of header + payload popped from tx.
    pub tx_bytes: u64,
    /// Deliveries written into rx.
    pub rx_chains: u64,
    /// Bytes written into rx.
    pub rx_bytes: u64,
    /// Deliveries that found no rx buffer.
    pub rx_no_buffer: u64,
    /// Deliveries cut to a header because the rx buffer was too small.
    pub rx_too_small: u64,
    /// Guest notifications (interrupts) the port asked for.
    pub notifies: u64,
    /// Guest notifications EVENT_IDX suppressed.
    pub notifies_suppressed: u64,
    /// Protocol faults by the guest (bad chains, bad headers, index jumps).
    pub faults: u64,
}

/// One VM's port: its rx and tx virtqueues over its guest memory, seen from the device.
pub struct DevicePort<M> {
    mem: GuestView<M>,
    rx: DeviceQueue,
    tx: DeviceQueue,
    rx_segs: Vec<Seg>,
    /// Tx heads taken and not yet returned, one bit per descriptor: a head the device holds
    /// cannot be taken again, so what a guest has in flight is bounded by its tx queue size.
    tx_held: Vec<u64>,
    broken: bool,
    counters: PortCounters,
}

impl<M: GuestMemoryBackend> DevicePort<M> {
    /// A port over the queues the driver configured and made ready; refuses them (with
    /// [`DeviceError::Queue`]) unless every ring part lies in `mem`.
    pub fn new(mem: M, rx: DeviceQueue, tx: DeviceQueue) -> Result<Self, DeviceError> {
        let mem = GuestView::new(mem);
        for (queue, q) in [(RX_QUEUE, &rx), (TX_QUEUE, &tx)] {
            q.check_memory(&mem)
                .map_err(|source| DeviceError::Queue { queue, source })?;
        }
        let rx_segs = Vec::with_capacity(rx.size() as usize);
        let tx_held = vec![0; (tx.size() as usize).div_ceil(64)];
        Ok(Self {
            mem,
            rx,
            tx,
            rx_segs,
            tx_held,
            broken: false,
            counters: PortCounters::default(),
        })
    }

    /// The port's guest memory.
    pub fn memory(&self) -> &M {
        self.mem.memory()
    }
    /// The port's guest memory with its host view (what payloads are read through).
    pub fn view(&self) -> &GuestView<M> {
        &self.mem
    }
    /// Counters so far.
    pub fn counters(&self) -> PortCounters {
        self.counters
    }
    /// Whether a guest fault has marked the port broken (DEVICE_NEEDS_RESET).
    pub fn is_broken(&self) -> bool {
        self.broken
    }
    /// Size of the rx queue.
    pub fn rx_queue_size(&self) -> u16 {
        self.rx.size()
    }
    /// The rx queue.
    pub fn rx_queue(&self) -> &DeviceQueue {
        &self.rx
    }
    /// The tx queue.
    pub fn tx_queue(&self) -> &DeviceQueue {
        &self.tx
    }

    fn fault(&mut self, e: DeviceError) -> DeviceError {
        self.broken = true;
        self.counters.faults += 1;
        e
    }

    /// Pops the next message from the tx queue, walks and validates its chain and header.
    ///
    /// Returns `Ok(None)` when the queue is empty. Any guest fault marks the port broken.
    pub fn pop_tx(&mut self) -> Result<Option<TxChain>, DeviceError> {
        let mut out = None;
        self.pop_tx_batch(1, |c| out = Some(c))?;
        Ok(out)
    }

    /// Pops up to `max` messages, handing each to `sink`; returns how many. Reads the guest's
    /// avail index once for the whole batch. A bounded `max` keeps one busy port from
    /// starving the others.
    ///
    /// On a guest fault the chains already handed to `sink` stay valid, the port is marked
    /// broken and the error returned.
    pub fn pop_tx_batch<F>(&mut self, max: usize, mut sink: F) -> Result<usize, DeviceError>
    where
        F: FnMut(TxChain),
    {
        if self.broken {
            return Err(DeviceError::Broken);
        }
        let desc_table = self.tx.desc_table();
        let qsize = self.tx.size();
        let ready = match self.tx.avail_ready(&self.mem, true) {
            Ok(r) => r as usize,
            Err(_) => return Err(self.fault(DeviceError::AvailIndexJump { queue: TX_QUEUE })),
        };
        let mut n = 0;
        let mut fault = None;
        while n < max.min(ready) {
            let Some(head) = self.tx.pop_avail(&self.mem) else {
                fault = Some(DeviceError::Ring {
                    queue: TX_QUEUE,
                    reason: "avail ring unreadable".into(),
                });
                break;
            };
            let (word, bit) = (head as usize / 64, 1u64 << (head % 64));
            if self.tx_held.get(word).is_some_and(|w| w & bit != 0) {
                fault = Some(DeviceError::HeldHead {
                    queue: TX_QUEUE,
                    head,
                });
                break;
            }
            match parse_tx_chain(&self.mem, desc_table, qsize, head) {
                Ok(c) => {
                    if let Some(w) = self.tx_held.get_mut(word) {
                        *w |= bit;
                    }
                    self.counters.tx_chains += 1;
                    self.counters.tx_bytes += HEADER_SIZE as u64 + c.header.len() as u64;
                    sink(c);
                    n += 1;
                }
                Err(e) => {
                    fault = Some(e);
                    break;
                }
            }
        }
        match fault {
            Some(e) => Err(self.fault(e)),
            None => Ok(n),
        }
    }

    /// Copies the payload of `chain` (popped from this port) into `buf`; returns its length.
    ///
    /// A broken port refuses with [`DeviceError::Broken`], like every other guest-facing call:
    /// its guest may be rewriting the chain, and a second walk must not count a second fault.
    pub fn read_payload(&mut self, chain: &TxChain, buf: &mut [u8]) -> Result<usize, DeviceError> {
        if self.broken {
            return Err(DeviceError::Broken);
        }
        let len = chain.header.len() as usize;
        let Some(out) = buf.get_mut(..len) else {
            return Err(DeviceError::Ring {
                queue: TX_QUEUE,
                reason: format!(
                    "payload of {len} bytes does not fit a {}-byte buffer",
                    buf.len()
                ),
            });
        };
        match chain.payload(&self.mem).copy_to(out) {
            Ok(n) => Ok(n),
            Err(e) => Err(self.fault(e.into())),
        }
    }

    /// Returns a tx chain to the guest (used ring, length 0: the device wrote nothing).
    pub fn complete_tx(&mut self, head: u16) -> Result<(), DeviceError> {
        if self.broken {
            return Err(DeviceError::Broken);
        }
        if self.tx.push_used(&self.mem, head, 0) {
            if let Some(w) = self.tx_held.get_mut(head as usize / 64) {
                *w &= !(1u64 << (head % 64));
            }
            Ok(())
        } else {
            Err(self.fault(DeviceError::Ring {
                queue: TX_QUEUE,
                reason: format!("cannot return chain {head} on the used ring"),
            }))
        }
    }

    /// Tx messages taken and not returned yet.
    pub fn tx_held(&self) -> u32 {
        self.tx_held.iter().map(|w| w.count_ones()).sum()
    }

    /// Rx buffers the guest has posted and the device has not used yet.
    pub fn rx_buffers_available(&self) -> u16 {
        self.rx
            .avail_idx(&self.mem)
            .map(|idx| idx.wrapping_sub(self.rx.next_avail()))
            .unwrap_or(0)
    }

    /// The guest's rx avail index: it moves each time the guest re-posts a buffer, i.e. each
    /// time it consumes a delivery. A backend whose index stands still while work waits for it
    /// has stopped draining.
    pub fn rx_consumer_index(&self) -> u16 {
        self.rx.avail_idx(&self.mem).unwrap_or(0)
    }

    /// Writes `header` and `payload` into the next rx buffer the guest posted and puts it on
    /// the used ring. Returns the bytes written.
    ///
    /// If the buffer cannot hold the message, only the header goes in, with status
    /// [`Status::TooLarge`] and length 0 (the caller learns it from the returned `false`).
    pub fn deliver<S>(
        &mut self,
        header: &MsgHeader,
        payload: &Payload<'_, S>,
    ) -> Result<(u32, bool), DeliverError>
    where
        S: GuestMemoryBackend,
    {
        if self.broken {
            return Err(DeliverError::Dest(DeviceError::Broken));
        }
        match self.rx.avail_ready(&self.mem, false) {
            Ok(0) => {
                self.counters.rx_no_buffer += 1;
                return Err(DeliverError::NoBuffer);
            }
            Ok(_) => {}
            Err(_) => {
                return Err(DeliverError::Dest(
                    self.fault(DeviceError::AvailIndexJump { queue: RX_QUEUE }),
                ))
            }
        }
        let Some(head) = self.rx.pop_avail(&self.mem) else {
            return Err(DeliverError::Dest(self.fault(DeviceError::Ring {
                queue: RX_QUEUE,
                reason: "avail ring unreadable".into(),
            })));
        };
        self.rx_segs.clear();
        let segs = &mut self.rx_segs;
        let walked = chain::walk(
            &self.mem,
            self.rx.desc_table(),
            self.rx.size(),
            head,
            true,
            |s| segs.push(s),
        );
        let capacity = match walked {
            Ok(c) => c as u64,
            Err(e) => return Err(DeliverError::Dest(self.fault(e.into()))),
        };
        let needed = HEADER_SIZE as u64 + payload.len() as u64;
        let fits = capacity >= needed;
        // A page run is written without a chain walk to vouch for it: every page's share must
        // read before anything is written.
        if fits {
            if let Payload::Pages { mem, .. } = payload {
                let mut bad = None;
                payload.for_each_page_span(|addr, _, n| {
                    if bad.is_none() && !mem.in_range(addr, n as u32) {
                        bad = Some(ChainError::BufferOutOfRange {
                            addr,
                            len: n as u32,
                        });
                    }
                });
                if let Some(e) = bad {
                    // Undo the pop: the rx buffer is still the guest's to use.
                    self.rx.unpop_avail();
                    return Err(DeliverError::Source(e));
                }
            }
        }
        let mut w = ChainWriter::new(&self.mem, &self.rx_segs);
        let written = if fits {
            w.write(&header.to_bytes());
            match payload {
                Payload::Bytes(b) => w.write(b),
                Payload::Chain { mem, chain } => {
                    let r = chain.for_each_payload_span(*mem, |addr, n| w.copy_from(*mem, addr, n));
                    if let Err(e) = r {
                        // Undo the pop: the rx buffer is still the guest's to use.
                        self.rx.unpop_avail();
                        return Err(DeliverError::Source(e));
                    }
                }
                Payload::Pages { mem, .. } => {
                    payload.for_each_page_span(|addr, _, n| w.copy_from(*mem, addr, n as u64));
                }
            }
            needed as u32
        } else {
            self.counters.rx_too_small += 1;
            let mut h = *header;
            h.set_len(0);
            h.set_status(Status::TooLarge);
            if capacity >= HEADER_SIZE as u64 {
                w.write(&h.to_bytes());
                HEADER_SIZE as u32
            } else {
                0
            }
        };
        if !self.rx.push_used(&self.mem, head, written) {
            return Err(DeliverError::Dest(self.fault(DeviceError::Ring {
                queue: RX_QUEUE,
                reason: format!("cannot return chain {head} on the used ring"),
            })));
        }
        self.counters.rx_chains += 1;
        self.counters.rx_bytes += written as u64;
        Ok((written, fits))
    }

    /// After a batch of [`DevicePort::deliver`]s: makes them visible to the guest (one used
    /// index store for the batch) and returns whether the guest asked to be notified
    /// (EVENT_IDX `used_event`). Deliveries are not visible before this is called.
    pub fn publish_rx(&mut self) -> bool {
        let r = self.rx.publish_used(&self.mem);
        self.count_notify(r)
    }

    /// After a batch of [`DevicePort::complete_tx`]s: returns the chains to the guest (one used
    /// index store) and says whether it asked to be notified.
    pub fn publish_tx(&mut self) -> bool {
        let r = self.tx.publish_used(&self.mem);
        self.count_notify(r)
    }

    fn count_notify(&mut self, r: Option<bool>) -> bool {
        match r {
            Some(true) => {
                self.counters.notifies += 1;
                true
            }
            Some(false) => {
                self.counters.notifies_suppressed += 1;
                false
            }
            None => false,
        }
    }

    /// The state of `queue` ([`RX_QUEUE`], else the tx queue) and the memory its rings are in.
    fn queue_and_memory(&mut self, queue: u16) -> (&mut DeviceQueue, &GuestView<M>) {
        let q = if queue == RX_QUEUE {
            &mut self.rx
        } else {
            &mut self.tx
        };
        (q, &self.mem)
    }

    /// Asks the guest to kick when it adds to `queue` (before the device sleeps). Returns
    /// whether entries are already waiting, in which case the device should not sleep.
    pub fn enable_kicks(&mut self, queue: u16) -> Result<bool, DeviceError> {
        let (q, mem) = self.queue_and_memory(queue);
        q.enable_kicks(mem).ok_or_else(|| DeviceError::Ring {
            queue,
            reason: "cannot arm kicks: the ring's event field or index is not accessible".into(),
        })
    }

    /// Tells the guest not to kick for `queue` (the device is polling it).
    pub fn disable_kicks(&mut self, queue: u16) -> Result<(), DeviceError> {
        let (q, mem) = self.queue_and_memory(queue);
        q.disable_kicks(mem).ok_or_else(|| DeviceError::Ring {
            queue,
            reason: "cannot disarm kicks: the used ring's flags are not accessible".into(),
        })
    }
}

/// Writes bytes across the writable buffers of an rx chain, in order.
struct ChainWriter<'a, M> {
    mem: &'a GuestView<M>,
    segs: &'a [Seg],
    seg: usize,
    off: u64,
}

impl<'a, M: GuestMemoryBackend> ChainWriter<'a, M> {
    fn new(mem: &'a GuestView<M>, segs: &'a [Seg]) -> Self {
        Self {
            mem,
            segs,
            seg: 0,
            off: 0,
        }
    }

    /// The next span of the current buffer, at most `max` bytes.
    fn span(&mut self, max: u64) -> Option<(u64, u64)> {
        while let Some(s) = self.segs.get(self.seg) {
            let room = s.len as u64 - self.off;
            if room > 0 {
                let n = room.min(max);
                let addr = s.addr + self.off;
                self.off += n;
                return Some((addr, n));
            }
            self.seg += 1;
            self.off = 0;
        }
        None
    }

    // Ranges were checked by the walker, so writes cannot fail short of a concurrent unmap;
    // then the copy stops short, touching nothing outside either memory.
    fn write(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let Some((addr, n)) = self.span(data.len() as u64) else {
                return;
            };
            let (now, rest) = data.split_at(n as usize);
            self.mem.write(addr, now);
            data = rest;
        }
    }

    fn copy_from<S: GuestMemoryBackend>(
        &mut self,
        src: &GuestView<S>,
        mut addr: u64,
        mut len: u64,
    ) {
        while len > 0 {
            let Some((dst, n)) = self.span(len) else {
                return;
            };
            self.mem.copy_from(src, addr, dst, n);
            addr += n;
            len -= n;
        }
    }
}
