//! The relay's settings and errors.

use super::conn::ConnState;
use crate::vsock::credit::CreditError;
use crate::vsock::packet::{Op, PacketError, SocketType};

/// Relay limits and timeouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// Connections a guest may have opened (REQUEST sent) at once. Default 1024.
    pub max_conns_per_guest: usize,
    /// The most receive credit vmq forwards for one direction of a connection, in bytes; it is
    /// also the most vmq holds for it. Default 256 KiB (Linux's default socket buffer). A
    /// SEQPACKET sender refuses messages above this (`EMSGSIZE`), so keep it ≥ 64 KiB.
    pub credit_cap: u32,
    /// A REQUEST with no RESPONSE for this long is reset. Default 10 s.
    pub request_timeout_ns: u64,
    /// A connection where both sides shut their sending down, or one side has and nothing
    /// moved since, is reset after this long. Default 10 s (Linux itself resets after 8 s).
    pub close_timeout_ns: u64,
    /// An established connection with no packet for this long is reset; `None` (the default)
    /// keeps idle connections, which the per-guest cap bounds.
    pub idle_timeout_ns: Option<u64>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            max_conns_per_guest: 1024,
            credit_cap: 256 * 1024,
            request_timeout_ns: 10_000_000_000,
            close_timeout_ns: 10_000_000_000,
            idle_timeout_ns: None,
        }
    }
}

/// A relay setting out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayConfigError {
    /// `max_conns_per_guest` of 0 would refuse every connection.
    #[error("max_conns_per_guest must be at least 1")]
    NoConnections,
    /// `credit_cap` of 0 would stall every connection.
    #[error("credit_cap must be at least 1 byte")]
    NoCredit,
}

impl RelayConfig {
    /// Checks the settings.
    pub fn check(&self) -> Result<(), RelayConfigError> {
        if self.max_conns_per_guest == 0 {
            return Err(RelayConfigError::NoConnections);
        }
        if self.credit_cap == 0 {
            return Err(RelayConfigError::NoCredit);
        }
        Ok(())
    }
}

/// Why the relay refused a packet or reset a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// The header failed [`PacketHeader::validate`](crate::vsock::packet::PacketHeader::validate).
    #[error("invalid packet: {0}")]
    Invalid(#[from] PacketError),
    /// A packet to the sender's own CID (Linux loops those back itself).
    #[error("guest {0} sent a packet to its own CID")]
    ToSelf(u64),
    /// A packet other than REQUEST or RST for a connection the relay does not know.
    #[error("{0:?} for a connection that does not exist")]
    NoConnection(Op),
    /// A REQUEST for a connection that already exists (in either direction).
    #[error("REQUEST for a connection that already exists")]
    Exists,
    /// The requesting guest has `max` connections open already.
    #[error("guest {cid} already has {max} connections open")]
    TooManyConnections {
        /// The requesting guest.
        cid: u64,
        /// The cap.
        max: usize,
    },
    /// An op the connection's state does not allow.
    #[error("{op:?} is not allowed on a {state:?} connection")]
    UnexpectedOp {
        /// The packet's op.
        op: Op,
        /// The connection's state.
        state: ConnState,
    },
    /// The packet's socket type differs from the connection's.
    #[error("{got:?} packet on a {conn:?} connection")]
    TypeMismatch {
        /// The packet's type.
        got: SocketType,
        /// The connection's type.
        conn: SocketType,
    },
    /// Data after the sender said it would send no more.
    #[error("data after the sender shut down its sending side")]
    DataAfterShutdown,
    /// A credit rule broken.
    #[error("credit: {0}")]
    Credit(#[from] CreditError),
}
