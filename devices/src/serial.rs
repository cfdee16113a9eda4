//! The COM1 console: a 16550A-compatible UART from vm-superio, placed on the
//! port-I/O bus. Output goes to any writer (stdout, a file, nowhere); input
//! bytes from the host are queued and fed to the UART's receive FIFO as the
//! guest drains it, so nothing typed is lost when the FIFO is full.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial as Uart, Trigger};

use crate::bus::BusDevice;
use crate::Interrupt;

/// Receive buffer register offset: the guest reads input here.
const DATA_OFFSET: u8 = 0;

/// Adapts an [`Interrupt`] to vm-superio's trigger trait.
pub struct IrqTrigger(pub Arc<dyn Interrupt>);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.trigger()
    }
}

/// The UART's registers and its receive FIFO, with the host input not yet
/// in the FIFO: what a snapshot keeps of the console.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot {
    /// Divisor latch, low and high byte.
    pub baud_divisor: [u8; 2],
    /// IER.
    pub interrupt_enable: u8,
    /// IIR.
    pub interrupt_identification: u8,
    /// LCR.
    pub line_control: u8,
    /// LSR.
    pub line_status: u8,
    /// MCR.
    pub modem_control: u8,
    /// MSR.
    pub modem_status: u8,
    /// SCR.
    pub scratch: u8,
    /// The receive FIFO.
    pub fifo: Vec<u8>,
    /// Host input waiting for room in the FIFO.
    pub pending: Vec<u8>,
}

/// The UART with its pending host input.
pub struct Serial {
    uart: Uart<IrqTrigger, NoEvents, Box<dyn Write + Send>>,
    pending: VecDeque<u8>,
}

impl Serial {
    /// A UART that writes guest output to `out` and raises `irq`.
    pub fn new(irq: Arc<dyn Interrupt>, out: Box<dyn Write + Send>) -> Self {
        Serial {
            uart: Uart::new(IrqTrigger(irq), out),
            pending: VecDeque::new(),
        }
    }

    /// The console's state, for a snapshot.
    pub fn save(&self) -> SerialSnapshot {
        let s = self.uart.state();
        SerialSnapshot {
            baud_divisor: [s.baud_divisor_low, s.baud_divisor_high],
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            fifo: s.in_buffer,
            pending: self.pending.iter().copied().collect(),
        }
    }

    /// A UART in the state `snap` was saved in, writing to `out`.
    pub fn restore(
        irq: Arc<dyn Interrupt>,
        out: Box<dyn Write + Send>,
        snap: &SerialSnapshot,
    ) -> Result<Self, String> {
        let state = SerialState {
            baud_divisor_low: snap.baud_divisor[0],
            baud_divisor_high: snap.baud_divisor[1],
            interrupt_enable: snap.interrupt_enable,
            interrupt_identification: snap.interrupt_identification,
            line_control: snap.line_control,
            line_status: snap.line_status,
            modem_control: snap.modem_control,
            modem_status: snap.modem_status,
            scratch: snap.scratch,
            in_buffer: snap.fifo.clone(),
        };
        let uart = Uart::from_state(&state, IrqTrigger(irq), NoEvents, out)
            .map_err(|e| format!("the saved serial port is not valid: {e:?}"))?;
        Ok(Serial {
            uart,
            pending: snap.pending.iter().copied().collect(),
        })
    }

    /// Queues host input for the guest.
    pub fn queue_input(&mut self, bytes: &[u8]) {
        self.pending.extend(bytes);
        self.feed();
    }

    /// Bytes still waiting for room in the receive FIFO.
    pub fn pending_input(&self) -> usize {
        self.pending.len()
    }

    fn feed(&mut self) {
        let room = self.uart.fifo_capacity().min(self.pending.len());
        if room == 0 {
            return;
        }
        let chunk: Vec<u8> = self.pending.drain(..room).collect();
        if let Err(e) = self.uart.enqueue_raw_bytes(&chunk) {
            log::warn!("serial: cannot queue input: {e:?}");
        }
    }

    /// Flushes guest output.
    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 {
            data.fill(0xff);
            return;
        }
        data[0] = self.uart.read(offset as u8);
        if offset as u8 == DATA_OFFSET && !self.pending.is_empty() {
            self.feed();
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 {
            return;
        }
        if let Err(e) = self.uart.write(offset as u8, data[0]) {
            log::warn!("serial: write failed: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use crate::CountingInterrupt as Count;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_reaches_the_writer() {
        let out = Shared::default();
        let mut s = Serial::new(Arc::new(Count::default()), Box::new(out.clone()));
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
    }

    #[test]
    fn a_restored_uart_continues_where_the_saved_one_was() {
        let mut s = Serial::new(Arc::new(Count::default()), Box::new(std::io::sink()));
        s.write(1, &[0x01]); // IER: received-data interrupt
        s.write(7, &[0x5a]); // scratch
        let input: Vec<u8> = (0..100u8).collect();
        s.queue_input(&input);
        let snap = s.save();
        assert_eq!(snap.scratch, 0x5a);
        assert_eq!(snap.fifo.len() + snap.pending.len(), 100);
        let out = Shared::default();
        let mut r =
            Serial::restore(Arc::new(Count::default()), Box::new(out.clone()), &snap).unwrap();
        assert_eq!(r.save(), snap);
        let mut got = Vec::new();
        let mut b = [0u8];
        for _ in 0..200 {
            r.read(5, &mut b);
            if b[0] & 1 == 0 {
                break;
            }
            r.read(0, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, input, "FIFO and pending input survive");
        r.write(0, b"x");
        assert_eq!(&*out.0.lock().unwrap(), b"x");
        let mut bad = snap.clone();
        bad.fifo = vec![0; 1000];
        assert!(
            Serial::restore(Arc::new(Count::default()), Box::new(std::io::sink()), &bad).is_err()
        );
    }

    #[test]
    fn input_beyond_the_fifo_is_kept_until_read() {
        let mut s = Serial::new(Arc::new(Count::default()), Box::new(std::io::sink()));
        let input: Vec<u8> = (0..200u8).collect();
        s.queue_input(&input);
        assert!(
            s.pending_input() > 0,
            "the 64-byte FIFO cannot hold 200 bytes"
        );
        let mut got = Vec::new();
        let mut b = [0u8];
        for _ in 0..1000 {
            s.read(5, &mut b); // line status register
            if b[0] & 1 == 0 {
                break;
            }
            s.read(0, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, input);
    }
}
