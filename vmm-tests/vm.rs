//! Integration tests that boot real KVM guests from `guest-images/`.
//!
//! Without a usable `/dev/kvm` each test prints "skipping" and passes, unless `CI=true` or
//! `VMQ_REQUIRE_KVM=1`, where a missing KVM fails the test.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;
use vmq::abi::image::hello;
use vmq::abi::platform;
use vmq::mmio::MmioDevice;
use vmq::vmm::{images, minimal_elf, ElfError, Error, IoeventMode, RunOutcome, Vm, VmConfig};

mod common;
use common::require_kvm;

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
    let cfg = VmConfig::new(name).param(hello::param::MODE, mode);
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
        .param(hello::param::EXIT_STATUS, 42)
        .param(hello::param::SERVICE, 7)
        .param(hello::param::TEST_ADDR, platform::MMIO_BASE + 0x10);
    let mut vm = Vm::new(cfg).unwrap();
    vm.load_elf(images::HELLO).unwrap();
    vm.register_mmio(platform::MMIO_BASE, platform::MMIO_SLOT_SIZE, dev.clone())
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

/// Polls `cond` until it holds (a hang guard, not a timing assertion).
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "gave up waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn doorbell_wait_returns_on_work() {
    if !require_kvm() {
        return;
    }
    // Signalled before the guest waits: the wait must not lose it.
    let mut vm = hello_vm("db-early", 4);
    vm.set_param(hello::param::SIZE, u32::MAX as u64).unwrap();
    vm.work_eventfd().write(1).unwrap();
    let h = vm.start().unwrap();
    assert_eq!(h.join().unwrap(), RunOutcome::Exited(platform::WAIT_WORK));

    // Signalled while the guest is parked in the wait.
    let mut vm = hello_vm("db-late", 4);
    vm.set_param(hello::param::SIZE, u32::MAX as u64).unwrap();
    let h = vm.start().unwrap();
    let c = vm.counters().clone();
    wait_until("the doorbell wait", || {
        c.doorbell_waits.load(Ordering::Relaxed) == 1
    });
    vm.work_eventfd().write(1).unwrap();
    assert_eq!(h.join().unwrap(), RunOutcome::Exited(platform::WAIT_WORK));
    assert_eq!(vm.counters().snapshot().doorbell_work, 1);
}

#[test]
fn doorbell_wait_times_out() {
    if !require_kvm() {
        return;
    }
    let mut vm = hello_vm("db-timeout", 4);
    vm.set_param(hello::param::SIZE, 2000).unwrap();
    let outcome = vm.start().unwrap().join().unwrap();
    assert_eq!(outcome, RunOutcome::Exited(platform::WAIT_TIMEOUT));
    let c = vm.counters().snapshot();
    assert_eq!((c.doorbell_waits, c.doorbell_timeouts), (1, 1));
}

#[test]
fn ioeventfd_write_signals_without_mmio_exit() {
    if !require_kvm() {
        return;
    }
    const WRITES: u64 = 50;
    let notify = platform::MMIO_BASE + 0x50;
    let mut vm = hello_vm("ioevent", 3);
    vm.set_param(hello::param::COUNT, WRITES).unwrap();
    vm.set_param(hello::param::TEST_ADDR, notify).unwrap();
    vm.set_param(hello::param::SIZE, 3).unwrap();
    let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mode = vm.register_ioevent(&evt, notify, Some(3)).unwrap();
    let outcome = vm.start().unwrap().join().unwrap();
    assert_eq!(outcome, RunOutcome::Exited(0));
    assert_eq!(evt.read().unwrap(), WRITES, "one eventfd signal per write");
    let c = vm.counters().snapshot();
    match mode {
        IoeventMode::InKernel => assert_eq!(c.mmio, 0, "writes absorbed by KVM"),
        IoeventMode::MmioExit => assert_eq!(c.mmio, WRITES),
    }
}

#[test]
fn ioeventfd_datamatch_mismatch_exits_to_the_vmm() {
    if !require_kvm() {
        return;
    }
    let notify = platform::MMIO_BASE + 0x50;
    let mut vm = hello_vm("ioevent-miss", 3);
    vm.set_param(hello::param::COUNT, 2).unwrap();
    vm.set_param(hello::param::TEST_ADDR, notify).unwrap();
    vm.set_param(hello::param::SIZE, 4).unwrap();
    let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    vm.register_ioevent(&evt, notify, Some(3)).unwrap();
    assert_eq!(vm.start().unwrap().join().unwrap(), RunOutcome::Exited(0));
    assert!(evt.read().is_err(), "no signal for a non-matching value");
    let c = vm.counters().snapshot();
    assert_eq!((c.mmio, c.mmio_unhandled), (2, 2));
}

#[test]
fn bad_images_give_typed_errors() {
    if !require_kvm() {
        return;
    }
    let mut vm = Vm::new(VmConfig::new("bad").mem_size(4 << 20)).unwrap();
    let hello = images::HELLO;
    // End of the last segment's file contents (section headers after it are not needed).
    let u64_at = |o: usize| u64::from_le_bytes(hello[o..o + 8].try_into().unwrap()) as usize;
    let phoff = u64_at(32);
    let phnum = usize::from(u16::from_le_bytes([hello[56], hello[57]]));
    let seg_end = (0..phnum)
        .map(|i| phoff + i * 56)
        .map(|ph| u64_at(ph + 8) + u64_at(ph + 32))
        .max()
        .unwrap();
    for n in [0, 10, 63, 64, 100, phoff + 56, seg_end / 2, seg_end - 1] {
        let err = vm.load_elf(&hello[..n]).unwrap_err();
        assert!(
            matches!(err, Error::Elf(ElfError::Truncated { .. })),
            "prefix {n}: {err}"
        );
    }
    let mut arm = hello.to_vec();
    arm[18] = 183; // EM_AARCH64
    assert!(matches!(
        vm.load_elf(&arm),
        Err(Error::Elf(ElfError::WrongMachine(183)))
    ));
    let high = minimal_elf(4 << 20, &[0x0f, 0x0b], 2);
    assert!(matches!(
        vm.load_elf(&high),
        Err(Error::Elf(ElfError::SegmentOutsideMemory { .. }))
    ));
    let low = minimal_elf(platform::BOOT_BLOCK_ADDR, &[0x0f, 0x0b], 2);
    assert!(matches!(
        vm.load_elf(&low),
        Err(Error::Elf(ElfError::SegmentOutsideMemory { .. }))
    ));
    assert!(matches!(vm.start(), Err(Error::NoImage)));
    // Every error has a message that says what to check.
    assert!(Error::Elf(ElfError::BadMagic).to_string().contains("image"));
}

#[test]
fn bad_config_gives_typed_errors() {
    if !require_kvm() {
        return;
    }
    assert!(matches!(
        Vm::new(VmConfig::new("m").mem_size(3 << 20)),
        Err(Error::MemorySize { .. })
    ));
    assert!(matches!(
        Vm::new(VmConfig::new("m").mem_size(2 << 30)),
        Err(Error::MemorySize { .. })
    ));
    assert!(matches!(
        Vm::new(VmConfig::new("m").param(platform::NUM_PARAMS, 1)),
        Err(Error::ParamIndex(_))
    ));
    let mut vm = Vm::new(VmConfig::new("m")).unwrap();
    let dev = Arc::new(Scratch::default());
    assert!(matches!(
        vm.register_mmio(0x1000, 0x1000, dev.clone()),
        Err(Error::MmioRange { .. })
    ));
    vm.register_mmio(platform::MMIO_BASE, 0x1000, dev.clone())
        .unwrap();
    assert!(matches!(
        vm.register_mmio(platform::MMIO_BASE + 0x800, 0x1000, dev),
        Err(Error::MmioRange { .. })
    ));
}

#[test]
fn stop_ends_a_spinning_guest() {
    if !require_kvm() {
        return;
    }
    let mut vm = hello_vm("spin", 1);
    let h = vm.start().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert!(!h.is_finished());
    h.stop();
    assert_eq!(h.join().unwrap(), RunOutcome::Stopped);

    // Stop requested right after start, possibly before the first KVM_RUN.
    let mut vm = hello_vm("spin-early", 1);
    let h = vm.start().unwrap();
    h.stop();
    assert_eq!(h.join().unwrap(), RunOutcome::Stopped);

    // Dropping the handle stops and joins the thread.
    let mut vm = hello_vm("spin-drop", 1);
    drop(vm.start().unwrap());
}

#[test]
fn stop_ends_a_guest_in_doorbell_wait() {
    if !require_kvm() {
        return;
    }
    let mut vm = hello_vm("parked", 4);
    vm.set_param(hello::param::SIZE, u32::MAX as u64).unwrap();
    let h = vm.start().unwrap();
    let c = vm.counters().clone();
    wait_until("the doorbell wait", || {
        c.doorbell_waits.load(Ordering::Relaxed) == 1
    });
    h.stop();
    assert_eq!(h.join().unwrap(), RunOutcome::Stopped);
}

#[test]
fn a_faulting_guest_shuts_down() {
    if !require_kvm() {
        return;
    }
    let mut vm = hello_vm("fault", 5);
    let outcome = vm.start().unwrap().join().unwrap();
    assert!(
        matches!(outcome, RunOutcome::Shutdown { .. }),
        "{outcome:?}"
    );
    let mut vm = hello_vm("twice", 0);
    let h = vm.start().unwrap();
    assert!(matches!(vm.start(), Err(Error::AlreadyStarted)));
    h.join().unwrap();
}
