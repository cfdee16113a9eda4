//! The memory map and the structure that hands it to the kernel:
//! `boot_params` (the "zero page", Linux boot protocol) or `hvm_start_info`
//! (PVH boot protocol).

use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout;

/// Errors writing the boot information.
#[derive(Debug, thiserror::Error)]
pub enum ZeroPageError {
    /// The e820 table has more entries than boot_params holds.
    #[error("too many e820 entries ({0})")]
    TooManyE820Entries(usize),
    /// A structure did not fit in guest memory.
    #[error("cannot write the {0} into guest memory")]
    Write(&'static str),
}

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// One entry of the memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// E820_RAM or E820_RESERVED.
    pub kind: u32,
}

/// The guest's memory map for `mem_size` bytes of RAM laid out by
/// [`layout::ram_regions`]: low RAM up to the EBDA, the legacy hole left out,
/// RAM from 1 MiB to the MMIO gap, and RAM above 4 GiB if there is more.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = vec![E820Entry {
        addr: 0,
        size: layout::EBDA_START,
        kind: E820_RAM,
    }];
    for (start, size) in layout::ram_regions(mem_size) {
        let (addr, end) = (start.max(layout::HIMEM_START), start + size);
        if end > addr {
            map.push(E820Entry {
                addr,
                size: end - addr,
                kind: E820_RAM,
            });
        }
    }
    map
}

/// Where the initrd goes and how long it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdPlacement {
    /// Guest-physical address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// A setup header for kernels loaded as ELF (no header of their own).
pub fn default_setup_header() -> setup_header {
    setup_header {
        boot_flag: 0xaa55,
        header: 0x5372_6448, // "HdrS"
        kernel_alignment: 0x0100_0000,
        ..Default::default()
    }
}

/// Writes `boot_params` for the Linux 64-bit boot protocol; `rsdp` is the
/// ACPI root pointer's address, if there are ACPI tables.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    hdr: setup_header,
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
    e820: &[E820Entry],
    rsdp: Option<u64>,
) -> Result<(), ZeroPageError> {
    let mut params = boot_params {
        hdr,
        acpi_rsdp_addr: rsdp.unwrap_or(0),
        ..Default::default()
    };
    params.hdr.type_of_loader = 0xff; // "undefined" boot loader
    params.hdr.cmd_line_ptr = layout::CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some(rd) = initrd {
        params.hdr.ramdisk_image = rd.addr as u32;
        params.hdr.ramdisk_size = rd.size as u32;
    }
    if e820.len() > params.e820_table.len() {
        return Err(ZeroPageError::TooManyE820Entries(e820.len()));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(e820) {
        slot.addr = e.addr;
        slot.size = e.size;
        slot.r#type = e.kind;
    }
    params.e820_entries = e820.len() as u8;
    mem.write_obj(params, GuestAddress(layout::ZERO_PAGE_START))
        .map_err(|_| ZeroPageError::Write("boot_params"))
}

/// Writes `hvm_start_info`, its module list and memory map for the PVH boot protocol.
pub fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    initrd: Option<InitrdPlacement>,
    e820: &[E820Entry],
    rsdp: Option<u64>,
) -> Result<(), ZeroPageError> {
    let mut info = hvm_start_info {
        magic: 0x336e_c578, // XEN_HVM_START_MAGIC_VALUE
        version: 1,
        cmdline_paddr: layout::CMDLINE_START,
        memmap_paddr: layout::PVH_MEMMAP_START,
        memmap_entries: e820.len() as u32,
        rsdp_paddr: rsdp.unwrap_or(0),
        ..Default::default()
    };
    if let Some(rd) = initrd {
        let module = hvm_modlist_entry {
            paddr: rd.addr,
            size: rd.size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(layout::PVH_MODLIST_START))
            .map_err(|_| ZeroPageError::Write("PVH module list"))?;
        info.nr_modules = 1;
        info.modlist_paddr = layout::PVH_MODLIST_START;
    }
    let entry_size = std::mem::size_of::<hvm_memmap_table_entry>() as u64;
    for (i, e) in e820.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        };
        mem.write_obj(
            entry,
            GuestAddress(layout::PVH_MEMMAP_START + i as u64 * entry_size),
        )
        .map_err(|_| ZeroPageError::Write("PVH memory map"))?;
    }
    mem.write_obj(info, GuestAddress(layout::PVH_INFO_START))
        .map_err(|_| ZeroPageError::Write("PVH start info"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram(map: &[E820Entry]) -> u64 {
        map.iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum()
    }

    #[test]
    fn small_guest_map() {
        let m = e820_map(256 << 20);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].size, layout::EBDA_START);
        assert_eq!(m[1].addr, layout::HIMEM_START);
        assert_eq!(m[1].addr + m[1].size, 256 << 20);
    }

    #[test]
    fn large_guest_map_skips_the_mmio_gap() {
        let m = e820_map(6 << 30);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].addr + m[1].size, layout::MMIO_GAP_START);
        assert_eq!(m[2].addr, layout::MMIO_GAP_END);
        assert_eq!(m[2].size, 3 << 30);
        for e in &m {
            let end = e.addr + e.size;
            assert!(end <= layout::MMIO_GAP_START || e.addr >= layout::MMIO_GAP_END);
        }
        // All RAM is described except the legacy hole between EBDA and 1 MiB.
        assert_eq!(
            ram(&m),
            (6 << 30) - (layout::HIMEM_START - layout::EBDA_START)
        );
    }

    #[test]
    fn boot_params_carry_cmdline_initrd_and_map() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let rd = InitrdPlacement {
            addr: 0x80_0000,
            size: 1234,
        };
        let map = e820_map(128 << 20);
        write_boot_params(
            &mem,
            default_setup_header(),
            42,
            Some(rd),
            &map,
            Some(0xe_0000),
        )
        .unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.acpi_rsdp_addr }, 0xe_0000);
        assert_eq!({ p.hdr.cmd_line_ptr }, layout::CMDLINE_START as u32);
        assert_eq!({ p.hdr.ramdisk_image }, 0x80_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 1234);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!(p.e820_entries, 2);
        assert_eq!({ p.e820_table[1].addr }, layout::HIMEM_START);
    }

    #[test]
    fn pvh_start_info_is_written() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let map = e820_map(128 << 20);
        write_pvh_start_info(&mem, None, &map, Some(0xe_0000)).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(layout::PVH_INFO_START)).unwrap();
        assert_eq!(info.rsdp_paddr, 0xe_0000);
        assert_eq!(info.magic, 0x336e_c578);
        assert_eq!(info.memmap_entries, 2);
        assert_eq!(info.nr_modules, 0);
        let e: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(
                layout::PVH_MEMMAP_START + std::mem::size_of::<hvm_memmap_table_entry>() as u64,
            ))
            .unwrap();
        assert_eq!(e.addr, layout::HIMEM_START);
    }
}
