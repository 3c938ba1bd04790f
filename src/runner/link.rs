//! [`VmqLink`]: one vmq virtio-mmio device on a [`Vm`], wired for a switch.
//!
//! The one place that knows the VM ([`crate::vmm`]), the device ([`crate::transport`]) and the
//! switch ([`crate::switch::Notifier`]); it lives in the runner, the layer above all three.
//!
//! `attach` puts a [`VirtioMmio`] in an MMIO slot of the VM, routes the guest's QueueNotify
//! writes to one kick eventfd (in the kernel where KVM takes an ioeventfd, through an MMIO exit
//! otherwise) and announces the device in the boot block. The owner then:
//!
//! 1. waits on [`VmqLink::kick`] (with the kicks of its other VMs) to learn that a guest
//!    published tx messages or rx buffers while the switch was idle;
//! 2. receives [`TransportEvent::Activated`] from [`VmqLink::events`] when the guest's driver
//!    is up, and hands the port to `Switch::add_port` with [`VmqLink::notifier`];
//! 3. on [`TransportEvent::Reset`] takes the port out of the switch (`Switch::remove_port`);
//! 4. calls [`VmqLink::mark_broken`] when the switch reports the port down
//!    (`Switch::port_down`), so the guest sees `DEVICE_NEEDS_RESET`.
//!
//! ```no_run
//! use vmq::runner::VmqLink;
//! use vmq::vmm::{images, Vm, VmConfig};
//! use vmq::transport::TransportEvent;
//! let mut vm = Vm::new(VmConfig::new("peer"))?;
//! vm.load_elf(images::PEER)?;
//! let link = VmqLink::attach(&mut vm, 0)?;
//! let _vcpu = vm.start()?;
//! if let Ok(TransportEvent::Activated(port)) = link.events.recv() {
//!     // switch.add_port("peer", port, link.notifier())
//! #   drop(port);
//! }
//! # Ok::<(), vmq::vmm::Error>(())
//! ```

use std::sync::mpsc::Receiver;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::abi::platform;
use crate::switch::Notifier;
use crate::transport::{TransportEvent, VirtioMmio};
use crate::vmm::{Error, IoeventMode, Result, Vm};

/// A vmq device attached to a VM, and the handles its owner needs.
#[derive(Debug)]
pub struct VmqLink {
    /// Signalled (counter semantics, non-blocking) whenever the guest writes QueueNotify: it
    /// published tx messages or rx buffers and EVENT_IDX said the device wanted to know.
    /// Poll or epoll it; read it to re-arm.
    pub kick: EventFd,
    /// Activations and resets of the device (see [`TransportEvent`]).
    pub events: Receiver<TransportEvent>,
    dev: Arc<VirtioMmio>,
    work: Arc<EventFd>,
    base: u64,
    slot: u32,
    mode: IoeventMode,
}

impl VmqLink {
    /// Attaches a vmq device in MMIO slot `slot` (at `platform::MMIO_BASE + slot *
    /// platform::MMIO_SLOT_SIZE`), offering queues of
    /// [`QUEUE_NUM_MAX`](crate::virtio::vmq_device::QUEUE_NUM_MAX) entries. Before
    /// [`Vm::start`]. The boot block then announces at least `slot + 1` devices.
    pub fn attach(vm: &mut Vm, slot: u32) -> Result<Self> {
        let base = u64::from(slot)
            .checked_mul(platform::MMIO_SLOT_SIZE)
            .and_then(|off| platform::MMIO_BASE.checked_add(off))
            .ok_or(Error::MmioRange {
                base: platform::MMIO_BASE,
                len: platform::MMIO_SLOT_SIZE,
                reason: "slot number too large",
            })?;
        let host = |what| move |source| Error::Host { what, source };
        let kick = EventFd::new(libc::EFD_NONBLOCK).map_err(host("the vmq kick eventfd"))?;
        let (dev, events) = VirtioMmio::new(
            vm.memory().clone(),
            crate::virtio::vmq_device::QUEUE_NUM_MAX,
            Some(
                kick.try_clone()
                    .map_err(host("a clone of the vmq kick eventfd"))?,
            ),
        );
        let dev = Arc::new(dev);
        vm.register_mmio(base, platform::MMIO_SLOT_SIZE, dev.clone())?;
        // Without a datamatch both queues' notifications land on the one eventfd. If KVM
        // refuses, the write exits to the VMM and the device signals the same eventfd.
        let mode =
            vm.register_ioevent(&kick, base + crate::virtio::spec::REG_QUEUE_NOTIFY, None)?;
        let (mmio_base, count) = vm.virtio_mmio();
        let count = if mmio_base == platform::MMIO_BASE {
            count
        } else {
            0
        };
        vm.set_virtio_mmio(platform::MMIO_BASE, count.max(u64::from(slot) + 1));
        Ok(Self {
            kick,
            events,
            dev,
            work: vm.work_eventfd().clone(),
            base,
            slot,
            mode,
        })
    }

    /// A notifier for `Switch::add_port`: raises the device's used-ring interrupt bit and
    /// signals the VM's work eventfd, which wakes a vCPU parked on the doorbell-wait port.
    pub fn notifier(&self) -> Box<dyn Notifier> {
        Box::new(LinkNotifier {
            dev: self.dev.clone(),
            work: self.work.clone(),
        })
    }

    /// Marks the device `DEVICE_NEEDS_RESET` (the switch found the port broken) and wakes the
    /// guest so it notices.
    pub fn mark_broken(&self) {
        self.dev.set_needs_reset();
        let _ = self.work.write(1);
    }

    /// The device (registers, counters).
    pub fn device(&self) -> &Arc<VirtioMmio> {
        &self.dev
    }

    /// How QueueNotify writes reach [`VmqLink::kick`]: absorbed by KVM, or through MMIO exits.
    pub fn ioevent_mode(&self) -> IoeventMode {
        self.mode
    }

    /// Guest-physical base of the device's MMIO window.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The MMIO slot.
    pub fn slot(&self) -> u32 {
        self.slot
    }
}

struct LinkNotifier {
    dev: Arc<VirtioMmio>,
    work: Arc<EventFd>,
}

impl Notifier for LinkNotifier {
    fn notify(&self) {
        self.dev.signal_used();
        // A full counter only means the guest has a wake-up pending already.
        let _ = self.work.write(1);
    }
}
