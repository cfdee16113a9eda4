//! Every guest-physical address kiln uses, defined once.
//!
//! ```text
//!  0x0000_0000 +-------------------------------+
//!              | real-mode IVT / BDA (unused)  |
//!  0x0000_0500 | GDT  (BOOT_GDT)               |
//!  0x0000_0520 | IDT  (BOOT_IDT, empty)        |
//!  0x0000_6000 | PVH start_info + memmap       |
//!  0x0000_7000 | boot_params "zero page"       |
//!  0x0000_8ff0 | boot stack top (grows down)   |
//!  0x0000_9000 | PML4                          |
//!  0x0000_a000 | PDPT                          |
//!  0x0000_b000 | 4 x PD (2 MiB pages, 4 GiB)   |
//!  0x0002_0000 | kernel command line           |
//!  0x0009_fc00 | MP table (in the EBDA)        |
//!  0x000a_0000 | VGA / BIOS hole (not RAM)     |
//!  0x000e_0000 | ACPI RSDP (BIOS scan area)    |
//!  0x000e_1000 | ACPI tables (XSDT, FADT, ...) |
//!  0x0010_0000 +-------------------------------+ HIMEM_START
//!              | kernel, initrd, free RAM      |
//!  0xc000_0000 +-------------------------------+ MMIO_GAP_START (3 GiB)
//!              | boot timer (1 page)           |
//!  0xd000_0000 | virtio-mmio devices, 4 KiB ea |
//!  0xfec0_0000 | IOAPIC                        |
//!  0xfee0_0000 | local APIC                    |
//!  0xfffb_c000 | KVM identity map + TSS pages  |
//!  0x1_0000_0000 +-----------------------------+ MMIO_GAP_END
//!              | RAM above 4 GiB (if > 3 GiB)  |
//!              +-------------------------------+
//! ```

/// Global descriptor table used at entry (null, code64, data, tss).
pub const BOOT_GDT_START: u64 = 0x500;
/// Maximum number of GDT entries kiln writes.
pub const BOOT_GDT_MAX: usize = 4;
/// An empty interrupt descriptor table: the guest loads its own.
pub const BOOT_IDT_START: u64 = 0x520;

/// PVH `hvm_start_info` structure (PVH boot protocol).
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd), right after start_info.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map entries.
pub const PVH_MEMMAP_START: u64 = 0x6100;

/// Linux `boot_params`, the "zero page" (Linux 64-bit boot protocol).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;

/// Identity-mapping page tables: PML4, one PDPT, four PDs (4 GiB of 2 MiB pages).
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// First of the four page directories.
pub const PDE_START: u64 = 0xb000;
/// How many bytes the identity map covers.
pub const IDENTITY_MAPPED_BYTES: u64 = 4 << 30;

/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Room reserved for the command line (the kernel's own limit may be lower).
pub const CMDLINE_MAX_SIZE: usize = 0x10000;

/// Start of the extended BIOS data area, where the MP table goes.
pub const EBDA_START: u64 = 0x9fc00;
/// End of usable low memory (VGA/BIOS area follows).
pub const LOW_RAM_END: u64 = 0xa0000;

/// ACPI root pointer (RSDP). 0xe0000-0xfffff is the BIOS area where Linux
/// looks for it when the boot protocol does not pass its address.
pub const ACPI_RSDP_START: u64 = 0xe_0000;
/// The other ACPI tables (XSDT, FADT, MADT, DSDT), one after the other.
pub const ACPI_TABLES_START: u64 = 0xe_1000;
/// End of the ACPI table area (exclusive).
pub const ACPI_TABLES_END: u64 = HIMEM_START;

/// First byte above the legacy 1 MiB area; kernels load here or above.
pub const HIMEM_START: u64 = 0x10_0000;

/// The 32-bit MMIO hole: no RAM between these two addresses.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;

/// Boot-timer device: the guest writes 123 here (the Firecracker convention).
pub const BOOT_TIMER_START: u64 = 0xc000_0000;
/// Size of the boot-timer window.
pub const BOOT_TIMER_SIZE: u64 = 0x1000;

/// First virtio-mmio device window; device `n` is at `VIRTIO_MMIO_START + n * VIRTIO_MMIO_SIZE`.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;

/// IOAPIC registers (in-kernel irqchip).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC registers (in-kernel irqchip).
pub const APIC_START: u64 = 0xfee0_0000;

/// KVM needs three pages for the real-mode TSS and one for its identity map.
pub const KVM_IDENTITY_MAP_START: u64 = 0xfffb_c000;
/// TSS pages for KVM_SET_TSS_ADDR (right after the identity map page).
pub const KVM_TSS_START: u64 = KVM_IDENTITY_MAP_START + 0x1000;

/// Legacy I/O ports.
pub mod ports {
    /// COM1 8250 UART base port.
    pub const COM1: u16 = 0x3f8;
    /// Number of COM1 registers.
    pub const COM1_LEN: u16 = 8;
    /// COM1 interrupt line.
    pub const COM1_IRQ: u32 = 4;
    /// CMOS/RTC index port; data at +1.
    pub const CMOS: u16 = 0x70;
    /// Number of CMOS ports.
    pub const CMOS_LEN: u16 = 2;
    /// i8042 data port.
    pub const I8042_DATA: u16 = 0x60;
    /// i8042 command/status port (0x64); the window 0x60..0x65 covers both.
    pub const I8042_LEN: u16 = 5;
    /// i8042 keyboard interrupt line.
    pub const I8042_IRQ: u32 = 1;
    /// ACPI hardware-reduced power registers (the FADT points here): sleep
    /// control at +0, sleep status at +1, reset at +2, one byte each.
    pub const ACPI_PM: u16 = 0x600;
    /// Number of ACPI power register ports.
    pub const ACPI_PM_LEN: u16 = 3;
    /// pvpanic (QEMU's ISA port): the guest writes here when it panics.
    pub const PVPANIC: u16 = 0x505;
    /// Number of pvpanic ports.
    pub const PVPANIC_LEN: u16 = 1;
}

/// First interrupt line handed to virtio-mmio devices (GSI, also the IOAPIC pin).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last IOAPIC pin usable by devices.
pub const IRQ_MAX: u32 = 23;

/// The guest-physical RAM regions for `mem_size` bytes of RAM: one region
/// below the MMIO gap and, when the RAM does not fit there, a second one
/// above 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

/// The guest-physical address of virtio-mmio device number `index`.
pub fn virtio_mmio_addr(index: usize) -> u64 {
    VIRTIO_MMIO_START + index as u64 * VIRTIO_MMIO_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ram_is_one_region() {
        assert_eq!(ram_regions(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(ram_regions(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
    }

    #[test]
    fn big_ram_is_split_around_the_gap() {
        let r = ram_regions(4 << 30);
        assert_eq!(r, vec![(0, 3 << 30), (4 << 30, 1 << 30)]);
        let total: u64 = r.iter().map(|(_, s)| s).sum();
        assert_eq!(total, 4 << 30);
    }

    #[test]
    fn fixed_areas_do_not_overlap() {
        let areas = [
            (BOOT_GDT_START, 8 * BOOT_GDT_MAX as u64),
            (BOOT_IDT_START, 8),
            (PVH_INFO_START, 0x1000),
            (ZERO_PAGE_START, 0x1000),
            (PML4_START, 0x1000),
            (PDPTE_START, 0x1000),
            (PDE_START, 0x4000),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
            (EBDA_START, LOW_RAM_END - EBDA_START),
        ];
        for (i, a) in areas.iter().enumerate() {
            assert!(a.0 + a.1 <= LOW_RAM_END);
            for b in &areas[i + 1..] {
                assert!(
                    a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0,
                    "{a:x?} overlaps {b:x?}"
                );
            }
        }
        const {
            assert!(BOOT_STACK_POINTER > ZERO_PAGE_START + 0x1000);
            assert!(BOOT_STACK_POINTER < PML4_START);
            assert!(BOOT_TIMER_START + BOOT_TIMER_SIZE <= VIRTIO_MMIO_START);
            assert!(KVM_TSS_START + 0x3000 <= MMIO_GAP_END);
            assert!(LOW_RAM_END <= ACPI_RSDP_START);
            assert!(ACPI_RSDP_START + 36 <= ACPI_TABLES_START);
            assert!(ACPI_TABLES_START < ACPI_TABLES_END);
            assert!(ACPI_TABLES_END <= HIMEM_START);
        }
    }
}
