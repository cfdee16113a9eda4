//! `irq[:N]` and `irq:com1`: prove that the VMM's interrupt path reaches
//! the guest. The check programs the IOAPIC redirection entry of the
//! device's pin to IRQ_VECTOR (edge, fixed delivery, physical destination
//! = this CPU's LAPIC), software-enables the LAPIC, makes the device
//! interrupt, and watches the counter that the ring-0 handler in boot.S
//! increments (it also signals end-of-interrupt to the LAPIC). Ring 3 runs
//! with IF=1 (boot.S), so the interrupt arrives while this code spins.
//!
//! - `irq` / `irq:N`: virtio-blk disk N (default 0): three reads, each
//!   must be followed by at least one interrupt on the disk's pin before
//!   the driver takes the completion, and the device's interrupt status
//!   must say "used buffer" before we ack it.
//! - `irq:com1`: the UART's transmitter-empty interrupt on pin 4, three
//!   times (set IER, see the interrupt, read IIR, clear IER). Needs no
//!   virtio device, so it also runs on a VMM without disks.
//!
//! The IOAPIC entry is masked again at the end, whatever happened.

use virtio_drivers::device::blk::{BlkReq, BlkResp, SECTOR_SIZE};
use virtio_drivers::transport::InterruptStatus;

use crate::checks::CheckResult;
use crate::tests::Context;
use crate::time::Clock;
use crate::{ensure, fail, io, println, serial, virtio};

/// The vector boot.S routes to its counting handler (IRQ_VECTOR there).
const IRQ_VECTOR: u32 = 0x30;
/// The LAPIC's spurious vector (SPURIOUS_VECTOR in boot.S).
const SPURIOUS_VECTOR: u32 = 0x3f;
/// The IOAPIC (pins 0-23) and, on QEMU microvm with `ioapic2`, a second
/// one for pins 24-47.
const IOAPIC: usize = 0xfec0_0000;
const IOAPIC2: usize = 0xfec1_0000;
const IOAPIC_PINS: u32 = 24;
const IOREGSEL: usize = 0x00;
const IOWIN: usize = 0x10;
const IOAPIC_VER: u32 = 0x01;
const IOREDTBL: u32 = 0x10;
const REDIR_MASKED: u32 = 1 << 16;
/// The local APIC (xAPIC mode, the reset default).
const LAPIC: usize = 0xfee0_0000;
const LAPIC_ID: usize = 0x20;
const LAPIC_SVR: usize = 0xf0;
const SVR_ENABLE: u32 = 1 << 8;
/// The UART's interrupt line.
const COM1_GSI: u32 = 4;
/// Rounds per check, and how long to wait for each interrupt.
const ROUNDS: u32 = 3;
const WAIT_MS: u64 = 2_000;

extern "C" {
    /// Incremented by boot.S's IRQ_VECTOR handler.
    static agent_irq_count: u64;
}

/// Interrupts seen so far.
fn count() -> u64 {
    // SAFETY: a u64 in .bss that only the ring-0 handler writes; a
    // volatile read sees its updates.
    unsafe { core::ptr::addr_of!(agent_irq_count).read_volatile() }
}

/// Waits until the count exceeds `before`; returns the new count.
fn wait_above(before: u64, clock: &Clock) -> Option<u64> {
    let deadline = clock.deadline(WAIT_MS);
    loop {
        let now = count();
        if now > before {
            return Some(now);
        }
        if deadline.passed() {
            return None;
        }
        core::hint::spin_loop();
    }
}

fn mmio_read(addr: usize) -> u32 {
    // SAFETY: APIC registers in the identity map (3-4 GiB, uncached).
    unsafe { io::mmio_read32(addr) }
}

fn mmio_write(addr: usize, value: u32) {
    // SAFETY: as for mmio_read.
    unsafe { io::mmio_write32(addr, value) }
}

/// An IOAPIC pin routed to IRQ_VECTOR; masked again when dropped.
struct Route {
    ioapic: usize,
    pin: u32,
}

impl Route {
    fn read(&self, reg: u32) -> u32 {
        mmio_write(self.ioapic + IOREGSEL, reg);
        mmio_read(self.ioapic + IOWIN)
    }

    fn write(&self, reg: u32, value: u32) {
        mmio_write(self.ioapic + IOREGSEL, reg);
        mmio_write(self.ioapic + IOWIN, value);
    }

    /// Enables the LAPIC and routes `gsi` to IRQ_VECTOR on it.
    fn new(gsi: u32) -> Result<Route, crate::checks::Fail> {
        let (ioapic, pin) = if gsi < IOAPIC_PINS {
            (IOAPIC, gsi)
        } else {
            (IOAPIC2, gsi - IOAPIC_PINS)
        };
        let route = Route { ioapic, pin };
        let max = (route.read(IOAPIC_VER) >> 16) & 0xff;
        ensure!(
            pin <= max && max != 0xff,
            "GSI {gsi}: the IOAPIC at {ioapic:#x} has pins 0-{max}"
        );
        let svr = mmio_read(LAPIC + LAPIC_SVR);
        mmio_write(LAPIC + LAPIC_SVR, SVR_ENABLE | SPURIOUS_VECTOR);
        let apic_id = mmio_read(LAPIC + LAPIC_ID) >> 24;
        // High half first (destination), then the low half unmasks: edge
        // triggered, active high, fixed delivery, physical destination.
        route.write(IOREDTBL + 2 * pin + 1, apic_id << 24);
        route.write(IOREDTBL + 2 * pin, IRQ_VECTOR);
        println!(
            "AGENT: irq: GSI {gsi} = IOAPIC {ioapic:#x} pin {pin} -> vector {IRQ_VECTOR:#x}, \
             LAPIC id {apic_id} (SVR was {svr:#x})"
        );
        Ok(route)
    }
}

impl Drop for Route {
    fn drop(&mut self) {
        self.write(IOREDTBL + 2 * self.pin, REDIR_MASKED | IRQ_VECTOR);
    }
}

/// `irq[:N]` or `irq:com1`.
pub fn irq(ctx: &Context) -> CheckResult {
    if ctx.arg == Some("com1") {
        com1(ctx)
    } else {
        disk(ctx)
    }
}

fn disk(ctx: &Context) -> CheckResult {
    let clock = Clock::new(ctx.cmdline);
    // Declared before the disk, so that they outlive it: dropping the
    // disk resets the device, which then stops using them.
    let (mut req, mut resp) = (BlkReq::default(), BlkResp::default());
    let mut buf = [0u8; SECTOR_SIZE];
    let mut disk = virtio::open_disk(ctx)?;
    let Some(gsi) = disk.dev.gsi else {
        fail!(
            "disk {}: its interrupt line is unknown (no virtio_mmio.device= entry for {:#x})",
            disk.index,
            disk.dev.base
        );
    };
    disk.blk.enable_interrupts();
    let route = Route::new(gsi)?;
    let start = count();
    for round in 0..ROUNDS {
        let before = count();
        // Submit, wait for the interrupt, only then take the completion:
        // with VIRTIO_F_EVENT_IDX, virtio-drivers moves used_event past
        // every completion it takes, and a device that sees that before it
        // decides may rightly skip the interrupt for a completion the
        // driver has already consumed.
        // SAFETY: req, buf and resp stay in place and untouched until the
        // completion below, or until the device is reset (dropping disk).
        let token = match unsafe { disk.blk.read_blocks_nb(0, &mut req, &mut buf, &mut resp) } {
            Ok(t) => t,
            Err(e) => fail!("round {round}: submitting a read: {e}"),
        };
        let Some(after) = wait_above(before, &clock) else {
            fail!(
                "round {round}: no interrupt within {WAIT_MS} ms of a read (completed: {}, \
                 interrupt status {:#x})",
                disk.blk.peek_used().is_some(),
                disk.dev.read(virtio::reg::INTERRUPT_STATUS)
            );
        };
        let deadline = clock.deadline(WAIT_MS);
        while disk.blk.peek_used() != Some(token) {
            ensure!(
                !deadline.passed(),
                "round {round}: an interrupt but no completion within {WAIT_MS} ms"
            );
            core::hint::spin_loop();
        }
        // SAFETY: the buffers submitted with this token.
        if let Err(e) = unsafe {
            disk.blk
                .complete_read_blocks(token, &req, &mut buf, &mut resp)
        } {
            fail!("round {round}: read: {e}");
        }
        let isr = disk.blk.ack_interrupt();
        ensure!(
            isr.contains(InterruptStatus::QUEUE_INTERRUPT),
            "round {round}: {} interrupt(s) but interrupt status {:#x}",
            after - before,
            isr.bits()
        );
    }
    drop(route);
    println!(
        "AGENT: irq: disk {}: {ROUNDS} reads, {} interrupt(s)",
        disk.index,
        count() - start
    );
    disk.close(&clock)
}

fn com1(ctx: &Context) -> CheckResult {
    let clock = Clock::new(ctx.cmdline);
    let route = Route::new(COM1_GSI)?;
    let start = count();
    let mut result = Ok(());
    for round in 0..ROUNDS {
        let before = count();
        // SAFETY: COM1 ports are allowed by the TSS bitmap. Enabling the
        // transmitter-empty interrupt with the transmitter empty raises it
        // at once; nothing is printed until IER is cleared again.
        unsafe { io::outb(serial::IER, serial::IER_THR_EMPTY) };
        let seen = wait_above(before, &clock);
        // SAFETY: as above; reading IIR acknowledges the interrupt.
        let iir = unsafe {
            let iir = io::inb(serial::IIR);
            io::outb(serial::IER, 0);
            iir
        };
        if seen.is_none() {
            result = Err(crate::checks::Fail::new(format_args!(
                "round {round}: no interrupt within {WAIT_MS} ms of enabling it (IIR {iir:#x})"
            )));
            break;
        }
    }
    drop(route);
    println!(
        "AGENT: irq: com1: {ROUNDS} rounds, {} interrupt(s)",
        count() - start
    );
    result
}
