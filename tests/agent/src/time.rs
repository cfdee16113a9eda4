//! Time from the TSC, for timeouts and throughput figures. RDTSC works at
//! ring 3 (boot.S leaves CR4.TSD clear) and is not a VM exit.
//!
//! The TSC frequency comes from, in order: kiln's `tsc_early_khz=` switch
//! on the command line (kiln adds it on nested hosts), CPUID leaf 0x15
//! (crystal clock and ratio), CPUID leaf 0x16 (base frequency), the
//! hypervisor timing leaf 0x40000010 (kHz); failing all of them, an
//! assumed 2.5 GHz, which is good enough for timeouts.

use core::arch::x86_64::{__cpuid, __cpuid_count, _rdtsc};

use crate::cmdline;

/// The TSC now.
pub fn now() -> u64 {
    // SAFETY: RDTSC has no side effects and is allowed at ring 3.
    unsafe { _rdtsc() }
}

/// Where the TSC frequency came from.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    Cmdline,
    Cpuid15,
    Cpuid16,
    Hypervisor,
    Assumed,
}

/// The TSC frequency in kHz and where it came from.
pub fn tsc_khz(cmdline_text: &str) -> (u64, Source) {
    if let Some(khz) = cmdline::get(cmdline_text, "tsc_early_khz").and_then(|v| v.parse().ok()) {
        if khz > 0 {
            return (khz, Source::Cmdline);
        }
    }
    // CPUID is safe on x86-64 (a VM exit, no side effects).
    let max = __cpuid(0).eax;
    if max >= 0x15 {
        let l = __cpuid(0x15);
        if l.eax != 0 && l.ebx != 0 && l.ecx != 0 {
            return (
                u64::from(l.ecx) * u64::from(l.ebx) / u64::from(l.eax) / 1000,
                Source::Cpuid15,
            );
        }
    }
    if max >= 0x16 {
        let l = __cpuid(0x16);
        if l.eax & 0xffff != 0 {
            return (u64::from(l.eax & 0xffff) * 1000, Source::Cpuid16);
        }
    }
    // Hypervisor leaves read as zeros when absent.
    let hv = __cpuid_count(0x4000_0000, 0).eax;
    if hv >= 0x4000_0010 {
        let khz = __cpuid_count(0x4000_0010, 0).eax;
        if khz != 0 {
            return (u64::from(khz), Source::Hypervisor);
        }
    }
    (2_500_000, Source::Assumed)
}

/// A clock: the TSC and its frequency, read once per check.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub khz: u64,
    pub source: Source,
}

impl Clock {
    /// Finds the TSC frequency (see the module documentation).
    pub fn new(cmdline_text: &str) -> Self {
        let (khz, source) = tsc_khz(cmdline_text);
        Clock { khz, source }
    }

    /// TSC ticks in `ms` milliseconds.
    pub fn ticks(&self, ms: u64) -> u64 {
        self.khz.saturating_mul(ms)
    }

    /// Microseconds in `ticks` TSC ticks.
    pub fn micros(&self, ticks: u64) -> u64 {
        (u128::from(ticks) * 1000 / u128::from(self.khz.max(1))) as u64
    }

    /// A deadline `ms` milliseconds from now.
    pub fn deadline(&self, ms: u64) -> Deadline {
        Deadline(now().saturating_add(self.ticks(ms)))
    }

    /// MiB/s for `bytes` moved in `ticks`, with two decimals, as hundredths.
    pub fn mib_per_s_x100(&self, bytes: u64, ticks: u64) -> u64 {
        let us = self.micros(ticks).max(1);
        (u128::from(bytes) * 100 * 1_000_000 / (1 << 20) / u128::from(us)) as u64
    }
}

/// A point in TSC time.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(u64);

impl Deadline {
    /// Whether the deadline has passed.
    pub fn passed(&self) -> bool {
        now() >= self.0
    }
}
