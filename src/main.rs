//! kiln: parse the command line, build the VM, run it, exit with its code.

mod api;
mod api_client;
mod cli;
mod cmdline;
mod config;
mod console;
mod control;
mod event_loop;
mod firecracker;
mod logger;
mod pvm;
mod report;
mod sandbox;
mod seccomp;
mod snapshot;
mod stats;
mod terminal;
#[cfg(test)]
mod testing;
mod trace;
mod vcpu;
mod virtio;
mod vm;
mod vmm;

use std::time::Instant;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::config::VmConfig;

/// Exit code for bad input and a host that cannot run VMs.
pub(crate) const EXIT_USAGE: i32 = 2;
/// Exit code when kiln itself fails while running the VM.
pub(crate) const EXIT_FAILURE: i32 = 1;

fn main() {
    let start = Instant::now();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => std::process::exit(parse_error(&e)),
    };
    seccomp::set_mode(cli.seccomp);
    let code = match cli.command {
        Some(Command::Run(args)) if !args.command.is_empty() => sandbox::run(&args, start),
        Some(Command::Run(args)) => run(&args, start, None),
        Some(Command::Explain(args)) if !args.run.command.is_empty() => {
            logger::init(1);
            log::error!(
                "kiln explain boots a kernel and narrates it; it runs no sandbox command (drop the -- CMD)"
            );
            EXIT_USAGE
        }
        Some(Command::Explain(args)) => run(
            &args.run,
            start,
            Some(trace::Explain {
                exits: args.exits,
                keep_running: args.keep_running,
            }),
        ),
        Some(Command::Snapshot(args)) => snapshot(&args),
        Some(Command::Report(args)) => report_trace(&args),
        None => firecracker::serve(cli.api_sock.as_deref(), cli.config_file.as_deref(), start),
    };
    std::process::exit(code);
}

/// Reports a command-line error as one `kiln: error: ...` line (help and
/// version go out as clap prints them) and returns the exit code: 2, or
/// 125 when a sandbox command was given (2 could be the command's own).
fn parse_error(e: &clap::Error) -> i32 {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            EXIT_USAGE
        } else {
            0
        };
    }
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    eprintln!(
        "kiln: error: {}",
        cli::one_line_error(&e.render().to_string())
    );
    if cli::has_sandbox_command(&args) {
        sandbox::EXIT_KILN
    } else {
        EXIT_USAGE
    }
}

/// `kiln snapshot`: pause, snapshot and resume a running kiln.
fn snapshot(args: &cli::SnapshotArgs) -> i32 {
    logger::init(1);
    match api_client::snapshot(args) {
        Ok(dir) => {
            log::info!(
                "snapshot in {}; start it with: kiln run --restore {}",
                dir.display(),
                dir.display()
            );
            0
        }
        Err(e) => {
            log::error!("{e}");
            EXIT_FAILURE
        }
    }
}

/// `kiln report TRACE`: the trace file as an HTML page.
fn report_trace(args: &cli::ReportArgs) -> i32 {
    logger::init(1);
    match report::run(&args.trace, args.output.as_deref()) {
        Ok(out) => {
            log::info!("report written to {} (open it in a browser)", out.display());
            0
        }
        Err(e @ report::ReportError::Write(..)) => {
            log::error!("{e}");
            EXIT_FAILURE
        }
        Err(e) => {
            log::error!("{e}");
            EXIT_USAGE
        }
    }
}

fn run(args: &cli::RunArgs, start: Instant, explain: Option<trace::Explain>) -> i32 {
    logger::init(if args.quiet { 0 } else { args.verbose.max(1) });
    let restored = match &args.restore {
        None => None,
        Some(dir) => match snapshot::read_state(&dir.join(api_client::STATE_FILE)) {
            Ok(snap) => Some((
                snap,
                snapshot::Files {
                    state: dir.join(api_client::STATE_FILE),
                    memory: dir.join(api_client::MEMORY_FILE),
                },
            )),
            Err(e) => {
                log::error!("{e}");
                return EXIT_USAGE;
            }
        },
    };
    let config = match &restored {
        None => VmConfig::from_args(args),
        Some((snap, _)) => VmConfig::for_restore(args, &snap.machine),
    };
    let mut config = match config {
        Ok(c) => c,
        Err(e) => {
            log::error!("{e}");
            return EXIT_USAGE;
        }
    };
    if let Some(e) = explain {
        // Narrate, and print exits (all of them, or as --trace=FILTER says).
        let mut t = config.trace.take().unwrap_or_default();
        t.print.get_or_insert_with(Default::default);
        t.explain = Some(e);
        config.trace = Some(t);
    }
    // The console's last bytes, for the panic line when pvpanic reports one.
    let tail = console::ConsoleTail::default();
    config.console_tail = Some(tail.clone());
    if let Err(e) = event_loop::block_stop_signals() {
        log::error!("{e}");
        return EXIT_FAILURE;
    }
    let control = match control::VmControl::new(config.cpus.into()) {
        Ok(c) => std::sync::Arc::new(c),
        Err(e) => {
            log::error!("cannot create an eventfd: {e}");
            return EXIT_FAILURE;
        }
    };
    let api = match args
        .api_sock
        .as_deref()
        .map(vmm::ApiLink::start)
        .transpose()
    {
        Ok(api) => api,
        Err(e) => {
            log::error!("{e}");
            return EXIT_USAGE;
        }
    };
    let origin = match &restored {
        None => vmm::Origin::Boot,
        Some((snap, files)) => vmm::Origin::Restore(snap, files),
    };
    report(
        vmm::run(&config, origin, start, control, api),
        &config,
        &tail,
        start,
    )
}

/// Prints what a run counted: `--trace`'s table, and with -v the exits,
/// host repairs and device counters.
pub(crate) fn print_counters(summary: &vmm::RunSummary, verbosity: u8) {
    if let Some(table) = &summary.trace {
        eprint!("{table}");
    }
    if verbosity >= 1 {
        log::info!("exits: {}", summary.stats);
        for r in &summary.repairs {
            log::info!("host repairs: {r}");
        }
        for d in &summary.devices {
            log::info!("{d}");
        }
    }
}

/// Reports how a VM run ended (counters with -v, the stop reason or the
/// error) and returns kiln's exit code.
pub(crate) fn report(
    result: Result<vmm::RunSummary, vmm::VmmError>,
    config: &VmConfig,
    tail: &console::ConsoleTail,
    start: Instant,
) -> i32 {
    match result {
        Ok(summary) => {
            print_counters(&summary, config.verbosity);
            match &summary.reason {
                control::StopReason::Fatal(msg) => log::error!("{msg}"),
                control::StopReason::GuestPanic => log::error!(
                    "the guest kernel panicked: {}",
                    tail.panic_line()
                        .unwrap_or_else(|| "reported through pvpanic".into())
                ),
                other => log::info!(
                    "VM stopped: {other:?} after {:.3} s",
                    start.elapsed().as_secs_f64()
                ),
            }
            summary.reason.exit_code()
        }
        Err(e) => {
            log::error!("{e}");
            if is_usage_error(&e) {
                EXIT_USAGE
            } else {
                EXIT_FAILURE
            }
        }
    }
}

/// Errors caused by the user's input or the host's setup (exit code 2).
pub(crate) fn is_usage_error(e: &vmm::VmmError) -> bool {
    use boot::loader::LoaderError;
    use vm::VmError;
    matches!(
        e,
        vmm::VmmError::Vm(
            VmError::NoKvm(_)
                | VmError::KvmPermission(_)
                | VmError::ApiVersion(_)
                | VmError::MissingCapability(_)
                | VmError::TooManyCpus { .. }
                | VmError::AllocMemory(..)
                | VmError::MemoryFileSize { .. }
                | VmError::MapMemoryFile(..)
        ) | vmm::VmmError::Load(
            LoaderError::UnknownFormat
                | LoaderError::InitrdTooBig { .. }
                | LoaderError::No64BitEntry(_)
                | LoaderError::Elf(_)
                | LoaderError::BzImage(_)
        ) | vmm::VmmError::CmdlineTooLong { .. }
            | vmm::VmmError::Open(..)
            | vmm::VmmError::Console(_)
            | vmm::VmmError::Disk(_)
            | vmm::VmmError::Net(_)
            | vmm::VmmError::Vsock(_)
            | vmm::VmmError::Virtio(crate::virtio::VirtioError::TooManyDevices { .. })
            | vmm::VmmError::BadSnapshot(_)
            | vmm::VmmError::TraceFile(..)
            | vmm::VmmError::NoTrace
            | vmm::VmmError::Snapshot(_)
            | vmm::VmmError::Api(_)
    )
}
