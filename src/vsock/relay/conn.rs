//! One relayed connection: its identity, its state, and the rules each packet on it must
//! keep (state, type, shutdown, credit).

use super::RelayError;
use crate::vsock::credit::RelayWindow;
use crate::vsock::packet::{Op, PacketHeader, SockAddr, SocketType, SHUTDOWN_BOTH, SHUTDOWN_SEND};

/// A relayed connection's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnState {
    /// REQUEST forwarded, RESPONSE not yet seen.
    Requested,
    /// Both ends connected.
    Established,
    /// One side sent SHUTDOWN; the other may still send.
    Closing,
    /// Both sides shut their sending down; waiting for the final RST (or the sweep).
    Closed,
}

/// A relayed connection's identity: who sent the REQUEST and to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    /// The end that sent the REQUEST.
    pub initiator: SockAddr,
    /// The end it was sent to.
    pub acceptor: SockAddr,
}

/// Which end of a connection a packet came from; indexes the per-direction arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Initiator = 0,
    Acceptor = 1,
}

impl Side {
    pub(super) fn other(self) -> Self {
        match self {
            Self::Initiator => Self::Acceptor,
            Self::Acceptor => Self::Initiator,
        }
    }
}

/// Whether a connection stays in the table after a packet.
pub(super) enum Keep {
    Yes,
    No,
}

#[derive(Debug, Clone)]
pub(super) struct Conn {
    pub(super) ty: SocketType,
    pub(super) state: ConnState,
    /// SHUTDOWN flags each side has sent, indexed by [`Side`].
    pub(super) shut: [u32; 2],
    /// Each direction's window, indexed by the sending [`Side`].
    pub(super) win: [RelayWindow; 2],
    /// When the current state began (sweep clock).
    pub(super) since_ns: u64,
    /// When the last packet passed (sweep clock).
    pub(super) last_ns: u64,
}

impl Conn {
    /// Whether `side` has sent all the credit its receiver granted through vmq.
    pub(super) fn credit_spent(&self, side: Side) -> bool {
        self.win[side as usize].sender_free() == 0
    }

    /// Applies a packet (not a REQUEST) to an existing connection, rewriting the credit in
    /// `hdr`. An error resets the connection.
    /// `cap` is the relay's credit cap, `now` its clock.
    pub(super) fn step(
        &mut self,
        side: Side,
        hdr: &mut PacketHeader,
        (ty, op): (SocketType, Op),
        cap: u32,
        now: u64,
    ) -> Result<Keep, RelayError> {
        let conn = self;
        if ty != conn.ty {
            return Err(RelayError::TypeMismatch {
                got: ty,
                conn: conn.ty,
            });
        }
        if op == Op::Rst {
            return Ok(Keep::No);
        }
        // Every other header carries the sender's receive credit: the other direction's window.
        hdr.buf_alloc =
            conn.win[side.other() as usize].on_receiver_credit(hdr.buf_alloc, hdr.fwd_cnt, cap)?;
        let state = conn.state;
        let unexpected = Err(RelayError::UnexpectedOp { op, state });
        match (state, op) {
            (ConnState::Requested, Op::Response) if side == Side::Acceptor => {
                conn.state = ConnState::Established;
                conn.since_ns = now;
            }
            // Linux sends one if the requester resizes its buffer while connecting.
            (ConnState::Requested, Op::CreditUpdate) if side == Side::Initiator => {}
            (ConnState::Requested, _) | (_, Op::Response | Op::Request | Op::Rst) => {
                return unexpected
            }
            (_, Op::Rw) => {
                if conn.shut[side as usize] & SHUTDOWN_SEND != 0 {
                    return Err(RelayError::DataAfterShutdown);
                }
                conn.win[side as usize].on_send(hdr.len)?;
            }
            (_, Op::CreditUpdate | Op::CreditRequest) => {}
            (_, Op::Shutdown) => {
                conn.shut[side as usize] |= hdr.flags;
                if conn.shut == [SHUTDOWN_BOTH; 2] {
                    // Nothing more can flow either way: the entry ends here.
                    return Ok(Keep::No);
                }
                let next = if conn.shut.iter().all(|s| s & SHUTDOWN_SEND != 0) {
                    ConnState::Closed
                } else {
                    ConnState::Closing
                };
                if next != conn.state {
                    conn.state = next;
                    conn.since_ns = now;
                }
            }
        }
        conn.last_ns = now;
        Ok(Keep::Yes)
    }
}
