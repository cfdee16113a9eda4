//! kiln's device models. Nothing here knows about KVM: a device sees reads
//! and writes at offsets inside its window, and raises its interrupt through
//! the [`Interrupt`] trait, which the VMM implements with an irqfd.

pub mod acpi_pm;
pub mod boot_timer;
pub mod bus;
pub mod cmos;
pub mod i8042;
pub mod pvpanic;
pub mod serial;
pub mod virtio;

use vmm_sys_util::eventfd::EventFd;

/// An interrupt line a device can raise (an irqfd in kiln).
pub trait Interrupt: Send + Sync {
    /// Raises the interrupt (edge-triggered).
    fn trigger(&self) -> std::io::Result<()>;
}

impl Interrupt for EventFd {
    fn trigger(&self) -> std::io::Result<()> {
        self.write(1)
    }
}

/// An [`Interrupt`] that counts how often it was raised: the test double
/// of every device's unit tests.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct CountingInterrupt(pub std::sync::atomic::AtomicU32);

#[cfg(test)]
impl Interrupt for CountingInterrupt {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}
