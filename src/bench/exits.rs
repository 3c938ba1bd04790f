//! What KVM exits cost on this machine: VM creation, a port-I/O exit to the VMM, and an MMIO
//! write absorbed by an ioeventfd. Measured with the `hello` image; figures, not tests.

use std::time::Instant;

use vmm_sys_util::eventfd::EventFd;

use crate::abi::{image::hello::param, platform::MMIO_BASE};
use crate::vmm::{images, Error, RunOutcome, Vm, VmConfig};

/// Measured costs, microseconds.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct ExitCosts {
    /// Creating a 16 MiB VM with one vCPU (median of 20).
    pub vm_create_us: f64,
    /// A minimal guest run, start to exit (median of 5).
    pub minimal_run_us: f64,
    /// One port-I/O exit to the VMM and back.
    pub pio_exit_us: f64,
    /// One MMIO write to an ioeventfd-registered address (no exit to user space).
    pub ioeventfd_write_us: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn hello(mode: u64, count: u64) -> Result<f64, Error> {
    let notify = MMIO_BASE + 0x50;
    let cfg = VmConfig::new("exit-cost")
        .param(param::MODE, mode)
        .param(param::COUNT, count)
        .param(param::TEST_ADDR, notify);
    let mut vm = Vm::new(cfg)?;
    vm.load_elf(images::HELLO)?;
    let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| Error::Host {
        what: "an eventfd",
        source,
    })?;
    vm.register_ioevent(&evt, notify, None)?;
    let t = Instant::now();
    let out = vm.start()?.join()?;
    let el = t.elapsed().as_secs_f64() * 1e6;
    if out != RunOutcome::Exited(0) {
        log::warn!("exit-cost guest ended with {out:?}");
    }
    Ok(el)
}

/// Measures the costs; `n` exits per timed run.
pub fn measure(n: u64) -> Result<ExitCosts, Error> {
    let mut create = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let vm = Vm::new(VmConfig::new("exit-cost"))?;
        create.push(t.elapsed().as_secs_f64() * 1e6);
        drop(vm);
    }
    let per = |mode: u64| -> Result<(f64, f64), Error> {
        let base = median((0..5).map(|_| hello(mode, 0)).collect::<Result<_, _>>()?);
        let full = median((0..5).map(|_| hello(mode, n)).collect::<Result<_, _>>()?);
        Ok(((full - base) / n as f64, base))
    };
    // hello modes: 2 = n port writes to the no-op port, 3 = n writes to the ioeventfd address.
    let (pio, base) = per(2)?;
    let (ioev, _) = per(3)?;
    Ok(ExitCosts {
        vm_create_us: median(create),
        minimal_run_us: base,
        pio_exit_us: pio,
        ioeventfd_write_us: ioev,
    })
}
