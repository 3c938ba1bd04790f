//! [`Staging`]: host memory where a vsock port keeps the packets it took from its guest until
//! the switch has delivered them, so the guest's tx descriptors go back at once; with it, how a
//! delivered piece is read back ([`read_piece`]) and the [`Port`](crate::port::Port) methods
//! that every port built on a `Staging` answers the same way (`staged_port_memory!`,
//! `ringless_port!`).

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::port::PortId;
use crate::virtio::{DeliverError, DeviceError, GuestView, Payload, TxChain};
use crate::vsock::endpoint::Endpoint;
use crate::vsock::packet::{Op, PacketHeader, HEADER_LEN};
use crate::wire::{MsgHeader, MsgKind, HEADER_SIZE};

/// Most payload in one staged piece. Packets the guest sends (up to 64 KiB) are cut into
/// pieces of this size before they are staged; a receiver whose rx buffers are smaller (Linux
/// posts 4 KiB buffers that also hold the header, or a little less) gets a piece in parts.
pub const PIECE_PAYLOAD: u32 = 4096;

/// Bytes of one slot: vmq's message header, the vsock header, one piece of payload.
pub const SLOT_SIZE: u64 = (HEADER_SIZE + HEADER_LEN) as u64 + PIECE_PAYLOAD as u64;

/// Most slots a staging area may have (slot numbers are `u16`).
pub const MAX_SLOTS: u32 = u16::MAX as u32;

/// What [`Staging::stage_owed`] staged.
#[derive(Debug, Default, Clone, Copy)]
pub struct Owed {
    /// Packets staged.
    pub packets: usize,
    /// Whether one carried data (room came back in the endpoint's send buffer).
    pub data: bool,
}

/// Fixed-size slots in anonymous host memory (reserved, touched only as used), each one staged
/// piece. Bound: `slots * SLOT_SIZE` bytes per port.
#[derive(Debug)]
pub struct Staging {
    view: GuestView<GuestMemoryMmap>,
    slot_size: u64,
    /// Numbers the one-way pieces staged (their `msg_id`), so a receiver can tell them apart.
    next_piece: u64,
    /// One packet's payload on its way from an endpoint into a slot.
    scratch: Vec<u8>,
    free: Vec<u16>,
    in_use: Vec<bool>,
}

impl Staging {
    /// `slots` slots of [`SLOT_SIZE`] (at most [`MAX_SLOTS`]).
    pub fn new(slots: u32) -> std::io::Result<Self> {
        Self::with_slot_size(slots, SLOT_SIZE)
    }

    /// `slots` slots of `slot_size` bytes each (a service's staged requests are whole
    /// messages, not pieces). Bound: `slots * slot_size` bytes.
    pub fn with_slot_size(slots: u32, slot_size: u64) -> std::io::Result<Self> {
        let slots = slots.clamp(1, MAX_SLOTS);
        let slot_size = slot_size.max(SLOT_SIZE);
        let mem =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (slots as u64 * slot_size) as usize)])
                .map_err(|e| std::io::Error::other(format!("staging memory: {e}")))?;
        Ok(Self {
            view: GuestView::new(mem),
            slot_size,
            next_piece: 0,
            scratch: Vec::with_capacity(PIECE_PAYLOAD as usize),
            free: (0..slots as u16).rev().collect(),
            in_use: vec![false; slots as usize],
        })
    }

    /// The memory slots live in.
    pub fn view(&self) -> &GuestView<GuestMemoryMmap> {
        &self.view
    }

    /// Slots free now.
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// Bytes of one slot.
    pub fn slot_size(&self) -> u64 {
        self.slot_size
    }

    /// Slots in all.
    pub fn slots(&self) -> usize {
        self.in_use.len()
    }

    /// Slots staged now (held by the switch until it releases them).
    pub fn in_use(&self) -> usize {
        self.slots() - self.free()
    }

    /// Takes a slot; returns its number and address.
    pub fn take(&mut self) -> Option<(u16, u64)> {
        let i = self.free.pop()?;
        self.in_use[i as usize] = true;
        Some((i, i as u64 * self.slot_size))
    }

    /// Gives slot `i` back; `false` if it was not taken (a double release).
    pub fn give_back(&mut self, i: u16) -> bool {
        match self.in_use.get_mut(i as usize) {
            Some(used) if *used => {
                *used = false;
                self.free.push(i);
                true
            }
            _ => false,
        }
    }

    /// Copies a staged piece's payload into `buf` ([`crate::port::Port::copy_payload`]).
    pub fn copy_payload(&self, msg: &TxChain, buf: &mut [u8]) -> Result<usize, DeviceError> {
        msg.payload(&self.view)
            .copy_to(buf)
            .map_err(|_| DeviceError::Broken)
    }

    /// Gives a staged piece's slot back ([`crate::port::Port::release`]); a second release
    /// of the same piece is logged for `who` and changes nothing.
    pub fn release(&mut self, msg: &TxChain, who: std::fmt::Arguments<'_>) {
        if !self.give_back(msg.head) {
            log::error!("{who}: piece {} released twice", msg.head);
        }
    }

    /// Stages message `msg` (its length set here) with its payload `parts` one after another;
    /// `None` when no slot is free or the parts do not fit one.
    pub fn stage(&mut self, mut msg: MsgHeader, parts: &[&[u8]]) -> Option<TxChain> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if (HEADER_SIZE + len) as u64 > self.slot_size {
            return None;
        }
        let (slot, addr) = self.take()?;
        msg.set_len(len as u32);
        let mut at = addr;
        let mut ok = self.view.write(at, &msg.to_bytes());
        at += HEADER_SIZE as u64;
        for p in parts {
            ok = ok && self.view.write(at, p);
            at += p.len() as u64;
        }
        if !ok {
            self.give_back(slot);
            return None;
        }
        Some(TxChain::in_span(slot, msg, addr))
    }

    /// Stages one vsock packet (`hdr` and its `payload`) for port `to` as a one-way piece.
    pub fn stage_piece(
        &mut self,
        to: PortId,
        hdr: &PacketHeader,
        payload: &[u8],
    ) -> Option<TxChain> {
        let id = self.next_piece;
        self.next_piece = self.next_piece.wrapping_add(1);
        let msg = MsgHeader::new(MsgKind::OneWay, to, id, 0);
        self.stage(msg, &[&hdr.encode(), payload])
    }

    /// Stages what `ep` owes its guest, for that guest's port `to`: at most `max` packets,
    /// leaving `keep_free` slots free.
    pub fn stage_owed(
        &mut self,
        ep: &mut Endpoint,
        to: PortId,
        max: usize,
        keep_free: usize,
        sent: &mut Vec<TxChain>,
    ) -> Owed {
        let mut owed = Owed::default();
        let mut scratch = std::mem::take(&mut self.scratch);
        while owed.packets < max && self.free() > keep_free {
            let Some(hdr) = ep.next_packet_into(PIECE_PAYLOAD, &mut scratch) else {
                break;
            };
            // A slot is free (checked above) and a piece fits one.
            let Some(chain) = self.stage_piece(to, &hdr, &scratch) else {
                break;
            };
            sent.push(chain);
            owed.packets += 1;
            owed.data |= hdr.op == Op::Rw as u16;
        }
        self.scratch = scratch;
        owed
    }

    /// Writes `parts` one after another at `addr` (inside a slot taken).
    pub fn write(&self, mut addr: u64, parts: &[&[u8]]) -> bool {
        for p in parts {
            if !self.view.write(addr, p) {
                return false;
            }
            addr += p.len() as u64;
        }
        true
    }
}

/// One staged piece as it reaches the port it was for: a vsock packet header and its payload.
pub type Piece = [u8; HEADER_LEN + PIECE_PAYLOAD as usize];

/// Copies a delivered piece into `buf` and decodes its header. `Ok(None)`: not a whole piece
/// (too short or long, a header that does not decode, or a `len` other than the payload's).
pub fn read_piece<'b>(
    payload: &Payload<'_, GuestMemoryMmap>,
    buf: &'b mut Piece,
) -> Result<Option<(PacketHeader, &'b [u8])>, DeliverError> {
    let len = payload.len() as usize;
    if len < HEADER_LEN || len > buf.len() {
        return Ok(None);
    }
    payload.copy_to(buf).map_err(DeliverError::Source)?;
    Ok(PacketHeader::decode(&buf[..HEADER_LEN])
        .ok()
        .filter(|h| h.len as usize == len - HEADER_LEN)
        .map(|h| (h, &buf[HEADER_LEN..len])))
}

/// [`read_piece`] for a port that takes pieces of one VM's connections to one CID only (a
/// guest's host side, a service backend): `Ok(None)` also when the header's source CID is not
/// `src` or its destination CID not `dst`. The network routes by CID, but a piece that says
/// otherwise was not meant for this port and is refused rather than trusted.
pub fn read_piece_between<'b>(
    payload: &Payload<'_, GuestMemoryMmap>,
    buf: &'b mut Piece,
    src: u64,
    dst: u64,
) -> Result<Option<(PacketHeader, &'b [u8])>, DeliverError> {
    Ok(read_piece(payload, buf)?.filter(|(h, _)| h.src_cid == src && h.dst_cid == dst))
}

/// The [`Port`](crate::port::Port) methods of a port whose messages all live in its
/// [`Staging`] (a field named `staging`): its memory, how many it may hold (one per slot), and
/// copying a payload out. Every vsock port answers these the same way; invoke inside its
/// `impl Port<GuestMemoryMmap>`.
macro_rules! staged_port_memory {
    () => {
        fn memory(&self) -> &$crate::virtio::GuestView<::vm_memory::GuestMemoryMmap> {
            self.staging.view()
        }

        fn max_held(&self) -> u32 {
            self.staging.slots() as u32
        }

        fn copy_payload(
            &mut self,
            msg: &$crate::virtio::TxChain,
            buf: &mut [u8],
        ) -> Result<usize, $crate::virtio::DeviceError> {
            self.staging.copy_payload(msg, buf)
        }
    };
}
pub(crate) use staged_port_memory;

/// The [`Port`](crate::port::Port) methods of a port with no guest rings of its own (a guest's
/// host side, the ports of a service): nothing to publish or notify, no kicks to disarm, and
/// no vCPU of vmq's to watch (a backend VM's vCPUs are threads of its VMM's process, which vmq
/// does not see). Invoke inside its `impl Port<GuestMemoryMmap>`.
macro_rules! ringless_port {
    () => {
        fn publish(&mut self) -> bool {
            false
        }

        fn notify(&self) {}

        fn disarm_kicks(&mut self) {}

        fn run_queue_wait_ns(&self) -> Option<u64> {
            None
        }
    };
}
pub(crate) use ringless_port;
