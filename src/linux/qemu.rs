//! How a guest is booted: its options and the QEMU command line.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use super::LinuxAssets;

/// How to boot one guest.
#[derive(Clone, Debug)]
pub struct GuestOptions {
    /// Names the console log (`<dir>/logs/<name>.console.log`) and error messages.
    pub name: String,
    /// The vhost-user socket of a `vhost-user-vsock-pci` device, or no vsock device. The
    /// backend must already listen there: QEMU connects at start and fails otherwise.
    pub vsock: Option<PathBuf>,
    /// Guest memory (memfd-backed and shared, as vhost-user needs).
    pub mem_mib: u32,
    /// More kernel command line.
    pub extra_append: String,
    /// Give-up limit for the boot to the ready marker.
    pub boot_timeout: Duration,
    /// When raised, every wait on this guest's console (the boot, commands) ends early with
    /// [`super::GuestError::Cancelled`] (checked at least every 250 ms).
    pub cancel: Option<Arc<AtomicBool>>,
}

impl GuestOptions {
    /// A guest named `name` with a vsock device whose backend listens on `vsock`.
    pub fn new(name: &str, vsock: Option<PathBuf>) -> GuestOptions {
        GuestOptions {
            name: name.to_string(),
            vsock,
            ..GuestOptions::default()
        }
    }
}

impl Default for GuestOptions {
    fn default() -> Self {
        GuestOptions {
            name: "guest".into(),
            vsock: None,
            mem_mib: 256,
            extra_append: String::new(),
            // TCG boots in 8-30 s; more with several guests on two shared, busy cores.
            boot_timeout: Duration::from_secs(300),
            cancel: None,
        }
    }
}

/// The QEMU command line for `opts` (also shown in errors and in the README): one vCPU under
/// TCG (stock Linux cannot boot under every KVM, and TCG runs anywhere), the console on
/// stdio, shared memfd memory for vhost-user.
pub fn qemu_command(assets: &LinuxAssets, opts: &GuestOptions) -> Command {
    let mem = opts.mem_mib;
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ])
    .args(["-accel", "tcg", "-cpu", "max", "-smp", "1", "-m"])
    .arg(format!("{mem}M"))
    // vhost-user needs guest memory the backend can map: a shared memfd.
    .arg("-object")
    .arg(format!("memory-backend-memfd,id=mem,size={mem}M,share=on"))
    .args(["-M", "q35,memory-backend=mem", "-kernel"])
    .arg(&assets.kernel)
    .arg("-initrd")
    .arg(&assets.initramfs)
    .arg("-append")
    .arg(format!("console=ttyS0 quiet panic=-1 {}", opts.extra_append).trim_end())
    .args(["-serial", "stdio"]);
    if let Some(sock) = &opts.vsock {
        c.arg("-chardev")
            .arg(format!("socket,id=vsock,path={}", sock.display()))
            .args(["-device", "vhost-user-vsock-pci,chardev=vsock"]);
    }
    c
}
