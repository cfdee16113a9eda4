//! What a port or MMIO access means: which device sits at the address, which
//! of its registers, and what the value says (`COM1 THR <- 'h'`,
//! `i8042 cmd <- 0xfe (reset)`, `virtio-mmio@0xd0000000 (blk vda) Status
//! <- ACKNOWLEDGE|DRIVER`). Pure: built from the machine's layout, unit
//! tested with made-up accesses.

use boot::layout;

/// The kind of a virtio device, for queue names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtioKind {
    /// virtio-blk.
    Block,
    /// virtio-net.
    Net,
    /// virtio-vsock.
    Vsock,
}

impl VirtioKind {
    fn short(self) -> &'static str {
        match self {
            VirtioKind::Block => "blk",
            VirtioKind::Net => "net",
            VirtioKind::Vsock => "vsock",
        }
    }

    /// The spec's name of queue `index`.
    fn queue(self, index: u64) -> &'static str {
        match (self, index) {
            (VirtioKind::Block, 0) => "requestq",
            (VirtioKind::Net, 0) => "receiveq",
            (VirtioKind::Net, 1) => "transmitq",
            (VirtioKind::Vsock, 0) => "rx",
            (VirtioKind::Vsock, 1) => "tx",
            (VirtioKind::Vsock, 2) => "event",
            _ => "no such queue",
        }
    }
}

/// A device the trace knows by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    /// The 8250 UART.
    Com1,
    /// The PS/2 controller.
    I8042,
    /// The CMOS RTC.
    Cmos,
    /// pvpanic.
    PvPanic,
    /// ACPI power registers.
    AcpiPm,
    /// kiln's boot-time marker.
    BootTimer,
    /// A virtio-mmio transport: its kind and what it is (vda, eth0 tap...).
    Virtio {
        /// Its kind.
        kind: VirtioKind,
        /// Base of its window.
        base: u64,
        /// Its interrupt line.
        irq: u32,
        /// What it is, for people.
        label: String,
    },
}

impl Device {
    /// The device for people: `COM1`, `virtio-mmio@0xd0000000 (vda)`.
    pub fn describe(&self) -> String {
        match self {
            Device::Virtio { base, label, .. } => format!("virtio-mmio@{base:#x} ({label})"),
            other => other.name().to_string(),
        }
    }

    /// Where its model lives in the repository.
    pub fn file(&self) -> &'static str {
        match self {
            Device::Com1 => "devices/src/serial.rs",
            Device::I8042 => "devices/src/i8042.rs",
            Device::Cmos => "devices/src/cmos.rs",
            Device::PvPanic => "devices/src/pvpanic.rs",
            Device::AcpiPm => "devices/src/acpi_pm.rs",
            Device::BootTimer => "devices/src/boot_timer.rs",
            Device::Virtio { kind, .. } => match kind {
                VirtioKind::Block => "devices/src/virtio/block/",
                VirtioKind::Net => "devices/src/virtio/net/",
                VirtioKind::Vsock => "devices/src/virtio/vsock/",
            },
        }
    }

    /// The name FILTER terms and the summary table use.
    pub fn name(&self) -> &'static str {
        match self {
            Device::Com1 => "com1",
            Device::I8042 => "i8042",
            Device::Cmos => "cmos",
            Device::PvPanic => "pvpanic",
            Device::AcpiPm => "acpi-pm",
            Device::BootTimer => "boot-timer",
            Device::Virtio { kind, .. } => kind.short(),
        }
    }
}

/// Every device name a FILTER may use, besides "virtio" and "unclaimed".
pub const DEVICE_NAMES: [&str; 9] = [
    "com1",
    "i8042",
    "cmos",
    "pvpanic",
    "acpi-pm",
    "boot-timer",
    "blk",
    "net",
    "vsock",
];

/// Port I/O or MMIO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// The port-I/O bus.
    Pio,
    /// The MMIO bus.
    Mmio,
}

struct Region {
    space: Space,
    base: u64,
    len: u64,
    device: Device,
}

/// The machine's address map, as the trace sees it.
pub struct Decoder {
    regions: Vec<Region>,
}

/// One decoded access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The device, or None when nothing is there.
    pub device: Option<Device>,
    /// What it means.
    pub text: String,
}

impl Decoder {
    /// The fixed devices, plus the virtio devices in slot order: `virtio`
    /// holds each one's kind and label.
    pub fn new(virtio: &[(VirtioKind, String)], acpi: bool) -> Decoder {
        use layout::ports;
        let mut regions = vec![
            region(Space::Pio, ports::COM1, ports::COM1_LEN, Device::Com1),
            region(
                Space::Pio,
                ports::I8042_DATA,
                ports::I8042_LEN,
                Device::I8042,
            ),
            region(Space::Pio, ports::CMOS, ports::CMOS_LEN, Device::Cmos),
            region(
                Space::Pio,
                ports::PVPANIC,
                ports::PVPANIC_LEN,
                Device::PvPanic,
            ),
            Region {
                space: Space::Mmio,
                base: layout::BOOT_TIMER_START,
                len: layout::BOOT_TIMER_SIZE,
                device: Device::BootTimer,
            },
        ];
        if acpi {
            regions.push(region(
                Space::Pio,
                ports::ACPI_PM,
                ports::ACPI_PM_LEN,
                Device::AcpiPm,
            ));
        }
        // The slots the VM gives its devices (one past the last line is
        // refused when the VM is built; the trace just leaves it out).
        for (i, (kind, label)) in virtio.iter().enumerate() {
            let Ok(slot) = crate::virtio::Slot::for_index(i) else {
                break;
            };
            regions.push(Region {
                space: Space::Mmio,
                base: slot.base,
                len: slot.size,
                device: Device::Virtio {
                    kind: *kind,
                    base: slot.base,
                    irq: slot.irq,
                    label: label.clone(),
                },
            });
        }
        Decoder { regions }
    }

    fn region(&self, space: Space, addr: u64) -> Option<&Region> {
        self.regions
            .iter()
            .find(|r| r.space == space && addr >= r.base && addr - r.base < r.len)
    }

    /// The device at `addr`, without decoding the access (what the
    /// trace's table and filter need for every exit).
    pub fn device(&self, space: Space, addr: u64) -> Option<&Device> {
        self.region(space, addr).map(|r| &r.device)
    }

    /// One line per device: where it sits, its interrupt, its model.
    pub fn describe_map(&self) -> Vec<String> {
        self.regions
            .iter()
            .map(|r| {
                let place = match r.space {
                    Space::Pio => format!("ports {:#x}..{:#x}", r.base, r.base + r.len),
                    Space::Mmio => format!("MMIO {:#x}..{:#x}", r.base, r.base + r.len),
                };
                let irq = match &r.device {
                    Device::Com1 => format!("IRQ {}", layout::ports::COM1_IRQ),
                    Device::I8042 => format!("IRQ {}", layout::ports::I8042_IRQ),
                    Device::Virtio { irq, .. } => format!("IRQ {irq}"),
                    _ => "no IRQ".into(),
                };
                let model = match &r.device {
                    Device::Virtio { .. } => {
                        format!("{} + devices/src/virtio/mmio.rs", r.device.file())
                    }
                    d => d.file().to_string(),
                };
                format!("{:<40} {place:<26} {irq:<7} ({model})", r.device.describe())
            })
            .collect()
    }

    /// What a `write` (or read) of `data` at `addr` means.
    pub fn decode(&self, space: Space, addr: u64, write: bool, data: &[u8]) -> Decoded {
        let arrow = if write { "<-" } else { "->" };
        let value = le_value(data);
        let Some(r) = self.region(space, addr) else {
            let what = if write {
                "nothing here: the write is dropped"
            } else {
                "nothing here: reads all ones"
            };
            let known = match space {
                Space::Pio => absent_port(addr),
                Space::Mmio => kvm_mmio(addr),
            }
            .map(|n| format!("{n}; "));
            return Decoded {
                device: None,
                text: format!(
                    "unclaimed {arrow} {value:#x} ({}{what})",
                    known.unwrap_or_default()
                ),
            };
        };
        let offset = addr - r.base;
        let byte = data.first().copied().unwrap_or(0);
        let text = match &r.device {
            Device::Com1 => format!("COM1 {}", uart(offset, write, byte)),
            Device::I8042 => format!("i8042 {}", devices::i8042::describe(offset, write, byte)),
            Device::Cmos => match (offset, write) {
                (0, true) => format!("CMOS index <- {:#04x}{}", byte & 0x7f, cmos_name(byte)),
                (0, false) => format!("CMOS index -> {byte:#04x}"),
                (_, true) => format!("CMOS data <- {byte:#04x}"),
                (_, false) => format!("CMOS data -> {byte:#04x}"),
            },
            Device::PvPanic => match write {
                true => format!("pvpanic <- {byte:#04x} (the guest kernel panicked)"),
                false => format!("pvpanic -> {byte:#04x} (events offered)"),
            },
            Device::AcpiPm => {
                let reg = match offset {
                    0 => "sleep control",
                    1 => "sleep status",
                    _ => "reset",
                };
                format!("ACPI PM {reg} {arrow} {byte:#04x}")
            }
            Device::BootTimer => {
                let what = if write && byte == devices::boot_timer::MAGIC_VALUE {
                    " (the guest says: booted)"
                } else {
                    ""
                };
                format!("boot-timer {arrow} {value}{what}")
            }
            Device::Virtio {
                kind, base, label, ..
            } => {
                let reg = devices::virtio::mmio::register_name(offset);
                let meaning = match reg {
                    "QueueNotify" if write => {
                        format!(" ({} {})", kind.short(), kind.queue(value))
                    }
                    "Status" => format!(" ({})", devices::virtio::mmio::status_names(value as u32)),
                    _ => String::new(),
                };
                let config = if reg == "Config" {
                    format!("+{:#x}", offset - 0x100)
                } else {
                    String::new()
                };
                format!("virtio-mmio@{base:#x} ({label}) {reg}{config} {arrow} {value:#x}{meaning}")
            }
        };
        Decoded {
            device: Some(r.device.clone()),
            text,
        }
    }
}

/// The interrupt controllers KVM emulates itself (KVM_CREATE_IRQCHIP):
/// their accesses never reach kiln, so a trace shows none; should one
/// arrive, this says why it is odd.
fn kvm_mmio(addr: u64) -> Option<&'static str> {
    let inside = |base: u64| (base..base + 0x1000).contains(&addr);
    if inside(layout::IOAPIC_START) {
        Some("IOAPIC: emulated inside KVM, its accesses do not exit")
    } else if inside(layout::APIC_START) {
        Some("local APIC: emulated inside KVM, its accesses do not exit")
    } else {
        None
    }
}

/// What a PC has at a port kiln leaves empty (guests probe them).
fn absent_port(port: u64) -> Option<&'static str> {
    Some(match port {
        0xcf8..=0xcfb => "PCI CONFIG_ADDRESS, no PCI bus",
        0xcfc..=0xcff => "PCI CONFIG_DATA, no PCI bus",
        0x80 => "POST code port",
        0x2f8..=0x2ff => "COM2",
        0x3e8..=0x3ef => "COM3",
        0x2e8..=0x2ef => "COM4",
        0x3c0..=0x3df => "VGA",
        0x1f0..=0x1f7 | 0x170..=0x177 => "IDE",
        0x378..=0x37f => "parallel port",
        _ => return None,
    })
}

fn region(space: Space, base: u16, len: u16, device: Device) -> Region {
    Region {
        space,
        base: base.into(),
        len: len.into(),
        device,
    }
}

/// Up to 8 bytes, little-endian.
fn le_value(data: &[u8]) -> u64 {
    data.iter()
        .take(8)
        .rev()
        .fold(0, |acc, &b| (acc << 8) | u64::from(b))
}

/// An 8250 register access. The divisor latch (LCR.DLAB) shares offsets 0
/// and 1 with THR/RBR and IER; the trace names the usual meaning.
fn uart(offset: u64, write: bool, byte: u8) -> String {
    match (offset, write) {
        (0, true) => format!("THR <- {} (send a byte)", printable(byte)),
        (0, false) => format!("RBR -> {} (receive a byte)", printable(byte)),
        (1, _) => format!("IER {} {byte:#04x}", if write { "<-" } else { "->" }),
        (2, true) => format!("FCR <- {byte:#04x}"),
        (2, false) => format!("IIR -> {byte:#04x}"),
        (3, _) => format!("LCR {} {byte:#04x}", if write { "<-" } else { "->" }),
        (4, _) => format!("MCR {} {byte:#04x}", if write { "<-" } else { "->" }),
        (5, false) => {
            let mut bits = Vec::new();
            if byte & 0x01 != 0 {
                bits.push("data ready");
            }
            if byte & 0x20 != 0 {
                bits.push("THR empty");
            }
            format!("LSR -> {byte:#04x} ({})", bits.join(", "))
        }
        (5, true) => format!("LSR <- {byte:#04x}"),
        (6, _) => format!("MSR {} {byte:#04x}", if write { "<-" } else { "->" }),
        (_, _) => format!("SCR {} {byte:#04x}", if write { "<-" } else { "->" }),
    }
}

/// A byte as a character literal when it is one.
fn printable(b: u8) -> String {
    match b {
        b'\n' => "'\\n'".into(),
        b'\r' => "'\\r'".into(),
        b'\t' => "'\\t'".into(),
        0x20..=0x7e => format!("'{}'", b as char),
        _ => format!("{b:#04x}"),
    }
}

/// The name of a CMOS register (bit 7 of the index is NMI-disable).
fn cmos_name(index: u8) -> &'static str {
    match index & 0x7f {
        0x00 => " (seconds)",
        0x02 => " (minutes)",
        0x04 => " (hours)",
        0x07 => " (day of month)",
        0x08 => " (month)",
        0x09 => " (year)",
        0x0a => " (status A)",
        0x0b => " (status B)",
        0x0c => " (status C)",
        0x0d => " (status D)",
        0x32 => " (century)",
        0x34 | 0x35 => " (memory above 16 MiB)",
        0x5b..=0x5d => " (memory above 4 GiB)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder() -> Decoder {
        Decoder::new(
            &[
                (VirtioKind::Block, "vda".into()),
                (VirtioKind::Net, "eth0 on tap0".into()),
            ],
            true,
        )
    }

    #[test]
    fn ports_name_their_device_and_register() {
        let d = decoder();
        let t = d.decode(Space::Pio, 0x3f8, true, b"h");
        assert_eq!(t.device, Some(Device::Com1));
        assert_eq!(t.text, "COM1 THR <- 'h' (send a byte)");
        assert_eq!(
            d.decode(Space::Pio, 0x3fd, false, &[0x60]).text,
            "COM1 LSR -> 0x60 (THR empty)"
        );
        assert_eq!(
            d.decode(Space::Pio, 0x64, true, &[0xfe]).text,
            "i8042 cmd <- 0xfe (reset)"
        );
        assert_eq!(
            d.decode(Space::Pio, 0x70, true, &[0x8a]).text,
            "CMOS index <- 0x0a (status A)"
        );
        let u = d.decode(Space::Pio, 0x510, false, &[0xff]);
        assert_eq!(u.device, None);
        assert!(u.text.starts_with("unclaimed -> 0xff"), "{}", u.text);
        assert!(d
            .decode(Space::Mmio, 0xfec0_0010, true, &[1, 0, 0, 0])
            .text
            .contains("IOAPIC: emulated inside KVM"));
        assert_eq!(
            d.decode(Space::Pio, 0xcf8, true, &[0, 0x10, 0, 0x80]).text,
            "unclaimed <- 0x80001000 (PCI CONFIG_ADDRESS, no PCI bus; nothing here: the write is dropped)"
        );
    }

    #[test]
    fn mmio_names_virtio_registers_and_queues() {
        let d = decoder();
        let t = d.decode(Space::Mmio, 0xd000_0050, true, &[0, 0, 0, 0]);
        assert_eq!(
            t.text,
            "virtio-mmio@0xd0000000 (vda) QueueNotify <- 0x0 (blk requestq)"
        );
        assert_eq!(t.device.unwrap().name(), "blk");
        let t = d.decode(Space::Mmio, 0xd000_1070, true, &[3, 0, 0, 0]);
        assert_eq!(
            t.text,
            "virtio-mmio@0xd0001000 (eth0 on tap0) Status <- 0x3 (ACKNOWLEDGE|DRIVER)"
        );
        let t = d.decode(Space::Mmio, 0xd000_1108, false, &[1]);
        assert!(t.text.contains("Config+0x8 -> 0x1"), "{}", t.text);
        let t = d.decode(Space::Mmio, 0xc000_0000, true, &[123]);
        assert_eq!(t.text, "boot-timer <- 123 (the guest says: booted)");
        // The third slot is empty.
        assert_eq!(
            d.decode(Space::Mmio, 0xd000_2000, false, &[0; 4]).device,
            None
        );
    }

    #[test]
    fn the_map_names_places_interrupts_and_files() {
        let map = decoder().describe_map();
        assert!(
            map[0].starts_with("com1")
                && map[0].contains("ports 0x3f8..0x400")
                && map[0].contains("IRQ 4"),
            "{map:?}"
        );
        let net = map.iter().find(|l| l.contains("eth0")).unwrap();
        assert!(
            net.contains("MMIO 0xd0001000..0xd0002000") && net.contains("IRQ 6"),
            "{net}"
        );
        assert!(
            net.contains("(devices/src/virtio/net/ + devices/src/virtio/mmio.rs)"),
            "{net}"
        );
    }

    #[test]
    fn no_acpi_no_power_registers() {
        let d = Decoder::new(&[], false);
        assert_eq!(d.decode(Space::Pio, 0x600, true, &[0x34]).device, None);
        assert_eq!(
            decoder().decode(Space::Pio, 0x600, true, &[0x34]).text,
            "ACPI PM sleep control <- 0x34"
        );
    }
}
