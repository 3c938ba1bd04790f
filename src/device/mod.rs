//! One VM's port seen from the device side: its rx and tx queues on `virtio-queue`.
