//! Bad input: every case ends kiln with exit code 2 and exactly one error
//! line that names the problem, never a panic or a hang.

#[path = "common/mod.rs"]
mod common;
#[path = "payload/mod.rs"]
mod payload;

use std::time::Duration;

use common::{run, Outcome};

const TIMEOUT: Duration = Duration::from_secs(30);

fn expect_usage_error(o: &Outcome, needle: &str) {
    o.check(o.code == Some(2), "exit code 2");
    let errors = o.errors();
    o.check(errors.len() == 1, "exactly one error line");
    o.check(
        errors[0].contains(needle),
        &format!("the error names the problem ({needle})"),
    );
    o.check(!o.stderr.contains("panicked"), "no panic");
    o.check(o.stdout.is_empty(), "the guest never ran");
}

fn payload() -> String {
    payload::build().to_str().unwrap().to_string()
}

fn run_kiln(extra: &[&str]) -> Outcome {
    let k = payload();
    let mut args = vec!["run", "--kernel", &k];
    args.extend_from_slice(extra);
    run(&args, TIMEOUT)
}

#[test]
fn missing_kernel() {
    let o = run(&["run", "--kernel", "/nonexistent/vmlinux"], TIMEOUT);
    expect_usage_error(&o, "cannot open kernel /nonexistent/vmlinux");
}

#[test]
fn kernel_is_a_directory() {
    let o = run(&["run", "--kernel", "/tmp"], TIMEOUT);
    expect_usage_error(&o, "is not a regular file");
}

#[test]
fn kernel_is_not_a_kernel() {
    let dir = common::scratch("notkernel");
    let f = dir.join("script.sh");
    std::fs::write(&f, "#!/bin/sh\necho hello\n").unwrap();
    let o = run(&["run", "--kernel", f.to_str().unwrap()], TIMEOUT);
    expect_usage_error(&o, "is not a Linux kernel");
    // A truncated ELF: right magic, nothing behind it.
    std::fs::write(&f, b"\x7fELF\x02\x01\x01").unwrap();
    let o = run(&["run", "--kernel", f.to_str().unwrap()], TIMEOUT);
    expect_usage_error(&o, "truncated");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn missing_and_empty_initrd() {
    let o = run_kiln(&["--initrd", "/nonexistent/initrd"]);
    expect_usage_error(&o, "cannot open initrd");
    let dir = common::scratch("emptyrd");
    let f = dir.join("empty.cpio");
    std::fs::write(&f, b"").unwrap();
    let o = run_kiln(&["--initrd", f.to_str().unwrap()]);
    expect_usage_error(&o, "is empty");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn initrd_that_does_not_fit() {
    let dir = common::scratch("bigrd");
    let f = dir.join("big.cpio");
    // Sparse: 100 MiB that cost nothing on disk, for a 64 MiB guest.
    std::fs::File::create(&f)
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    let o = run_kiln(&["--initrd", f.to_str().unwrap(), "--memory", "64M"]);
    expect_usage_error(&o, "does not fit");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn cmdline_too_long() {
    let long = "x".repeat(3000);
    let o = run_kiln(&["--cmdline", &long]);
    expect_usage_error(&o, "more than this kernel accepts");
}

#[test]
fn bad_memory_sizes() {
    expect_usage_error(&run_kiln(&["--memory", "lots"]), "invalid --memory 'lots'");
    expect_usage_error(&run_kiln(&["--memory", "1.5G"]), "invalid --memory");
    expect_usage_error(&run_kiln(&["--memory", "8M"]), "too small");
    expect_usage_error(&run_kiln(&["--memory", "64T"]), "exceeds this host's RAM");
}

#[test]
fn bad_cpu_counts() {
    expect_usage_error(&run_kiln(&["--cpus", "0"]), "--cpus must be at least 1");
    expect_usage_error(&run_kiln(&["--cpus", "33"]), "more than kiln supports");
    // Not a number at all: clap's own usage error, also exit code 2.
    let o = run_kiln(&["--cpus", "two"]);
    o.check(
        o.code == Some(2) && !o.stderr.contains("panicked"),
        "clap rejects it",
    );
}

#[test]
fn bad_console() {
    expect_usage_error(&run_kiln(&["--console", "tty"]), "invalid --console");
    expect_usage_error(
        &run_kiln(&["--console", "file:/nonexistent/dir/log"]),
        "cannot open console file",
    );
}

#[test]
fn no_kvm_device() {
    expect_usage_error(
        &run_kiln(&["--kvm-device", "/nonexistent/kvm"]),
        "does not exist",
    );
}

#[test]
fn not_a_kvm_device() {
    // /dev/null opens, but answers no KVM ioctl: the API version check says so.
    expect_usage_error(&run_kiln(&["--kvm-device", "/dev/null"]), "KVM API version");
}

#[test]
fn no_permission_on_kvm() {
    // Run as an unprivileged user (we are root in CI); /dev/kvm is root-only
    // here. Where that is not so, the test has nothing to show.
    let meta = std::fs::metadata("/dev/kvm");
    let root_only = meta.map(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode() & 0o006 == 0
    });
    if !matches!(root_only, Ok(true)) || unsafe_geteuid() != 0 {
        eprintln!("skipping: /dev/kvm is not root-only or we are not root");
        return;
    }
    let dir = common::scratch("noperm");
    let k = dir.join("payload.elf");
    std::fs::copy(payload::build(), &k).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .args(["run", "--kernel", k.to_str().unwrap()]);
    let o = common::Running::start(cmd).wait(TIMEOUT);
    if o.stderr.contains("Permission denied") && o.code == Some(126) {
        eprintln!("skipping: the kiln binary is not reachable for an unprivileged user");
        return;
    }
    expect_usage_error(&o, "permission denied opening /dev/kvm");
    let _ = std::fs::remove_dir_all(dir);
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

#[test]
fn bad_disk_options() {
    let o = run_kiln(&["--disk", "/nonexistent/disk.img"]);
    expect_usage_error(&o, "cannot open disk image /nonexistent/disk.img");
    let o = run_kiln(&["--disk", "x.img,readonly"]);
    expect_usage_error(
        &o,
        "invalid --disk 'x.img,readonly': unknown option 'readonly'",
    );
    let o = run_kiln(&["--root-disk"]);
    expect_usage_error(&o, "--root-disk needs a --disk");
    let o = run_kiln(&["--net", "mac=02:00:00:00:00:01"]);
    expect_usage_error(&o, "invalid --net");
}

#[test]
fn disk_whose_size_is_not_whole_sectors() {
    let dir = common::scratch("oddsize");
    let img = dir.join("odd.img");
    std::fs::write(&img, vec![0u8; 1000]).unwrap();
    let o = run_kiln(&["--disk", img.to_str().unwrap()]);
    expect_usage_error(&o, "512");
    o.check(
        std::fs::read(&img).unwrap() == vec![0u8; 1000],
        "the image is untouched",
    );
}

#[test]
fn disk_in_use_by_another_kiln() {
    let dir = common::scratch("locked");
    let img = dir.join("shared.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let elf = payload();
    let mut first = common::kiln();
    first.args([
        "run",
        "--kernel",
        &elf,
        "--cmdline",
        "payload=spin",
        "--disk",
        img.to_str().unwrap(),
    ]);
    let mut first = common::Running::start(first);
    assert!(
        first.wait_for_stdout("spinning", TIMEOUT),
        "the first kiln runs with the disk"
    );
    let holder = first.pid();
    let second = run_kiln(&["--disk", img.to_str().unwrap()]);
    // A read-only open of an image someone writes is refused too.
    let second_ro = run_kiln(&["--disk", &format!("{},ro", img.display())]);
    let first = first.terminate(TIMEOUT);
    first.check(first.code == Some(143), "the first kiln stopped on SIGTERM");
    expect_usage_error(&second, "in use");
    second.check(
        second.errors()[0].contains(&holder.to_string()),
        &format!("the error names the holder (pid {holder})"),
    );
    expect_usage_error(&second_ro, "in use");
}

#[test]
fn bad_net_options() {
    let o = run_kiln(&["--net", "tap=kiln-nosuch0"]);
    expect_usage_error(&o, "tap `kiln-nosuch0` does not exist");
    o.check(
        !std::path::Path::new("/sys/class/net/kiln-nosuch0").exists(),
        "no interface was created",
    );
    let o = run_kiln(&["--net", "tap=kiln-nosuch0,mac=02:00:00:00:00"]);
    expect_usage_error(&o, "bad MAC address");
    let o = run_kiln(&["--net", "tap=kiln-nosuch0,mac=01:00:5e:00:00:01"]);
    expect_usage_error(&o, "multicast");
}

#[test]
fn bad_timer_gap() {
    let k = payload();
    for bad in ["fast", "-5", "1001", ""] {
        let mut cmd = common::kiln();
        cmd.env("KILN_TIMER_GAP_MS", bad).args([
            "run",
            "--kernel",
            &k,
            "--cmdline",
            "payload=hello",
        ]);
        let o = common::Running::start(cmd).wait(TIMEOUT);
        expect_usage_error(&o, "KILN_TIMER_GAP_MS");
    }
}

#[test]
fn bad_vsock_options() {
    let o = run_kiln(&["--vsock", "/nonexistent/dir/v.sock"]);
    expect_usage_error(&o, "directory /nonexistent/dir does not exist");
    let o = run_kiln(&["--vsock", "/tmp/v.sock,cid=2"]);
    expect_usage_error(&o, "cid '2' is not a guest CID");
    let o = run_kiln(&["--vsock", "/tmp/v.sock,port=5"]);
    expect_usage_error(&o, "unknown option 'port=5'");
    let dir = common::scratch("vsock-file");
    let file = dir.join("not-a-socket");
    std::fs::write(&file, b"keep me").unwrap();
    let o = run_kiln(&["--vsock", file.to_str().unwrap()]);
    expect_usage_error(&o, "exists and is not a socket");
    o.check(
        std::fs::read(&file).unwrap() == b"keep me",
        "the file is left alone",
    );
    let long = dir.join("x".repeat(100));
    let o = run_kiln(&["--vsock", long.to_str().unwrap()]);
    expect_usage_error(&o, "is too long");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn no_kernel_and_sandbox_options_without_a_command() {
    let o = run(&["run"], TIMEOUT);
    expect_usage_error(&o, "kiln run needs --kernel PATH, or a command after --");
    for (opt, value) in [
        ("--timeout", "3s"),
        ("--env", "A=1"),
        ("--workdir", "/"),
        ("--copy-in", "/etc/hostname:/x"),
        ("--copy-out", "/x:/tmp/kiln-copy-out-test"),
    ] {
        let o = run_kiln(&[opt, value]);
        expect_usage_error(
            &o,
            &format!("{opt} only applies to a command given after --"),
        );
    }
    let o = run_kiln(&["-t"]);
    expect_usage_error(&o, "-t only applies to a command given after --");
}

#[test]
fn contradictory_disk_modes_are_refused() {
    let dir = common::scratch("disk-modes");
    let img = dir.join("d.img");
    std::fs::write(&img, vec![0u8; 4096]).unwrap();
    for modes in ["ro,rw", "rw,ro", "ro,snapshot", "snapshot,rw"] {
        let spec = format!("{},{modes}", img.display());
        let o = run_kiln(&["--disk", &spec]);
        expect_usage_error(&o, "contradict each other");
    }
    o_unchanged(&img);
    std::fs::remove_dir_all(dir).unwrap();
}

fn o_unchanged(img: &std::path::Path) {
    assert_eq!(std::fs::read(img).unwrap(), vec![0u8; 4096]);
}

/// A usage error that is all kiln prints: one line, nothing from clap.
fn expect_only_line(o: &Outcome, code: i32, needle: &str) {
    o.check(o.code == Some(code), &format!("exit code {code}"));
    o.check(o.stderr.lines().count() == 1, "one line on stderr");
    o.check(
        o.errors().len() == 1 && o.errors()[0].contains(needle),
        &format!("kiln: error: ... {needle}"),
    );
}

#[test]
fn parser_errors_are_one_line() {
    let k = payload();
    for (args, says) in [
        (&["run", "--bogus"][..], "unexpected argument '--bogus'"),
        (&["frobnicate"], "unrecognized subcommand 'frobnicate'"),
        (
            &["run", "--kernel", &k, "--cpus", "abc"],
            "invalid value 'abc'",
        ),
        (
            &["run", "--cpu", "2"],
            "a similar argument exists: '--cpus'",
        ),
        (&["run", "--memory"], "a value is required for '--memory"),
    ] {
        expect_only_line(&run(args, TIMEOUT), 2, says);
    }
    // With a sandbox command, kiln's own errors are 125 (2 may be the
    // command's status).
    expect_only_line(
        &run(&["run", "--bogus", "--", "true"], TIMEOUT),
        125,
        "unexpected argument '--bogus'",
    );
    // Negative numbers reach kiln's own checks instead of clap's guesses.
    expect_usage_error(&run_kiln(&["--cpus", "-1"]), "--cpus must be at least 1");
    expect_usage_error(&run_kiln(&["--memory", "-5"]), "invalid --memory '-5'");
}

#[test]
fn memory_sizes_are_reported_as_given() {
    expect_usage_error(
        &run_kiln(&["--memory", "1K"]),
        "--memory 1 KiB is too small",
    );
    expect_usage_error(
        &run_kiln(&["--memory", "31M"]),
        "--memory 31 MiB is too small",
    );
}

fn mkfifo(path: &std::path::Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[test]
fn fifos_never_hang_kiln() {
    let dir = common::scratch("fifos");
    let fifo = dir.join("fifo");
    mkfifo(&fifo);
    let f = fifo.to_str().unwrap();
    expect_usage_error(
        &run(&["run", "--kernel", f], TIMEOUT),
        "is not a regular file",
    );
    expect_usage_error(&run_kiln(&["--initrd", f]), "is not a regular file");
    let console = format!("file:{f}");
    expect_usage_error(&run_kiln(&["--console", &console]), "FIFO with no reader");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn truncated_and_foreign_kernels_are_refused() {
    let dir = common::scratch("truncated");
    let cut = dir.join("kernel.cut");
    let vmlinux = common::guest_artifact("minimal/vmlinux", "run ./resources/guests.sh");
    let elf = std::fs::read(vmlinux).unwrap();
    std::fs::write(&cut, &elf[..3_000_000]).unwrap();
    let o = run(&["run", "--kernel", cut.to_str().unwrap()], TIMEOUT);
    expect_usage_error(&o, "truncated");
    // A program is an ELF file too, but not a kernel.
    let o = run(&["run", "--kernel", "/bin/ls"], TIMEOUT);
    expect_usage_error(&o, "not a kernel");
    // Our own bzImage cut where the issue saw it boot and triple-fault.
    let bz = common::guest_artifact("minimal/bzImage", "run ./resources/guests.sh");
    let bytes = std::fs::read(bz).unwrap();
    std::fs::write(&cut, &bytes[..2_000_000]).unwrap();
    let o = run(&["run", "--kernel", cut.to_str().unwrap()], TIMEOUT);
    expect_usage_error(&o, "truncated");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_console_is_never_written_into_an_image() {
    let dir = common::scratch("console-image");
    let img = dir.join("c.img");
    std::fs::write(&img, vec![0u8; 4096]).unwrap();
    let link = dir.join("link.img");
    std::os::unix::fs::symlink(&img, &link).unwrap();
    let disk = format!("{},ro", img.display());
    let console = format!("file:{}", link.display());
    expect_usage_error(
        &run_kiln(&["--disk", &disk, "--console", &console]),
        "is the VM's disk image",
    );
    // Nor into an image another VM holds (its lock), nor the kernel.
    let held = std::fs::File::open(&img).unwrap();
    held.try_lock_shared().unwrap();
    expect_usage_error(
        &run_kiln(&["--console", &console]),
        "is locked by another process",
    );
    drop(held);
    let own = format!("file:{}", payload());
    expect_usage_error(&run_kiln(&["--console", &own]), "is the VM's kernel");
    o_unchanged(&img);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_disk_or_tap_given_twice_is_named_as_such() {
    let dir = common::scratch("disk-twice");
    let img = dir.join("d.img");
    std::fs::write(&img, vec![0u8; 4096]).unwrap();
    let link = dir.join("alias.img");
    std::os::unix::fs::symlink(&img, &link).unwrap();
    let (a, b) = (img.to_str().unwrap(), link.to_str().unwrap());
    let o = run_kiln(&["--disk", a, "--disk", b]);
    expect_usage_error(&o, "is the same file as --disk");
    o.check(
        !o.stderr.contains("in use by process"),
        "not blamed on a process",
    );
    let o = run_kiln(&["--net", "tap=kiln9", "--net", "tap=kiln9"]);
    expect_usage_error(&o, "--net tap=kiln9 is given twice");
    o_unchanged(&img);
    std::fs::remove_dir_all(dir).unwrap();
}
