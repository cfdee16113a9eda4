//! COM1 output: a polled 16550 UART driven from ring 3.
//!
//! Each port access is a VM exit, so instead of polling the line status
//! before every byte we use the 16550's 16-byte transmit FIFO: once the
//! "transmit holding register empty" bit (LSR bit 5) is set, the FIFO is
//! empty and takes 16 bytes in a row. That halves the exits per byte.

use core::fmt;

use crate::io::{inb, outb};

const COM1: u16 = 0x3f8;
/// Transmit holding register (write) / receive buffer (read).
const THR: u16 = COM1;
/// FIFO control register (write only).
const FCR: u16 = COM1 + 2;
/// Interrupt enable register (DLAB=0) and interrupt identification register.
pub const IER: u16 = COM1 + 1;
pub const IIR: u16 = COM1 + 2;
/// IER: interrupt when the transmit holding register is empty.
pub const IER_THR_EMPTY: u8 = 0x02;
/// Line status register.
const LSR: u16 = COM1 + 5;
const LSR_DATA_READY: u8 = 0x01;
const LSR_THR_EMPTY: u8 = 0x20;
/// FCR: enable the FIFOs and clear both of them.
const FCR_ENABLE_AND_CLEAR: u8 = 0x07;
const FIFO_SIZE: usize = 16;

/// Sets the UART up for [`Com1`]. kiln's UART needs no baud rate or line
/// settings (there is no wire), so only the FIFOs are switched on.
pub fn init() {
    // SAFETY: COM1 ports are allowed by the TSS bitmap.
    unsafe { outb(FCR, FCR_ENABLE_AND_CLEAR) };
}

/// Reads one byte of console input, or `None` once `deadline` passed.
pub fn read_byte(deadline: crate::time::Deadline) -> Option<u8> {
    loop {
        // SAFETY: COM1 ports are allowed by the TSS bitmap; reading THR/RBR
        // only consumes the byte we are waiting for.
        unsafe {
            if inb(LSR) & LSR_DATA_READY != 0 {
                return Some(inb(THR));
            }
        }
        if deadline.passed() {
            return None;
        }
        core::hint::spin_loop();
    }
}

/// The serial console. Zero-sized: every `Com1` writes to the same UART,
/// and the agent has a single thread, so no locking is needed.
pub struct Com1;

impl Com1 {
    /// Writes raw bytes, waiting for an empty FIFO before each 16.
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(FIFO_SIZE) {
            // SAFETY: COM1 ports are allowed by the TSS bitmap.
            unsafe {
                while inb(LSR) & LSR_THR_EMPTY == 0 {
                    core::hint::spin_loop();
                }
                for &b in chunk {
                    outb(THR, b);
                }
            }
        }
    }
}

impl fmt::Write for Com1 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write_bytes(s.as_bytes());
        Ok(())
    }
}

/// `print!` for the agent: formats straight to COM1.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        // Com1 never fails; a formatting error would only come from a
        // Display impl, and there is nobody to report it to anyway.
        let _ = write!($crate::serial::Com1, $($arg)*);
    }};
}

/// `println!` for the agent: like `print!` plus a "\n" (no "\r").
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::serial::Com1, $($arg)*);
    }};
}
