//! The command line: the only file that sees argv.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// kiln: a KVM virtual machine monitor for microVMs.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Without a subcommand: serve Firecracker's REST API on this Unix
    /// socket and wait for the VM's configuration (PUT /boot-source,
    /// /machine-config, /drives, /network-interfaces, /vsock, then
    /// InstanceStart), or for PUT /snapshot/load.
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,

    /// Without a subcommand: boot the VM a Firecracker configuration file
    /// (JSON: boot-source, machine-config, drives, network-interfaces,
    /// vsock) describes, at once.
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,

    /// seccomp filters on kiln's threads: on (a system call outside a
    /// thread's allow-list stops kiln with a line naming it, exit 159),
    /// log (the host kernel logs such calls, kiln goes on) or off.
    #[arg(long, global = true, value_enum, default_value = "on")]
    pub seccomp: crate::seccomp::Mode,

    /// What to do.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// kiln's subcommands.
// Parsed once per process: the size difference of the variants is harmless.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a guest kernel and run it until it reboots, powers off or fails;
    /// or, with a command after `--`, run that command in a fresh sandbox VM
    /// and exit with its status.
    Run(RunArgs),
    /// Snapshot a running kiln (started with --api-sock) into a directory
    /// that `kiln run --restore DIR` starts from: pause the VM, write
    /// DIR/state and DIR/memory, resume it.
    Snapshot(SnapshotArgs),
    /// Turn a trace file (`kiln run --trace-out FILE`) into one HTML page
    /// showing where the time went: kiln's set-up phases, the guest's exits
    /// per device over time, and tables of both.
    Report(ReportArgs),
    /// Boot a guest as `kiln run` does and narrate it: each phase of the
    /// boot recipe with the KVM ioctls behind it, the values kiln passes
    /// (memory map, e820, where the kernel went, the boot vCPU's registers
    /// and page tables) and the files that do it; then the first guest
    /// exits, decoded; then stop (or --continue).
    Explain(ExplainArgs),
}

/// Options of `kiln explain`: those of `kiln run`, and how far to go.
#[derive(Debug, Clone, clap::Args)]
pub struct ExplainArgs {
    /// How many guest exits to show.
    #[arg(long, default_value_t = 30, value_name = "N")]
    pub exits: usize,

    /// After them, let the guest run on (without trace lines) instead of
    /// stopping it.
    #[arg(long = "continue")]
    pub keep_running: bool,

    /// The VM, as for `kiln run`.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Options of `kiln report`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// The trace file `kiln run --trace-out` wrote.
    #[arg(value_name = "TRACE")]
    pub trace: PathBuf,

    /// Where the page goes (default: TRACE with the extension .html).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Options of `kiln snapshot`.
#[derive(Debug, Clone, clap::Args)]
pub struct SnapshotArgs {
    /// The API socket of the kiln to snapshot (its --api-sock).
    #[arg(long, value_name = "PATH")]
    pub api_sock: PathBuf,

    /// Leave the VM paused after the snapshot (to stop it, or to snapshot
    /// it again) instead of resuming it.
    #[arg(long)]
    pub leave_paused: bool,

    /// Where the snapshot goes (created if missing).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// Options of `kiln run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Guest kernel: an ELF vmlinux (PVH entry used when present) or a
    /// bzImage. Required unless a command follows `--` (then the default
    /// guest's kernel is used).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,

    /// Initial RAM disk (e.g. a gzip-compressed cpio archive).
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// Kernel command line, appended to kiln's defaults (console, reboot and
    /// host-specific switches); a parameter given here overrides a default
    /// of the same name. Anything after " -- " is passed to init.
    #[arg(long, value_name = "STRING", allow_hyphen_values = true)]
    pub cmdline: Option<String>,

    /// A virtio block disk: an image file, optionally read-only (ro) or
    /// with the guest's writes kept in a temporary copy-on-write layer
    /// that is gone at exit (snapshot), and with an ID the guest can read;
    /// repeat for more disks (the guest sees them as /dev/vda, /dev/vdb,
    /// ... in this order).
    #[arg(long = "disk", value_name = "PATH[,ro|,snapshot][,id=NAME]")]
    pub disks: Vec<String>,

    /// Boot from the first --disk: adds root=/dev/vda and rw (ro for a
    /// read-only disk) to the kernel command line.
    #[arg(long)]
    pub root_disk: bool,

    /// A virtio network card on an existing tap device (create it with
    /// `ip tuntap add NAME mode tap`); repeat for more cards.
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC]")]
    pub nets: Vec<String>,

    /// A virtio-vsock device whose host side is the Unix socket PATH
    /// (Firecracker's convention: connect to PATH and send `CONNECT
    /// <port>\n` to reach a guest port; guest connections to the host,
    /// CID 2, port P go to PATH_P). The guest's CID is 3 unless given.
    #[arg(long, value_name = "PATH[,cid=N]")]
    pub vsock: Option<String>,

    /// Number of vCPUs (1-32).
    #[arg(
        long,
        default_value_t = 1,
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub cpus: i64,

    /// Write no ACPI tables: the guest finds its CPUs through the MP table
    /// and its virtio devices through the command line only (kernels built
    /// without ACPI), and `poweroff` is detected from halted vCPUs.
    #[arg(long)]
    pub no_acpi: bool,

    /// Guest RAM, e.g. 128M, 1G, 1536M (suffixes K, M, G; bare numbers are MiB).
    #[arg(
        long,
        default_value = "256M",
        value_name = "SIZE",
        allow_negative_numbers = true
    )]
    pub memory: String,

    /// Where the serial console goes: stdio (output to stdout, input from
    /// stdin; the default), none, or file:PATH (output only). With a
    /// command the default is none: stdout is the command's.
    #[arg(long, value_name = "stdio|none|file:PATH")]
    pub console: Option<String>,

    /// More log output (-v: exit and repair counters at exit, -vv: debug, -vvv: every exit).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Teaching mode: print every VM exit on stderr as one decoded line
    /// (time, vCPU, exit reason, device and register, value, guest RIP and
    /// function, time kiln took), and a table of exits per reason and per
    /// device at the end. FILTER (comma-separated): device names (com1,
    /// i8042, cmos, pvpanic, acpi-pm, boot-timer, blk, net, vsock, virtio,
    /// unclaimed), exit reasons (io, io-in, io-out, mmio, mmio-read,
    /// mmio-write, hlt, msr, debug, emulation, event, shutdown, kick),
    /// vcpuN; e.g. --trace=com1,i8042 or --trace=mmio,vcpu0.
    #[arg(long, value_name = "FILTER", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    pub trace: Option<String>,

    /// Teaching mode: write every exit, device event and boot phase to
    /// FILE as a Chrome/Perfetto trace (JSON trace events: a track per
    /// vCPU, one for the event loop, one for the boot recipe's phases);
    /// open it in https://ui.perfetto.dev or chrome://tracing.
    #[arg(long, value_name = "FILE")]
    pub trace_out: Option<PathBuf>,

    /// Only warnings and errors on stderr.
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,

    /// With a command: boot this ext4 image as the root file system; the
    /// guest's writes go to a temporary layer and the image never changes
    /// (it must hold /sbin/kiln-agent).
    #[arg(long, value_name = "IMG")]
    pub rootfs: Option<PathBuf>,

    /// With a command: stop the VM after this long and exit 124 (e.g. 30s,
    /// 5m, 1h, 500ms; a bare number is seconds).
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,

    /// With a command: set an environment variable for it (repeatable);
    /// `--env NAME` alone passes kiln's own value of NAME.
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<OsString>,

    /// With a command: the directory it starts in (default /).
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<OsString>,

    /// With a command: run it on a pseudo-terminal, as `docker run -it`
    /// (stdin must be a terminal): the window size follows kiln's, keys
    /// such as Ctrl-C go to the command, stdout and stderr are one stream.
    #[arg(short = 't', long)]
    pub tty: bool,

    /// With a command: boot the guest afresh instead of restoring it from
    /// the cached template (a snapshot of it taken when its agent first
    /// came up), and make no template.
    #[arg(long)]
    pub no_template: bool,

    /// With a command: copy a host file or directory tree into the guest
    /// before it starts (repeatable). GUEST is absolute; an existing
    /// directory there receives the copy under its own name.
    #[arg(long = "copy-in", value_name = "HOST:GUEST")]
    pub copy_in: Vec<OsString>,

    /// With a command: copy a guest file or directory tree to the host
    /// after it ends (repeatable). Nothing on the host is overwritten: HOST
    /// must not exist, or be a directory to put the copy in.
    #[arg(long = "copy-out", value_name = "GUEST:HOST")]
    pub copy_out: Vec<OsString>,

    /// Serve Firecracker's REST API on this Unix socket while the VM runs
    /// (pause, resume, snapshot; `kiln snapshot` is its command-line
    /// client).
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,

    /// Start from the snapshot in DIR (made by `kiln snapshot` or the
    /// API's /snapshot/create as DIR/state and DIR/memory) instead of
    /// booting: same vCPUs, memory and devices, the guest continues where
    /// it was.
    #[arg(long, value_name = "DIR", conflicts_with_all = [
        "kernel", "initrd", "cmdline", "disks", "root_disk", "nets", "vsock",
        "cpus", "no_acpi", "memory", "rootfs", "command", "no_template",
    ])]
    pub restore: Option<PathBuf>,

    /// The command to run in a sandbox VM, and its arguments.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,

    /// The KVM device to use.
    #[arg(long, default_value = "/dev/kvm", value_name = "PATH", hide = true)]
    pub kvm_device: PathBuf,
}

/// clap's rendered error as one line: its first line without the
/// "error: " prefix, its tips after a semicolon, and where to find help.
pub fn one_line_error(rendered: &str) -> String {
    let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("bad command line");
    let mut line = first.strip_prefix("error: ").unwrap_or(first).to_string();
    for tip in lines.filter_map(|l| l.strip_prefix("tip: ")) {
        // clap's advice to pass a value after `--` would make it the
        // sandbox's command here.
        if !tip.contains("'--") || !tip.contains("use '-- ") {
            line.push_str("; ");
            line.push_str(tip);
        }
    }
    line.push_str(" (kiln run --help lists the options)");
    line
}

/// Whether the command line gives a sandbox command (something after `--`).
pub fn has_sandbox_command(args: &[OsString]) -> bool {
    args.iter()
        .position(|a| a == "--")
        .is_some_and(|i| i + 1 < args.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_line(args: &[&str]) -> String {
        let e = Cli::try_parse_from(args).unwrap_err();
        one_line_error(&e.render().to_string())
    }

    #[test]
    fn parse_errors_are_one_line_without_clap_prefix() {
        for args in [
            &["kiln", "run", "--bogus"][..],
            &["kiln", "frobnicate"],
            &["kiln", "run", "--cpus", "abc"],
            &["kiln", "run", "--cpus", "1.5"],
            &["kiln", "run", "--cpu", "2"],
            &["kiln", "run", "--memory"],
        ] {
            let line = error_line(args);
            assert!(!line.contains('\n'), "{args:?}: {line}");
            assert!(!line.starts_with("error"), "{args:?}: {line}");
            assert!(line.ends_with("(kiln run --help lists the options)"));
        }
        assert!(error_line(&["kiln", "run", "--cpu", "2"]).contains("'--cpus'"));
    }

    #[test]
    fn negative_numbers_reach_kilns_own_checks() {
        let cli = Cli::try_parse_from(["kiln", "run", "--memory", "-5", "--cpus", "-1"]).unwrap();
        let Some(Command::Run(args)) = cli.command else {
            panic!("not run")
        };
        assert_eq!((args.memory.as_str(), args.cpus), ("-5", -1));
    }

    #[test]
    fn restore_refuses_options_that_build_another_machine() {
        for opt in [
            &["--kernel", "k"][..],
            &["--memory", "1G"],
            &["--cpus", "2"],
            &["--disk", "d.img"],
        ] {
            let mut args = vec!["kiln", "run", "--restore", "dir"];
            args.extend_from_slice(opt);
            let line = error_line(&args);
            assert!(line.contains("cannot be used with"), "{opt:?}: {line}");
        }
        assert!(
            Cli::try_parse_from(["kiln", "run", "--restore", "d", "--console", "none"]).is_ok()
        );
    }

    #[test]
    fn a_sandbox_command_follows_double_dash() {
        let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(has_sandbox_command(&os(&["kiln", "run", "--", "true"])));
        assert!(!has_sandbox_command(&os(&["kiln", "run", "--"])));
        assert!(!has_sandbox_command(&os(&["kiln", "run", "--cpus", "2"])));
    }
}
