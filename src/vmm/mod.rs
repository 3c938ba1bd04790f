//! KVM: guest memory, vCPU set-up and run loop, guest-image loading, port I/O and MMIO wiring.
