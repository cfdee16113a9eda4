//! ACPI tables for a hardware-reduced x86 platform, the way a stock
//! distribution kernel expects to find its machine:
//!
//! ```text
//!  RSDP (ACPI_RSDP_START, in the BIOS scan area) -> XSDT -> FADT -> DSDT
//!                                                        -> MADT
//! ```
//!
//! - FADT: the hardware-reduced flag (no PM timer, no SCI, no fixed
//!   buttons), the sleep control/status registers for S5 and the reset
//!   register, all at `layout::ports::ACPI_PM` (devices::acpi_pm).
//! - MADT: one local APIC per vCPU (APIC ID = vCPU index), the IOAPIC, NMI
//!   on LINT1. ISA interrupts are identity-mapped to IOAPIC pins, like the
//!   MP table says, so there are no interrupt source overrides.
//! - DSDT: COM1 (PNP0501), the CMOS RTC (PNP0B00), the PS/2 keyboard
//!   controller (PNP0303), pvpanic (QEMU0001), every virtio-mmio device (LNRO0005, its window and its edge-triggered interrupt) and
//!   `\_S5`, which makes Linux offer ACPI power-off.
//!
//! [`build`] is pure (tables and their addresses); [`write`] puts them into
//! guest memory.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml, AmlSink};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use zerocopy::{Immutable, IntoBytes};

use crate::layout;

/// OEM ID in every table header.
const OEM_ID: [u8; 6] = *b"KILN  ";
/// OEM revision in every table header.
const OEM_REVISION: u32 = 1;
/// Most vCPUs the tables describe (local APIC IDs and UIDs are one byte,
/// 0xff means "all processors").
pub const MAX_CPUS: u8 = 254;
/// `SLP_TYP` of S5 in `\_S5`; devices::acpi_pm powers off on it.
pub const SLEEP_TYPE_S5: u8 = 5;
/// What the guest writes to the FADT's reset register; devices::acpi_pm
/// resets on it.
pub const RESET_VALUE: u8 = 1;
/// Register offsets in the `layout::ports::ACPI_PM` window, the same as
/// devices::acpi_pm's (a test checks): sleep control, sleep status, reset.
const SLEEP_CONTROL_OFFSET: u16 = 0;
const SLEEP_STATUS_OFFSET: u16 = 1;
const RESET_OFFSET: u16 = 2;
/// Alignment of each table in guest memory.
const TABLE_ALIGN: u64 = 16;

/// FADT IA-PC boot architecture flags: an 8042 (the PS/2 keyboard
/// controller, also in the DSDT), no VGA, no MSI, no PCIe ASPM.
const IAPC_BOOT_ARCH: u16 = (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4);

/// Errors building or writing the tables.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcpiError {
    /// The vCPU count is out of range.
    #[error("ACPI tables describe 1 to {MAX_CPUS} vCPUs, not {0}")]
    CpuCount(u8),
    /// A virtio-mmio window does not fit a 32-bit memory descriptor.
    #[error("virtio-mmio window {base:#x}+{size:#x} is not below 4 GiB")]
    VirtioWindow {
        /// Base address.
        base: u64,
        /// Size.
        size: u64,
    },
    /// The tables do not fit in the ACPI area of the layout.
    #[error("the ACPI tables need {need:#x} bytes, the layout has {have:#x}")]
    TooBig {
        /// Bytes needed.
        need: u64,
        /// Bytes available.
        have: u64,
    },
    /// A table could not be written to guest memory.
    #[error("cannot write the ACPI {0} into guest memory")]
    Write(&'static str),
}

/// Where a virtio-mmio device lives: what the DSDT tells the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmioSlot {
    /// Guest-physical base of the register window.
    pub base: u64,
    /// Size of the window.
    pub size: u64,
    /// Interrupt line (GSI = IOAPIC pin), edge-triggered, active high.
    pub irq: u32,
}

impl VirtioMmioSlot {
    /// The slot of virtio device number `index` in kiln's layout.
    pub fn for_index(index: usize) -> Self {
        VirtioMmioSlot {
            base: layout::virtio_mmio_addr(index),
            size: layout::VIRTIO_MMIO_SIZE,
            irq: layout::VIRTIO_IRQ_BASE + index as u32,
        }
    }
}

/// One table and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Signature, for messages and tests ("RSD PTR " is shortened to "RSDP").
    pub name: &'static str,
    /// Guest-physical address.
    pub addr: u64,
    /// The bytes, checksum included.
    pub bytes: Vec<u8>,
}

/// Builds every table for `cpus` vCPUs and the virtio-mmio devices in
/// `virtio`, placed per the layout. The RSDP comes first.
pub fn build(cpus: u8, virtio: &[VirtioMmioSlot]) -> Result<Vec<Table>, AcpiError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(AcpiError::CpuCount(cpus));
    }
    let mut next = layout::ACPI_TABLES_START;
    let mut place = |len: usize| {
        let addr = next;
        next = (addr + len as u64).next_multiple_of(TABLE_ALIGN);
        addr
    };

    let dsdt = to_bytes(&dsdt(virtio)?);
    let dsdt_addr = place(dsdt.len());
    let fadt = to_bytes(&fadt(dsdt_addr));
    let fadt_addr = place(fadt.len());
    let madt = to_bytes(&madt(cpus));
    let madt_addr = place(madt.len());
    let mut xsdt = XSDT::new(OEM_ID, *b"KILNXSDT", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = to_bytes(&xsdt);
    let xsdt_addr = place(xsdt.len());
    if next > layout::ACPI_TABLES_END {
        return Err(AcpiError::TooBig {
            need: next - layout::ACPI_TABLES_START,
            have: layout::ACPI_TABLES_END - layout::ACPI_TABLES_START,
        });
    }
    let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));

    let table = |name, addr, bytes| Table { name, addr, bytes };
    Ok(vec![
        table("RSDP", layout::ACPI_RSDP_START, rsdp),
        table("XSDT", xsdt_addr, xsdt),
        table("FACP", fadt_addr, fadt),
        table("APIC", madt_addr, madt),
        table("DSDT", dsdt_addr, dsdt),
    ])
}

/// Writes the tables of [`build`] into guest memory and returns the
/// address of the RSDP (always `layout::ACPI_RSDP_START`; the boot
/// protocols pass it on: `hvm_start_info.rsdp_paddr`,
/// `boot_params.acpi_rsdp_addr`).
pub fn write(
    mem: &GuestMemoryMmap,
    cpus: u8,
    virtio: &[VirtioMmioSlot],
) -> Result<GuestAddress, AcpiError> {
    let tables = build(cpus, virtio)?;
    for t in &tables {
        mem.write_slice(&t.bytes, GuestAddress(t.addr))
            .map_err(|_| AcpiError::Write(t.name))?;
    }
    Ok(GuestAddress(layout::ACPI_RSDP_START))
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// One byte-wide register in port I/O space at `port`.
fn io_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        port.into(),
    )
}

fn fadt(dsdt_addr: u64) -> acpi_tables::fadt::FADT {
    let pm = layout::ports::ACPI_PM;
    let mut fadt = FADTBuilder::new(OEM_ID, *b"KILNFACP", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // No fixed-feature power or sleep button.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.sleep_control_reg = io_register(pm + SLEEP_CONTROL_OFFSET);
    fadt.sleep_status_reg = io_register(pm + SLEEP_STATUS_OFFSET);
    fadt.reset_reg = io_register(pm + RESET_OFFSET);
    fadt.reset_value = RESET_VALUE;
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"KILNVMM\0").into();
    fadt.finalize()
}

/// MADT "local APIC NMI" structure (ACPI 6.5, 5.2.12.7).
#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct LocalApicNmi {
    r#type: u8,
    length: u8,
    processor_uid: u8,
    flags: u16,
    lint: u8,
}

impl Aml for LocalApicNmi {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

/// The IOAPIC's ID: after the CPUs' APIC IDs, as in the MP table.
fn ioapic_id(cpus: u8) -> u8 {
    cpus + 1
}

fn madt(cpus: u8) -> MADT {
    let mut madt = MADT::new(
        OEM_ID,
        *b"KILNAPIC",
        OEM_REVISION,
        LocalInterruptController::Address(layout::APIC_START as u32),
    );
    for cpu in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(ioapic_id(cpus), layout::IOAPIC_START as u32, 0));
    madt.add_structure(LocalApicNmi {
        r#type: 4,
        length: 6,
        processor_uid: 0xff, // every processor
        flags: 0,            // polarity and trigger of the bus (edge, high)
        lint: 1,
    });
    madt
}

/// Already encoded AML, to nest inside another AML object.
struct Raw(Vec<u8>);

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

/// An edge-triggered, active-high, exclusive interrupt resource.
fn edge_interrupt(irq: u32) -> aml::Interrupt {
    aml::Interrupt::new(true, true, false, false, irq)
}

fn com1() -> Raw {
    let port = layout::ports::COM1;
    let io = aml::IO::new(port, port, 1, layout::ports::COM1_LEN as u8);
    let irq = edge_interrupt(layout::ports::COM1_IRQ);
    let crs = aml::ResourceTemplate::new(vec![&io, &irq]);
    Raw(to_bytes(&aml::Device::new(
        "COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &0u8),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    )))
}

fn rtc() -> Raw {
    let port = layout::ports::CMOS;
    let io = aml::IO::new(port, port, 1, layout::ports::CMOS_LEN as u8);
    let crs = aml::ResourceTemplate::new(vec![&io]);
    Raw(to_bytes(&aml::Device::new(
        "RTC_".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0B00")),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    )))
}

/// The i8042's keyboard port: data and command/status registers, IRQ 1.
/// Distribution kernels find the controller only through this (PNP).
fn ps2_keyboard() -> Raw {
    let data = layout::ports::I8042_DATA;
    let command = data + layout::ports::I8042_LEN - 1;
    let data_io = aml::IO::new(data, data, 1, 1);
    let command_io = aml::IO::new(command, command, 1, 1);
    let irq = edge_interrupt(layout::ports::I8042_IRQ);
    let crs = aml::ResourceTemplate::new(vec![&data_io, &command_io, &irq]);
    Raw(to_bytes(&aml::Device::new(
        "PS2K".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0303")),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    )))
}

/// QEMU's pvpanic port, under the ID Linux's `pvpanic-mmio` driver binds.
fn pvpanic() -> Raw {
    let port = layout::ports::PVPANIC;
    let io = aml::IO::new(port, port, 1, layout::ports::PVPANIC_LEN as u8);
    let crs = aml::ResourceTemplate::new(vec![&io]);
    Raw(to_bytes(&aml::Device::new(
        "PEVT".into(),
        vec![
            &aml::Name::new("_HID".into(), &"QEMU0001"),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    )))
}

fn virtio_device(index: usize, slot: &VirtioMmioSlot) -> Result<Raw, AcpiError> {
    let fits = slot
        .base
        .checked_add(slot.size)
        .is_some_and(|end| end <= 1 << 32);
    let (Ok(base), Ok(size), true) = (u32::try_from(slot.base), u32::try_from(slot.size), fits)
    else {
        return Err(AcpiError::VirtioWindow {
            base: slot.base,
            size: slot.size,
        });
    };
    let window = aml::Memory32Fixed::new(true, base, size);
    let irq = edge_interrupt(slot.irq);
    let crs = aml::ResourceTemplate::new(vec![&window, &irq]);
    let name = format!("VR{index:02X}");
    Ok(Raw(to_bytes(&aml::Device::new(
        name.as_str().into(),
        vec![
            &aml::Name::new("_HID".into(), &"LNRO0005"),
            &aml::Name::new("_UID".into(), &(index as u32)),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    ))))
}

/// The DSDT: the `\_SB` devices and `\_S5`.
fn dsdt(virtio: &[VirtioMmioSlot]) -> Result<Sdt, AcpiError> {
    let mut devices = vec![com1(), rtc(), ps2_keyboard(), pvpanic()];
    for (i, slot) in virtio.iter().enumerate() {
        devices.push(virtio_device(i, slot)?);
    }
    let children: Vec<&dyn Aml> = devices.iter().map(|d| d as &dyn Aml).collect();
    let mut body = to_bytes(&aml::Scope::new("\\_SB_".into(), children));
    // \_S5: SLP_TYPa, SLP_TYPb. Its presence is what makes Linux install
    // ACPI power-off.
    let s5 = aml::Package::new(vec![&SLEEP_TYPE_S5, &SLEEP_TYPE_S5]);
    aml::Name::new("_S5_".into(), &s5).to_aml_bytes(&mut body);
    // Revision 2: integers are 64 bits wide.
    let mut dsdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, *b"KILNDSDT", OEM_REVISION);
    dsdt.append_slice(&body);
    Ok(dsdt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    fn slots(n: usize) -> Vec<VirtioMmioSlot> {
        (0..n).map(VirtioMmioSlot::for_index).collect()
    }

    fn find<'a>(tables: &'a [Table], name: &str) -> &'a Table {
        tables.iter().find(|t| t.name == name).unwrap()
    }

    #[test]
    fn every_table_has_a_valid_checksum_and_length() {
        let tables = build(4, &slots(3)).unwrap();
        assert_eq!(tables.len(), 5);
        for t in &tables {
            assert_eq!(sum(&t.bytes), 0, "{} checksum", t.name);
            if t.name == "RSDP" {
                assert_eq!(&t.bytes[..8], b"RSD PTR ");
                assert_eq!(t.bytes.len(), 36);
                assert_eq!(sum(&t.bytes[..20]), 0, "RSDP v1 checksum");
                assert_eq!(u32_at(&t.bytes, 20), 36, "RSDP length");
                assert_eq!(t.bytes[15], 2, "RSDP revision");
            } else {
                assert_eq!(&t.bytes[..4], t.name.as_bytes());
                assert_eq!(
                    u32_at(&t.bytes, 4) as usize,
                    t.bytes.len(),
                    "{} length",
                    t.name
                );
            }
        }
    }

    #[test]
    fn tables_are_placed_inside_the_acpi_area_without_overlap() {
        let tables = build(32, &slots(19)).unwrap();
        let rsdp = find(&tables, "RSDP");
        assert_eq!(rsdp.addr, layout::ACPI_RSDP_START);
        assert_eq!(
            rsdp.addr % 16,
            0,
            "Linux scans for the RSDP on 16-byte boundaries"
        );
        let mut spans: Vec<(u64, u64)> = tables
            .iter()
            .map(|t| (t.addr, t.addr + t.bytes.len() as u64))
            .collect();
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "{spans:x?}");
        }
        for t in &tables[1..] {
            assert!(t.addr >= layout::ACPI_TABLES_START);
            assert!(t.addr + t.bytes.len() as u64 <= layout::ACPI_TABLES_END);
        }
    }

    #[test]
    fn pointers_chain_rsdp_xsdt_fadt_dsdt() {
        let tables = build(2, &slots(1)).unwrap();
        let (rsdp, xsdt) = (find(&tables, "RSDP"), find(&tables, "XSDT"));
        let (fadt, madt, dsdt) = (
            find(&tables, "FACP"),
            find(&tables, "APIC"),
            find(&tables, "DSDT"),
        );
        assert_eq!(u64_at(&rsdp.bytes, 24), xsdt.addr);
        assert_eq!(xsdt.bytes.len(), 36 + 16);
        assert_eq!(u64_at(&xsdt.bytes, 36), fadt.addr);
        assert_eq!(u64_at(&xsdt.bytes, 44), madt.addr);
        // FADT: X_DSDT at 140, flags at 112.
        assert_eq!(u64_at(&fadt.bytes, 140), dsdt.addr);
        let flags = u32_at(&fadt.bytes, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
    }

    #[test]
    fn fadt_power_registers_match_the_device() {
        use devices::acpi_pm;
        let tables = build(1, &[]).unwrap();
        let fadt = &find(&tables, "FACP").bytes;
        // GAS: space id, bit width, bit offset, access size, address.
        let gas = |off: usize| {
            (
                fadt[off],
                fadt[off + 1],
                fadt[off + 3],
                u64_at(fadt, off + 4),
            )
        };
        let port = |o: u64| u64::from(layout::ports::ACPI_PM) + o;
        assert_eq!(gas(244), (1, 8, 1, port(acpi_pm::SLEEP_CONTROL_OFFSET)));
        assert_eq!(gas(256), (1, 8, 1, port(acpi_pm::SLEEP_STATUS_OFFSET)));
        assert_eq!(gas(116), (1, 8, 1, port(acpi_pm::RESET_OFFSET)));
        assert_eq!(fadt[128], acpi_pm::RESET_VALUE);
        assert_eq!(SLEEP_TYPE_S5, acpi_pm::SLEEP_TYPE_S5);
        assert!(acpi_pm::RESET_OFFSET < u64::from(layout::ports::ACPI_PM_LEN));
    }

    #[test]
    fn madt_lists_every_cpu_and_the_ioapic() {
        let tables = build(4, &[]).unwrap();
        let madt = &find(&tables, "APIC").bytes;
        assert_eq!(u32_at(madt, 36), layout::APIC_START as u32);
        let mut off = 44;
        let (mut cpus, mut ioapics, mut nmis) = (Vec::new(), Vec::new(), 0);
        while off < madt.len() {
            let (kind, len) = (madt[off], madt[off + 1] as usize);
            assert!(len >= 2 && off + len <= madt.len());
            match kind {
                0 => {
                    assert_eq!(u32_at(madt, off + 4), 1, "enabled");
                    cpus.push((madt[off + 2], madt[off + 3]));
                }
                1 => ioapics.push((madt[off + 2], u32_at(madt, off + 4), u32_at(madt, off + 8))),
                4 => nmis += 1,
                _ => panic!("unexpected MADT entry {kind}"),
            }
            off += len;
        }
        assert_eq!(off, madt.len());
        assert_eq!(cpus, vec![(0, 0), (1, 1), (2, 2), (3, 3)]);
        assert_eq!(ioapics, vec![(5, layout::IOAPIC_START as u32, 0)]);
        assert_eq!(nmis, 1);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert_eq!(build(0, &[]), Err(AcpiError::CpuCount(0)));
        assert_eq!(build(255, &[]), Err(AcpiError::CpuCount(255)));
        let high = VirtioMmioSlot {
            base: 1 << 32,
            size: 0x1000,
            irq: 5,
        };
        assert!(matches!(
            build(1, &[high]),
            Err(AcpiError::VirtioWindow { .. })
        ));
    }

    #[test]
    fn written_tables_are_found_in_guest_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let rsdp = write(&mem, 2, &slots(2)).unwrap();
        assert_eq!(rsdp.0, layout::ACPI_RSDP_START);
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, rsdp).unwrap();
        assert_eq!(&sig, b"RSD PTR ");
        // Too little RAM for the ACPI area.
        let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x8_0000)]).unwrap();
        assert_eq!(write(&small, 1, &[]), Err(AcpiError::Write("RSDP")));
    }

    /// Disassembles a table with `iasl -d` (acpica-tools) and returns the
    /// text with every run of whitespace collapsed to one space; None when
    /// iasl is missing (outside CI).
    fn iasl_disassemble(name: &str, bytes: &[u8]) -> Option<String> {
        if std::process::Command::new("iasl")
            .arg("-v")
            .output()
            .is_err()
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "iasl not found under CI: resources/setup-host.sh installs acpica-tools"
            );
            eprintln!("SKIPPED: iasl not found; install acpica-tools (resources/setup-host.sh)");
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "kiln-acpi-{}-{}",
            name.to_lowercase(),
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("table.aml"), bytes).unwrap();
        let out = std::process::Command::new("iasl")
            .args(["-d", "table.aml"])
            .current_dir(&dir)
            .output()
            .unwrap();
        let dsl = std::fs::read_to_string(dir.join("table.dsl")).unwrap_or_default();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            out.status.success() && !dsl.is_empty(),
            "iasl -d {name} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(dsl.split_whitespace().collect::<Vec<_>>().join(" "))
    }

    fn assert_contains(text: &str, wanted: &[&str]) {
        for want in wanted {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
    }

    /// The DSDT parses back into the devices a guest must find.
    #[test]
    fn dsdt_disassembles_with_iasl() {
        let tables = build(2, &slots(2)).unwrap();
        let Some(dsl) = iasl_disassemble("DSDT", &find(&tables, "DSDT").bytes) else {
            return;
        };
        assert_contains(
            &dsl,
            &[
                "Device (COM1) { Name (_HID, EisaId (\"PNP0501\")",
                "IO (Decode16, 0x03F8, // Range Minimum 0x03F8, // Range Maximum 0x01, // Alignment 0x08, // Length )",
                "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 0x00000004, }",
                "Device (RTC) { Name (_HID, EisaId (\"PNP0B00\")",
                "IO (Decode16, 0x0070, // Range Minimum 0x0070, // Range Maximum 0x01, // Alignment 0x02, // Length )",
                "Device (PS2K) { Name (_HID, EisaId (\"PNP0303\")",
                "IO (Decode16, 0x0064, // Range Minimum 0x0064, // Range Maximum 0x01, // Alignment 0x01, // Length ) Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 0x00000001, }",
                "Device (PEVT) { Name (_HID, \"QEMU0001\")",
                "IO (Decode16, 0x0505, // Range Minimum 0x0505, // Range Maximum 0x01, // Alignment 0x01, // Length )",
                "Device (VR00) { Name (_HID, \"LNRO0005\") // _HID: Hardware ID Name (_UID, Zero)",
                "Memory32Fixed (ReadWrite, 0xD0000000, // Address Base 0x00001000, // Address Length ) Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 0x00000005, }",
                "Device (VR01) { Name (_HID, \"LNRO0005\") // _HID: Hardware ID Name (_UID, One)",
                "Memory32Fixed (ReadWrite, 0xD0001000, // Address Base 0x00001000, // Address Length ) Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 0x00000006, }",
                "Name (_S5, Package (0x02) // _S5_: S5 System State { 0x05, 0x05 })",
            ],
        );
    }

    /// The FADT, MADT and XSDT parse back with the fields Linux reads.
    #[test]
    fn static_tables_disassemble_with_iasl() {
        let tables = build(3, &[]).unwrap();
        let Some(fadt) = iasl_disassemble("FACP", &find(&tables, "FACP").bytes) else {
            return;
        };
        assert_contains(
            &fadt,
            &[
                "Hardware Reduced (V5) : 1",
                "Reset Register Supported (V2) : 1",
                "Control Method Power Button (V1) : 1",
                "Address : 0000000000000602 [080h 0128 1] Value to cause reset : 01",
                &format!("DSDT Address : {:016X}", find(&tables, "DSDT").addr),
                "Sleep Control Register : [Generic Address Structure] [0F4h 0244 1] Space ID : 01 [SystemIO]",
                "Address : 0000000000000600",
                "Address : 0000000000000601",
            ],
        );
        let madt = iasl_disassemble("APIC", &find(&tables, "APIC").bytes).unwrap();
        assert_eq!(madt.matches("[Processor Local APIC]").count(), 3);
        assert_contains(
            &madt,
            &[
                "[I/O APIC]",
                "Address : FEC00000",
                "Local Apic Address : FEE00000",
            ],
        );
        let xsdt = iasl_disassemble("XSDT", &find(&tables, "XSDT").bytes).unwrap();
        assert_contains(
            &xsdt,
            &[
                &format!("ACPI Table Address 0 : {:016X}", find(&tables, "FACP").addr),
                &format!("ACPI Table Address 1 : {:016X}", find(&tables, "APIC").addr),
            ],
        );
    }
}
