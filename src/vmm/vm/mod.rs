//! [`Vm`]: one KVM VM with its guest memory, image, MMIO bus and single vCPU.
//!
//! # Costs measured on the development machine
//!
//! `kvm_pvm` (software virtualisation nested in a cloud VM), shared 2-core host, release build,
//! from the `measure_costs` test in `vmm-tests/vm.rs` (`cargo test --release --test vm --
//! --ignored --nocapture measure_costs`); figures drift from run to run on shared machines:
//!
//! | what | cost |
//! |------|------|
//! | `Vm::new` (KVM VM, 16 MiB memory, page tables, vCPU) | ~0.53-0.55 ms |
//! | start to exit of a guest that exits at once (vCPU set-up, thread, run) | ~0.7-1.7 ms |
//! | `hello` end to end (create, load, run, 3 console lines, 1 ms doorbell wait, 2 MMIO exits) | ~3.5-5.5 ms |
//! | port-I/O exit to this VMM and back into the guest | ~25-38 us |
//! | write to an ioeventfd-registered MMIO address (absorbed in the kernel, no user exit) | ~4-5 us |
//!
//! On real VMX/SVM hardware a port-I/O exit costs around 1 us. Either way: poll while there is
//! work, notify rarely, and print whole lines (one exit per line, see `platform::PORT_CONSOLE`).

use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::arch;
use super::bus::MmioBus;
use super::error::{Error, Result};
use super::loader::{load_elf, LoadedImage};
use super::pages::PageSpace;
use super::vcpu::{Console, ExitCounters, VcpuContext, VcpuHandle};
use crate::abi::platform;
use crate::mmio::MmioDevice;

/// How a VM is built.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// The VM's name: prefixes its console lines, names its vCPU thread, and is copied into the
    /// boot block (at most [`platform::NAME_LEN`] bytes).
    pub name: String,
    /// Guest RAM in bytes: a multiple of 2 MiB in
    /// [`platform::MIN_MEM_SIZE`]..=[`platform::MAX_MEM_SIZE`].
    pub mem_size: u64,
    /// Boot parameters, copied into [`platform::BootBlock::params`].
    pub params: [u64; platform::NUM_PARAMS],
    /// Base of the virtio-mmio device windows announced in the boot block.
    pub mmio_base: u64,
    /// Number of virtio-mmio devices announced in the boot block.
    pub mmio_count: u64,
    /// Also send every console line to `log::info!`.
    pub echo_console: bool,
    /// Back guest RAM with a memfd (shared mapping) instead of anonymous memory, so that its
    /// pages can be handed to another VM without a copy ([`Vm::pages`], [`crate::vmm::pages`]).
    pub shared_memory: bool,
    /// Bytes at the top of RAM the guest is told not to use (the boot block's `free_end` is
    /// below them): where pages handed to it land ([`crate::vmm::pages`]). Page aligned, less
    /// than the memory size; default 0.
    pub reserve_top: u64,
    /// The parameter text: the names that name parameters refer to
    /// ([`VmConfig::name_param`]), written at [`platform::PARAM_TEXT_ADDR`]; at most
    /// [`platform::PARAM_TEXT_SIZE`] bytes.
    pub param_text: Vec<u8>,
    /// An out-of-range index given to [`VmConfig::param`], reported by [`Vm::new`].
    bad_param: Option<usize>,
    /// A name given to [`VmConfig::name_param`] that does not fit, reported by [`Vm::new`].
    bad_name: Option<String>,
}

impl VmConfig {
    /// A 16 MiB VM named `name`, no parameters, no virtio devices, no console echo.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            mem_size: 16 << 20,
            params: [0; platform::NUM_PARAMS],
            mmio_base: platform::MMIO_BASE,
            mmio_count: 0,
            echo_console: false,
            shared_memory: false,
            reserve_top: 0,
            param_text: Vec::new(),
            bad_param: None,
            bad_name: None,
        }
    }

    /// Sets the memory size.
    pub fn mem_size(mut self, bytes: u64) -> Self {
        self.mem_size = bytes;
        self
    }

    /// Backs guest RAM with a memfd (see [`VmConfig::shared_memory`]).
    pub fn shared_memory(mut self, on: bool) -> Self {
        self.shared_memory = on;
        self
    }

    /// Keeps the top `bytes` of RAM from the guest's free memory (see
    /// [`VmConfig::reserve_top`]).
    pub fn reserve_top(mut self, bytes: u64) -> Self {
        self.reserve_top = bytes;
        self
    }

    /// Sets boot parameter `index` (see each image's `param` slots in [`crate::abi::image`]).
    /// Out-of-range indices are reported by [`Vm::new`].
    pub fn param(mut self, index: usize, value: u64) -> Self {
        match self.params.get_mut(index) {
            Some(p) => *p = value,
            None => self.bad_param = Some(index),
        }
        self
    }

    /// Sets name parameter `index` to `name` (a port or service the guest looks up in the
    /// switch's directory): the name goes into the parameter text, the slot gets
    /// [`text_param`](crate::abi::image::text_param). An empty name, one longer than
    /// [`MAX_PARAM_NAME`](crate::abi::image::MAX_PARAM_NAME) bytes, or names past
    /// [`platform::PARAM_TEXT_SIZE`] bytes together are reported by [`Vm::new`].
    pub fn name_param(mut self, index: usize, name: &str) -> Self {
        let offset = self.param_text.len();
        let len = name.len();
        if len == 0
            || len > crate::abi::image::MAX_PARAM_NAME
            || offset + len > platform::PARAM_TEXT_SIZE
        {
            self.bad_name = Some(name.to_string());
            return self;
        }
        self.param_text.extend_from_slice(name.as_bytes());
        self.param(
            index,
            crate::abi::image::text_param(offset as u32, len as u32),
        )
    }
}

/// How an ioeventfd registration ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoeventMode {
    /// KVM signals the eventfd itself: the guest's write causes no exit to user space.
    InKernel,
    /// KVM refused; the write now exits to the VMM, which signals the eventfd (or, if the
    /// address lies in a registered device's range, that device must handle the write).
    MmioExit,
}

/// A device that signals an eventfd on (matching) writes: the fallback when KVM refuses an
/// ioeventfd.
struct EventfdNotifier {
    evt: EventFd,
    datamatch: Option<u32>,
}

impl MmioDevice for EventfdNotifier {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&self, _offset: u64, data: &[u8]) {
        let mut b = [0u8; 4];
        let n = data.len().min(4);
        b[..n].copy_from_slice(&data[..n]);
        if self.datamatch.is_none_or(|m| m == u32::from_le_bytes(b)) {
            let _ = self.evt.write(1);
        }
    }
}

/// One KVM VM with a single vCPU running a vmq guest image in 64-bit user mode.
///
/// Build it with [`Vm::new`], load an image with [`Vm::load_elf`], register MMIO devices and
/// ioeventfds, then [`Vm::start`] the vCPU thread. Guest memory, the console, the exit counters
/// and the work eventfd stay reachable through the `Vm` while the guest runs.
pub struct Vm {
    // Field order is drop order: the vCPU and VM fds go before the memory they map.
    vcpu: Option<VcpuFd>,
    vm_fd: VmFd,
    kvm: Kvm,
    config: VmConfig,
    image: Option<LoadedImage>,
    bus: Option<MmioBus>,
    console: Console,
    counters: Arc<ExitCounters>,
    work: Arc<EventFd>,
    pages: Option<PageSpace>,
    mem: GuestMemoryMmap,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("name", &self.config.name)
            .field("mem_size", &self.config.mem_size)
            .field("image", &self.image)
            .field("started", &self.vcpu.is_none())
            .finish()
    }
}

impl Vm {
    /// Opens `/dev/kvm`, creates the VM, its memory (registered as KVM slot 0 at
    /// guest-physical 0), the page tables and GDT, and the vCPU.
    pub fn new(config: VmConfig) -> Result<Self> {
        if config.name.len() > platform::NAME_LEN {
            return Err(Error::NameTooLong(config.name));
        }
        if let Some(i) = config.bad_param {
            return Err(Error::ParamIndex(i));
        }
        if let Some(name) = config.bad_name {
            return Err(Error::ParamName(name));
        }
        let size = config.mem_size;
        if !(platform::MIN_MEM_SIZE..=platform::MAX_MEM_SIZE).contains(&size)
            || size % (2 << 20) != 0
        {
            return Err(Error::MemorySize {
                size,
                min: platform::MIN_MEM_SIZE,
                max: platform::MAX_MEM_SIZE,
            });
        }
        let kvm = Kvm::new().map_err(Error::OpenKvm)?;
        let api = kvm.get_api_version();
        if api != 12 {
            return Err(Error::KvmApiVersion(api));
        }
        let vm_fd = kvm.create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?;
        let alloc = |e: &dyn std::fmt::Display| Error::MemoryAlloc {
            size,
            reason: e.to_string(),
        };
        let (mem, pages) = if config.shared_memory {
            let (space, mem) = PageSpace::create(&config.name, size).map_err(|e| alloc(&e))?;
            (mem, Some(space))
        } else {
            let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size as usize)])
                .map_err(|e| alloc(&e))?;
            (mem, None)
        };
        let host = mem
            .get_host_address(GuestAddress(0))
            .map_err(|e| alloc(&e))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: size,
            userspace_addr: host as u64,
        };
        // SAFETY: `host..host + size` is one mapping (anonymous, or of the memfd) owned by
        // `mem`, which lives in this `Vm` (and its `PageSpace`) and in every vCPU thread's
        // context, and is dropped only after the vCPU and VM fds (field order above; the vCPU
        // thread drops its fd before its memory clone).
        unsafe { vm_fd.set_user_memory_region(region) }
            .map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
        arch::write_tables(&mem)?;
        let vcpu = vm_fd
            .create_vcpu(0)
            .map_err(Error::kvm("KVM_CREATE_VCPU"))?;
        let work = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| Error::Host {
            what: "the work eventfd",
            source,
        })?;
        Ok(Self {
            vcpu: Some(vcpu),
            pages,
            vm_fd,
            kvm,
            console: Console::new(&config.name, config.echo_console),
            config,
            image: None,
            bus: Some(MmioBus::new()),
            counters: Arc::default(),
            work: Arc::new(work),
            mem,
        })
    }

    /// Checks and loads a static ELF64 guest image. May be called once per VM.
    pub fn load_elf(&mut self, image: &[u8]) -> Result<LoadedImage> {
        if self.vcpu.is_none() {
            return Err(Error::AlreadyStarted);
        }
        let loaded = load_elf(&self.mem, self.config.mem_size, image)?;
        self.image = Some(loaded);
        Ok(loaded)
    }

    /// Sets boot parameter `index` before [`Vm::start`].
    pub fn set_param(&mut self, index: usize, value: u64) -> Result<()> {
        *self
            .config
            .params
            .get_mut(index)
            .ok_or(Error::ParamIndex(index))? = value;
        Ok(())
    }

    /// Announces `count` virtio-mmio devices at `base` in the boot block.
    pub fn set_virtio_mmio(&mut self, base: u64, count: u64) {
        self.config.mmio_base = base;
        self.config.mmio_count = count;
    }

    /// The virtio-mmio devices announced in the boot block: `(base, count)`.
    pub fn virtio_mmio(&self) -> (u64, u64) {
        (self.config.mmio_base, self.config.mmio_count)
    }

    /// The guest's result counters ([`platform::BootBlock::results`], see each image's
    /// `result` slots in [`crate::abi::image`]), read from guest memory at any time (zero
    /// before [`Vm::start`]).
    pub fn results(&self) -> [u64; platform::NUM_RESULTS] {
        let off = std::mem::offset_of!(platform::BootBlock, results) as u64;
        self.mem
            .read_obj(GuestAddress(platform::BOOT_BLOCK_ADDR + off))
            .unwrap_or([0; platform::NUM_RESULTS])
    }

    /// Registers `dev` for guest-physical `base..base + len`. The range must lie outside RAM
    /// and not overlap another device. Only before [`Vm::start`].
    pub fn register_mmio(&mut self, base: u64, len: u64, dev: Arc<dyn MmioDevice>) -> Result<()> {
        if base < self.config.mem_size {
            return Err(Error::MmioRange {
                base,
                len,
                reason: "overlaps guest RAM",
            });
        }
        if base.checked_add(len).is_none_or(|end| end > 1 << 32) {
            return Err(Error::MmioRange {
                base,
                len,
                reason: "beyond the 4 GiB the guest's page tables map",
            });
        }
        self.bus
            .as_mut()
            .ok_or(Error::AlreadyStarted)?
            .insert(base, len, dev)
    }

    /// Makes guest writes to MMIO address `addr` signal `evt` (QueueNotify style). With
    /// `datamatch`, only 32-bit writes of that value do. KVM absorbs such writes without an
    /// exit to user space; if KVM refuses the registration, the VMM falls back to handling the
    /// write on an MMIO exit (only before [`Vm::start`]; a device registered over `addr` must
    /// then handle it).
    pub fn register_ioevent(
        &mut self,
        evt: &EventFd,
        addr: u64,
        datamatch: Option<u32>,
    ) -> Result<IoeventMode> {
        let a = IoEventAddress::Mmio(addr);
        let res = match datamatch {
            Some(v) => self.vm_fd.register_ioevent(evt, &a, v),
            None => self.vm_fd.register_ioevent(evt, &a, NoDatamatch),
        };
        match res {
            Ok(()) => Ok(IoeventMode::InKernel),
            Err(e) => {
                log::warn!(
                    "KVM_IOEVENTFD at {addr:#x} failed ({e}); notifications will exit to the VMM"
                );
                let bus = self.bus.as_mut().ok_or(Error::AlreadyStarted)?;
                let dev = EventfdNotifier {
                    evt: evt.try_clone().map_err(|source| Error::Host {
                        what: "a clone of the notify eventfd",
                        source,
                    })?,
                    datamatch,
                };
                if bus.insert(addr, 4, Arc::new(dev)).is_err() {
                    log::warn!(
                        "{addr:#x} lies in a registered device, which must handle the write"
                    );
                }
                Ok(IoeventMode::MmioExit)
            }
        }
    }

    /// Writes the boot block and starts the vCPU thread. The `Vm` stays usable for memory,
    /// console, counters and eventfds; the returned handle joins or stops the guest.
    pub fn start(&mut self) -> Result<VcpuHandle> {
        let image = self.image.ok_or(Error::NoImage)?;
        if self.vcpu.is_none() {
            return Err(Error::AlreadyStarted);
        }
        let mut bb = platform::BootBlock::new();
        bb.mem_size = self.config.mem_size;
        bb.mmio_base = self.config.mmio_base;
        bb.mmio_count = self.config.mmio_count;
        bb.free_start = image.end.next_multiple_of(4096).min(self.config.mem_size);
        bb.free_end = self
            .config
            .mem_size
            .saturating_sub(self.config.reserve_top)
            .max(bb.free_start);
        bb.name[..self.config.name.len()].copy_from_slice(self.config.name.as_bytes());
        bb.params = self.config.params;
        self.mem
            .write_obj(bb, GuestAddress(platform::BOOT_BLOCK_ADDR))
            .map_err(|e| Error::GuestWrite {
                what: "boot block",
                addr: platform::BOOT_BLOCK_ADDR,
                reason: e.to_string(),
            })?;
        self.mem
            .write_slice(
                &self.config.param_text,
                GuestAddress(platform::PARAM_TEXT_ADDR),
            )
            .map_err(|e| Error::GuestWrite {
                what: "parameter text",
                addr: platform::PARAM_TEXT_ADDR,
                reason: e.to_string(),
            })?;
        let vcpu = self.vcpu.as_ref().ok_or(Error::AlreadyStarted)?;
        arch::setup_vcpu(&self.kvm, vcpu, image.entry)?;
        let vcpu = self.vcpu.take().ok_or(Error::AlreadyStarted)?;
        let ctx = VcpuContext {
            mem: self.mem.clone(),
            bus: self.bus.take().unwrap_or_default(),
            console: self.console.clone(),
            counters: self.counters.clone(),
            work: self.work.clone(),
        };
        VcpuHandle::spawn(&self.config.name, vcpu, ctx)
    }

    /// The VM's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Guest memory (RAM at guest-physical `0..mem_size`). Cheap to clone; shares the mapping.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The VM's page space when its RAM is memfd backed ([`VmConfig::shared_memory`]): what
    /// moves its pages to and from other VMs. Cheap to clone.
    pub fn pages(&self) -> Option<&PageSpace> {
        self.pages.as_ref()
    }

    /// Guest memory size in bytes.
    pub fn mem_size(&self) -> u64 {
        self.config.mem_size
    }

    /// The loaded image, if any.
    pub fn image(&self) -> Option<LoadedImage> {
        self.image
    }

    /// The console log.
    pub fn console(&self) -> &Console {
        &self.console
    }

    /// The vCPU's exit counters.
    pub fn counters(&self) -> &Arc<ExitCounters> {
        &self.counters
    }

    /// The work eventfd: signal it (`write(1)`) to wake the guest from a doorbell wait.
    pub fn work_eventfd(&self) -> &Arc<EventFd> {
        &self.work
    }

    /// The KVM VM fd, for wiring this module does not cover (irqfds, more ioeventfds).
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm_fd
    }
}
