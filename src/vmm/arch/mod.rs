//! x86-64 start-up state for a guest that runs in 64-bit user mode: identity-mapped page tables,
//! a GDT with user segments and a TSS, and the vCPU's control, segment and general registers.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::error::{Error, Result};
use crate::abi::platform;

const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITE: u64 = 1 << 1;
const PTE_USER: u64 = 1 << 2;
const PTE_HUGE: u64 = 1 << 7;
/// Page directories, each mapping 1 GiB with 2 MiB pages: the first 4 GiB (RAM and MMIO).
const NUM_PDS: u64 = 4;

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS: reserved bit 1 and IOPL = 3, so that port I/O from CPL 3 does not fault.
const RFLAGS_INIT: u64 = 0x3002;

/// Size of the 64-bit TSS proper; the I/O permission bitmap follows it.
const TSS_SIZE: u64 = 104;
/// The I/O permission bitmap: one bit per port (all clear = all allowed) and the terminating
/// all-ones byte. Software KVMs (`kvm_pvm`) do not honour IOPL = 3 for user mode and check this
/// bitmap when they emulate `in`/`out`, so every port is allowed here.
const IOMAP_SIZE: u64 = 65536 / 8 + 1;
/// TSS limit, covering the I/O bitmap.
const TSS_LIMIT: u32 = (TSS_SIZE + IOMAP_SIZE - 1) as u32;
const _: () = assert!(platform::TSS_ADDR + TSS_SIZE + IOMAP_SIZE <= platform::BOOT_BLOCK_ADDR);

/// GDT: index -> descriptor. Index 5 = user data (0x2b), 6 = user code64 (0x33), 8-9 = TSS.
fn gdt() -> [u64; 10] {
    let tss_lo = {
        let base = platform::TSS_ADDR;
        let limit = u64::from(TSS_LIMIT);
        (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (0x8b << 40) // present, DPL 0, type 0xb (busy 64-bit TSS)
            | (((limit >> 16) & 0xf) << 48)
            | (((base >> 24) & 0xff) << 56)
    };
    [
        0,
        0x00af_9b00_0000_ffff, // 0x08 kernel code64
        0x00cf_9300_0000_ffff, // 0x10 kernel data
        0,
        0x00cf_fb00_0000_ffff, // 0x23 user code32
        0x00cf_f300_0000_ffff, // 0x2b user data
        0x00af_fb00_0000_ffff, // 0x33 user code64
        0,
        tss_lo, // 0x40 TSS (low half)
        platform::TSS_ADDR >> 32,
    ]
}

fn write(mem: &GuestMemoryMmap, what: &'static str, addr: u64, words: &[u64]) -> Result<()> {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(addr))
        .map_err(|e| Error::GuestWrite {
            what,
            addr,
            reason: e.to_string(),
        })
}

/// Writes page tables, GDT and TSS into guest memory.
pub(crate) fn write_tables(mem: &GuestMemoryMmap) -> Result<()> {
    let pml4 = platform::PAGE_TABLES_ADDR;
    let pdpt = pml4 + 0x1000;
    let pd0 = pdpt + 0x1000;
    let upper = PTE_PRESENT | PTE_WRITE | PTE_USER;
    write(mem, "PML4", pml4, &[pdpt | upper])?;
    for i in 0..NUM_PDS {
        let pd = pd0 + i * 0x1000;
        write(mem, "PDPT", pdpt + i * 8, &[pd | upper])?;
        let mut entries = [0u64; 512];
        for (j, e) in entries.iter_mut().enumerate() {
            let phys = (i << 30) | ((j as u64) << 21);
            *e = phys | upper | PTE_HUGE;
        }
        write(mem, "page directory", pd, &entries)?;
    }
    write(mem, "GDT", platform::GDT_ADDR, &gdt())?;
    // TSS: all zero but the I/O map base (offset 102) pointing just past the TSS.
    let mut tss = [0u8; (TSS_SIZE + IOMAP_SIZE) as usize];
    tss[102..104].copy_from_slice(&(TSS_SIZE as u16).to_le_bytes());
    tss[tss.len() - 1] = 0xff;
    mem.write_slice(&tss, GuestAddress(platform::TSS_ADDR))
        .map_err(|e| Error::GuestWrite {
            what: "TSS",
            addr: platform::TSS_ADDR,
            reason: e.to_string(),
        })?;
    Ok(())
}

fn user_segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 3,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Sets CPUID, FPU, special and general registers so the vCPU starts at `entry` in 64-bit user
/// mode with `rdi` = the boot block and `rsp` = [`platform::STACK_TOP`].
pub(crate) fn setup_vcpu(kvm: &Kvm, vcpu: &VcpuFd, entry: u64) -> Result<()> {
    let cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))?;
    vcpu.set_cpuid2(&cpuid)
        .map_err(Error::kvm("KVM_SET_CPUID2"))?;

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(Error::kvm("KVM_SET_FPU"))?;

    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
    let data = user_segment(platform::USER_DS, false);
    sregs.cs = user_segment(platform::USER_CS, true);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        base: platform::TSS_ADDR,
        limit: TSS_LIMIT,
        selector: platform::TSS_SELECTOR,
        type_: 0xb,
        present: 1,
        ..Default::default()
    };
    sregs.ldt = kvm_segment {
        type_: 0x2,
        present: 1,
        unusable: 1,
        ..Default::default()
    };
    sregs.gdt.base = platform::GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of::<[u64; 10]>() - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    sregs.cr3 = platform::PAGE_TABLES_ADDR;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    sregs.efer = EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs)
        .map_err(Error::kvm("KVM_SET_SREGS"))?;

    let regs = kvm_regs {
        rip: entry,
        rsp: platform::STACK_TOP,
        rdi: platform::BOOT_BLOCK_ADDR,
        rflags: RFLAGS_INIT,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(Error::kvm("KVM_SET_REGS"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_selectors_have_dpl3_and_long_mode() {
        let g = gdt();
        let cs = g[usize::from(platform::USER_CS >> 3)];
        let ds = g[usize::from(platform::USER_DS >> 3)];
        assert_eq!((cs >> 45) & 3, 3, "user code DPL");
        assert_eq!((cs >> 53) & 1, 1, "user code L bit");
        assert_eq!((ds >> 45) & 3, 3, "user data DPL");
        assert_eq!(
            g[usize::from(platform::TSS_SELECTOR >> 3)] >> 40 & 0xff,
            0x8b
        );
    }
}
