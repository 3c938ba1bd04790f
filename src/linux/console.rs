//! A guest's serial console as QEMU writes it to its stdout: collected by a reader thread
//! (and copied to a log file), searched for markers by whoever waits on it.

use std::fs::File;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// What the reader collected.
#[derive(Default)]
struct State {
    /// Everything the guest printed, without the serial line's `\r`.
    text: String,
    /// QEMU closed its stdout (it exited).
    closed: bool,
}

/// Why a wait on the console ended without its marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Missed {
    /// QEMU exited.
    Closed,
    /// The give-up limit passed.
    TimedOut,
    /// The cancel flag was raised.
    Cancelled,
}

/// How often a wait looks at the cancel flag.
const CANCEL_CHECK: Duration = Duration::from_millis(250);

/// The console of one guest.
pub(super) struct Console {
    shared: Arc<(Mutex<State>, Condvar)>,
    cancel: Option<Arc<AtomicBool>>,
}

impl Console {
    /// Starts a thread that reads `stdout` until QEMU closes it, appending to the text and to
    /// `log`.
    pub fn start(
        name: &str,
        stdout: impl Read + Send + 'static,
        log: File,
        cancel: Option<Arc<AtomicBool>>,
    ) -> std::io::Result<Console> {
        let shared: Arc<(Mutex<State>, Condvar)> = Arc::default();
        let reader = Arc::clone(&shared);
        thread::Builder::new()
            .name(format!("{name}-console"))
            .spawn(move || read_console(stdout, log, reader))?;
        Ok(Console { shared, cancel })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The reader never panics holding the lock; a poisoned one still has the text.
        self.shared.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes collected so far.
    pub fn len(&self) -> usize {
        self.state().text.len()
    }

    /// The text between byte offsets `from` and `to`.
    pub fn slice(&self, from: usize, to: usize) -> String {
        self.state()
            .text
            .get(from..to)
            .unwrap_or_default()
            .to_string()
    }

    /// The first line containing `needle`, if any.
    pub fn find_line(&self, needle: &str) -> Option<String> {
        let s = self.state();
        s.text
            .lines()
            .find(|l| l.contains(needle))
            .map(str::to_string)
    }

    /// The last `lines` lines.
    pub fn tail(&self, lines: usize) -> String {
        let s = self.state();
        let all: Vec<&str> = s.text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Whether the caller's cancel flag is up.
    pub fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }

    /// Waits until `needle` appears in the text from byte `from` on; returns the offset just
    /// past it.
    pub fn wait_for(&self, from: usize, needle: &str, timeout: Duration) -> Result<usize, Missed> {
        let deadline = Instant::now() + timeout;
        let (_, cv) = &*self.shared;
        let mut s = self.state();
        loop {
            if let Some(i) = s.text.get(from..).and_then(|t| t.find(needle)) {
                return Ok(from + i + needle.len());
            }
            if s.closed {
                return Err(Missed::Closed);
            }
            if self.cancelled() {
                return Err(Missed::Cancelled);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Missed::TimedOut);
            }
            s = cv
                .wait_timeout(s, (deadline - now).min(CANCEL_CHECK))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

fn read_console(mut stdout: impl Read, mut log: File, shared: Arc<(Mutex<State>, Condvar)>) {
    let mut buf = [0u8; 4096];
    loop {
        let n = match stdout.read(&mut buf) {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        let (lock, cv) = &*shared;
        let mut c = lock.lock().unwrap_or_else(|p| p.into_inner());
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
