//! The i8042 PS/2 controller with an AT keyboard on its first port and
//! nothing on its second (AUX) port: enough for Linux's `i8042` and
//! `atkbd` drivers to find a keyboard without any command-line option, so
//! that Firecracker's `SendCtrlAltDel` action reaches the guest, and for
//! `reboot=k` (the "pulse reset line" command) to end the run.
//!
//! Ports: data at 0x60 (offset 0), status/command at 0x64 (offset 4).
//! Keyboard bytes use scan code set 2, untranslated: the command byte
//! starts without the XLATE bit, so Linux drives the port directly.
//! Every byte placed in the output buffer raises IRQ 1 when the command
//! byte enables the keyboard interrupt (edge-triggered, one per byte).

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::bus::BusDevice;
use crate::Interrupt;

/// Offset of the status/command port (0x64) from the data port (0x60).
const COMMAND_OFFSET: u64 = 4;
/// Offset of the data port.
const DATA_OFFSET: u64 = 0;

/// Status register: output buffer full (a byte waits at 0x60).
const STATUS_OBF: u8 = 0x01;
/// Status register: system flag, set once the controller passed its test.
const STATUS_SYS: u8 = 0x04;
/// Status register: the last write went to the command port.
const STATUS_CMD: u8 = 0x08;
/// Status register: keyboard not inhibited by the key lock.
const STATUS_UNLOCKED: u8 = 0x10;

/// Command byte: raise IRQ 1 when keyboard data arrives.
const CTR_KBD_INT: u8 = 0x01;
/// Command byte: system flag.
const CTR_SYS: u8 = 0x04;
/// Command byte: keyboard interface disabled.
const CTR_KBD_DISABLED: u8 = 0x10;
/// Command byte: AUX interface disabled.
const CTR_AUX_DISABLED: u8 = 0x20;
/// The command byte at power-on: no translation, and the keyboard
/// interrupt off until a driver turns it on (a guest that never set up
/// IRQ 1 gets no surprise interrupt from an injected key).
const CTR_RESET: u8 = CTR_SYS;

/// Output port bit 0: the CPU reset line (active low).
const OUTPUT_RESET_LINE: u8 = 0x01;
/// Output port bit 1: the A20 gate.
const OUTPUT_A20: u8 = 0x02;

/// Controller commands (written to 0x64).
mod cmd {
    pub const READ_CTR: u8 = 0x20;
    pub const WRITE_CTR: u8 = 0x60;
    pub const DISABLE_AUX: u8 = 0xa7;
    pub const ENABLE_AUX: u8 = 0xa8;
    pub const TEST_AUX: u8 = 0xa9;
    pub const SELF_TEST: u8 = 0xaa;
    pub const TEST_KBD: u8 = 0xab;
    pub const DISABLE_KBD: u8 = 0xad;
    pub const ENABLE_KBD: u8 = 0xae;
    pub const READ_OUTPUT: u8 = 0xd0;
    pub const WRITE_OUTPUT: u8 = 0xd1;
    pub const WRITE_KBD_BUFFER: u8 = 0xd2;
    pub const WRITE_AUX_BUFFER: u8 = 0xd3;
    pub const WRITE_AUX: u8 = 0xd4;
    /// 0xf0..=0xff pulse the output lines whose bits are clear; bit 0 is
    /// the reset line, so 0xfe is "reset the CPU".
    pub const PULSE_OUTPUT: u8 = 0xf0;
}

/// Controller replies.
const SELF_TEST_PASSED: u8 = 0x55;
const INTERFACE_OK: u8 = 0x00;
/// AUX interface test: "clock line stuck low", i.e. nothing connected.
const INTERFACE_NO_DEVICE: u8 = 0x01;

/// Keyboard commands (written to 0x60 when no controller command waits).
mod kbd {
    pub const SET_LEDS: u8 = 0xed;
    pub const ECHO: u8 = 0xee;
    pub const SCAN_SET: u8 = 0xf0;
    pub const GET_ID: u8 = 0xf2;
    pub const SET_TYPEMATIC: u8 = 0xf3;
    pub const ENABLE: u8 = 0xf4;
    pub const DISABLE: u8 = 0xf5;
    pub const SET_DEFAULTS: u8 = 0xf6;
    pub const RESEND: u8 = 0xfe;
    pub const RESET: u8 = 0xff;
    pub const ACK: u8 = 0xfa;
    pub const NAK: u8 = 0xfe;
    pub const SELF_TEST_PASSED: u8 = 0xaa;
    /// What GET_ID answers: an MF2 keyboard.
    pub const ID: [u8; 2] = [0xab, 0x83];
    /// The scan code set this keyboard sends.
    pub const SCAN_SET_2: u8 = 0x02;
}

/// Ctrl, Alt and Delete pressed, then released, in scan code set 2.
const CTRL_ALT_DEL: [u8; 11] = [
    0x14, 0x11, 0xe0, 0x71, // press Ctrl, Alt, Delete (extended)
    0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14, // release Delete, Alt, Ctrl
];

/// Bytes the output buffer holds (the keyboard's own buffer, as on
/// hardware, plus the controller's byte).
const BUFFER_SIZE: usize = 16;

/// Errors injecting keys.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum I8042Error {
    /// The guest does not read its keyboard: the buffer is full.
    #[error("the guest's keyboard buffer is full: the guest is not reading its PS/2 keyboard")]
    BufferFull,
}

/// Everything that survives a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042State {
    /// The command byte (CTR).
    ctr: u8,
    /// The output port (reset line, A20).
    output: u8,
    /// Whether the last write went to the command port.
    last_was_command: bool,
    /// A controller command waiting for its parameter at 0x60.
    pending_command: Option<u8>,
    /// A keyboard command waiting for its parameter.
    pending_kbd: Option<u8>,
    /// Whether the keyboard sends key presses.
    scanning: bool,
    /// The keyboard's last reply, for RESEND.
    last_reply: u8,
    /// Bytes waiting for the guest at 0x60, oldest first.
    buffer: VecDeque<u8>,
    /// Whether the guest ever wrote the command byte (a driver set the
    /// controller up).
    driver_seen: bool,
}

impl Default for I8042State {
    fn default() -> Self {
        I8042State {
            ctr: CTR_RESET,
            output: OUTPUT_RESET_LINE | OUTPUT_A20,
            last_was_command: false,
            pending_command: None,
            pending_kbd: None,
            scanning: true,
            last_reply: kbd::ACK,
            buffer: VecDeque::new(),
            driver_seen: false,
        }
    }
}

/// The controller. `reset` is signalled when the guest asks for a CPU
/// reset, `irq` is IRQ 1.
pub struct I8042 {
    reset: Arc<dyn Interrupt>,
    irq: Arc<dyn Interrupt>,
    state: I8042State,
}

impl I8042 {
    /// A controller in its power-on state.
    pub fn new(reset: Arc<dyn Interrupt>, irq: Arc<dyn Interrupt>) -> Self {
        I8042 {
            reset,
            irq,
            state: I8042State::default(),
        }
    }

    /// A controller in a saved state. Call [`Self::raise_pending`] once
    /// the interrupt controllers are restored.
    pub fn restore(reset: Arc<dyn Interrupt>, irq: Arc<dyn Interrupt>, state: &I8042State) -> Self {
        let mut dev = I8042 {
            reset,
            irq,
            state: state.clone(),
        };
        dev.state.buffer.truncate(BUFFER_SIZE);
        dev
    }

    /// Raises IRQ 1 again for a byte still waiting after a restore: the
    /// old process may have taken the edge with it.
    pub fn raise_pending(&self) {
        self.notify();
    }

    /// The state to save.
    pub fn save(&self) -> I8042State {
        self.state.clone()
    }

    /// Whether a guest driver listens: it set the controller up, and the
    /// keyboard interrupt is on, the keyboard interface enabled and the
    /// keyboard scanning.
    pub fn guest_listens(&self) -> bool {
        let s = &self.state;
        s.driver_seen && s.ctr & CTR_KBD_INT != 0 && s.ctr & CTR_KBD_DISABLED == 0 && s.scanning
    }

    /// Presses and releases Ctrl+Alt+Delete. All of it or nothing is queued.
    pub fn send_ctrl_alt_del(&mut self) -> Result<(), I8042Error> {
        if BUFFER_SIZE - self.state.buffer.len() < CTRL_ALT_DEL.len() {
            return Err(I8042Error::BufferFull);
        }
        for b in CTRL_ALT_DEL {
            self.push(b);
        }
        Ok(())
    }

    fn status(&self) -> u8 {
        let s = &self.state;
        let mut status = STATUS_SYS | STATUS_UNLOCKED;
        if !s.buffer.is_empty() {
            status |= STATUS_OBF;
        }
        if s.last_was_command {
            status |= STATUS_CMD;
        }
        status
    }

    /// Raises IRQ 1 for the byte at the head of the buffer, if enabled.
    fn notify(&self) {
        if !self.state.buffer.is_empty() && self.state.ctr & CTR_KBD_INT != 0 {
            if let Err(e) = self.irq.trigger() {
                log::error!("i8042: cannot raise IRQ 1: {e}");
            }
        }
    }

    /// Queues one byte for the guest. A full buffer drops it (a keyboard
    /// overrun); [`Self::send_ctrl_alt_del`] checks for room first.
    fn push(&mut self, byte: u8) {
        if self.state.buffer.len() >= BUFFER_SIZE {
            log::warn!("i8042: output buffer full, byte {byte:#04x} dropped");
            return;
        }
        self.state.buffer.push_back(byte);
        if self.state.buffer.len() == 1 {
            self.notify();
        }
    }

    /// A controller reply replaces whatever waited: the guest asked for it
    /// and reads it next.
    fn reply(&mut self, byte: u8) {
        self.state.buffer.clear();
        self.push(byte);
    }

    fn pulse_reset(&self) {
        log::info!("i8042: guest requested a reset");
        if let Err(e) = self.reset.trigger() {
            log::error!("i8042: cannot signal the reset: {e}");
        }
    }

    fn command(&mut self, c: u8) {
        self.state.pending_command = None;
        match c {
            cmd::READ_CTR => self.reply(self.state.ctr),
            cmd::WRITE_CTR
            | cmd::WRITE_OUTPUT
            | cmd::WRITE_KBD_BUFFER
            | cmd::WRITE_AUX_BUFFER
            | cmd::WRITE_AUX => self.state.pending_command = Some(c),
            cmd::DISABLE_AUX => self.state.ctr |= CTR_AUX_DISABLED,
            cmd::ENABLE_AUX => self.state.ctr &= !CTR_AUX_DISABLED,
            cmd::TEST_AUX => self.reply(INTERFACE_NO_DEVICE),
            cmd::SELF_TEST => self.reply(SELF_TEST_PASSED),
            cmd::TEST_KBD => self.reply(INTERFACE_OK),
            cmd::DISABLE_KBD => self.state.ctr |= CTR_KBD_DISABLED,
            cmd::ENABLE_KBD => {
                self.state.ctr &= !CTR_KBD_DISABLED;
                self.notify();
            }
            cmd::READ_OUTPUT => self.reply(self.state.output),
            c if c & cmd::PULSE_OUTPUT == cmd::PULSE_OUTPUT => {
                if c & OUTPUT_RESET_LINE == 0 {
                    self.pulse_reset();
                }
            }
            c => log::debug!("i8042: command {c:#04x} ignored"),
        }
    }

    fn command_parameter(&mut self, c: u8, value: u8) {
        match c {
            cmd::WRITE_CTR => {
                self.state.ctr = value;
                self.state.driver_seen = true;
                self.notify();
            }
            cmd::WRITE_OUTPUT => {
                self.state.output = value;
                if value & OUTPUT_RESET_LINE == 0 {
                    self.pulse_reset();
                }
            }
            cmd::WRITE_KBD_BUFFER => self.reply(value),
            // No AUX port: its loop-back answers on the keyboard side,
            // which tells Linux at once that there is no AUX port (instead
            // of a half-second timeout).
            cmd::WRITE_AUX_BUFFER => self.reply(value),
            // No AUX device to send to.
            _ => {}
        }
    }

    /// A byte for the keyboard itself.
    fn keyboard(&mut self, value: u8) {
        // Writing to the keyboard enables its interface, as on hardware.
        self.state.ctr &= !CTR_KBD_DISABLED;
        if let Some(c) = self.state.pending_kbd.take() {
            self.state.buffer.clear();
            self.kbd_reply(&[kbd::ACK]);
            if c == kbd::SCAN_SET && value == 0 {
                self.push(kbd::SCAN_SET_2);
            }
            return;
        }
        // A command clears what the keyboard had not sent yet.
        self.state.buffer.clear();
        match value {
            kbd::SET_LEDS | kbd::SCAN_SET | kbd::SET_TYPEMATIC => {
                self.state.pending_kbd = Some(value);
                self.kbd_reply(&[kbd::ACK]);
            }
            kbd::ECHO => self.kbd_reply(&[kbd::ECHO]),
            kbd::GET_ID => self.kbd_reply(&[kbd::ACK, kbd::ID[0], kbd::ID[1]]),
            kbd::ENABLE => {
                self.state.scanning = true;
                self.kbd_reply(&[kbd::ACK]);
            }
            kbd::DISABLE => {
                self.state.scanning = false;
                self.kbd_reply(&[kbd::ACK]);
            }
            kbd::SET_DEFAULTS | 0xf7..=0xfd => self.kbd_reply(&[kbd::ACK]),
            kbd::RESEND => {
                let last = self.state.last_reply;
                self.push(last);
            }
            kbd::RESET => {
                self.state.scanning = true;
                self.kbd_reply(&[kbd::ACK, kbd::SELF_TEST_PASSED]);
            }
            _ => self.kbd_reply(&[kbd::NAK]),
        }
    }

    fn kbd_reply(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.push(b);
        }
        if let Some(&last) = bytes.last() {
            self.state.last_reply = last;
        }
    }
}

/// What an access at `offset` means, for kiln's exit trace: the register
/// and, for commands, their name (`cmd <- 0xfe (reset)`).
pub fn describe(offset: u64, write: bool, value: u8) -> String {
    match (offset, write) {
        (COMMAND_OFFSET, false) => format!("status -> {value:#04x}"),
        (COMMAND_OFFSET, true) => {
            let what = match value {
                cmd::READ_CTR => "read command byte",
                cmd::WRITE_CTR => "write command byte",
                cmd::DISABLE_AUX => "disable AUX",
                cmd::ENABLE_AUX => "enable AUX",
                cmd::TEST_AUX => "test AUX",
                cmd::SELF_TEST => "self-test",
                cmd::TEST_KBD => "test keyboard port",
                cmd::DISABLE_KBD => "disable keyboard",
                cmd::ENABLE_KBD => "enable keyboard",
                cmd::READ_OUTPUT => "read output port",
                cmd::WRITE_OUTPUT => "write output port",
                cmd::WRITE_KBD_BUFFER => "write keyboard buffer",
                cmd::WRITE_AUX_BUFFER => "AUX loop-back",
                cmd::WRITE_AUX => "write to AUX",
                c if c & cmd::PULSE_OUTPUT == cmd::PULSE_OUTPUT && c & OUTPUT_RESET_LINE == 0 => {
                    "reset"
                }
                c if c & cmd::PULSE_OUTPUT == cmd::PULSE_OUTPUT => "pulse nothing",
                _ => "?",
            };
            format!("cmd <- {value:#04x} ({what})")
        }
        (DATA_OFFSET, false) => format!("data -> {value:#04x}"),
        (DATA_OFFSET, true) => format!("data <- {value:#04x}"),
        _ => format!("offset {offset} ?"),
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            COMMAND_OFFSET => self.status(),
            DATA_OFFSET => {
                // An empty buffer reads as the last byte on real hardware;
                // 0 is as good and Linux never relies on it.
                let byte = self.state.buffer.pop_front().unwrap_or(0);
                self.notify();
                byte
            }
            _ => 0xff,
        };
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            COMMAND_OFFSET => {
                self.state.last_was_command = true;
                self.command(value);
            }
            DATA_OFFSET => {
                self.state.last_was_command = false;
                match self.state.pending_command.take() {
                    Some(c) => self.command_parameter(c, value),
                    None => self.keyboard(value),
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    use crate::CountingInterrupt as Count;

    fn device() -> (I8042, Arc<Count>, Arc<Count>) {
        let reset = Arc::new(Count::default());
        let irq = Arc::new(Count::default());
        (I8042::new(reset.clone(), irq.clone()), reset, irq)
    }

    fn status(d: &mut I8042) -> u8 {
        let mut b = [0u8];
        d.read(COMMAND_OFFSET, &mut b);
        b[0]
    }

    fn data(d: &mut I8042) -> u8 {
        let mut b = [0u8];
        d.read(DATA_OFFSET, &mut b);
        b[0]
    }

    fn count(c: &Count) -> u32 {
        c.0.load(Ordering::SeqCst)
    }

    /// Reads every waiting byte, as Linux's interrupt handler does.
    fn drain(d: &mut I8042) -> Vec<u8> {
        let mut out = Vec::new();
        while status(d) & STATUS_OBF != 0 {
            out.push(data(d));
        }
        out
    }

    #[test]
    fn accesses_are_described() {
        assert_eq!(describe(4, true, 0xfe), "cmd <- 0xfe (reset)");
        assert_eq!(describe(4, true, 0xff), "cmd <- 0xff (pulse nothing)");
        assert_eq!(describe(4, false, 0x14), "status -> 0x14");
        assert_eq!(describe(0, true, 0xf4), "data <- 0xf4");
    }

    #[test]
    fn only_reset_pulses_reset_the_cpu() {
        let (mut d, reset, _) = device();
        d.write(DATA_OFFSET, &[0xfe]); // a keyboard byte: RESEND
        d.write(COMMAND_OFFSET, &[cmd::DISABLE_KBD]);
        d.write(COMMAND_OFFSET, &[0xff]); // pulse nothing (Linux's SMM no-op)
        assert_eq!(count(&reset), 0);
        d.write(COMMAND_OFFSET, &[0xfe]);
        assert_eq!(count(&reset), 1);
        // Writing the output port with the reset line low resets too; the
        // A20 write Linux makes at boot (0xdf) does not.
        d.write(COMMAND_OFFSET, &[cmd::WRITE_OUTPUT]);
        d.write(DATA_OFFSET, &[0xdf]);
        assert_eq!(count(&reset), 1);
        d.write(COMMAND_OFFSET, &[cmd::WRITE_OUTPUT]);
        d.write(DATA_OFFSET, &[0xde]);
        assert_eq!(count(&reset), 2);
    }

    #[test]
    fn linux_probe_sequence() {
        let (mut d, _, _) = device();
        // i8042_controller_check: the status is not 0xff, nothing waits.
        assert_ne!(status(&mut d), 0xff);
        assert!(drain(&mut d).is_empty());
        // Self-test.
        d.write(COMMAND_OFFSET, &[cmd::SELF_TEST]);
        assert_eq!(drain(&mut d), [SELF_TEST_PASSED]);
        // Two stable CTR reads; no translation; key lock open.
        d.write(COMMAND_OFFSET, &[cmd::READ_CTR]);
        let ctr = data(&mut d);
        assert_eq!(ctr, CTR_RESET);
        assert_eq!(ctr & 0x40, 0, "XLATE must be off");
        assert_ne!(status(&mut d) & STATUS_UNLOCKED, 0);
        let ctr = (ctr | CTR_KBD_DISABLED) & !CTR_KBD_INT;
        d.write(COMMAND_OFFSET, &[cmd::WRITE_CTR]);
        assert_ne!(status(&mut d) & STATUS_CMD, 0);
        d.write(DATA_OFFSET, &[ctr]);
        d.write(COMMAND_OFFSET, &[cmd::READ_CTR]);
        assert_eq!(data(&mut d), ctr);
        // i8042_check_aux: the loop-back fails at once (no AUX data flag),
        // the AUX test then reports nothing connected.
        d.write(COMMAND_OFFSET, &[cmd::WRITE_AUX_BUFFER]);
        d.write(DATA_OFFSET, &[0x5a]);
        assert_eq!(status(&mut d) & (STATUS_OBF | 0x20), STATUS_OBF);
        d.write(COMMAND_OFFSET, &[cmd::TEST_AUX]);
        let r = data(&mut d);
        assert!(r != 0 && r != 0xfa && r != 0xff, "{r:#x}");
        // Enable the keyboard port and its interrupt.
        d.write(COMMAND_OFFSET, &[cmd::WRITE_CTR]);
        d.write(DATA_OFFSET, &[(ctr & !CTR_KBD_DISABLED) | CTR_KBD_INT]);
        // atkbd_probe: GET_ID answers ACK and the MF2 ID.
        d.write(DATA_OFFSET, &[kbd::GET_ID]);
        assert_eq!(drain(&mut d), [kbd::ACK, 0xab, 0x83]);
        // LEDs and typematic rate take a parameter, each byte is ACKed.
        for c in [kbd::SET_LEDS, kbd::SET_TYPEMATIC] {
            d.write(DATA_OFFSET, &[c]);
            assert_eq!(drain(&mut d), [kbd::ACK]);
            d.write(DATA_OFFSET, &[0]);
            assert_eq!(drain(&mut d), [kbd::ACK]);
        }
        d.write(DATA_OFFSET, &[kbd::ENABLE]);
        assert_eq!(drain(&mut d), [kbd::ACK]);
        assert!(d.guest_listens());
        // Scan set query.
        d.write(DATA_OFFSET, &[kbd::SCAN_SET]);
        d.write(DATA_OFFSET, &[0]);
        assert_eq!(drain(&mut d), [kbd::ACK, kbd::SCAN_SET_2]);
        d.write(DATA_OFFSET, &[kbd::RESET]);
        assert_eq!(drain(&mut d), [kbd::ACK, kbd::SELF_TEST_PASSED]);
        d.write(DATA_OFFSET, &[0x42]);
        assert_eq!(drain(&mut d), [kbd::NAK]);
    }

    #[test]
    fn ctrl_alt_del_is_pressed_and_released_with_an_interrupt_per_byte() {
        let (mut d, _, irq) = device();
        assert!(!d.guest_listens(), "no driver yet");
        d.send_ctrl_alt_del().unwrap();
        assert_eq!(count(&irq), 0, "no interrupt before a driver enables it");
        drain(&mut d);
        d.write(COMMAND_OFFSET, &[cmd::WRITE_CTR]);
        d.write(DATA_OFFSET, &[CTR_SYS | CTR_KBD_INT]);
        assert!(d.guest_listens());
        d.send_ctrl_alt_del().unwrap();
        // The first byte raised IRQ 1; each read of a byte with more behind
        // it raises the next.
        assert_eq!(count(&irq), 1);
        let bytes = drain(&mut d);
        assert_eq!(bytes, CTRL_ALT_DEL);
        assert_eq!(count(&irq), CTRL_ALT_DEL.len() as u32);
        // A guest that never reads: the second fits, the third does not,
        // and nothing of it is queued.
        d.send_ctrl_alt_del().unwrap();
        assert_eq!(d.send_ctrl_alt_del(), Err(I8042Error::BufferFull));
        assert_eq!(drain(&mut d), CTRL_ALT_DEL);
    }

    #[test]
    fn no_interrupt_while_the_guest_disabled_it() {
        let (mut d, _, irq) = device();
        d.write(COMMAND_OFFSET, &[cmd::WRITE_CTR]);
        d.write(DATA_OFFSET, &[CTR_SYS | CTR_KBD_INT]);
        d.write(COMMAND_OFFSET, &[cmd::WRITE_CTR]);
        d.write(DATA_OFFSET, &[CTR_SYS]);
        assert_eq!(count(&irq), 0);
        assert!(!d.guest_listens());
        d.send_ctrl_alt_del().unwrap();
        assert_eq!(count(&irq), 0);
        // Enabling it raises the interrupt for the waiting byte.
        d.write(COMMAND_OFFSET, &[cmd::WRITE_CTR]);
        d.write(DATA_OFFSET, &[CTR_SYS | CTR_KBD_INT]);
        assert_eq!(count(&irq), 1);
    }

    #[test]
    fn state_survives_save_and_restore() {
        let (mut d, reset, irq) = device();
        d.write(COMMAND_OFFSET, &[cmd::WRITE_CTR]);
        d.write(DATA_OFFSET, &[CTR_SYS | CTR_KBD_INT | 0x40]);
        d.write(DATA_OFFSET, &[kbd::SET_LEDS]); // waits for its parameter
        d.send_ctrl_alt_del().unwrap();
        let saved = d.save();
        let fired = count(&irq);
        let mut r = I8042::restore(reset, irq.clone(), &saved);
        assert_eq!(count(&irq), fired);
        r.raise_pending();
        assert_eq!(
            count(&irq),
            fired + 1,
            "the waiting byte is signalled again"
        );
        assert_eq!(r.save(), saved);
        d.write(COMMAND_OFFSET, &[cmd::READ_CTR]);
        r.write(COMMAND_OFFSET, &[cmd::READ_CTR]);
        assert_eq!(drain(&mut r), drain(&mut d));
    }
}
