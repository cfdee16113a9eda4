//! kiln driven the way Firecracker is: `kiln --api-sock` configured and
//! started with curl exactly as Firecracker's getting-started guide does,
//! `--config-file`, `PUT /snapshot/load` into a fresh kiln (resumed at
//! once or paused until `PATCH /vm`), and the refusals Firecracker gives.
//! The guest is the bare-metal payload counting timer interrupts.

#[path = "common/mod.rs"]
mod common;
#[path = "payload/mod.rs"]
mod payload;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{kiln, Running};
use payload::{count_line, counts};

const TIMEOUT: Duration = Duration::from_secs(60);

/// `kiln --api-sock SOCK`, waiting until the socket is there.
fn kiln_api(sock: &Path) -> Running {
    let mut cmd = kiln();
    cmd.arg("--api-sock")
        .arg(sock)
        .current_dir(sock.parent().unwrap());
    let r = Running::start(cmd);
    let t0 = Instant::now();
    while !sock.exists() && t0.elapsed() < TIMEOUT {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(sock.exists(), "kiln serves its API socket");
    r
}

/// One curl request as Firecracker's docs write them; (status, body).
fn curl(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut c = Command::new("curl");
    c.arg("--unix-socket")
        .arg(sock)
        .args(["-s", "-w", "\n%{http_code}", "-X", method])
        .arg(format!("http://localhost{path}"))
        .args(["-H", "Accept: application/json"])
        .args(["-H", "Content-Type: application/json"]);
    if let Some(b) = body {
        c.args(["-d", b]);
    }
    let out = c.output().expect("curl (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn ok(sock: &Path, method: &str, path: &str, body: &str) {
    let (code, answer) = curl(sock, method, path, Some(body));
    assert_eq!(code, 204, "{method} {path} {body}: {answer}");
}

fn refused(sock: &Path, method: &str, path: &str, body: Option<&str>, what: &str) {
    let (code, answer) = curl(sock, method, path, body);
    assert_eq!(code, 400, "{method} {path}: {answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).expect("a JSON error body");
    let msg = v["fault_message"].as_str().expect("fault_message");
    assert!(
        msg.contains(what),
        "{method} {path}: {msg:?} should say {what:?}"
    );
}

fn state(sock: &Path) -> String {
    let (code, body) = curl(sock, "GET", "/", None);
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["state"].as_str().unwrap().to_string()
}

/// Configures and starts the counting payload over the API, as the
/// getting-started guide does (boot source, a root drive, machine config,
/// InstanceStart); returns the running kiln.
fn start_over_the_api(dir: &Path, sock: &Path) -> Running {
    let elf = payload::build();
    let rootfs = dir.join("rootfs.ext4");
    std::fs::write(&rootfs, vec![0u8; 1 << 20]).unwrap();
    let mut vm = kiln_api(sock);
    assert_eq!(state(sock), "Not started");
    // The getting-started guide's first request: the log to a file.
    let log = dir.join("firecracker.log");
    std::fs::write(&log, "").unwrap();
    ok(
        sock,
        "PUT",
        "/logger",
        &format!(
            r#"{{ "log_path": "{}", "level": "Debug", "show_level": true, "show_log_origin": true }}"#,
            log.display()
        ),
    );
    refused(
        sock,
        "PUT",
        "/logger",
        Some(r#"{ "log_path": "/no/such/dir/log" }"#),
        "/no/such/dir/log",
    );
    refused(
        sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
        "Cannot start microvm without kernel configuration.",
    );
    refused(
        sock,
        "PATCH",
        "/vm",
        Some(r#"{"state": "Paused"}"#),
        "before starting",
    );
    ok(
        sock,
        "PUT",
        "/boot-source",
        &format!(
            r#"{{ "kernel_image_path": "{}", "boot_args": "payload=count" }}"#,
            elf.display()
        ),
    );
    ok(
        sock,
        "PUT",
        "/drives/rootfs",
        &format!(
            r#"{{ "drive_id": "rootfs", "path_on_host": "{}", "is_root_device": true, "is_read_only": false }}"#,
            rootfs.display()
        ),
    );
    refused(
        sock,
        "PUT",
        "/drives/other",
        Some(&format!(
            r#"{{ "drive_id": "other", "path_on_host": "{}", "is_root_device": true }}"#,
            rootfs.display()
        )),
        "A root block device already exists!",
    );
    refused(
        sock,
        "PUT",
        "/boot-source",
        Some(r#"{ "kernel_image_path": "/no/such/vmlinux" }"#),
        "/no/such/vmlinux",
    );
    ok(
        sock,
        "PUT",
        "/machine-config",
        r#"{ "vcpu_count": 1, "mem_size_mib": 64 }"#,
    );
    let (code, body) = curl(sock, "GET", "/machine-config", None);
    assert_eq!(code, 200);
    assert!(body.contains("\"mem_size_mib\":64"), "{body}");
    ok(
        sock,
        "PUT",
        "/actions",
        r#"{ "action_type": "InstanceStart" }"#,
    );
    assert_eq!(state(sock), "Running");
    assert!(
        vm.wait_for_stdout(&count_line(3), TIMEOUT),
        "the guest runs"
    );
    refused(
        sock,
        "PUT",
        "/boot-source",
        Some(&format!(
            r#"{{ "kernel_image_path": "{}" }}"#,
            elf.display()
        )),
        "not supported after starting",
    );
    vm
}

#[test]
fn configured_and_started_over_the_api_then_snapshotted_and_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("firecracker.socket");
    let vm = start_over_the_api(dir.path(), &sock);

    // The payload has no keyboard driver: the keys wait in the controller,
    // as on Firecracker (204), the log says the guest ignores them, and
    // once its buffer is full the action is refused.
    ok(
        &sock,
        "PUT",
        "/actions",
        r#"{"action_type": "SendCtrlAltDel"}"#,
    );
    refused(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "SendCtrlAltDel"}"#),
        "keyboard buffer is full",
    );
    let log = std::fs::read_to_string(dir.path().join("firecracker.log")).unwrap();
    assert!(
        log.contains("the guest does not read its PS/2 keyboard"),
        "the log says why nothing happens: {log}"
    );

    // Firecracker's snapshot guide: pause, create, (resume).
    let create = r#"{"snapshot_type": "Full", "snapshot_path": "./snapshot_file", "mem_file_path": "./mem_file"}"#;
    refused(&sock, "PUT", "/snapshot/create", Some(create), "running");
    ok(&sock, "PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(state(&sock), "Paused");
    ok(&sock, "PUT", "/snapshot/create", create);
    let orig = vm.terminate(TIMEOUT);
    orig.check(orig.code == Some(143), "stops on SIGTERM");
    orig.check(!sock.exists(), "the socket is removed at exit");

    // A new kiln loads it, paused; PATCH /vm resumes it.
    let mut vm = kiln_api(&sock);
    let load = r#"{"snapshot_path": "./snapshot_file", "mem_backend": {"backend_type": "File", "backend_path": "./mem_file"}, "resume_vm": false}"#;
    ok(&sock, "PUT", "/snapshot/load", load);
    assert_eq!(state(&sock), "Paused");
    std::thread::sleep(Duration::from_millis(300));
    ok(&sock, "PATCH", "/vm", r#"{"state": "Resumed"}"#);
    let last = *counts(&orig.stdout).last().unwrap();
    assert!(
        vm.wait_for_stdout(&count_line(last + 3), TIMEOUT),
        "counts on"
    );
    refused(&sock, "PUT", "/snapshot/load", Some(load), "not allowed");
    let o = vm.terminate(TIMEOUT);
    let all = counts(&format!("{}{}", orig.stdout, o.stdout));
    let expect: Vec<u64> = (1..=*all.last().unwrap()).collect();
    o.check(all == expect, &format!("no gap, no repeat: {all:?}"));

    // The deprecated mem_file_path, resumed at once.
    let mut vm = kiln_api(&sock);
    refused(
        &sock,
        "PUT",
        "/snapshot/load",
        Some(
            r#"{"snapshot_path": "./snapshot_file", "mem_backend": {"backend_type": "Uffd", "backend_path": "./uffd.sock"}}"#,
        ),
        "Uffd",
    );
    refused(
        &sock,
        "PUT",
        "/snapshot/load",
        Some(r#"{"snapshot_path": "./mem_file", "mem_file_path": "./mem_file"}"#),
        "not a kiln snapshot",
    );
    ok(
        &sock,
        "PUT",
        "/snapshot/load",
        r#"{"snapshot_path": "./snapshot_file", "mem_file_path": "./mem_file", "resume_vm": true}"#,
    );
    assert!(vm.wait_for_stdout(&count_line(last + 2), TIMEOUT));
    vm.terminate(TIMEOUT);

    // Loading after configuring boot resources is refused.
    let vm = kiln_api(&sock);
    ok(
        &sock,
        "PUT",
        "/machine-config",
        r#"{ "vcpu_count": 1, "mem_size_mib": 64 }"#,
    );
    refused(
        &sock,
        "PUT",
        "/snapshot/load",
        Some(load),
        "Loading a microVM snapshot not allowed after configuring boot-specific resources.",
    );
    let o = vm.terminate(TIMEOUT);
    o.check(
        o.code == Some(143),
        "a kiln that never started stops on SIGTERM",
    );
}

fn config_file(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("vm_config.json");
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn a_config_file_boots_at_once_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let elf = payload::build();
    let good = config_file(
        dir.path(),
        &format!(
            r#"{{
  "boot-source": {{ "kernel_image_path": "{}", "boot_args": "payload=count", "initrd_path": null }},
  "drives": [],
  "machine-config": {{ "vcpu_count": 1, "mem_size_mib": 64, "smt": false, "track_dirty_pages": false }},
  "network-interfaces": [],
  "logger": {{ "log_path": "{}", "level": "Info" }}
}}"#,
            elf.display(),
            dir.path().join("fc.log").display()
        ),
    );
    std::fs::write(dir.path().join("fc.log"), "").unwrap();
    let mut cmd = kiln();
    cmd.arg("--config-file").arg(&good);
    let mut vm = Running::start(cmd);
    assert!(
        vm.wait_for_stdout(&count_line(2), TIMEOUT),
        "booted from the file"
    );
    vm.terminate(TIMEOUT);

    for (body, what) in [
        ("{", "is not valid"),
        (r#"{"drives": []}"#, "boot-source"),
        (
            r#"{"boot-source": {"kernel_image_path": "/no/vmlinux"}}"#,
            "/no/vmlinux",
        ),
        (
            &format!(
                r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "metrics": {{}}}}"#,
                elf.display()
            ),
            "metrics",
        ),
        (
            &format!(
                r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "machine-config": {{"vcpu_count": 0, "mem_size_mib": 64}}}}"#,
                elf.display()
            ),
            "vcpu_count 0",
        ),
    ] {
        let path = config_file(dir.path(), body);
        let mut cmd = kiln();
        cmd.arg("--config-file").arg(&path);
        let o = Running::start(cmd).wait(TIMEOUT);
        o.check(o.code == Some(2), &format!("refused: {body}"));
        let errors = o.errors();
        o.check(
            errors.len() == 1 && errors[0].contains(what),
            &format!("one line naming {what:?}"),
        );
    }
    let o = Running::start({
        let mut c = kiln();
        c.arg("--config-file").arg(dir.path().join("missing.json"));
        c
    })
    .wait(TIMEOUT);
    o.check(o.code == Some(2), "a missing file is refused");
}

/// Firecracker's way to stop a guest: `SendCtrlAltDel`. A Linux guest
/// booted over the API (kiln's acpi kernel, which like a distribution
/// kernel finds the PS/2 controller through the DSDT) gets Ctrl+Alt+Delete
/// on its keyboard, reboots, and kiln exits 0.
#[test]
fn send_ctrl_alt_del_reboots_a_linux_guest() {
    let missing = "run ./resources/guests.sh (it builds the acpi kernel and the initramfs) first";
    let kernel = common::guest_artifact("acpi/vmlinux", missing);
    let initrd = common::guest_artifact("initramfs.cpio", missing);
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("firecracker.socket");
    let mut vm = kiln_api(&sock);
    ok(
        &sock,
        "PUT",
        "/boot-source",
        &format!(
            r#"{{ "kernel_image_path": "{}", "initrd_path": "{}", "boot_args": "console=ttyS0 reboot=k panic=1 pci=off -- sleep 3600" }}"#,
            kernel.display(),
            initrd.display()
        ),
    );
    ok(
        &sock,
        "PUT",
        "/machine-config",
        r#"{ "vcpu_count": 1, "mem_size_mib": 256 }"#,
    );
    ok(
        &sock,
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
    );
    let linux = Duration::from_secs(600);
    assert!(
        vm.wait_for_stdout("KILN-INIT:", linux),
        "the guest booted to its init"
    );
    ok(
        &sock,
        "PUT",
        "/actions",
        r#"{"action_type": "SendCtrlAltDel"}"#,
    );
    let o = vm.wait(linux);
    o.check(!o.timed_out, "the guest rebooted before the timeout");
    o.check(
        o.stdout.contains("input: AT Raw Set 2 keyboard"),
        "the guest found the keyboard",
    );
    o.check(
        !o.stderr.contains("does not read its PS/2 keyboard"),
        "kiln saw the guest's keyboard driver",
    );
    o.check(
        o.stdout.contains("reboot: Restarting system"),
        "Ctrl+Alt+Delete rebooted the guest",
    );
    o.check(
        o.stderr.contains("i8042: guest requested a reset"),
        "through the i8042 reset line",
    );
    o.check(o.code == Some(0), "the reboot ended kiln with 0");
}
