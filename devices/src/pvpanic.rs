//! QEMU's pvpanic device, I/O-port flavour: one byte at port 0x505 that a
//! guest kernel writes when it panics (QEMU's docs/specs/pvpanic.rst).
//! Reading the port tells the guest which events the device takes; kiln
//! takes "panicked" (bit 0) only. The DSDT describes it as `QEMU0001`, which
//! Linux's `pvpanic-mmio` driver binds (`CONFIG_PVPANIC_MMIO`).

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::Interrupt;

/// Event bit: the guest kernel panicked.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// Event bit: a crash kernel is loaded and will take over (not offered).
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

/// The port; `panicked` is signalled when the guest reports a panic.
pub struct PvPanic {
    panicked: Arc<dyn Interrupt>,
}

impl PvPanic {
    /// A device that signals `panicked`.
    pub fn new(panicked: Arc<dyn Interrupt>) -> Self {
        PvPanic { panicked }
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = PVPANIC_PANICKED;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        if value & PVPANIC_PANICKED != 0 {
            log::info!("pvpanic: the guest kernel reports a panic");
            if let Err(e) = self.panicked.trigger() {
                log::error!("pvpanic: cannot signal the panic: {e}");
            }
        } else {
            log::debug!("pvpanic: event {value:#x} ignored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CountingInterrupt as Count;
    use std::sync::atomic::Ordering;

    #[test]
    fn offers_panicked_and_signals_it() {
        let count = Arc::new(Count::default());
        let mut dev = PvPanic::new(count.clone());
        let mut caps = [0xffu8];
        dev.read(0, &mut caps);
        assert_eq!(caps[0], PVPANIC_PANICKED);
        dev.write(0, &[PVPANIC_CRASH_LOADED]);
        dev.write(0, &[]);
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        dev.write(0, &[PVPANIC_PANICKED]);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }
}
