//! `kiln run [options] -- CMD [ARGS...]`: run one command in a fresh VM and
//! exit with its status.
//!
//! The VM boots the default guest (or `--kernel`/`--initrd`) with the guest
//! agent as init (`rdinit=/sbin/kiln-agent`) and a vsock device whose
//! Unix socket lives in a private temporary directory. kiln listens on
//! `<socket>_1024` before the VM starts; the agent connects there, and the
//! [`client`] thread drives the session (kiln-proto): it sends the command,
//! copies kiln's stdin to it and its stdout and stderr to kiln's, and stops
//! the VM when the command has ended. The console is off unless
//! `--console` says otherwise, so kiln's stdout carries only the command's.

mod client;
mod copy;
mod stdin;
mod template;

use std::ffi::OsString;
use std::io::IsTerminal;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_proto::{Exec, ExitStatus, WinSize, AGENT_PORT};

use crate::cli::RunArgs;
use crate::config::VmConfig;
use crate::control::{StopReason, VmControl};

/// Exit code: the guest kernel's out-of-memory killer killed the command.
pub const EXIT_OOM: i32 = 120;
/// Exit code: the guest agent never connected.
pub const EXIT_AGENT_NEVER_UP: i32 = 121;
/// Exit code: the guest stopped (reset, powered off, crashed) before the
/// command ended.
pub const EXIT_GUEST_STOPPED: i32 = 122;
/// Exit code: the guest kernel panicked.
pub use crate::control::EXIT_GUEST_PANIC;
/// Exit code: `--timeout` ran out (as coreutils' `timeout`).
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit code: kiln itself failed or was given bad input (as `docker run`).
pub const EXIT_KILN: i32 = 125;

/// The environment every command gets before `--env`.
const DEFAULT_ENV: &[&str] = &[
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
];
/// Kernel parameters of a sandbox guest: the agent is init (of the
/// initramfs, or of a `--rootfs` disk), and the kernel keeps its boot
/// messages to itself (each console byte is a VM exit).
const SANDBOX_CMDLINE: &str = "rdinit=/sbin/kiln-agent quiet";
const SANDBOX_ROOTFS_CMDLINE: &str = "init=/sbin/kiln-agent quiet";
/// How long to wait for the agent on a host with hardware virtualization,
/// and on a nested kvm_pvm host, where a guest kernel boots ~1,000x slower.
const AGENT_WAIT: Duration = Duration::from_secs(60);
const AGENT_WAIT_NESTED: Duration = Duration::from_secs(600);

/// Errors setting up a sandbox (exit code [`EXIT_KILN`]).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// No default guest installed.
    #[error("no default guest in {dir}: {what} is missing; run ./resources/guests.sh (or give --kernel and --initrd)")]
    NoDefaultGuest {
        /// The directory looked in.
        dir: PathBuf,
        /// The missing file.
        what: &'static str,
    },
    /// --timeout did not parse.
    #[error("invalid --timeout '{0}': use a duration such as 30s, 5m, 1h or 500ms")]
    Timeout(String),
    /// --env without a name.
    #[error("invalid --env '{0}': use NAME=VALUE or NAME")]
    Env(String),
    /// --rootfs is not an ext4 image.
    #[error("--rootfs {0}: not an ext4 file system image (make one with mkfs.ext4 -d DIR IMG SIZE, or ./resources/rootfs.sh)")]
    NotExt4(PathBuf),
    /// --rootfs cannot be read.
    #[error("--rootfs {0}: {1}; check the path and its permissions")]
    RootfsOpen(PathBuf, std::io::Error),
    /// --rootfs path that the --disk syntax cannot carry.
    #[error("--rootfs {0}: a path with a comma cannot be used; rename or link the image")]
    RootfsComma(PathBuf),
    /// --vsock is the sandbox's own.
    #[error("--vsock cannot be given with a command: the sandbox uses the vsock device itself")]
    VsockTaken,
    /// The private directory or the agent socket could not be made.
    #[error("cannot prepare the sandbox: {0}")]
    Setup(std::io::Error),
    /// -t without a terminal.
    #[error("-t needs a terminal on stdin (leave -t out when input comes from a pipe or file)")]
    NoTerminal,
    /// A bad --copy-in or --copy-out.
    #[error(transparent)]
    Copy(#[from] copy::CopyError),
}

/// How a sandbox run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The command ended.
    Exited(ExitStatus),
    /// --timeout ran out.
    TimedOut(Duration),
    /// The agent never connected (why).
    AgentNeverUp(String),
    /// The guest stopped before the command ended (why).
    GuestStopped(String),
    /// The guest kernel panicked (its panic line).
    GuestPanicked(String),
    /// kiln's side failed (why).
    Failed(String),
}

impl Outcome {
    /// The process exit code, and the line to print for kiln's own cases.
    pub fn exit(&self) -> (i32, Option<String>) {
        match self {
            Outcome::Exited(ExitStatus::OomKilled(_)) => (
                EXIT_OOM,
                Some(
                    "the guest kernel's out-of-memory killer killed the command: give the VM more --memory"
                        .into(),
                ),
            ),
            Outcome::Exited(s) => (s.shell_code(), None),
            Outcome::TimedOut(d) => (
                EXIT_TIMEOUT,
                Some(format!(
                    "the command did not finish within --timeout {}: the VM was stopped",
                    show_duration(*d)
                )),
            ),
            Outcome::AgentNeverUp(why) => (EXIT_AGENT_NEVER_UP, Some(why.clone())),
            Outcome::GuestStopped(why) => (EXIT_GUEST_STOPPED, Some(why.clone())),
            Outcome::GuestPanicked(line) => (
                EXIT_GUEST_PANIC,
                Some(format!("the guest kernel panicked: {line}")),
            ),
            Outcome::Failed(why) => (EXIT_KILN, Some(why.clone())),
        }
    }
}

/// Where the outcome is recorded: the first one wins and stops the VM.
#[derive(Clone)]
pub struct Settle {
    slot: Arc<Mutex<Option<Outcome>>>,
    control: Arc<VmControl>,
    start: Instant,
}

impl Settle {
    fn new(control: Arc<VmControl>, start: Instant) -> Settle {
        Settle {
            slot: Arc::new(Mutex::new(None)),
            control,
            start,
        }
    }

    /// Logs (with -v) that `what` happened, with the time since kiln
    /// started: the parts of a run, for benchmarks and the curious.
    pub fn mark(&self, what: &str) {
        log::info!(
            "sandbox: {what} at {:.3} s",
            self.start.elapsed().as_secs_f64()
        );
    }

    /// Records `outcome` unless one is recorded already, and stops the VM.
    pub fn settle(&self, outcome: Outcome) {
        {
            let mut slot = self.slot.lock().expect("outcome lock");
            if slot.is_none() {
                *slot = Some(outcome);
            }
        }
        self.control.request_stop(StopReason::Finished);
    }

    /// Sends the signals kiln receives to `to` (the command) from now on.
    pub fn forward_signals_to(&self, to: std::sync::mpsc::Sender<i32>) {
        self.control.forward_signals_to(to);
    }

    /// Signals stop the VM again.
    pub fn stop_forwarding(&self) {
        self.control.stop_forwarding();
    }

    /// Whether the VM is stopping (for whatever reason).
    pub fn stopping(&self) -> bool {
        self.control.stopping()
    }

    fn outcome(&self) -> Option<Outcome> {
        self.slot.lock().expect("outcome lock").clone()
    }
}

/// Runs `args.command` in a sandbox VM; returns kiln's exit code.
pub fn run(args: &RunArgs, start: Instant) -> i32 {
    // A forbidden system call is one of kiln's own errors here.
    crate::seccomp::set_exit_code(EXIT_KILN);
    // stderr is the command's: only warnings and errors unless -v.
    crate::logger::init(if args.quiet { 0 } else { args.verbose });
    let prepared = match prepare(args) {
        Ok(p) => p,
        Err(e) => {
            log::error!("{e}");
            return EXIT_KILN;
        }
    };
    if let Err(e) = crate::event_loop::block_stop_signals() {
        log::error!("{e}");
        return EXIT_KILN;
    }
    let control = match VmControl::new(prepared.config.cpus.into()) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            log::error!("cannot create an eventfd: {e}");
            return EXIT_KILN;
        }
    };
    let settle = Settle::new(control.clone(), start);
    // -t: keys go to the guest's terminal as they are typed (restored
    // before kiln's closing line, on every way out of here).
    let raw = prepared
        .job
        .exec
        .tty
        .and_then(|_| crate::terminal::RawTerminal::enable_full());
    let agent_wait = if crate::pvm::detect() {
        AGENT_WAIT_NESTED
    } else {
        AGENT_WAIT
    };
    let (link, requester) = match crate::vmm::ApiLink::internal() {
        Ok(l) => l,
        Err(e) => {
            log::error!("{e}");
            return EXIT_KILN;
        }
    };
    // From the template when there is one; else boot, and make the
    // template once the agent is up.
    let mut machine = None;
    let mut after_hello: Option<client::AfterHello> = None;
    if let Some(t) = &prepared.template {
        if let Some(files) = t.files() {
            match restore(&prepared.config, &files, start, control.clone()) {
                Ok(m) => {
                    settle.mark(&format!("restored from the template {}", t.dir.display()));
                    machine = Some(m);
                }
                Err(e) => {
                    log::warn!("sandbox: the template cannot be restored ({e}); booting and making a new one");
                    t.discard();
                }
            }
        }
        if machine.is_none() {
            let (t, vmm) = (t.clone(), requester.clone());
            after_hello = Some(Box::new(move || t.create(&vmm)));
        }
    }
    let machine = match machine {
        Some(m) => Ok(m),
        None => crate::vmm::Machine::boot(&prepared.config, start, control.clone()),
    };
    match &machine {
        Ok(_) => settle.mark("VM set up"),
        Err(e) => control.request_stop(StopReason::Fatal(e.to_string())),
    }
    let client = {
        let settle = settle.clone();
        let (listener, job) = (prepared.listener, prepared.job);
        std::thread::spawn(move || {
            client::serve(
                listener,
                job,
                agent_wait,
                settle,
                client::Stdio::inherit(),
                after_hello,
            )
        })
    };
    if let Some(limit) = prepared.timeout {
        let settle = settle.clone();
        std::thread::spawn(move || {
            std::thread::sleep(limit.saturating_sub(start.elapsed()));
            settle.settle(Outcome::TimedOut(limit));
        });
    }
    let result = machine.and_then(|mut m| {
        m.resume();
        m.run(Some(link))
    });
    // The client ends once the VM's sockets are gone (or sooner).
    let _ = client.join();
    settle.mark("VM gone");
    // A guest that died early may have said why on its console, or
    // through pvpanic.
    let pvpanic = matches!(&result, Ok(s) if s.reason == StopReason::GuestPanic);
    let panicked = match (prepared.tail.panic_line(), pvpanic) {
        (Some(line), _) => Some(Outcome::GuestPanicked(line)),
        (None, true) => Some(Outcome::GuestPanicked(
            "reported through pvpanic (no panic line on its console)".into(),
        )),
        (None, false) => None,
    };
    if let Ok(summary) = &result {
        crate::print_counters(summary, prepared.config.verbosity);
    }
    let (code, line) = match (settle.outcome(), result) {
        (Some(Outcome::GuestStopped(_) | Outcome::AgentNeverUp(_)), _) if panicked.is_some() => {
            panicked.expect("checked").exit()
        }
        (Some(outcome), _) => outcome.exit(),
        (None, Err(e)) => (EXIT_KILN, Some(e.to_string())),
        (None, Ok(summary)) => match summary.reason {
            StopReason::Signal(n) => (128 + n, None),
            StopReason::Fatal(msg) => (EXIT_KILN, Some(msg)),
            _ if panicked.is_some() => panicked.expect("checked").exit(),
            other => (
                EXIT_GUEST_STOPPED,
                Some(format!(
                    "the guest stopped ({other:?}) before the command ended"
                )),
            ),
        },
    };
    drop(raw);
    if let Some(line) = line {
        log::error!("{line}");
    }
    drop(prepared.dir);
    code
}

/// The sandbox VM restored from a template's files, its
/// vsock device on this sandbox's socket and its console as `config`'s.
fn restore(
    config: &VmConfig,
    files: &crate::snapshot::Files,
    start: Instant,
    control: Arc<VmControl>,
) -> Result<crate::vmm::Machine, String> {
    let snap = crate::snapshot::read_state(&files.state).map_err(|e| e.to_string())?;
    let mut machine = snap.machine.clone();
    machine.vsock.clone_from(&config.vsock);
    let mut restored = VmConfig::for_machine(&machine, config.console.clone(), config.verbosity)
        .map_err(|e| e.to_string())?;
    restored.console_tail.clone_from(&config.console_tail);
    restored.kvm_device.clone_from(&config.kvm_device);
    restored.trace.clone_from(&config.trace);
    crate::vmm::Machine::restore(&restored, &snap, files, start, control).map_err(|e| e.to_string())
}

/// What [`run`] needs, made before the VM starts.
struct Prepared {
    config: VmConfig,
    job: client::Job,
    timeout: Option<Duration>,
    listener: UnixListener,
    /// The console's last bytes.
    tail: crate::console::ConsoleTail,
    /// The private directory (removed when dropped).
    dir: tempfile::TempDir,
    /// The template to start from (or to make), if this sandbox can have one.
    template: Option<template::Template>,
}

fn prepare(args: &RunArgs) -> Result<Prepared, Box<dyn std::error::Error>> {
    if args.vsock.is_some() {
        return Err(SandboxError::VsockTaken.into());
    }
    let timeout = args
        .timeout
        .as_deref()
        .map(|t| parse_duration(t).ok_or_else(|| SandboxError::Timeout(t.to_string())))
        .transpose()?;
    let tty = if args.tty {
        if !std::io::stdin().is_terminal() {
            return Err(SandboxError::NoTerminal.into());
        }
        let (rows, cols) = crate::terminal::window_size().unwrap_or((24, 80));
        Some(WinSize { rows, cols })
    } else {
        None
    };
    // On a terminal the command learns its type from TERM, kiln's own
    // unless --env says otherwise.
    let mut env_args = args.env.clone();
    if tty.is_some() {
        let term = std::env::var_os("TERM").unwrap_or_else(|| "xterm".into());
        let mut entry = OsString::from("TERM=");
        entry.push(term);
        env_args.insert(0, entry);
    }
    let env = compose_env(&env_args)?;
    let copy_in = args
        .copy_in
        .iter()
        .map(|s| copy::parse_copy_in(s))
        .collect::<Result<Vec<_>, _>>()?;
    let copy_out = args
        .copy_out
        .iter()
        .map(|s| copy::parse_copy_out(s))
        .collect::<Result<Vec<_>, _>>()?;
    let exec = Exec {
        argv: args
            .command
            .iter()
            .cloned()
            .map(OsString::into_vec)
            .collect(),
        env,
        workdir: args.workdir.clone().map(OsString::into_vec),
        tty,
    };
    let mut vm = args.clone();
    let mut sandbox_cmdline = SANDBOX_CMDLINE;
    if let Some(rootfs) = &args.rootfs {
        check_ext4(rootfs)?;
        if rootfs.to_string_lossy().contains(',') {
            return Err(SandboxError::RootfsComma(rootfs.clone()).into());
        }
        // First disk, so it is /dev/vda; writes go to a throwaway layer.
        vm.disks
            .insert(0, format!("{},snapshot", rootfs.to_string_lossy()));
        vm.root_disk = true;
        sandbox_cmdline = SANDBOX_ROOTFS_CMDLINE;
    }
    if vm.kernel.is_none() {
        let dir = guest_dir();
        vm.kernel = Some(default_file(&dir, "vmlinux")?);
        if vm.initrd.is_none() && args.rootfs.is_none() {
            vm.initrd = Some(default_file(&dir, "initramfs.cpio")?);
        }
    }
    if vm.console.is_none() {
        vm.console = Some("none".into());
    }
    vm.cmdline = Some(match &args.cmdline {
        Some(user) => format!("{sandbox_cmdline} {user}"),
        None => sandbox_cmdline.to_string(),
    });
    let dir = tempfile::Builder::new()
        .prefix("kiln-run.")
        .tempdir()
        .map_err(SandboxError::Setup)?;
    let socket = dir.path().join("v.sock");
    vm.vsock = Some(socket.to_string_lossy().into_owned());
    let mut config = VmConfig::from_args(&vm)?;
    let tail = crate::console::ConsoleTail::default();
    config.console_tail = Some(tail.clone());
    let listener = UnixListener::bind(format!("{}_{AGENT_PORT}", socket.display()))
        .map_err(SandboxError::Setup)?;
    // Templates for guests whose disks all have a temporary layer (the
    // template keeps it; a disk the guest really writes would no longer
    // match its page cache) and without NICs (a tap is the user's).
    let template =
        (!args.no_template && config.disks.iter().all(|d| d.snapshot) && config.nets.is_empty())
            .then(|| template::Template::for_config(&config));
    Ok(Prepared {
        config,
        job: client::Job {
            exec,
            copy_in,
            copy_out,
        },
        timeout,
        listener,
        tail,
        dir,
        template,
    })
}

/// Where the default guest lives: `$KILN_GUEST_DIR`; else
/// `/var/lib/kiln/guest` for root; else `$XDG_DATA_HOME/kiln/guest`
/// (`~/.local/share/kiln/guest`).
pub fn guest_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KILN_GUEST_DIR") {
        return PathBuf::from(dir);
    }
    // SAFETY: geteuid(2) cannot fail and takes no pointers.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/kiln/guest");
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("kiln/guest")
}

/// Checks the ext4 superblock magic (0xEF53 at byte 1080).
fn check_ext4(path: &Path) -> Result<(), SandboxError> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).map_err(|e| SandboxError::RootfsOpen(path.into(), e))?;
    let mut magic = [0u8; 2];
    match f.read_exact_at(&mut magic, 1080) {
        Ok(()) if magic == [0x53, 0xef] => Ok(()),
        _ => Err(SandboxError::NotExt4(path.into())),
    }
}

fn default_file(dir: &Path, what: &'static str) -> Result<PathBuf, SandboxError> {
    let path = dir.join(what);
    if path.is_file() {
        Ok(path)
    } else {
        Err(SandboxError::NoDefaultGuest {
            dir: dir.to_path_buf(),
            what,
        })
    }
}

/// The command's environment: [`DEFAULT_ENV`], then each `--env` (a
/// `NAME=VALUE` sets, a bare `NAME` copies kiln's own value if it has one);
/// a later entry replaces an earlier one of the same name.
fn compose_env(given: &[OsString]) -> Result<Vec<Vec<u8>>, SandboxError> {
    let mut env: Vec<Vec<u8>> = DEFAULT_ENV.iter().map(|e| e.as_bytes().to_vec()).collect();
    for item in given {
        let bytes = item.clone().into_vec();
        let (name, entry) = match bytes.iter().position(|&b| b == b'=') {
            Some(i) => (bytes[..i].to_vec(), Some(bytes.clone())),
            None => {
                let value = std::env::var_os(item).map(OsString::into_vec);
                (
                    bytes.clone(),
                    value.map(|v| [bytes.as_slice(), b"=", v.as_slice()].concat()),
                )
            }
        };
        if name.is_empty() {
            return Err(SandboxError::Env(item.to_string_lossy().into_owned()));
        }
        env.retain(|e| !e.starts_with(&name) || e.get(name.len()) != Some(&b'='));
        env.extend(entry);
    }
    Ok(env)
}

/// Parses a duration: a number and a unit (ms, s, m, h); a bare number is
/// seconds. Zero, negative and absurd values are refused.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let scale = match unit {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    let secs = num.parse::<f64>().ok()? * scale;
    (secs.is_finite() && secs > 0.0 && secs <= 366.0 * 86400.0)
        .then(|| Duration::from_secs_f64(secs))
}

/// A duration as a person would write it.
fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else {
        format!("{}s", ms / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        for bad in ["", "0", "-1", "s", "10x", "1e9", "nan", "10 s", "1.2.3"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(show_duration(Duration::from_secs(30)), "30s");
        assert_eq!(show_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn environment_composes_over_the_defaults() {
        let env = compose_env(&[
            "A=1".into(),
            "PATH=/bin".into(),
            "A=2=3".into(),
            "KILN_TEST_SURELY_UNSET_VAR".into(),
        ])
        .unwrap();
        let env: Vec<String> = env
            .into_iter()
            .map(|e| String::from_utf8(e).unwrap())
            .collect();
        assert_eq!(env, ["HOME=/root", "PATH=/bin", "A=2=3"]);
        assert!(compose_env(&["=x".into()]).is_err());
    }

    #[test]
    fn outcomes_map_to_exit_codes() {
        assert_eq!(Outcome::Exited(ExitStatus::Code(7)).exit(), (7, None));
        assert_eq!(Outcome::Exited(ExitStatus::Signal(9)).exit().0, 137);
        assert_eq!(Outcome::TimedOut(Duration::from_secs(1)).exit().0, 124);
        assert_eq!(Outcome::AgentNeverUp(String::new()).exit().0, 121);
        assert_eq!(Outcome::GuestStopped(String::new()).exit().0, 122);
        assert_eq!(Outcome::Failed(String::new()).exit().0, 125);
        assert_eq!(Outcome::GuestPanicked(String::new()).exit().0, 123);
        assert_eq!(Outcome::Exited(ExitStatus::OomKilled(137)).exit().0, 120);
    }
}
