//! The real kiln binary boots the bare-metal test payload: serial output
//! and input, the boot timer, reset, poweroff, fatal exits, signals,
//! multiple vCPUs, memory above the MMIO gap, and (on hosts that need it)
//! the fallback instruction emulator. Each run takes well under a second.

#[path = "common/mod.rs"]
mod common;
#[path = "payload/mod.rs"]
mod payload;
#[path = "common/pty.rs"]
mod pty;

use std::time::Duration;

use common::{kiln, run, Outcome, Running};

const TIMEOUT: Duration = Duration::from_secs(30);

fn boot(mode: &str, extra: &[&str]) -> Outcome {
    let args = payload::run_args(mode, extra);
    run(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        TIMEOUT,
    )
}

fn line(mode_line: &str) -> String {
    format!("{}{mode_line}", payload::PREFIX)
}

#[test]
fn hello_prints_times_and_resets() {
    let o = boot("hello", &[]);
    o.check(o.code == Some(0), "a guest reset ends kiln with 0");
    o.check(
        o.stdout.contains(&line("hello from the guest")),
        "guest output on stdout",
    );
    o.check(
        o.stdout.contains(&line("done")),
        "the guest ran past the boot-timer write",
    );
    o.check(
        o.stderr.contains("boot-timer: guest boot time"),
        "boot timer logged",
    );
    o.check(
        o.stderr.contains("guest requested a reset"),
        "reset came from the i8042",
    );
    o.check(o.errors().is_empty(), "no error lines");
}

/// The payload in echo mode, running and waiting for input.
fn echo_session() -> Running {
    let elf = payload::build();
    let mut cmd = kiln();
    let kernel = elf.to_str().unwrap();
    cmd.args(["run", "--kernel", kernel, "--cmdline", "payload=echo"]);
    let mut r = Running::start(cmd);
    assert!(r.wait_for_stdout("mode=echo", TIMEOUT));
    r
}

#[test]
fn console_input_reaches_the_guest() {
    // 300 bytes: more than the UART's 64-byte FIFO holds at once.
    // Letters a..p only: 'q' ends the echo.
    let text: String = (0..300).map(|i| (b'a' + (i % 16) as u8) as char).collect();
    let mut r = echo_session();
    r.send(text.as_bytes());
    r.send(b"q");
    let o = r.wait(TIMEOUT);
    o.check(o.code == Some(0), "echo mode ends with a reset");
    o.check(
        o.stdout.contains(&text),
        "every input byte echoed back in order",
    );
    o.check(
        o.stdout.contains(&line("echo done")),
        "the guest saw the final q",
    );
}

#[test]
fn ctrl_a_x_quits() {
    let mut r = echo_session();
    r.send(b"ab\x01\x01c");
    assert!(
        r.wait_for_stdout("ab\x01c", TIMEOUT),
        "Ctrl-A Ctrl-A sends one Ctrl-A"
    );
    r.send(b"\x01x");
    let o = r.wait(TIMEOUT);
    o.check(o.code == Some(0), "Ctrl-A x exits 0");
    o.check(
        !o.stdout.contains(&line("echo done")),
        "the guest did not finish by itself",
    );
    o.check(o.stderr.contains("ConsoleQuit"), "stop reason logged");
}

#[test]
fn halt_with_interrupts_off_is_a_poweroff() {
    let o = boot("halt", &[]);
    o.check(o.code == Some(0), "poweroff exits 0");
    o.check(
        o.stderr.contains("the guest powered off"),
        "poweroff detected",
    );
}

#[test]
fn two_vcpus_halted_is_a_poweroff_too() {
    let o = boot("halt", &["--cpus", "2"]);
    o.check(
        o.code == Some(0) && !o.timed_out,
        "poweroff with an AP that never started",
    );
}

#[test]
fn triple_fault_is_one_error_line() {
    let o = boot("triple", &[]);
    o.check(o.code == Some(1), "a triple fault exits 1");
    let errors = o.errors();
    o.check(errors.len() == 1, "exactly one error line");
    o.check(
        errors[0].contains("KVM_EXIT_SHUTDOWN")
            && errors[0].contains("vCPU 0")
            && errors[0].contains("RIP 0x"),
        "the line names exit, vCPU and RIP",
    );
    o.check(!o.stderr.contains("panicked"), "no panic");
}

#[test]
fn unassigned_ports_and_mmio_are_survived() {
    let o = boot("badport", &[]);
    o.check(o.code == Some(0), "reset at the end");
    o.check(o.stdout.contains(&line("survived")), "the guest went on");
}

fn signal_stops(sig: i32, expected: i32) {
    let elf = payload::build();
    let mut cmd = kiln();
    cmd.args([
        "run",
        "--kernel",
        elf.to_str().unwrap(),
        "--cmdline",
        "payload=spin",
        "--cpus",
        "2",
    ]);
    let mut r = Running::start(cmd);
    assert!(r.wait_for_stdout("spinning", TIMEOUT));
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(r.pid(), sig) };
    let o = r.wait(TIMEOUT);
    o.check(o.code == Some(expected), "exit code 128 + signal");
    o.check(
        o.stdout.contains(&line("spinning")),
        "the guest was running",
    );
    o.check(o.elapsed < Duration::from_secs(10), "stopped promptly");
}

#[test]
fn sigterm_exits_143() {
    signal_stops(libc::SIGTERM, 143);
}

#[test]
fn sigint_exits_130() {
    signal_stops(libc::SIGINT, 130);
}

#[test]
fn sighup_and_sigquit_stop_the_vm_cleanly_too() {
    // Closing a terminal sends SIGHUP; their default actions would kill
    // kiln without restoring the terminal.
    signal_stops(libc::SIGHUP, 129);
    signal_stops(libc::SIGQUIT, 131);
}

#[test]
fn every_stop_signal_gives_the_terminal_back() {
    // kiln on a terminal (a pty made here) puts it in raw mode for the
    // console; whichever signal stops it, the terminal is as it was.
    let elf = payload::build();
    for (sig, code) in [
        (libc::SIGHUP, 129),
        (libc::SIGQUIT, 131),
        (libc::SIGTERM, 143),
        (libc::SIGINT, 130),
    ] {
        let user = pty::UserTerminal::open(24, 80);
        let cooked = user.termios();
        let mut cmd = kiln();
        cmd.args(["run", "--kernel", elf.to_str().unwrap()])
            .args(["--cmdline", "payload=spin"])
            .stdin(user.stdio())
            .stdout(user.stdio())
            .stderr(user.stdio());
        let mut child = pty::KillOnDrop(cmd.spawn().unwrap());
        assert!(user.wait_for(0, "spinning", TIMEOUT), "{:?}", user.screen());
        let raw = user.termios();
        assert_eq!(raw.c_lflag & libc::ICANON, 0, "raw while the VM runs");
        // SAFETY: kill(2) on the child kiln process.
        unsafe { libc::kill(child.0.id() as i32, sig) };
        assert_eq!(child.wait_for(TIMEOUT), Some(code), "{:?}", user.screen());
        let after = user.termios();
        assert_eq!(
            (after.c_iflag, after.c_oflag, after.c_lflag),
            (cooked.c_iflag, cooked.c_oflag, cooked.c_lflag),
            "signal {sig}: terminal restored"
        );
    }
}

#[test]
fn console_to_file_and_none() {
    let dir = common::scratch("console");
    let file = dir.join("console.log");
    let arg = format!("file:{}", file.display());
    let o = boot("hello", &["--console", &arg]);
    o.check(o.code == Some(0), "runs");
    o.check(!o.stdout.contains("hello"), "nothing on stdout");
    let logged = std::fs::read_to_string(&file).unwrap();
    assert!(logged.contains(&line("hello from the guest")), "{logged}");
    let o = boot("hello", &["--console", "none"]);
    o.check(
        o.code == Some(0) && o.stdout.is_empty(),
        "console none prints nothing",
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn ram_above_the_mmio_gap() {
    let o = boot("hello", &["--memory", "4G"]);
    o.check(
        o.code == Some(0),
        "4 GiB guest (split around the gap) boots",
    );
}

#[test]
fn emulated_instructions_give_architectural_results() {
    let o = boot("insns", &["-v"]);
    o.check(o.code == Some(0), "the insns run ends with a reset");
    for name in payload::INSNS {
        let ok = line(&format!("insn {name} ok"));
        let skipped = line(&format!("insn {name} skipped"));
        o.check(
            o.stdout.contains(&ok) || o.stdout.contains(&skipped),
            &format!("{name}: ok or skipped"),
        );
    }
    o.check(!o.stdout.contains("FAIL"), "no failed check");
    o.check(o.stdout.contains(&line("insns done")), "ran to the end");
    // On a host with repairs, each instruction went through kiln's emulator.
    if o.stderr.contains("host repairs on") {
        for n in [
            "popcnt=6",
            "int3=1",
            "fwait=1",
            "clac=1",
            "stac=1",
            "xgetbv=1",
            "cmpxchg8b/16b=3",
            "lsl=3",
        ] {
            o.check(o.stderr.contains(n), &format!("repair counter {n}"));
        }
    }
}

/// The number in "kiln-payload: timer fired after N cycles", if any.
fn timer_cycles(o: &Outcome) -> Option<u64> {
    let rest = o.stdout.split(&line("timer fired after ")).nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The TSC-cycle gap kiln logs when it paces the guest's timer.
fn paced_gap(o: &Outcome) -> Option<u64> {
    let rest = o.stderr.split("guest timer paced: ").nth(1)?;
    let cycles = rest.split('(').nth(1)?;
    cycles.split_whitespace().next()?.parse().ok()
}

#[test]
fn the_tsc_deadline_timer_interrupts_and_is_paced_where_repairs_are_on() {
    let o = boot("timer", &["-v"]);
    o.check(o.code == Some(0), "the timer run ends with a reset");
    if o.stdout.contains(&line("timer skipped")) {
        return; // no x2APIC or TSC-deadline timer offered on this host
    }
    let waited = timer_cycles(&o);
    o.check(waited.is_some(), "the timer interrupt arrived");
    if o.stderr.contains("host repairs on") {
        let gap = paced_gap(&o);
        o.check(gap.is_some(), "kiln logged the pacing gap");
        o.check(
            waited.unwrap() >= gap.unwrap(),
            &format!(
                "the interrupt came no sooner than the gap ({} >= {})",
                waited.unwrap(),
                gap.unwrap()
            ),
        );
        o.check(
            o.stderr.contains("timer_writes=1 timer_deferred=1"),
            "kiln armed the one deadline itself, later",
        );
    } else {
        o.check(paced_gap(&o).is_none(), "no pacing without host repairs");
    }
}

#[test]
fn a_closed_stdout_stops_the_vm_with_one_line() {
    // `kiln ... | head -1`: once nobody reads, the VM stops, kiln says so
    // once and exits 1, as a Unix filter would.
    let elf = payload::build();
    let mut cmd = kiln();
    cmd.args(["run", "--kernel", elf.to_str().unwrap()])
        .args(["--cmdline", "payload=flood"]);
    let o = common::first_line_then_close(cmd, TIMEOUT);
    o.check(o.stdout.starts_with(payload::PREFIX), "the first line came");
    o.check(!o.timed_out, "kiln stopped with nobody reading its output");
    o.check(o.code == Some(1), "exit code 1");
    let errors: Vec<&str> = o.stderr.lines().filter(|l| l.contains("error")).collect();
    o.check(
        errors.len() == 1
            && errors[0].starts_with("kiln: error: console output failed: broken pipe"),
        "one line: the console output failed",
    );
    o.check(!o.stderr.contains("warning"), "no warnings");
}

#[test]
fn a_full_console_file_stops_the_vm_with_one_line() {
    let o = boot("flood", &["--console", "file:/dev/full"]);
    o.check(o.code == Some(1), "exit code 1");
    o.check(
        o.errors().len() == 1 && o.errors()[0].contains("no space left on the device"),
        "one line: the disk is full",
    );
    o.check(!o.stderr.contains("warning"), "no warnings");
}

#[test]
fn a_panic_reported_through_pvpanic_ends_kiln_with_123() {
    let o = boot("pvpanic", &[]);
    o.check(
        o.code == Some(123),
        "exit code 123: the guest kernel panicked",
    );
    o.check(
        o.errors().len() == 1
            && o.errors()[0]
                .contains("the guest kernel panicked: Kernel panic - not syncing: test panic"),
        "one line with the panic message from the console",
    );
    o.check(o.elapsed < Duration::from_secs(20), "stopped at once");
}
