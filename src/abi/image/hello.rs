//! `hello`: the first vmq guest; its modes exercise the VMM alone (console, exit, doorbell wait,
//! MMIO, exit cost). It keeps no results.

/// Parameter slots (indices into `BootBlock::params`).
pub mod param {
    /// What it does (0: greet and exit with [`EXIT_STATUS`]; see the image's source).
    pub const MODE: usize = 0;
    /// How many port or MMIO writes (modes 2 and 3).
    pub const COUNT: usize = 1;
    /// A number it prints in its greeting.
    pub const SERVICE: usize = 2;
    /// The exit status it reports on success (mode 0).
    pub const EXIT_STATUS: usize = 4;
    /// The value it writes (mode 3) or the doorbell-wait timeout in microseconds (mode 4).
    pub const SIZE: usize = 5;
    /// An MMIO address it writes and reads back (0 = none).
    pub const TEST_ADDR: usize = 6;
}
