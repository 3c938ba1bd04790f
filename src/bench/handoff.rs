//! `vmq bench handoff`: moving a message's pages from one of vmq's own VMs to another
//! (page hand-off, [`crate::vmm::pages`]) against copying its bytes, in the same run.
//!
//! Two memfd-backed VMs: the sender's vCPU is parked in a doorbell wait (its RAM holds the
//! message), the receiver runs the `hello` page reader (mode 7), which reads the first `u64`
//! of every page of the message in its window once told (over a control block in its RAM,
//! polled) and acknowledges. One message at a time, per size:
//!
//! - `handoff`: the ledger checks the references and moves the pages into the receiver's
//!   window (`mmap` of the sender's memfd; the sender gets a zero stand-in), the receiver reads
//!   them (its first touch of each page goes through KVM's page fault path), then releases them
//!   (both VMs get their own pages back);
//! - `copy` (the baseline): the host copies the message's bytes from the sender's RAM into the
//!   receiver's window, the receiver reads them the same way.
//!
//! What is not in either figure: the switch's ring work (the same for both paths, a few
//! hundred ns per message; see `bench vm` and `bench switch`). Thread placement: the host
//! thread (the switch's role) pinned to CPU 0 where the machine has two; the receiver's vCPU
//! thread unpinned.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{pin_current_thread, BenchRecord, Placement, Report};
use crate::abi::image::hello;
use kvm_bindings::kvm_userspace_memory_region;

use crate::vmm::pages::{Ledger, Member, PageSpace, PAGE_SIZE};
use crate::vmm::{images, VcpuHandle, Vm, VmConfig};

/// Message sizes measured.
pub const SIZES: [u64; 4] = [4 << 10, 64 << 10, 256 << 10, 1 << 20];
/// Where the message sits in the sender's RAM.
const DATA: u64 = 0x40_0000;
/// The receiver's window (1 MiB).
const WINDOW: u64 = 0x80_0000;
/// The receiver's control block.
const CTL: u64 = 0x3f_f000;
const SENDER: u32 = 1;
const RECEIVER: u32 = 2;

/// Which path a message takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Handoff,
    Copy,
}

struct Rig {
    a: Vm,
    b: Vm,
    ha: Option<VcpuHandle>,
    hb: Option<VcpuHandle>,
    ledger: Ledger,
    seq: u64,
}

fn atomic(mem: &GuestMemoryMmap, gpa: u64) -> &AtomicU64 {
    let p = mem
        .get_host_address(GuestAddress(gpa))
        .expect("control block inside RAM");
    // SAFETY: `p` points at an 8-byte aligned u64 inside the receiver's RAM mapping, which
    // lives as long as `mem` (borrowed for the reference's lifetime); the guest accesses it
    // with aligned volatile accesses only, which are atomic on x86.
    unsafe { &*(p as *const AtomicU64) }
}

impl Rig {
    fn new() -> Result<Self, String> {
        let vm = |name: &str, mode: u64| -> Result<Vm, String> {
            let cfg = VmConfig::new(name)
                .mem_size(32 << 20)
                .shared_memory(true)
                .param(hello::param::MODE, mode)
                .param(hello::param::TEST_ADDR, CTL)
                .param(
                    hello::param::SIZE,
                    if mode == 7 { WINDOW } else { u32::MAX as u64 },
                );
            let mut vm = Vm::new(cfg).map_err(|e| e.to_string())?;
            vm.load_elf(images::HELLO).map_err(|e| e.to_string())?;
            Ok(vm)
        };
        let mut a = vm("handoff-tx", 4)?;
        let mut b = vm("handoff-rx", 7)?;
        let mut ledger = Ledger::new();
        for (port, v, window) in [
            (SENDER, &a, 0x1c0_0000..0x1d0_0000),
            (RECEIVER, &b, WINDOW..WINDOW + (1 << 20)),
        ] {
            let space = v.pages().ok_or("VM RAM is not memfd backed")?.clone();
            ledger
                .join(
                    port,
                    Member {
                        space,
                        window,
                        cap: 256,
                        reserved: vec![(0..0x40_0000, "the boot area, image and control block")],
                    },
                )
                .map_err(|e| e.to_string())?;
        }
        // The message: a distinct first word in each page.
        for i in 0..256 {
            a.memory()
                .write_obj(i + 1, GuestAddress(DATA + i * PAGE_SIZE))
                .map_err(|e| e.to_string())?;
        }
        let ha = a.start().map_err(|e| e.to_string())?;
        let hb = b.start().map_err(|e| e.to_string())?;
        Ok(Self {
            a,
            b,
            ha: Some(ha),
            hb: Some(hb),
            ledger,
            seq: 0,
        })
    }

    /// One message of `pages` pages by `path` (the receiver's sum is checked); returns the
    /// host's (the switch's) nanoseconds and the receiver's reading cycles.
    fn one(&mut self, path: Path, pages: u64) -> Result<(u64, u64), String> {
        let src: Vec<u64> = (0..pages).map(|i| DATA + i * PAGE_SIZE).collect();
        let t0 = Instant::now();
        let dst = match path {
            Path::Handoff => {
                let (_, dst) = self
                    .ledger
                    .hand_off(SENDER, RECEIVER, &src)
                    .map_err(|e| e.to_string())?;
                dst
            }
            Path::Copy => {
                let len = (pages * PAGE_SIZE) as usize;
                let from = self.a.memory().get_slice(GuestAddress(DATA), len);
                let to = self.b.memory().get_slice(GuestAddress(WINDOW), len);
                match (from, to) {
                    (Ok(f), Ok(t)) => f.copy_to_volatile_slice(t),
                    _ => return Err("message outside RAM".into()),
                }
                Vec::new()
            }
        };
        let mut host = t0.elapsed();
        let mem = self.b.memory();
        self.seq += 1;
        atomic(mem, CTL + 8).store(pages, Ordering::SeqCst);
        atomic(mem, CTL).store(self.seq, Ordering::SeqCst);
        let start = Instant::now();
        while atomic(mem, CTL + 16).load(Ordering::SeqCst) != self.seq {
            // Yield: on a loaded machine the receiver's vCPU may share this CPU.
            std::thread::yield_now();
            if start.elapsed() > Duration::from_secs(10)
                || self.hb.as_ref().is_none_or(|h| h.is_finished())
            {
                return Err(format!(
                    "the receiver stopped answering: {:?}",
                    self.b.console().lines()
                ));
            }
        }
        let sum = atomic(mem, CTL + 24).load(Ordering::SeqCst);
        let cycles = atomic(mem, CTL + 32).load(Ordering::SeqCst);
        if sum != pages * (pages + 1) / 2 {
            return Err(format!("the receiver read sum {sum} for {pages} pages"));
        }
        if path == Path::Handoff {
            let t1 = Instant::now();
            self.ledger
                .release(RECEIVER, &dst)
                .map_err(|e| e.to_string())?;
            host += t1.elapsed();
        }
        Ok((host.as_nanos() as u64, cycles))
    }

    /// Per-message medians of `path` at `pages` pages over `budget`: the host's (switch's)
    /// nanoseconds, the receiver's reading nanoseconds, and end-to-end messages per second.
    fn measure(&mut self, path: Path, pages: u64, budget: Duration) -> Result<Sample, String> {
        for _ in 0..4 {
            self.one(path, pages)?;
        }
        let (mut host, mut guest) = (Vec::new(), Vec::new());
        let start = Instant::now();
        let tsc0 = tsc();
        while start.elapsed() < budget || host.len() < 16 {
            let (h, g) = self.one(path, pages)?;
            host.push(h);
            guest.push(g);
        }
        let wall = start.elapsed();
        let ns_per_cycle = wall.as_nanos() as f64 / tsc().wrapping_sub(tsc0).max(1) as f64;
        Ok(Sample {
            host_ns: median(&mut host) as f64,
            receiver_ns: median(&mut guest) as f64 * ns_per_cycle,
            end_to_end: host.len() as f64 / wall.as_secs_f64(),
        })
    }
}

/// What one path costs per message (medians, so that a preempted message does not count).
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    host_ns: f64,
    receiver_ns: f64,
    end_to_end: f64,
}

impl Sample {
    /// Messages per second one switch thread and one receiver sustain without waiting for
    /// each other or for a CPU: one over the summed per-message costs.
    fn msgs_per_s(&self) -> f64 {
        1e9 / (self.host_ns + self.receiver_ns).max(1.0)
    }
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn tsc() -> u64 {
    // SAFETY: `rdtsc` has no memory effects and is available on every x86-64 CPU.
    unsafe { core::arch::x86_64::_rdtsc() }
}

impl Drop for Rig {
    fn drop(&mut self) {
        atomic(self.b.memory(), CTL).store(u64::MAX, Ordering::SeqCst);
        for h in [self.ha.take(), self.hb.take()].into_iter().flatten() {
            h.stop();
            let _ = h.join();
        }
    }
}

/// Runs the sizes; `quick` keeps the whole bench to about a second.
pub fn run(quick: bool) -> Report {
    let (budget, rounds) = if quick {
        (Duration::from_millis(60), 1)
    } else {
        (Duration::from_millis(400), 3)
    };
    let placement = Placement::two_cores();
    pin_current_thread(placement.producer);
    let where_ = format!(
        "host thread {}, receiver vCPU unpinned, sender vCPU parked",
        placement
            .producer
            .map_or("unpinned".to_string(), |c| format!("cpu{c}"))
    );
    let mut report = Report::default();
    let mut rig = match Rig::new() {
        Ok(r) => r,
        Err(e) => {
            report.failures.push(format!("handoff: {e}"));
            return report;
        }
    };
    let mut crossover = None;
    for size in SIZES {
        let pages = size / PAGE_SIZE;
        // Best of `rounds` (lowest costs), alternating the paths so drift hits both.
        let (mut h, mut c): (Option<Sample>, Option<Sample>) = (None, None);
        let better = |a: Option<Sample>, b: Sample| match a {
            Some(a) if a.msgs_per_s() >= b.msgs_per_s() => Some(a),
            _ => Some(b),
        };
        for _ in 0..rounds {
            match (
                rig.measure(Path::Handoff, pages, budget),
                rig.measure(Path::Copy, pages, budget),
            ) {
                (Ok(x), Ok(y)) => {
                    h = better(h, x);
                    c = better(c, y);
                }
                (Err(e), _) | (_, Err(e)) => {
                    report.failures.push(format!("handoff {size} B: {e}"));
                    return report;
                }
            }
        }
        let (h, c) = (h.unwrap_or_default(), c.unwrap_or_default());
        if crossover.is_none() && h.msgs_per_s() > c.msgs_per_s() {
            crossover = Some(size);
        }
        report.records.push(
            BenchRecord::new(
                "handoff",
                size as u32,
                1,
                h.msgs_per_s(),
                "copy",
                c.msgs_per_s(),
                &where_,
            )
            .with("copy_gb_per_s", c.msgs_per_s() * size as f64 / 1e9)
            .with("switch_ns", h.host_ns.round())
            .with("copy_switch_ns", c.host_ns.round())
            .with("receiver_ns", h.receiver_ns.round())
            .with("copy_receiver_ns", c.receiver_ns.round())
            .with("end_to_end_msgs_per_s", h.end_to_end.round())
            .with("copy_end_to_end_msgs_per_s", c.end_to_end.round())
            .with("pages", pages),
        );
    }
    if let Err(e) = mechanism_costs(&rig, &mut report) {
        report
            .failures
            .push(format!("handoff mechanism costs: {e}"));
    }
    let s = rig.ledger.stats();
    let cross = crossover.map_or(serde_json::Value::Null, |c| c.into());

    for r in &mut report.records {
        r.extra.insert("crossover_bytes".into(), cross.clone());
        r.extra.insert("remaps_total".into(), s.remaps.into());
    }
    drop(rig);
    let on_switch = format!(
        "switch and both host peers on one thread ({}), memfd memory, no KVM",
        placement
            .producer
            .map_or("unpinned".to_string(), |c| format!("cpu{c}"))
    );
    super::handoff_switch::run(quick, &on_switch, &mut report);
    super::handoff_guests::run(quick, &mut report);
    report
}

/// Splits the hand-off's host cost: the same ledger work on two memfd mappings KVM does not
/// know (`mmap_only_ns`: the `mmap` calls alone, no MMU notifier to serve), and the cost of the
/// other mechanism, a KVM memory slot added to the receiver over the sender's pages and removed
/// again (`memslot_pair_ns`; a real hand-off also needs the sender's slot split, at least as
/// much again). Medians of 200 runs each, added to the records as extra fields.
fn mechanism_costs(rig: &Rig, report: &mut Report) -> Result<(), String> {
    let size = 32 << 20;
    let (sa, _ma) = PageSpace::create("bench-a", size).map_err(|e| e.to_string())?;
    let (sb, _mb) = PageSpace::create("bench-b", size).map_err(|e| e.to_string())?;
    let mut ledger = Ledger::new();
    for (port, space, window) in [
        (SENDER, sa, 0x1c0_0000..0x1d0_0000),
        (RECEIVER, sb, WINDOW..WINDOW + (1 << 20)),
    ] {
        let m = Member {
            space,
            window,
            cap: 256,
            reserved: Vec::new(),
        };
        ledger.join(port, m).map_err(|e| e.to_string())?;
    }
    let host_a = rig
        .a
        .memory()
        .get_host_address(GuestAddress(DATA))
        .map_err(|e| e.to_string())? as u64;
    for r in &mut report.records {
        let pages = u64::from(r.msg_size) / PAGE_SIZE;
        let src: Vec<u64> = (0..pages).map(|i| DATA + i * PAGE_SIZE).collect();
        let (mut mm, mut slot) = (Vec::new(), Vec::new());
        for _ in 0..200 {
            let t = Instant::now();
            let (_, dst) = ledger
                .hand_off(SENDER, RECEIVER, &src)
                .map_err(|e| e.to_string())?;
            ledger.release(RECEIVER, &dst).map_err(|e| e.to_string())?;
            mm.push(t.elapsed().as_nanos() as u64);
            let t = Instant::now();
            for memory_size in [u64::from(r.msg_size), 0] {
                let region = kvm_userspace_memory_region {
                    slot: 1,
                    flags: 0,
                    guest_phys_addr: MEMSLOT_GPA,
                    memory_size,
                    userspace_addr: host_a,
                };
                // SAFETY: the range is inside the sender's RAM mapping, which `rig` keeps
                // alive; the slot lies outside the receiver's RAM and MMIO windows, the
                // receiver's guest never touches it, and it is removed at once.
                unsafe { rig.b.vm_fd().set_user_memory_region(region) }
                    .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
            }
            slot.push(t.elapsed().as_nanos() as u64);
        }
        r.extra
            .insert("mmap_only_ns".into(), median(&mut mm).into());
        r.extra
            .insert("memslot_pair_ns".into(), median(&mut slot).into());
    }
    Ok(())
}

/// Where the measured memory slot goes in the receiver: above any RAM, below the MMIO windows.
const MEMSLOT_GPA: u64 = 0x8000_0000;
