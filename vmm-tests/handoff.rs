//! Page hand-off between vmq's own VMs on real KVM: pages move between running guests by host
//! mapping changes (memfd-backed RAM, `mmap(MAP_FIXED)`), and KVM follows them; then whole
//! topologies with `[handoff]`, where clients send page references through the switch, and
//! hostile senders and receivers beside them.
//!
//! Without a usable `/dev/kvm` each test prints "skipping" and passes, unless `CI=true` or
//! `VMQ_REQUIRE_KVM=1`.

use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmq::abi::image::hello;
use vmq::vmm::pages::{Ledger, Member, PageError, PAGE_SIZE};
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

/// The receiver's control block and window for the `hello` page reader (mode 7).
const CTL: u64 = 0x3f_f000;
const DATA: u64 = 0x40_0000;

fn ctl(vm: &Vm, i: u64) -> &std::sync::atomic::AtomicU64 {
    use vm_memory::GuestMemoryBackend;
    let p = vm
        .memory()
        .get_host_address(GuestAddress(CTL + 8 * i))
        .unwrap();
    // SAFETY: an 8-byte aligned u64 of the VM's RAM mapping, alive as long as `vm` (borrowed);
    // the guest touches it with aligned volatile accesses only, atomic on x86.
    unsafe { &*(p as *const std::sync::atomic::AtomicU64) }
}

/// Tells the reader in `b` to read `pages` window pages; returns the sum it read.
fn read_window(b: &Vm, h: &VcpuHandle, seq: u64, pages: u64) -> u64 {
    use std::sync::atomic::Ordering::SeqCst;
    ctl(b, 1).store(pages, SeqCst);
    ctl(b, 0).store(seq, SeqCst);
    let start = Instant::now();
    while ctl(b, 2).load(SeqCst) != seq {
        assert!(
            !h.is_finished(),
            "the reader ended: {:?}",
            b.console().lines()
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the reader never answered"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    ctl(b, 3).load(SeqCst)
}

/// A receiver guest that keeps the pages it was handed is held to its cap (the next hand-off is
/// refused and counted, the sender keeps those pages), and when its port goes down the pages go
/// back to the sender while the guest, still running, reads its own pages in its window again.
#[test]
fn a_receiver_that_keeps_pages_is_capped_and_its_port_going_down_returns_them() {
    if !require_kvm() {
        return;
    }
    let _g = common::kvm_lock();
    let vm = |name: &str, mode: u64, size: u64| {
        let cfg = VmConfig::new(name)
            .shared_memory(true)
            .param(hello::param::MODE, mode)
            .param(hello::param::TEST_ADDR, CTL)
            .param(hello::param::SIZE, size);
        let mut vm = Vm::new(cfg).unwrap();
        vm.load_elf(images::HELLO).unwrap();
        vm
    };
    // The sender parks in a doorbell wait; the receiver runs the page reader.
    let mut a = vm("keep-a", 4, u64::from(u32::MAX));
    let mut b = vm("keep-b", 7, WINDOW);
    for i in 0..8 {
        write(&a, DATA + i * PAGE_SIZE, i + 1);
        write(&b, WINDOW + i * PAGE_SIZE, 1000 + i);
    }
    let ha = a.start().unwrap();
    let hb = b.start().unwrap();
    let mut ledger = Ledger::new();
    ledger.join(0, member(&a, 0xa0_0000..0xa1_0000)).unwrap();
    let mut m = member(&b, WINDOW..WINDOW + WINDOW_PAGES * PAGE_SIZE);
    m.cap = 4;
    ledger.join(1, m).unwrap();

    assert_eq!(read_window(&b, &hb, 1, 3), 1000 + 1001 + 1002);
    let src = [DATA, DATA + PAGE_SIZE, DATA + 2 * PAGE_SIZE];
    ledger.hand_off(0, 1, &src).unwrap();
    assert_eq!(
        read_window(&b, &hb, 2, 3),
        1 + 2 + 3,
        "the guest reads the sender's pages"
    );
    // The sender scribbles over what it handed off: the receiver must not see it.
    write(&a, DATA, 666);
    assert_eq!(read_window(&b, &hb, 3, 3), 1 + 2 + 3);
    // It keeps them; two more would pass its cap of 4.
    let e = ledger
        .hand_off(0, 1, &[DATA + 3 * PAGE_SIZE, DATA + 4 * PAGE_SIZE])
        .unwrap_err();
    assert!(
        matches!(
            e,
            PageError::ReceiverFull {
                held: 3,
                cap: 4,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(ledger.stats().refused_full, 1);
    assert_eq!(
        read(&a, DATA + 3 * PAGE_SIZE),
        4,
        "refused pages stay with the sender"
    );
    // Its port goes down with the pages out.
    assert_eq!(ledger.port_down(1), 3);
    assert_eq!(
        read_window(&b, &hb, 4, 3),
        1000 + 1001 + 1002,
        "its own pages again"
    );
    assert_eq!(
        read(&a, DATA),
        1,
        "the page came home; the stand-in write is gone"
    );
    assert_eq!((ledger.held(1), ledger.lent(0)), (0, 0));
    ctl(&b, 0).store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(join(&b, hb), RunOutcome::Exited(0));
    ha.stop();
    let _ = ha.join();
}

// ---- through the switch ---------------------------------------------------------------------

use vmq::abi::mode;
use vmq::runner::RunReport;

/// A topology with `[handoff]` (`extra` lines in it): hand-off clients `(name, size, count)`
/// sending to service `echo`, served by one worker (more `worker` params).
fn handoff_run(name: &str, extra: &str, worker: &str, clients: &[(&str, u64, u64)]) -> RunReport {
    let mut t = format!(
        "{}[handoff]\nwindow_pages = 64\n{extra}\n",
        common::RUN_HEAD
    );
    for (c, size, count) in clients {
        t += &format!(
            "[[vm]]\nname = \"{c}\"\nimage = \"client\"\nparams = {{ mode = {}, service = \"echo\", \
             count = {count}, size = {size}, wait = \"doorbell\" }}\n",
            mode::client::HANDOFF
        );
    }
    t += &common::workers(&["w0"], &format!(", size = 4096{worker}"));
    t += &common::service(
        "echo",
        &["w0"],
        &format!(
            "failover = {{ {} }}\nrequest_timeout_ms = 30000",
            common::PATIENT
        ),
    );
    common::run(name, &t)
}

fn assert_clean(r: &RunReport, clients: &[(&str, u64, u64)]) {
    for (c, _, count) in clients {
        let v = common::vm(r, c);
        assert_eq!(
            (v.sent, v.received, v.ok, v.mismatches, v.duplicates),
            (*count, *count, *count, 0, 0),
            "{c}: every request answered once, with its bytes intact\n{r}"
        );
        assert_eq!(v.exit_status, Some(0), "{c}\n{r}");
    }
    assert_eq!(r.switch.totals.port_faults, 0, "{r}");
}

/// Requests carrying page references go through the switch: the worker reads the bytes
/// through the page list it was delivered (the client checks the answer), releases the pages,
/// and every page comes home; with the size rule, the small client's messages are copied in
/// the same run and arrive intact too.
#[test]
fn handed_off_pages_reach_the_worker_intact_and_all_come_home() {
    if !require_kvm() {
        return;
    }
    // A page (the guest images carry at most 4 KiB); 3000 bytes: below min_bytes.
    let clients = [("big", 4096, 60), ("small", 3000, 40)];
    let r = handoff_run("handoff.toml", "min_bytes = 4096", "", &clients);
    assert_clean(&r, &clients);
    let h = r.handoff.expect("hand-off counters");
    eprintln!("{h:?}");
    assert_eq!(h.handed_off, 60, "{h:?}");
    assert_eq!(h.copied_small, 40, "{h:?}");
    assert_eq!((h.copied_full, h.copied_not_member), (0, 0), "{h:?}");
    assert_eq!(h.ledger.pages_lent, 60, "{h:?}");
    assert_eq!(h.ledger.pages_returned, 60, "{h:?}");
    assert_eq!(h.pages_out, 0, "nothing is still out at the end: {h:?}");
    assert_eq!(
        h.releases, 60,
        "the worker released every message's pages: {h:?}"
    );
    assert_eq!((h.refused_bad, h.releases_refused), (0, 0), "{h:?}");
    assert_eq!(
        h.notices, 100,
        "the lenders heard of every page come home, moved (60) or copied (40): {h:?}"
    );
    assert_eq!(h.notices_dropped, 0, "{h:?}");
}

/// Without `min_bytes` the switch copies every message (the honest default on a KVM where a
/// hand-off never beats a copy): the bytes still arrive intact, inline, and nothing moves.
#[test]
fn by_default_referenced_bytes_are_copied_inline() {
    if !require_kvm() {
        return;
    }
    let clients = [("c0", 4000, 30)];
    let r = handoff_run("handoff-copy.toml", "", "", &clients);
    assert_clean(&r, &clients);
    let h = r.handoff.expect("hand-off counters");
    assert_eq!((h.handed_off, h.copied_small), (0, 30), "{h:?}");
    assert_eq!(
        h.notices, 30,
        "each copied message's pages announced home: {h:?}"
    );
    assert_eq!(
        (h.ledger.pages_lent, h.pages_out, h.releases),
        (0, 0, 0),
        "{h:?}"
    );
}

/// A worker that never releases the pages of a request (`keep_pages = 1`) still gets them
/// taken away when it answers: a reply means the request's pages are home, so each reply sends
/// them back to their client, which hears of it in a notice, and nothing is out at the end.
#[test]
fn answering_a_request_returns_its_pages_without_a_release() {
    if !require_kvm() {
        return;
    }
    let clients = [("c0", 4096, 60), ("c1", 4096, 40)];
    let r = handoff_run(
        "handoff-keep.toml",
        "min_bytes = 0",
        ", keep_pages = 1",
        &clients,
    );
    assert_clean(&r, &clients);
    let h = r.handoff.expect("hand-off counters");
    eprintln!("{h:?}");
    assert_eq!((h.handed_off, h.releases), (100, 0), "{h:?}");
    assert_eq!(
        h.returned_on_answer, 100,
        "every reply brought its request's page home: {h:?}"
    );
    assert_eq!(
        (h.ledger.pages_returned, h.notices, h.pages_out),
        (100, 100, 0),
        "{h:?}"
    );
}

// ---- hostile senders and receivers through the switch ---------------------------------------

use vmq::abi::image::{evil, exit};

/// Hand-off clients `c0` and `c1` (one page per request) and the hostile `evil` (mode `mode`,
/// more `evil_params`) beside them; workers `w0` and `w1` serve `echo`; more VMs and services
/// in `extra`. Every VM holds at most 4 borrowed pages.
fn hostile_run(name: &str, mode: u64, evil_params: &str, extra: &str) -> RunReport {
    let mut t = format!(
        "{}[handoff]\nwindow_pages = 64\ncap_pages = 4\nmin_bytes = 0\n",
        common::RUN_HEAD
    );
    for c in ["c0", "c1"] {
        t += &format!(
            "[[vm]]\nname = \"{c}\"\nimage = \"client\"\nparams = {{ mode = {}, service = \"echo\", \
             count = {HONEST}, size = 4096, wait = \"doorbell\" }}\n",
            mode::client::HANDOFF
        );
    }
    t += &format!(
        "[[vm]]\nname = \"evil\"\nimage = \"evil\"\nparams = {{ mode = {mode}, service = \"echo\", \
         count = 20, size = 512, wait = \"doorbell\"{evil_params} }}\n"
    );
    t += &common::workers(&["w0", "w1"], ", size = 4096");
    t += &common::service(
        "echo",
        &["w0", "w1"],
        &format!(
            "failover = {{ {} }}\nrequest_timeout_ms = 30000",
            common::PATIENT
        ),
    );
    t += extra;
    common::run(name, &t)
}

const HONEST: u64 = 100;

fn assert_honest_clients_clean(r: &RunReport) {
    for c in ["c0", "c1"] {
        let v = common::vm(r, c);
        assert_eq!(
            (v.sent, v.received, v.ok, v.mismatches, v.exit_status),
            (HONEST, HONEST, HONEST, 0, Some(0)),
            "{c}\n{r}"
        );
    }
}

/// A sender whose page list names a page outside its RAM, a page of its own rings, one page
/// twice, or a page it handed off already (two requests published together) breaks the
/// protocol: its port faults, the bad list is counted, nothing moves for it, its pages come
/// home, and the other VMs keep handing pages off.
#[test]
fn a_bad_page_reference_faults_only_its_sender() {
    if !require_kvm() {
        return;
    }
    for m in [
        mode::evil::PAGES_OUTSIDE,
        mode::evil::PAGES_RINGS,
        mode::evil::PAGES_DUPLICATE,
        mode::evil::PAGES_TWICE,
    ] {
        let r = hostile_run(&format!("pages-{m}.toml"), m, "", "");
        assert_honest_clients_clean(&r);
        let e = common::vm(&r, "evil");
        assert_eq!(e.exit_status, Some(exit::RING_FAULT), "mode {m}\n{r}");
        assert_eq!(e.results[evil::result::NEEDS_RESET], 1, "mode {m}\n{r}");
        let ep = common::port(&r, "evil");
        assert!(ep.down, "mode {m}\n{r}");
        assert_eq!(ep.stats.faults, 1, "mode {m}\n{r}");
        common::assert_faults_confined_to(&r, "evil");
        let h = r.handoff.expect("hand-off counters");
        assert_eq!(h.refused_bad, 1, "mode {m}: {h:?}");
        assert_eq!(
            h.handed_off,
            2 * HONEST + u64::from(m == mode::evil::PAGES_TWICE),
            "mode {m}: {h:?}"
        );
        assert_eq!(h.pages_out, 0, "mode {m}: {h:?}");
    }
}

/// A sender that writes to a page it handed off writes into its own stand-in: the receiver
/// reads the original bytes (the reply carries them), and the page comes home with them.
#[test]
fn a_write_to_a_handed_off_page_reaches_nobody() {
    if !require_kvm() {
        return;
    }
    let r = hostile_run(
        "pages-write.toml",
        mode::evil::PAGES_WRITE,
        ", side_service = \"slow\"",
        &format!(
            "{}{}",
            common::workers(&["ws"], ", size = 4096, slow = 3000000"),
            common::service(
                "slow",
                &["ws"],
                &format!(
                    "request_timeout_ms = 30000\nfailover = {{ {} }}\n{}",
                    common::PATIENT,
                    common::FLAT_HEALTH
                )
            )
        ),
    );
    assert_honest_clients_clean(&r);
    let e = common::vm(&r, "evil");
    assert_eq!(
        (e.exit_status, e.errors, e.mismatches),
        (Some(0), 0, 0),
        "{r}"
    );
    assert_eq!(
        e.results[evil::result::ATTACKS],
        1,
        "it saw its stand-in and wrote\n{r}"
    );
    assert_eq!(e.results[evil::result::PAGES_OK], 1, "{r}");
    let h = r.handoff.expect("hand-off counters");
    assert_eq!((h.refused_bad, h.pages_out), (0, 0), "{h:?}");
    common::assert_faults_confined_to(&r, "");
}

/// A receiver that keeps the pages it is handed reaches its cap (4 pages); later messages to
/// it are copied instead, counted; when the lender resets its device with pages still out,
/// they come home.
#[test]
fn a_receiver_that_keeps_pages_is_capped_and_a_reset_lender_gets_them_back() {
    if !require_kvm() {
        return;
    }
    let r = hostile_run(
        "pages-hoard.toml",
        mode::evil::PAGES_HOARD,
        ", side_service = \"hoard\"",
        &format!(
            "{}{}",
            common::workers(&["wh"], ", size = 4096, mute_after = 1"),
            common::service(
                "hoard",
                &["wh"],
                &format!("request_timeout_ms = 300\n{}", common::FLAT_HEALTH)
            )
        ),
    );
    assert_honest_clients_clean(&r);
    let e = common::vm(&r, "evil");
    assert_eq!(e.exit_status, Some(0), "{r}");
    let h = r.handoff.expect("hand-off counters");
    // It answers (and releases) the first only and keeps the rest, at most its cap of 4, so
    // of the eight at least three are copied, whenever they arrive (four when all reach it
    // before it answers the first; the switch may dispatch the unanswered ones to it again,
    // copied once more or moved again) until the lender resets.
    assert!(h.copied_full >= mode::evil::HOARD - 1 - 4, "{h:?}");
    assert_eq!(h.ledger.refused_full, h.copied_full, "{h:?}");
    assert_eq!(e.errors, mode::evil::HOARD - 1, "{r}");
    assert!(
        h.ledger.returned_on_down >= 3,
        "the kept pages went home on the reset: {h:?}"
    );
    assert_eq!((h.refused_bad, h.pages_out), (0, 0), "{h:?}");
    assert!(!common::port(&r, "wh").down, "{r}");
    common::assert_faults_confined_to(&r, "evil");
}

// ---- one-way streams of many pages ----------------------------------------------------------

/// Two peers streaming one-way messages of many pages to each other at once, both handing off
/// (`mode = 2`), every byte checked (`check_stride = 1`), messages of 17 pages (the last
/// partly filled), `a` sending 300 and `b` 200; each is both a sender taking its pages back from
/// return notices and a receiver reading borrowed pages and releasing them.
fn two_way_pages(extra: &str) -> String {
    format!(
        "{}[handoff]\nwindow_pages = 128\nmin_bytes = 0\n{extra}\n\
         [[vm]]\nname = \"a\"\nimage = \"peer\"\nmemory_mib = 32\n\
         params = {{ mode = {h}, target = \"b\", count = {A_COUNT}, expect = {B_COUNT}, \
         size = {A_SIZE}, queue_size = 4, check_stride = 1, wait = \"doorbell\" }}\n\
         [[vm]]\nname = \"b\"\nimage = \"peer\"\nmemory_mib = 32\n\
         params = {{ mode = {h}, target = \"a\", count = {B_COUNT}, expect = {A_COUNT}, \
         size = {A_SIZE}, queue_size = 4, check_stride = 1, wait = \"doorbell\" }}\n",
        common::RUN_HEAD,
        h = mode::peer::HANDOFF,
    )
}

const A_COUNT: u64 = 300;
const B_COUNT: u64 = 200;
/// 16 whole pages and 100 bytes of a 17th.
const A_SIZE: u64 = 16 * 4096 + 100;

fn assert_streams_intact(r: &RunReport) {
    assert!(!r.timed_out, "{r}");
    for (v, sent, got) in [("a", A_COUNT, B_COUNT), ("b", B_COUNT, A_COUNT)] {
        let p = common::vm(r, v);
        assert_eq!(p.exit_status, Some(0), "{v}\n{r}");
        assert_eq!(p.sent, sent, "{v}\n{r}");
        assert_eq!(
            (p.received, p.ok, p.mismatches),
            (got, got, 0),
            "{v}: every message in order, every byte intact\n{r}"
        );
    }
    assert_eq!(r.switch.totals.port_faults, 0, "{r}");
}

/// Many-page messages move whole in both directions at once: every message is handed off
/// (none copied), every page moved comes home and is announced to its sender once, and
/// nothing is out at the end.
#[test]
fn many_page_one_way_messages_move_both_ways_and_every_page_comes_home() {
    if !require_kvm() {
        return;
    }
    let r = common::run("handoff-two-way.toml", &two_way_pages(""));
    assert_streams_intact(&r);
    let h = r.handoff.expect("hand-off counters");
    eprintln!("{h:?}");
    let pages = A_COUNT * 17 + B_COUNT * 17;
    assert_eq!(h.handed_off, A_COUNT + B_COUNT, "{h:?}");
    assert_eq!(
        (h.copied_small, h.copied_full, h.copied_not_member),
        (0, 0, 0),
        "{h:?}"
    );
    assert_eq!(
        (h.ledger.pages_lent, h.ledger.pages_returned),
        (pages, pages),
        "{h:?}"
    );
    assert_eq!(
        (h.releases, h.releases_refused, h.refused_bad),
        (A_COUNT + B_COUNT, 0, 0)
    );
    assert_eq!(
        (h.notices, h.notices_dropped),
        (A_COUNT + B_COUNT, 0),
        "{h:?}"
    );
    assert_eq!(h.pages_out, 0, "{h:?}");
    for (v, sent) in [("a", A_COUNT), ("b", B_COUNT)] {
        let p = common::vm(&r, v);
        assert_eq!(
            p.results[vmq::abi::image::traffic::PAGE_RETURNS],
            sent,
            "{v} took back every message's pages\n{r}"
        );
    }
}

/// A receiver whose cap cannot take a whole message gets every message copied instead,
/// intact; its sender hears at once that the pages are home (they never left) and reuses
/// them, so the stream finishes with nothing lent.
#[test]
fn many_page_messages_past_the_receivers_cap_are_copied_and_announced_home() {
    if !require_kvm() {
        return;
    }
    // 16 pages borrowed at most: a 17-page message never fits.
    let r = common::run("handoff-two-way-cap.toml", &two_way_pages("cap_pages = 16"));
    assert_streams_intact(&r);
    let h = r.handoff.expect("hand-off counters");
    eprintln!("{h:?}");
    assert_eq!(
        (h.handed_off, h.copied_full),
        (0, A_COUNT + B_COUNT),
        "{h:?}"
    );
    assert_eq!(
        (h.ledger.pages_lent, h.releases, h.pages_out),
        (0, 0, 0),
        "{h:?}"
    );
    assert_eq!(
        (h.notices, h.notices_dropped),
        (A_COUNT + B_COUNT, 0),
        "{h:?}"
    );
}

/// A worker does not serve one-way messages, but one that was handed pages gives them back at
/// once: a peer streaming hand-off messages to it gets every page home and finishes (it waits
/// for its pages before it exits, so a worker that kept them would leave it waiting).
#[test]
fn a_worker_handed_pages_in_a_one_way_message_gives_them_back() {
    if !require_kvm() {
        return;
    }
    let t = format!(
        "{}[handoff]\nwindow_pages = 64\nmin_bytes = 0\n\
         [[vm]]\nname = \"p\"\nimage = \"peer\"\nparams = {{ mode = {}, target = \"w0\", \
         count = 50, size = 8192, queue_size = 4, wait = \"doorbell\" }}\n{}",
        common::RUN_HEAD,
        mode::peer::HANDOFF,
        common::workers(&["w0"], ""),
    );
    let r = common::run("handoff-one-way-worker.toml", &t);
    assert!(!r.timed_out, "{r}");
    let p = common::vm(&r, "p");
    assert_eq!((p.exit_status, p.sent), (Some(0), 50), "{r}");
    let h = r.handoff.expect("hand-off counters");
    assert_eq!((h.handed_off, h.releases, h.notices), (50, 50, 50), "{h:?}");
    assert_eq!((h.ledger.pages_returned, h.pages_out), (100, 0), "{h:?}");
    assert_eq!(p.results[vmq::abi::image::traffic::PAGE_RETURNS], 50, "{r}");
}
