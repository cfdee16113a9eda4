//! Timer-interrupt pacing. On a kvm_pvm host the guest's ring 0 runs ~1,900
//! times slower than on hardware, but its local APIC timer fires in real
//! time: a stock kernel's HZ=250 tick handler (timekeeping, scheduler load
//! tracking, RCU, timer wheel) then takes most of every 4 ms period, and
//! the boot crawls along in what is left between ticks.
//!
//! kiln asks KVM to hand it the guest's writes of IA32_TSC_DEADLINE (an MSR
//! filter), and arms the in-kernel LAPIC timer itself with the deadline the
//! guest asked for, but never sooner than a minimum gap after "now". Every
//! timer interrupt still comes, only later: the guest's clock stays right
//! (it reads the TSC), its jiffies catch up on the late tick, and the time
//! between two ticks is the guest's to run in.
//!
//! The price: on these hosts a guest timer can fire up to [`MIN_GAP`] late
//! (a 1 ms sleep takes ~50 ms). `KILN_TIMER_GAP_MS` sets another gap (0
//! turns the pacing off), for measuring what it buys.

use std::time::Duration;

use kvm_bindings::{kvm_enable_cap, kvm_msr_entry, Msrs, KVM_CAP_X86_USER_SPACE_MSR};
use kvm_ioctls::{MsrExitReason, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags};
use kvm_ioctls::{VcpuFd, VmFd};

/// The TSC-deadline timer MSR (Intel SDM vol. 3, 11.5.4.1).
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
/// The time-stamp counter.
const MSR_IA32_TSC: u32 = 0x10;

/// The least time from a guest's TSC-deadline write to its interrupt.
/// Measured with Debian's kernel (HZ=250), two boots side by side each:
/// no pacing 347.6 s to init against 238.1 s with 20 ms, and 266.4 s with
/// 20 ms against 219.0 s with 50 ms. A late tick does more work (~7-8 ms
/// of emulated ring 0 each, counted from the writes per second), so the
/// gap keeps paying beyond the tick period; 50 ms (the tick of an HZ=20
/// kernel) is where it stops: a guest timer is then at most a twentieth
/// of a second late.
pub const MIN_GAP: Duration = Duration::from_millis(50);

/// The largest gap `KILN_TIMER_GAP_MS` may ask for: beyond a second the
/// guest's timers would be useless.
pub const MAX_GAP_MS: u64 = 1000;

/// The gap `KILN_TIMER_GAP_MS` asks for (in ms, 0 = off), [`MIN_GAP`]
/// without it, or None if it is not a number from 0 to 1000.
pub fn min_gap(env: Option<&str>) -> Option<Duration> {
    match env {
        None => Some(MIN_GAP),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(ms) if ms <= MAX_GAP_MS => Some(Duration::from_millis(ms)),
            _ => None,
        },
    }
}

/// The gap in TSC cycles at `tsc_khz`.
pub fn gap_cycles(gap: Duration, tsc_khz: u32) -> u64 {
    (gap.as_micros() as u64).saturating_mul(u64::from(tsc_khz)) / 1000
}

/// Sets the pacing up for a VM with gap `gap`: returns the gap in guest
/// TSC cycles, or 0 when it is off (gap 0, TSC frequency unknown, or KVM
/// refused; the last two with a warning, since the boot then takes longer
/// but still works).
pub fn pace(vm: &VmFd, tsc_khz: Option<u32>, gap: Duration) -> u64 {
    if gap.is_zero() {
        log::info!("guest timer not paced (KILN_TIMER_GAP_MS=0)");
        return 0;
    }
    let Some(khz) = tsc_khz.filter(|&k| k > 0) else {
        log::warn!("guest TSC frequency unknown: the guest's timer runs unpaced");
        return 0;
    };
    if let Err(e) = intercept_deadline_writes(vm) {
        log::warn!("{e}; the guest's timer runs unpaced");
        return 0;
    }
    let cycles = gap_cycles(gap, khz);
    log::info!(
        "guest timer paced: each TSC-deadline interrupt at least {} ms after it is set ({cycles} TSC cycles)",
        gap.as_millis()
    );
    cycles
}

/// Errors setting up or applying the pacing.
#[derive(Debug, thiserror::Error)]
pub enum TimerError {
    /// KVM refused the MSR filter or the user-space MSR exits.
    #[error("cannot intercept the guest's TSC-deadline writes: {0}")]
    Intercept(kvm_ioctls::Error),
    /// KVM did not return the guest's TSC.
    #[error("cannot read the guest's TSC to pace its timer")]
    NoTsc,
    /// Writing the deadline failed.
    #[error("cannot arm the guest's TSC deadline timer: {0}")]
    Arm(kvm_ioctls::Error),
    /// KVM_SET_MSRS took no entry.
    #[error("KVM did not take the guest's TSC deadline {0:#x}")]
    NotArmed(u64),
}

/// The deadline to arm for a guest write of `requested`, at guest TSC
/// `now`, keeping at least `min_gap` TSC cycles from now. Zero (timer
/// disarmed) stays zero.
pub fn paced_deadline(requested: u64, now: u64, min_gap: u64) -> u64 {
    if requested == 0 {
        return 0;
    }
    requested.max(now.saturating_add(min_gap))
}

/// Makes the guest's writes of IA32_TSC_DEADLINE exit to kiln
/// (KVM_EXIT_X86_WRMSR, reason "filter"); every other MSR access stays in
/// KVM as before.
fn intercept_deadline_writes(vm: &VmFd) -> Result<(), TimerError> {
    let cap = kvm_enable_cap {
        cap: KVM_CAP_X86_USER_SPACE_MSR,
        args: [u64::from(MsrExitReason::Filter.bits()), 0, 0, 0],
        ..Default::default()
    };
    vm.enable_cap(&cap).map_err(TimerError::Intercept)?;
    let deny = [0u8];
    let range = MsrFilterRange {
        flags: MsrFilterRangeFlags::WRITE,
        base: MSR_IA32_TSC_DEADLINE,
        msr_count: 1,
        bitmap: &deny,
    };
    vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &[range])
        .map_err(TimerError::Intercept)
}

/// Arms vCPU `fd`'s TSC-deadline timer for a guest write of `requested`,
/// no sooner than `min_gap` cycles from now. Returns whether the deadline
/// was moved later.
pub fn arm_deadline(fd: &VcpuFd, requested: u64, min_gap: u64) -> Result<bool, TimerError> {
    let now = if requested == 0 {
        0
    } else {
        super::machine::read_msr(fd, MSR_IA32_TSC).ok_or(TimerError::NoTsc)?
    };
    let deadline = paced_deadline(requested, now, min_gap);
    let msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_IA32_TSC_DEADLINE,
        data: deadline,
        ..Default::default()
    }])
    .expect("one MSR entry fits");
    let written = fd.set_msrs(&msrs).map_err(TimerError::Arm)?;
    if written != 1 {
        // KVM refused the value: the guest would wait for a timer that
        // never fires.
        return Err(TimerError::NotArmed(deadline));
    }
    Ok(deadline != requested)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gap_comes_from_the_environment_or_the_default() {
        assert_eq!(min_gap(None), Some(MIN_GAP));
        assert_eq!(min_gap(Some("20")), Some(Duration::from_millis(20)));
        assert_eq!(min_gap(Some("0")), Some(Duration::ZERO));
        assert_eq!(min_gap(Some("1000")), Some(Duration::from_secs(1)));
        for bad in ["fast", "-1", "1001", ""] {
            assert_eq!(min_gap(Some(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn the_gap_in_tsc_cycles() {
        assert_eq!(gap_cycles(Duration::from_millis(20), 2_100_000), 42_000_000);
        assert_eq!(gap_cycles(Duration::ZERO, 2_100_000), 0);
    }

    #[test]
    fn a_disarmed_timer_stays_disarmed() {
        assert_eq!(paced_deadline(0, 1_000, 50), 0);
    }

    #[test]
    fn a_deadline_far_enough_away_is_kept() {
        assert_eq!(paced_deadline(2_000, 1_000, 50), 2_000);
        assert_eq!(paced_deadline(1_050, 1_000, 50), 1_050);
    }

    #[test]
    fn a_deadline_too_soon_or_past_moves_to_the_gap() {
        assert_eq!(paced_deadline(1_010, 1_000, 50), 1_050);
        assert_eq!(paced_deadline(900, 1_000, 50), 1_050);
        assert_eq!(paced_deadline(5, u64::MAX - 10, 50), u64::MAX);
    }
}
