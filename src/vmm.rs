//! The boot recipe: `Vmm::run` walks the numbered phases of the README's
//! boot sequence, one call each, then waits for the VM to stop.

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
use devices::pvpanic::PvPanic;
use devices::serial::Serial;
use devices::virtio::block::{Block, DiskImage};
use devices::virtio::net::{MacAddr, Net};
use devices::virtio::vsock::Vsock;
use devices::virtio::VirtioDevice;

use crate::config::{ConsoleMode, VmConfig};
use crate::control::{PanicLine, PowerOffLine, ResetLine, StopReason, VmControl};
use crate::event_loop::{ConsoleInput, EventLoop};
use crate::stats::ExitStats;
use crate::vcpu::{BootEntry, Vcpu};
use crate::virtio::Slot;
use crate::vm::Vm;
use crate::{cmdline, console, pvm, terminal};

/// Errors while building or running the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// Opening KVM or creating the VM failed.
    #[error(transparent)]
    Vm(#[from] crate::vm::VmError),
    /// A vCPU could not be set up.
    #[error(transparent)]
    Vcpu(#[from] crate::vcpu::VcpuError),
    /// Loading the kernel or initrd failed.
    #[error("{0}")]
    Load(#[from] loader::LoaderError),
    /// The kernel file could not be opened.
    #[error("cannot open {0}: {1}")]
    Open(std::path::PathBuf, std::io::Error),
    /// The command line is longer than the kernel accepts.
    #[error("the kernel command line is {len} bytes, more than this kernel accepts ({max}); shorten --cmdline")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The kernel's limit.
        max: usize,
    },
    /// Writing boot_params / start_info failed.
    #[error(transparent)]
    ZeroPage(#[from] zero_page::ZeroPageError),
    /// Writing the MP table failed.
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    /// Writing the ACPI tables failed.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    /// A device could not be placed.
    #[error("cannot place a device: {0}")]
    Bus(#[from] devices::bus::BusError),
    /// The console could not be set up.
    #[error(transparent)]
    Console(#[from] console::ConsoleError),
    /// The event loop failed.
    #[error(transparent)]
    EventLoop(#[from] crate::event_loop::EventLoopError),
    /// A virtio device could not be attached.
    #[error(transparent)]
    Virtio(#[from] crate::virtio::VirtioError),
    /// A disk image could not be opened.
    #[error(transparent)]
    Disk(#[from] devices::virtio::block::BlockError),
    /// A network card could not be set up.
    #[error(transparent)]
    Net(#[from] devices::virtio::net::NetError),
    /// The vsock device could not be set up.
    #[error(transparent)]
    Vsock(#[from] devices::virtio::vsock::VsockError),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
}

/// kiln's own defaults for every guest.
const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

/// What a finished run reports.
pub struct RunSummary {
    /// Why it stopped.
    pub reason: StopReason,
    /// Exit counters over all vCPUs.
    pub stats: ExitStats,
    /// Host-repair counters per vCPU, if repairs were on.
    pub repairs: Vec<String>,
    /// Device counters worth reporting (e.g. dropped frames).
    pub devices: Vec<String>,
}

/// Builds the VM from `config` and runs it until it stops; `control` is
/// how other threads (a sandbox client) can stop it too. It must have one
/// slot per vCPU.
pub fn run(
    config: &VmConfig,
    start: Instant,
    control: Arc<VmControl>,
) -> Result<RunSummary, VmmError> {
    // 1. The configuration was validated by VmConfig::from_args.
    // 2. Open /dev/kvm, check the API version and capabilities.
    let kvm = crate::vm::open_kvm(&config.kvm_device)?;
    let repairs_on = pvm::detect();
    if repairs_on {
        log::info!("nested kvm_pvm host detected: host repairs on (instruction emulation, VMCALL completion)");
    }

    // 3. Create the VM with its irqchip and PIT.
    let mut vm = Vm::new(&kvm, config.cpus)?;
    // 4. Guest RAM around the MMIO gap.
    vm.add_memory(config.mem_size)?;

    // 5. Kernel, initrd, command line, boot_params/start_info, MP table,
    //    ACPI tables.
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
    // Every virtio device gets the next slot: disks first, then NICs,
    // then the vsock device.
    let slots = (0..config.disks.len() + config.nets.len() + usize::from(config.vsock.is_some()))
        .map(Slot::for_index)
        .collect::<Result<Vec<_>, _>>()?;
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

    // 6. Devices on the buses.
    let mut pio = Bus::new();
    let mut mmio = Bus::new();
    let serial_irq = vm.irqfd(layout::ports::COM1_IRQ)?;
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
    let serial = Arc::new(Mutex::new(Serial::new(
        Arc::new(serial_irq),
        console::output(
            &config.console,
            config.console_tail.as_ref(),
            console_failed,
        )?,
    )));
    pio.insert(
        layout::ports::COM1.into(),
        layout::ports::COM1_LEN.into(),
        serial.clone(),
    )?;
    let i8042 = I8042::new(Arc::new(ResetLine(control.clone())));
    pio.insert(
        layout::ports::I8042_DATA.into(),
        layout::ports::I8042_LEN.into(),
        Arc::new(Mutex::new(i8042)),
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
    pio.insert(
        layout::ports::CMOS.into(),
        layout::ports::CMOS_LEN.into(),
        Arc::new(Mutex::new(Cmos::new(below_4g, above_4g))),
    )?;
    mmio.insert(
        layout::BOOT_TIMER_START,
        layout::BOOT_TIMER_SIZE,
        Arc::new(Mutex::new(BootTimer::new(start))),
    )?;
    let mut backends: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for d in &config.disks {
        let image = if d.snapshot {
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
    let mut virtio_devices = Vec::new();
    for (index, device) in backends.into_iter().enumerate() {
        let attached = crate::virtio::attach(&vm, &mut mmio, index, device)?;
        debug_assert_eq!(attached.slot, slots[index]);
        virtio_devices.push(attached);
    }
    let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));

    // 7. vCPUs: CPUID, MSRs, LAPIC; the boot vCPU gets the entry state.
    crate::vcpu::kick::install_handler().map_err(VmmError::EventFd)?;
    let emulation_lock = pvm::EmulationLock::default();
    let timer_gap = if repairs_on {
        pvm::timer::pace(&vm.fd, vm.tsc_khz(), config.timer_gap)
    } else {
        0
    };
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
    }
    vcpus[0].set_boot_state(
        &vm.mem,
        BootEntry {
            mode: kernel.mode,
            entry: kernel.entry,
            info_addr,
        },
    )?;

    // 8. Start the vCPU threads and run the event loop until the VM stops.
    let mut event_loop = EventLoop::new(control.clone())?;
    for d in &virtio_devices {
        event_loop.add(d.events.clone());
    }
    let _raw = if config.console == ConsoleMode::Stdio {
        event_loop.add(Arc::new(Mutex::new(ConsoleInput::new(
            serial.clone(),
            control.clone(),
        ))));
        terminal::RawTerminal::enable()
    } else {
        None
    };
    log::info!(
        "VM set up in {:.1} ms; starting {} vCPU(s)",
        start.elapsed().as_secs_f64() * 1000.0,
        config.cpus
    );
    let mut handles = Vec::new();
    for v in vcpus {
        match v.start() {
            Ok(h) => handles.push(h),
            Err(e) => {
                control.request_stop(StopReason::Fatal(e.to_string()));
                break;
            }
        }
    }
    let loop_result = event_loop.run();
    if let Err(e) = &loop_result {
        control.request_stop(StopReason::Fatal(e.to_string()));
    }

    // 9. Tear down: stop and join every vCPU, flush the console.
    let mut stats = ExitStats::default();
    let mut repairs = Vec::new();
    for h in handles {
        kick_until_done(&h);
        if let Ok(v) = h.join() {
            stats.add(&v.stats);
            if let Some(r) = v.repairs() {
                repairs.push(format!("vCPU {}: {}", v.id(), r.summary()));
            }
        }
    }
    serial.lock().expect("serial lock").flush();
    let devices = virtio_devices
        .iter()
        .filter_map(|d| {
            let t = d.transport.lock().expect("virtio lock");
            t.device()
                .stats()
                .map(|s| format!("{}: {s}", t.device().name()))
        })
        .collect();
    let reason = control
        .reason()
        .unwrap_or_else(|| StopReason::Fatal("the VM stopped without a reason".into()));
    Ok(RunSummary {
        reason,
        stats,
        repairs,
        devices,
    })
}

/// Kicks a vCPU thread out of KVM_RUN until it has finished.
fn kick_until_done<T>(h: &std::thread::JoinHandle<T>) {
    use std::os::unix::thread::JoinHandleExt;
    while !h.is_finished() {
        // SAFETY: the thread is not joined yet, so its pthread_t is valid.
        unsafe { libc::pthread_kill(h.as_pthread_t(), crate::vcpu::kick::signal()) };
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
