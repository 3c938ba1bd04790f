//! Credit accounting (virtio spec 1.2, 5.10.6.3), on wrapping `u32` byte counters.
//!
//! A receiver advertises `buf_alloc` (its buffer for the connection) and `fwd_cnt` (bytes its
//! application consumed, wrapping) in every header it sends. A sender counts `tx_cnt` (bytes it
//! sent, wrapping) and may have at most `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)` bytes
//! outstanding. Counters wrap at 2^32, so comparisons are distances from a known-older value,
//! never plain `<`.
//!
//! [`Credit`] is both directions of a connection one end terminates; [`RelayWindow`] is one
//! direction of a connection between two guests that vmq only forwards.

/// Whether `x` lies in the wrapping interval `[lo, hi]` (both counters of the same stream).
fn within(x: u32, lo: u32, hi: u32) -> bool {
    x.wrapping_sub(lo) <= hi.wrapping_sub(lo)
}

/// A credit rule the peer broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreditError {
    /// Data beyond the credit the receiver gave.
    #[error("peer sent {len} bytes with only {free} bytes of credit left")]
    OverCredit {
        /// Payload bytes in the offending packet.
        len: u32,
        /// Credit the sender had.
        free: u32,
    },
    /// A `fwd_cnt` that went backwards or counts bytes never sent (or delivered) to its sender.
    #[error("fwd_cnt {fwd_cnt} is outside {low}..={high}: it went backwards or counts bytes never delivered")]
    FwdCntOutOfRange {
        /// The advertised value.
        fwd_cnt: u32,
        /// The previous `fwd_cnt` (it may not go back).
        low: u32,
        /// Bytes sent (or delivered) so far (it may not go past).
        high: u32,
    },
    /// More bytes reported delivered than were sent: a caller's bug, never a guest's.
    #[error("{len} bytes reported delivered but only {pending} were in flight")]
    OverDelivered {
        /// Bytes reported.
        len: u32,
        /// Bytes sent and not yet delivered.
        pending: u32,
    },
}

/// Both directions' credit of a connection this end terminates.
///
/// Sending: `tx_cnt`, and the peer's last `buf_alloc` / `fwd_cnt`. Receiving: our `buf_alloc`
/// (fixed), `rx_cnt` (bytes received), `fwd_cnt` (bytes our application consumed) and the
/// `fwd_cnt` we last told the peer. What we hold received is `rx_cnt - fwd_cnt ≤ buf_alloc`,
/// enforced by [`on_received`](Self::on_received).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credit {
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    buf_alloc: u32,
    rx_cnt: u32,
    fwd_cnt: u32,
    last_adv_fwd_cnt: u32,
}

impl Credit {
    /// Fresh counters with our receive buffer of `buf_alloc` bytes; the peer's credit is zero
    /// until its first header.
    pub fn new(buf_alloc: u32) -> Self {
        Self {
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            buf_alloc,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_adv_fwd_cnt: 0,
        }
    }

    /// Bytes we may still send: `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`, 0 when the peer
    /// shrank its buffer below what is in flight (signed, as Linux does, so it cannot wrap).
    pub fn peer_free(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Takes the credit fields of a header from the peer. `fwd_cnt` must lie between the
    /// previous one and `tx_cnt`: a peer cannot consume what we never sent, nor un-consume.
    /// Returns whether our sending credit changed.
    pub fn on_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) -> Result<bool, CreditError> {
        if !within(fwd_cnt, self.peer_fwd_cnt, self.tx_cnt) {
            return Err(CreditError::FwdCntOutOfRange {
                fwd_cnt,
                low: self.peer_fwd_cnt,
                high: self.tx_cnt,
            });
        }
        let before = self.peer_free();
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
        Ok(self.peer_free() != before)
    }

    /// Counts `len` bytes sent; the caller sends at most [`peer_free`](Self::peer_free).
    pub fn on_sent(&mut self, len: u32) {
        debug_assert!(len <= self.peer_free());
        self.tx_cnt = self.tx_cnt.wrapping_add(len);
    }

    /// Counts `len` bytes received, refusing them if they overrun our buffer: the peer sent more
    /// than the credit it was given (any `fwd_cnt` it saw is at most ours, so a peer keeping to
    /// its view never trips this).
    pub fn on_received(&mut self, len: u32) -> Result<(), CreditError> {
        let free = self.buf_alloc - self.in_use();
        if len > free {
            return Err(CreditError::OverCredit { len, free });
        }
        self.rx_cnt = self.rx_cnt.wrapping_add(len);
        Ok(())
    }

    /// Counts `len` received bytes consumed by our application (at most
    /// [`in_use`](Self::in_use)); the peer learns it from the next header we send.
    pub fn on_consumed(&mut self, len: u32) {
        debug_assert!(len <= self.in_use());
        self.fwd_cnt = self.fwd_cnt.wrapping_add(len.min(self.in_use()));
    }

    /// Received bytes not yet consumed: at most our `buf_alloc`.
    pub fn in_use(&self) -> u32 {
        self.rx_cnt.wrapping_sub(self.fwd_cnt)
    }

    /// Our `(buf_alloc, fwd_cnt)` for a header we are about to send; remembers that the peer
    /// will have seen this `fwd_cnt`.
    pub fn advertise(&mut self) -> (u32, u32) {
        self.last_adv_fwd_cnt = self.fwd_cnt;
        (self.buf_alloc, self.fwd_cnt)
    }

    /// Credit the peer believes it has, from the last `fwd_cnt` we told it.
    pub fn peer_view_free(&self) -> u32 {
        let used = self.rx_cnt.wrapping_sub(self.last_adv_fwd_cnt);
        self.buf_alloc.saturating_sub(used)
    }

    /// Whether an unsolicited CREDIT_UPDATE is worth a packet: our application consumed
    /// something since the last advertisement, and either half our buffer since then, or the
    /// peer believes less than a quarter of it is free (it is likely blocked), or we hold
    /// nothing (as Linux does when its receive queue empties). The last rule matters when the
    /// peer saw a smaller `buf_alloc` than ours (a relay capped it): our estimate of its view
    /// is then too generous, but draining the buffer always tells it.
    pub fn update_due(&self) -> bool {
        let since = self.fwd_cnt.wrapping_sub(self.last_adv_fwd_cnt);
        since > 0
            && (since >= self.buf_alloc / 2
                || self.peer_view_free() < self.buf_alloc / 4
                || self.in_use() == 0)
    }

    /// Bytes we sent that the peer's application has not consumed yet (by its last `fwd_cnt`).
    pub fn unacked(&self) -> u32 {
        self.tx_cnt.wrapping_sub(self.peer_fwd_cnt)
    }

    /// Bytes we have sent (wrapping).
    pub fn tx_cnt(&self) -> u32 {
        self.tx_cnt
    }

    /// Bytes our application consumed (wrapping).
    pub fn fwd_cnt(&self) -> u32 {
        self.fwd_cnt
    }

    /// Our receive buffer size.
    pub fn buf_alloc(&self) -> u32 {
        self.buf_alloc
    }

    /// The peer's last advertised receive buffer size.
    pub fn peer_buf_alloc(&self) -> u32 {
        self.peer_buf_alloc
    }
}

/// One direction of a relayed connection, as vmq sees it between the sending guest and the
/// receiving guest.
///
/// `sent` counts the payload vmq accepted from the sender, `delivered` what it placed in the
/// receiver's rx queue, `fwd_cnt` the receiver's consumption. vmq forwards the receiver's
/// `buf_alloc` capped at `cap`, and remembers the furthest stream offset it ever allowed
/// (`limit = fwd_cnt + min(buf_alloc, cap)`, never moving back, because the sender may act on an
/// older, larger advertisement). Checked invariants: `fwd_cnt ≤ delivered ≤ sent ≤ limit` and
/// `limit - fwd_cnt ≤ cap`, hence the bytes vmq holds for this direction, `sent - delivered`,
/// never exceed `cap`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RelayWindow {
    sent: u32,
    delivered: u32,
    fwd_cnt: u32,
    limit: u32,
}

impl RelayWindow {
    /// A direction nothing has been sent in and no credit granted yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Credit the sender may still use by the furthest advertisement vmq forwarded.
    pub fn sender_free(&self) -> u32 {
        self.limit.wrapping_sub(self.sent)
    }

    /// Accepts `len` bytes from the sender, or refuses them if they go past the credit vmq
    /// forwarded to it.
    pub fn on_send(&mut self, len: u32) -> Result<(), CreditError> {
        let free = self.sender_free();
        if len > free {
            return Err(CreditError::OverCredit { len, free });
        }
        self.sent = self.sent.wrapping_add(len);
        Ok(())
    }

    /// Counts `len` bytes placed in the receiver's rx queue.
    pub fn on_delivered(&mut self, len: u32) -> Result<(), CreditError> {
        let pending = self.held();
        if len > pending {
            return Err(CreditError::OverDelivered { len, pending });
        }
        self.delivered = self.delivered.wrapping_add(len);
        Ok(())
    }

    /// Takes the receiver's credit fields and returns the `buf_alloc` to forward to the sender:
    /// `min(buf_alloc, cap)`. `fwd_cnt` must lie between the previous one and `delivered`.
    pub fn on_receiver_credit(
        &mut self,
        buf_alloc: u32,
        fwd_cnt: u32,
        cap: u32,
    ) -> Result<u32, CreditError> {
        if !within(fwd_cnt, self.fwd_cnt, self.delivered) {
            return Err(CreditError::FwdCntOutOfRange {
                fwd_cnt,
                low: self.fwd_cnt,
                high: self.delivered,
            });
        }
        self.fwd_cnt = fwd_cnt;
        let granted = buf_alloc.min(cap);
        let new_limit = fwd_cnt.wrapping_add(granted);
        // Both limits are at or past fwd_cnt (sent ≤ old limit), so distances from it compare.
        if new_limit.wrapping_sub(fwd_cnt) > self.limit.wrapping_sub(fwd_cnt) {
            self.limit = new_limit;
        }
        Ok(granted)
    }

    /// Bytes accepted from the sender and not yet delivered: what vmq may be holding.
    pub fn held(&self) -> u32 {
        self.sent.wrapping_sub(self.delivered)
    }

    /// Bytes the sender has outstanding (sent, not yet consumed by the receiver).
    pub fn outstanding(&self) -> u32 {
        self.sent.wrapping_sub(self.fwd_cnt)
    }
}
