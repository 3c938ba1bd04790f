//! The bounded byte queues behind an [`Endpoint`](super::endpoint::Endpoint): what the peer
//! sent and the application has not read, and what the application wrote and the peer has not
//! been sent. Both keep SEQPACKET message ends beside the bytes.
//!
//! Bounds: each holds at most its `cap` bytes, and at most one message end per byte (empty
//! messages are never queued: an empty RW is invalid on the wire, and an empty message write is
//! refused).

use std::collections::VecDeque;

use super::packet::{SEQ_EOM, SEQ_EOR};

/// A whole SEQPACKET message read by the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The message's bytes.
    pub data: Vec<u8>,
    /// Whether the sender marked it end of record (`MSG_EOR`).
    pub eor: bool,
}

/// Received bytes waiting for the application; for SEQPACKET also where messages end.
#[derive(Debug, Clone, Default)]
pub(crate) struct RecvBuffer {
    data: VecDeque<u8>,
    /// Complete messages not yet read: (length, EOR), in order.
    msgs: VecDeque<(usize, bool)>,
    /// Bytes at the back that belong to a message whose EOM has not arrived.
    partial: usize,
}

impl RecvBuffer {
    /// Appends a payload; `flags` are the RW packet's (SEQPACKET message marks). The caller has
    /// checked it against the credit bound.
    pub(crate) fn push(&mut self, payload: &[u8], flags: u32, seqpacket: bool) {
        self.data.extend(payload);
        if seqpacket {
            self.partial += payload.len();
            if flags & SEQ_EOM != 0 {
                self.msgs.push_back((self.partial, flags & SEQ_EOR != 0));
                self.partial = 0;
            }
        }
    }

    /// Stream read: copies up to `buf.len()` bytes out; returns how many.
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.data.len());
        for (dst, src) in buf.iter_mut().zip(self.data.drain(..n)) {
            *dst = src;
        }
        n
    }

    /// SEQPACKET read: takes the oldest complete message, if any.
    pub(crate) fn read_message(&mut self) -> Option<Message> {
        let (len, eor) = self.msgs.pop_front()?;
        Some(Message {
            data: self.data.drain(..len).collect(),
            eor,
        })
    }

    /// Bytes held.
    pub(crate) fn len(&self) -> usize {
        self.data.len()
    }

    /// Complete messages held.
    pub(crate) fn messages(&self) -> usize {
        self.msgs.len()
    }

    /// Drops everything; returns how many bytes that was.
    pub(crate) fn clear(&mut self) -> usize {
        let n = self.data.len();
        self.data.clear();
        self.msgs.clear();
        self.partial = 0;
        n
    }
}

/// Bytes the application wrote, waiting for credit; for SEQPACKET also where messages end.
#[derive(Debug, Clone, Default)]
pub(crate) struct SendBuffer {
    data: VecDeque<u8>,
    /// Messages not yet fully sent: (bytes left, EOR), in order; the front one is partly sent.
    msgs: VecDeque<(usize, bool)>,
}

impl SendBuffer {
    /// Appends stream bytes.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.data.extend(bytes);
    }

    /// Appends a whole message (non-empty).
    pub(crate) fn push_message(&mut self, msg: &[u8], eor: bool) {
        debug_assert!(!msg.is_empty());
        self.data.extend(msg);
        self.msgs.push_back((msg.len(), eor));
    }

    /// Moves up to `max` bytes into `out` (cleared first), never past the current message's
    /// end; returns the RW flags for them (EOM/EOR when they finish a message).
    pub(crate) fn take(&mut self, max: usize, out: &mut Vec<u8>, seqpacket: bool) -> u32 {
        out.clear();
        let mut n = max.min(self.data.len());
        let mut flags = 0;
        if seqpacket {
            if let Some((left, eor)) = self.msgs.front_mut() {
                n = n.min(*left);
                *left -= n;
                if *left == 0 {
                    flags = SEQ_EOM | if *eor { SEQ_EOR } else { 0 };
                    self.msgs.pop_front();
                }
            }
        }
        out.extend(self.data.drain(..n));
        flags
    }

    /// Bytes held.
    pub(crate) fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether nothing is waiting.
    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Drops everything.
    pub(crate) fn clear(&mut self) {
        self.data.clear();
        self.msgs.clear();
    }
}
