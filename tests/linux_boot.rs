//! Real Linux guests through the real binary: our minimal kernel and
//! Debian's stock cloud kernel boot to the initramfs's init, which reports
//! the kernel version and online CPUs, runs a command and reports its exit
//! status. The guest artifacts come from resources/guests.sh --debian.
//!
//! On nested kvm_pvm hosts a boot takes one to several minutes (every
//! ring-0 instruction is emulated by the host): these tests have generous
//! timeouts and kill the VM when one runs out. Boot times are not asserted
//! here; they are reported by the benchmark script.

#[path = "common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::Outcome;

const MINIMAL_TIMEOUT: Duration = Duration::from_secs(600);
const DEBIAN_TIMEOUT: Duration = Duration::from_secs(1200);

fn artifact(rel: &str) -> PathBuf {
    common::guest_artifact(rel, "run ./resources/guests.sh --debian first")
}

fn boot(kernel: &str, initrd: &str, cpus: &str, command: &str, timeout: Duration) -> Outcome {
    let kernel = artifact(kernel);
    let initrd = artifact(initrd);
    let cmdline = format!("-- {command}");
    common::run(
        &[
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--cpus",
            cpus,
            "--cmdline",
            &cmdline,
            "-v",
        ],
        timeout,
    )
}

/// The kernel release string the build wrote beside a kernel.
fn release(kernel: &str) -> String {
    let path = artifact(&format!("{kernel}/version"));
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

/// The init's report line: kernel release and online CPUs.
fn init_line(o: &Outcome) -> Option<(String, u32)> {
    let line = o
        .stdout
        .lines()
        .find(|l| l.starts_with("KILN-INIT: kernel="))?;
    let rest = line.strip_prefix("KILN-INIT: kernel=")?;
    let (kernel, cpus) = rest.split_once(" cpus=")?;
    Some((kernel.trim().to_string(), cpus.trim().parse().ok()?))
}

fn check_run(o: &Outcome, release: &str, cpus: u32, status: i32, marker: &str) {
    o.check(!o.timed_out, "the guest finished before the timeout");
    o.check(o.errors().is_empty(), "kiln reported no error");
    let init = init_line(o);
    o.check(init.is_some(), "init reported itself");
    let (kernel, online) = init.unwrap();
    o.check(
        kernel == release,
        &format!("kernel release {kernel} == {release}"),
    );
    o.check(
        online == cpus,
        &format!("{online} CPUs online, {cpus} expected"),
    );
    o.check(
        o.stdout.contains(marker),
        "the command's output reached the console",
    );
    o.check(
        o.exit_status() == Some(status),
        &format!("init reported exit status {status}"),
    );
    o.check(o.code == Some(0), "the guest's reboot ended kiln with 0");
    o.check(
        o.stderr.contains("boot-timer: guest boot time"),
        "init wrote the boot-timer byte",
    );
    if o.stderr.contains("host repairs on") {
        o.check(
            timer_deferred(o) > 0,
            "kiln paced the guest's timer interrupts",
        );
    }
}

/// How many of the guest's TSC-deadline writes kiln moved later (all vCPUs).
fn timer_deferred(o: &Outcome) -> u64 {
    o.stderr
        .split("timer_deferred=")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn minimal_kernel_runs_a_command() {
    let o = boot(
        "minimal/vmlinux",
        "initramfs.cpio",
        "1",
        "echo marker-$((6*7)); exit 3",
        MINIMAL_TIMEOUT,
    );
    check_run(&o, &release("minimal"), 1, 3, "marker-42");
}

#[test]
fn minimal_bzimage_with_two_cpus() {
    let o = boot(
        "minimal/bzImage",
        "initramfs.cpio",
        "2",
        "grep -c ^processor /proc/cpuinfo",
        MINIMAL_TIMEOUT,
    );
    check_run(&o, &release("minimal"), 2, 0, "\n2");
}

/// Debian's stock cloud kernel, unpatched, with no command-line additions
/// of ours: loaded through its PVH note, its console on our UART with
/// kiln's command line, it reaches the initramfs's init and runs a command.
/// On the kvm_pvm test hosts that takes about three and a half minutes
/// (kiln's default switches there skip its slowest optional boot work, see
/// SLOW_HOST_CMDLINE, and it paces the guest's timer), hence the long
/// timeout.
#[test]
fn debian_kernel_runs_a_command() {
    let release = release("debian");
    let o = boot(
        "debian/vmlinux",
        "initramfs.cpio",
        "1",
        "uname -r; echo guest-clock=$(date +%s); exit 5",
        DEBIAN_TIMEOUT,
    );
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    o.check(
        o.stdout.contains(&format!("Linux version {release}")),
        "Debian's kernel banner",
    );
    o.check(
        o.stdout.contains("Kernel command line: console=ttyS0"),
        "kiln's command line",
    );
    check_run(&o, &release, 1, 5, &format!("\n{release}"));
    // Its clock (set from our RTC, then kept by the TSC) is still right at
    // the end, timer pacing or not: the line was printed seconds before
    // kiln stopped.
    let guest_now: Option<u64> = o
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("guest-clock=")?.parse().ok());
    o.check(guest_now.is_some(), "the guest printed its clock");
    let lag = host_now as i64 - guest_now.unwrap() as i64;
    o.check(
        (-2..=60).contains(&lag),
        &format!("the guest's clock is within a minute of the host's (lag {lag} s)"),
    );
}
