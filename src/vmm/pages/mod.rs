//! Page hand-off between vmq's own VMs (seed 004, US 7,784,060): a message may carry
//! references to pages of its sender's RAM, and those pages move into the receiver's
//! guest-physical space without a copy; the sender loses them until they come back.
//!
//! # Mechanism
//!
//! Every participating VM's RAM is a memfd mapped shared at one host address
//! ([`VmConfig::shared_memory`](super::VmConfig::shared_memory)); KVM's memory slot points at
//! that mapping. To hand page `s` of VM A to page `d` of VM B, the host:
//!
//! 1. maps a private zero page over A's host address of `s` (`mmap(MAP_FIXED|MAP_PRIVATE|
//!    MAP_ANONYMOUS)`): A's guest now reads zeros there and its writes go to that stand-in;
//! 2. maps A's memfd at offset `s` over B's host address of `d` (`mmap(MAP_FIXED|MAP_SHARED)`).
//!
//! KVM's MMU notifiers drop the guest mappings of the replaced host pages, so both guests see
//! the change at their next access, with no KVM call and no memory slot change. A page is
//! never writable by two guests at once (step 1 comes first), and A's later writes never reach
//! B. Runs of consecutive pages take one `mmap` each. Returning is the reverse: B's own memfd
//! page goes back at `d`, A's at `s` (the stand-in is dropped; the page comes back with what B
//! wrote into it).
//!
//! [`PageSpace`] does the mapping changes; [`Ledger`] decides whether a hand-off is allowed
//! (every reference a guest gives is hostile input) and remembers where each page is, so that
//! pages come back on release, on answer, and when a port goes down.

mod ledger;
pub mod message;
mod space;

pub use ledger::{Ledger, LedgerStats, LoanId, Member};
pub use space::{memfd, PageSpace};

/// The page size hand-off works in (the wire format's).
pub use crate::wire::pages::PAGE_SIZE;

/// Why a hand-off, a release or a mapping change was refused.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// A range that is not page aligned, is empty, or leaves the VM's RAM.
    #[error("pages {gpa:#x} (+{pages}) are not {PAGE_SIZE}-byte aligned pages inside the {size:#x} bytes of RAM; refer only to whole pages of your own memory")]
    OutOfRange {
        /// First guest-physical address.
        gpa: u64,
        /// Number of pages.
        pages: u64,
        /// RAM size of the VM.
        size: u64,
    },
    /// `mmap` refused to replace a page (usually the process's map count limit,
    /// `vm.max_map_count`).
    #[error("remapping guest page {gpa:#x} failed: {source}; raise vm.max_map_count or hand off fewer, longer runs of pages")]
    Remap {
        /// Guest-physical address of the first page of the run.
        gpa: u64,
        /// The OS error.
        source: std::io::Error,
    },
    /// A port that never joined the ledger (or left it).
    #[error("port {0} takes no part in page hand-off; join it to the ledger first (its RAM must be memfd backed)")]
    NotMember(u32),
    /// A sender that names a page it may not hand off: in its rings, its boot area or its
    /// receive window.
    #[error("page {gpa:#x} is reserved ({what}) and cannot be handed off")]
    Reserved {
        /// The page.
        gpa: u64,
        /// What it belongs to.
        what: &'static str,
    },
    /// A page that is out already (handed off and not returned).
    #[error(
        "page {0:#x} is handed off already; wait for it to come back before handing it off again"
    )]
    AlreadyOut(u64),
    /// The same page twice in one message.
    #[error("page {0:#x} appears twice in one message")]
    Duplicate(u64),
    /// More pages than one message may carry.
    #[error("{0} page references in one message, more than the {max} allowed", max = crate::wire::pages::MAX_PAGES)]
    TooMany(usize),
    /// The receiver holds its cap of borrowed pages (or its window is full).
    #[error("port {port} holds {held} borrowed pages, its cap is {cap}; it must release some before it takes {wanted} more (the sender may copy instead)")]
    ReceiverFull {
        /// The receiver.
        port: u32,
        /// Pages it holds.
        held: u64,
        /// Its cap.
        cap: u64,
        /// Pages the message carries.
        wanted: u64,
    },
    /// A release of a page the receiver does not hold.
    #[error("port {port} releases page {gpa:#x}, which it does not hold")]
    NotHeld {
        /// The receiver.
        port: u32,
        /// The page.
        gpa: u64,
    },
    /// A VM handing pages to itself.
    #[error("port {0} hands pages to itself")]
    SelfHandoff(u32),
}
