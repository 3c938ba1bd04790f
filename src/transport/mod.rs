//! virtio-mmio v2 register emulation.
