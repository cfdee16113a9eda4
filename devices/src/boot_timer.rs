//! The boot-timer device: a guest writes the byte 123 to its window when it
//! reaches a point worth timing (our init does it first thing). kiln logs
//! the wall time since the VMM started and the CPU time it has used.
//! Address and value follow Firecracker, so one guest image measures both.

use std::time::Instant;

use crate::bus::BusDevice;

/// The magic value the guest writes.
pub const MAGIC_VALUE: u8 = 123;

/// Times guest milestones against the VMM's start.
pub struct BootTimer {
    start: Instant,
    /// Every (wall, cpu) sample seen so far, in microseconds.
    pub samples: Vec<(u64, u64)>,
}

impl BootTimer {
    /// A timer counting from `start` (the VMM's own start).
    pub fn new(start: Instant) -> Self {
        BootTimer {
            start,
            samples: Vec::new(),
        }
    }
}

/// CPU time used by this process so far, in microseconds.
pub fn process_cpu_time_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into the timespec we pass.
    let ret = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if ret != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.first() == Some(&MAGIC_VALUE) {
            let wall = self.start.elapsed().as_micros() as u64;
            let cpu = process_cpu_time_us();
            self.samples.push((wall, cpu));
            log::info!(
                "boot-timer: guest boot time {}.{:03} ms wall, {}.{:03} ms VMM CPU",
                wall / 1000,
                wall % 1000,
                cpu / 1000,
                cpu % 1000
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_magic_value_at_offset_zero_counts() {
        let mut t = BootTimer::new(Instant::now());
        t.write(0, &[1]);
        t.write(4, &[MAGIC_VALUE]);
        assert!(t.samples.is_empty());
        t.write(0, &[MAGIC_VALUE]);
        assert_eq!(t.samples.len(), 1);
    }
}
