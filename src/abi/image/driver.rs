//! Slots the guest runtime's vmq driver reads and writes, the same in every image that drives a
//! vmq device (`client`, `worker`, `peer`, `evil`).

/// Parameter slots (indices into `BootBlock::params`) the driver reads, from
/// [`param`](super::param).
pub mod param {
    pub use super::super::param::SPIN;
    pub use super::super::param::{QUEUE_SIZE, WAIT};
}

/// Result slots (indices into `BootBlock::results`).
pub mod result {
    /// QueueNotify writes (kicks) the guest made.
    pub const KICKS: usize = 6;
    /// Doorbell waits the guest made.
    pub const WAITS: usize = 7;
    /// Doorbell waits that ended by their timeout (a safety net; should stay low).
    pub const WAIT_TIMEOUTS: usize = 8;
    /// The guest's port id from the switch's hello (`u64::MAX` before it came).
    pub const PORT_ID: usize = 9;
    /// Ring or protocol errors the guest's driver saw (bad messages, ring faults, a
    /// directory that was cut, too long, malformed or named a port or service twice, a
    /// directory update before the hello or addressed to another port).
    pub const RING_ERRORS: usize = 10;
    /// Directories the guest took from the switch (its hello's, then every update's).
    pub const DIRECTORIES: usize = 21;
}

/// Most directory bytes a guest keeps (the payload the smallest rx slot holds): about 45
/// entries of 16-byte names. A longer directory is refused (counted in
/// [`result::RING_ERRORS`]) and the one held before stays; a topology whose directory would be
/// longer is refused when parsed.
pub const DIRECTORY_MAX: usize = 1024;

/// [`param::WAIT`]: spin on the rings, never sleep (one core per guest).
pub const WAIT_POLL: u64 = 0;
/// [`param::WAIT`]: spin a bounded while, then ask for a notification and park the vCPU on the
/// doorbell-wait port.
pub const WAIT_DOORBELL: u64 = 1;
