//! Split-ring layout and the EVENT_IDX arithmetic from the virtio 1.x spec (2.7), shared by
//! the driver and the device side (`no_std`).

use super::spec::{AVAIL_ALIGN, DESC_ALIGN, DESC_SIZE, MAX_QUEUE_SIZE, USED_ALIGN};

/// The spec's `vring_need_event`: should the other side be notified when its index moves from
/// `old` to `new`, given that it asked to be woken at `event`?
#[inline]
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Guest-physical addresses of one split ring's three parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    /// Queue size (number of descriptors).
    pub size: u16,
    /// Descriptor table (16-byte aligned, `16 x size` bytes).
    pub desc: u64,
    /// Avail ring (2-byte aligned): flags, idx, `size` heads, used_event.
    pub avail: u64,
    /// Used ring (4-byte aligned): flags, idx, `size` elements, avail_event.
    pub used: u64,
}

impl RingLayout {
    /// Bytes of the descriptor table.
    pub const fn desc_bytes(size: u16) -> u64 {
        DESC_SIZE * size as u64
    }
    /// Bytes of the avail ring including `used_event`.
    pub const fn avail_bytes(size: u16) -> u64 {
        6 + 2 * size as u64
    }
    /// Bytes of the used ring including `avail_event`.
    pub const fn used_bytes(size: u16) -> u64 {
        6 + 8 * size as u64
    }

    /// Each part of the ring as `(name, address, alignment, bytes)`: what the driver and the
    /// device check before they use a ring (the byte counts include the trailing event fields).
    pub const fn parts(&self) -> [(&'static str, u64, u64, u64); 3] {
        [
            (
                "descriptor table",
                self.desc,
                DESC_ALIGN,
                Self::desc_bytes(self.size),
            ),
            (
                "avail ring",
                self.avail,
                AVAIL_ALIGN,
                Self::avail_bytes(self.size),
            ),
            (
                "used ring",
                self.used,
                USED_ALIGN,
                Self::used_bytes(self.size),
            ),
        ]
    }

    /// Whether `size` is a valid split-ring size (power of two, 2..=32768).
    pub const fn valid_size(size: u16) -> bool {
        size >= 2 && size <= MAX_QUEUE_SIZE && size.is_power_of_two()
    }

    /// Lays the three parts out back to back from `base` (which must be 16-byte aligned),
    /// with the used ring on the next 4-byte boundary.
    pub const fn contiguous(base: u64, size: u16) -> Self {
        let desc = base;
        let avail = desc + Self::desc_bytes(size);
        let used = (avail + Self::avail_bytes(size) + 3) & !3;
        Self {
            size,
            desc,
            avail,
            used,
        }
    }

    /// First byte past the ring (for [`RingLayout::contiguous`] layouts).
    pub const fn end(&self) -> u64 {
        self.used + Self::used_bytes(self.size)
    }

    /// Total bytes a contiguous ring of `size` takes.
    pub const fn total_bytes(size: u16) -> u64 {
        Self::contiguous(0, size).end()
    }

    /// Address of avail ring slot `i` (already reduced modulo size).
    #[inline]
    pub(crate) fn avail_slot(&self, i: u16) -> u64 {
        self.avail + 4 + 2 * i as u64
    }
    /// Address of `used_event` (end of the avail ring).
    #[inline]
    pub(crate) fn used_event(&self) -> u64 {
        self.avail + 4 + 2 * self.size as u64
    }
    /// Address of used ring element `i` (already reduced modulo size).
    #[inline]
    pub(crate) fn used_elem(&self, i: u16) -> u64 {
        self.used + 4 + 8 * i as u64
    }
    /// Address of `avail_event` (end of the used ring).
    #[inline]
    pub(crate) fn avail_event(&self) -> u64 {
        self.used + 4 + 8 * self.size as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_event_matches_spec_examples() {
        // Other side asked to be woken when the index passes 5.
        assert!(need_event(5, 6, 5));
        assert!(need_event(5, 7, 4));
        assert!(!need_event(5, 5, 4));
        assert!(!need_event(5, 9, 6));
        // Wrap-around.
        assert!(need_event(65535, 0, 65535));
        assert!(need_event(65534, 2, 65530));
        assert!(!need_event(3, 2, 65530));
    }

    #[test]
    fn contiguous_layout_is_aligned_and_disjoint() {
        for shift in 1..=15 {
            let size = 1u16 << shift;
            let l = RingLayout::contiguous(0x1000, size);
            assert_eq!(l.desc % 16, 0);
            assert_eq!(l.avail % 2, 0);
            assert_eq!(l.used % 4, 0);
            assert!(l.avail >= l.desc + RingLayout::desc_bytes(size));
            assert!(l.used >= l.avail + RingLayout::avail_bytes(size));
        }
        assert!(!RingLayout::valid_size(0));
        assert!(!RingLayout::valid_size(1));
        assert!(!RingLayout::valid_size(48));
        assert!(RingLayout::valid_size(32768));
    }
}
