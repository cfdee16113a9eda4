//! The power registers of a hardware-reduced ACPI platform, which the FADT
//! points at: sleep control, sleep status and reset, one byte each (ACPI
//! 6.5, 4.8.3.7 and 4.8.3.6). A guest `poweroff` ends up here: Linux
//! evaluates `\_S5`, then writes `SLP_TYP` (from `\_S5`) and `SLP_EN` to the
//! sleep control register, which kiln turns into the end of the run. A write
//! of the FADT's reset value to the reset register resets the machine, which
//! also ends the run (`reboot=a`; kiln's default `reboot=k` goes through the
//! i8042 instead).

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::Interrupt;

/// Offset of the sleep control register in the port window.
pub const SLEEP_CONTROL_OFFSET: u64 = 0;
/// Offset of the sleep status register.
pub const SLEEP_STATUS_OFFSET: u64 = 1;
/// Offset of the reset register.
pub const RESET_OFFSET: u64 = 2;
/// The `SLP_TYP` value of the S5 (soft-off) state; the DSDT's `\_S5`
/// package must hold this value.
pub const SLEEP_TYPE_S5: u8 = 5;
/// The value the FADT tells the guest to write to the reset register.
pub const RESET_VALUE: u8 = 1;

/// Sleep control register: `SLP_EN`, "enter the sleep state now".
const SLP_EN: u8 = 1 << 5;
/// Sleep control register: position of the 3-bit `SLP_TYP` field.
const SLP_TYP_SHIFT: u8 = 2;
/// Sleep control register: mask of `SLP_TYP` after shifting.
const SLP_TYP_MASK: u8 = 0b111;

/// The three registers. `power_off` is signalled on an S5 request, `reset`
/// on a reset request.
pub struct AcpiPm {
    power_off: Arc<dyn Interrupt>,
    reset: Arc<dyn Interrupt>,
}

impl AcpiPm {
    /// Registers that signal `power_off` and `reset`.
    pub fn new(power_off: Arc<dyn Interrupt>, reset: Arc<dyn Interrupt>) -> Self {
        AcpiPm { power_off, reset }
    }

    fn sleep_control(&self, value: u8) {
        if value & SLP_EN == 0 {
            return;
        }
        let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
        if sleep_type == SLEEP_TYPE_S5 {
            log::info!("acpi: guest requested power off (S5)");
            if let Err(e) = self.power_off.trigger() {
                log::error!("acpi: cannot signal the power off: {e}");
            }
        } else {
            // The DSDT offers only \_S5, so a well-behaved guest never asks.
            log::warn!("acpi: guest asked for unsupported sleep type {sleep_type}; ignored");
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status: WAK_STS never set (the VM does not wake up from
        // anything); the control and reset registers read as 0.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            SLEEP_CONTROL_OFFSET => self.sleep_control(value),
            // Linux clears WAK_STS (write 1 to clear) before sleeping.
            SLEEP_STATUS_OFFSET => {}
            RESET_OFFSET if value == RESET_VALUE => {
                log::info!("acpi: guest requested a reset");
                if let Err(e) = self.reset.trigger() {
                    log::error!("acpi: cannot signal the reset: {e}");
                }
            }
            _ => log::debug!("acpi: write {value:#x} to power register +{offset} ignored"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    use crate::CountingInterrupt as Count;
    impl Count {
        fn get(&self) -> u32 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn device() -> (AcpiPm, Arc<Count>, Arc<Count>) {
        let (off, reset) = (Arc::new(Count::default()), Arc::new(Count::default()));
        (AcpiPm::new(off.clone(), reset.clone()), off, reset)
    }

    #[test]
    fn linux_s5_write_powers_off() {
        let (mut dev, off, reset) = device();
        // What acpi_hw_extended_sleep() does for S5: clear WAK_STS, then
        // write SLP_TYP << 2 | SLP_EN (0x34).
        dev.write(SLEEP_STATUS_OFFSET, &[0x80]);
        assert_eq!(off.get(), 0);
        dev.write(SLEEP_CONTROL_OFFSET, &[0x34]);
        assert_eq!((off.get(), reset.get()), (1, 0));
    }

    #[test]
    fn other_sleep_writes_are_ignored() {
        let (mut dev, off, reset) = device();
        dev.write(SLEEP_CONTROL_OFFSET, &[SLEEP_TYPE_S5 << SLP_TYP_SHIFT]); // no SLP_EN
        dev.write(SLEEP_CONTROL_OFFSET, &[(3 << SLP_TYP_SHIFT) | SLP_EN]); // S3
        dev.write(SLEEP_CONTROL_OFFSET, &[]);
        assert_eq!((off.get(), reset.get()), (0, 0));
    }

    #[test]
    fn reset_value_resets() {
        let (mut dev, off, reset) = device();
        dev.write(RESET_OFFSET, &[0x06]);
        assert_eq!(reset.get(), 0);
        dev.write(RESET_OFFSET, &[RESET_VALUE]);
        assert_eq!((off.get(), reset.get()), (0, 1));
    }

    #[test]
    fn registers_read_zero() {
        let (mut dev, _, _) = device();
        for offset in [SLEEP_CONTROL_OFFSET, SLEEP_STATUS_OFFSET, RESET_OFFSET] {
            let mut b = [0xffu8];
            dev.read(offset, &mut b);
            assert_eq!(b, [0]);
        }
    }
}
