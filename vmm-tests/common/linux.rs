//! Stock Linux guests under QEMU (TCG) for the vsock tests: assets from
//! `guest-images/linux/prepare.sh`, a guest driven through its serial console, and the peer
//! vhost-user vsock backend (rust-vmm's vhost-device-vsock) to check against.
//!
//! The guest's `/init` runs a shell on ttyS0 with echo off; [`LinuxGuest::run`] wraps each
//! command between unique begin/end markers, so output is parsed by marker, never by timing.
//! Timeouts are give-up limits only.

#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// What the tests boot: the kernel and initramfs that `prepare.sh` made.
#[derive(Clone, Debug)]
pub struct LinuxAssets {
    /// The Debian kernel (bzImage).
    pub kernel: PathBuf,
    /// The initramfs: busybox, the virtio/vsock modules, `/init`, `vsock-probe`.
    pub initramfs: PathBuf,
    /// `<target>/linux-guest`: the assets, and `logs/` with each guest's console.
    pub dir: PathBuf,
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

/// The target directory, as `prepare.sh` computes it.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
    }
}

/// Runs `prepare.sh` once per process, under an exclusive lock on a file in the target dir so
/// test binaries running in parallel do not prepare at the same time.
pub fn linux_guests() -> Result<LinuxAssets, Skip> {
    static ASSETS: OnceLock<Result<LinuxAssets, Skip>> = OnceLock::new();
    ASSETS.get_or_init(prepare).clone()
}

fn prepare() -> Result<LinuxAssets, Skip> {
    let target = target_dir();
    let dir = target.join("linux-guest");
    let fail = |message: String| Skip {
        message,
        missing: false,
    };
    fs::create_dir_all(&dir).map_err(|e| fail(format!("create {}: {e}", dir.display())))?;
    let lock_path = dir.join(".prepare.lock");
    let lock = File::create(&lock_path)
        .map_err(|e| fail(format!("create {}: {e}", lock_path.display())))?;
    // SAFETY: flock on a descriptor we own; released when `lock` is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(fail(format!(
            "flock {}: {}",
            lock_path.display(),
            io::Error::last_os_error()
        )));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-images/linux/prepare.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("CARGO_TARGET_DIR", &target)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail(format!("run {}: {e}", script.display())))?;
    drop(lock);
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => Ok(LinuxAssets {
            kernel: dir.join("vmlinuz"),
            initramfs: dir.join("initramfs.cpio.gz"),
            dir,
        }),
        Some(3) => Err(Skip {
            message: format!("Linux guests unavailable:\n{stderr}"),
            missing: true,
        }),
        _ => Err(fail(format!(
            "{} failed ({}):\n{stderr}{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout)
        ))),
    }
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
        }
    }
}

/// What the console reader collected.
#[derive(Default)]
struct Console {
    text: String,
    /// QEMU closed its stdout (it exited).
    closed: bool,
}

type Shared = Arc<(Mutex<Console>, Condvar)>;

/// Empty lines sent after each command: under TCG the last bytes written to the guest's UART
/// can stay there until more input arrives; empty lines are no-ops for the shell.
const PAD: &str = "\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n";

/// A Linux guest under QEMU, driven through its serial console. Dropping it kills QEMU.
pub struct LinuxGuest {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    console: Shared,
    log: PathBuf,
    stderr_log: PathBuf,
    seq: u64,
}

/// A command running in the background in a guest (see [`LinuxGuest::spawn`]).
#[derive(Clone, Debug)]
pub struct BgJob {
    /// The command.
    pub cmd: String,
    /// Its output file in the guest; ends with `VMQ-EXIT <status>` when it is done.
    pub log: String,
}

/// The QEMU command line for `opts` (also shown in errors and in the README).
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

impl LinuxGuest {
    /// Boots a guest and waits (at most `opts.boot_timeout`) for its ready marker.
    pub fn boot(assets: &LinuxAssets, opts: &GuestOptions) -> Result<LinuxGuest, String> {
        let logs = assets.dir.join("logs");
        fs::create_dir_all(&logs).map_err(|e| format!("create {}: {e}", logs.display()))?;
        let log = logs.join(format!("{}.console.log", opts.name));
        let stderr_log = logs.join(format!("{}.qemu-stderr.log", opts.name));
        let mut cmd = qemu_command(assets, opts);
        let shown = format!("{cmd:?}");
        let err_file =
            File::create(&stderr_log).map_err(|e| format!("{}: {e}", stderr_log.display()))?;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err_file)
            .spawn()
            .map_err(|e| {
                format!(
                    "{}: cannot start qemu-system-x86_64 ({e}); run guest-images/linux/prepare.sh",
                    opts.name
                )
            })?;
        let stdout = child.stdout.take().expect("piped stdout");
        let console: Shared = Arc::default();
        let reader = Arc::clone(&console);
        let log_file = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        thread::Builder::new()
            .name(format!("{}-console", opts.name))
            .spawn(move || read_console(stdout, log_file, reader))
            .map_err(|e| format!("console reader thread: {e}"))?;
        let g = LinuxGuest {
            name: opts.name.clone(),
            stdin: child.stdin.take(),
            child,
            console,
            log,
            stderr_log,
            seq: 0,
        };
        let started = Instant::now();
        let ready = g.wait_for(0, "VMQ-GUEST ready", opts.boot_timeout);
        match ready {
            Ok(_) => {
                // For the reader of a slow run; nothing depends on it.
                eprintln!(
                    "guest {}: ready after {:.1} s",
                    g.name,
                    started.elapsed().as_secs_f64()
                );
                let text = g.console.0.lock().unwrap().text.clone();
                if let Some(l) = text.lines().find(|l| l.contains("VMQ-GUEST insmod failed")) {
                    return Err(g.failure(&format!("boot: {l}")));
                }
                Ok(g)
            }
            Err(e) => Err(g.failure(&format!("boot ({shown}): {e}"))),
        }
    }

    /// The guest's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host file with everything the guest printed on its console.
    pub fn console_log(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the console and QEMU's stderr, for error messages.
    pub fn console_tail(&self, lines: usize) -> String {
        let text = self.console.0.lock().unwrap().text.clone();
        let all: Vec<&str> = text.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        let stderr = fs::read_to_string(&self.stderr_log).unwrap_or_default();
        format!(
            "--- console of {} ({}), last {lines} lines:\n{tail}\n--- qemu stderr:\n{stderr}---",
            self.name,
            self.log.display()
        )
    }

    fn failure(&self, what: &str) -> String {
        format!("guest {}: {what}\n{}", self.name, self.console_tail(40))
    }

    /// Waits until `needle` appears in the console text from byte `from` on; returns the
    /// offset just past it.
    fn wait_for(&self, from: usize, needle: &str, timeout: Duration) -> Result<usize, String> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.console;
        let mut c = lock.lock().unwrap();
        loop {
            if let Some(i) = c.text.get(from..).and_then(|t| t.find(needle)) {
                return Ok(from + i + needle.len());
            }
            if c.closed {
                return Err(format!("QEMU exited while waiting for {needle:?}"));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "{needle:?} did not appear within {} s",
                    timeout.as_secs()
                ));
            }
            c = cv.wait_timeout(c, deadline - now).unwrap().0;
        }
    }

    /// Waits like [`Self::wait_for`], writing [`PAD`] whenever nothing arrived for 5 s, in
    /// case the end of what was sent is stuck in the UART.
    fn wait_nudging(
        &mut self,
        from: usize,
        needle: &str,
        timeout: Duration,
    ) -> Result<usize, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.console.0.lock().unwrap().text.len();
            let left = deadline.saturating_duration_since(Instant::now());
            match self.wait_for(from, needle, left.min(Duration::from_secs(5))) {
                Ok(at) => return Ok(at),
                Err(e) if Instant::now() >= deadline || self.console.0.lock().unwrap().closed => {
                    return Err(e)
                }
                Err(_) => {
                    if self.console.0.lock().unwrap().text.len() == seen {
                        self.write_line(PAD)?;
                    }
                }
            }
        }
    }

    fn write_line(&mut self, line: &str) -> Result<(), String> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| "the console is closed".to_string())?;
        stdin
            .write_all(line.as_bytes())
            .and_then(|_| stdin.flush())
            .map_err(|e| format!("write to the console: {e}"))
    }

    /// Runs `cmd` (a shell command line) in the guest and returns its exit status and output
    /// (stdout and stderr). Gives up after `timeout` (the command may still be running then).
    pub fn run(&mut self, cmd: &str, timeout: Duration) -> Result<(i32, String), String> {
        self.seq += 1;
        let n = self.seq;
        // Markers are split by '' in what is sent so that, should the tty ever echo, the echo
        // cannot match; `sh -c` confines a syntax error to this command; stdin is /dev/null
        // so the command cannot eat the next lines.
        let line = format!(
            "echo VMQ-BE''GIN-{n}; sh -c '{}' </dev/null 2>&1; echo VMQ-E''ND-{n} $?\n{PAD}",
            cmd.replace('\'', r"'\''")
        );
        // The tty's canonical mode takes lines of at most 4095 bytes.
        if line.len() >= 4000 {
            return Err(format!(
                "command too long for the serial console ({} bytes)",
                line.len()
            ));
        }
        let start = self.console.0.lock().unwrap().text.len();
        self.write_line(&line)
            .map_err(|e| self.failure(&format!("run {cmd:?}: {e}")))?;
        let begin_tag = format!("VMQ-BEGIN-{n}\n");
        let end_tag = format!("VMQ-END-{n} ");
        let deadline = Instant::now() + timeout;
        let result = self.wait_nudging(start, &begin_tag, timeout).and_then(|b| {
            let left = deadline.saturating_duration_since(Instant::now());
            let e = self.wait_nudging(b, &end_tag, left)?;
            let e = self.wait_nudging(e, "\n", Duration::from_secs(10))?;
            Ok((b, e))
        });
        let (b, e) = result.map_err(|err| self.failure(&format!("run {cmd:?}: {err}")))?;
        let text = self.console.0.lock().unwrap().text[b..e].to_string();
        let end_at = text.rfind(&end_tag).expect("end tag found above");
        let status = text[end_at + end_tag.len()..].trim();
        let code = status
            .parse()
            .map_err(|_| self.failure(&format!("run {cmd:?}: bad exit status {status:?}")))?;
        Ok((code, text[..end_at].to_string()))
    }

    /// [`LinuxGuest::run`], failing (with the output) unless the command exits 0.
    pub fn run_ok(&mut self, cmd: &str, timeout: Duration) -> Result<String, String> {
        let (code, out) = self.run(cmd, timeout)?;
        if code != 0 {
            return Err(self.failure(&format!("{cmd:?} exited {code}:\n{out}")));
        }
        Ok(out)
    }

    /// Starts `cmd` in the background in the guest, its output going to a file there.
    pub fn spawn(&mut self, cmd: &str) -> Result<BgJob, String> {
        let log = format!("/tmp/bg-{}.log", self.seq + 1);
        let bg = format!("({cmd}; echo VMQ-EXIT $?) > {log} 2>&1 &");
        self.run_ok(&bg, Duration::from_secs(60))?;
        Ok(BgJob {
            cmd: cmd.to_string(),
            log,
        })
    }

    /// What a background job printed so far.
    pub fn output(&mut self, job: &BgJob) -> Result<String, String> {
        self.run_ok(&format!("cat {}", job.log), Duration::from_secs(60))
    }

    /// Waits until a background job's output contains `needle` (say, a server's
    /// "listening" line); returns the output. Polls every 200 ms.
    pub fn wait_output(
        &mut self,
        job: &BgJob,
        needle: &str,
        timeout: Duration,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.output(job)?;
            if out.contains(needle) {
                return Ok(out);
            }
            if Instant::now() >= deadline {
                return Err(self.failure(&format!(
                    "background {:?} did not print {needle:?} within {} s; it printed:\n{out}",
                    job.cmd,
                    timeout.as_secs()
                )));
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for a background job to end; returns its exit status and output.
    pub fn wait_job(&mut self, job: &BgJob, timeout: Duration) -> Result<(i32, String), String> {
        let out = self.wait_output(job, "VMQ-EXIT ", timeout)?;
        let at = out.rfind("VMQ-EXIT ").expect("found above");
        let status = out[at + "VMQ-EXIT ".len()..].trim();
        let code = status
            .parse()
            .map_err(|_| self.failure(&format!("job {:?}: bad status {status:?}", job.cmd)))?;
        Ok((code, out[..at].to_string()))
    }

    /// Powers the guest off and waits for QEMU to exit (killing it after 30 s).
    pub fn shutdown(mut self) -> Result<ExitStatus, String> {
        let _ = self.write_line(&format!("poweroff -f\n{PAD}"));
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => return Ok(st),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(100)),
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(self.failure("did not power off within 30 s; killed"));
                }
                Err(e) => return Err(format!("wait for QEMU: {e}")),
            }
        }
    }
}

impl Drop for LinuxGuest {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn read_console(mut stdout: impl Read, mut log: File, console: Shared) {
    let mut buf = [0u8; 4096];
    loop {
        let n = match stdout.read(&mut buf) {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        let (lock, cv) = &*console;
        let mut c = lock.lock().unwrap();
        if n == 0 {
            c.closed = true;
            cv.notify_all();
            return;
        }
        let _ = log.write_all(&buf[..n]);
        // The serial line ends lines with \r\n.
        c.text.extend(
            String::from_utf8_lossy(&buf[..n])
                .chars()
                .filter(|&ch| ch != '\r'),
        );
        cv.notify_all();
    }
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

/// The probe's verdict line (`VMQ-PROBE ok ...` or `VMQ-PROBE fail ...`) in `out`.
pub fn probe_line(out: &str) -> Option<&str> {
    out.lines()
        .find(|l| l.starts_with("VMQ-PROBE ok") || l.starts_with("VMQ-PROBE fail"))
}

/// Boots the guests in parallel (boots are the slow part under TCG).
pub fn boot_all(assets: &LinuxAssets, opts: Vec<GuestOptions>) -> Result<Vec<LinuxGuest>, String> {
    let handles: Vec<_> = opts
        .into_iter()
        .map(|o| {
            let a = assets.clone();
            thread::spawn(move || LinuxGuest::boot(&a, &o))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().map_err(|_| "a boot thread panicked".to_string())?)
        .collect()
}
