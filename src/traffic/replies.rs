//! [`Replies`]: a requester's record of which of its requests were answered, so that every
//! reply is checked to answer an outstanding request exactly once.

/// Which request ids (1, 2, ... in sending order) have had their reply.
pub struct Replies<'a> {
    answered_bits: &'a mut [u8],
    /// Replies accepted so far.
    pub answered: u64,
}

impl<'a> Replies<'a> {
    /// Tracks up to `8 x bits.len()` requests in `bits` (zeroed).
    pub fn new(bits: &'a mut [u8]) -> Self {
        Self {
            answered_bits: bits,
            answered: 0,
        }
    }

    /// Accepts the reply to `id` if `id` was sent (below `next_id`) and not answered yet;
    /// otherwise returns false (a duplicate, or a reply to a request never sent).
    pub fn accept(&mut self, id: u64, next_id: u64) -> bool {
        let bit = id.checked_sub(1).filter(|_| id < next_id).and_then(|i| {
            Some((
                self.answered_bits.get_mut((i / 8) as usize)?,
                1u8 << (i % 8),
            ))
        });
        match bit {
            Some((byte, mask)) if *byte & mask == 0 => {
                *byte |= mask;
                self.answered += 1;
                true
            }
            _ => false,
        }
    }
}

/// Whether `payload` is a worker's answer to request `id` of `size` bytes: the request's bytes
/// ([`abi::image::client::request_byte`](crate::abi::image::client::request_byte)) XOR `key`.
pub fn is_answer(id: u64, size: usize, payload: &[u8], key: u8) -> bool {
    payload.len() == size
        && payload
            .iter()
            .enumerate()
            .all(|(i, &b)| b == crate::abi::image::client::request_byte(id, i) ^ key)
}
