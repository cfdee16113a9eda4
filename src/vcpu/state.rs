//! A vCPU's saved state: everything KVM holds for it, read and written in
//! the order KVM needs (learned by Firecracker, `vstate/vcpu.rs`): MP
//! state first and vCPU events last when reading; on writing CPUID first,
//! the TSC before the TSC deadline (the MSRs go in ascending order, and
//! IA32_TSC 0x10 comes before IA32_TSC_DEADLINE 0x6e0) and the events
//! last, so a pending interrupt or exception is not lost.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// Errors saving or restoring a vCPU's state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A KVM_GET_* ioctl failed.
    #[error("cannot read vCPU {0}'s {1}: {2}")]
    Get(u8, &'static str, kvm_ioctls::Error),
    /// A KVM_SET_* ioctl failed.
    #[error("cannot restore vCPU {0}'s {1}: {2}")]
    Set(u8, &'static str, kvm_ioctls::Error),
    /// KVM took only part of the MSRs.
    #[error("cannot restore vCPU {0}'s MSR {1:#x}: KVM refused it")]
    Msr(u8, u32),
    /// The state does not fit.
    #[error("vCPU {0}: {1}")]
    Bad(u8, String),
    /// The snapshot's TSC runs at another rate than this host's.
    #[error("the snapshot was taken with a guest TSC of {saved} kHz, this host's KVM gives {here} kHz and cannot scale it: restore on the host (kind) the snapshot was taken on")]
    TscRate {
        /// The snapshot's rate.
        saved: u32,
        /// This host's.
        here: u32,
    },
}

/// How far the saved and the host's TSC rates may differ (kHz): a host's
/// measured rate moves a little from boot to boot.
const TSC_KHZ_TOLERANCE: u32 = 1000;

/// Everything KVM keeps for one vCPU.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// The CPUID the guest was given.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Running, halted, waiting for SIPI...
    pub mp_state: kvm_mp_state,
    /// General-purpose registers, RIP, RFLAGS.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// FPU, SSE and AVX state.
    pub xsave: kvm_xsave,
    /// XCR0.
    pub xcrs: kvm_xcrs,
    /// The guest's debug registers.
    pub debugregs: kvm_debugregs,
    /// The local APIC's registers (timer included).
    pub lapic: kvm_lapic_state,
    /// Every MSR KVM can save (KVM_GET_MSR_INDEX_LIST), ascending.
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts, NMIs, interrupt shadow.
    pub events: kvm_vcpu_events,
    /// The guest TSC's rate.
    pub tsc_khz: u32,
    /// kiln's host repairs on a kvm_pvm host (re-armed on restore).
    pub repairs: Option<crate::pvm::RepairState>,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("rip", &self.regs.rip)
            .field("msrs", &self.msrs.len())
            .finish_non_exhaustive()
    }
}

/// Reads vCPU `id`'s state; `msr_list` is KVM_GET_MSR_INDEX_LIST. MSRs
/// KVM lists but will not read on this vCPU are left out.
pub fn save(fd: &VcpuFd, id: u8, msr_list: &[u32]) -> Result<VcpuState, StateError> {
    let get = |what| move |e| StateError::Get(id, what, e);
    let mp_state = fd.get_mp_state().map_err(get("MP state"))?;
    let regs = fd.get_regs().map_err(get("registers"))?;
    let sregs = fd.get_sregs().map_err(get("special registers"))?;
    let xsave = fd.get_xsave().map_err(get("XSAVE area"))?;
    let xcrs = fd.get_xcrs().map_err(get("XCRs"))?;
    let debugregs = fd.get_debug_regs().map_err(get("debug registers"))?;
    let lapic = fd.get_lapic().map_err(get("local APIC"))?;
    let cpuid = fd
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(get("CPUID"))?
        .as_slice()
        .to_vec();
    let tsc_khz = fd.get_tsc_khz().map_err(get("TSC rate"))?;
    let msrs = save_msrs(fd, id, msr_list)?;
    let events = fd.get_vcpu_events().map_err(get("events"))?;
    Ok(VcpuState {
        cpuid,
        mp_state,
        regs,
        sregs,
        xsave,
        xcrs,
        debugregs,
        lapic,
        msrs,
        events,
        tsc_khz,
        repairs: None,
    })
}

fn save_msrs(fd: &VcpuFd, id: u8, list: &[u32]) -> Result<Vec<kvm_msr_entry>, StateError> {
    let mut indices: Vec<u32> = list.to_vec();
    indices.sort_unstable();
    indices.dedup();
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = &indices[..];
    while !rest.is_empty() {
        let entries: Vec<kvm_msr_entry> = rest
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries)
            .map_err(|e| StateError::Bad(id, format!("too many MSRs: {e:?}")))?;
        let n = fd
            .get_msrs(&mut msrs)
            .map_err(|e| StateError::Get(id, "MSRs", e))?;
        out.extend_from_slice(&msrs.as_slice()[..n]);
        if n < rest.len() {
            log::debug!("vCPU {id}: MSR {:#x} cannot be read: not saved", rest[n]);
        }
        rest = &rest[(n + 1).min(rest.len())..];
    }
    Ok(out)
}

/// Writes `s` into a vCPU that has not run yet.
pub fn restore(fd: &VcpuFd, id: u8, s: &VcpuState) -> Result<(), StateError> {
    let set = |what| move |e| StateError::Set(id, what, e);
    let here = fd.get_tsc_khz().map_err(set("TSC rate"))?;
    if here.abs_diff(s.tsc_khz) > TSC_KHZ_TOLERANCE && fd.set_tsc_khz(s.tsc_khz).is_err() {
        return Err(StateError::TscRate {
            saved: s.tsc_khz,
            here,
        });
    }
    let cpuid = CpuId::from_entries(&s.cpuid)
        .map_err(|e| StateError::Bad(id, format!("the saved CPUID does not fit: {e:?}")))?;
    fd.set_cpuid2(&cpuid).map_err(set("CPUID"))?;
    fd.set_mp_state(s.mp_state).map_err(set("MP state"))?;
    fd.set_regs(&s.regs).map_err(set("registers"))?;
    fd.set_sregs(&s.sregs).map_err(set("special registers"))?;
    // SAFETY: the buffer is a kvm_xsave read by KVM_GET_XSAVE, as large
    // as the legacy KVM_SET_XSAVE expects.
    unsafe { fd.set_xsave(&s.xsave) }.map_err(set("XSAVE area"))?;
    fd.set_xcrs(&s.xcrs).map_err(set("XCRs"))?;
    fd.set_debug_regs(&s.debugregs)
        .map_err(set("debug registers"))?;
    fd.set_lapic(&s.lapic).map_err(set("local APIC"))?;
    let mut sorted = s.msrs.clone();
    sorted.sort_by_key(|m| m.index);
    let msrs = Msrs::from_entries(&sorted)
        .map_err(|e| StateError::Bad(id, format!("too many MSRs: {e:?}")))?;
    let n = fd.set_msrs(&msrs).map_err(set("MSRs"))?;
    if n < sorted.len() {
        return Err(StateError::Msr(id, sorted[n].index));
    }
    fd.set_vcpu_events(&s.events).map_err(set("events"))?;
    Ok(())
}
