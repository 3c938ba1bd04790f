//! The driver side of a virtio 1.x split virtqueue (no_std).
