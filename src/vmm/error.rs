//! Errors of the VMM.

/// Result type of the VMM.
pub type Result<T> = std::result::Result<T, Error>;

/// Why a guest image was refused. The image is input: every field is checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    /// The image is shorter than the structure being read.
    #[error("image is truncated: {what} needs bytes {start}..{end} but the image has {len}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// First byte needed.
        start: u64,
        /// End (exclusive) of the bytes needed.
        end: u64,
        /// Image length.
        len: u64,
    },
    /// Not an ELF file.
    #[error("not an ELF file (bad magic); check the image path")]
    BadMagic,
    /// Not a 64-bit little-endian ELF.
    #[error("not a 64-bit little-endian ELF (class {class}, data {data})")]
    BadClass {
        /// `e_ident[EI_CLASS]`.
        class: u8,
        /// `e_ident[EI_DATA]`.
        data: u8,
    },
    /// Not an executable (relocatable, shared object or PIE).
    #[error("ELF type {0} is not ET_EXEC; link the guest static and non-PIE")]
    NotExecutable(u16),
    /// Built for another machine.
    #[error("ELF machine {0} is not x86-64 (62)")]
    WrongMachine(u16),
    /// A header field has a value this loader does not accept.
    #[error("bad ELF header field {field} = {value:#x}")]
    BadField {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// No `PT_LOAD` segment.
    #[error("the image has no PT_LOAD segment")]
    NoSegments,
    /// A segment does not fit the guest's image area.
    #[error(
        "segment {index} at {addr:#x}+{size:#x} is outside guest RAM {min:#x}..{max:#x}; \
         link the image at the image base or give the VM more memory"
    )]
    SegmentOutsideMemory {
        /// Program header index.
        index: usize,
        /// Guest-physical address.
        addr: u64,
        /// Size in memory.
        size: u64,
        /// Lowest allowed address.
        min: u64,
        /// Memory size.
        max: u64,
    },
    /// Two segments overlap.
    #[error("segments {0} and {1} overlap")]
    Overlap(usize, usize),
    /// The entry point is not inside an executable segment.
    #[error("entry point {0:#x} is not inside an executable PT_LOAD segment")]
    BadEntry(u64),
}

/// Everything that can go wrong creating or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm: {0}; check that KVM is loaded and that this user may read and write /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// The KVM API version is not 12.
    #[error("KVM API version {0} is not supported (need 12)")]
    KvmApiVersion(i32),
    /// A KVM ioctl failed.
    #[error("KVM {op} failed: {source}")]
    Kvm {
        /// Which operation.
        op: &'static str,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The memory size is out of range or not a multiple of 2 MiB.
    #[error("guest memory size {size:#x} is invalid: it must be a multiple of 2 MiB in {min:#x}..={max:#x}")]
    MemorySize {
        /// Requested size.
        size: u64,
        /// Smallest size accepted.
        min: u64,
        /// Largest size accepted.
        max: u64,
    },
    /// Guest memory could not be allocated.
    #[error("cannot allocate {size:#x} bytes of guest memory: {reason}; check the memory size and the host's free memory")]
    MemoryAlloc {
        /// Requested size.
        size: u64,
        /// The underlying error.
        reason: String,
    },
    /// A write to guest memory failed (an address outside guest RAM).
    #[error("cannot write {what} to guest memory at {addr:#x}: {reason}")]
    GuestWrite {
        /// What was written.
        what: &'static str,
        /// Guest-physical address.
        addr: u64,
        /// The underlying error.
        reason: String,
    },
    /// The guest image was refused.
    #[error("bad guest image: {0}")]
    Elf(#[from] ElfError),
    /// No guest image was loaded before `start`.
    #[error("no guest image loaded; call Vm::load_elf before Vm::start")]
    NoImage,
    /// `start` was called twice, or a device was registered after start.
    #[error("the VM has already been started")]
    AlreadyStarted,
    /// An MMIO range is empty, overflows, overlaps guest RAM or another device.
    #[error("MMIO range {base:#x}+{len:#x} is invalid: {reason}")]
    MmioRange {
        /// Base address.
        base: u64,
        /// Length.
        len: u64,
        /// Why.
        reason: &'static str,
    },
    /// An eventfd or other host resource could not be created.
    #[error("cannot create {what}: {source}")]
    Host {
        /// What.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The VM name is too long for the boot block.
    #[error("VM name {0:?} is longer than 32 bytes")]
    NameTooLong(String),
    /// A parameter index is out of range.
    #[error("boot parameter index {0} is out of range (0..32)")]
    ParamIndex(usize),
    /// A name parameter does not fit the parameter text.
    #[error("name parameter {0:?} is empty, longer than 255 bytes, or past the 2048 bytes of parameter text a VM has; use shorter names")]
    ParamName(String),
    /// KVM refused to enter the guest with the state we set.
    #[error("KVM could not enter the guest (hardware entry failure reason {0:#x}); the vCPU register/segment state is invalid for this CPU")]
    FailEntry(u64),
    /// KVM reported an internal error (e.g. an instruction it could not emulate).
    #[error("KVM internal error running the guest (suberror {0}); the guest probably executed something KVM cannot emulate")]
    InternalError(u32),
    /// An exit the VMM does not handle.
    #[error("unexpected vCPU exit: {0}")]
    UnexpectedExit(String),
    /// The vCPU thread panicked or could not be spawned.
    #[error("vCPU thread failed: {0}")]
    Thread(String),
}

impl Error {
    pub(crate) fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Self {
        move |source| Self::Kvm { op, source }
    }
}
