//! Initial CPU state of the boot vCPU: GDT, identity page tables, and the
//! registers for the two entry protocols kiln supports:
//! - Linux 64-bit boot protocol: long mode, paging on, RSI = boot_params;
//! - PVH: 32-bit protected mode, paging off, RBX = hvm_start_info.
//!
//! Everything here is plain data or a write into guest memory: no ioctls.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout;

/// Errors writing CPU structures into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// The GDT did not fit in guest memory.
    #[error("cannot write the GDT into guest memory")]
    WriteGdt,
    /// The IDT did not fit in guest memory.
    #[error("cannot write the IDT into guest memory")]
    WriteIdt,
    /// The page tables did not fit in guest memory.
    #[error("cannot write the identity page tables into guest memory")]
    WritePageTables,
}

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Which entry protocol the boot vCPU starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit long mode, paging on (Linux 64-bit boot protocol, our payloads).
    Long64,
    /// 32-bit protected mode, paging off (PVH).
    Pvh32,
}

/// Packs a GDT entry from flags, base and limit (the x86 descriptor layout).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// Unpacks a GDT entry into the form KVM_SET_SREGS takes.
pub fn kvm_segment_from_gdt(entry: u64, table_index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base,
        // With the granularity bit the limit counts 4 KiB pages.
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector: u16::from(table_index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: if (entry >> 47) & 1 == 0 { 1 } else { 0 },
    }
}

/// The boot GDT for an entry mode: null, code, data, TSS (selectors 0x8, 0x10, 0x18).
pub fn boot_gdt(mode: EntryMode) -> [u64; layout::BOOT_GDT_MAX] {
    let code = match mode {
        EntryMode::Long64 => gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code, L=1
        EntryMode::Pvh32 => gdt_entry(0xc09b, 0, 0xfffff),  // 32-bit code, D=1
    };
    [
        gdt_entry(0, 0, 0),
        code,
        gdt_entry(0xc093, 0, 0xfffff), // flat read/write data
        gdt_entry(0x808b, 0, 0xfffff), // busy 32-bit TSS
    ]
}

/// Writes the identity map for the first 4 GiB with 2 MiB pages.
pub fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), CpuError> {
    let w = |addr: u64, val: u64| {
        mem.write_obj(val, GuestAddress(addr))
            .map_err(|_| CpuError::WritePageTables)
    };
    // PML4[0] -> PDPT; PDPT[0..4] -> four PDs; each PD entry maps 2 MiB.
    w(layout::PML4_START, layout::PDPTE_START | 0x03)?;
    let pd_count = layout::IDENTITY_MAPPED_BYTES >> 30;
    for i in 0..pd_count {
        w(
            layout::PDPTE_START + i * 8,
            (layout::PDE_START + i * 0x1000) | 0x03,
        )?;
    }
    for i in 0..pd_count * 512 {
        // present | writable | page size (2 MiB)
        w(layout::PDE_START + i * 8, (i << 21) | 0x83)?;
    }
    Ok(())
}

/// Writes the GDT and the (empty) IDT and returns the special registers for `mode`.
pub fn setup_sregs(
    mem: &GuestMemoryMmap,
    mode: EntryMode,
    mut sregs: kvm_sregs,
) -> Result<kvm_sregs, CpuError> {
    let gdt = boot_gdt(mode);
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(layout::BOOT_GDT_START + i as u64 * 8))
            .map_err(|_| CpuError::WriteGdt)?;
    }
    mem.write_obj(0u64, GuestAddress(layout::BOOT_IDT_START))
        .map_err(|_| CpuError::WriteIdt)?;

    sregs.gdt.base = layout::BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = layout::BOOT_IDT_START;
    sregs.idt.limit = 7;

    let code = kvm_segment_from_gdt(gdt[1], 1);
    let data = kvm_segment_from_gdt(gdt[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment_from_gdt(gdt[3], 3);

    match mode {
        EntryMode::Long64 => {
            write_page_tables(mem)?;
            sregs.cr3 = layout::PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        EntryMode::Pvh32 => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    Ok(sregs)
}

/// General registers at entry.
pub fn boot_regs(mode: EntryMode, entry: u64, info_addr: u64) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2, // bit 1 is reserved and always set
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::Long64 => {
            regs.rsp = layout::BOOT_STACK_POINTER;
            regs.rbp = layout::BOOT_STACK_POINTER;
            regs.rsi = info_addr; // boot_params
        }
        EntryMode::Pvh32 => {
            regs.rbx = info_addr; // hvm_start_info
        }
    }
    regs
}

/// FPU state at reset: x87 control word 0x37f, MXCSR 0x1f80 (all exceptions masked).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn gdt_entry_round_trips() {
        let e = gdt_entry(0xa09b, 0, 0xfffff);
        assert_eq!(e, 0x00af_9b00_0000_ffff);
        let s = kvm_segment_from_gdt(e, 1);
        assert_eq!((s.selector, s.l, s.db, s.present, s.dpl), (8, 1, 0, 1, 0));
        assert_eq!(
            (s.type_, s.s, s.g, s.limit, s.base),
            (0xb, 1, 1, 0xffff_ffff, 0)
        );
        let d = kvm_segment_from_gdt(gdt_entry(0xc093, 0, 0xfffff), 2);
        assert_eq!((d.selector, d.db, d.l, d.type_), (0x10, 1, 0, 3));
        assert_eq!(kvm_segment_from_gdt(0, 0).unusable, 1);
    }

    #[test]
    fn long_mode_sregs_and_page_tables() {
        let m = mem();
        let s = setup_sregs(&m, EntryMode::Long64, kvm_sregs::default()).unwrap();
        assert_eq!(s.cr3, layout::PML4_START);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.efer & EFER_LMA, 0);
        assert_eq!(s.cs.l, 1);
        let pml4: u64 = m.read_obj(GuestAddress(layout::PML4_START)).unwrap();
        assert_eq!(pml4, layout::PDPTE_START | 3);
        let pdpt3: u64 = m.read_obj(GuestAddress(layout::PDPTE_START + 24)).unwrap();
        assert_eq!(pdpt3, (layout::PDE_START + 0x3000) | 3);
        // The last 2 MiB page of the 4 GiB identity map.
        let last: u64 = m
            .read_obj(GuestAddress(layout::PDE_START + (2048 - 1) * 8))
            .unwrap();
        assert_eq!(last, ((4u64 << 30) - (2 << 20)) | 0x83);
    }

    #[test]
    fn pvh_sregs_have_paging_off() {
        let s = setup_sregs(&mem(), EntryMode::Pvh32, kvm_sregs::default()).unwrap();
        assert_eq!(s.cr0, X86_CR0_PE | X86_CR0_ET);
        assert_eq!((s.cs.db, s.cs.l, s.efer), (1, 0, 0));
        let r = boot_regs(EntryMode::Pvh32, 0x100_0000, layout::PVH_INFO_START);
        assert_eq!(
            (r.rip, r.rbx, r.rflags),
            (0x100_0000, layout::PVH_INFO_START, 2)
        );
    }
}
