//! Device access from ring 3. There is no kernel and no system call: the
//! agent talks to devices directly.
//!
//! - Port I/O works only for the ports the TSS I/O bitmap allows (COM1
//!   0x3f8-0x3ff and the i8042 0x60-0x64, see src/boot.S); any other port
//!   raises #GP, which the ring-0 handler reports as a fault line.
//! - MMIO works at any identity-mapped address below 4 GiB. Every access to
//!   a device is a VM exit (~58 us on a nested kvm_pvm host), so keep them few.

use core::arch::asm;

/// Reads a byte from an I/O port.
///
/// # Safety
/// The port must be allowed by the TSS bitmap, and reading it must have no
/// side effect that breaks the device's user.
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // No `nomem`: the asm also acts as a compiler barrier, so device
    // accesses stay in program order with memory accesses.
    asm!("in al, dx", out("al") value, in("dx") port, options(nostack, preserves_flags));
    value
}

/// Writes a byte to an I/O port.
///
/// # Safety
/// As for [`inb`].
pub unsafe fn outb(port: u16, value: u8) {
    asm!("out dx, al", in("dx") port, in("al") value, options(nostack, preserves_flags));
}

/// Reads a 32-bit device register.
///
/// # Safety
/// `addr` must be 4-byte aligned and identity mapped (anything below 4 GiB).
pub unsafe fn mmio_read32(addr: usize) -> u32 {
    // Volatile: the compiler must do exactly this one 4-byte load.
    core::ptr::read_volatile(addr as *const u32)
}

/// Writes a 32-bit device register.
///
/// # Safety
/// As for [`mmio_read32`].
pub unsafe fn mmio_write32(addr: usize, value: u32) {
    core::ptr::write_volatile(addr as *mut u32, value);
}

/// Writes an 8-bit device register.
///
/// # Safety
/// As for [`mmio_read32`].
pub unsafe fn mmio_write8(addr: usize, value: u8) {
    core::ptr::write_volatile(addr as *mut u8, value);
}

/// i8042 command port and its "pulse the CPU reset line" command.
const I8042_CMD: u16 = 0x64;
const I8042_RESET: u8 = 0xfe;
/// QEMU's `isa-debug-exit` device (`-device isa-debug-exit,iobase=0xf4`):
/// QEMU microvm has no i8042, so this is how the agent ends a QEMU run
/// (QEMU then exits with status (value << 1) | 1, i.e. 1 here).
const DEBUG_EXIT: u16 = 0xf4;

/// Resets the machine; kiln then exits with status 0.
pub fn reset() -> ! {
    // SAFETY: 0x64 and 0xf4 are allowed by the TSS bitmap; ending the VM
    // is the point.
    unsafe {
        outb(I8042_CMD, I8042_RESET);
        outb(DEBUG_EXIT, 0);
    }
    // kiln stops the vCPU at the first write above, QEMU (with a debug
    // exit device) at the second. HLT is not allowed at ring 3 (it would
    // #GP), so just spin if a VMM ever lets us get here.
    loop {
        core::hint::spin_loop();
    }
}

/// The current privilege level: the low two bits of CS.
pub fn cpl() -> u16 {
    let cs: u16;
    // SAFETY: reading CS has no side effects.
    unsafe { asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
    cs & 3
}

/// RFLAGS, to check IF and IOPL.
pub fn rflags() -> u64 {
    let flags: u64;
    // SAFETY: pushfq/pop only touch the stack slot they use.
    unsafe { asm!("pushfq", "pop {0}", out(reg) flags, options(nomem, preserves_flags)) };
    flags
}
