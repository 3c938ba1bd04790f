//! Runs a topology: boots its VMs, wires their vmq devices to one switch, runs the switch loop
//! on the calling thread until the clients are done, injects the host-side faults, prints live
//! progress, and reports what happened.

mod link;
mod progress;
mod report;
mod soak;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;

use crate::event::{LoopConfig, SwitchLoop};
use crate::metrics::{MetricsEndpoint, MetricsError, Publisher};
use crate::port::handoff::{Hub, SharedHub};
use crate::port::{HandoffPort, NativePort, Port};
use crate::switch::{MonotonicClock, Switch, SwitchError};
use crate::topology::{FaultKind, HandoffSpec, Role, Topology, TopologyError};
use crate::transport::TransportEvent;
use crate::virtio::DevicePort;
use crate::vmm::pages::{Member, PAGE_SIZE};
use crate::vmm::{images, RunOutcome, VcpuHandle, Vm, VmConfig};

pub use link::VmqLink;
pub use report::{ClientTotals, Latency, RunReport, Verdict, VmReport};
pub use soak::{soak, SoakOptions, SoakReport};

/// How a run talks to its user.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions {
    /// Print live progress lines to stderr.
    pub progress: bool,
    /// Echo guest console lines to the log.
    pub echo_console: bool,
    /// Serve the switch's live stats on this address while the run lasts (see
    /// [`crate::metrics`]).
    pub metrics: Option<SocketAddr>,
}

/// Why a run could not happen.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The topology is invalid.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// A VM could not be created, loaded or started.
    #[error("VM {vm}: {source}")]
    Vm {
        /// The VM.
        vm: String,
        /// What failed.
        #[source]
        source: crate::vmm::Error,
    },
    /// A guest did not bring its vmq device up.
    #[error(
        "VM {vm} did not bring up its vmq device within {secs} s ({outcome}); console:\n{console}"
    )]
    NoDevice {
        /// The VM.
        vm: String,
        /// Seconds waited.
        secs: u64,
        /// Whether and how its vCPU ended.
        outcome: String,
        /// Its console so far.
        console: String,
    },
    /// The switch refused the configuration.
    #[error(transparent)]
    Switch(#[from] SwitchError),
    /// The metrics endpoint could not start.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// A host resource (eventfd, epoll) could not be set up.
    #[error("cannot set up the switch loop: {0}")]
    Io(#[from] std::io::Error),
}

/// A booted VM and its handles.
struct Booted {
    name: String,
    image: String,
    role: Role,
    vm: Vm,
    link: VmqLink,
    vcpu: Option<VcpuHandle>,
    outcome: Option<RunOutcome>,
    kill: Option<Kill>,
    killed: bool,
    /// Finite work: the run waits for it to exit.
    waited_for: bool,
    removed: bool,
    marked_broken: bool,
}

/// When the host stops a VM (a kill fault).
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// This long into the run.
    After(Duration),
    /// Once the switch took this many requests from it.
    AfterRequests(u64),
}

fn vm_err(vm: &str) -> impl FnOnce(crate::vmm::Error) -> RunError + '_ {
    move |source| RunError::Vm {
        vm: vm.to_string(),
        source,
    }
}

/// Boots VM `i` of `topo` (not started yet), with `extra` boot parameters on top of its own.
fn boot_vm(
    topo: &Topology,
    opts: &RunOptions,
    i: usize,
    extra: &[(usize, u64)],
) -> Result<Booted, RunError> {
    let spec = &topo.vms[i];
    let name = spec.name.get_ref().clone();
    let image_name = spec.image.get_ref().clone();
    let owned;
    let image: &[u8] = match images::by_name(&image_name) {
        Some(b) => b,
        None => {
            owned = std::fs::read(&image_name).map_err(|e| RunError::Vm {
                vm: name.clone(),
                source: crate::vmm::Error::Host {
                    what: "the image file",
                    source: e,
                },
            })?;
            &owned
        }
    };
    let mut cfg = VmConfig::new(&name).mem_size(*spec.memory_mib.get_ref() << 20);
    if let Some(h) = &topo.handoff {
        // Memfd RAM, and the receive window at the top kept from the guest's free memory.
        cfg = cfg
            .shared_memory(true)
            .reserve_top(h.window_pages * crate::vmm::pages::PAGE_SIZE);
    }
    cfg.echo_console = opts.echo_console;
    for (idx, v) in topo.params_of(i)?.into_iter().chain(extra.iter().copied()) {
        cfg = cfg.param(idx, v);
    }
    for (idx, target) in topo.names_of(i)? {
        cfg = cfg.name_param(idx, &target);
    }
    let mut vm = Vm::new(cfg).map_err(vm_err(&name))?;
    vm.load_elf(image).map_err(vm_err(&name))?;
    let link = VmqLink::attach(&mut vm, 0).map_err(vm_err(&name))?;
    let kill = topo
        .faults
        .iter()
        .filter(|f| f.vm.get_ref() == &name)
        .find_map(|f| match f.kind() {
            FaultKind::KillAfterMs(ms) => Some(Kill::After(Duration::from_millis(ms))),
            FaultKind::KillAfterRequests(n) => Some(Kill::AfterRequests(n)),
            FaultKind::GuestParam(..) => None,
        });
    let role = topo.role(spec);
    let waited_for = role.waited_for();
    Ok(Booted {
        name,
        image: image_name,
        role,
        vm,
        link,
        vcpu: None,
        outcome: None,
        kill,
        killed: false,
        waited_for,
        removed: false,
        marked_broken: false,
    })
}

/// Boots every VM of `topo` (not started yet).
fn boot(topo: &Topology, opts: &RunOptions) -> Result<Vec<Booted>, RunError> {
    (0..topo.vms.len())
        .map(|i| boot_vm(topo, opts, i, &[]))
        .collect()
}

/// Starts VM `vms[i]` in place of the one running there (a restart): the old one is stopped
/// and its report returned; the port comes back when the new guest activates its device.
fn restart(
    sw: &mut Switch<GuestMemoryMmap>,
    topo: &Topology,
    opts: &RunOptions,
    vms: &mut [Booted],
    i: usize,
    extra: &[(usize, u64)],
) -> Result<VmReport, RunError> {
    let mut fresh = boot_vm(topo, opts, i, extra)?;
    fresh.vcpu = Some(fresh.vm.start().map_err(vm_err(&fresh.name))?);
    fresh.removed = true; // until it activates
    let mut old = std::mem::replace(&mut vms[i], fresh);
    if !sw.port_down(i as u32) {
        sw.remove_port(i as u32);
    }
    if let Some(v) = old.vcpu.take() {
        v.stop();
        old.outcome = Some(v.join().unwrap_or(RunOutcome::Stopped));
    }
    Ok(report::vm_report(&old))
}

/// Runs `topo` to completion (or its `max_duration_ms`).
pub fn run(topo: &Topology, opts: &RunOptions) -> Result<RunReport, RunError> {
    // Bound before the VMs boot, so that a taken address costs no boot; it answers 503 until
    // the switch publishes its first snapshot.
    let mut publisher = None;
    let _endpoint = match opts.metrics {
        Some(addr) => {
            let shared = Arc::new(Mutex::new(None));
            let endpoint = MetricsEndpoint::start(addr, shared.clone())?;
            if opts.progress {
                eprintln!("metrics on http://{}/metrics", endpoint.local_addr());
            }
            publisher = Some(Publisher::new(shared, Publisher::EVERY));
            Some(endpoint)
        }
        None => None,
    };
    let mut vms = boot(topo, opts)?;
    let t0 = Instant::now();
    for b in &mut vms {
        b.vcpu = Some(b.vm.start().map_err(vm_err(&b.name))?);
    }
    // Every guest brings up its device first thing; a few seconds is generous.
    const ACTIVATION: Duration = Duration::from_secs(5);
    let mut ports = Vec::new();
    for i in 0..vms.len() {
        match vms[i].link.events.recv_timeout(ACTIVATION) {
            Ok(TransportEvent::Activated(port)) => ports.push(port),
            Ok(TransportEvent::Reset) | Err(_) => {
                for other in &vms {
                    if let Some(v) = &other.vcpu {
                        v.stop();
                    }
                }
                let b = &mut vms[i];
                let outcome = match b.vcpu.take() {
                    Some(v) => format!("{:?}", v.join()),
                    None => "not started".to_string(),
                };
                return Err(RunError::NoDevice {
                    vm: b.name.clone(),
                    secs: ACTIVATION.as_secs(),
                    outcome,
                    console: b.vm.console().lines().join("\n"),
                });
            }
        }
    }
    let mut switch: Switch<GuestMemoryMmap> =
        Switch::new(topo.switch, Arc::new(MonotonicClock::new()))?;
    let handoff = topo
        .handoff
        .map(|h| (h, Arc::new(Mutex::new(Hub::new(h.config())))));
    for (i, ((b, port), spec)) in vms.iter().zip(ports).zip(&topo.vms).enumerate() {
        debug_assert_eq!(switch.next_port_id(), i as u32);
        let id = switch.attach(&b.name, native_port(b, port, i as u32, handoff.as_ref()))?;
        switch.set_notify_deadline(id, spec.notify_deadline_ns())?;
    }
    for s in &topo.services {
        let members: Vec<(u32, f64)> = s
            .members
            .get_ref()
            .iter()
            .map(|m| {
                let port = topo.vm_index(m.vm.get_ref()).expect("checked when parsed") as u32;
                (port, *m.weight.get_ref())
            })
            .collect();
        switch.add_service(s.name.get_ref(), s.config(), &members)?;
    }
    let mut lp = switch_loop(switch, &vms)?;
    let max = Duration::from_millis(topo.run.max_duration_ms);
    let progress_every = Duration::from_millis(topo.run.progress_ms.max(10));
    let mut progress = progress::Progress::new(opts.progress && topo.run.progress_ms > 0);
    let started = Instant::now();
    let mut timed_out = false;
    let all_done = std::cell::Cell::new(false);
    lp.run(
        |_| {
            if started.elapsed() >= max {
                timed_out = true;
                return true;
            }
            all_done.get()
        },
        Duration::from_millis(5),
        |sw, stats, kicks| {
            supervise(sw, &mut vms, started.elapsed(), kicks, handoff.as_ref());
            let waited: Vec<_> = vms.iter().filter(|b| b.waited_for).collect();
            all_done.set(
                !waited.is_empty()
                    && waited
                        .iter()
                        .all(|b| b.vcpu.as_ref().is_none_or(|v| v.is_finished())),
            );
            progress.tick(sw, stats, started.elapsed(), progress_every);
            if let Some(p) = publisher.as_mut() {
                p.tick(sw);
            }
        },
    );
    if let Some(p) = publisher.as_mut() {
        p.publish(&lp.switch);
    }
    let elapsed = started.elapsed();
    let loop_stats = lp.stats();
    // Workers serve until told otherwise: stop everything still running, then collect.
    for b in &vms {
        if let Some(v) = &b.vcpu {
            v.stop();
        }
    }
    for b in &mut vms {
        if let Some(v) = b.vcpu.take() {
            b.outcome = Some(v.join().unwrap_or(RunOutcome::Stopped));
        }
    }
    progress.finish();
    let mut report = report::build(
        &lp.switch,
        &vms,
        elapsed,
        t0.elapsed(),
        loop_stats,
        timed_out,
    );
    if let Some((_, hub)) = &handoff {
        let mut hub = hub.lock().unwrap_or_else(|p| p.into_inner());
        // As the run ended (`pages_out` counts what was still out); then everything goes home.
        report.handoff = Some(hub.stats());
        for i in 0..vms.len() {
            hub.leave(i as u32);
        }
    }
    Ok(report)
}

/// The runner's page hand-off: the topology's settings and the hub every port shares.
type Handoff = (HandoffSpec, SharedHub);

/// The switch loop, to run on the calling thread, woken by every VM's kicks.
fn switch_loop(
    mut switch: Switch<GuestMemoryMmap>,
    vms: &[Booted],
) -> std::io::Result<SwitchLoop<GuestMemoryMmap>> {
    let kicks = vms
        .iter()
        .map(|b| b.link.kick.try_clone())
        .collect::<std::io::Result<Vec<_>>>()?;
    // The loop runs on this thread: its own waits for a CPU count toward no backend's stall.
    if let Some(own) = crate::vmm::SchedStat::current_thread() {
        switch.set_run_queue_clock(Box::new(move || own.run_queue_wait_ns()));
    }
    SwitchLoop::new(switch, kicks, LoopConfig::default())
}

/// VM `b`'s vmq device as a switch port: notified through its link, and telling the switch how
/// long its vCPU waited for a CPU (so that a VM that was not scheduled is not taken for one
/// that stalled).
///
/// With hand-off, the port is a [`HandoffPort`] and its VM joins the hub as member `id` (again,
/// for a revived port: its new queues, or its restarted VM's new RAM).
fn native_port(
    b: &Booted,
    dev: DevicePort<GuestMemoryMmap>,
    id: u32,
    handoff: Option<&Handoff>,
) -> Box<dyn Port<GuestMemoryMmap>> {
    let member = handoff.and_then(|(spec, _)| handoff_member(b, &dev, spec));
    let mut port = NativePort::new(dev, b.link.notifier());
    if let Some(sched) = b.vcpu.as_ref().and_then(|v| v.sched_stat()) {
        port = port.with_run_queue_clock(Box::new(move || sched.run_queue_wait_ns()));
    }
    let Some((_, hub)) = handoff else {
        return Box::new(port);
    };
    if let Some((member, rings)) = member {
        let mut h = hub.lock().unwrap_or_else(|p| p.into_inner());
        match h.join(id, member) {
            Ok(()) => {
                for r in rings {
                    h.reserve(id, r, "its rings");
                }
            }
            // Its messages are copied then, never handed off.
            Err(e) => log::warn!("VM {} takes no part in page hand-off: {e}", b.name),
        }
    }
    Box::new(HandoffPort::new(port, id, hub.clone()))
}

/// How VM `b` takes part in hand-off: its RAM, its window (the top of its RAM, kept from its
/// guest), its cap, the boot area and image below its free memory; and its rings (from its
/// device's queues), which it may not hand off either.
fn handoff_member(
    b: &Booted,
    dev: &DevicePort<GuestMemoryMmap>,
    spec: &HandoffSpec,
) -> Option<(Member, Vec<std::ops::Range<u64>>)> {
    let space = b.vm.pages()?.clone();
    let size = b.vm.mem_size();
    let window = size - spec.window_pages * PAGE_SIZE..size;
    let image_end =
        b.vm.image()
            .map_or(0, |i| i.end.next_multiple_of(PAGE_SIZE));
    let mut rings = Vec::new();
    for q in [dev.rx_queue(), dev.tx_queue()] {
        let n = u64::from(q.size());
        rings.push(q.desc_table()..q.desc_table() + 16 * n);
        rings.push(q.avail_ring()..q.avail_ring() + 6 + 2 * n);
        rings.push(q.used_ring()..q.used_ring() + 6 + 8 * n);
    }
    let member = Member {
        space,
        window,
        cap: spec.cap(),
        reserved: vec![(0..image_end, "the boot area and its image")],
    };
    Some((member, rings))
}

/// Host-side supervision, on the switch thread between polls: kill faults, guest resets,
/// guests that exited, ports the switch found broken.
fn supervise(
    sw: &mut Switch<GuestMemoryMmap>,
    vms: &mut [Booted],
    now: Duration,
    kicks: &mut Vec<(u32, vmm_sys_util::eventfd::EventFd)>,
    handoff: Option<&Handoff>,
) {
    for (i, b) in vms.iter_mut().enumerate() {
        let port = i as u32;
        if let (Some(kill), false) = (b.kill, b.killed) {
            let due = match kill {
                Kill::After(after) => now >= after,
                Kill::AfterRequests(n) => sw.port_stats(port).is_some_and(|s| s.requests >= n),
            };
            if due {
                b.killed = true;
                if let Some(v) = &b.vcpu {
                    v.stop();
                }
                log::info!("fault: killed VM {} at {:?}", b.name, now);
            }
        }
        while let Ok(ev) = b.link.events.try_recv() {
            match ev {
                TransportEvent::Reset => {
                    if !b.removed {
                        b.removed = true;
                        sw.remove_port(port);
                    }
                }
                // The guest reset its device and brought it up again, or a restarted VM came
                // up: the port returns with its fresh queues.
                TransportEvent::Activated(dev) => {
                    if !sw.port_down(port) {
                        sw.remove_port(port);
                    }
                    match sw.revive(port, native_port(b, dev, port, handoff)) {
                        Ok(()) => {
                            b.removed = false;
                            b.marked_broken = false;
                            if let Ok(k) = b.link.kick.try_clone() {
                                kicks.push((port, k));
                            }
                        }
                        Err(e) => log::warn!("cannot bring port {} back: {e}", b.name),
                    }
                }
            }
        }
        let finished = b.vcpu.as_ref().is_none_or(|v| v.is_finished());
        if finished && !b.removed {
            // A guest that exited (or was killed) no longer drains its queues.
            b.removed = true;
            sw.remove_port(port);
        }
        if sw.port_down(port) && !b.marked_broken && !b.removed {
            b.marked_broken = true;
            b.link.mark_broken();
        }
    }
}
