//! A connection vmq terminates itself: the peer is a guest, vmq is the other end (the host
//! side of a hybrid-vsock Unix socket, later a service or load balancer).
//!
//! Packets from the guest go in through [`Endpoint::on_packet`]; packets for the guest come out
//! of [`Endpoint::next_packet`] (call it until `None` whenever the guest has rx buffers); the
//! application side is [`write`](Endpoint::write) / [`write_message`](Endpoint::write_message),
//! [`read`](Endpoint::read) / [`read_message`](Endpoint::read_message),
//! [`shutdown`](Endpoint::shutdown) and [`reset`](Endpoint::reset).
//!
//! # Bounds
//!
//! - received and unread: at most `buf_alloc` bytes (the credit we advertise; a guest sending
//!   past it is reset), plus one small record per SEQPACKET message in it;
//! - written and unsent: at most `send_buf` bytes, plus one record per message;
//! - control owed to the guest: a few flags, never a queue. Whatever the guest sends, the
//!   endpoint's memory stays within these.
//!
//! A guest that breaks the protocol gets an RST (queued for [`next_packet`](Endpoint::next_packet))
//! and the endpoint closes; data already received stays readable. An orderly close is
//! [`shutdown`](Endpoint::shutdown)`(both)` followed by the guest's RST; the endpoint has no
//! clock, so the caller resets one that lingers (Linux waits 8 s).

pub use super::buffer::Message;
use super::buffer::{RecvBuffer, SendBuffer};
use super::credit::{Credit, CreditError};
use super::packet::{
    Op, PacketError, PacketHeader, SockAddr, SocketType, MAX_PAYLOAD, SHUTDOWN_RCV, SHUTDOWN_SEND,
};

/// The largest buffer either side may be configured with (16 MiB, Linux's
/// `VIRTIO_VSOCK_MAX_TX_BUF_SIZE`); more would be memory no guest needs from one connection.
pub const MAX_BUFFER: u32 = 16 * 1024 * 1024;

/// Both shutdown directions.
const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// Buffer sizes of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointConfig {
    /// Our receive buffer: the credit we give the guest, and the most we hold unread. It also
    /// bounds one incoming SEQPACKET message (a Linux sender refuses larger ones with
    /// `EMSGSIZE`). Default 256 KiB.
    pub buf_alloc: u32,
    /// The most written bytes we hold unsent; also the largest outgoing SEQPACKET message.
    /// Default 256 KiB.
    pub send_buf: u32,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            buf_alloc: 256 * 1024,
            send_buf: 256 * 1024,
        }
    }
}

impl EndpointConfig {
    /// Checks both sizes lie in `1..=MAX_BUFFER`.
    pub fn check(&self) -> Result<(), EndpointError> {
        for (field, value) in [("buf_alloc", self.buf_alloc), ("send_buf", self.send_buf)] {
            if value == 0 || value > MAX_BUFFER {
                return Err(EndpointError::BufferSize { field, value });
            }
        }
        Ok(())
    }
}

/// Where an endpoint is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointState {
    /// We sent (or are about to send) a REQUEST and wait for the RESPONSE.
    Connecting,
    /// Connected; shutdowns may have closed one direction or both.
    Established,
    /// Over: reset by either side, refused, or both sides shut down.
    Closed,
}

/// Why an endpoint closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The guest answered our REQUEST with an RST (nobody listening).
    Refused,
    /// The guest sent an RST.
    PeerReset,
    /// The guest shut both directions down; we answered with RST, as Linux does.
    PeerClosed,
    /// The guest broke the protocol; it got an RST.
    Violation(EndpointError),
    /// Our side called [`Endpoint::reset`].
    LocalReset,
}

/// Errors from an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// A configured size out of range.
    #[error("{field} of {value} bytes is outside 1..={MAX_BUFFER}")]
    BufferSize {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u32,
    },
    /// The header failed [`PacketHeader::validate`].
    #[error("invalid packet: {0}")]
    Invalid(#[from] PacketError),
    /// [`Endpoint::accept`] was given something other than a REQUEST.
    #[error("can only accept a REQUEST, got op {0}")]
    NotARequest(u16),
    /// The packet is not addressed to this connection: the caller routed it wrong. Nothing
    /// changed and nothing is sent.
    #[error("packet {got_src:?} -> {got_dst:?} routed to connection {peer:?} -> {local:?}")]
    Misrouted {
        /// The packet's source.
        got_src: SockAddr,
        /// The packet's destination.
        got_dst: SockAddr,
        /// This connection's guest end.
        peer: SockAddr,
        /// This connection's local end.
        local: SockAddr,
    },
    /// The header's `len` differs from the payload handed in.
    #[error("header announces {announced} payload bytes but {actual} came with it")]
    PayloadLength {
        /// The header's `len`.
        announced: u32,
        /// The payload slice's length.
        actual: usize,
    },
    /// The packet's socket type differs from the connection's.
    #[error("{got:?} packet on a {conn:?} connection")]
    TypeMismatch {
        /// The packet's type (raw).
        got: u16,
        /// The connection's.
        conn: SocketType,
    },
    /// An op the connection's state does not allow.
    #[error("{op:?} is not allowed while {state:?}")]
    UnexpectedOp {
        /// The op.
        op: Op,
        /// The endpoint's state.
        state: EndpointState,
    },
    /// Data after the guest shut down its sending side.
    #[error("data after the guest shut down its sending side")]
    DataAfterShutdown,
    /// A credit rule broken.
    #[error("credit: {0}")]
    Credit(#[from] CreditError),
    /// A packet (other than RST) for a closed connection; it is answered with RST.
    #[error("{0:?} for a closed connection")]
    Closed(u16),
}

/// Why [`Endpoint::write_message`] took nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// Not enough room in the send buffer now; try again after the guest granted credit.
    #[error("send buffer full: {free} bytes free for a {len}-byte message")]
    Full {
        /// Message length.
        len: usize,
        /// Room left.
        free: usize,
    },
    /// Longer than the send buffer or the guest's receive buffer: it could never be delivered
    /// whole (Linux says `EMSGSIZE`).
    #[error("{len}-byte message exceeds the {max}-byte limit")]
    TooLarge {
        /// Message length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Empty messages cannot be sent (an empty RW is invalid on the wire).
    #[error("empty message")]
    Empty,
    /// Not a SEQPACKET connection.
    #[error("message write on a stream connection")]
    NotSeqPacket,
    /// Our sending side is shut, the guest shut its receiving side, or the connection is over.
    #[error("connection closed for sending")]
    Closed,
}

/// One connection terminated by vmq. See the module docs for the flow and the bounds.
#[derive(Debug, Clone)]
pub struct Endpoint {
    ty: SocketType,
    local: SockAddr,
    peer: SockAddr,
    state: EndpointState,
    cfg: EndpointConfig,
    credit: Credit,
    rx: RecvBuffer,
    tx: SendBuffer,
    /// Control owed to the guest.
    owe_request: bool,
    owe_response: bool,
    owe_rst: bool,
    owe_credit_update: bool,
    /// A CREDIT_REQUEST went out and no credit arrived since: do not repeat it.
    credit_requested: bool,
    /// Directions our application shut, and those already told to the guest.
    shut: u32,
    shut_sent: u32,
    /// Directions the guest shut.
    peer_shut: u32,
    reason: Option<CloseReason>,
}

impl Endpoint {
    fn new(
        cfg: EndpointConfig,
        ty: SocketType,
        local: SockAddr,
        peer: SockAddr,
        state: EndpointState,
    ) -> Result<Self, EndpointError> {
        cfg.check()?;
        Ok(Self {
            ty,
            local,
            peer,
            state,
            cfg,
            credit: Credit::new(cfg.buf_alloc),
            rx: RecvBuffer::default(),
            tx: SendBuffer::default(),
            owe_request: false,
            owe_response: false,
            owe_rst: false,
            owe_credit_update: false,
            credit_requested: false,
            shut: 0,
            shut_sent: 0,
            peer_shut: 0,
            reason: None,
        })
    }

    /// Opens a connection from `local` to the guest's `peer`: the first packet out is the
    /// REQUEST. Data written before the RESPONSE waits in the send buffer.
    pub fn connect(
        cfg: EndpointConfig,
        ty: SocketType,
        local: SockAddr,
        peer: SockAddr,
    ) -> Result<Self, EndpointError> {
        let mut ep = Self::new(cfg, ty, local, peer, EndpointState::Connecting)?;
        ep.owe_request = true;
        Ok(ep)
    }

    /// Accepts a guest's REQUEST (source CID already stamped by the caller): the first packet
    /// out is the RESPONSE, and the connection is established.
    pub fn accept(cfg: EndpointConfig, request: &PacketHeader) -> Result<Self, EndpointError> {
        let (ty, op) = request.validate()?;
        if op != Op::Request {
            return Err(EndpointError::NotARequest(request.op));
        }
        let mut ep = Self::new(
            cfg,
            ty,
            request.dst(),
            request.src(),
            EndpointState::Established,
        )?;
        ep.credit
            .on_peer_credit(request.buf_alloc, request.fwd_cnt)?;
        ep.owe_response = true;
        Ok(ep)
    }

    /// Takes one packet from the guest. `payload` must be exactly the packet's `len` bytes.
    ///
    /// `Err(Misrouted)` changes nothing. Any other error means the guest broke the protocol or
    /// wrote to a closed connection: an RST is queued and the endpoint is (or stays) closed.
    pub fn on_packet(&mut self, hdr: &PacketHeader, payload: &[u8]) -> Result<(), EndpointError> {
        if hdr.src() != self.peer || hdr.dst() != self.local {
            return Err(EndpointError::Misrouted {
                got_src: hdr.src(),
                got_dst: hdr.dst(),
                peer: self.peer,
                local: self.local,
            });
        }
        if self.state == EndpointState::Closed {
            if hdr.op == Op::Rst as u16 {
                return Ok(());
            }
            self.owe_rst = true;
            return Err(EndpointError::Closed(hdr.op));
        }
        match self.apply(hdr, payload) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.close(CloseReason::Violation(e.clone()), true);
                Err(e)
            }
        }
    }

    fn apply(&mut self, hdr: &PacketHeader, payload: &[u8]) -> Result<(), EndpointError> {
        let (ty, op) = hdr.validate()?;
        if ty != self.ty {
            return Err(EndpointError::TypeMismatch {
                got: hdr.ty,
                conn: self.ty,
            });
        }
        if hdr.len as usize != payload.len() {
            return Err(EndpointError::PayloadLength {
                announced: hdr.len,
                actual: payload.len(),
            });
        }
        if op == Op::Rst {
            let reason = if self.state == EndpointState::Connecting {
                CloseReason::Refused
            } else {
                CloseReason::PeerReset
            };
            self.close(reason, false);
            return Ok(());
        }
        if self.credit.on_peer_credit(hdr.buf_alloc, hdr.fwd_cnt)? {
            self.credit_requested = false;
        }
        let unexpected = EndpointError::UnexpectedOp {
            op,
            state: self.state,
        };
        match (self.state, op) {
            (EndpointState::Connecting, Op::Response) => self.state = EndpointState::Established,
            (EndpointState::Connecting, _) | (_, Op::Request | Op::Response) => {
                return Err(unexpected)
            }
            (_, Op::Rw) => {
                if self.peer_shut & SHUTDOWN_SEND != 0 {
                    return Err(EndpointError::DataAfterShutdown);
                }
                self.credit.on_received(hdr.len)?;
                if self.shut & SHUTDOWN_RCV != 0 {
                    // Nobody will read it: consume at once so the guest is not left waiting.
                    self.credit.on_consumed(hdr.len);
                } else {
                    self.rx
                        .push(payload, hdr.flags, self.ty == SocketType::SeqPacket);
                }
            }
            (_, Op::CreditUpdate) => {}
            (_, Op::CreditRequest) => self.owe_credit_update = true,
            (_, Op::Shutdown) => {
                self.peer_shut |= hdr.flags;
                if self.peer_shut & SHUTDOWN_RCV != 0 {
                    // The guest reads no more: what we still hold for it is moot.
                    self.tx.clear();
                }
                if self.peer_shut == SHUTDOWN_BOTH {
                    self.close(CloseReason::PeerClosed, true);
                }
            }
            (_, Op::Rst) => {}
        }
        Ok(())
    }

    /// Ends the connection; `rst` queues an RST for the guest. Received data stays readable.
    fn close(&mut self, reason: CloseReason, rst: bool) {
        if self.state != EndpointState::Closed {
            self.reason = Some(reason);
        }
        self.state = EndpointState::Closed;
        self.owe_rst |= rst;
        self.owe_request = false;
        self.owe_response = false;
        self.owe_credit_update = false;
        self.tx.clear();
    }

    fn header(&mut self, op: Op, len: u32, flags: u32) -> PacketHeader {
        let mut hdr = PacketHeader::new(self.ty, op, self.local, self.peer);
        hdr.len = len;
        hdr.flags = flags;
        (hdr.buf_alloc, hdr.fwd_cnt) = self.credit.advertise();
        hdr
    }

    /// The next packet for the guest, with a payload of at most `max_payload` bytes (the size
    /// of the guest's rx buffer; Linux posts 4 KiB ones): RST, REQUEST/RESPONSE, data within
    /// the guest's credit, SHUTDOWN once the data before it is out, CREDIT_UPDATE when the
    /// guest is likely waiting on us, CREDIT_REQUEST when we wait on it. `None` when nothing is
    /// owed. Every header carries our current `buf_alloc`/`fwd_cnt`.
    pub fn next_packet(&mut self, max_payload: u32) -> Option<(PacketHeader, Vec<u8>)> {
        let mut payload = Vec::new();
        let hdr = self.next_packet_into(max_payload, &mut payload)?;
        Some((hdr, payload))
    }

    /// [`next_packet`](Self::next_packet) with the payload moved into `payload` (cleared first,
    /// so one buffer serves every call).
    pub fn next_packet_into(
        &mut self,
        max_payload: u32,
        payload: &mut Vec<u8>,
    ) -> Option<PacketHeader> {
        payload.clear();
        if self.owe_rst {
            self.owe_rst = false;
            return Some(self.header(Op::Rst, 0, 0));
        }
        match self.state {
            EndpointState::Closed => return None,
            EndpointState::Connecting if self.owe_request => {
                self.owe_request = false;
                return Some(self.header(Op::Request, 0, 0));
            }
            EndpointState::Connecting => return None,
            EndpointState::Established => {}
        }
        if self.owe_response {
            self.owe_response = false;
            return Some(self.header(Op::Response, 0, 0));
        }
        let limit = max_payload.min(MAX_PAYLOAD).min(self.credit.peer_free());
        if !self.tx.is_empty() && limit > 0 {
            let seq = self.ty == SocketType::SeqPacket;
            let flags = self.tx.take(limit as usize, payload, seq);
            let len = payload.len() as u32;
            self.credit.on_sent(len);
            return Some(self.header(Op::Rw, len, flags));
        }
        let unsent = self.shut & !self.shut_sent;
        if unsent != 0 && (self.tx.is_empty() || unsent & SHUTDOWN_SEND == 0) {
            self.shut_sent |= unsent;
            return Some(self.header(Op::Shutdown, 0, self.shut_sent));
        }
        if self.owe_credit_update || self.credit.update_due() {
            self.owe_credit_update = false;
            return Some(self.header(Op::CreditUpdate, 0, 0));
        }
        if !self.tx.is_empty() && self.credit.peer_free() == 0 && !self.credit_requested {
            self.credit_requested = true;
            return Some(self.header(Op::CreditRequest, 0, 0));
        }
        None
    }

    fn can_send(&self) -> bool {
        self.state != EndpointState::Closed
            && self.shut & SHUTDOWN_SEND == 0
            && self.peer_shut & SHUTDOWN_RCV == 0
    }

    /// Room left in the send buffer.
    pub fn send_space(&self) -> usize {
        self.cfg.send_buf as usize - self.tx.len()
    }

    /// Stream write: takes as much of `data` as the send buffer has room for and returns how
    /// much; 0 on a SEQPACKET connection or one closed for sending.
    pub fn write(&mut self, data: &[u8]) -> usize {
        if self.ty != SocketType::Stream || !self.can_send() {
            return 0;
        }
        let n = data.len().min(self.send_space());
        self.tx.push(&data[..n]);
        n
    }

    /// SEQPACKET write: takes the whole message or nothing. `eor` marks it end of record. A
    /// message must fit the send buffer and the guest's receive buffer.
    pub fn write_message(&mut self, msg: &[u8], eor: bool) -> Result<(), WriteError> {
        if self.ty != SocketType::SeqPacket {
            return Err(WriteError::NotSeqPacket);
        }
        if !self.can_send() {
            return Err(WriteError::Closed);
        }
        if msg.is_empty() {
            return Err(WriteError::Empty);
        }
        let mut max = self.cfg.send_buf as usize;
        if self.state == EndpointState::Established {
            max = max.min(self.credit.peer_buf_alloc() as usize);
        }
        if msg.len() > max {
            return Err(WriteError::TooLarge {
                len: msg.len(),
                max,
            });
        }
        let free = self.send_space();
        if msg.len() > free {
            return Err(WriteError::Full {
                len: msg.len(),
                free,
            });
        }
        self.tx.push_message(msg, eor);
        Ok(())
    }

    /// Stream read: copies up to `buf.len()` received bytes out, returns how many (0 when
    /// nothing is buffered; see [`is_eof`](Self::is_eof)). Reading returns credit to the guest.
    pub fn read(&mut self, buf: &mut [u8]) -> usize {
        if self.ty != SocketType::Stream {
            return 0;
        }
        let n = self.rx.read(buf);
        self.credit.on_consumed(n as u32);
        n
    }

    /// SEQPACKET read: the oldest whole message, if one has arrived.
    pub fn read_message(&mut self) -> Option<Message> {
        if self.ty != SocketType::SeqPacket {
            return None;
        }
        let msg = self.rx.read_message()?;
        self.credit.on_consumed(msg.data.len() as u32);
        Some(msg)
    }

    /// Bytes received and not read (for SEQPACKET including an incomplete message).
    pub fn readable(&self) -> usize {
        self.rx.len()
    }

    /// Whole SEQPACKET messages ready to read.
    pub fn messages_ready(&self) -> usize {
        self.rx.messages()
    }

    /// Whether reading is over: nothing buffered (no whole message, for SEQPACKET) and the
    /// guest will send no more.
    pub fn is_eof(&self) -> bool {
        let done = self.state == EndpointState::Closed || self.peer_shut & SHUTDOWN_SEND != 0;
        let empty = match self.ty {
            SocketType::Stream => self.rx.len() == 0,
            SocketType::SeqPacket => self.rx.messages() == 0,
        };
        done && empty
    }

    /// Shuts down our directions in `flags` ([`SHUTDOWN_RCV`], [`SHUTDOWN_SEND`]); the guest
    /// hears of it after the data already written. Shutting RCV drops unread data (and returns
    /// its credit). Both directions is an orderly close: the guest answers with an RST.
    pub fn shutdown(&mut self, flags: u32) {
        if self.state == EndpointState::Closed {
            return;
        }
        self.shut |= flags & SHUTDOWN_BOTH;
        if self.shut & SHUTDOWN_RCV != 0 {
            let dropped = self.rx.clear();
            self.credit.on_consumed(dropped as u32);
        }
    }

    /// Aborts the connection: unsent data is dropped and the guest gets an RST.
    pub fn reset(&mut self) {
        if self.state != EndpointState::Closed {
            self.close(CloseReason::LocalReset, true);
        }
    }

    /// The current state.
    pub fn state(&self) -> EndpointState {
        self.state
    }

    /// Whether the connection is over and nothing more is owed to the guest: the caller may
    /// drop the endpoint once the application has read what it wants.
    pub fn is_closed(&self) -> bool {
        self.state == EndpointState::Closed && !self.owe_rst
    }

    /// Why the connection closed, once it has.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.reason.as_ref()
    }

    /// Directions the guest has shut down.
    pub fn peer_shutdown(&self) -> u32 {
        self.peer_shut
    }

    /// Bytes we may still send to the guest by its credit.
    pub fn peer_free(&self) -> u32 {
        self.credit.peer_free()
    }

    /// Bytes written and not yet sent.
    pub fn unsent(&self) -> usize {
        self.tx.len()
    }

    /// The credit counters (read only).
    pub fn credit(&self) -> &Credit {
        &self.credit
    }

    /// The connection's socket type.
    pub fn socket_type(&self) -> SocketType {
        self.ty
    }

    /// Our end's address.
    pub fn local(&self) -> SockAddr {
        self.local
    }

    /// The guest's end's address.
    pub fn peer(&self) -> SockAddr {
        self.peer
    }
}
