//! A small loader for static, non-PIE ELF64 x86-64 guest images.
//!
//! Every header field is checked; segments must lie in `[platform::IMAGE_BASE, mem_size)` with
//! `p_vaddr == p_paddr` (guests run identity mapped) and must not overlap.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::error::{ElfError, Error, Result};
use crate::abi::platform;

const EHDR_SIZE: u64 = 64;
const PHDR_SIZE: u64 = 56;
const MAX_PHDRS: u16 = 64;
const PT_LOAD: u32 = 1;
const PF_X: u32 = 1;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;

/// Where a loaded image sits in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedImage {
    /// The entry point (`e_entry`).
    pub entry: u64,
    /// Lowest guest-physical address of any segment.
    pub start: u64,
    /// End (exclusive) of the highest segment, including its zero-filled tail.
    pub end: u64,
}

/// One checked `PT_LOAD` segment.
#[derive(Debug, Clone, Copy)]
struct Segment {
    index: usize,
    offset: u64,
    filesz: u64,
    addr: u64,
    memsz: u64,
    exec: bool,
}

fn slice<'a>(image: &'a [u8], what: &'static str, start: u64, len: u64) -> Result<&'a [u8]> {
    let truncated = || ElfError::Truncated {
        what,
        start,
        end: start.saturating_add(len),
        len: image.len() as u64,
    };
    let end = start.checked_add(len).ok_or_else(truncated)?;
    let (s, e) = (usize::try_from(start), usize::try_from(end));
    match (s, e) {
        (Ok(s), Ok(e)) if e <= image.len() => Ok(&image[s..e]),
        _ => Err(truncated().into()),
    }
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4-byte slice"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8-byte slice"))
}

/// Parses and checks `image`, returning its segments and entry, without touching memory.
fn parse(image: &[u8], mem_size: u64) -> Result<(u64, Vec<Segment>)> {
    let eh = slice(image, "ELF header", 0, EHDR_SIZE)?;
    if eh[..4] != [0x7f, b'E', b'L', b'F'] {
        return Err(ElfError::BadMagic.into());
    }
    if eh[4] != 2 || eh[5] != 1 {
        return Err(ElfError::BadClass {
            class: eh[4],
            data: eh[5],
        }
        .into());
    }
    if eh[6] != 1 {
        return Err(bad("e_ident[EI_VERSION]", eh[6].into()));
    }
    let e_type = u16_at(eh, 16);
    if e_type != ET_EXEC {
        return Err(ElfError::NotExecutable(e_type).into());
    }
    let machine = u16_at(eh, 18);
    if machine != EM_X86_64 {
        return Err(ElfError::WrongMachine(machine).into());
    }
    let version = u32_at(eh, 20);
    if version != 1 {
        return Err(bad("e_version", version.into()));
    }
    let entry = u64_at(eh, 24);
    let phoff = u64_at(eh, 32);
    let ehsize = u16_at(eh, 52);
    if u64::from(ehsize) != EHDR_SIZE {
        return Err(bad("e_ehsize", ehsize.into()));
    }
    let phentsize = u16_at(eh, 54);
    if u64::from(phentsize) != PHDR_SIZE {
        return Err(bad("e_phentsize", phentsize.into()));
    }
    let phnum = u16_at(eh, 56);
    if phnum == 0 || phnum > MAX_PHDRS {
        return Err(bad("e_phnum", phnum.into()));
    }
    let phdrs = slice(
        image,
        "program headers",
        phoff,
        u64::from(phnum) * PHDR_SIZE,
    )?;

    let mut segs: Vec<Segment> = Vec::new();
    for (index, ph) in phdrs.chunks_exact(PHDR_SIZE as usize).enumerate() {
        if u32_at(ph, 0) != PT_LOAD {
            continue;
        }
        let flags = u32_at(ph, 4);
        let offset = u64_at(ph, 8);
        let vaddr = u64_at(ph, 16);
        let paddr = u64_at(ph, 24);
        let filesz = u64_at(ph, 32);
        let memsz = u64_at(ph, 40);
        if memsz == 0 {
            continue;
        }
        if vaddr != paddr {
            return Err(bad("p_vaddr (differs from p_paddr)", vaddr));
        }
        if filesz > memsz {
            return Err(bad("p_filesz (larger than p_memsz)", filesz));
        }
        slice(image, "segment contents", offset, filesz)?;
        let outside = ElfError::SegmentOutsideMemory {
            index,
            addr: paddr,
            size: memsz,
            min: platform::IMAGE_BASE,
            max: mem_size,
        };
        match paddr.checked_add(memsz) {
            Some(end) if paddr >= platform::IMAGE_BASE && end <= mem_size => {}
            _ => return Err(outside.into()),
        }
        let seg = Segment {
            index,
            offset,
            filesz,
            addr: paddr,
            memsz,
            exec: flags & PF_X != 0,
        };
        if let Some(o) = segs
            .iter()
            .find(|o| seg.addr < o.addr + o.memsz && o.addr < seg.addr + seg.memsz)
        {
            return Err(ElfError::Overlap(o.index, index).into());
        }
        segs.push(seg);
    }
    if segs.is_empty() {
        return Err(ElfError::NoSegments.into());
    }
    if !segs
        .iter()
        .any(|s| s.exec && entry >= s.addr && entry < s.addr + s.memsz)
    {
        return Err(ElfError::BadEntry(entry).into());
    }
    Ok((entry, segs))
}

fn bad(field: &'static str, value: u64) -> Error {
    ElfError::BadField { field, value }.into()
}

/// Checks `image` and copies its `PT_LOAD` segments into `mem` (of `mem_size` bytes starting at
/// guest-physical 0), zero-filling each segment's tail. Nothing is written unless the whole
/// image is valid.
pub fn load_elf(mem: &GuestMemoryMmap, mem_size: u64, image: &[u8]) -> Result<LoadedImage> {
    let (entry, segs) = parse(image, mem_size)?;
    for s in &segs {
        let data = slice(image, "segment contents", s.offset, s.filesz)?;
        let werr = |e: vm_memory::GuestMemoryError| Error::GuestWrite {
            what: "image segment",
            addr: s.addr,
            reason: e.to_string(),
        };
        mem.write_slice(data, GuestAddress(s.addr)).map_err(werr)?;
        // Segment bounds were checked against mem_size, so the tail fits; write it in chunks.
        let zeros = [0u8; 4096];
        let mut at = s.addr + s.filesz;
        let end = s.addr + s.memsz;
        while at < end {
            let n = (end - at).min(zeros.len() as u64) as usize;
            mem.write_slice(&zeros[..n], GuestAddress(at))
                .map_err(werr)?;
            at += n as u64;
        }
    }
    Ok(LoadedImage {
        entry,
        start: segs.iter().map(|s| s.addr).min().unwrap_or(0),
        end: segs.iter().map(|s| s.addr + s.memsz).max().unwrap_or(0),
    })
}

/// A minimal ELF64 x86-64 image (test kit): one read+execute `PT_LOAD` segment holding `code`
/// at `addr`, `memsz` bytes long in memory (zero-filled past `code`). Nothing is checked
/// against a memory map, so tests also build from it images the loader must refuse.
#[cfg(any(test, feature = "test-utils"))]
pub fn minimal_elf(addr: u64, code: &[u8], memsz: u64) -> Vec<u8> {
    let mut v = vec![0u8; 64 + 56];
    v[..4].copy_from_slice(b"\x7fELF");
    v[4] = 2;
    v[5] = 1;
    v[6] = 1;
    v[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
    v[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
    v[20..24].copy_from_slice(&1u32.to_le_bytes());
    v[24..32].copy_from_slice(&addr.to_le_bytes());
    v[32..40].copy_from_slice(&64u64.to_le_bytes());
    v[52..54].copy_from_slice(&64u16.to_le_bytes());
    v[54..56].copy_from_slice(&56u16.to_le_bytes());
    v[56..58].copy_from_slice(&1u16.to_le_bytes());
    let ph = &mut v[64..];
    ph[0..4].copy_from_slice(&PT_LOAD.to_le_bytes());
    ph[4..8].copy_from_slice(&(PF_X | 4).to_le_bytes());
    ph[8..16].copy_from_slice(&120u64.to_le_bytes());
    ph[16..24].copy_from_slice(&addr.to_le_bytes());
    ph[24..32].copy_from_slice(&addr.to_le_bytes());
    ph[32..40].copy_from_slice(&(code.len() as u64).to_le_bytes());
    ph[40..48].copy_from_slice(&memsz.to_le_bytes());
    v.extend_from_slice(code);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEM: u64 = 4 << 20;

    #[test]
    fn accepts_minimal_image() {
        let (entry, segs) =
            parse(&minimal_elf(platform::IMAGE_BASE, &[0x90; 16], 64), MEM).unwrap();
        assert_eq!(entry, platform::IMAGE_BASE);
        assert_eq!(segs.len(), 1);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let img = minimal_elf(platform::IMAGE_BASE, &[0x90; 16], 64);
        for n in 0..img.len() {
            assert!(
                parse(&img[..n], MEM).is_err(),
                "prefix of {n} bytes accepted"
            );
        }
    }

    #[test]
    fn rejects_bad_fields() {
        let good = minimal_elf(platform::IMAGE_BASE, &[0x90; 16], 64);
        let mut m = good.clone();
        m[18] = 40; // EM_ARM
        assert!(matches!(
            parse(&m, MEM),
            Err(Error::Elf(ElfError::WrongMachine(40)))
        ));
        let mut m = good.clone();
        m[16] = 3; // ET_DYN
        assert!(matches!(
            parse(&m, MEM),
            Err(Error::Elf(ElfError::NotExecutable(3)))
        ));
        let low = minimal_elf(0x1000, &[0x90; 16], 64);
        assert!(matches!(
            parse(&low, MEM),
            Err(Error::Elf(ElfError::SegmentOutsideMemory { .. }))
        ));
        let high = minimal_elf(MEM - 8, &[0x90; 16], 64);
        assert!(matches!(
            parse(&high, MEM),
            Err(Error::Elf(ElfError::SegmentOutsideMemory { .. }))
        ));
        let wrap = minimal_elf(u64::MAX - 8, &[0x90; 16], 64);
        assert!(parse(&wrap, MEM).is_err());
        let mut m = good.clone();
        m[24..32].copy_from_slice(&(platform::IMAGE_BASE + 4096).to_le_bytes());
        assert!(matches!(
            parse(&m, MEM),
            Err(Error::Elf(ElfError::BadEntry(_)))
        ));
        let mut m = good;
        m[64 + 32..64 + 40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse(&m, MEM).is_err());
    }
}
