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
use super::credit::Credit;
use super::packet::{
    Op, PacketHeader, SockAddr, SocketType, MAX_PAYLOAD, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND,
};

mod error;
mod guest;

pub use error::{CloseReason, EndpointError, EndpointState, WriteError};

/// The largest buffer either side may be configured with (16 MiB, Linux's
/// `VIRTIO_VSOCK_MAX_TX_BUF_SIZE`); more would be memory no guest needs from one connection.
pub const MAX_BUFFER: u32 = 16 * 1024 * 1024;

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
