//! The COM1 console: a 16550A-compatible UART from vm-superio, placed on the
//! port-I/O bus. Output goes to any writer (stdout, a file, nowhere); input
//! bytes from the host are queued and fed to the UART's receive FIFO as the
//! guest drains it, so nothing typed is lost when the FIFO is full.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;

use vm_superio::serial::NoEvents;
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
