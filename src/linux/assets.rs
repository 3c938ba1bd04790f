//! The kernel and initramfs the guests boot, made by `guest-images/linux/prepare.sh`.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;

use super::PrepareError;

/// What a guest boots: the kernel and initramfs that `prepare.sh` made.
#[derive(Clone, Debug)]
pub struct LinuxAssets {
    /// The Debian kernel (bzImage).
    pub kernel: PathBuf,
    /// The initramfs: busybox, the virtio/vsock modules, `/init`, `vsock-probe`.
    pub initramfs: PathBuf,
    /// `<target>/linux-guest`: the assets, and `logs/` with each guest's console.
    pub dir: PathBuf,
}

/// The source tree this crate was built from: `prepare.sh` and the guest's sources live there.
fn source_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The target directory, as `prepare.sh` computes it: `$CARGO_TARGET_DIR`, else `target/` in
/// the source tree.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => source_dir().join("target"),
    }
}

/// The script that prepares the guests.
pub fn prepare_script() -> PathBuf {
    source_dir().join("guest-images/linux/prepare.sh")
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> PrepareError {
    move |source| PrepareError::Io { what, source }
}

impl LinuxAssets {
    /// Runs `prepare.sh` (quick when everything is up to date; on a fresh machine it installs
    /// QEMU and busybox as root, downloads a kernel and builds the initramfs) and returns what
    /// it made. Each line the script prints on stderr goes to `progress` as it comes.
    ///
    /// An exclusive lock on a file in the target dir keeps processes that prepare at the same
    /// time (test binaries in parallel) from building over each other.
    pub fn prepare(progress: &mut dyn FnMut(&str)) -> Result<LinuxAssets, PrepareError> {
        let target = target_dir();
        let dir = target.join("linux-guest");
        fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        let lock_path = dir.join(".prepare.lock");
        let lock =
            File::create(&lock_path).map_err(io_err(format!("create {}", lock_path.display())))?;
        // SAFETY: flock on a descriptor we own; released when `lock` is closed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(PrepareError::Io {
                what: format!("flock {}", lock_path.display()),
                source: std::io::Error::last_os_error(),
            });
        }
        let script = prepare_script();
        let mut child = Command::new("bash")
            .arg(&script)
            .env("CARGO_TARGET_DIR", &target)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err(format!("run {}", script.display())))?;
        // stdout on a thread of its own, so neither pipe can fill while the other is read.
        let mut stdout = child.stdout.take().expect("piped stdout");
        // Bytes, not text: apt and dpkg may write in another encoding, and a reader that stopped
        // at the first bad byte would close the pipe under the script (SIGPIPE half way).
        let out_reader = thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = stdout.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        });
        let mut stderr = String::new();
        let mut err = BufReader::new(child.stderr.take().expect("piped stderr"));
        let mut raw = Vec::new();
        while err.read_until(b'\n', &mut raw).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches('\n');
            progress(line);
            stderr.push_str(line);
            stderr.push('\n');
            raw.clear();
        }
        let status = child
            .wait()
            .map_err(io_err(format!("wait for {}", script.display())))?;
        let stdout = out_reader.join().unwrap_or_default();
        drop(lock);
        match status.code() {
            Some(0) => Ok(LinuxAssets {
                kernel: dir.join("vmlinuz"),
                initramfs: dir.join("initramfs.cpio.gz"),
                dir,
            }),
            Some(3) => Err(PrepareError::Missing {
                script,
                what: stderr,
            }),
            _ => Err(PrepareError::Failed {
                script,
                status,
                output: format!("{stderr}{stdout}"),
            }),
        }
    }
}
