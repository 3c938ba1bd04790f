//! The MMIO device seam: what a device placed on a guest's MMIO bus implements.
//!
//! A leaf: the KVM layer ([`crate::vmm`], whose `MmioBus` dispatches MMIO exits to devices) and
//! the device emulations ([`crate::transport`]) both depend on it, and on nothing of each
//! other.

/// A device on the MMIO bus. Offsets are relative to the device's base. Accesses come from the
/// vCPU thread; interior mutability is the device's business.
pub trait MmioDevice: Send + Sync {
    /// A guest read of `data.len()` bytes (1, 2, 4 or 8) at `offset`; fill `data`.
    fn read(&self, offset: u64, data: &mut [u8]);
    /// A guest write of `data` at `offset`.
    fn write(&self, offset: u64, data: &[u8]);
}
