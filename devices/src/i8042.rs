//! Just enough of an i8042 keyboard controller for `reboot=k`: the guest
//! resets the machine by writing the "pulse reset line" command 0xfe to the
//! command port, which kiln turns into the end of the run.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::Interrupt;

/// Offset of the command/status port (0x64) from the data port (0x60).
const COMMAND_OFFSET: u64 = 4;
/// Command: pulse the CPU reset line.
const CMD_RESET_CPU: u8 = 0xfe;
/// Status register: nothing to read, input buffer empty.
const STATUS_IDLE: u8 = 0x00;

/// The i8042 stand-in. `reset` is signalled when the guest asks for a reset.
pub struct I8042 {
    reset: Arc<dyn Interrupt>,
}

impl I8042 {
    /// A controller that signals `reset` on the reset command.
    pub fn new(reset: Arc<dyn Interrupt>) -> Self {
        I8042 { reset }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Status reads say "idle"; data reads return 0: no keyboard attached.
        data.fill(if offset == COMMAND_OFFSET {
            STATUS_IDLE
        } else {
            0
        });
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            log::info!("i8042: guest requested a reset");
            if let Err(e) = self.reset.trigger() {
                log::error!("i8042: cannot signal the reset: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    use crate::CountingInterrupt as Count;

    #[test]
    fn reset_command_signals() {
        let c = Arc::new(Count::default());
        let mut dev = I8042::new(c.clone());
        dev.write(0, &[0xfe]); // data port: ignored
        dev.write(COMMAND_OFFSET, &[0xad]); // another command: ignored
        assert_eq!(c.0.load(Ordering::SeqCst), 0);
        dev.write(COMMAND_OFFSET, &[0xfe]);
        assert_eq!(c.0.load(Ordering::SeqCst), 1);
        let mut b = [0xffu8];
        dev.read(COMMAND_OFFSET, &mut b);
        assert_eq!(b[0], STATUS_IDLE);
    }
}
