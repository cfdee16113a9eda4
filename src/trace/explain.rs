//! `kiln explain`: the boot recipe narrated as it runs. Each phase's block
//! names the KVM ioctls behind it, the values kiln passes (memory map, e820
//! table, where the kernel, initrd and command line went, the boot vCPU's
//! registers and page tables) and the files in this repository that do
//! it. Pure text from facts the boot gathered; `Tracer` prints it.

use std::fmt::Write as _;

use boot::layout;
use kvm_bindings::{kvm_regs, kvm_sregs};

use super::decode::Decoder;

/// What phase 5 did, for its block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadFacts {
    /// Kernel file format (ELF, bzImage...).
    pub format: String,
    /// The entry protocol.
    pub protocol: &'static str,
    /// Entry point.
    pub entry: u64,
    /// First byte after the kernel.
    pub kernel_end: u64,
    /// Initrd address and size.
    pub initrd: Option<(u64, u64)>,
    /// The whole command line.
    pub cmdline: String,
    /// e820 entries: address, size, type.
    pub e820: Vec<(u64, u64, u32)>,
    /// Where the ACPI root pointer is (no ACPI: None).
    pub rsdp: Option<u64>,
    /// boot_params or hvm_start_info, and its address.
    pub info: (&'static str, u64),
}

/// A size as kiln's log writes it, and whole GiB as GiB.
fn size(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else {
        crate::config::describe_size(bytes)
    }
}

/// Phase 2.
pub fn open_kvm(caps: &[&str], repairs: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "open(\"/dev/kvm\")                       the KVM system fd"
    );
    let _ = writeln!(
        s,
        "KVM_GET_API_VERSION                    must be 12 (the stable API)"
    );
    for c in caps {
        let _ = writeln!(s, "KVM_CHECK_EXTENSION {c:<22} must be there");
    }
    let _ = writeln!(
        s,
        "nested kvm_pvm host: {}  (src/pvm/mod.rs)",
        if repairs {
            "yes, kiln repairs what it breaks"
        } else {
            "no"
        }
    );
    s
}

/// Phase 3.
pub fn create_vm(cpus: u8) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "KVM_CREATE_VM                          the VM fd");
    let _ = writeln!(
        s,
        "KVM_SET_IDENTITY_MAP_ADDR {:#x}     a page KVM needs below 4 GiB",
        layout::KVM_IDENTITY_MAP_START
    );
    let _ = writeln!(
        s,
        "KVM_SET_TSS_ADDR {:#x}              three pages for KVM's real-mode TSS",
        layout::KVM_TSS_START
    );
    let _ = writeln!(
        s,
        "KVM_CREATE_IRQCHIP                     PIC, IOAPIC ({:#x}) and local APICs ({:#x}) inside KVM",
        layout::IOAPIC_START,
        layout::APIC_START
    );
    let _ = writeln!(
        s,
        "KVM_CREATE_PIT2                        the 8254 timer inside KVM"
    );
    let _ = writeln!(
        s,
        "KVM_CREATE_VCPU x {cpus:<20} one fd per vCPU, each with its kvm_run page (mmap)"
    );
    s
}

/// Phase 4: `regions` are (guest address, size).
pub fn memory(regions: &[(u64, u64)], from_file: bool) -> String {
    let mut s = String::new();
    for (slot, (addr, len)) in regions.iter().enumerate() {
        let _ = writeln!(
            s,
            "KVM_SET_USER_MEMORY_REGION slot {slot}: guest {addr:#011x}..{:#011x} ({}) <- {}",
            addr + len,
            size(*len),
            if from_file {
                "the memory file, mmap MAP_PRIVATE"
            } else {
                "anonymous mmap"
            }
        );
    }
    let _ = writeln!(
        s,
        "no RAM in {:#x}..{:#x}: the MMIO hole (boot timer, virtio-mmio, IOAPIC, LAPIC); see boot/src/layout.rs",
        layout::MMIO_GAP_START,
        layout::MMIO_GAP_END
    );
    s
}

/// Phase 5.
pub fn load(f: &LoadFacts) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "kernel: {} ({}), entry {:#x}, ends at {:#x}   (boot/src/loader.rs)",
        f.format, f.protocol, f.entry, f.kernel_end
    );
    match f.initrd {
        Some((addr, len)) => {
            let _ = writeln!(
                s,
                "initrd: {addr:#x}, {}, below the kernel's limit",
                size(len)
            );
        }
        None => {
            let _ = writeln!(s, "initrd: none");
        }
    }
    let _ = writeln!(
        s,
        "command line at {:#x}: {}",
        layout::CMDLINE_START,
        f.cmdline
    );
    let _ = writeln!(
        s,
        "{} at {:#x}: what the kernel reads first   (boot/src/zero_page.rs)",
        f.info.0, f.info.1
    );
    let _ = writeln!(s, "e820 memory map it carries:");
    for (addr, len, kind) in &f.e820 {
        let what = match kind {
            1 => "RAM",
            2 => "reserved",
            _ => "other",
        };
        let _ = writeln!(
            s,
            "    {addr:#011x}..{:#011x}  {what:<8} {}",
            addr + len,
            size(*len)
        );
    }
    let _ = writeln!(
        s,
        "MP table (CPUs, IOAPIC, ISA interrupts) in the EBDA at {:#x}   (boot/src/mptable.rs)",
        layout::EBDA_START
    );
    match f.rsdp {
        Some(rsdp) => {
            let _ = writeln!(
                s,
                "ACPI: RSDP at {rsdp:#x}, tables (XSDT, FADT, MADT, DSDT) from {:#x}   (boot/src/acpi.rs)",
                layout::ACPI_TABLES_START
            );
        }
        None => {
            let _ = writeln!(s, "ACPI: none (--no-acpi)");
        }
    }
    s
}

/// Phase 6: every device the decoder knows, with its interrupt line.
pub fn devices(decoder: &Decoder) -> String {
    let mut s = String::new();
    for line in decoder.describe_map() {
        let _ = writeln!(s, "{line}");
    }
    let _ = writeln!(
        s,
        "each interrupt is an eventfd bound to its GSI with KVM_IRQFD: a device writes it, KVM raises the line"
    );
    let _ = writeln!(
        s,
        "each virtio queue's QueueNotify is an eventfd bound with KVM_IOEVENTFD: the guest's write wakes the event loop without an exit   (src/virtio.rs)"
    );
    s
}

/// Phase 7, every vCPU.
pub fn vcpus(cpus: u8) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "per vCPU (x{cpus}): KVM_GET_SUPPORTED_CPUID, patched (APIC ID, topology, hypervisor leaf), KVM_SET_CPUID2   (boot/src/cpuid.rs)"
    );
    let _ = writeln!(s, "KVM_SET_MSRS IA32_MISC_ENABLE = 1 (fast strings)");
    let _ = writeln!(
        s,
        "KVM_GET_LAPIC / KVM_SET_LAPIC: LINT0 = ExtINT (the PIC), LINT1 = NMI, as on a PC"
    );
    s
}

/// Phase 7, the boot vCPU: its registers as KVM now holds them.
pub fn boot_vcpu(regs: &kvm_regs, sregs: &kvm_sregs, long_mode: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "GDT at {:#x} (limit {:#x}): flat code and data segments",
        sregs.gdt.base, sregs.gdt.limit
    );
    if long_mode {
        let _ = writeln!(
            s,
            "page tables: PML4 {:#x} -> PDPT {:#x} -> PD {:#x}, 2 MiB pages identity-mapping the first {}",
            layout::PML4_START,
            layout::PDPTE_START,
            layout::PDE_START,
            size(layout::IDENTITY_MAPPED_BYTES)
        );
    }
    let _ = writeln!(
        s,
        "KVM_SET_SREGS: CR0 {:#x}  CR3 {:#x}  CR4 {:#x}  EFER {:#x}  CS {:#x} ({})",
        sregs.cr0,
        sregs.cr3,
        sregs.cr4,
        sregs.efer,
        sregs.cs.selector,
        if sregs.cs.l == 1 {
            "64-bit code"
        } else {
            "32-bit code"
        }
    );
    let _ = writeln!(
        s,
        "KVM_SET_REGS:  RIP {:#x}  RSP {:#x}  RSI {:#x}  RBX {:#x}  RFLAGS {:#x}",
        regs.rip, regs.rsp, regs.rsi, regs.rbx, regs.rflags
    );
    let _ = writeln!(
        s,
        "               (64-bit boot protocol: RSI points at boot_params; PVH: RBX at hvm_start_info)"
    );
    s
}

/// Phase 8, before the vCPUs start.
pub fn run(exits: usize, keep_running: bool) -> String {
    format!(
        "one thread per vCPU loops on KVM_RUN; each return is an exit kiln handles and answers (src/vcpu/mod.rs);\n\
         the main thread runs the event loop: console input, signals, virtio queues (src/event_loop.rs, src/virtio.rs).\n\
         The first {exits} exits follow{}.\n",
        if keep_running {
            "; then the guest runs on without trace lines"
        } else {
            ", then kiln stops the VM (--continue lets it run on)"
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_name_ioctls_values_and_files() {
        assert!(create_vm(2).contains("KVM_CREATE_VCPU x 2"));
        let m = memory(&[(0, 256 << 20)], false);
        assert!(
            m.contains("slot 0: guest 0x000000000..0x010000000 (256 MiB) <- anonymous mmap"),
            "{m}"
        );
        let f = LoadFacts {
            format: "Elf".into(),
            protocol: "64-bit entry",
            entry: 0x100000,
            kernel_end: 0x108000,
            initrd: None,
            cmdline: "console=ttyS0".into(),
            e820: vec![(0, 0x9fc00, 1), (0x9fc00, 0x400, 2)],
            rsdp: Some(0xe0000),
            info: ("boot_params", 0x7000),
        };
        let l = load(&f);
        assert!(l.contains("entry 0x100000"));
        assert!(
            l.contains("0x000000000..0x00009fc00  RAM      639 KiB"),
            "{l}"
        );
        assert!(l.contains("RSDP at 0xe0000"));
        assert!(run(5, false).contains("first 5 exits"));
    }
}
