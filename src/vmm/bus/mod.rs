//! The MMIO bus: [`MmioDevice`]s registered at guest-physical ranges, reached on MMIO exits.

use std::sync::Arc;

use super::error::{Error, Result};
use crate::mmio::MmioDevice;

struct Range {
    base: u64,
    len: u64,
    dev: Arc<dyn MmioDevice>,
}

/// Devices by guest-physical range. Ranges never overlap.
#[derive(Default)]
pub struct MmioBus {
    ranges: Vec<Range>,
}

impl std::fmt::Debug for MmioBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.ranges.iter().map(|r| (r.base, r.len)))
            .finish()
    }
}

impl MmioBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `dev` at `base..base + len`. Fails if the range is empty, wraps, or overlaps a
    /// registered device.
    pub fn insert(&mut self, base: u64, len: u64, dev: Arc<dyn MmioDevice>) -> Result<()> {
        let err = |reason| Err(Error::MmioRange { base, len, reason });
        if len == 0 {
            return err("empty range");
        }
        let Some(end) = base.checked_add(len) else {
            return err("range wraps around the address space");
        };
        if self
            .ranges
            .iter()
            .any(|r| base < r.base + r.len && r.base < end)
        {
            return err("overlaps a registered device");
        }
        let at = self.ranges.partition_point(|r| r.base < base);
        self.ranges.insert(at, Range { base, len, dev });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(&Range, u64)> {
        let i = self
            .ranges
            .partition_point(|r| r.base <= addr)
            .checked_sub(1)?;
        let r = &self.ranges[i];
        let off = addr - r.base;
        (off.checked_add(size as u64)? <= r.len).then_some((r, off))
    }

    /// Dispatches a read; returns false (and fills `data` with ones) if no device covers the
    /// whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((r, off)) => {
                r.dev.read(off, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; returns false (and drops it) if no device covers the whole access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((r, off)) => {
                r.dev.write(off, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Log(Mutex<Vec<(u64, Vec<u8>)>>);
    impl MmioDevice for Log {
        fn read(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&self, offset: u64, data: &[u8]) {
            self.0.lock().unwrap().push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatch_and_bounds() {
        let mut bus = MmioBus::new();
        let a = Arc::new(Log::default());
        bus.insert(0x1000, 0x100, a.clone()).unwrap();
        bus.insert(0x2000, 0x100, Arc::new(Log::default())).unwrap();
        assert!(bus.insert(0x10f0, 0x20, a.clone()).is_err());
        assert!(bus.insert(0x0, 0, a.clone()).is_err());
        assert!(bus.insert(u64::MAX, 2, a.clone()).is_err());
        let mut d = [0u8; 4];
        assert!(bus.read(0x1010, &mut d));
        assert_eq!(d, [0x10; 4]);
        assert!(!bus.read(0x10fe, &mut d), "access straddling the end");
        assert_eq!(d, [0xff; 4]);
        assert!(!bus.read(0x0fff, &mut d));
        assert!(bus.write(0x1004, &[1, 2]));
        assert!(!bus.write(0x3000, &[1]));
        assert_eq!(*a.0.lock().unwrap(), vec![(4, vec![1, 2])]);
    }
}
