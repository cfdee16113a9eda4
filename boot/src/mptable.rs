//! Intel MultiProcessor Specification 1.4 table: how a guest without ACPI
//! learns about its CPUs, the IOAPIC and the ISA interrupt routing.
//! Built as a byte vector (pure) and copied to the EBDA.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout;

/// Errors building or writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// More vCPUs than APIC IDs the table can name.
    #[error("too many vCPUs for the MP table: {0} (at most {MAX_CPUS})")]
    TooManyCpus(u8),
    /// The table does not fit in the EBDA.
    #[error("the MP table ({0} bytes) does not fit in the EBDA")]
    TooBig(usize),
    /// Writing into guest memory failed.
    #[error("cannot write the MP table into guest memory")]
    Write,
}

/// The IOAPIC's ID comes after the CPUs' APIC IDs, so this many CPUs fit.
pub const MAX_CPUS: u8 = 254;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the floating pointer followed by the configuration table, for a
/// table placed at `base`.
pub fn build(base: u64, num_cpus: u8) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus + 1;
    let config_addr = base + 16;

    // Entries after the 44-byte header.
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[0, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // family 6 signature
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // FPU | APIC
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    // Bus 0 is ISA.
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    // The IOAPIC.
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(layout::IOAPIC_START as u32).to_le_bytes());
    count += 1;
    // ISA IRQ n -> IOAPIC pin n, for every pin.
    for irq in 0..=layout::IRQ_MAX as u8 {
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // Local interrupts: ExtINT on LINT0, NMI on LINT1 of every local APIC.
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let mut header = Vec::with_capacity(44);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    header.push(4); // spec revision 1.4
    header.push(0); // checksum, filled below
    header.extend_from_slice(b"KILN    "); // OEM id
    header.extend_from_slice(b"MICROVM     "); // product id
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&(layout::APIC_START as u32).to_le_bytes());
    header.extend_from_slice(&[0u8; 4]); // extended table length, checksum, reserved
    let mut config = header;
    config.extend_from_slice(&entries);
    config[7] = checksum(&config);

    let mut floating = Vec::with_capacity(16);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&(config_addr as u32).to_le_bytes());
    floating.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // length 1 (x16), rev 1.4
    floating[10] = checksum(&floating);

    floating.extend_from_slice(&config);
    Ok(floating)
}

/// Writes the MP table for `num_cpus` vCPUs into the EBDA.
pub fn write(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MptableError> {
    let table = build(layout::EBDA_START, num_cpus)?;
    if layout::EBDA_START + table.len() as u64 > layout::LOW_RAM_END {
        return Err(MptableError::TooBig(table.len()));
    }
    mem.write_slice(&table, GuestAddress(layout::EBDA_START))
        .map_err(|_| MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_lengths() {
        let t = build(layout::EBDA_START, 2).unwrap();
        assert_eq!(&t[..4], b"_MP_");
        assert_eq!(sum(&t[..16]), 0);
        let cfg = &t[16..];
        assert_eq!(&cfg[..4], b"PCMP");
        let len = u16::from_le_bytes([cfg[4], cfg[5]]) as usize;
        assert_eq!(len, cfg.len());
        assert_eq!(sum(cfg), 0);
        let ptr = u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as u64;
        assert_eq!(ptr, layout::EBDA_START + 16);
        // 2 CPUs + bus + IOAPIC + 24 IRQs + 2 local interrupts.
        let count = u16::from_le_bytes([cfg[34], cfg[35]]);
        assert_eq!(count, 2 + 1 + 1 + 24 + 2);
    }

    #[test]
    fn first_cpu_is_the_boot_processor() {
        let t = build(layout::EBDA_START, 3).unwrap();
        let cpus = &t[16 + 44..];
        assert_eq!(cpus[3], CPU_ENABLED | CPU_BOOTPROCESSOR);
        assert_eq!(cpus[20 + 1], 1);
        assert_eq!(cpus[20 + 3], CPU_ENABLED);
    }

    #[test]
    fn cpu_count_limits() {
        assert!(build(0, 0).is_err());
        assert!(build(0, 255).is_err());
        let big = build(layout::EBDA_START, MAX_CPUS).unwrap();
        // 254 CPUs do not fit in the 1 KiB EBDA: writing must say so.
        assert!(layout::EBDA_START + big.len() as u64 > layout::LOW_RAM_END);
    }
}
