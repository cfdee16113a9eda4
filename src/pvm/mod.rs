//! Repairs for nested "kvm_pvm" hosts (see the README's "Nested and PVM
//! hosts"). On such a host a stock guest kernel's ring 0 runs through the
//! host's instruction emulator, which gives up on some instructions,
//! spins on VMCALL, and breaks SYSCALL. kiln detects the host once and
//! then enters this module from exactly these places: VM setup
//! ([`timer::pace`]), vCPU setup ([`HostRepairs::patch_cpuid`]), emulation
//! failures ([`HostRepairs::on_emulation_failure`]), debug exits
//! ([`HostRepairs::on_debug`], the SYSCALL repair) and the exits that may
//! arm it ([`HostRepairs::after_io_exit`]), the guest's
//! TSC-deadline writes ([`HostRepairs::on_deadline_write`]) and the
//! periodic tick ([`HostRepairs::on_tick`]). On any other host none of it
//! exists.

pub mod emulate;
mod machine;
pub mod syscall;
pub mod timer;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debug_exit_arch, kvm_guest_debug, KVM_GUESTDBG_ENABLE,
    KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP,
};
use kvm_ioctls::VcpuFd;
use vm_memory::GuestMemoryMmap;

use emulate::Machine as _;
use machine::VcpuMachine;

/// Errors from the host repairs: each one stops the VM with its message.
#[derive(Debug, thiserror::Error)]
pub enum PvmError {
    /// The instruction could not be emulated.
    #[error("the host could not emulate an instruction and kiln cannot either: {0}")]
    Emulate(#[from] emulate::EmulateError),
    /// KVM did not report the instruction bytes.
    #[error("the host could not emulate an instruction and did not say which ({0})")]
    NoBytes(String),
    /// An ioctl used to read or write vCPU state failed.
    #[error("cannot {0} the vCPU state: {1}")]
    VcpuState(&'static str, kvm_ioctls::Error),
    /// Arming the guest's timer failed.
    #[error(transparent)]
    Timer(#[from] timer::TimerError),
}

/// Kernel command-line switches a stock kernel needs here:
/// - avoid the instructions the host's emulator rejects (XSAVE family,
///   POPCNT, SMAP's CLAC/STAC on every interrupt, SSSE3 SIMD in ring 0,
///   CMPXCHG16B in SLUB's fast path: kiln emulates all of them, but each
///   is a round trip);
/// - `erms,fsrm` too: with them the kernel copies to and from user space,
///   zeroes pages and moves data with `rep movsb`, which the host's
///   emulator runs one byte per iteration. Without them it uses
///   `rep movsq` (REP_GOOD), eight bytes per iteration: data through a
///   pipe or socket moved 2.5-3.5 times faster (1 MiB through `cat` in a
///   sandbox, whole run: 18.8 s -> 6.8 s; `-- true` alone takes ~2.5 s).
///   Clearing `rep_good` as well (the unrolled loops) was slower again
///   (8.8 s);
/// - skip boot work that takes minutes when ring 0 is emulated: the crypto
///   self-tests and ftrace's check of weak functions (Debian's kernel), and
///   the tracing set-up of a kernel with thousands of trace events
///   (Debian's: `trace_eval_init` queues a rewrite of every event's print
///   format and `tracer_init_tracefs` the creation of its tracefs files:
///   minutes each here, while holding `event_mutex`, on which
///   `init_kprobe_trace` blocks the boot). Without them tracefs is
///   empty: tracing inside such a guest is lost, nothing else;
/// - skip `slab_sysfs_init`, the creation of /sys/kernel/slab (some thirty
///   sysfs files per slab cache: ~5 s of the minimal kernel's emulated
///   boot, over a minute of Debian's). The caches work as before; only
///   their sysfs view (slabinfo, slabtop) is missing;
/// - skip the boot work of Debian's kernel that its `initcall_debug`
///   timed at minutes here, all of it optional for a guest:
///   - the kfunc registrations (`cubictcp_register`,
///     `bpf_tcp_ca_kfunc_init`, `bpf_prog_test_run_init`,
///     `bpf_rstat_kfunc_init`, `bpf_key_sig_kfuncs_init`, `kfunc_init`):
///     the first of them parses the kernel's 4 MB of BTF type information,
///     ~160 s. The guest's BPF programs lose those kfuncs, and TCP's
///     default congestion control falls back from cubic to reno. A module
///     with BTF still parses it when it loads;
///   - the self-tests that `cryptomgr.notests` does not cover:
///     `crypto_kdf108_init` (~110 s) and `blake2s_mod_init` (~27 s);
///   - `load_system_certificate_list` (~20 s): without the kernel's
///     built-in keys a signed module cannot be verified, so it loads
///     with the "module verification failed" taint (and is refused if
///     the guest enforces module signatures);
/// - `noreplace-smp=1`: a kernel that finds one CPU rewrites every LOCK
///   prefix in its text to a NOP, thousands of emulated text pokes
///   (~3 s for the minimal kernel). Kernels without the switch pass it to
///   init's environment, where it is harmless;
/// - `init_on_alloc=0` (upstream's default, which Debian turns on): no
///   zeroing of every page and slab allocation, ~60 s of Debian's boot;
/// - `rodata=off`: the kernel does not write-protect its text and
///   read-only data at the end of boot, nor check its page tables for W+X
///   mappings (~20 s of Debian's boot, ~2 s of the minimal kernel's). Both
///   cost the guest hardening, on a host that is only good for testing;
/// - `ipv6.disable=1`: Debian's kernel has IPv6 built in, and registering
///   it (`inet6_init`: protocols, sysctls, the loopback's addresses) took
///   ~12 s of its boot here. The guest has no IPv6 (IPv4 is untouched);
///   `ipv6.disable=0` brings it back. Kernels without IPv6 ignore it;
/// - no lockup watchdogs (`watchdog_thresh=0`, which unlike `nowatchdog`
///   is not handed to init when a kernel lacks the detectors) and no RCU
///   stall warnings (`rcupdate.rcu_cpu_stall_suppress=1`): under emulation
///   on a loaded host they fire spuriously, and their backtraces cost more
///   time (an RCU stall's NMI backtrace on a second vCPU runs LSL in the
///   NMI entry, which the host cannot emulate: kiln does, at a round trip
///   per NMI);
/// - `pty.legacy_count=0`: a kernel built with legacy BSD ptys
///   (`CONFIG_LEGACY_PTYS`, 256 pairs by default) registers no
///   /dev/ptyXX pairs: `pty_init` alone took 62 s of a generic 6.1
///   kernel's emulated boot (tinyconfig + virtio/ext4/ACPI/PVH,
///   resources/kernel/generic.config), whose boot to init went from
///   120 s to 72 s (resources/bench-cmdline.sh, 3 rounds). Unix98 ptys
///   (/dev/pts) are untouched; kernels without legacy ptys ignore it;
/// - `random.trust_cpu=on`: seed the kernel's random generator from the
///   CPU's RDRAND at boot, as Debian's kernel and ours are built to do.
///   Without it a kernel built with `RANDOM_TRUST_CPU` off gathers
///   entropy from timer jitter, all of it emulated: on the generic
///   kernel the first read of /dev/random blocked for 20 s (ready at
///   79 s of uptime instead of 8 s); boot time itself did not change.
///
/// Every switch has a `=` or a `.`: Linux hands unknown bare words to init
/// as arguments, which would corrupt the command our init runs.
pub const SLOW_HOST_CMDLINE: &str = "clearcpuid=xsave,popcnt,smap,ssse3,cx16,erms,fsrm \
     cryptomgr.notests \
     initcall_blacklist=ftrace_check_for_weak_functions,trace_eval_init,tracer_init_tracefs,\
     slab_sysfs_init,\
     cubictcp_register,bpf_tcp_ca_kfunc_init,bpf_prog_test_run_init,bpf_rstat_kfunc_init,\
     bpf_key_sig_kfuncs_init,kfunc_init,\
     crypto_kdf108_init,blake2s_mod_init,load_system_certificate_list \
     noreplace-smp=1 init_on_alloc=0 rodata=off ipv6.disable=1 \
     watchdog_thresh=0 rcupdate.rcu_cpu_stall_suppress=1 \
     pty.legacy_count=0 random.trust_cpu=on";

/// The switches for this host: [`SLOW_HOST_CMDLINE`] plus the TSC
/// frequency, because calibrating the TSC against the PIT fails when
/// every guest instruction is emulated (the kernel then marks the TSC
/// unstable and its delay loops run thousands of times too long).
pub fn default_cmdline(tsc_khz: Option<u32>) -> String {
    match tsc_khz {
        Some(khz) if khz > 0 => format!("{SLOW_HOST_CMDLINE} tsc_early_khz={khz}"),
        _ => SLOW_HOST_CMDLINE.to_string(),
    }
}

/// Whether this host is a nested PVM host, from the names of the loaded
/// kernel modules (`/sys/module`).
pub fn is_pvm_host<'a>(modules: impl IntoIterator<Item = &'a str>) -> bool {
    modules.into_iter().any(|m| m == "kvm_pvm")
}

/// Detects a PVM host by looking at /sys/module.
pub fn detect() -> bool {
    let Ok(dir) = std::fs::read_dir(Path::new("/sys/module")) else {
        return false;
    };
    let names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    is_pvm_host(names.iter().map(String::as_str))
}

/// What KVM reported about an emulation failure
/// (KVM_EXIT_INTERNAL_ERROR with suberror KVM_INTERNAL_ERROR_EMULATION).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmulationFailure {
    /// The internal-error suberror.
    pub suberror: u32,
    /// Instruction bytes at RIP, when KVM provided them.
    pub bytes: Option<Vec<u8>>,
}

impl EmulationFailure {
    /// Reads the failure out of the vCPU's kvm_run area.
    pub fn read(fd: &mut VcpuFd) -> Self {
        let run = fd.get_kvm_run();
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal`
        // is the active member of the union.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        Self::from_data(
            internal.suberror,
            &internal.data[..internal.ndata.min(16) as usize],
        )
    }

    /// Decodes suberror and data words (data[0] = flags, then the fetch
    /// length byte followed by up to 15 instruction bytes).
    pub fn from_data(suberror: u32, data: &[u64]) -> Self {
        let mut f = EmulationFailure {
            suberror,
            bytes: None,
        };
        if suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION
            && data.len() >= 3
            && data[0]
                & u64::from(kvm_bindings::KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)
                != 0
        {
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&data[1].to_le_bytes());
            raw[8..].copy_from_slice(&data[2].to_le_bytes());
            let len = usize::from(raw[0]).min(15);
            f.bytes = Some(raw[1..1 + len].to_vec());
        }
        f
    }
}

impl fmt::Display for EmulationFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.suberror {
            kvm_bindings::KVM_INTERNAL_ERROR_EMULATION => "emulation failure",
            kvm_bindings::KVM_INTERNAL_ERROR_SIMUL_EX => "simultaneous exceptions",
            kvm_bindings::KVM_INTERNAL_ERROR_DELIVERY_EV => "event delivery failed",
            _ => "internal error",
        };
        write!(f, "suberror {} {what}", self.suberror)?;
        if let Some(b) = &self.bytes {
            write!(f, ", instruction bytes")?;
            for x in b {
                write!(f, " {x:02x}")?;
            }
        }
        Ok(())
    }
}

/// CPUID leaf with KVM's paravirtual feature bits (EAX) and hints (EDX).
const KVM_CPUID_FEATURES: u32 = 0x4000_0001;

/// Offers the guest no KVM paravirtual features. Each of them (kvmclock
/// and ptp_kvm, PV IPIs, PV spinlock kicks, PV sched yield, PV TLB flush)
/// either makes the guest issue VMCALLs, which the host's emulator never
/// completes, or is not needed with `tsc_early_khz`. The KVM signature
/// leaf stays, so the guest still knows it runs under KVM.
pub fn hide_kvm_pv_features(entries: &mut [kvm_cpuid_entry2]) {
    for e in entries
        .iter_mut()
        .filter(|e| e.function == KVM_CPUID_FEATURES)
    {
        e.eax = 0;
        e.edx = 0;
    }
}

/// Names an emulated instruction for the per-repair counters.
pub fn mnemonic(bytes: &[u8]) -> &'static str {
    let mut i = 0;
    while i < bytes.len()
        && matches!(
            bytes[i],
            0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3 | 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x40
                ..=0x4f
        )
    {
        i += 1;
    }
    match &bytes[i.min(bytes.len())..] {
        [0xcc, ..] => "int3",
        [0x9b, ..] => "fwait",
        [0x0f, 0xb8, ..] => "popcnt",
        [0x0f, 0x01, 0xca, ..] => "clac",
        [0x0f, 0x01, 0xcb, ..] => "stac",
        [0x0f, 0x01, 0xd0, ..] => "xgetbv",
        [0x0f, 0x01, 0xc1, ..] => "vmcall",
        [0x0f, 0x03, ..] => "lsl",
        [0x0f, 0xc7, ..] => "cmpxchg8b/16b",
        [0x0f, 0xb0 | 0xb1, ..] => "cmpxchg",
        [0x0f, 0xae, m, ..] if (m >> 3) & 7 == 2 => "ldmxcsr",
        [0x0f, 0xae, m, ..] if (m >> 3) & 7 == 3 => "stmxcsr",
        [0x0f, 0x6e | 0x7e | 0xd6, ..] => "movd/movq",
        [0x0f, 0x6f | 0x7f, ..] => "movdqu/movdqa",
        [0x0f, 0xef, ..] => "pxor",
        _ => "other",
    }
}

/// Serialises instruction emulation across the vCPUs of a VM: on this host
/// every ring-0 LOCK CMPXCHG8B/16B comes through kiln's emulator, whose
/// read-compare-write is atomic only if no other vCPU emulates at the same
/// time.
pub type EmulationLock = std::sync::Arc<std::sync::Mutex<()>>;

/// Makes the vCPU stop after its next instruction (breakpoints off).
fn single_step(fd: &VcpuFd) -> Result<(), PvmError> {
    let dbg = kvm_guest_debug {
        control: KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP,
        ..Default::default()
    };
    fd.set_guest_debug(&dbg)
        .map_err(|e| PvmError::VcpuState("single-step", e))
}

/// What a snapshot keeps of one vCPU's repairs: KVM_SET_GUEST_DEBUG is
/// not part of any KVM_GET, so a restored vCPU is armed again from this.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RepairState {
    /// The page-fault handler the SYSCALL breakpoint is on.
    pub armed_at: Option<u64>,
    /// Single-stepping past the breakpoint.
    pub stepping: bool,
}

/// The repairs of one vCPU, with their counters.
pub struct HostRepairs {
    mem: GuestMemoryMmap,
    emulation_lock: EmulationLock,
    /// The page-fault handler the breakpoint is armed on.
    armed_at: Option<u64>,
    /// Single-stepping past the breakpoint after passing a fault on.
    stepping: bool,
    /// Emulated instructions by name.
    pub emulated: BTreeMap<&'static str, u64>,
    /// VMCALLs completed with -KVM_ENOSYS.
    pub vmcalls: u64,
    /// SYSCALLs completed by kiln.
    pub syscalls: u64,
    /// Page faults passed on to the guest untouched.
    pub faults_passed: u64,
    /// Minimum TSC cycles from a guest's TSC-deadline write to its timer
    /// interrupt (0: the writes are not intercepted).
    timer_gap: u64,
    /// TSC-deadline writes seen, and those kiln moved later.
    pub timer_writes: u64,
    /// See `timer_writes`.
    pub timer_deferred: u64,
}

impl HostRepairs {
    /// Repairs for a vCPU of a VM with guest memory `mem`.
    pub fn new(mem: GuestMemoryMmap, emulation_lock: EmulationLock, timer_gap: u64) -> Self {
        HostRepairs {
            mem,
            emulation_lock,
            timer_gap,
            timer_writes: 0,
            timer_deferred: 0,
            armed_at: None,
            stepping: false,
            emulated: BTreeMap::new(),
            vmcalls: 0,
            syscalls: 0,
            faults_passed: 0,
        }
    }

    /// The state a snapshot keeps.
    pub fn save(&self) -> RepairState {
        RepairState {
            armed_at: self.armed_at,
            stepping: self.stepping,
        }
    }

    /// Arms a restored vCPU as the saved one was.
    pub fn restore(&mut self, fd: &VcpuFd, s: RepairState) -> Result<(), PvmError> {
        if s.armed_at.is_some() {
            self.arm(fd, s.armed_at)?;
        }
        if s.stepping {
            single_step(fd)?;
            self.stepping = true;
        }
        Ok(())
    }

    /// Adjusts the CPUID a vCPU is given: see [`hide_kvm_pv_features`].
    pub fn patch_cpuid(&self, entries: &mut [kvm_cpuid_entry2]) {
        hide_kvm_pv_features(entries);
    }

    /// The host gave up on an instruction: emulate it and resume.
    pub fn on_emulation_failure(
        &mut self,
        fd: &VcpuFd,
        failure: &EmulationFailure,
    ) -> Result<(), PvmError> {
        let bytes = failure
            .bytes
            .as_deref()
            .ok_or_else(|| PvmError::NoBytes(failure.to_string()))?;
        let _serialised = self
            .emulation_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut m = VcpuMachine::load(fd, &self.mem)?;
        let outcome = emulate::emulate(&mut m, bytes)?;
        m.apply(outcome)?;
        *self.emulated.entry(mnemonic(bytes)).or_default() += 1;
        Ok(())
    }

    /// The guest wrote IA32_TSC_DEADLINE (intercepted, see [`timer`]): arm
    /// its timer, no sooner than the gap.
    pub fn on_deadline_write(&mut self, fd: &VcpuFd, deadline: u64) -> Result<(), PvmError> {
        self.timer_writes += 1;
        if timer::arm_deadline(fd, deadline, self.timer_gap)? {
            self.timer_deferred += 1;
        }
        Ok(())
    }

    /// Called on every periodic tick: completes a VMCALL the host's
    /// emulator would otherwise re-execute forever, and (re-)arms the
    /// SYSCALL repair once the guest has an IDT and an LSTAR, or when its
    /// page-fault handler moved.
    pub fn on_tick(&mut self, fd: &VcpuFd) -> Result<(), PvmError> {
        let mem = self.mem.clone();
        let mut m = VcpuMachine::load(fd, &mem)?;
        if m.complete_vmcall()? {
            self.vmcalls += 1;
        }
        self.rearm(fd, &mut m)
    }

    /// Called after port-I/O and MMIO exits: until the SYSCALL repair is
    /// armed, every exit is a chance to arm it (ticks are rare, because
    /// each one costs the host's emulator milliseconds).
    pub fn after_io_exit(&mut self, fd: &VcpuFd) -> Result<(), PvmError> {
        if self.armed_at.is_some() {
            return Ok(());
        }
        let mem = self.mem.clone();
        let mut m = VcpuMachine::load(fd, &mem)?;
        self.rearm(fd, &mut m)
    }

    fn rearm(&mut self, fd: &VcpuFd, m: &mut VcpuMachine) -> Result<(), PvmError> {
        if self.stepping {
            return Ok(());
        }
        let handler = m.page_fault_handler();
        if handler.is_some() && handler != self.armed_at {
            let lstar = m.read_msr(syscall::MSR_LSTAR).unwrap_or(0);
            if lstar != 0 {
                self.arm(fd, handler)?;
            }
        }
        Ok(())
    }

    fn arm(&mut self, fd: &VcpuFd, handler: Option<u64>) -> Result<(), PvmError> {
        let mut dbg = kvm_guest_debug {
            control: KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP,
            ..Default::default()
        };
        if let Some(addr) = handler {
            dbg.arch.debugreg[0] = addr;
            dbg.arch.debugreg[7] = syscall::DR7_EXEC_DR0;
        }
        fd.set_guest_debug(&dbg)
            .map_err(|e| PvmError::VcpuState("set the debug registers of", e))?;
        if handler != self.armed_at {
            log::debug!("SYSCALL repair armed on the page-fault handler at {handler:x?}");
        }
        self.armed_at = handler;
        Ok(())
    }

    /// Return addresses found by following the guest's frame-pointer chain
    /// from RBP (at most `max`), for the `-vv` tick lines. Only meaningful
    /// for kernels built with frame pointers; stops at the first frame that
    /// does not read back as a kernel address.
    pub fn frames(&self, fd: &VcpuFd, max: usize) -> Vec<u64> {
        let Ok(mut m) = VcpuMachine::load(fd, &self.mem) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut rbp = m.get_gpr(5);
        while out.len() < max && rbp >> 47 == 0x1_ffff && rbp % 8 == 0 {
            let mut frame = [0u8; 16];
            if m.read_mem(rbp, &mut frame).is_err() {
                break;
            }
            let next = u64::from_le_bytes(frame[..8].try_into().expect("8 bytes"));
            let ret = u64::from_le_bytes(frame[8..].try_into().expect("8 bytes"));
            if ret >> 47 != 0x1_ffff || next <= rbp {
                break;
            }
            out.push(ret);
            rbp = next;
        }
        out
    }

    /// A debug exit: the breakpoint on the page-fault handler, or the end
    /// of a single step past it. Returns false for debug exits not ours.
    pub fn on_debug(&mut self, fd: &VcpuFd, exit: &kvm_debug_exit_arch) -> Result<bool, PvmError> {
        if self.stepping {
            self.stepping = false;
            self.arm(fd, self.armed_at)?;
            return Ok(true);
        }
        if self.armed_at != Some(exit.pc) {
            return Ok(false);
        }
        let mut m = VcpuMachine::load(fd, &self.mem)?;
        let lstar = m.read_msr(syscall::MSR_LSTAR).unwrap_or(0);
        match m.fault_frame() {
            Some(frame) if frame.is_broken_syscall(lstar) => {
                let star = m.read_msr(syscall::MSR_STAR).unwrap_or(0);
                m.complete_syscall(&frame, lstar, star)?;
                self.syscalls += 1;
            }
            _ => {
                // Not ours: the fault goes on to the guest's handler. Step
                // over its first instruction ourselves when it is harmless,
                // else run it with the breakpoint off and put it back.
                self.faults_passed += 1;
                if m.skip_first_instruction()? {
                    return Ok(true);
                }
                single_step(fd)?;
                self.stepping = true;
            }
        }
        Ok(true)
    }

    /// One line of counters for `--verbose`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "syscalls={} faults_passed={} vmcall={} timer_writes={} timer_deferred={}",
            self.syscalls, self.faults_passed, self.vmcalls, self.timer_writes, self.timer_deferred
        );
        for (name, n) in &self.emulated {
            s.push_str(&format!(" {name}={n}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_the_pvm_module() {
        assert!(is_pvm_host(["kvm", "kvm_pvm", "ext4"]));
        assert!(!is_pvm_host(["kvm", "kvm_intel"]));
        assert!(!is_pvm_host(["kvm_pvm_other"]));
        assert!(!is_pvm_host([]));
    }

    #[test]
    fn failure_bytes_are_decoded() {
        // flags = 1 (bytes valid), fetch length 15, bytes f3 0f b8 c1 then nops.
        let mut raw = [0x90u8; 16];
        raw[0] = 15;
        raw[1..5].copy_from_slice(&[0xf3, 0x0f, 0xb8, 0xc1]);
        let d1 = u64::from_le_bytes(raw[..8].try_into().unwrap());
        let d2 = u64::from_le_bytes(raw[8..].try_into().unwrap());
        let f = EmulationFailure::from_data(1, &[1, d1, d2]);
        let b = f.bytes.clone().unwrap();
        assert_eq!(b.len(), 15);
        assert_eq!(&b[..4], &[0xf3, 0x0f, 0xb8, 0xc1]);
        assert!(f.to_string().contains("f3 0f b8 c1"));
        // Without the flag there are no bytes.
        assert_eq!(EmulationFailure::from_data(1, &[0, d1, d2]).bytes, None);
        assert_eq!(EmulationFailure::from_data(3, &[]).bytes, None);
    }

    #[test]
    fn default_cmdline_carries_the_tsc_frequency() {
        let c = default_cmdline(Some(2_600_000));
        assert!(
            c.starts_with("clearcpuid=xsave,popcnt,smap,ssse3,cx16,erms,fsrm cryptomgr.notests ")
        );
        assert!(c.ends_with(" random.trust_cpu=on tsc_early_khz=2600000"));
        assert!(c.contains(
            " initcall_blacklist=ftrace_check_for_weak_functions,trace_eval_init,\
             tracer_init_tracefs,slab_sysfs_init,cubictcp_register,"
        ));
        assert!(
            c.contains(",load_system_certificate_list noreplace-smp=1 init_on_alloc=0 rodata=off ")
        );
        assert_eq!(default_cmdline(None), SLOW_HOST_CMDLINE);
        for word in c.split_whitespace() {
            assert!(
                word.contains('=') || word.contains('.'),
                "{word} would reach init"
            );
        }
        assert_eq!(default_cmdline(Some(0)), SLOW_HOST_CMDLINE);
    }

    #[test]
    fn kvm_pv_features_are_hidden() {
        let mut v = vec![
            kvm_cpuid_entry2 {
                function: 0x4000_0000,
                eax: 0x4000_0001,
                ebx: 0x4b4d_564b,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: KVM_CPUID_FEATURES,
                eax: 0x0100_7afb,
                edx: 1,
                ..Default::default()
            },
        ];
        hide_kvm_pv_features(&mut v);
        assert_eq!((v[1].eax, v[1].edx), (0, 0));
        assert_eq!(v[0].ebx, 0x4b4d_564b, "the signature stays");
    }

    #[test]
    fn mnemonics() {
        assert_eq!(mnemonic(&[0xf3, 0x48, 0x0f, 0xb8, 0xc1]), "popcnt");
        assert_eq!(mnemonic(&[0xcc]), "int3");
        assert_eq!(
            mnemonic(&[0x65, 0xf0, 0x48, 0x0f, 0xc7, 0x0e]),
            "cmpxchg8b/16b"
        );
        assert_eq!(mnemonic(&[0x0f, 0x01, 0xca]), "clac");
        assert_eq!(mnemonic(&[0x48, 0x0f, 0x03, 0xc0]), "lsl");
        assert_eq!(mnemonic(&[]), "other");
    }
}
