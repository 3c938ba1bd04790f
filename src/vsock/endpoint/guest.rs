//! The guest's side of an endpoint: packets in ([`Endpoint::on_packet`]) and packets out
//! ([`Endpoint::next_packet`]), with the credit, control and shutdown rules.

use super::*;

impl Endpoint {
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
    pub(super) fn close(&mut self, reason: CloseReason, rst: bool) {
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

    /// Whether data may still be sent: open, and neither side shut this direction.
    pub fn can_send(&self) -> bool {
        self.state != EndpointState::Closed
            && self.shut & SHUTDOWN_SEND == 0
            && self.peer_shut & SHUTDOWN_RCV == 0
    }
}
