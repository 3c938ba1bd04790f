//! Thread placement for benchmarks: which CPU each side spins on.

/// Where the two sides of a benchmark run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// CPU of the producing (driver) thread, if pinned.
    pub producer: Option<usize>,
    /// CPU of the consuming (device) thread, if pinned.
    pub consumer: Option<usize>,
}

impl Placement {
    /// Producer on CPU 0 and consumer on CPU 1 when the machine has two CPUs or more;
    /// unpinned otherwise.
    pub fn two_cores() -> Self {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        if n >= 2 {
            Self {
                producer: Some(0),
                consumer: Some(1),
            }
        } else {
            Self {
                producer: None,
                consumer: None,
            }
        }
    }

    /// Human-readable description for reports.
    pub fn describe(&self) -> String {
        let cpu = |c: Option<usize>| c.map_or("unpinned".to_string(), |c| format!("cpu{c}"));
        format!(
            "producer {} / consumer {}",
            cpu(self.producer),
            cpu(self.consumer)
        )
    }
}

/// Pins the calling thread to `cpu`. Failure (e.g. a restricted cpuset) is logged and ignored:
/// the benchmark still runs, only unpinned.
pub fn pin_current_thread(cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        set_affinity(cpu..cpu + 1);
    }
}

/// Lets the calling thread (and the threads it spawns from now on, which inherit its mask) run
/// on every CPU again, after [`pin_current_thread`]. Failure is logged and ignored.
pub fn unpin_current_thread() {
    set_affinity(0..std::thread::available_parallelism().map_or(1, |n| n.get()));
}

/// Sets the calling thread's CPU mask to `cpus` (those below `CPU_SETSIZE`).
fn set_affinity(cpus: std::ops::Range<usize>) {
    // SAFETY: `cpu_set_t` is a plain bitmask; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for cpu in cpus.clone().filter(|&c| c < libc::CPU_SETSIZE as usize) {
        // SAFETY: `cpu` is below CPU_SETSIZE (filtered above), and `set` is a valid,
        // exclusively borrowed cpu_set_t.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: pid 0 means the calling thread; `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        log::warn!(
            "could not set the thread's CPUs to {cpus:?}: {}",
            std::io::Error::last_os_error()
        );
    }
}
