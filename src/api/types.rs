//! The JSON bodies of Firecracker's REST API, one struct per definition of
//! its swagger file (same names, same field names, same required fields).
//!
//! Optional fields are `Option` with `#[serde(default)]`, so the VMM can
//! tell "absent" from "given". Like Firecracker, bodies refuse unknown
//! fields (except the few definitions Firecracker itself is lax about:
//! `TokenBucket`, `NetworkOverride`, `VsockOverride`). Range checks (vCPU
//! count, CID, MTU...) are the VMM's job; these types only check shape.
//! Everything also serializes, so the VMM can build its GET answers
//! (`GET /machine-config`, `GET /vm/config`) from the same types.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A body that has the right shape but breaks a rule serde cannot express.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// `PUT /snapshot/load` had both `mem_backend` and `mem_file_path`.
    #[error("too many fields: either `mem_backend` or `mem_file_path` exclusively is required")]
    TooManyMemFields,
    /// `PUT /snapshot/load` had neither `mem_backend` nor `mem_file_path`.
    #[error("missing field: either `mem_backend` or `mem_file_path` is required")]
    MissingMemField,
    /// A MAC address that is not six `:`-separated pairs of hex digits.
    #[error("invalid MAC address: {0}")]
    InvalidMac(String),
}

/// `BootSource`: the kernel, its command line and initrd (`PUT /boot-source`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// Host path of the kernel image.
    pub kernel_image_path: PathBuf,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Host path of the initrd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
}

/// `level` of `Logger` (case-insensitive in requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warning,
    /// Information too (the default).
    Info,
    /// Debugging details.
    Debug,
    /// Everything.
    Trace,
    /// Nothing.
    Off,
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.to_ascii_lowercase().as_str() {
            "error" => LogLevel::Error,
            "warning" => LogLevel::Warning,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            "off" => LogLevel::Off,
            _ => {
                return Err(serde::de::Error::custom(format!(
                    "unknown level `{s}`: use Error, Warning, Info, Debug, Trace or Off"
                )))
            }
        })
    }
}

/// `Logger`: where and how much the VMM logs (`PUT /logger`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    /// How much (default `Info`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    /// A named pipe or file the log lines go to (else stderr).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
    /// Put each line's level in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Put each line's origin (file and line) in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only lines from modules whose path starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// `CpuTemplate` (deprecated by Firecracker): CPU features to hide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuTemplate {
    /// Intel C3.
    C3,
    /// Intel T2.
    T2,
    /// Intel T2S.
    T2S,
    /// Intel T2 for Cascade Lake.
    T2CL,
    /// AMD T2.
    T2A,
    /// Arm Neoverse V1 shown as N1.
    V1N1,
    /// No template.
    None,
}

/// `huge_pages` of `MachineConfiguration`: what backs guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    /// Regular 4 KiB pages.
    None,
    /// Transparent huge pages (`madvise(MADV_HUGEPAGE)`).
    Transparent,
    /// Explicit 2 MiB hugetlbfs pages.
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// `MachineConfiguration`: vCPUs, memory and friends (`PUT /machine-config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfiguration {
    /// Number of vCPUs (the swagger allows 1 to 32).
    pub vcpu_count: u8,
    /// Guest memory size in MiB.
    pub mem_size_mib: u64,
    /// Simultaneous multithreading (Firecracker's default: false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// Deprecated CPU template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    /// Dirty page tracking, for diff snapshots (default: false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Huge pages (default: `None`, regular pages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
}

/// `PATCH /machine-config`: a `MachineConfiguration` where every field is
/// optional; only the given ones change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigurationPatch {
    /// New number of vCPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_count: Option<u8>,
    /// New memory size in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_size_mib: Option<u64>,
    /// New SMT setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// New (deprecated) CPU template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    /// New dirty page tracking setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// New huge pages setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
}

impl MachineConfigurationPatch {
    /// True if the patch changes nothing (Firecracker refuses such a PATCH).
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// `TokenBucket`: one bucket of a rate limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBucket {
    /// Capacity, in tokens (bytes or operations).
    pub size: u64,
    /// Initial extra budget, consumed once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill a whole `size`.
    pub refill_time: u64,
}

/// `RateLimiter`: independent bandwidth and operations limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiter {
    /// Bucket of bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    /// Bucket of operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
}

/// `cache_type` of `Drive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// Flush is not offered to the guest (Firecracker's default).
    Unsafe,
    /// Flush is offered, and done with `fsync`.
    Writeback,
}

/// `io_engine` of `Drive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    /// Blocking system calls (Firecracker's default).
    Sync,
    /// io_uring.
    Async,
}

/// `Drive`: a block device (`PUT /drives/{drive_id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// Identifier; equal to the `{drive_id}` of the path.
    pub drive_id: String,
    /// Whether this drive holds the root file system.
    pub is_root_device: bool,
    /// Partition UUID of the root partition (only with `is_root_device`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Caching strategy (default `Unsafe`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<CacheType>,
    /// Read-only drive (virtio-block only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read_only: Option<bool>,
    /// Host path of the backing file (virtio-block only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<PathBuf>,
    /// I/O rate limiter (virtio-block only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
    /// I/O engine (virtio-block only, default `Sync`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
    /// vhost-user-block backend socket (vhost-user-block only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

/// `NetworkInterface`: a virtio-net device backed by a TAP device
/// (`PUT /network-interfaces/{iface_id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// Identifier; equal to the `{iface_id}` of the path.
    pub iface_id: String,
    /// Name of the host TAP device.
    pub host_dev_name: String,
    /// Guest MAC address, `xx:xx:xx:xx:xx:xx` (checked by the server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// MTU to advertise to the guest (the swagger allows 68 to 65535).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Rate limiter of received packets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Rate limiter of sent packets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

impl NetworkInterface {
    /// The guest MAC as bytes, if one was given (parsed as `--net mac=`
    /// is: six pairs of hex digits, not multicast, not all zero).
    pub fn guest_mac_bytes(&self) -> Result<Option<[u8; 6]>, BodyError> {
        self.guest_mac
            .as_deref()
            .map(|m| {
                m.parse::<devices::virtio::net::MacAddr>()
                    .map(|mac| mac.bytes())
                    .map_err(|_| BodyError::InvalidMac(m.to_string()))
            })
            .transpose()
    }
}

/// `Vsock`: a virtio-vsock device proxied to Unix sockets (`PUT /vsock`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// Guest context ID (the swagger wants at least 3).
    pub guest_cid: u32,
    /// Host Unix socket the guest's connections are proxied through.
    pub uds_path: PathBuf,
    /// Deprecated device ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

/// `action_type` of `InstanceActionInfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Flush the metrics.
    FlushMetrics,
    /// Boot the configured VM.
    InstanceStart,
    /// Press Ctrl-Alt-Del on the guest's keyboard (x86 only).
    SendCtrlAltDel,
}

/// `InstanceActionInfo`: a synchronous action (`PUT /actions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceActionInfo {
    /// What to do.
    pub action_type: ActionType,
}

/// `state` of `Vm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Stop the vCPUs (before a snapshot).
    Paused,
    /// Run the vCPUs again.
    Resumed,
}

/// `Vm`: the wanted run state (`PATCH /vm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    /// Paused or resumed.
    pub state: VmState,
}

/// `snapshot_type` of `SnapshotCreateParams`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All of guest memory (the default).
    Full,
    /// Only the memory dirtied since the last snapshot.
    Diff,
}

/// `SnapshotCreateParams` (`PUT /snapshot/create`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    /// File to write guest memory to.
    pub mem_file_path: PathBuf,
    /// File to write the VM state to.
    pub snapshot_path: PathBuf,
    /// Full or diff (default full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_type: Option<SnapshotType>,
}

/// `backend_type` of `MemoryBackend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemoryBackendType {
    /// `backend_path` is a file holding guest memory.
    File,
    /// `backend_path` is a Unix socket of a userfaultfd page-fault handler.
    Uffd,
}

/// `MemoryBackend`: where a restored VM's memory comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryBackend {
    /// File or userfaultfd.
    pub backend_type: MemoryBackendType,
    /// Memory file, or socket of the page-fault handler.
    pub backend_path: PathBuf,
}

/// `NetworkOverride`: another TAP device for an interface of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkOverride {
    /// Interface whose TAP device changes.
    pub iface_id: String,
    /// The new TAP device.
    pub host_dev_name: String,
}

/// `VsockOverride`: another host socket for the vsock device of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockOverride {
    /// The new host Unix socket.
    pub uds_path: PathBuf,
}

/// `huge_pages` of `SnapshotLoadParams`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotHugePages {
    /// Whatever the snapshot says (the default).
    Snapshot,
    /// Regular pages.
    None,
    /// Transparent huge pages.
    Transparent,
    /// 2 MiB hugetlbfs pages (needs a `Uffd` backend).
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// `SnapshotLoadParams` (`PUT /snapshot/load`). Exactly one of
/// `mem_backend` and the deprecated `mem_file_path` must be given; the
/// server checks that, and [`SnapshotLoadParams::memory`] resolves them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadParams {
    /// File holding the VM state.
    pub snapshot_path: PathBuf,
    /// Where guest memory comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_backend: Option<MemoryBackend>,
    /// Deprecated: memory file (same as a `File` backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_file_path: Option<PathBuf>,
    /// Deprecated name of `track_dirty_pages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_diff_snapshots: Option<bool>,
    /// Track dirty pages after loading (for diff snapshots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Resume the VM once loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_vm: Option<bool>,
    /// Other TAP devices for some interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_overrides: Option<Vec<NetworkOverride>>,
    /// Another host socket for the vsock device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
    /// Advance kvmclock by the wall-clock time since the snapshot (x86).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_realtime: Option<bool>,
    /// Huge pages of the restored VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<SnapshotHugePages>,
}

impl SnapshotLoadParams {
    /// The memory backend: `mem_backend`, or a `File` backend made from
    /// `mem_file_path`; an error unless exactly one of them is given.
    pub fn memory(&self) -> Result<MemoryBackend, BodyError> {
        match (&self.mem_backend, &self.mem_file_path) {
            (Some(_), Some(_)) => Err(BodyError::TooManyMemFields),
            (None, None) => Err(BodyError::MissingMemField),
            (Some(backend), None) => Ok(backend.clone()),
            (None, Some(path)) => Ok(MemoryBackend {
                backend_type: MemoryBackendType::File,
                backend_path: path.clone(),
            }),
        }
    }

    /// Whether to track dirty pages: `track_dirty_pages` or its deprecated
    /// name `enable_diff_snapshots`.
    #[allow(dead_code, reason = "for the VMM's snapshot loading")]
    pub fn dirty_page_tracking(&self) -> bool {
        self.track_dirty_pages.unwrap_or(false) || self.enable_diff_snapshots.unwrap_or(false)
    }

    /// True if the body uses a deprecated field.
    pub fn uses_deprecated_fields(&self) -> bool {
        self.mem_file_path.is_some() || self.enable_diff_snapshots.is_some()
    }
}

/// `InstanceInfo`, the answer to `GET /` (built by the VMM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Application name.
    pub app_name: String,
    /// Instance ID.
    pub id: String,
    /// `Not started`, `Running` or `Paused`.
    pub state: String,
    /// Version of the VMM.
    pub vmm_version: String,
}

impl InstanceInfo {
    /// kiln's answer to `GET /` in `state`.
    pub fn kiln(state: &str) -> InstanceInfo {
        InstanceInfo {
            app_name: "kiln".into(),
            id: "anonymous-instance".into(),
            state: state.into(),
            vmm_version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// `FirecrackerVersion`, the answer to `GET /version` (built by the VMM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirecrackerVersion {
    /// Version string.
    pub firecracker_version: String,
}

impl FirecrackerVersion {
    /// kiln's answer to `GET /version`.
    pub fn kiln() -> FirecrackerVersion {
        FirecrackerVersion {
            firecracker_version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// `Error`: the body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    /// What went wrong.
    pub fault_message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn boot_source_fields() {
        let b: BootSource = parse(
            r#"{"kernel_image_path": "/k", "boot_args": "console=ttyS0", "initrd_path": "/i"}"#,
        )
        .unwrap();
        assert_eq!(b.kernel_image_path, PathBuf::from("/k"));
        assert_eq!(b.boot_args.as_deref(), Some("console=ttyS0"));
        assert_eq!(b.initrd_path, Some(PathBuf::from("/i")));
        let b: BootSource = parse(r#"{"kernel_image_path": "/k"}"#).unwrap();
        assert_eq!((b.boot_args, b.initrd_path), (None, None));
        let e = parse::<BootSource>(r#"{"boot_args": "x"}"#).unwrap_err();
        assert!(e.contains("missing field `kernel_image_path`"), "{e}");
        let e = parse::<BootSource>(r#"{"kernel_image_path": "/k", "kernel": 1}"#).unwrap_err();
        assert!(e.contains("unknown field `kernel`"), "{e}");
    }

    #[test]
    fn machine_configuration_fields() {
        let m: MachineConfiguration = parse(
            r#"{"vcpu_count": 2, "mem_size_mib": 1024, "smt": false, "cpu_template": "T2S",
                "track_dirty_pages": true, "huge_pages": "2M"}"#,
        )
        .unwrap();
        assert_eq!((m.vcpu_count, m.mem_size_mib), (2, 1024));
        assert_eq!(m.cpu_template, Some(CpuTemplate::T2S));
        assert_eq!(m.huge_pages, Some(HugePages::Hugetlbfs2M));
        assert_eq!(m.track_dirty_pages, Some(true));
        // Round trip: the VMM answers GET /machine-config with this type.
        let back: serde_json::Value = serde_json::to_value(&m).unwrap();
        assert_eq!(back["huge_pages"], "2M");
        let m: MachineConfiguration = parse(r#"{"vcpu_count": 1, "mem_size_mib": 128}"#).unwrap();
        assert_eq!(m.smt, None);
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"vcpu_count":1,"mem_size_mib":128}"#
        );
        assert!(parse::<MachineConfiguration>(r#"{"vcpu_count": 1}"#).is_err());
        assert!(
            parse::<MachineConfiguration>(r#"{"vcpu_count": 300, "mem_size_mib": 1}"#).is_err()
        );
        assert!(parse::<MachineConfiguration>(r#"{"vcpu_count": -1, "mem_size_mib": 1}"#).is_err());
        assert!(parse::<MachineConfiguration>(
            r#"{"vcpu_count": 1, "mem_size_mib": 1, "huge_pages": "1G"}"#
        )
        .is_err());
    }

    #[test]
    fn machine_configuration_patch() {
        let p: MachineConfigurationPatch = parse(r#"{"mem_size_mib": 256}"#).unwrap();
        assert_eq!(p.mem_size_mib, Some(256));
        assert!(!p.is_empty());
        assert!(parse::<MachineConfigurationPatch>("{}").unwrap().is_empty());
        assert!(parse::<MachineConfigurationPatch>(r#"{"memory": 1}"#).is_err());
    }

    #[test]
    fn drive_fields() {
        let d: Drive = parse(
            r#"{"drive_id": "rootfs", "path_on_host": "/r.ext4", "is_root_device": true,
                "is_read_only": false, "partuuid": "abc-1", "cache_type": "Writeback",
                "io_engine": "Async",
                "rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100},
                                 "ops": {"size": 10, "one_time_burst": 5, "refill_time": 1}}}"#,
        )
        .unwrap();
        assert_eq!(d.drive_id, "rootfs");
        assert!(d.is_root_device);
        assert_eq!(d.cache_type, Some(CacheType::Writeback));
        assert_eq!(d.io_engine, Some(IoEngine::Async));
        let rl = d.rate_limiter.unwrap();
        assert_eq!(rl.bandwidth.unwrap().size, 1000);
        assert_eq!(rl.ops.unwrap().one_time_burst, Some(5));
        // vhost-user-block form: a socket, no path.
        let d: Drive =
            parse(r#"{"drive_id": "v", "is_root_device": false, "socket": "/s"}"#).unwrap();
        assert_eq!(
            (d.path_on_host, d.socket),
            (None, Some(PathBuf::from("/s")))
        );
        assert!(parse::<Drive>(r#"{"drive_id": "d", "path_on_host": "/x"}"#).is_err());
        assert!(parse::<Drive>(
            r#"{"drive_id": "d", "is_root_device": true, "cache_type": "Fast"}"#
        )
        .is_err());
        assert!(parse::<Drive>(
            r#"{"drive_id": "d", "is_root_device": true, "rate_limiter": {"bw": {}}}"#
        )
        .is_err());
    }

    #[test]
    fn network_interface_fields_and_mac() {
        let n: NetworkInterface = parse(
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "AA:fc:00:00:00:01",
                "mtu": 1500, "rx_rate_limiter": {}, "tx_rate_limiter": {"ops": {"size": 1, "refill_time": 1}}}"#,
        )
        .unwrap();
        assert_eq!(n.guest_mac_bytes(), Ok(Some([0xaa, 0xfc, 0, 0, 0, 1])));
        assert_eq!(n.mtu, Some(1500));
        assert_eq!(n.rx_rate_limiter, Some(RateLimiter::default()));
        for bad in [
            "aa:fc:00:00:00",
            "aa:fc:00:00:00:01:02",
            "aa:fc:00:00:00:1",
            "gg:fc:00:00:00:01",
            "+a:fc:00:00:00:01",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            "",
        ] {
            let n = NetworkInterface {
                guest_mac: Some(bad.into()),
                ..n.clone()
            };
            assert_eq!(
                n.guest_mac_bytes(),
                Err(BodyError::InvalidMac(bad.into())),
                "{bad}"
            );
        }
        assert!(parse::<NetworkInterface>(r#"{"iface_id": "eth0"}"#).is_err());
    }

    #[test]
    fn vsock_action_vm() {
        let v: Vsock =
            parse(r#"{"guest_cid": 3, "uds_path": "/v.sock", "vsock_id": "vsock0"}"#).unwrap();
        assert_eq!((v.guest_cid, v.vsock_id.as_deref()), (3, Some("vsock0")));
        assert!(parse::<Vsock>(r#"{"guest_cid": 3}"#).is_err());
        for action in ["InstanceStart", "SendCtrlAltDel", "FlushMetrics"] {
            let a: InstanceActionInfo =
                parse(&format!(r#"{{"action_type": "{action}"}}"#)).unwrap();
            assert_eq!(serde_json::to_value(a).unwrap()["action_type"], action);
        }
        assert!(parse::<InstanceActionInfo>(r#"{"action_type": "Reboot"}"#).is_err());
        let vm: Vm = parse(r#"{"state": "Paused"}"#).unwrap();
        assert_eq!(vm.state, VmState::Paused);
        assert!(parse::<Vm>(r#"{"state": "paused"}"#).is_err());
    }

    #[test]
    fn snapshot_create() {
        let s: SnapshotCreateParams =
            parse(r#"{"mem_file_path": "/m", "snapshot_path": "/s", "snapshot_type": "Diff"}"#)
                .unwrap();
        assert_eq!(s.snapshot_type, Some(SnapshotType::Diff));
        assert!(parse::<SnapshotCreateParams>(r#"{"snapshot_path": "/s"}"#).is_err());
        assert!(parse::<SnapshotCreateParams>(
            r#"{"mem_file_path": "/m", "snapshot_path": "/s", "version": "1"}"#
        )
        .is_err());
    }

    #[test]
    fn snapshot_load_memory() {
        let s: SnapshotLoadParams = parse(
            r#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/u"},
                "track_dirty_pages": true, "resume_vm": true, "clock_realtime": false,
                "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap9"}],
                "vsock_override": {"uds_path": "/v2"}, "huge_pages": "Snapshot"}"#,
        )
        .unwrap();
        let mem = s.memory().unwrap();
        assert_eq!(mem.backend_type, MemoryBackendType::Uffd);
        assert_eq!(mem.backend_path, PathBuf::from("/u"));
        assert!(s.dirty_page_tracking());
        assert!(!s.uses_deprecated_fields());
        assert_eq!(
            s.network_overrides.as_ref().unwrap()[0].host_dev_name,
            "tap9"
        );
        assert_eq!(s.huge_pages, Some(SnapshotHugePages::Snapshot));

        let s: SnapshotLoadParams = parse(
            r#"{"snapshot_path": "/s", "mem_file_path": "/m", "enable_diff_snapshots": true}"#,
        )
        .unwrap();
        assert_eq!(
            s.memory(),
            Ok(MemoryBackend {
                backend_type: MemoryBackendType::File,
                backend_path: "/m".into()
            })
        );
        assert!(s.dirty_page_tracking());
        assert!(s.uses_deprecated_fields());

        let both: SnapshotLoadParams = parse(
            r#"{"snapshot_path": "/s", "mem_file_path": "/m",
                "mem_backend": {"backend_type": "File", "backend_path": "/m"}}"#,
        )
        .unwrap();
        assert_eq!(both.memory(), Err(BodyError::TooManyMemFields));
        let none: SnapshotLoadParams = parse(r#"{"snapshot_path": "/s"}"#).unwrap();
        assert_eq!(none.memory(), Err(BodyError::MissingMemField));
        assert!(!none.dirty_page_tracking());
        assert!(parse::<SnapshotLoadParams>(
            r#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "Disk", "backend_path": "/m"}}"#
        )
        .is_err());
    }

    #[test]
    fn answers_serialize_like_the_swagger() {
        let info = InstanceInfo {
            app_name: "kiln".into(),
            id: "vm0".into(),
            state: "Not started".into(),
            vmm_version: "0.1.0".into(),
        };
        let v = serde_json::to_value(&info).unwrap();
        assert_eq!(v["state"], "Not started");
        let e = serde_json::to_string(&Error {
            fault_message: "no".into(),
        })
        .unwrap();
        assert_eq!(e, r#"{"fault_message":"no"}"#);
        let v = serde_json::to_string(&FirecrackerVersion {
            firecracker_version: "1.0".into(),
        })
        .unwrap();
        assert_eq!(v, r#"{"firecracker_version":"1.0"}"#);
    }
}
