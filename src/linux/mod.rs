//! Stock Linux guests under QEMU (TCG): the kernel and initramfs from
//! `guest-images/linux/prepare.sh` ([`LinuxAssets`]), QEMU's command line ([`qemu_command`]),
//! and a guest driven through its serial console ([`LinuxGuest`]: boot, run a command, run
//! one in the background, power off).
//!
//! `vmq demo --linux` and the Linux-guest tests and bench boot their guests with it. QEMU is
//! another process: vmq reaches its guests only through the vhost-user device it serves and
//! through the console.

mod assets;
mod console;
mod error;
mod guest;
mod qemu;

pub use assets::{prepare_script, target_dir, LinuxAssets};
pub use error::{GuestError, PrepareError};
pub use guest::{boot_all, probe_line, BgJob, LinuxGuest};
pub use qemu::{qemu_command, GuestOptions};
