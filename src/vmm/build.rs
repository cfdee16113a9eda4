//! The boot recipe's phases, shared by a fresh boot ([`Machine::boot`])
//! and a restore ([`Machine::restore`]): the numbers are the README's
//! boot sequence. A boot loads the kernel and sets the boot vCPU's entry
//! state (phase 5 and the end of 7); a restore maps the memory file
//! instead and writes the saved state into the same objects.

use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use boot::cpu::EntryMode;
use boot::{acpi, layout, loader, mptable, zero_page};
use devices::acpi_pm::AcpiPm;
use devices::boot_timer::BootTimer;
use devices::bus::Bus;
use devices::cmos::Cmos;
use devices::i8042::I8042;

use crate::trace::explain::{self, LoadFacts};
use crate::trace::{Phases, Thread, Tracer};
use devices::pvpanic::PvPanic;
use devices::serial::Serial;
use devices::virtio::block::{Block, DiskImage};
use devices::virtio::net::{MacAddr, Net};
use devices::virtio::vsock::Vsock;
use devices::virtio::VirtioDevice;
use kvm_ioctls::Kvm;

use super::{Machine, VmmError};
use crate::config::{ConsoleMode, VmConfig};
use crate::control::{PanicLine, PowerOffLine, ResetLine, StopReason, VmControl};
use crate::event_loop::{ConsoleInput, EventLoop, IoThread};
use crate::snapshot::{DeviceStates, Files, Snapshot};
use crate::vcpu::{BootEntry, Vcpu};
use crate::virtio::Slot;
use crate::vm::Vm;
use crate::{cmdline, console, pvm, terminal};

/// kiln's own defaults for every guest.
const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

/// Where guest RAM comes from.
pub enum Memory<'a> {
    /// Fresh anonymous memory.
    Fresh,
    /// A snapshot's memory file, mapped copy-on-write.
    File(&'a std::path::Path),
}

impl Machine {
    /// Builds a VM from `config` and loads its kernel; the vCPUs are
    /// created but not started.
    pub fn boot(
        config: &VmConfig,
        start: Instant,
        control: Arc<VmControl>,
    ) -> Result<Machine, VmmError> {
        let tracer = trace_set_up(config, start, "validate the configuration (src/config/)")?;
        let mut phases = Phases::new(tracer.as_deref(), Instant::now());
        let (kvm, vm, repairs_on) = create(config, Memory::Fresh, &mut phases)?;
        let slots = slots(config)?;
        let (entry, facts) = load(config, &vm, &slots, repairs_on)?;
        phases.done_explained(
            5,
            "load the kernel, initrd, command line; boot_params, MP and ACPI tables (boot/src/)",
            || explain::load(&facts),
        );
        let m = assemble(
            config,
            start,
            control,
            (kvm, vm, repairs_on),
            None,
            tracer.clone(),
            &mut phases,
        )?;
        m.paused[0].set_boot_state(&m.vm.mem, entry)?;
        phases.done_explained(
            7,
            "boot vCPU: GDT, page tables, entry registers (boot/src/cpu.rs)",
            || match m.paused[0].registers() {
                Some((regs, sregs)) => {
                    explain::boot_vcpu(&regs, &sregs, entry.mode == EntryMode::Long64)
                }
                None => "cannot read the registers back".into(),
            },
        );
        Ok(m)
    }

    /// Builds the VM a snapshot was taken of, with RAM from `memory`, and
    /// writes the saved state into it; the vCPUs are not started.
    pub fn restore(
        config: &VmConfig,
        snap: &Snapshot,
        files: &Files,
        start: Instant,
        control: Arc<VmControl>,
    ) -> Result<Machine, VmmError> {
        if snap.vcpus.len() != usize::from(config.cpus) {
            return Err(VmmError::BadSnapshot(format!(
                "it holds {} vCPU states for {} vCPUs",
                snap.vcpus.len(),
                config.cpus
            )));
        }
        let tracer = trace_set_up(
            config,
            start,
            "read the snapshot's state file (src/snapshot.rs)",
        )?;
        let mut phases = Phases::new(tracer.as_deref(), Instant::now());
        let (kvm, vm, repairs_on) = create(config, Memory::File(&files.memory), &mut phases)?;
        // The interrupt controllers before any device can raise a line.
        vm.restore_state(&snap.vm)?;
        phases.done(5, "restore PIC, IOAPIC, PIT, clock (src/vm.rs)");
        let mut m = assemble(
            config,
            start,
            control,
            (kvm, vm, repairs_on),
            Some((&snap.devices, files)),
            tracer.clone(),
            &mut phases,
        )?;
        for (v, s) in m.paused.iter_mut().zip(&snap.vcpus) {
            v.restore_state(s)?;
        }
        // The transports go into their saved state last, and the keyboard
        // raises its pending byte, once the local APICs are restored: a
        // restored device may raise its interrupt
        // (the vsock device tells the guest its connections are gone), and
        // KVM_SET_LAPIC would drop one raised before.
        for (a, state) in m.virtio.iter().zip(&snap.devices.virtio) {
            a.transport
                .lock()
                .expect("virtio lock")
                .restore(state)
                .map_err(|e| VmmError::BadSnapshot(e.to_string()))?;
        }
        m.i8042.lock().expect("i8042 lock").raise_pending();
        phases.done(
            7,
            "write the saved vCPU and device state (src/vcpu/state.rs, devices/src/)",
        );
        Ok(m)
    }
}

/// Teaching mode's tracer, if asked for; it records phase 1 (`first`,
/// from kiln's start until now) and its own set-up (reading the kernel's
/// function names) as a second phase 1.
fn trace_set_up(
    config: &VmConfig,
    start: Instant,
    first: &str,
) -> Result<Option<Arc<Tracer>>, VmmError> {
    let first_ended = Instant::now();
    let tracer = Tracer::for_config(config, start)?;
    if let Some(t) = &tracer {
        t.phase_span(1, first, start, first_ended);
        t.phase(
            1,
            "teaching mode: the kernel's function names (src/trace/symbols.rs)",
            first_ended,
        );
    }
    Ok(tracer)
}

/// Phases 2-4: KVM, the VM with its irqchip, PIT and vCPUs, guest RAM.
fn create(
    config: &VmConfig,
    memory: Memory,
    phases: &mut Phases,
) -> Result<(Kvm, Vm, bool), VmmError> {
    // 2. Open /dev/kvm, check the API version and capabilities.
    let kvm = crate::vm::open_kvm(&config.kvm_device)?;
    let repairs_on = pvm::detect();
    if repairs_on {
        log::info!("nested kvm_pvm host detected: host repairs on (instruction emulation, VMCALL completion)");
    }
    phases.done_explained(
        2,
        "open /dev/kvm, check API version and capabilities (src/vm.rs)",
        || {
            let caps: Vec<&str> = crate::vm::REQUIRED_CAPS.iter().map(|c| c.1).collect();
            explain::open_kvm(&caps, repairs_on)
        },
    );
    // 3. Create the VM with its irqchip and PIT.
    let mut vm = Vm::new(&kvm, config.cpus)?;
    phases.done_explained(
        3,
        "KVM_CREATE_VM, KVM_CREATE_IRQCHIP, PIT, vCPU fds (src/vm.rs)",
        || explain::create_vm(config.cpus),
    );
    // 4. Guest RAM around the MMIO gap.
    match memory {
        Memory::Fresh => vm.add_memory(config.mem_size)?,
        Memory::File(path) => vm.add_memory_from_file(config.mem_size, path)?,
    }
    phases.done_explained(
        4,
        match memory {
            Memory::Fresh => "guest RAM: mmap, KVM_SET_USER_MEMORY_REGION (src/vm.rs)",
            Memory::File(_) => {
                "guest RAM: the memory file mapped MAP_PRIVATE, KVM_SET_USER_MEMORY_REGION (src/vm.rs)"
            }
        },
        || {
            explain::memory(
                &layout::ram_regions(config.mem_size),
                matches!(memory, Memory::File(_)),
            )
        },
    );
    Ok((kvm, vm, repairs_on))
}

/// Every virtio device's slot: disks first, then NICs, then vsock.
fn slots(config: &VmConfig) -> Result<Vec<Slot>, VmmError> {
    Ok(
        (0..config.disks.len() + config.nets.len() + usize::from(config.vsock.is_some()))
            .map(Slot::for_index)
            .collect::<Result<Vec<_>, _>>()?,
    )
}

/// Phase 5: kernel, initrd, command line, boot_params/start_info, MP
/// table, ACPI tables. Returns where the boot vCPU starts.
fn load(
    config: &VmConfig,
    vm: &Vm,
    slots: &[Slot],
    repairs_on: bool,
) -> Result<(BootEntry, LoadFacts), VmmError> {
    let mut kernel =
        File::open(&config.kernel).map_err(|e| VmmError::Open(config.kernel.clone(), e))?;
    let kernel = loader::load_kernel(&vm.mem, &mut kernel)?;
    let initrd = match &config.initrd {
        Some(path) => {
            let mut f = File::open(path).map_err(|e| VmmError::Open(path.clone(), e))?;
            let size = f
                .metadata()
                .map_err(|e| VmmError::Open(path.clone(), e))?
                .len();
            let low_ram_end = config.mem_size.min(layout::MMIO_GAP_START);
            let place = loader::place_initrd(
                size,
                kernel.kernel_end,
                kernel.initrd_addr_max(),
                low_ram_end,
            )?;
            loader::load_initrd(&vm.mem, &mut f, place)?;
            Some(place)
        }
        None => None,
    };
    let mut defaults = vec![DEFAULT_CMDLINE.to_string()];
    if repairs_on {
        defaults.push(pvm::default_cmdline(vm.tsc_khz()));
    }
    let defaults: Vec<&str> = defaults.iter().map(String::as_str).collect();
    let mut device_params: Vec<String> = slots.iter().map(Slot::cmdline).collect();
    if config.root_disk {
        device_params.push("root=/dev/vda".into());
        device_params.push(
            if config.disks[0].read_only {
                "ro"
            } else {
                "rw"
            }
            .into(),
        );
    }
    let cmdline = cmdline::compose(
        &defaults,
        &device_params,
        config.cmdline.as_deref().unwrap_or(""),
    );
    if cmdline.len() > kernel.cmdline_max() {
        return Err(VmmError::CmdlineTooLong {
            len: cmdline.len(),
            max: kernel.cmdline_max(),
        });
    }
    log::info!(
        "booting {:?} kernel ({}), {} vCPU(s), {}, cmdline: {cmdline}",
        kernel.format,
        match kernel.mode {
            EntryMode::Pvh32 => "PVH entry",
            EntryMode::Long64 => "64-bit entry",
        },
        config.cpus,
        crate::config::describe_size(config.mem_size)
    );
    loader::write_cmdline(&vm.mem, &cmdline)?;
    let e820 = zero_page::e820_map(config.mem_size);
    // ACPI tables (not with --no-acpi): CPUs, IOAPIC, legacy and virtio devices, S5.
    let rsdp = if config.no_acpi {
        None
    } else {
        let virtio: Vec<acpi::VirtioMmioSlot> = slots
            .iter()
            .map(|s| acpi::VirtioMmioSlot {
                base: s.base,
                size: s.size,
                irq: s.irq,
            })
            .collect();
        Some(acpi::write(&vm.mem, config.cpus, &virtio)?.0)
    };
    let info_addr = match kernel.mode {
        EntryMode::Pvh32 => {
            zero_page::write_pvh_start_info(&vm.mem, initrd, &e820, rsdp)?;
            layout::PVH_INFO_START
        }
        EntryMode::Long64 => {
            let hdr = kernel
                .setup_header
                .unwrap_or_else(zero_page::default_setup_header);
            zero_page::write_boot_params(&vm.mem, hdr, cmdline.len(), initrd, &e820, rsdp)?;
            layout::ZERO_PAGE_START
        }
    };
    mptable::write(&vm.mem, config.cpus)?;
    let facts = LoadFacts {
        format: format!("{:?}", kernel.format),
        protocol: match kernel.mode {
            EntryMode::Pvh32 => "PVH entry, 32-bit protected mode",
            EntryMode::Long64 => "64-bit boot protocol, long mode",
        },
        entry: kernel.entry,
        kernel_end: kernel.kernel_end,
        initrd: initrd.map(|p| (p.addr, p.size)),
        cmdline,
        e820: e820.iter().map(|e| (e.addr, e.size, e.kind)).collect(),
        rsdp,
        info: match kernel.mode {
            EntryMode::Pvh32 => ("hvm_start_info", info_addr),
            EntryMode::Long64 => ("boot_params (the zero page)", info_addr),
        },
    };
    Ok((
        BootEntry {
            mode: kernel.mode,
            entry: kernel.entry,
            info_addr,
        },
        facts,
    ))
}

/// Phases 6-7 and the event loop: devices on the buses (in their saved
/// state when `saved` is given), the vCPUs, the event loop's subscribers.
fn assemble(
    config: &VmConfig,
    start: Instant,
    control: Arc<VmControl>,
    (kvm, vm, repairs_on): (Kvm, Vm, bool),
    restore: Option<(&DeviceStates, &Files)>,
    tracer: Option<Arc<Tracer>>,
    phases: &mut Phases,
) -> Result<Machine, VmmError> {
    let saved = restore.map(|(s, _)| s);
    let slots = slots(config)?;
    // 6. Devices on the buses.
    let mut pio = Bus::new();
    let mut mmio = Bus::new();
    let serial_irq = Arc::new(vm.irqfd(layout::ports::COM1_IRQ)?);
    // A console nobody can write to any more (a closed pipe, a full disk)
    // stops the VM, as it would stop any Unix filter.
    let console_failed = {
        let control = control.clone();
        Box::new(move |why: String| {
            control.request_stop(StopReason::Fatal(format!(
                "console output failed: {why}; the VM was stopped"
            )))
        })
    };
    let out = console::output(
        &config.console,
        config.console_tail.as_ref(),
        console_failed,
    )?;
    let serial = match saved {
        None => Serial::new(serial_irq, out),
        Some(s) => Serial::restore(serial_irq, out, &s.serial).map_err(VmmError::BadSnapshot)?,
    };
    let serial = Arc::new(Mutex::new(serial));
    pio.insert(
        layout::ports::COM1.into(),
        layout::ports::COM1_LEN.into(),
        serial.clone(),
    )?;
    let i8042_reset = Arc::new(ResetLine(control.clone()));
    let i8042_irq = Arc::new(vm.irqfd(layout::ports::I8042_IRQ)?);
    let i8042 = match saved {
        None => I8042::new(i8042_reset, i8042_irq),
        Some(s) => I8042::restore(i8042_reset, i8042_irq, &s.i8042),
    };
    let i8042 = Arc::new(Mutex::new(i8042));
    pio.insert(
        layout::ports::I8042_DATA.into(),
        layout::ports::I8042_LEN.into(),
        i8042.clone(),
    )?;
    // pvpanic: always on the bus, described to the guest in the DSDT.
    pio.insert(
        layout::ports::PVPANIC.into(),
        layout::ports::PVPANIC_LEN.into(),
        Arc::new(Mutex::new(PvPanic::new(Arc::new(PanicLine(
            control.clone(),
        ))))),
    )?;
    if !config.no_acpi {
        // The FADT's sleep-control (S5 = power off) and reset registers.
        let pm = AcpiPm::new(
            Arc::new(PowerOffLine(control.clone())),
            Arc::new(ResetLine(control.clone())),
        );
        pio.insert(
            layout::ports::ACPI_PM.into(),
            layout::ports::ACPI_PM_LEN.into(),
            Arc::new(Mutex::new(pm)),
        )?;
    }
    let (below_4g, above_4g) =
        layout::ram_regions(config.mem_size)
            .iter()
            .fold((0, 0), |(lo, hi), &(start, size)| {
                if start < layout::MMIO_GAP_END {
                    (lo + size, hi)
                } else {
                    (lo, hi + size)
                }
            });
    let mut cmos = Cmos::new(below_4g, above_4g);
    if let Some(s) = saved {
        cmos.set_index(s.cmos_index);
    }
    let cmos = Arc::new(Mutex::new(cmos));
    pio.insert(
        layout::ports::CMOS.into(),
        layout::ports::CMOS_LEN.into(),
        cmos.clone(),
    )?;
    mmio.insert(
        layout::BOOT_TIMER_START,
        layout::BOOT_TIMER_SIZE,
        Arc::new(Mutex::new(BootTimer::new(start))),
    )?;
    let mut backends: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for (i, d) in config.disks.iter().enumerate() {
        let layer = restore.and_then(|(s, files)| {
            let written = s.layers.get(i)?.as_ref()?;
            Some((written, files.layer(i)))
        });
        let image = if let (true, Some((written, path))) = (d.snapshot, &layer) {
            let file = File::open(path).map_err(|e| {
                VmmError::BadSnapshot(format!("cannot open {}: {e}", path.display()))
            })?;
            DiskImage::open_snapshot_restored(&d.path, d.id.as_deref(), written, &file)?
        } else if d.snapshot {
            DiskImage::open_snapshot(&d.path, d.id.as_deref())?
        } else {
            DiskImage::open(&d.path, d.read_only, d.id.as_deref())?
        };
        backends.push(Box::new(Block::new(image)));
    }
    for n in &config.nets {
        let mac = n.mac.as_deref().map(str::parse::<MacAddr>).transpose()?;
        backends.push(Box::new(Net::new(&n.tap, mac)?));
    }
    if let Some(v) = &config.vsock {
        backends.push(Box::new(Vsock::new(v.cid, &v.path)?));
    }
    if let Some(s) = saved {
        // Checked here, used once the vCPUs are restored (Machine::restore).
        if s.virtio.len() != backends.len() {
            return Err(VmmError::BadSnapshot(format!(
                "it holds {} virtio devices, its configuration {}",
                s.virtio.len(),
                backends.len()
            )));
        }
    }
    let mut virtio = Vec::new();
    for (index, device) in backends.into_iter().enumerate() {
        let attached = crate::virtio::attach(&vm, &mut mmio, index, device, tracer.clone())?;
        debug_assert_eq!(attached.slot, slots[index]);
        virtio.push(attached);
    }
    let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));
    phases.done_explained(
        6,
        "devices on the port-I/O and MMIO buses, irqfds, ioeventfds (devices/src/, src/virtio.rs)",
        || {
            tracer
                .as_ref()
                .map_or_else(String::new, |t| explain::devices(t.decoder()))
        },
    );

    // 7. vCPUs: CPUID, MSRs, LAPIC.
    crate::vcpu::kick::install_handler().map_err(VmmError::EventFd)?;
    let emulation_lock = pvm::EmulationLock::default();
    let timer_gap = if repairs_on {
        pvm::timer::pace(&vm.fd, vm.tsc_khz(), config.timer_gap)
    } else {
        0
    };
    let mut vm = vm;
    let mut vcpus = Vec::new();
    for (id, fd) in (0..config.cpus).zip(std::mem::take(&mut vm.vcpu_fds)) {
        let repairs = repairs_on
            .then(|| pvm::HostRepairs::new(vm.mem.clone(), emulation_lock.clone(), timer_gap));
        vcpus.push(Vcpu::new(
            &kvm,
            fd,
            id,
            config.cpus,
            pio.clone(),
            mmio.clone(),
            control.clone(),
            repairs,
            config.verbosity >= 3,
        )?);
        if let Some(t) = &tracer {
            vcpus.last_mut().expect("just pushed").set_tracer(t.clone());
        }
    }
    phases.done_explained(
        7,
        "vCPUs: KVM_SET_CPUID2, MSRs, LAPIC LINT0/LINT1 (src/vcpu/mod.rs, boot/src/cpuid.rs)",
        || explain::vcpus(config.cpus),
    );

    // 8. The event loop and its subscribers (vCPU threads start later).
    // Disks get a thread each: their I/O never delays the console, the
    // network or the API (src/event_loop.rs).
    let mut event_loop = EventLoop::new(control.clone())?;
    let mut disk_threads = Vec::new();
    for (i, d) in virtio.iter().enumerate() {
        let kind = d
            .transport
            .lock()
            .expect("virtio lock")
            .device()
            .device_type();
        if kind == devices::virtio::device_type::BLOCK {
            d.events
                .lock()
                .expect("virtio lock")
                .set_thread(Thread::DiskIo);
            let name = format!("kiln-disk{i}");
            disk_threads.push(IoThread::spawn(
                &name,
                crate::seccomp::ThreadKind::Disk,
                vec![d.events.clone()],
            )?);
        } else {
            event_loop.add(d.events.clone());
        }
    }
    let raw_terminal = if config.console == ConsoleMode::Stdio {
        event_loop.add(Arc::new(Mutex::new(ConsoleInput::new(
            serial.clone(),
            control.clone(),
        ))));
        terminal::RawTerminal::enable()
    } else {
        None
    };
    let msr_list = kvm
        .get_msr_index_list()
        .map(|l| l.as_slice().to_vec())
        .map_err(|e| VmmError::Kvm("read the MSR index list", e))?;
    Ok(Machine {
        config: config.clone(),
        vm,
        control,
        serial,
        cmos,
        i8042,
        tracer,
        started: None,
        virtio,
        paused: vcpus,
        running: Vec::new(),
        event_loop,
        disk_threads,
        msr_list,
        _raw_terminal: raw_terminal,
    })
}
