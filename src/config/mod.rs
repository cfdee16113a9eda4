//! The VM's configuration as plain data, and every check of user input that
//! can be made before touching KVM. Each error is one line that names the
//! problem and what to do about it.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use boot::loader;

use crate::cli::RunArgs;

mod parse;
pub use parse::{
    describe_size, parse_console, parse_disk, parse_net, parse_size, parse_vsock, DISK_ID_MAX,
};

/// Bad user input. All of these end kiln with exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--trace=FILTER` does not parse (the message names the term).
    #[error("{0}")]
    Trace(String),
    /// KILN_TIMER_GAP_MS is not a number of milliseconds kiln accepts.
    #[error("KILN_TIMER_GAP_MS={0:?} is not a whole number of milliseconds from 0 (no timer pacing) to {max}", max = crate::pvm::timer::MAX_GAP_MS)]
    TimerGap(String),
    /// A file could not be opened.
    #[error("cannot open {what} {path}: {source}; check the path and its permissions")]
    Open {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A path names a directory or a device rather than a file.
    #[error("{what} {path} is not a regular file")]
    NotAFile {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// The kernel file is not a kernel.
    #[error("{path} is not a Linux kernel (expected an ELF vmlinux or a bzImage)")]
    NotAKernel {
        /// The path given.
        path: PathBuf,
    },
    /// A kernel file that is cut short or not a kernel after all.
    #[error("kernel {path} cannot be booted: {source}; give kiln a whole vmlinux or bzImage")]
    BadKernel {
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        source: loader::LoaderError,
    },
    /// An empty initrd.
    #[error("initrd {path} is empty")]
    EmptyInitrd {
        /// The path given.
        path: PathBuf,
    },
    /// --memory did not parse.
    #[error("invalid --memory '{0}': use a size such as 128M, 1G or 1536M")]
    MemoryParse(String),
    /// --memory too small.
    #[error("--memory {got} is too small: kiln needs at least {min} MiB")]
    MemoryTooSmall {
        /// What was asked for, as [`describe_size`] gives it.
        got: String,
        /// The minimum, MiB.
        min: u64,
    },
    /// --memory larger than the host.
    #[error("--memory {got} exceeds this host's RAM ({host} MiB); ask for less")]
    MemoryTooLarge {
        /// What was asked for, as [`describe_size`] gives it.
        got: String,
        /// Host RAM, MiB.
        host: u64,
    },
    /// --memory not a multiple of the page size.
    #[error("--memory must be a multiple of 4 KiB")]
    MemoryUnaligned,
    /// --cpus 0 or less.
    #[error("--cpus must be at least 1")]
    NoCpus,
    /// --cpus above kiln's limit.
    #[error("--cpus {got} is more than kiln supports ({max})")]
    TooManyCpus {
        /// What was asked for.
        got: i64,
        /// The limit.
        max: u32,
    },
    /// A --disk option did not parse.
    #[error("invalid --disk '{spec}': {why}; use PATH[,ro|,snapshot][,id=NAME]")]
    DiskSpec {
        /// What was given.
        spec: String,
        /// What is wrong with it.
        why: String,
    },
    /// --root-disk without a disk.
    #[error("--root-disk needs a --disk to boot from")]
    RootDiskWithoutDisk,
    /// One image given twice (by any path).
    #[error("--disk {second} is the same file as --disk {first}: give each disk once")]
    DiskTwice {
        /// The first path naming it.
        first: PathBuf,
        /// The later one.
        second: PathBuf,
    },
    /// One tap given twice.
    #[error("--net tap={0} is given twice: each card needs its own tap")]
    TapTwice(String),
    /// The console file is one of the VM's inputs.
    #[error("--console file:{console} is the VM's {what} {path}: kiln would write the console into it; give the console its own file")]
    ConsoleIsInput {
        /// The console path.
        console: PathBuf,
        /// "kernel", "initrd" or "disk image".
        what: &'static str,
        /// The input's path as given.
        path: PathBuf,
    },
    /// A --net option did not parse.
    #[error("invalid --net '{spec}': {why}; use tap=NAME[,mac=MAC]")]
    NetSpec {
        /// What was given.
        spec: String,
        /// What is wrong with it.
        why: String,
    },
    /// A --vsock option did not parse.
    #[error("invalid --vsock '{spec}': {why}; use PATH[,cid=N] with N from 3 to 4294967294")]
    VsockSpec {
        /// What was given.
        spec: String,
        /// What is wrong with it.
        why: String,
    },
    /// Plain `kiln run` without --kernel.
    #[error("kiln run needs --kernel PATH, or a command after -- to run in the default sandbox guest (e.g. kiln run -- uname -a)")]
    NoKernel,
    /// A sandbox option without a command.
    #[error("{0} only applies to a command given after --, e.g. kiln run {0} ... -- CMD")]
    SandboxOptionWithoutCommand(&'static str),
    /// --console did not parse.
    #[error("invalid --console '{0}': use stdio, none or file:PATH")]
    Console(String),
}

/// Where the serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleMode {
    /// Output to stdout, input from stdin.
    Stdio,
    /// Output discarded, no input.
    None,
    /// Output appended to a file, no input.
    File(PathBuf),
}

/// One --disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskConfig {
    /// The image file.
    pub path: PathBuf,
    /// Guest writes fail; the file is opened read-only.
    pub read_only: bool,
    /// Guest writes go to a temporary copy-on-write layer; the file is
    /// opened read-only and never changes.
    pub snapshot: bool,
    /// What GET_ID returns (at most 20 bytes).
    pub id: Option<String>,
}

/// One --net.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetConfig {
    /// Firecracker's iface_id, when the card came through the API.
    pub id: Option<String>,
    /// The existing tap device's name.
    pub tap: String,
    /// The guest's MAC address as given (checked when the card is built);
    /// a stable one is generated when absent.
    pub mac: Option<String>,
}

impl NetConfig {
    /// The card's name for the API (`iface_id`): its id, or `net<index>`
    /// for a card from the command line.
    pub fn iface_id(&self, index: usize) -> String {
        self.id.clone().unwrap_or_else(|| format!("net{index}"))
    }
}

/// The --vsock device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VsockConfig {
    /// The host-side Unix socket.
    pub path: PathBuf,
    /// The guest's context ID.
    pub cid: u64,
}

/// A machine described by its parts, before [`VmConfig::from_spec`]
/// checks them.
#[derive(Debug, Clone)]
pub struct MachineSpec {
    /// Kernel image.
    pub kernel: PathBuf,
    /// Optional initrd.
    pub initrd: Option<PathBuf>,
    /// Command line appended to kiln's defaults.
    pub cmdline: Option<String>,
    /// vCPUs as asked for (checked against kiln's limit).
    pub cpus: i64,
    /// RAM in bytes.
    pub mem_size: u64,
    /// No ACPI tables.
    pub no_acpi: bool,
    /// Serial console routing.
    pub console: ConsoleMode,
    /// Disks in guest order.
    pub disks: Vec<DiskConfig>,
    /// The first disk is the root file system.
    pub root_disk: bool,
    /// NICs in guest order.
    pub nets: Vec<NetConfig>,
    /// The vsock device.
    pub vsock: Option<VsockConfig>,
    /// /dev/kvm.
    pub kvm_device: PathBuf,
    /// Log verbosity.
    pub verbosity: u8,
}

/// Everything needed to build and run one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Kernel image.
    pub kernel: PathBuf,
    /// Optional initrd.
    pub initrd: Option<PathBuf>,
    /// User's command line (appended to kiln's defaults).
    pub cmdline: Option<String>,
    /// Number of vCPUs.
    pub cpus: u8,
    /// Write no ACPI tables (--no-acpi): MP table and command-line devices only.
    pub no_acpi: bool,
    /// RAM in bytes.
    pub mem_size: u64,
    /// Serial console routing.
    pub console: ConsoleMode,
    /// Keep the console's last bytes here too (sandboxes).
    pub console_tail: Option<crate::console::ConsoleTail>,
    /// virtio disks, in guest order (vda, vdb, ...).
    pub disks: Vec<DiskConfig>,
    /// Mount the first disk as the root file system.
    pub root_disk: bool,
    /// virtio network cards, in guest order.
    pub nets: Vec<NetConfig>,
    /// The vsock device, if any.
    pub vsock: Option<VsockConfig>,
    /// /dev/kvm.
    pub kvm_device: PathBuf,
    /// 0 = normal, 1 = -v, 2 = -vv.
    pub verbosity: u8,
    /// On kvm_pvm hosts: the least time from a guest timer write to its
    /// interrupt (`KILN_TIMER_GAP_MS`, see `pvm::timer`).
    pub timer_gap: std::time::Duration,
    /// `--trace` and `--trace-out` (None: neither).
    pub trace: Option<crate::trace::TraceConfig>,
}

/// Smallest guest kiln will build.
pub const MIN_MEMORY_MIB: u64 = 32;
/// kiln's own vCPU limit: every vCPU must fit in the MP table in the EBDA.
pub const MAX_CPUS: u32 = 32;

/// The host's RAM in bytes, from /proc/meminfo.
pub fn host_ram_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn open_file(what: &'static str, path: &Path) -> Result<File, ConfigError> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: a FIFO must not hang kiln waiting for a writer; it is
    // refused below like any other file that is not a regular one.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| ConfigError::Open {
            what,
            path: path.to_path_buf(),
            source,
        })?;
    let meta = file.metadata().map_err(|source| ConfigError::Open {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(ConfigError::NotAFile {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(file)
}

/// A file's identity, (device, inode), following symlinks; None when it
/// does not exist (yet).
fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Checks the memory size against kiln's minimum and the host's RAM.
pub fn check_memory(mem_size: u64, host_ram: Option<u64>) -> Result<(), ConfigError> {
    if mem_size < MIN_MEMORY_MIB << 20 {
        return Err(ConfigError::MemoryTooSmall {
            got: describe_size(mem_size),
            min: MIN_MEMORY_MIB,
        });
    }
    if !mem_size.is_multiple_of(4096) {
        return Err(ConfigError::MemoryUnaligned);
    }
    if let Some(host) = host_ram {
        if mem_size > host {
            return Err(ConfigError::MemoryTooLarge {
                got: describe_size(mem_size),
                host: host >> 20,
            });
        }
    }
    Ok(())
}

/// The timer-pacing gap `KILN_TIMER_GAP_MS` asks for (see `pvm::timer`).
fn timer_gap() -> Result<std::time::Duration, ConfigError> {
    let env = std::env::var("KILN_TIMER_GAP_MS").ok();
    crate::pvm::timer::min_gap(env.as_deref())
        .ok_or_else(|| ConfigError::TimerGap(env.unwrap_or_default()))
}

/// Checks the vCPU count against kiln's own limit (KVM's is checked when
/// /dev/kvm is open).
pub fn check_cpus(cpus: i64) -> Result<u8, ConfigError> {
    match cpus {
        ..=0 => Err(ConfigError::NoCpus),
        n if n > i64::from(MAX_CPUS) => Err(ConfigError::TooManyCpus {
            got: n,
            max: MAX_CPUS,
        }),
        n => Ok(n as u8),
    }
}

/// `--trace` / `--trace=FILTER` (the empty string is plain `--trace`)
/// and `--trace-out FILE`.
fn parse_trace(args: &RunArgs) -> Result<Option<crate::trace::TraceConfig>, ConfigError> {
    let print = args
        .trace
        .as_deref()
        .map(|f| crate::trace::filter::Filter::parse((!f.is_empty()).then_some(f)))
        .transpose()
        .map_err(ConfigError::Trace)?;
    if print.is_none() && args.trace_out.is_none() {
        return Ok(None);
    }
    Ok(Some(crate::trace::TraceConfig {
        print,
        file: args.trace_out.clone(),
        explain: None,
    }))
}

impl VmConfig {
    /// Builds and validates a configuration from `kiln run`'s arguments.
    pub fn from_args(args: &RunArgs) -> Result<Self, ConfigError> {
        if args.command.is_empty() {
            for (given, name) in [
                (args.timeout.is_some(), "--timeout"),
                (!args.env.is_empty(), "--env"),
                (args.workdir.is_some(), "--workdir"),
                (args.rootfs.is_some(), "--rootfs"),
                (!args.copy_in.is_empty(), "--copy-in"),
                (args.tty, "-t"),
                (!args.copy_out.is_empty(), "--copy-out"),
                (args.no_template, "--no-template"),
            ] {
                if given {
                    return Err(ConfigError::SandboxOptionWithoutCommand(name));
                }
            }
        }
        let kernel = args.kernel.clone().ok_or(ConfigError::NoKernel)?;
        let mem_size = parse_size(&args.memory)
            .ok_or_else(|| ConfigError::MemoryParse(args.memory.clone()))?;
        let console = parse_console(args.console.as_deref().unwrap_or("stdio"))?;
        let disks = args
            .disks
            .iter()
            .map(|s| parse_disk(s))
            .collect::<Result<Vec<_>, _>>()?;
        let nets = args
            .nets
            .iter()
            .map(|s| parse_net(s))
            .collect::<Result<Vec<_>, _>>()?;
        let vsock = args.vsock.as_deref().map(parse_vsock).transpose()?;
        let trace = parse_trace(args)?;
        let mut config = Self::from_spec(MachineSpec {
            kernel,
            initrd: args.initrd.clone(),
            cmdline: args.cmdline.clone(),
            cpus: args.cpus,
            mem_size,
            no_acpi: args.no_acpi,
            console,
            disks,
            root_disk: args.root_disk,
            nets,
            vsock,
            kvm_device: args.kvm_device.clone(),
            verbosity: args.verbose,
        })?;
        config.trace = trace;
        Ok(config)
    }

    /// Checks a machine described by its parts (from the command line, a
    /// Firecracker configuration file or API requests) and builds its
    /// configuration.
    pub fn from_spec(spec: MachineSpec) -> Result<Self, ConfigError> {
        let kernel_path = spec.kernel;
        let mut kernel = open_file("kernel", &kernel_path)?;
        loader::check_file(&mut kernel).map_err(|e| match e {
            loader::LoaderError::UnknownFormat | loader::LoaderError::Read(_) => {
                ConfigError::NotAKernel {
                    path: kernel_path.clone(),
                }
            }
            source => ConfigError::BadKernel {
                path: kernel_path.clone(),
                source,
            },
        })?;
        if let Some(path) = &spec.initrd {
            let f = open_file("initrd", path)?;
            if f.metadata().map(|m| m.len()).unwrap_or(0) == 0 {
                return Err(ConfigError::EmptyInitrd { path: path.clone() });
            }
        }
        let mem_size = spec.mem_size;
        check_memory(mem_size, host_ram_bytes())?;
        let cpus = check_cpus(spec.cpus)?;
        let console = spec.console;
        let disks = spec.disks;
        // Every file the VM reads, by identity (device and inode), so that
        // no path or symlink hides that two of them are one.
        let mut inputs: Vec<(&'static str, &Path, (u64, u64))> = Vec::new();
        let named = [
            ("kernel", Some(kernel_path.as_path())),
            ("initrd", spec.initrd.as_deref()),
        ];
        for (what, path) in named {
            if let Some((path, id)) = path.and_then(|p| Some((p, file_id(p)?))) {
                inputs.push((what, path, id));
            }
        }
        for d in &disks {
            let meta = std::fs::metadata(&d.path).map_err(|source| ConfigError::Open {
                what: "disk image",
                path: d.path.clone(),
                source,
            })?;
            let id = (meta.dev(), meta.ino());
            if let Some((_, first, _)) = inputs
                .iter()
                .find(|(what, _, other)| *what == "disk image" && *other == id)
            {
                return Err(ConfigError::DiskTwice {
                    first: first.to_path_buf(),
                    second: d.path.clone(),
                });
            }
            inputs.push(("disk image", &d.path, id));
        }
        if let ConsoleMode::File(console) = &console {
            if let Some(id) = file_id(console) {
                if let Some((what, path, _)) = inputs.iter().find(|(_, _, other)| *other == id) {
                    return Err(ConfigError::ConsoleIsInput {
                        console: console.clone(),
                        what,
                        path: path.to_path_buf(),
                    });
                }
            }
        }
        if spec.root_disk && disks.is_empty() {
            return Err(ConfigError::RootDiskWithoutDisk);
        }
        let nets = spec.nets;
        for (i, n) in nets.iter().enumerate() {
            if nets[..i].iter().any(|m| m.tap == n.tap) {
                return Err(ConfigError::TapTwice(n.tap.clone()));
            }
        }
        let vsock = spec.vsock;
        let timer_gap = timer_gap()?;
        Ok(VmConfig {
            kernel: kernel_path,
            initrd: spec.initrd,
            cmdline: spec.cmdline,
            cpus,
            no_acpi: spec.no_acpi,
            mem_size,
            console,
            console_tail: None,
            disks,
            root_disk: spec.root_disk,
            nets,
            vsock,
            kvm_device: spec.kvm_device,
            verbosity: spec.verbosity,
            timer_gap,
            trace: None,
        })
    }

    /// The configuration of a VM restored from a snapshot of `machine`:
    /// its devices are the snapshot's, only the console and logging come
    /// from `args` (clap refuses the options that would build another
    /// machine alongside --restore).
    pub fn for_restore(
        args: &RunArgs,
        machine: &crate::snapshot::MachineConfig,
    ) -> Result<Self, ConfigError> {
        let console = parse_console(args.console.as_deref().unwrap_or("stdio"))?;
        let mut c = Self::for_machine(machine, console, args.verbose)?;
        c.kvm_device = args.kvm_device.clone();
        c.trace = parse_trace(args)?;
        Ok(c)
    }

    /// The configuration of a restored `machine`, its console on `console`.
    pub fn for_machine(
        machine: &crate::snapshot::MachineConfig,
        console: ConsoleMode,
        verbosity: u8,
    ) -> Result<Self, ConfigError> {
        let timer_gap = timer_gap()?;
        Ok(VmConfig {
            kernel: PathBuf::new(),
            initrd: None,
            cmdline: None,
            cpus: machine.cpus,
            no_acpi: machine.no_acpi,
            mem_size: machine.mem_size,
            console,
            console_tail: None,
            disks: machine.disks.clone(),
            root_disk: false,
            nets: machine.nets.clone(),
            vsock: machine.vsock.clone(),
            kvm_device: PathBuf::from("/dev/kvm"),
            verbosity,
            timer_gap,
            trace: None,
        })
    }

    /// What a snapshot records of this configuration.
    pub fn machine(&self) -> crate::snapshot::MachineConfig {
        crate::snapshot::MachineConfig {
            cpus: self.cpus,
            mem_size: self.mem_size,
            no_acpi: self.no_acpi,
            disks: self.disks.clone(),
            nets: self.nets.clone(),
            vsock: self.vsock.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_limits() {
        assert!(check_memory(256 << 20, Some(1 << 30)).is_ok());
        assert!(matches!(
            check_memory(16 << 20, None),
            Err(ConfigError::MemoryTooSmall { .. })
        ));
        assert!(matches!(
            check_memory(2 << 30, Some(1 << 30)),
            Err(ConfigError::MemoryTooLarge { .. })
        ));
        assert!(matches!(
            check_memory((64 << 20) + 1, None),
            Err(ConfigError::MemoryUnaligned)
        ));
    }

    #[test]
    fn cpu_limits() {
        assert!(matches!(check_cpus(0), Err(ConfigError::NoCpus)));
        assert!(matches!(check_cpus(-1), Err(ConfigError::NoCpus)));
        assert_eq!(check_cpus(1).unwrap(), 1);
        assert_eq!(check_cpus(MAX_CPUS.into()).unwrap() as u32, MAX_CPUS);
        assert!(matches!(
            check_cpus(i64::from(MAX_CPUS) + 1),
            Err(ConfigError::TooManyCpus { .. })
        ));
    }

    #[test]
    fn mp_table_holds_max_cpus() {
        let table = boot::mptable::build(boot::layout::EBDA_START, MAX_CPUS as u8).unwrap();
        assert!(boot::layout::EBDA_START + table.len() as u64 <= boot::layout::LOW_RAM_END);
    }
}
