//! Firecracker's way of running a VM: `kiln --api-sock PATH` starts with
//! no VM and takes its configuration over the API (`PUT /boot-source`,
//! `/machine-config`, `/drives/{id}`, `/network-interfaces/{id}`,
//! `/vsock`), then `PUT /actions {"action_type": "InstanceStart"}` boots
//! it, or `PUT /snapshot/load` restores one; `--config-file FILE` gives
//! the same configuration as Firecracker's JSON file and boots at once.
//! Once the VM exists, its requests go to [`crate::vmm::Machine`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;

use crate::api::types::{
    ActionType, BootSource, CacheType, Drive, FirecrackerVersion, InstanceInfo, IoEngine,
    MachineConfiguration, MemoryBackendType, NetworkInterface, SnapshotLoadParams, Vsock,
};
use crate::api::{Request, Response};
use crate::config::{ConsoleMode, DiskConfig, MachineSpec, NetConfig, VmConfig, VsockConfig};
use crate::control::VmControl;
use crate::event_loop::EventLoop;
use crate::vmm::{ApiLink, Machine};

/// Firecracker's answers, word for word.
const BEFORE_START: &str = "The requested operation is not supported before starting the microVM.";
const NO_KERNEL: &str = "Cannot start microvm without kernel configuration.";
const LOAD_AFTER_CONFIG: &str =
    "Loading a microVM snapshot not allowed after configuring boot-specific resources.";

/// Firecracker's default machine: 1 vCPU, 128 MiB.
const DEFAULT_VCPUS: u8 = 1;
const DEFAULT_MEM_MIB: u64 = 128;

/// A Firecracker configuration file (`--config-file`): the bodies of the
/// configuration requests under their path names.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `PUT /boot-source`.
    #[serde(rename = "boot-source")]
    pub boot_source: BootSource,
    /// `PUT /drives/{id}`, in order.
    #[serde(default)]
    pub drives: Vec<Drive>,
    /// `PUT /machine-config`.
    #[serde(rename = "machine-config", default)]
    pub machine_config: Option<MachineConfiguration>,
    /// `PUT /network-interfaces/{id}`, in order.
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    /// `PUT /vsock`.
    #[serde(default)]
    pub vsock: Option<Vsock>,
    /// `PUT /logger`.
    #[serde(default)]
    pub logger: Option<crate::api::types::Logger>,
}

/// What a request before the start leads to.
pub enum Next {
    /// Answer and wait for the next request.
    Answer(Response),
    /// Boot this configuration.
    Boot(Box<VmConfig>),
    /// Restore this snapshot.
    Load(Box<SnapshotLoadParams>),
}

/// The configuration gathered before the start.
#[derive(Debug, Default)]
pub struct Preboot {
    boot_source: Option<BootSource>,
    machine: Option<MachineConfiguration>,
    drives: Vec<Drive>,
    nets: Vec<NetworkInterface>,
    vsock: Option<Vsock>,
}

impl Preboot {
    /// A configuration file's contents as if each part had been PUT.
    pub fn from_file(file: ConfigFile) -> Result<Preboot, String> {
        let mut p = Preboot::default();
        if let Some(l) = &file.logger {
            configure_logger(l)?;
        }
        p.put_boot_source(file.boot_source)?;
        if let Some(m) = file.machine_config {
            p.put_machine(m)?;
        }
        for d in file.drives {
            p.put_drive(d)?;
        }
        for n in file.network_interfaces {
            p.put_net(n)?;
        }
        if let Some(v) = file.vsock {
            p.put_vsock(v)?;
        }
        Ok(p)
    }

    fn configured(&self) -> bool {
        self.boot_source.is_some()
            || self.machine.is_some()
            || !self.drives.is_empty()
            || !self.nets.is_empty()
            || self.vsock.is_some()
    }

    fn put_boot_source(&mut self, b: BootSource) -> Result<(), String> {
        for p in std::iter::once(&b.kernel_image_path).chain(b.initrd_path.as_ref()) {
            if !p.is_file() {
                return Err(format!("{} is not a file that can be read", p.display()));
            }
        }
        self.boot_source = Some(b);
        Ok(())
    }

    fn put_machine(&mut self, m: MachineConfiguration) -> Result<(), String> {
        if m.smt == Some(true) {
            return Err("smt is not supported by kiln: leave it false".into());
        }
        if m.track_dirty_pages == Some(true) {
            return Err("track_dirty_pages (diff snapshots) is not supported by kiln".into());
        }
        if m.cpu_template
            .is_some_and(|t| t != crate::api::types::CpuTemplate::None)
        {
            return Err("CPU templates are not supported by kiln".into());
        }
        if m.huge_pages
            .is_some_and(|h| h != crate::api::types::HugePages::None)
        {
            return Err("huge pages are not supported by kiln: use None".into());
        }
        if m.vcpu_count == 0 || u32::from(m.vcpu_count) > crate::config::MAX_CPUS {
            return Err(format!(
                "vcpu_count {} is out of range: 1 to {}",
                m.vcpu_count,
                crate::config::MAX_CPUS
            ));
        }
        self.machine = Some(m);
        Ok(())
    }

    fn put_drive(&mut self, d: Drive) -> Result<(), String> {
        if d.socket.is_some() || d.path_on_host.is_none() {
            return Err("vhost-user drives are not supported by kiln: give path_on_host".into());
        }
        if d.partuuid.is_some() {
            return Err("partuuid is not supported by kiln: the root drive is /dev/vda".into());
        }
        if d.rate_limiter.is_some() {
            return Err("rate limiters are not supported by kiln".into());
        }
        if d.io_engine == Some(IoEngine::Async) {
            return Err("io_engine Async is not supported by kiln: use Sync".into());
        }
        // Writeback and Unsafe are both served: kiln honours the guest's
        // flushes either way.
        let _ = d.cache_type.unwrap_or(CacheType::Unsafe);
        if d.is_root_device
            && self
                .drives
                .iter()
                .any(|o| o.is_root_device && o.drive_id != d.drive_id)
        {
            return Err("A root block device already exists!".into());
        }
        match self.drives.iter_mut().find(|o| o.drive_id == d.drive_id) {
            Some(o) => *o = d,
            None => self.drives.push(d),
        }
        Ok(())
    }

    fn put_net(&mut self, n: NetworkInterface) -> Result<(), String> {
        if n.rx_rate_limiter.is_some() || n.tx_rate_limiter.is_some() {
            return Err("rate limiters are not supported by kiln".into());
        }
        if n.mtu.is_some() {
            return Err("mtu is not supported by kiln: the guest's MTU is 1500".into());
        }
        n.guest_mac_bytes().map_err(|e| e.to_string())?;
        if let Some(o) = self
            .nets
            .iter()
            .find(|o| o.host_dev_name == n.host_dev_name && o.iface_id != n.iface_id)
        {
            return Err(format!(
                "the TAP device {} is already used by {}",
                n.host_dev_name, o.iface_id
            ));
        }
        match self.nets.iter_mut().find(|o| o.iface_id == n.iface_id) {
            Some(o) => *o = n,
            None => self.nets.push(n),
        }
        Ok(())
    }

    fn put_vsock(&mut self, v: Vsock) -> Result<(), String> {
        if v.guest_cid < 3 {
            return Err(format!(
                "guest_cid {} is reserved: use 3 or above",
                v.guest_cid
            ));
        }
        self.vsock = Some(v);
        Ok(())
    }

    /// The configuration to boot, checked as the command line's is.
    pub fn vm_config(&self) -> Result<VmConfig, String> {
        VmConfig::from_spec(self.spec()?).map_err(|e| e.to_string())
    }

    /// The machine the requests so far describe, not yet checked.
    fn spec(&self) -> Result<MachineSpec, String> {
        let boot = self.boot_source.as_ref().ok_or(NO_KERNEL)?;
        let (cpus, mib) = self
            .machine
            .as_ref()
            .map_or((DEFAULT_VCPUS, DEFAULT_MEM_MIB), |m| {
                (m.vcpu_count, m.mem_size_mib)
            });
        // The root drive is the guest's first disk (/dev/vda).
        let mut drives: Vec<&Drive> = self.drives.iter().filter(|d| d.is_root_device).collect();
        drives.extend(self.drives.iter().filter(|d| !d.is_root_device));
        let disks = drives
            .iter()
            .map(|d| DiskConfig {
                path: d.path_on_host.clone().unwrap_or_default(),
                read_only: d.is_read_only.unwrap_or(false),
                snapshot: false,
                // virtio-blk's ID holds 20 bytes.
                id: Some(d.drive_id.clone()).filter(|id| id.len() <= crate::config::DISK_ID_MAX),
            })
            .collect();
        let nets = self
            .nets
            .iter()
            .map(|n| NetConfig {
                id: Some(n.iface_id.clone()),
                tap: n.host_dev_name.clone(),
                mac: n.guest_mac.clone(),
            })
            .collect();
        let spec = MachineSpec {
            kernel: boot.kernel_image_path.clone(),
            initrd: boot.initrd_path.clone(),
            cmdline: boot.boot_args.clone(),
            cpus: i64::from(cpus),
            mem_size: mib
                .checked_mul(1 << 20)
                .ok_or("mem_size_mib is too large")?,
            no_acpi: false,
            console: ConsoleMode::Stdio,
            disks,
            root_disk: drives.first().is_some_and(|d| d.is_root_device),
            nets,
            vsock: self.vsock.as_ref().map(|v| VsockConfig {
                path: v.uds_path.clone(),
                cid: u64::from(v.guest_cid),
            }),
            kvm_device: PathBuf::from("/dev/kvm"),
            verbosity: 0,
        };
        Ok(spec)
    }

    /// Answers a request made before the VM exists.
    pub fn handle(&mut self, request: Request) -> Next {
        let put = |r: Result<(), String>| {
            Next::Answer(match r {
                Ok(()) => Response::NoContent,
                Err(e) => Response::BadRequest(e),
            })
        };
        match request {
            Request::GetInstanceInfo => {
                Next::Answer(Response::json(&InstanceInfo::kiln("Not started")))
            }
            Request::GetVersion => Next::Answer(Response::json(&FirecrackerVersion::kiln())),
            Request::GetMachineConfig => Next::Answer(Response::json(
                &self.machine.clone().unwrap_or(MachineConfiguration {
                    vcpu_count: DEFAULT_VCPUS,
                    mem_size_mib: DEFAULT_MEM_MIB,
                    smt: Some(false),
                    cpu_template: None,
                    track_dirty_pages: Some(false),
                    huge_pages: None,
                }),
            )),
            Request::GetVmConfig => Next::Answer(Response::Json(serde_json::json!({
                "boot-source": self.boot_source,
                "drives": self.drives,
                "machine-config": self.machine,
                "network-interfaces": self.nets,
                "vsock": self.vsock,
            }))),
            Request::PutBootSource(b) => put(self.put_boot_source(b)),
            Request::PutMachineConfig(m) => put(self.put_machine(m)),
            Request::PatchMachineConfig(p) => {
                let mut m = self.machine.clone().unwrap_or(MachineConfiguration {
                    vcpu_count: DEFAULT_VCPUS,
                    mem_size_mib: DEFAULT_MEM_MIB,
                    smt: None,
                    cpu_template: None,
                    track_dirty_pages: None,
                    huge_pages: None,
                });
                m.vcpu_count = p.vcpu_count.unwrap_or(m.vcpu_count);
                m.mem_size_mib = p.mem_size_mib.unwrap_or(m.mem_size_mib);
                m.smt = p.smt.or(m.smt);
                m.cpu_template = p.cpu_template.or(m.cpu_template);
                m.track_dirty_pages = p.track_dirty_pages.or(m.track_dirty_pages);
                m.huge_pages = p.huge_pages.or(m.huge_pages);
                put(self.put_machine(m))
            }
            Request::PutDrive(d) => put(self.put_drive(d)),
            Request::PutNetworkInterface(n) => put(self.put_net(n)),
            Request::PutVsock(v) => put(self.put_vsock(v)),
            Request::PutLogger(l) => put(configure_logger(&l)),
            Request::Action(a) => match a.action_type {
                ActionType::InstanceStart => match self.vm_config() {
                    Ok(c) => Next::Boot(Box::new(c)),
                    Err(e) => Next::Answer(Response::BadRequest(e)),
                },
                ActionType::FlushMetrics | ActionType::SendCtrlAltDel => {
                    Next::Answer(Response::BadRequest(BEFORE_START.into()))
                }
            },
            Request::PatchVm(_) | Request::CreateSnapshot(_) => {
                Next::Answer(Response::BadRequest(BEFORE_START.into()))
            }
            Request::LoadSnapshot(p) => {
                if self.configured() {
                    Next::Answer(Response::BadRequest(LOAD_AFTER_CONFIG.into()))
                } else {
                    Next::Load(Box::new(p))
                }
            }
        }
    }
}

/// `PUT /logger`: kiln's log lines to a file or named pipe, at a level.
fn configure_logger(l: &crate::api::types::Logger) -> Result<(), String> {
    use crate::api::types::LogLevel;
    let level = l.level.map(|level| match level {
        LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Warning => log::LevelFilter::Warn,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Trace => log::LevelFilter::Trace,
        LogLevel::Off => log::LevelFilter::Off,
    });
    crate::logger::configure(crate::logger::Settings {
        level,
        path: l.log_path.as_deref(),
        show_level: l.show_level.unwrap_or(false),
        show_origin: l.show_log_origin.unwrap_or(false),
        module: l.module.clone(),
    })
}

/// Reads a Firecracker configuration file.
pub fn read_config_file(path: &Path) -> Result<Preboot, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the configuration file {}: {e}", path.display()))?;
    let file: ConfigFile = serde_json::from_str(&text).map_err(|e| {
        format!(
            "the configuration file {} is not valid: {e}",
            path.display()
        )
    })?;
    Preboot::from_file(file).map_err(|e| format!("the configuration file {}: {e}", path.display()))
}

/// The snapshot a `PUT /snapshot/load` names, with its overrides applied:
/// the configuration to restore it into, the snapshot and its memory file.
pub fn load_params(
    p: &SnapshotLoadParams,
) -> Result<(VmConfig, crate::snapshot::Snapshot, crate::snapshot::Files), String> {
    let memory = p.memory().map_err(|e| e.to_string())?;
    if memory.backend_type == MemoryBackendType::Uffd {
        return Err("the Uffd memory backend is not supported by kiln: use File".into());
    }
    if p.dirty_page_tracking() {
        return Err("track_dirty_pages (diff snapshots) is not supported by kiln".into());
    }
    if p.clock_realtime == Some(true) {
        return Err("clock_realtime needs kvmclock, which kiln does not offer".into());
    }
    if p.huge_pages.is_some_and(|h| {
        !matches!(
            h,
            crate::api::types::SnapshotHugePages::None
                | crate::api::types::SnapshotHugePages::Snapshot
        )
    }) {
        return Err("huge pages are not supported by kiln".into());
    }
    let snap = crate::snapshot::read_state(&p.snapshot_path).map_err(|e| e.to_string())?;
    let mut machine = snap.machine.clone();
    for o in p.network_overrides.iter().flatten() {
        let net = machine
            .nets
            .iter_mut()
            .enumerate()
            .find(|(i, n)| n.iface_id(*i) == o.iface_id)
            .map(|(_, n)| n)
            .ok_or_else(|| format!("the snapshot has no network interface {}", o.iface_id))?;
        net.tap = o.host_dev_name.clone();
    }
    if let Some(v) = &p.vsock_override {
        let vsock = machine
            .vsock
            .as_mut()
            .ok_or("the snapshot has no vsock device to override")?;
        vsock.path = v.uds_path.clone();
    }
    let config =
        VmConfig::for_machine(&machine, ConsoleMode::Stdio, 0).map_err(|e| e.to_string())?;
    let files = crate::snapshot::Files {
        state: p.snapshot_path.clone(),
        memory: memory.backend_path,
    };
    Ok((config, snap, files))
}

/// `kiln --api-sock PATH [--config-file FILE]`: serves the API until the
/// VM is started (or boots the file's configuration at once), then runs
/// the VM. Returns the exit code.
pub fn serve(api_sock: Option<&Path>, config_file: Option<&Path>, start: Instant) -> i32 {
    crate::logger::init(1);
    if let Err(e) = crate::event_loop::block_stop_signals() {
        log::error!("{e}");
        return crate::EXIT_FAILURE;
    }
    let link = match api_sock.map(ApiLink::start).transpose() {
        Ok(l) => l,
        Err(e) => {
            log::error!("{e}");
            return crate::EXIT_USAGE;
        }
    };
    let from_file = match config_file.map(read_config_file).transpose() {
        Ok(p) => p,
        Err(e) => {
            log::error!("{e}");
            return crate::EXIT_USAGE;
        }
    };
    let tail = crate::console::ConsoleTail::default();
    let machine = match from_file {
        Some(pre) => pre
            .vm_config()
            .and_then(|c| build(c, None, &tail, start))
            .map(|(m, c)| (m, c, true))
            .map_err(|e| {
                log::error!("{e}");
                crate::EXIT_USAGE
            }),
        None => match &link {
            Some(link) => wait_for_start(link, &tail, start),
            None => {
                log::error!("give --api-sock PATH, --config-file FILE, or both");
                return crate::EXIT_USAGE;
            }
        },
    };
    let (mut machine, config, resume) = match machine {
        Ok(m) => m,
        Err(code) => return code,
    };
    if resume {
        machine.resume();
    }
    crate::report(machine.run(link), &config, &tail, start)
}

/// Serves configuration requests until one starts or loads a VM. Errors
/// are the exit code (a stop signal before the start).
fn wait_for_start(
    link: &ApiLink,
    tail: &crate::console::ConsoleTail,
    start: Instant,
) -> Result<(Machine, VmConfig, bool), i32> {
    let control = Arc::new(VmControl::new(1).map_err(|_| crate::EXIT_FAILURE)?);
    let mut events = EventLoop::new(control.clone()).map_err(|e| {
        log::error!("{e}");
        crate::EXIT_FAILURE
    })?;
    events.add(link.wake_subscriber());
    let mut pre = Preboot::default();
    log::info!("waiting for the VM's configuration on the API socket");
    loop {
        if let Err(e) = events.run_once() {
            log::error!("{e}");
            return Err(crate::EXIT_FAILURE);
        }
        if let Some(reason) = control.reason() {
            log::info!("stopped before the VM was started: {reason:?}");
            return Err(reason.exit_code());
        }
        while let Some((request, reply)) = link.next() {
            let built = match pre.handle(request) {
                Next::Answer(r) => {
                    let _ = reply.send(r);
                    continue;
                }
                Next::Boot(config) => build(*config, None, tail, start).map(|(m, c)| (m, c, true)),
                Next::Load(p) => match load_params(&p) {
                    Ok((config, snap, files)) => build(config, Some((&snap, &files)), tail, start)
                        .map(|(m, c)| (m, c, p.resume_vm == Some(true))),
                    Err(e) => {
                        let _ = reply.send(Response::BadRequest(e));
                        continue;
                    }
                },
            };
            match built {
                Ok(m) => {
                    let _ = reply.send(Response::NoContent);
                    return Ok(m);
                }
                Err(e) => {
                    let _ = reply.send(Response::BadRequest(e));
                }
            }
        }
    }
}

/// Builds (boots or restores) the machine for `config`, its console's
/// last bytes kept in `tail` (for the panic line).
fn build(
    mut config: VmConfig,
    restore: Option<(&crate::snapshot::Snapshot, &crate::snapshot::Files)>,
    tail: &crate::console::ConsoleTail,
    start: Instant,
) -> Result<(Machine, VmConfig), String> {
    config.console_tail = Some(tail.clone());
    let control = Arc::new(VmControl::new(config.cpus.into()).map_err(|e| e.to_string())?);
    let m = match restore {
        None => Machine::boot(&config, start, control),
        Some((snap, files)) => Machine::restore(&config, snap, files, start, control),
    }
    .map_err(|e| e.to_string())?;
    Ok((m, config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drive(id: &str, path: &Path, root: bool) -> Drive {
        serde_json::from_value(serde_json::json!({
            "drive_id": id, "path_on_host": path, "is_root_device": root, "is_read_only": !root,
        }))
        .unwrap()
    }

    fn answer(n: Next) -> Response {
        match n {
            Next::Answer(r) => r,
            _ => panic!("expected an answer"),
        }
    }

    #[test]
    fn drives_keep_their_order_with_the_root_first_and_replace_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"checked when the VM starts").unwrap();
        let img = |n: &str| {
            let p = dir.path().join(n);
            std::fs::write(&p, vec![0u8; 4096]).unwrap();
            p
        };
        let (a, b, r) = (img("a.img"), img("b.img"), img("root.img"));
        let mut pre = Preboot::default();
        assert!(!pre.configured());
        pre.put_boot_source(BootSource {
            kernel_image_path: kernel,
            boot_args: Some("quiet".into()),
            initrd_path: None,
        })
        .unwrap();
        pre.put_drive(drive("data", &a, false)).unwrap();
        pre.put_drive(drive("rootfs", &r, true)).unwrap();
        pre.put_drive(drive("scratch", &b, false)).unwrap();
        assert!(pre.put_drive(drive("other", &a, true)).is_err(), "one root");
        let c = pre.spec().unwrap();
        let paths: Vec<_> = c.disks.iter().map(|d| d.path.clone()).collect();
        assert_eq!(paths, [r, a, b.clone()]);
        assert!(c.root_disk);
        assert_eq!(
            (c.cpus, c.mem_size),
            (1, 128 << 20),
            "Firecracker's defaults"
        );
        assert_eq!(c.disks[1].id.as_deref(), Some("data"));
        assert!(c.disks[1].read_only && !c.disks[0].read_only);
        assert_eq!(c.cmdline.as_deref(), Some("quiet"));
        // A PUT with a known id replaces that drive in its place.
        pre.put_drive(drive("data", &b, false)).unwrap();
        assert_eq!(pre.drives.len(), 3);
        assert_eq!(pre.spec().unwrap().disks[1].path, b);
    }

    #[test]
    fn machine_config_is_checked_and_patched() {
        let mut pre = Preboot::default();
        let m =
            |v: serde_json::Value| -> MachineConfiguration { serde_json::from_value(v).unwrap() };
        for bad in [
            serde_json::json!({"vcpu_count": 0, "mem_size_mib": 64}),
            serde_json::json!({"vcpu_count": 33, "mem_size_mib": 64}),
            serde_json::json!({"vcpu_count": 2, "mem_size_mib": 64, "smt": true}),
            serde_json::json!({"vcpu_count": 2, "mem_size_mib": 64, "track_dirty_pages": true}),
            serde_json::json!({"vcpu_count": 2, "mem_size_mib": 64, "huge_pages": "2M"}),
        ] {
            assert!(pre.put_machine(m(bad.clone())).is_err(), "{bad}");
        }
        assert!(!pre.configured());
        let patch = serde_json::from_value(serde_json::json!({"mem_size_mib": 256})).unwrap();
        assert_eq!(
            answer(pre.handle(Request::PatchMachineConfig(patch))),
            Response::NoContent
        );
        assert_eq!(
            pre.machine.as_ref().map(|m| (m.vcpu_count, m.mem_size_mib)),
            Some((1, 256))
        );
        assert!(pre.configured());
        assert!(matches!(
            answer(pre.handle(Request::Action(serde_json::from_value(
                serde_json::json!({"action_type": "InstanceStart"})
            ).unwrap()))),
            Response::BadRequest(m) if m == NO_KERNEL
        ));
    }
}
