//! [`PageSpace`]: one VM's memfd-backed RAM and the host mapping changes that move its pages.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use super::{PageError, PAGE_SIZE};

/// Creates a memfd of `size` bytes for a VM named `name` (the name shows in `/proc/*/maps`).
pub fn memfd(name: &str, size: u64) -> std::io::Result<File> {
    let cname = std::ffi::CString::new(format!("vmq-{}", name.replace('\0', "?")))
        .map_err(std::io::Error::other)?;
    // SAFETY: `cname` is a valid NUL-terminated string; the call only creates a new fd.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    file.set_len(size)?;
    Ok(file)
}

/// One VM's RAM as a memfd mapped at one host address, and the operations that move its pages
/// between VMs by changing host mappings. KVM follows host mapping changes through its MMU
/// notifiers, so the guest sees the new page at its next access; no copy is made.
///
/// A page of this VM's memfd at file offset `o` normally backs the VM's guest-physical `o`.
/// [`PageSpace::lend`] maps it at a guest-physical page of another VM instead and puts a
/// private zero page (the *stand-in*) in its place here, so this VM's later writes to that
/// address land in the stand-in and never reach the borrower; [`PageSpace::restore`] maps a
/// VM's own memfd pages back. Which page is where is the caller's bookkeeping
/// ([`super::Ledger`]); this type only changes mappings inside the VM's own RAM range.
///
/// Cheap to clone; every clone keeps the mapping (and the memfd) alive.
#[derive(Clone)]
pub struct PageSpace {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    memfd: File,
    host: usize,
    size: u64,
    // Keeps the mapping at `host..host + size` alive as long as this space is.
    _mem: GuestMemoryMmap,
}

impl std::fmt::Debug for PageSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageSpace")
            .field("id", &self.inner.id)
            .field("size", &self.inner.size)
            .finish()
    }
}

impl PageSpace {
    /// The page space of RAM `mem` (one region at guest-physical 0, of `size` bytes, mapped
    /// shared from `memfd` at host address `host`).
    pub(crate) fn new(
        memfd: File,
        mem: GuestMemoryMmap,
        host: usize,
        size: u64,
    ) -> std::io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        if host % PAGE_SIZE as usize != 0 || size % PAGE_SIZE != 0 {
            return Err(std::io::Error::other("guest RAM is not page aligned"));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                id: NEXT.fetch_add(1, Ordering::Relaxed),
                memfd,
                host,
                size,
                _mem: mem,
            }),
        })
    }

    /// A memfd of `size` bytes (page aligned) mapped shared, as a page space with that memory:
    /// for a VMM that builds its own VMs' RAM this way, and for tests and benches that move
    /// pages without KVM.
    pub fn create(name: &str, size: u64) -> std::io::Result<(Self, GuestMemoryMmap)> {
        use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend};
        let fd = memfd(name, size)?;
        let file = FileOffset::new(fd.try_clone()?, 0);
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(0),
            size as usize,
            Some(file),
        )])
        .map_err(std::io::Error::other)?;
        let host = mem
            .get_host_address(GuestAddress(0))
            .map_err(std::io::Error::other)? as usize;
        Ok((Self::new(fd, mem.clone(), host, size)?, mem))
    }

    /// A number that tells this space from every other in the process.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// RAM size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.size
    }

    /// Checks that `gpa..gpa + pages * PAGE_SIZE` is page aligned and inside this RAM.
    pub fn check(&self, gpa: u64, pages: u64) -> Result<(), PageError> {
        let len = pages.checked_mul(PAGE_SIZE);
        let end = len.and_then(|l| gpa.checked_add(l));
        if gpa % PAGE_SIZE != 0 || pages == 0 || end.is_none_or(|e| e > self.inner.size) {
            return Err(PageError::OutOfRange {
                gpa,
                pages,
                size: self.inner.size,
            });
        }
        Ok(())
    }

    /// Moves this VM's own pages `src_gpa..+pages` (they must be mapped here, not lent) to
    /// `dst_gpa..+pages` of `dst`: first this VM loses them (a zero stand-in takes their place,
    /// so no instant exists at which both VMs can write them), then `dst` sees them.
    pub fn lend(
        &self,
        src_gpa: u64,
        dst: &PageSpace,
        dst_gpa: u64,
        pages: u64,
    ) -> Result<(), PageError> {
        self.check(src_gpa, pages)?;
        dst.check(dst_gpa, pages)?;
        self.map_stand_in(src_gpa, pages)?;
        dst.map_from(dst_gpa, &self.inner.memfd, src_gpa, pages)
    }

    /// Maps this VM's own memfd pages back at `gpa..+pages` (undoes a [`PageSpace::lend`] on
    /// the lender, and on the borrower replaces the borrowed pages by its own again).
    pub fn restore(&self, gpa: u64, pages: u64) -> Result<(), PageError> {
        self.check(gpa, pages)?;
        self.map_from(gpa, &self.inner.memfd, gpa, pages)
    }

    fn map_from(&self, gpa: u64, file: &File, offset: u64, pages: u64) -> Result<(), PageError> {
        // `offset..offset + len` lies inside `file`: every memfd is as large as its RAM.
        self.remap(gpa, pages, libc::MAP_SHARED, file.as_raw_fd(), offset)
    }

    /// Private anonymous (zero) pages at `gpa..+pages`.
    fn map_stand_in(&self, gpa: u64, pages: u64) -> Result<(), PageError> {
        self.remap(gpa, pages, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
    }

    /// Replaces this VM's RAM at `gpa..+pages` (checked by the caller with `check`) by the
    /// mapping `flags`, `fd` and `offset` describe.
    fn remap(
        &self,
        gpa: u64,
        pages: u64,
        flags: libc::c_int,
        fd: libc::c_int,
        offset: u64,
    ) -> Result<(), PageError> {
        let len = (pages * PAGE_SIZE) as usize;
        let addr = self.inner.host + gpa as usize;
        // SAFETY: `addr..addr + len` lies inside this VM's RAM mapping (the caller checked the
        // range), which `_mem` keeps alive; MAP_FIXED replaces those pages only. The kernel
        // swaps the range in one step under the process's memory-map lock, so it is never
        // unmapped: a host thread or a vCPU touching it at the same time sees the old page's
        // bytes or the new page's, as with any concurrent guest write, and cannot fault.
        let r = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags | libc::MAP_FIXED | libc::MAP_NORESERVE,
                fd,
                offset as libc::off_t,
            )
        };
        Self::mapped(r, addr, gpa)
    }

    fn mapped(r: *mut libc::c_void, addr: usize, gpa: u64) -> Result<(), PageError> {
        if r == libc::MAP_FAILED || r as usize != addr {
            return Err(PageError::Remap {
                gpa,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}
