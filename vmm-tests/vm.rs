//! Integration tests that boot real KVM guests from `guest-images/`.
//!
//! Without a usable `/dev/kvm` each test prints "skipping" and passes, unless `CI=true` or
//! `VMQ_REQUIRE_KVM=1`, where a missing KVM fails the test.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;
use vmq::abi;
use vmq::vmm::{images, ElfError, Error, IoeventMode, MmioDevice, RunOutcome, Vm, VmConfig};

/// Whether KVM tests can run here; panics where KVM is required.
fn require_kvm() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            let required = std::env::var("CI").is_ok_and(|v| v == "true")
                || std::env::var("VMQ_REQUIRE_KVM").is_ok_and(|v| v == "1");
            if required {
                panic!(
                    "/dev/kvm is required (CI=true or VMQ_REQUIRE_KVM=1) but cannot be opened: {e}"
                );
            }
            eprintln!("skipping: /dev/kvm not available ({e})");
            false
        }
    }
}

/// Test device: remembers the last 32-bit value written and returns it on reads.
#[derive(Default)]
struct Scratch {
    value: Mutex<u32>,
    writes: Mutex<u32>,
}

impl MmioDevice for Scratch {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        let v = self.value.lock().unwrap().to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&v[..n]);
    }
    fn write(&self, _offset: u64, data: &[u8]) {
        let mut b = [0u8; 4];
        let n = data.len().min(4);
        b[..n].copy_from_slice(&data[..n]);
        *self.value.lock().unwrap() = u32::from_le_bytes(b);
        *self.writes.lock().unwrap() += 1;
    }
}

fn hello_vm(name: &str, mode: u64) -> Vm {
    let cfg = VmConfig::new(name).param(abi::PARAM_MODE, mode);
    let mut vm = Vm::new(cfg).expect("create VM");
    vm.load_elf(images::HELLO).expect("load hello");
    vm
}

#[test]
fn hello_boots_in_user_mode_and_reports_its_status() {
    if !require_kvm() {
        return;
    }
    let dev = Arc::new(Scratch::default());
    let cfg = VmConfig::new("hello-vm")
        .param(abi::PARAM_EXIT_STATUS, 42)
        .param(abi::PARAM_SERVICE, 7)
        .param(abi::PARAM_TEST_ADDR, abi::MMIO_BASE + 0x10);
    let mut vm = Vm::new(cfg).unwrap();
    vm.load_elf(images::HELLO).unwrap();
    vm.register_mmio(abi::MMIO_BASE, abi::MMIO_SLOT_SIZE, dev.clone())
        .unwrap();
    let outcome = vm.start().unwrap().join().unwrap();
    let lines = vm.console().lines();
    assert_eq!(outcome, RunOutcome::Exited(42), "console: {lines:?}");
    assert!(
        lines[0].starts_with("hello-vm: hello from hello-vm (service 7, 16 MiB"),
        "{lines:?}"
    );
    assert_eq!(lines[1], "hello-vm: doorbell wait -> 0");
    assert!(lines[2].ends_with("read back 0x12345678"), "{lines:?}");
    assert_eq!(*dev.writes.lock().unwrap(), 1);
    let c = vm.counters().snapshot();
    assert_eq!(c.mmio, 2, "one MMIO write and one read");
    assert_eq!(c.mmio_unhandled, 0);
    assert_eq!(c.doorbell_timeouts, 1);
}
