//! Page hand-off between vmq's own VMs on real KVM: pages move between running guests by host
//! mapping changes (memfd-backed RAM, `mmap(MAP_FIXED)`), and KVM follows them.
//!
//! Without a usable `/dev/kvm` each test prints "skipping" and passes, unless `CI=true` or
//! `VMQ_REQUIRE_KVM=1`.

use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmq::abi::image::hello;
use vmq::vmm::pages::{Ledger, Member, PAGE_SIZE};
use vmq::vmm::{images, RunOutcome, VcpuHandle, Vm, VmConfig};

mod common;
use common::require_kvm;

/// A page of A's free RAM.
const X: u64 = 0x80_0000;
/// B's receive window (16 pages).
const WINDOW: u64 = 0x90_0000;
const WINDOW_PAGES: u64 = 16;

/// A memfd-backed `hello` VM probing `addr` (mode 6).
fn probe_vm(name: &str, addr: u64) -> Vm {
    let cfg = VmConfig::new(name)
        .shared_memory(true)
        .param(hello::param::MODE, 6)
        .param(hello::param::TEST_ADDR, addr);
    let mut vm = Vm::new(cfg).expect("create VM");
    vm.load_elf(images::HELLO).expect("load hello");
    vm
}

fn read(vm: &Vm, addr: u64) -> u64 {
    vm.memory().read_obj(GuestAddress(addr)).unwrap()
}

fn write(vm: &Vm, addr: u64, v: u64) {
    vm.memory().write_obj(v, GuestAddress(addr)).unwrap()
}

/// Waits (a hang guard, not a timing assertion) until the probe at `addr` has read its first
/// value (it writes 1 at `addr + 16`).
fn wait_armed(vm: &Vm, addr: u64, h: &VcpuHandle) {
    let start = Instant::now();
    while read(vm, addr + 16) != 1 {
        assert!(
            !h.is_finished(),
            "{} ended early: {:?}",
            vm.name(),
            vm.console().lines()
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} never armed",
            vm.name()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Joins `h`, stopping the guest if it does not end in 60 s (KVM did not follow the remap).
fn join(vm: &Vm, h: VcpuHandle) -> RunOutcome {
    let start = Instant::now();
    while !h.is_finished() && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(1));
    }
    h.stop();
    let out = h.join().unwrap();
    eprintln!("{}: {out:?} {:?}", vm.name(), vm.console().lines());
    out
}

fn member(vm: &Vm, window: std::ops::Range<u64>) -> Member {
    Member {
        space: vm.pages().expect("memfd-backed").clone(),
        window,
        cap: WINDOW_PAGES,
        reserved: vec![(0..0x20_0000, "the boot area")],
    }
}

/// The mechanism on this machine's KVM: a page of running guest A moves into running guest B's
/// window; B reads A's data, A reads a zero stand-in from then on and its writes do not reach
/// B; B's writes come back with the page when B releases it.
#[test]
fn a_page_moves_between_running_guests_without_a_copy() {
    if !require_kvm() {
        return;
    }
    let _g = common::kvm_lock();
    // A probes X + 0x100, B probes its window page at + 0x200; A's page carries 42 at both.
    let a = probe_vm("pages-a", X + 0x100);
    let b = probe_vm("pages-b", WINDOW + 0x200);
    let (mut a, mut b) = (a, b);
    write(&a, X + 0x100, 42);
    write(&a, X + 0x200, 42);
    let ha = a.start().unwrap();
    let hb = b.start().unwrap();
    wait_armed(&a, X + 0x100, &ha);
    wait_armed(&b, WINDOW + 0x200, &hb);

    let mut ledger = Ledger::new();
    ledger.join(0, member(&a, 0xa0_0000..0xa1_0000)).unwrap();
    ledger
        .join(1, member(&b, WINDOW..WINDOW + WINDOW_PAGES * PAGE_SIZE))
        .unwrap();
    let (loan, dst) = ledger.hand_off(0, 1, &[X]).unwrap();
    assert_eq!(dst, vec![WINDOW]);

    // B saw A's 42 (and wrote 43 next to it); A saw its stand-in's zero (and wrote 1).
    assert_eq!(join(&b, hb), RunOutcome::Exited(42));
    assert_eq!(join(&a, ha), RunOutcome::Exited(0));
    assert_eq!(read(&b, WINDOW + 0x208), 43, "B's write lands in A's page");
    assert_eq!(
        read(&b, WINDOW + 0x110),
        1,
        "A's arming write travelled with the page"
    );
    assert_eq!(
        read(&b, WINDOW + 0x108),
        0,
        "A's write after the hand-off must not reach B"
    );
    assert_eq!(read(&a, X + 0x108), 1, "A wrote into its stand-in");
    assert_eq!((ledger.held(1), ledger.lent(0)), (1, 1));
    let _ = loan;

    // B releases: A's page comes back with B's write; A's stand-in write is gone; B has its
    // own page again.
    assert_eq!(ledger.release(1, &[WINDOW]).unwrap(), vec![(0, X)]);
    assert_eq!(read(&a, X + 0x208), 43);
    assert_eq!(read(&a, X + 0x108), 0);
    assert_eq!(read(&b, WINDOW + 0x208), 0);
    assert_eq!(
        read(&b, WINDOW + 0x210),
        1,
        "B's own page, with its arming write"
    );
    assert_eq!((ledger.held(1), ledger.lent(0)), (0, 0));
}
