//! The vCPU thread: the `KVM_RUN` loop, port-I/O handling and the handle that joins or stops it.

mod console;
mod counters;

use std::os::fd::AsRawFd;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

pub use console::Console;
pub use counters::{ExitCounters, ExitSnapshot};

mod sched;

pub use sched::SchedStat;

use super::bus::MmioBus;
use super::error::{Error, Result};
use crate::abi::platform;

/// How a guest run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// The guest wrote this status to [`platform::PORT_EXIT`].
    Exited(u32),
    /// The guest faulted (triple fault / `KVM_EXIT_SHUTDOWN`); `rip` where known.
    Shutdown {
        /// The guest's instruction pointer after the fault, if KVM reported it.
        rip: Option<u64>,
    },
    /// The guest halted (only possible at CPL 0).
    Halted,
    /// [`VcpuHandle::stop`] ended the run.
    Stopped,
}

/// State shared between the vCPU thread and its handle.
#[derive(Debug)]
struct Shared {
    /// The vCPU thread's kernel thread id, once it runs (0 before).
    tid: AtomicI32,
    stop: AtomicBool,
    stop_evt: EventFd,
    /// Address of `kvm_run.immediate_exit` while the vCPU fd is alive.
    immediate_exit: Mutex<Option<usize>>,
}

/// Everything the vCPU thread needs.
pub(crate) struct VcpuContext {
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) bus: MmioBus,
    pub(crate) console: Console,
    pub(crate) counters: Arc<ExitCounters>,
    pub(crate) work: Arc<EventFd>,
}

static SIGNAL_HANDLER: Once = std::sync::Once::new();

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: the signal only makes KVM_RUN or a blocking call return with EINTR.
}

/// The signal used to kick a vCPU thread out of `KVM_RUN`.
fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

fn install_kick_handler() -> Result<()> {
    let mut res = Ok(());
    SIGNAL_HANDLER.call_once(|| {
        res = register_signal_handler(kick_signal(), kick_handler).map_err(|e| Error::Host {
            what: "the vCPU kick signal handler",
            source: e.into(),
        });
    });
    res
}

/// A running vCPU. Dropping it stops and joins the thread.
#[derive(Debug)]
pub struct VcpuHandle {
    thread: Option<JoinHandle<Result<RunOutcome>>>,
    shared: Arc<Shared>,
}

impl VcpuHandle {
    /// Starts the vCPU loop on a new thread named `vcpu-<name>`.
    pub(crate) fn spawn(name: &str, vcpu: VcpuFd, ctx: VcpuContext) -> Result<Self> {
        install_kick_handler()?;
        let shared = Arc::new(Shared {
            tid: AtomicI32::new(0),
            stop: AtomicBool::new(false),
            stop_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(|source| Error::Host {
                what: "the vCPU stop eventfd",
                source,
            })?,
            immediate_exit: Mutex::new(None),
        });
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu-{name}"))
            .spawn(move || vcpu_thread(vcpu, ctx, sh))
            .map_err(|e| Error::Thread(e.to_string()))?;
        Ok(Self {
            thread: Some(thread),
            shared,
        })
    }

    /// How the kernel schedules the vCPU thread (`None` until the thread runs, or where
    /// `/proc/self/task/TID/schedstat` cannot be read).
    pub fn sched_stat(&self) -> Option<SchedStat> {
        match self.shared.tid.load(Ordering::Acquire) {
            0 => None,
            tid => SchedStat::open(tid),
        }
    }

    /// Asks the vCPU to stop: wakes it from a doorbell wait and kicks it out of the guest
    /// (`kvm_run.immediate_exit` plus `SIGRTMIN` to the vCPU thread; the VMM installs a
    /// process-wide no-op handler for that signal on the first start). Returns at once; [`VcpuHandle::join`] then reports [`RunOutcome::Stopped`] (unless the
    /// guest ended first).
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // A full eventfd counter only means it is already signalled.
        let _ = self.shared.stop_evt.write(1);
        {
            let ptr = self
                .shared
                .immediate_exit
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(p) = *ptr {
                // SAFETY: `p` points at `kvm_run.immediate_exit` in the vCPU's mmap, which
                // stays mapped while the pointer is registered (the vCPU thread clears it under
                // this lock before dropping the vCPU fd). KVM reads this byte on every KVM_RUN;
                // a volatile byte store is the documented way to request an exit.
                unsafe { std::ptr::write_volatile(p as *mut u8, 1) };
            }
        }
        if let Some(t) = &self.thread {
            // SAFETY: the thread has not been joined (we still hold its JoinHandle), so its
            // pthread_t is valid; the kick signal has a no-op handler installed in `spawn`.
            unsafe { libc::pthread_kill(t.as_pthread_t(), kick_signal()) };
        }
    }

    /// Whether the vCPU thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits for the vCPU thread to end and returns how the run ended.
    pub fn join(mut self) -> Result<RunOutcome> {
        self.join_inner()
    }

    fn join_inner(&mut self) -> Result<RunOutcome> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| Error::Thread("the vCPU thread panicked".into()))?,
            None => Err(Error::Thread("already joined".into())),
        }
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop();
            let _ = self.join_inner();
        }
    }
}

fn vcpu_thread(mut vcpu: VcpuFd, ctx: VcpuContext, shared: Arc<Shared>) -> Result<RunOutcome> {
    // SAFETY: gettid has no preconditions and cannot fail.
    shared
        .tid
        .store(unsafe { libc::gettid() }, Ordering::Release);
    {
        let mut p = shared
            .immediate_exit
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *p = Some(std::ptr::addr_of_mut!(vcpu.get_kvm_run().immediate_exit) as usize);
    }
    let res = run_loop(&mut vcpu, &ctx, &shared);
    *shared
        .immediate_exit
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = None;
    ctx.console.flush();
    drop(vcpu);
    res
}

fn run_loop(vcpu: &mut VcpuFd, ctx: &VcpuContext, shared: &Shared) -> Result<RunOutcome> {
    let c = &*ctx.counters;
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return Ok(RunOutcome::Stopped);
        }
        let exit = match vcpu.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                ExitCounters::inc(&c.other);
                if !shared.stop.load(Ordering::SeqCst) {
                    vcpu.set_kvm_immediate_exit(0);
                }
                continue;
            }
            Err(e) => {
                return Err(Error::Kvm {
                    op: "KVM_RUN",
                    source: e,
                })
            }
        };
        match exit {
            VcpuExit::IoOut(port, data) => {
                ExitCounters::inc(&c.pio);
                match port {
                    platform::PORT_CONSOLE => console_out(ctx, data),
                    platform::PORT_NOP => {}
                    platform::PORT_EXIT => return Ok(RunOutcome::Exited(le_u32(data))),
                    platform::PORT_DOORBELL_WAIT => {
                        let timeout = u64::from(le_u32(data));
                        doorbell_wait(ctx, shared, Duration::from_micros(timeout))?;
                    }
                    _ => {
                        ExitCounters::inc(&c.pio_unhandled);
                        log::debug!("unhandled port write {port:#x} {data:?}");
                    }
                }
            }
            VcpuExit::IoIn(port, data) => {
                ExitCounters::inc(&c.pio);
                ExitCounters::inc(&c.pio_unhandled);
                log::debug!("unhandled port read {port:#x}");
                data.fill(0xff);
            }
            VcpuExit::MmioRead(addr, data) => {
                ExitCounters::inc(&c.mmio);
                if !ctx.bus.read(addr, data) {
                    ExitCounters::inc(&c.mmio_unhandled);
                }
            }
            VcpuExit::MmioWrite(addr, data) => {
                ExitCounters::inc(&c.mmio);
                if !ctx.bus.write(addr, data) {
                    ExitCounters::inc(&c.mmio_unhandled);
                }
            }
            VcpuExit::Intr => ExitCounters::inc(&c.other),
            VcpuExit::Shutdown => {
                ExitCounters::inc(&c.other);
                let rip = vcpu.get_regs().ok().map(|r| r.rip);
                return Ok(RunOutcome::Shutdown { rip });
            }
            VcpuExit::Hlt => {
                ExitCounters::inc(&c.other);
                return Ok(RunOutcome::Halted);
            }
            VcpuExit::FailEntry(reason, _) => return Err(Error::FailEntry(reason)),
            VcpuExit::InternalError => {
                // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the
                // active member of the kvm_run union.
                let sub = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
                return Err(Error::InternalError(sub));
            }
            other => {
                ExitCounters::inc(&c.other);
                return Err(Error::UnexpectedExit(format!("{other:?}")));
            }
        }
    }
}

/// A console write: one byte, or (32-bit) a length of bytes in the console buffer.
fn console_out(ctx: &VcpuContext, data: &[u8]) {
    if data.len() != 4 {
        ctx.console.write(data);
        return;
    }
    let n = u64::from(le_u32(data)).min(platform::CONSOLE_BUF_SIZE) as usize;
    let mut buf = vec![0u8; n];
    // The buffer lies in RAM (checked at VM creation), so this read cannot fail.
    if ctx
        .mem
        .read_slice(&mut buf, GuestAddress(platform::CONSOLE_BUF_ADDR))
        .is_ok()
    {
        ctx.console.write(&buf);
    }
}

/// Little-endian value of up to 4 bytes (shorter writes are zero-extended).
fn le_u32(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = data.len().min(4);
    b[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(b)
}

/// Parks the vCPU thread until the work eventfd is readable, a stop is requested or `timeout`
/// passes, then records why in the boot block.
fn doorbell_wait(ctx: &VcpuContext, shared: &Shared, timeout: Duration) -> Result<()> {
    let c = &*ctx.counters;
    ExitCounters::inc(&c.doorbell_waits);
    let deadline = Instant::now() + timeout;
    let result = loop {
        let mut fds = [
            libc::pollfd {
                fd: ctx.work.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: shared.stop_evt.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let left = deadline.saturating_duration_since(Instant::now());
        let ts = libc::timespec {
            tv_sec: left.as_secs() as libc::time_t,
            tv_nsec: left.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `fds` is a valid array of 2 pollfds and `ts` a valid timespec, both living
        // across the call; a null sigmask keeps the thread's mask.
        let n = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, &ts, std::ptr::null()) };
        if shared.stop.load(Ordering::SeqCst) || fds[1].revents != 0 {
            break platform::WAIT_STOP;
        }
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(Error::Host {
                what: "the doorbell wait (ppoll)",
                source: err,
            });
        }
        if fds[0].revents != 0 {
            // Consume the signal; a concurrent reader may have taken it (EAGAIN), still work.
            let _ = ctx.work.read();
            ExitCounters::inc(&c.doorbell_work);
            break platform::WAIT_WORK;
        }
        if n == 0 {
            ExitCounters::inc(&c.doorbell_timeouts);
            break platform::WAIT_TIMEOUT;
        }
    };
    let addr =
        platform::BOOT_BLOCK_ADDR + std::mem::offset_of!(platform::BootBlock, wait_result) as u64;
    ctx.mem
        .write_obj(result, GuestAddress(addr))
        .map_err(|e| Error::GuestWrite {
            what: "doorbell wait result",
            addr,
            reason: e.to_string(),
        })
}
