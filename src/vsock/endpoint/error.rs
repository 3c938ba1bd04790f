//! Where an endpoint is in its life, why it closed, and what its calls fail with.

use super::super::credit::CreditError;
use super::super::packet::{Op, PacketError, SockAddr, SocketType};
use super::MAX_BUFFER;

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
    /// Our side called [`Endpoint::reset`](super::Endpoint::reset).
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
    /// The header failed [`PacketHeader::validate`](crate::vsock::packet::PacketHeader::validate).
    #[error("invalid packet: {0}")]
    Invalid(#[from] PacketError),
    /// [`Endpoint::accept`](super::Endpoint::accept) was given something other than a REQUEST.
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

/// Why [`Endpoint::write_message`](super::Endpoint::write_message) took nothing.
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
