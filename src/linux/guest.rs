//! A Linux guest under QEMU, driven through its serial console.
//!
//! The guest's `/init` runs a shell on ttyS0 with echo off; [`LinuxGuest::run`] wraps each
//! command between unique begin/end markers, so output is parsed by marker, never by timing.
//! Timeouts are give-up limits only.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::console::{Console, Missed};
use super::{qemu_command, GuestError, GuestOptions, LinuxAssets};

/// Empty lines sent after each command: under TCG the last bytes written to the guest's UART
/// can stay there until more input arrives; empty lines are no-ops for the shell.
const PAD: &str = "\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n";

/// Console lines in an error message.
const TAIL_LINES: usize = 40;

/// A Linux guest under QEMU, driven through its serial console. Dropping it kills QEMU.
pub struct LinuxGuest {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    console: Console,
    log: PathBuf,
    stderr_log: PathBuf,
    seq: u64,
    boot_time: Duration,
}

/// A command running in the background in a guest (see [`LinuxGuest::spawn`]).
#[derive(Clone, Debug)]
pub struct BgJob {
    /// The command.
    pub cmd: String,
    /// Its output file in the guest; ends with `VMQ-EXIT <status>` when it is done.
    pub log: String,
}

fn describe(m: Missed, needle: &str, timeout: Duration) -> String {
    match m {
        Missed::Closed => format!("QEMU exited while waiting for {needle:?}"),
        Missed::TimedOut => format!("{needle:?} did not appear within {} s", timeout.as_secs()),
        Missed::Cancelled => format!("interrupted while waiting for {needle:?}"),
    }
}

impl LinuxGuest {
    /// Boots a guest and waits (at most `opts.boot_timeout`) for its ready marker.
    pub fn boot(assets: &LinuxAssets, opts: &GuestOptions) -> Result<LinuxGuest, GuestError> {
        let name = opts.name.clone();
        let io = |what: String| {
            let name = name.clone();
            move |source| GuestError::Io { name, what, source }
        };
        let logs = assets.dir.join("logs");
        fs::create_dir_all(&logs).map_err(io(format!("create {}", logs.display())))?;
        let log = logs.join(format!("{name}.console.log"));
        let stderr_log = logs.join(format!("{name}.qemu-stderr.log"));
        let mut cmd = qemu_command(assets, opts);
        let shown = format!("{cmd:?}");
        let err_file =
            File::create(&stderr_log).map_err(io(format!("create {}", stderr_log.display())))?;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err_file)
            .spawn()
            .map_err(|source| GuestError::Qemu {
                name: name.clone(),
                source,
            })?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        // QEMU runs: a failure kills it (by hand until `g` owns it, then by dropping `g`).
        let log_file = File::create(&log).map_err(io(format!("create {}", log.display())));
        let console = log_file.and_then(|f| {
            Console::start(&name, stdout, f, opts.cancel.clone())
                .map_err(io("console reader thread".into()))
        });
        let console = match console {
            Ok(c) => c,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        let mut g = LinuxGuest {
            name,
            stdin,
            child,
            console,
            log,
            stderr_log,
            seq: 0,
            boot_time: Duration::ZERO,
        };
        let started = Instant::now();
        match g.console.wait_for(0, "VMQ-GUEST ready", opts.boot_timeout) {
            Ok(_) => {
                g.boot_time = started.elapsed();
                log::info!(
                    "guest {}: ready after {:.1} s",
                    g.name,
                    g.boot_time.as_secs_f64()
                );
                if let Some(l) = g.console.find_line("VMQ-GUEST insmod failed") {
                    return Err(g.boot_error(l));
                }
                Ok(g)
            }
            Err(Missed::Cancelled) => Err(GuestError::Cancelled {
                name: g.name.clone(),
            }),
            Err(m) => Err(g.boot_error(format!(
                "{} ({shown})",
                describe(m, "VMQ-GUEST ready", opts.boot_timeout)
            ))),
        }
    }

    fn boot_error(&self, reason: String) -> GuestError {
        GuestError::Boot {
            name: self.name.clone(),
            reason,
            console: self.console_tail(TAIL_LINES),
        }
    }

    fn command_error(&self, cmd: &str, reason: String) -> GuestError {
        if self.console.cancelled() {
            return GuestError::Cancelled {
                name: self.name.clone(),
            };
        }
        GuestError::Command {
            name: self.name.clone(),
            cmd: cmd.to_string(),
            reason,
            console: self.console_tail(TAIL_LINES),
        }
    }

    /// The guest's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How long it took from starting QEMU to the guest's ready marker.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// The host file with everything the guest printed on its console.
    pub fn console_log(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the console and QEMU's stderr, for error messages.
    pub fn console_tail(&self, lines: usize) -> String {
        let tail = self.console.tail(lines);
        let stderr = fs::read_to_string(&self.stderr_log).unwrap_or_default();
        format!(
            "--- console of {} ({}), last {lines} lines:\n{tail}\n--- qemu stderr:\n{stderr}---",
            self.name,
            self.log.display()
        )
    }

    /// Waits like [`Console::wait_for`], writing [`PAD`] whenever nothing arrived for 5 s, in
    /// case the end of what was sent is stuck in the UART.
    fn wait_nudging(
        &mut self,
        from: usize,
        needle: &str,
        timeout: Duration,
    ) -> Result<usize, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.console.len();
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .console
                .wait_for(from, needle, left.min(Duration::from_secs(5)))
            {
                Ok(at) => return Ok(at),
                Err(m @ (Missed::Closed | Missed::Cancelled)) => {
                    return Err(describe(m, needle, timeout))
                }
                Err(m) if Instant::now() >= deadline => return Err(describe(m, needle, timeout)),
                Err(_) => {
                    if self.console.len() == seen {
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
    pub fn run(&mut self, cmd: &str, timeout: Duration) -> Result<(i32, String), GuestError> {
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
            return Err(self.command_error(
                cmd,
                format!(
                    "command too long for the serial console ({} bytes)",
                    line.len()
                ),
            ));
        }
        let start = self.console.len();
        self.write_line(&line)
            .map_err(|e| self.command_error(cmd, e))?;
        let begin_tag = format!("VMQ-BEGIN-{n}\n");
        let end_tag = format!("VMQ-END-{n} ");
        let deadline = Instant::now() + timeout;
        let result = self.wait_nudging(start, &begin_tag, timeout).and_then(|b| {
            let left = deadline.saturating_duration_since(Instant::now());
            let e = self.wait_nudging(b, &end_tag, left)?;
            let e = self.wait_nudging(e, "\n", Duration::from_secs(10))?;
            Ok((b, e))
        });
        let (b, e) = result.map_err(|err| self.command_error(cmd, err))?;
        let text = self.console.slice(b, e);
        let end_at = text.rfind(&end_tag).expect("end tag found above");
        let status = text[end_at + end_tag.len()..].trim();
        let code = status
            .parse()
            .map_err(|_| self.command_error(cmd, format!("bad exit status {status:?}")))?;
        Ok((code, text[..end_at].to_string()))
    }

    /// [`LinuxGuest::run`], failing (with the output) unless the command exits 0.
    pub fn run_ok(&mut self, cmd: &str, timeout: Duration) -> Result<String, GuestError> {
        let (code, output) = self.run(cmd, timeout)?;
        if code != 0 {
            return Err(GuestError::Exit {
                name: self.name.clone(),
                cmd: cmd.to_string(),
                code,
                output,
                console: self.console_tail(TAIL_LINES),
            });
        }
        Ok(output)
    }

    /// Starts `cmd` in the background in the guest, its output going to a file there.
    pub fn spawn(&mut self, cmd: &str) -> Result<BgJob, GuestError> {
        let log = format!("/tmp/bg-{}.log", self.seq + 1);
        // The log exists before the job starts: the backgrounded shell opens its redirection
        // only when it gets to run, and a `cat` of it right after could come first.
        let bg = format!(": > {log}; ({cmd}; echo VMQ-EXIT $?) >> {log} 2>&1 &");
        self.run_ok(&bg, Duration::from_secs(60))?;
        Ok(BgJob {
            cmd: cmd.to_string(),
            log,
        })
    }

    /// What a background job printed so far.
    pub fn output(&mut self, job: &BgJob) -> Result<String, GuestError> {
        self.run_ok(&format!("cat {}", job.log), Duration::from_secs(60))
    }

    /// Waits until a background job's output contains `needle` (say, a server's
    /// "listening" line); returns the output. Polls every 200 ms.
    pub fn wait_output(
        &mut self,
        job: &BgJob,
        needle: &str,
        timeout: Duration,
    ) -> Result<String, GuestError> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.output(job)?;
            if out.contains(needle) {
                return Ok(out);
            }
            if Instant::now() >= deadline {
                return Err(self.command_error(
                    &job.cmd,
                    format!(
                        "did not print {needle:?} in the background within {} s; it printed:\n{out}",
                        timeout.as_secs()
                    ),
                ));
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for a background job to end; returns its exit status and output.
    pub fn wait_job(
        &mut self,
        job: &BgJob,
        timeout: Duration,
    ) -> Result<(i32, String), GuestError> {
        let out = self.wait_output(job, "VMQ-EXIT ", timeout)?;
        let at = out.rfind("VMQ-EXIT ").expect("found above");
        let status = out[at + "VMQ-EXIT ".len()..].trim();
        let code = status.parse().map_err(|_| {
            self.command_error(
                &job.cmd,
                format!("bad status {status:?} of a background job"),
            )
        })?;
        Ok((code, out[..at].to_string()))
    }

    /// Powers the guest off and waits for QEMU to exit (killing it after 30 s).
    pub fn shutdown(mut self) -> Result<ExitStatus, GuestError> {
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
                    return Err(self.command_error(
                        "poweroff -f",
                        "did not power off within 30 s; killed".into(),
                    ));
                }
                Err(source) => {
                    return Err(GuestError::Io {
                        name: self.name.clone(),
                        what: "wait for QEMU".into(),
                        source,
                    })
                }
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

/// Boots the guests in parallel (boots are the slow part under TCG), in the order given.
pub fn boot_all(
    assets: &LinuxAssets,
    opts: Vec<GuestOptions>,
) -> Result<Vec<LinuxGuest>, GuestError> {
    let handles: Vec<_> = opts
        .into_iter()
        .map(|o| {
            let a = assets.clone();
            let name = o.name.clone();
            (name, thread::spawn(move || LinuxGuest::boot(&a, &o)))
        })
        .collect();
    // Join every thread before answering, so no QEMU outlives a failed boot_all.
    let results: Vec<_> = handles
        .into_iter()
        .map(|(name, h)| {
            h.join().unwrap_or_else(|_| {
                Err(GuestError::Boot {
                    name,
                    reason: "its boot thread panicked".into(),
                    console: String::new(),
                })
            })
        })
        .collect();
    results.into_iter().collect()
}

/// The probe's verdict line (`VMQ-PROBE ok ...` or `VMQ-PROBE fail ...`) in `out`.
pub fn probe_line(out: &str) -> Option<&str> {
    out.lines()
        .find(|l| l.starts_with("VMQ-PROBE ok") || l.starts_with("VMQ-PROBE fail"))
}
