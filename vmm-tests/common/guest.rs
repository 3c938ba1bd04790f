//! One KVM guest with a vmq device, for tests that wire it to a switch (or play the switch)
//! themselves instead of running a whole topology.

use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;
use vmq::abi::platform;
use vmq::runner::VmqLink;
use vmq::transport::TransportEvent;
use vmq::vmm::{RunOutcome, VcpuHandle, Vm, VmConfig};

/// A guest VM with a vmq device in slot 0, started.
pub struct Guest {
    /// The VM (console, results, counters).
    pub vm: Vm,
    /// Its vmq device.
    pub link: VmqLink,
    vcpu: Option<VcpuHandle>,
}

impl Guest {
    /// Boots `image` as VM `name` with boot parameters `params`, its device in slot 0.
    pub fn start(name: &str, image: &[u8], params: &[(usize, u64)]) -> Self {
        Self::start_named(name, image, params, &[])
    }

    /// [`Guest::start`] with name parameters (ports and services the guest looks up in the
    /// switch's directory).
    pub fn start_named(
        name: &str,
        image: &[u8],
        params: &[(usize, u64)],
        names: &[(usize, &str)],
    ) -> Self {
        let mut cfg = VmConfig::new(name);
        for &(i, v) in params {
            cfg = cfg.param(i, v);
        }
        for &(i, n) in names {
            cfg = cfg.name_param(i, n);
        }
        let mut vm = Vm::new(cfg).expect("create VM");
        vm.load_elf(image).expect("load image");
        let link = VmqLink::attach(&mut vm, 0).expect("attach vmq device");
        let vcpu = Some(vm.start().expect("start vCPU"));
        Self { vm, link, vcpu }
    }

    /// Waits for the guest's driver to set DRIVER_OK.
    pub fn activated(&self) -> vmq::virtio::DevicePort<GuestMemoryMmap> {
        match self.link.events.recv_timeout(Duration::from_secs(10)) {
            Ok(TransportEvent::Activated(port)) => port,
            other => panic!(
                "{}: expected an activation, got {other:?}; console: {:?}",
                self.vm.name(),
                self.vm.console().lines()
            ),
        }
    }

    /// Waits (30 s at most, then stops it) for the guest to end.
    pub fn join(&mut self) -> RunOutcome {
        let h = self.vcpu.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !h.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if !h.is_finished() {
            h.stop();
        }
        h.join().expect("vCPU thread")
    }

    /// Stops the guest now (the host kills the VM).
    pub fn stop(&mut self) -> RunOutcome {
        let h = self.vcpu.take().expect("running");
        h.stop();
        h.join().expect("vCPU thread")
    }

    /// Whether the guest's vCPU has ended (exited, faulted or stopped).
    pub fn finished(&self) -> bool {
        self.vcpu.as_ref().is_none_or(|v| v.is_finished())
    }

    /// The guest's result slots as they are now.
    pub fn results(&self) -> [u64; platform::NUM_RESULTS] {
        self.vm.results()
    }
}

/// A clone of `g`'s kick eventfd, for a switch loop that sleeps on it.
pub fn clone_kick(g: &Guest) -> EventFd {
    g.link.kick.try_clone().expect("clone kick eventfd")
}
