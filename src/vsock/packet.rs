//! The virtio-vsock packet header: codec over plain bytes, the checks a guest cannot bypass, and
//! the splitting of one packet over several smaller receive buffers.
//!
//! The header is 44 bytes, little endian (virtio spec 1.2, 5.10.6):
//! `src_cid u64, dst_cid u64, src_port u32, dst_port u32, len u32, type u16, op u16, flags u32,
//! buf_alloc u32, fwd_cnt u32`, followed by `len` payload bytes.
//!
//! [`PacketHeader::decode`] only needs 44 bytes and never fails on field values, so a junk packet
//! can still be answered (RST) and counted; [`PacketHeader::validate`] is the gate every packet
//! from a guest goes through before any state looks at it.

use std::ops::Range;

/// Size of the encoded header in bytes.
pub const HEADER_LEN: usize = 44;
/// The largest payload one packet may carry: Linux's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE` (64 KiB).
/// A Linux guest never sends more in one packet; anything above is hostile.
pub const MAX_PAYLOAD: u32 = 64 * 1024;
/// The host's CID (`VMADDR_CID_HOST`).
pub const HOST_CID: u64 = 2;
/// `VMADDR_CID_ANY`: a wildcard, never a packet's destination.
pub const CID_ANY: u64 = u32::MAX as u64;
/// Whether `cid` can be a guest's own CID: not 0 (hypervisor), 1 (local), 2 (host), and below
/// `VMADDR_CID_ANY` (Linux takes 32-bit CIDs).
pub fn is_guest_cid(cid: u64) -> bool {
    cid > HOST_CID && cid < CID_ANY
}

/// `VMADDR_PORT_ANY`: a wildcard, never a connected port.
pub const PORT_ANY: u32 = u32::MAX;

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;
/// Both shutdown directions.
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;
/// SEQPACKET RW flag: this packet ends a message.
pub const SEQ_EOM: u32 = 1;
/// SEQPACKET RW flag: this message ends a record (`MSG_EOR`); only together with [`SEQ_EOM`].
pub const SEQ_EOR: u32 = 2;

/// One end of a connection: a CID and a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockAddr {
    /// Context id (the VM, or 2 for the host).
    pub cid: u64,
    /// Port within that context.
    pub port: u32,
}

impl SockAddr {
    /// The address `cid:port`.
    pub fn new(cid: u64, port: u32) -> Self {
        Self { cid, port }
    }
}

/// A vsock socket type as carried in the header's `type` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum SocketType {
    /// `SOCK_STREAM`: a byte stream.
    Stream = 1,
    /// `SOCK_SEQPACKET`: messages with boundaries (feature `VIRTIO_VSOCK_F_SEQPACKET`).
    SeqPacket = 2,
}

impl SocketType {
    /// The type for a raw `type` field, `None` for a value the spec does not define.
    pub fn from_raw(raw: u16) -> Option<Self> {
        match raw {
            1 => Some(Self::Stream),
            2 => Some(Self::SeqPacket),
            _ => None,
        }
    }
}

/// A packet's operation (the header's `op` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Op {
    /// Connection request.
    Request = 1,
    /// Connection accepted.
    Response = 2,
    /// Connection reset (refusal or abort).
    Rst = 3,
    /// One or both directions shut down (see [`SHUTDOWN_RCV`], [`SHUTDOWN_SEND`]).
    Shutdown = 4,
    /// Data.
    Rw = 5,
    /// The sender's receive credit (`buf_alloc`, `fwd_cnt`), unsolicited or on request.
    CreditUpdate = 6,
    /// Asks the receiver to send a [`Op::CreditUpdate`].
    CreditRequest = 7,
}

impl Op {
    /// The op for a raw `op` field, `None` for a value the spec does not define (including 0,
    /// `VIRTIO_VSOCK_OP_INVALID`).
    pub fn from_raw(raw: u16) -> Option<Self> {
        Some(match raw {
            1 => Self::Request,
            2 => Self::Response,
            3 => Self::Rst,
            4 => Self::Shutdown,
            5 => Self::Rw,
            6 => Self::CreditUpdate,
            7 => Self::CreditRequest,
            _ => return None,
        })
    }
}

/// Why a packet header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Fewer than [`HEADER_LEN`] bytes.
    #[error("vsock header needs {HEADER_LEN} bytes, got {0}")]
    Truncated(usize),
    /// The `type` field is neither STREAM (1) nor SEQPACKET (2).
    #[error("unknown vsock socket type {0} (only 1 STREAM and 2 SEQPACKET exist)")]
    UnknownType(u16),
    /// The `op` field is not one of 1..=7.
    #[error("unknown vsock op {0} (only 1..=7 exist)")]
    UnknownOp(u16),
    /// `len` above [`MAX_PAYLOAD`].
    #[error("payload length {0} exceeds the {MAX_PAYLOAD}-byte maximum")]
    PayloadTooLong(u32),
    /// A non-RW packet with a payload.
    #[error("{op:?} packet announces {len} payload bytes; only RW carries data")]
    PayloadOnControl {
        /// The packet's op.
        op: Op,
        /// Its `len` field.
        len: u32,
    },
    /// An RW packet without payload: Linux never sends one, and accepting them would let a guest
    /// make the receiver track messages that cost it no credit.
    #[error("RW packet with an empty payload")]
    EmptyRw,
    /// Flag bits the op does not define, EOR without EOM, or a SHUTDOWN without a direction.
    #[error("flags {flags:#x} are meaningless on a {ty:?} {op:?} packet")]
    BadFlags {
        /// The packet's socket type.
        ty: SocketType,
        /// The packet's op.
        op: Op,
        /// Its `flags` field.
        flags: u32,
    },
    /// Destination CID 0 (hypervisor), 1 (local), `VMADDR_CID_ANY` or above 32 bits.
    #[error("destination CID {0} is reserved or out of range")]
    ReservedCid(u64),
    /// A source or destination port of `VMADDR_PORT_ANY`.
    #[error("port {PORT_ANY} (VMADDR_PORT_ANY) is not a connected port")]
    WildcardPort,
}

/// A decoded vsock packet header. `ty` and `op` stay raw so a header with unknown values can
/// still be answered and logged; [`validate`](Self::validate) types them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PacketHeader {
    /// Source CID. Never trusted from a guest: see [`stamp_source`](Self::stamp_source).
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length in bytes.
    pub len: u32,
    /// Socket type, raw ([`SocketType`]).
    pub ty: u16,
    /// Operation, raw ([`Op`]).
    pub op: u16,
    /// Op-specific flags.
    pub flags: u32,
    /// The sender's receive buffer size for this connection.
    pub buf_alloc: u32,
    /// Bytes the sender's application has consumed from this connection (wrapping).
    pub fwd_cnt: u32,
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl PacketHeader {
    /// A header with credit fields, flags and length zero.
    pub fn new(ty: SocketType, op: Op, src: SockAddr, dst: SockAddr) -> Self {
        Self {
            src_cid: src.cid,
            dst_cid: dst.cid,
            src_port: src.port,
            dst_port: dst.port,
            ty: ty as u16,
            op: op as u16,
            ..Self::default()
        }
    }

    /// Decodes the first [`HEADER_LEN`] bytes of `bytes`; any further bytes are ignored (they
    /// are the payload). Fails only on a short slice.
    pub fn decode(bytes: &[u8]) -> Result<Self, PacketError> {
        if bytes.len() < HEADER_LEN {
            return Err(PacketError::Truncated(bytes.len()));
        }
        Ok(Self {
            src_cid: le_u64(bytes, 0),
            dst_cid: le_u64(bytes, 8),
            src_port: le_u32(bytes, 16),
            dst_port: le_u32(bytes, 20),
            len: le_u32(bytes, 24),
            ty: le_u16(bytes, 28),
            op: le_u16(bytes, 30),
            flags: le_u32(bytes, 32),
            buf_alloc: le_u32(bytes, 36),
            fwd_cnt: le_u32(bytes, 40),
        })
    }

    /// The header's wire bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.ty.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// The source address.
    pub fn src(&self) -> SockAddr {
        SockAddr::new(self.src_cid, self.src_port)
    }

    /// The destination address.
    pub fn dst(&self) -> SockAddr {
        SockAddr::new(self.dst_cid, self.dst_port)
    }

    /// The typed socket type, if known.
    pub fn socket_type(&self) -> Option<SocketType> {
        SocketType::from_raw(self.ty)
    }

    /// The typed op, if known.
    pub fn operation(&self) -> Option<Op> {
        Op::from_raw(self.op)
    }

    /// Overwrites the source CID with the one the device knows the packet came from. A guest
    /// writes whatever it likes in `src_cid`; call this before anything reads it.
    pub fn stamp_source(&mut self, cid: u64) -> &mut Self {
        self.src_cid = cid;
        self
    }

    /// Checks everything a guest could get wrong on purpose and returns the typed type and op.
    ///
    /// Rules: known type and op; `len` ≤ [`MAX_PAYLOAD`], `len` > 0 exactly when the op is RW;
    /// flags: STREAM RW none, SEQPACKET RW only EOM/EOR with EOR implying EOM, SHUTDOWN a
    /// non-empty subset of RCV|SEND, every other op none; destination CID not 0, 1,
    /// `VMADDR_CID_ANY` and within 32 bits; neither port `VMADDR_PORT_ANY`. The source CID is
    /// not checked: it is stamped ([`stamp_source`](Self::stamp_source)), not trusted.
    pub fn validate(&self) -> Result<(SocketType, Op), PacketError> {
        let ty = self
            .socket_type()
            .ok_or(PacketError::UnknownType(self.ty))?;
        let op = self.operation().ok_or(PacketError::UnknownOp(self.op))?;
        if self.len > MAX_PAYLOAD {
            return Err(PacketError::PayloadTooLong(self.len));
        }
        match (op, self.len) {
            (Op::Rw, 0) => return Err(PacketError::EmptyRw),
            (Op::Rw, _) | (_, 0) => {}
            (op, len) => return Err(PacketError::PayloadOnControl { op, len }),
        }
        let flags_ok = match (op, ty) {
            (Op::Rw, SocketType::Stream) => self.flags == 0,
            (Op::Rw, SocketType::SeqPacket) => {
                self.flags & !(SEQ_EOM | SEQ_EOR) == 0
                    && (self.flags & SEQ_EOR == 0 || self.flags & SEQ_EOM != 0)
            }
            (Op::Shutdown, _) => {
                self.flags != 0 && self.flags & !(SHUTDOWN_RCV | SHUTDOWN_SEND) == 0
            }
            _ => self.flags == 0,
        };
        if !flags_ok {
            return Err(PacketError::BadFlags {
                ty,
                op,
                flags: self.flags,
            });
        }
        if self.dst_cid <= 1 || self.dst_cid >= CID_ANY {
            return Err(PacketError::ReservedCid(self.dst_cid));
        }
        if self.src_port == PORT_ANY || self.dst_port == PORT_ANY {
            return Err(PacketError::WildcardPort);
        }
        Ok((ty, op))
    }

    /// A header going back the way this one came (addresses swapped), same type, the given op,
    /// no payload, no flags, no credit.
    pub fn reply(&self, op: Op) -> Self {
        Self {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            ty: self.ty,
            op: op as u16,
            ..Self::default()
        }
    }

    /// The RST answering this packet, or `None` if it is itself an RST: answering RST with RST
    /// would let two ends bounce resets forever. An unknown socket type is answered as STREAM,
    /// so the reply is always a valid header.
    pub fn rst_reply(&self) -> Option<Self> {
        if self.op == Op::Rst as u16 {
            return None;
        }
        let mut rst = self.reply(Op::Rst);
        if self.socket_type().is_none() {
            rst.ty = SocketType::Stream as u16;
        }
        Some(rst)
    }

    /// The part of this RW packet that carries payload bytes `at..at + n`: its header, with
    /// message flags (EOM/EOR) only when the part ends the payload.
    pub fn part(&self, at: usize, n: usize) -> PacketHeader {
        let mut h = *self;
        h.len = n as u32;
        if at + n < self.len as usize {
            h.flags &= !(SEQ_EOM | SEQ_EOR);
        }
        h
    }

    /// Splits an RW packet of `self.len` bytes into packets of at most `max_payload` bytes each,
    /// for a receiver whose buffers are smaller than the packet (Linux guests post 4 KiB buffers
    /// but send up to 64 KiB). Each item is a header and the range of the original payload it
    /// carries; message flags (EOM/EOR) stay only on the last piece, as vhost-vsock does. A
    /// non-RW packet (or `max_payload` 0) comes out whole. At most
    /// `ceil(len / max_payload)` pieces.
    pub fn split(&self, max_payload: u32) -> Split {
        Split {
            hdr: *self,
            max: max_payload,
            at: 0,
            done: false,
        }
    }
}

/// Iterator over the pieces of a split packet: see [`PacketHeader::split`].
#[derive(Debug, Clone)]
pub struct Split {
    hdr: PacketHeader,
    max: u32,
    at: u32,
    done: bool,
}

impl Iterator for Split {
    type Item = (PacketHeader, Range<usize>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let whole = self.hdr.op != Op::Rw as u16 || self.max == 0 || self.hdr.len <= self.max;
        if whole {
            self.done = true;
            return Some((self.hdr, 0..self.hdr.len as usize));
        }
        let n = self.max.min(self.hdr.len - self.at);
        let piece = self.hdr.part(self.at as usize, n as usize);
        let start = self.at;
        self.at += n;
        self.done = self.at >= self.hdr.len;
        Some((piece, start as usize..self.at as usize))
    }
}
