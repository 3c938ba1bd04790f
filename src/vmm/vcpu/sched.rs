//! [`SchedStat`]: what the kernel's scheduler says of one vCPU thread.

use std::cell::Cell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Instant;

/// One thread's `/proc/self/task/TID/schedstat` (time on a CPU, time waited on a run queue)
/// and `stat` (its state), kept open: a reading is two `pread`s.
///
/// The kernel adds a wait on a run queue to `schedstat` only when the wait ends (the thread
/// gets a CPU), so a thread that is runnable and has not run since the last reading is counted
/// as waiting for that time too ([`SchedStat::run_queue_wait_ns`]).
#[derive(Debug)]
pub struct SchedStat {
    schedstat: File,
    stat: File,
    last: Cell<Option<Reading>>,
    ongoing_ns: Cell<u64>,
}

#[derive(Clone, Copy, Debug)]
struct Reading {
    at: Instant,
    ran_ns: u64,
}

impl SchedStat {
    /// Opens the scheduler statistics of thread `tid` of this process; `None` where the
    /// kernel does not offer them.
    pub fn open(tid: i32) -> Option<Self> {
        let open = |what| File::open(format!("/proc/self/task/{tid}/{what}")).ok();
        Some(Self {
            schedstat: open("schedstat")?,
            stat: open("stat")?,
            last: Cell::new(None),
            ongoing_ns: Cell::new(0),
        })
    }

    /// The scheduler statistics of the calling thread.
    pub fn current_thread() -> Option<Self> {
        // SAFETY: gettid has no preconditions and cannot fail.
        Self::open(unsafe { libc::gettid() })
    }

    /// Nanoseconds the thread has spent on a CPU, and waiting on a run queue (waits that
    /// ended), so far.
    pub fn read(&self) -> Option<(u64, u64)> {
        let mut buf = [0u8; 96];
        let n = self.schedstat.read_at(&mut buf, 0).ok()?;
        let text = std::str::from_utf8(&buf[..n]).ok()?;
        let mut fields = text.split_ascii_whitespace().map(str::parse::<u64>);
        let ran = fields.next()?.ok()?;
        let waited = fields.next()?.ok()?;
        Some((ran, waited))
    }

    /// Whether the thread is runnable (running or waiting for a CPU) rather than asleep.
    pub fn runnable(&self) -> Option<bool> {
        let mut buf = [0u8; 512];
        let n = self.stat.read_at(&mut buf, 0).ok()?;
        // "TID (comm) S ...": the state follows the last ')' (comm may hold anything).
        let text = &buf[..n];
        let close = text.iter().rposition(|&b| b == b')')?;
        let state = text.get(close + 2)?;
        Some(*state == b'R')
    }

    /// Nanoseconds the thread has waited for a CPU so far: the waits the kernel has counted,
    /// plus the time since the last reading if it was runnable and did not run.
    pub fn run_queue_wait_ns(&self) -> Option<u64> {
        let (ran, waited) = self.read()?;
        let now = Instant::now();
        if let Some(last) = self.last.get() {
            let idle = ran == last.ran_ns && self.runnable() == Some(true);
            let gap = now.duration_since(last.at).as_nanos() as u64;
            self.ongoing_ns
                .set(if idle { self.ongoing_ns.get() + gap } else { 0 });
        }
        self.last.set(Some(Reading {
            at: now,
            ran_ns: ran,
        }));
        Some(waited + self.ongoing_ns.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_parse_and_never_go_back() {
        let Some(s) = SchedStat::current_thread() else {
            // A kernel without schedstats: nothing to read, and callers get `None`.
            return;
        };
        let (ran0, waited0) = s.read().expect("schedstat parses");
        // The calling thread is running.
        assert_eq!(s.runnable(), Some(true));
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        std::thread::yield_now();
        let (ran1, waited1) = s.read().expect("schedstat parses");
        assert!(ran1 >= ran0 && waited1 >= waited0);
        assert!(s.run_queue_wait_ns().is_some());
    }

    #[test]
    fn a_sleeping_thread_is_not_runnable() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() }).unwrap();
            let _ = done_rx.recv();
        });
        let tid = rx.recv().unwrap();
        if let Some(s) = SchedStat::open(tid) {
            // It blocks in recv once the host has run it that far: wait for it (30 s is a hang
            // guard, nothing is asserted about time).
            let give_up = Instant::now() + std::time::Duration::from_secs(30);
            while s.runnable() != Some(false) {
                assert!(Instant::now() < give_up, "never seen asleep");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        done_tx.send(()).unwrap();
        t.join().unwrap();
    }
}
