//! Why Linux guests could not be prepared, booted or driven.

use std::path::PathBuf;

/// Why `guest-images/linux/prepare.sh` did not leave a kernel and an initramfs.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// Something is missing that this machine cannot install itself (the script's exit 3:
    /// not root, no apt, no network). `what` is the script's own account of what to install.
    #[error(
        "Linux guests need packages this machine cannot install itself; install them (or run \
         {script} as root on a Debian-like machine) and try again:\n{what}",
        script = script.display()
    )]
    Missing {
        /// The script.
        script: PathBuf,
        /// What the script said (what to install and how).
        what: String,
    },
    /// The script failed for another reason: a bug to report, with its output.
    #[error("{} failed ({status}); its output:\n{output}", script.display())]
    Failed {
        /// The script.
        script: PathBuf,
        /// How it ended.
        status: std::process::ExitStatus,
        /// What it printed.
        output: String,
    },
    /// A file, lock or process around the script could not be had.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

impl PrepareError {
    /// True when something is missing that the machine could not install (install it and try
    /// again); false when preparing failed outright.
    pub fn is_missing(&self) -> bool {
        matches!(self, PrepareError::Missing { .. })
    }
}

/// Why a guest could not boot, or a command in it did not do what was asked. Messages carry
/// the end of the guest's console and QEMU's stderr, and where the whole console log is.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// QEMU could not be started.
    #[error(
        "guest {name}: cannot start qemu-system-x86_64 ({source}); install QEMU \
         (guest-images/linux/prepare.sh does it as root with apt)"
    )]
    Qemu {
        /// The guest.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// A log file, pipe or thread for the guest could not be had.
    #[error("guest {name}: {what}: {source}")]
    Io {
        /// The guest.
        name: String,
        /// What was being made.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// The guest did not reach its ready marker (or a module did not load).
    #[error("guest {name} did not boot: {reason}\n{console}")]
    Boot {
        /// The guest.
        name: String,
        /// What went wrong.
        reason: String,
        /// The end of its console and QEMU's stderr.
        console: String,
    },
    /// A command could not be run to its end (console closed, give-up limit reached, garbled
    /// status).
    #[error("guest {name}: {cmd:?}: {reason}\n{console}")]
    Command {
        /// The guest.
        name: String,
        /// The command.
        cmd: String,
        /// What went wrong.
        reason: String,
        /// The end of its console and QEMU's stderr.
        console: String,
    },
    /// A command ran and exited with a failure status.
    #[error("guest {name}: {cmd:?} exited {code}:\n{output}\n{console}")]
    Exit {
        /// The guest.
        name: String,
        /// The command.
        cmd: String,
        /// Its exit status.
        code: i32,
        /// What it printed.
        output: String,
        /// The end of the guest's console and QEMU's stderr.
        console: String,
    },
    /// The caller's cancel flag was raised while waiting on the guest.
    #[error("guest {name}: interrupted")]
    Cancelled {
        /// The guest.
        name: String,
    },
}
