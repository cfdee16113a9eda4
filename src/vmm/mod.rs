//! The VM as a value: [`Machine`] owns the VM file descriptor, guest RAM,
//! the devices and the vCPUs, built by [`Machine::boot`] or
//! [`Machine::restore`] (the numbered phases, in `build`), then started,
//! paused, resumed, snapshotted (`persist`) and run until it stops. The
//! vCPUs run on their own threads; everything else (event loop, devices'
//! queues, API requests, snapshots) happens on the thread that owns the
//! machine, so a snapshot sees devices and memory at one instant.

mod api;
mod build;
mod persist;

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use boot::{acpi, loader, mptable, zero_page};
use devices::cmos::Cmos;
use devices::i8042::I8042;
use devices::serial::Serial;

use crate::config::VmConfig;
use crate::control::{StopReason, VmControl};
use crate::event_loop::EventLoop;
use crate::stats::ExitStats;
use crate::terminal::RawTerminal;
use crate::vcpu::Vcpu;
use crate::vm::Vm;
use crate::{console, virtio};

pub use api::{ApiLink, Requester};

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
    /// A snapshot does not fit what it is restored into.
    #[error("the snapshot cannot be restored: {0}")]
    BadSnapshot(String),
    /// A snapshot file could not be read or written.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    /// The VM cannot be snapshotted as it is.
    #[error("cannot take a snapshot: {0}")]
    CannotSnapshot(String),
    /// The API socket could not be served.
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
    /// A KVM system ioctl failed.
    #[error("cannot {0}: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    /// Teaching mode was asked for but not compiled in.
    #[error("this kiln was built without teaching mode (cargo feature trace): --trace, --trace-out and kiln explain need a build with the default features")]
    NoTrace,
    /// `--trace-out FILE` cannot be created.
    #[error("cannot create the trace file {0}: {1}; check the path")]
    TraceFile(std::path::PathBuf, std::io::Error),
}

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
    /// `--trace`: the table of exits per reason and device.
    pub trace: Option<String>,
}

/// Where a VM comes from.
pub enum Origin<'a> {
    /// Boot `VmConfig::kernel`.
    Boot,
    /// A snapshot's state and its files.
    Restore(&'a crate::snapshot::Snapshot, &'a crate::snapshot::Files),
}

/// Builds the VM from `config` (or restores it), runs it until it stops,
/// serving the API socket if one is given; `control` is how other threads
/// (a sandbox client) can stop it too. It must have one slot per vCPU.
pub fn run(
    config: &VmConfig,
    origin: Origin,
    start: Instant,
    control: Arc<VmControl>,
    api: Option<ApiLink>,
) -> Result<RunSummary, VmmError> {
    let mut m = match origin {
        Origin::Boot => Machine::boot(config, start, control)?,
        Origin::Restore(snap, files) => {
            let m = Machine::restore(config, snap, files, start, control)?;
            log::info!(
                "restored {} vCPU(s), {} in {:.1} ms",
                config.cpus,
                crate::config::describe_size(config.mem_size),
                start.elapsed().as_secs_f64() * 1000.0
            );
            m
        }
    };
    log::info!(
        "VM set up in {:.1} ms; starting {} vCPU(s)",
        start.elapsed().as_secs_f64() * 1000.0,
        config.cpus
    );
    if let Some(t) = &m.tracer {
        t.explain_run();
    }
    m.resume();
    m.run(api)
}

/// A VM and everything it runs on.
pub struct Machine {
    config: VmConfig,
    vm: Vm,
    control: Arc<VmControl>,
    serial: Arc<Mutex<Serial>>,
    cmos: Arc<Mutex<Cmos>>,
    i8042: Arc<Mutex<I8042>>,
    /// `--trace`.
    tracer: Option<Arc<crate::trace::Tracer>>,
    /// When the vCPU threads were first started (the trace's phase 8).
    started: Option<Instant>,
    virtio: Vec<virtio::Attached>,
    /// vCPUs not running (all of them before start and while paused).
    paused: Vec<Vcpu>,
    /// The threads of running vCPUs; each returns its vCPU.
    running: Vec<JoinHandle<Vcpu>>,
    event_loop: EventLoop,
    /// One thread per disk, serving its queue (src/event_loop.rs).
    disk_threads: Vec<crate::event_loop::IoThread>,
    /// KVM_GET_MSR_INDEX_LIST: the MSRs a snapshot saves.
    msr_list: Vec<u32>,
    /// The host terminal in raw mode while the console is on stdio.
    _raw_terminal: Option<RawTerminal>,
}

impl Machine {
    /// Whether the vCPUs are stopped (before start, or paused).
    pub fn is_paused(&self) -> bool {
        self.running.is_empty()
    }

    /// Starts (or restarts) every vCPU thread.
    pub fn resume(&mut self) {
        self.started.get_or_insert_with(Instant::now);
        self.control.set_pause(false);
        for v in std::mem::take(&mut self.paused) {
            match v.start() {
                Ok(h) => self.running.push(h),
                Err(e) => {
                    self.control.request_stop(StopReason::Fatal(e.to_string()));
                    break;
                }
            }
        }
    }

    /// Stops every vCPU thread between two instructions and keeps the
    /// vCPUs; the devices go on (a paused guest sends them nothing).
    pub fn pause(&mut self) {
        self.control.set_pause(true);
        for h in std::mem::take(&mut self.running) {
            kick_until_done(&h);
            match h.join() {
                Ok(v) => self.paused.push(v),
                Err(_) => self
                    .control
                    .request_stop(StopReason::Fatal("a vCPU thread panicked".into())),
            }
        }
        self.paused.sort_by_key(Vcpu::id);
    }

    /// Runs the event loop (and the API's requests) until the VM stops,
    /// then tears it down.
    pub fn run(mut self, api: Option<ApiLink>) -> Result<RunSummary, VmmError> {
        if let Some(link) = &api {
            self.event_loop.add(link.wake_subscriber());
        }
        let mut loop_result = Ok(());
        while !self.control.stopping() {
            if let Err(e) = self.event_loop.run_once() {
                loop_result = Err(e);
                break;
            }
            if let Some(link) = &api {
                while let Some((request, reply)) = link.next() {
                    let response = self.handle(request);
                    let _ = reply.send(response);
                }
            }
        }
        if let Err(e) = &loop_result {
            self.control.request_stop(StopReason::Fatal(e.to_string()));
        }
        drop(api);
        Ok(self.tear_down())
    }

    /// 9. Tear down: stop and join every vCPU, flush the console.
    fn tear_down(mut self) -> RunSummary {
        let tear_down = Instant::now();
        self.pause();
        // No vCPU notifies a disk any more: let the disks' threads finish.
        for t in self.disk_threads.drain(..) {
            t.stop();
        }
        // Phase 8 ended when the tear-down began; it is recorded once the
        // vCPU threads are joined, so that it follows their last lines.
        if let (Some(t), Some(started)) = (&self.tracer, self.started) {
            t.phase_span(
                8,
                "run: vCPU threads in KVM_RUN, the event loop (src/vcpu/mod.rs, src/event_loop.rs)",
                started,
                tear_down,
            );
        }
        let mut stats = ExitStats::default();
        let mut repairs = Vec::new();
        for v in &self.paused {
            stats.add(&v.stats);
            if let Some(r) = v.repairs() {
                repairs.push(format!("vCPU {}: {}", v.id(), r.summary()));
            }
        }
        self.serial.lock().expect("serial lock").flush();
        let devices = self
            .virtio
            .iter()
            .filter_map(|d| {
                let t = d.transport.lock().expect("virtio lock");
                t.device()
                    .stats()
                    .map(|s| format!("{}: {s}", t.device().name()))
            })
            .collect();
        let reason = self
            .control
            .reason()
            .unwrap_or_else(|| StopReason::Fatal("the VM stopped without a reason".into()));
        RunSummary {
            reason,
            stats,
            repairs,
            devices,
            trace: self.tracer.as_ref().map(|t| {
                t.phase(
                    9,
                    "tear down: stop and join the vCPUs, flush the console (src/vmm/mod.rs)",
                    tear_down,
                );
                let mut out = if t.prints() {
                    t.summary()
                } else {
                    String::new()
                };
                if let Some(written) = t.finish(self.config.cpus) {
                    out.push_str(&format!("kiln: {written}\n"));
                }
                out
            }),
        }
    }
}

/// Kicks a vCPU thread out of KVM_RUN until it has finished.
fn kick_until_done<T>(h: &JoinHandle<T>) {
    use std::os::unix::thread::JoinHandleExt;
    while !h.is_finished() {
        // SAFETY: the thread is not joined yet, so its pthread_t is valid.
        unsafe { libc::pthread_kill(h.as_pthread_t(), crate::vcpu::kick::signal()) };
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
