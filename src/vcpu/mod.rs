//! One vCPU: its initial state, and the thread that runs it. The run loop
//! is `KVM_RUN` -> [`dispatch`] (exit -> bus) -> continue or stop. Every
//! exit kiln does not handle stops the VM with a line naming the exit, the
//! vCPU, RIP and, for emulation failures, the instruction bytes.

use std::sync::Arc;
use std::thread::JoinHandle;

use boot::cpu::{self, EntryMode};
use devices::bus::Bus;
use kvm_bindings::{kvm_mp_state, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use vm_memory::GuestMemoryMmap;

pub mod state;

use crate::control::{StopReason, VmControl};
use crate::pvm::{self, HostRepairs};
use crate::stats::ExitStats;
use crate::trace::{Thread, TracedExit, Tracer};

/// Errors setting a vCPU up.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[error("cannot read the supported CPUID: {0}")]
    SupportedCpuid(kvm_ioctls::Error),
    /// A KVM_SET_* ioctl for the initial state failed.
    #[error("cannot set the initial {0} of vCPU {1}: {2}")]
    SetState(&'static str, u8, kvm_ioctls::Error),
    /// Writing GDT or page tables failed.
    #[error(transparent)]
    Boot(#[from] cpu::CpuError),
    /// Starting the thread failed.
    #[error("cannot start the vCPU thread: {0}")]
    Spawn(std::io::Error),
    /// Restoring the saved state failed.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// Re-arming the host repairs failed.
    #[error("cannot re-arm vCPU {0}'s host repairs: {1}")]
    Repairs(u8, String),
}

/// IA32_MISC_ENABLE: bit 0 enables fast string operations.
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// Local APIC register offsets of LVT LINT0 and LINT1.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;
/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;

/// Where the boot vCPU starts.
#[derive(Debug, Clone, Copy)]
pub struct BootEntry {
    /// Protocol/CPU mode at entry.
    pub mode: EntryMode,
    /// Entry address.
    pub entry: u64,
    /// boot_params or hvm_start_info address.
    pub info_addr: u64,
}

/// A configured vCPU, ready to run on its own thread.
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    control: Arc<VmControl>,
    repairs: Option<HostRepairs>,
    /// Exit counters, reported with -v.
    pub stats: ExitStats,
    trace: bool,
    /// `--trace`: every exit is recorded here.
    tracer: Option<Arc<Tracer>>,
}

/// What the run loop does after an exit.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// Enter the guest again.
    Continue,
    /// Stop the VM.
    Stop(StopReason),
    /// KVM could not emulate an instruction: look at the instruction bytes.
    EmulationFailure,
    /// A debug exit (hardware breakpoint or single step).
    Debug(kvm_bindings::kvm_debug_exit_arch),
    /// A guest MSR write KVM handed to kiln (index, value).
    MsrWrite(u32, u64),
    /// A KVM exit kiln does not handle (its name).
    Unhandled(&'static str),
}

/// Routes one exit to the buses. Pure with respect to KVM: unit-tested
/// with made-up exits.
pub fn dispatch(exit: &mut VcpuExit, pio: &Bus, mmio: &Bus, stats: &mut ExitStats) -> Next {
    match exit {
        VcpuExit::IoIn(port, data) => {
            stats.pio += 1;
            if !pio.read(u64::from(*port), data) {
                log::debug!("unclaimed port read {port:#x}");
                data.fill(0xff);
            }
            Next::Continue
        }
        VcpuExit::IoOut(port, data) => {
            stats.pio += 1;
            if !pio.write(u64::from(*port), data) {
                log::debug!("unclaimed port write {port:#x} <- {data:x?}");
            }
            Next::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            stats.mmio += 1;
            if !mmio.read(*addr, data) {
                log::debug!("unclaimed MMIO read {addr:#x}");
                data.fill(0xff);
            }
            Next::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            stats.mmio += 1;
            if !mmio.write(*addr, data) {
                log::debug!("unclaimed MMIO write {addr:#x} <- {data:x?}");
            }
            Next::Continue
        }
        // Without a userspace irqchip HLT stays in KVM; should one reach us, resume.
        VcpuExit::Hlt => Next::Continue,
        VcpuExit::SystemEvent(kind, _) => match *kind {
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => Next::Stop(StopReason::PowerOff),
            kvm_bindings::KVM_SYSTEM_EVENT_RESET => Next::Stop(StopReason::Reset),
            _ => Next::Unhandled("KVM_EXIT_SYSTEM_EVENT"),
        },
        VcpuExit::InternalError => Next::EmulationFailure,
        VcpuExit::Shutdown => Next::Unhandled("KVM_EXIT_SHUTDOWN (triple fault)"),
        VcpuExit::FailEntry(_, _) => Next::Unhandled("KVM_EXIT_FAIL_ENTRY"),
        VcpuExit::Exception => Next::Unhandled("KVM_EXIT_EXCEPTION"),
        VcpuExit::Debug(arch) => Next::Debug(*arch),
        VcpuExit::Hypercall(_) => Next::Unhandled("KVM_EXIT_HYPERCALL"),
        VcpuExit::X86Wrmsr(exit) => Next::MsrWrite(exit.index, exit.data),
        VcpuExit::Unknown => Next::Unhandled("KVM_EXIT_UNKNOWN"),
        _ => Next::Unhandled("an unexpected KVM exit"),
    }
}

impl Vcpu {
    /// Sets vCPU `id`'s CPUID, MSRs and local APIC (boot phase 7).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kvm: &Kvm,
        fd: VcpuFd,
        id: u8,
        cpus: u8,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        control: Arc<VmControl>,
        repairs: Option<HostRepairs>,
        trace: bool,
    ) -> Result<Vcpu, VcpuError> {
        let mut cpuid: CpuId = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(VcpuError::SupportedCpuid)?;
        boot::cpuid::patch(cpuid.as_mut_slice(), id, cpus);
        if let Some(r) = &repairs {
            r.patch_cpuid(cpuid.as_mut_slice());
        }
        fd.set_cpuid2(&cpuid)
            .map_err(|e| VcpuError::SetState("CPUID", id, e))?;

        let msrs = Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
            index: MSR_IA32_MISC_ENABLE,
            data: 1,
            ..Default::default()
        }])
        .expect("one MSR entry fits");
        fd.set_msrs(&msrs)
            .map_err(|e| VcpuError::SetState("MSRs", id, e))?;

        // LINT0 delivers the legacy PIC (ExtINT), LINT1 NMIs, as on a PC.
        let mut lapic = fd
            .get_lapic()
            .map_err(|e| VcpuError::SetState("local APIC", id, e))?;
        set_lvt_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
        set_lvt_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
        fd.set_lapic(&lapic)
            .map_err(|e| VcpuError::SetState("local APIC", id, e))?;

        Ok(Vcpu {
            id,
            fd,
            pio,
            mmio,
            control,
            repairs,
            stats: ExitStats::default(),
            trace,
            tracer: None,
        })
    }

    /// Records every exit of this vCPU in `tracer` (`--trace`).
    pub fn set_tracer(&mut self, tracer: Arc<Tracer>) {
        self.tracer = Some(tracer);
    }

    /// Sets the boot vCPU's registers for the kernel's entry protocol.
    pub fn set_boot_state(&self, mem: &GuestMemoryMmap, boot: BootEntry) -> Result<(), VcpuError> {
        let sregs = self
            .fd
            .get_sregs()
            .map_err(|e| VcpuError::SetState("sregs", self.id, e))?;
        let sregs = cpu::setup_sregs(mem, boot.mode, sregs)?;
        self.fd
            .set_sregs(&sregs)
            .map_err(|e| VcpuError::SetState("sregs", self.id, e))?;
        self.fd
            .set_regs(&cpu::boot_regs(boot.mode, boot.entry, boot.info_addr))
            .map_err(|e| VcpuError::SetState("registers", self.id, e))?;
        self.fd
            .set_fpu(&cpu::boot_fpu())
            .map_err(|e| VcpuError::SetState("FPU", self.id, e))?;
        Ok(())
    }

    /// The registers and special registers KVM holds for this vCPU
    /// (`kiln explain` shows the boot vCPU's).
    pub fn registers(&self) -> Option<(kvm_bindings::kvm_regs, kvm_bindings::kvm_sregs)> {
        Some((self.fd.get_regs().ok()?, self.fd.get_sregs().ok()?))
    }

    /// Starts the vCPU thread; it returns the vCPU (with its stats) when done.
    pub fn start(self) -> Result<JoinHandle<Vcpu>, VcpuError> {
        std::thread::Builder::new()
            .name(format!("vcpu{}", self.id))
            .spawn(move || {
                let mut me = self;
                me.run();
                me
            })
            .map_err(VcpuError::Spawn)
    }

    fn run(&mut self) {
        let _ticker = match kick::Ticker::start(kick::tick_period(self.repairs.is_some())) {
            Ok(t) => Some(t),
            Err(e) => {
                log::warn!(
                    "vCPU {}: no periodic tick ({e}); poweroff detection is off",
                    self.id
                );
                None
            }
        };
        // From here on the guest runs: narrow this thread's system calls
        // first (the kick timer above is the last set-up it does).
        if let Err(e) = crate::seccomp::install(crate::seccomp::ThreadKind::Vcpu) {
            self.control.request_stop(StopReason::Fatal(e.to_string()));
            return;
        }
        while !self.control.stopping() && !self.control.pausing() {
            let result = self.fd.run();
            // --trace: when kiln got the exit, and a copy of it.
            let tracing = crate::trace::COMPILED_IN && self.tracer.is_some();
            let since = tracing.then(std::time::Instant::now);
            let mut traced = None;
            let next = match result {
                Ok(mut exit) => {
                    if self.trace {
                        log::trace!("vCPU {}: {exit:?}", self.id);
                    }
                    let next = dispatch(&mut exit, &self.pio, &self.mmio, &mut self.stats);
                    if tracing {
                        traced = Some(TracedExit::of(&exit));
                    }
                    next
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.stats.interrupted += 1;
                    if tracing {
                        traced = Some(TracedExit::kick());
                    }
                    self.on_tick()
                }
                Err(e) => Next::Stop(self.fatal(format!("KVM_RUN failed: {e}"))),
            };
            let next = match next {
                Next::EmulationFailure => self.on_emulation_failure(),
                Next::Debug(arch) => self.on_debug(&arch),
                Next::MsrWrite(index, value) => self.on_msr_write(index, value),
                Next::Unhandled(name) => Next::Stop(self.fatal(format!("unhandled {name}"))),
                Next::Continue => self.after_exit(),
                stop @ Next::Stop(_) => stop,
            };
            if let (Some(tracer), Some(exit), Some(since)) = (&self.tracer, traced, since) {
                let fd = &self.fd;
                let enough = tracer.record(Thread::Vcpu(self.id), &exit, since.elapsed(), || {
                    fd.get_regs().ok().map(|r| r.rip)
                });
                if enough {
                    // `kiln explain` has shown its exits.
                    self.control.request_stop(StopReason::Finished);
                }
            }
            if let Next::Stop(reason) = next {
                self.control.request_stop(reason);
            }
        }
        if !self.control.stopping() {
            self.finish_pending_io();
        }
    }

    /// Lets KVM finish the port or MMIO read the last exit asked for (it
    /// completes it on the next KVM_RUN, and keeps it where no KVM_GET can
    /// see it) without running the guest further: KVM_RUN with
    /// `immediate_exit` set. Then the vCPU's state is whole and can be saved.
    fn finish_pending_io(&mut self) {
        self.fd.set_kvm_immediate_exit(1);
        match self.fd.run() {
            Err(e) if e.errno() == libc::EINTR => {}
            other => log::debug!("vCPU {}: KVM_RUN with immediate_exit: {other:?}", self.id),
        }
        self.fd.set_kvm_immediate_exit(0);
    }

    /// Reads this (stopped) vCPU's state for a snapshot.
    pub fn save_state(&self, msr_list: &[u32]) -> Result<state::VcpuState, state::StateError> {
        let mut s = state::save(&self.fd, self.id, msr_list)?;
        s.repairs = self.repairs.as_ref().map(HostRepairs::save);
        Ok(s)
    }

    /// Puts this (not yet run) vCPU into the saved state `s`, and arms
    /// kiln's host repairs as they were.
    pub fn restore_state(&mut self, s: &state::VcpuState) -> Result<(), VcpuError> {
        state::restore(&self.fd, self.id, s)?;
        if let (Some(r), Some(saved)) = (self.repairs.as_mut(), s.repairs) {
            r.restore(&self.fd, saved)
                .map_err(|e| VcpuError::Repairs(self.id, e.to_string()))?;
        }
        Ok(())
    }

    /// After a handled exit: the host repairs may want to look (cheap once
    /// they are set up).
    fn after_exit(&mut self) -> Next {
        match self.repairs.as_mut().map(|r| r.after_io_exit(&self.fd)) {
            Some(Err(e)) => Next::Stop(self.fatal(e)),
            _ => Next::Continue,
        }
    }

    /// A periodic tick interrupted KVM_RUN: look for a powered-off guest
    /// and give the host repairs their chance to act.
    fn on_tick(&mut self) -> Next {
        if log::log_enabled!(log::Level::Debug) {
            log::debug!(
                "vCPU {}: tick at {}{}",
                self.id,
                self.where_am_i(),
                self.call_chain()
            );
        }
        if let Some(r) = self.repairs.as_mut() {
            if let Err(e) = r.on_tick(&self.fd) {
                return Next::Stop(self.fatal(e));
            }
        }
        let parked = self.is_parked();
        if self.control.set_parked(self.id.into(), parked) {
            log::info!("all vCPUs halted with interrupts disabled: the guest powered off");
            return Next::Stop(StopReason::PowerOff);
        }
        Next::Continue
    }

    /// True when this vCPU cannot run again by itself: halted with
    /// interrupts disabled, or an AP still waiting for its start-up IPI.
    fn is_parked(&self) -> bool {
        let Ok(kvm_mp_state { mp_state }) = self.fd.get_mp_state() else {
            return false;
        };
        match mp_state {
            kvm_bindings::KVM_MP_STATE_HALTED => self
                .fd
                .get_regs()
                .map(|r| r.rflags & RFLAGS_IF == 0)
                .unwrap_or(false),
            kvm_bindings::KVM_MP_STATE_UNINITIALIZED | kvm_bindings::KVM_MP_STATE_INIT_RECEIVED => {
                self.id != 0
            }
            _ => false,
        }
    }

    fn on_emulation_failure(&mut self) -> Next {
        let failure = pvm::EmulationFailure::read(&mut self.fd);
        match self.repairs.as_mut() {
            Some(r) => match r.on_emulation_failure(&self.fd, &failure) {
                Ok(()) => Next::Continue,
                Err(e) => Next::Stop(self.fatal(e)),
            },
            None => Next::Stop(self.fatal(format!("KVM_EXIT_INTERNAL_ERROR ({failure})"))),
        }
    }

    /// Only the TSC-deadline writes the host repairs intercept come here.
    fn on_msr_write(&mut self, index: u32, value: u64) -> Next {
        let result = match self.repairs.as_mut() {
            Some(r) if index == pvm::timer::MSR_IA32_TSC_DEADLINE => {
                r.on_deadline_write(&self.fd, value)
            }
            _ => {
                return Next::Stop(self.fatal(format!(
                    "unhandled KVM_EXIT_X86_WRMSR (MSR {index:#x} <- {value:#x})"
                )))
            }
        };
        match result {
            Ok(()) => Next::Continue,
            Err(e) => Next::Stop(self.fatal(e)),
        }
    }

    fn on_debug(&mut self, arch: &kvm_bindings::kvm_debug_exit_arch) -> Next {
        let handled = match self.repairs.as_mut() {
            Some(r) => r.on_debug(&self.fd, arch),
            None => Ok(false),
        };
        match handled {
            Ok(true) => Next::Continue,
            Ok(false) => Next::Stop(self.fatal(format!(
                "unhandled KVM_EXIT_DEBUG (pc {:#x}, dr6 {:#x})",
                arch.pc, arch.dr6
            ))),
            Err(e) => Next::Stop(self.fatal(e)),
        }
    }

    /// The stop for something this vCPU cannot get past: one line naming
    /// the vCPU, the problem and where the guest was.
    fn fatal(&self, what: impl std::fmt::Display) -> StopReason {
        StopReason::Fatal(format!("vCPU {}: {what} at {}", self.id, self.where_am_i()))
    }

    fn where_am_i(&self) -> String {
        match self.fd.get_regs() {
            Ok(r) => format!("RIP {:#x}", r.rip),
            Err(_) => "an unknown RIP".to_string(),
        }
    }

    /// The frame-pointer chain behind RIP (" via ADDR ..."), for the `-vv`
    /// tick lines a profile is made of; empty without host repairs.
    fn call_chain(&self) -> String {
        let frames = match &self.repairs {
            Some(r) => r.frames(&self.fd, 12),
            None => Vec::new(),
        };
        if frames.is_empty() {
            return String::new();
        }
        let addrs: Vec<String> = frames.iter().map(|f| format!("{f:#x}")).collect();
        format!(" via {}", addrs.join(" "))
    }

    /// Host-repair counters, if repairs are on.
    pub fn repairs(&self) -> Option<&HostRepairs> {
        self.repairs.as_ref()
    }

    /// This vCPU's index.
    pub fn id(&self) -> u8 {
        self.id
    }
}

fn set_lvt_mode(regs: &mut [std::os::raw::c_char; 1024], offset: usize, mode: u32) {
    let mut b = [0u8; 4];
    for (i, x) in b.iter_mut().enumerate() {
        *x = regs[offset + i] as u8;
    }
    let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
    for (i, x) in v.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *x as std::os::raw::c_char;
    }
}

/// Periodic kicks out of KVM_RUN: a per-thread POSIX timer sends the kick
/// signal to the vCPU thread, so `KVM_RUN` returns EINTR and the loop can
/// check its stop flag and the guest's state.
pub mod kick {
    use std::time::Duration;

    /// Kick period. Each kick is a full exit: cheap on hardware KVM, but
    /// on a nested kvm_pvm host it costs the host's emulator ~6 ms (measured:
    /// a 20 ms tick made a boot 35% slower than a 1 s one), so there it is
    /// rare. Kicks only serve poweroff detection, VMCALL completion and
    /// re-arming the SYSCALL repair; stops kick the threads directly.
    ///
    /// `KILN_TICK_MS` overrides it: a profiling aid, since with `-vv` every
    /// tick logs where the guest is (resources/kallsyms.py --profile).
    pub fn tick_period(repairs: bool) -> Duration {
        if let Some(ms) = std::env::var("KILN_TICK_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&ms| ms > 0)
        {
            return Duration::from_millis(ms);
        }
        if repairs {
            Duration::from_millis(500)
        } else {
            Duration::from_millis(100)
        }
    }

    /// The signal that kicks a vCPU out of KVM_RUN.
    pub fn signal() -> i32 {
        libc::SIGRTMIN()
    }

    extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

    /// Installs the (empty) kick handler; without SA_RESTART, so KVM_RUN
    /// returns EINTR.
    pub fn install_handler() -> std::io::Result<()> {
        vmm_sys_util::signal::register_signal_handler(signal(), on_kick)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }

    /// A timer that kicks the calling thread periodically; deleted on drop.
    pub struct Ticker(libc::timer_t);

    impl Ticker {
        /// Starts kicking the calling thread every `period`.
        pub fn start(period: Duration) -> std::io::Result<Ticker> {
            // SAFETY: zero is a valid bit pattern for sigevent.
            let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
            sev.sigev_notify = libc::SIGEV_THREAD_ID;
            sev.sigev_signo = signal();
            // SAFETY: gettid has no preconditions.
            sev.sigev_notify_thread_id = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
            let mut timer: libc::timer_t = std::ptr::null_mut();
            // SAFETY: sev and timer are valid for the call; the timer is
            // deleted in Drop before the thread exits.
            if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut timer) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let ts = libc::timespec {
                tv_sec: period.as_secs() as libc::time_t,
                tv_nsec: period.subsec_nanos() as libc::c_long,
            };
            let spec = libc::itimerspec {
                it_interval: ts,
                it_value: ts,
            };
            // SAFETY: `timer` was created above; spec is a valid itimerspec.
            if unsafe { libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()) } != 0 {
                let err = std::io::Error::last_os_error();
                // SAFETY: deleting the timer we created.
                unsafe { libc::timer_delete(timer) };
                return Err(err);
            }
            Ok(Ticker(timer))
        }
    }

    impl Drop for Ticker {
        fn drop(&mut self) {
            // SAFETY: the timer was created by `start` and is deleted once.
            unsafe { libc::timer_delete(self.0) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Last(Vec<(u64, Vec<u8>)>);
    impl devices::bus::BusDevice for Last {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(0x40 + offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    fn buses() -> (Bus, Bus, Arc<Mutex<Last>>) {
        let dev = Arc::new(Mutex::new(Last::default()));
        let mut pio = Bus::new();
        pio.insert(0x3f8, 8, dev.clone()).unwrap();
        let mut mmio = Bus::new();
        mmio.insert(0xc000_0000, 0x1000, dev.clone()).unwrap();
        (pio, mmio, dev)
    }

    #[test]
    fn port_and_mmio_exits_reach_devices() {
        let (pio, mmio, dev) = buses();
        let mut st = ExitStats::default();
        assert_eq!(
            dispatch(&mut VcpuExit::IoOut(0x3f8, b"k"), &pio, &mmio, &mut st),
            Next::Continue
        );
        let mut b = [0u8; 1];
        assert_eq!(
            dispatch(&mut VcpuExit::IoIn(0x3fd, &mut b), &pio, &mmio, &mut st),
            Next::Continue
        );
        assert_eq!(b[0], 0x45);
        assert_eq!(
            dispatch(
                &mut VcpuExit::MmioWrite(0xc000_0000, &[123]),
                &pio,
                &mmio,
                &mut st
            ),
            Next::Continue
        );
        assert_eq!(dev.lock().unwrap().0, vec![(0, vec![b'k']), (0, vec![123])]);
        assert_eq!((st.pio, st.mmio), (2, 1));
    }

    #[test]
    fn unclaimed_reads_return_all_ones() {
        let (pio, mmio, _) = buses();
        let mut st = ExitStats::default();
        let mut b = [0u8; 4];
        assert_eq!(
            dispatch(&mut VcpuExit::IoIn(0x510, &mut b), &pio, &mmio, &mut st),
            Next::Continue
        );
        assert_eq!(b, [0xff; 4]);
        let mut b = [0u8; 4];
        assert_eq!(
            dispatch(
                &mut VcpuExit::MmioRead(0xd000_0000, &mut b),
                &pio,
                &mmio,
                &mut st
            ),
            Next::Continue
        );
        assert_eq!(b, [0xff; 4]);
    }

    #[test]
    fn fatal_exits_stop_with_a_name() {
        let (pio, mmio, _) = buses();
        let mut st = ExitStats::default();
        assert!(matches!(
            dispatch(&mut VcpuExit::Shutdown, &pio, &mmio, &mut st),
            Next::Unhandled(n) if n.contains("triple fault")
        ));
        assert_eq!(
            dispatch(
                &mut VcpuExit::FailEntry(0x80000021, 0),
                &pio,
                &mmio,
                &mut st
            ),
            Next::Unhandled("KVM_EXIT_FAIL_ENTRY")
        );
        assert_eq!(
            dispatch(&mut VcpuExit::Unknown, &pio, &mmio, &mut st),
            Next::Unhandled("KVM_EXIT_UNKNOWN")
        );
        assert_eq!(
            dispatch(&mut VcpuExit::InternalError, &pio, &mmio, &mut st),
            Next::EmulationFailure
        );
    }

    #[test]
    fn msr_writes_go_to_the_run_loop() {
        let (pio, mmio, _) = buses();
        let mut st = ExitStats::default();
        let mut error = 0u8;
        let mut exit = VcpuExit::X86Wrmsr(kvm_ioctls::WriteMsrExit {
            error: &mut error,
            reason: kvm_ioctls::MsrExitReason::Filter,
            index: pvm::timer::MSR_IA32_TSC_DEADLINE,
            data: 1234,
        });
        assert_eq!(
            dispatch(&mut exit, &pio, &mmio, &mut st),
            Next::MsrWrite(pvm::timer::MSR_IA32_TSC_DEADLINE, 1234)
        );
    }

    #[test]
    fn system_events_map_to_stop_reasons() {
        let (pio, mmio, _) = buses();
        let mut st = ExitStats::default();
        assert_eq!(
            dispatch(
                &mut VcpuExit::SystemEvent(kvm_bindings::KVM_SYSTEM_EVENT_RESET, &[]),
                &pio,
                &mmio,
                &mut st
            ),
            Next::Stop(StopReason::Reset)
        );
        assert_eq!(
            dispatch(
                &mut VcpuExit::SystemEvent(kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN, &[]),
                &pio,
                &mmio,
                &mut st
            ),
            Next::Stop(StopReason::PowerOff)
        );
    }

    #[test]
    fn lvt_mode_bits() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[APIC_LVT0] = 0x10;
        regs[APIC_LVT0 + 1] = 0x07;
        set_lvt_mode(&mut regs, APIC_LVT0, APIC_MODE_NMI);
        assert_eq!(regs[APIC_LVT0 + 1] as u8, 0x04);
        assert_eq!(regs[APIC_LVT0] as u8, 0x10);
    }
}
