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

/// xorshift64*: the seeded generator of the unit tests' mini-fuzzes, so
/// a failure reproduces.
#[cfg(test)]
pub(crate) struct Rng(pub u64);

#[cfg(test)]
impl Rng {
    /// The next 64 random bits.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True one time in `one_in`.
    pub(crate) fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}
