//! Stock Linux guests under QEMU (TCG) for the vsock tests: the library's launcher and
//! console driver (`vmq::linux`), the assets prepared once per process (skipping or failing as
//! the environment asks), and the peer vhost-user vsock backend (rust-vmm's
//! vhost-device-vsock) to check against.

#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use vmq::linux::{
    probe_line, qemu_command, target_dir, BgJob, GuestError, GuestOptions, LinuxAssets, LinuxGuest,
};

/// Held by the tests that boot four guests or more, one at a time: eight TCG guests on two
/// cores would stretch every give-up limit and stall window those tests are set for.
pub fn many_guests_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why Linux guests cannot run here.
#[derive(Clone, Debug)]
pub struct Skip {
    /// What failed or what to install.
    pub message: String,
    /// True when something is missing that this machine could not install (prepare.sh exit
    /// 3); false when preparing failed outright, which is a bug to report, not a skip.
    pub missing: bool,
}

/// Runs `prepare.sh` once per process (the library holds a lock so test binaries running in
/// parallel do not prepare at the same time).
pub fn linux_guests() -> Result<LinuxAssets, Skip> {
    static ASSETS: OnceLock<Result<LinuxAssets, Skip>> = OnceLock::new();
    ASSETS
        .get_or_init(|| {
            LinuxAssets::prepare(&mut |_| {}).map_err(|e| Skip {
                missing: e.is_missing(),
                message: e.to_string(),
            })
        })
        .clone()
}

/// The assets, or `None` after printing `SKIPPED: <what to install>` when they are
/// unavailable. Panics where Linux guests are required (`CI=true`, `VMQ_REQUIRE_LINUX=1`) and
/// whenever preparing failed for another reason than a missing install.
pub fn require_linux_or_skip() -> Option<LinuxAssets> {
    match linux_guests() {
        Ok(a) => Some(a),
        Err(s) => {
            let required = std::env::var("CI").is_ok_and(|v| v == "true")
                || std::env::var("VMQ_REQUIRE_LINUX").is_ok_and(|v| v == "1");
            if required || !s.missing {
                panic!("{}", s.message);
            }
            eprintln!("SKIPPED: {}", s.message);
            None
        }
    }
}

/// Boots the guests in parallel (the library's `boot_all`) and says how long each took, for
/// the reader of a slow run; nothing depends on it.
pub fn boot_all(
    assets: &LinuxAssets,
    opts: Vec<GuestOptions>,
) -> Result<Vec<LinuxGuest>, GuestError> {
    let guests = vmq::linux::boot_all(assets, opts)?;
    for g in &guests {
        eprintln!(
            "guest {}: ready after {:.1} s",
            g.name(),
            g.boot_time().as_secs_f64()
        );
    }
    Ok(guests)
}

/// The peer backend, installed by `guest-images/linux/install-peer.sh`, if it is there.
pub fn peer_binary() -> Option<PathBuf> {
    let p = target_dir().join("peers/bin/vhost-device-vsock");
    p.is_file().then_some(p)
}

/// One guest's side of a vsock backend: its CID, vhost-user socket and hybrid Unix socket.
#[derive(Clone, Debug)]
pub struct VsockVm {
    /// The guest's CID.
    pub cid: u64,
    /// The vhost-user socket QEMU connects to.
    pub socket: PathBuf,
    /// Host side: connect here and write `CONNECT <port>\n` to reach the guest's port;
    /// a guest's connection to CID 2 port P arrives at `<uds>_P`.
    pub uds: PathBuf,
}

impl VsockVm {
    /// A VM with CID `cid` whose sockets live in `dir`.
    pub fn new(dir: &Path, cid: u64) -> VsockVm {
        VsockVm {
            cid,
            socket: dir.join(format!("vhost{cid}.sock")),
            uds: dir.join(format!("vm{cid}.vsock")),
        }
    }
}

/// A running vhost-device-vsock serving `vms` in one sibling group. Dropping it kills it.
pub struct PeerBackend {
    child: Child,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

impl PeerBackend {
    /// Starts `bin` for `vms` (all in group `g`, so they reach each other) and waits until it
    /// listens on every vhost-user socket.
    pub fn start(bin: &Path, vms: &[VsockVm], log: &Path) -> Result<PeerBackend, String> {
        let mut cmd = Command::new(bin);
        for v in vms {
            let _ = fs::remove_file(&v.socket);
            let _ = fs::remove_file(&v.uds);
            cmd.arg("--vm").arg(format!(
                "guest-cid={},socket={},uds-path={},groups=g",
                v.cid,
                v.socket.display(),
                v.uds.display()
            ));
        }
        let out = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = cmd
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("start {}: {e}", bin.display()))?;
        let mut p = PeerBackend {
            child,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !vms.iter().all(|v| v.socket.exists()) {
            if let Ok(Some(st)) = p.child.try_wait() {
                return Err(format!(
                    "{} exited ({st}): {}",
                    bin.display(),
                    fs::read_to_string(log).unwrap_or_default()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not create its sockets within 30 s",
                    bin.display()
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(p)
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for PeerBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Host to guest through a backend's hybrid socket: connects to `uds`, asks for the guest's
/// `port` (`CONNECT <port>\n`) and checks the `OK <port>\n` answer. Retries while the guest
/// refuses (its server may not listen yet), until `timeout`.
pub fn host_connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = (|| -> io::Result<UnixStream> {
            let mut s = UnixStream::connect(uds)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            s.write_all(format!("CONNECT {port}\n").as_bytes())?;
            let mut line = String::new();
            // Byte by byte: what follows the answer is the guest's data.
            let mut b = [0u8; 1];
            while !line.ends_with('\n') {
                if s.read(&mut b)? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        format!("closed after {line:?}"),
                    ));
                }
                line.push(b[0] as char);
            }
            if line.trim_end() != format!("OK {port}") {
                return Err(io::Error::other(format!(
                    "expected \"OK {port}\", got {line:?}"
                )));
            }
            Ok(s)
        })();
        match r {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("CONNECT {port} through {}: {e}", uds.display()))
            }
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Listens where a backend forwards a guest's connections to host port `port`
/// (`<uds>_<port>`).
pub fn host_listen(uds: &Path, port: u32) -> Result<UnixListener, String> {
    let path = PathBuf::from(format!("{}_{port}", uds.display()));
    let _ = fs::remove_file(&path);
    UnixListener::bind(&path).map_err(|e| format!("bind {}: {e}", path.display()))
}

/// Echoes one connection until it closes (a host-side echo server for guest `send`).
pub fn echo_stream(s: &mut UnixStream) -> io::Result<u64> {
    let mut buf = [0u8; 65536];
    let mut total = 0;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        s.write_all(&buf[..n])?;
        total += n as u64;
    }
}
