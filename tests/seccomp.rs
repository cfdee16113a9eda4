//! seccomp under the real kiln binary (issue 18): a thread with an
//! allow-list does its work under it, and a call outside the list stops
//! kiln with one line naming the thread and the call, exit code 159.
//! `KILN_SECCOMP_SELFTEST=KIND` makes that kind of thread call getppid,
//! which no list allows, right after installing its filter.

#[path = "agent/mod.rs"]
mod agent;
#[path = "common/mod.rs"]
mod common;

use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);

/// `kiln run [opts] --kernel AGENT --cmdline CHECKS --disk IMAGE`.
fn kiln_with_a_disk(opts: &[&str], checks: &str, image: &std::path::Path) -> Command {
    let elf = agent::build();
    let mut cmd = common::kiln();
    cmd.arg("run")
        .args(opts)
        .arg("--kernel")
        .arg(elf)
        .args(["--cmdline", checks, "--disk"])
        .arg(image);
    cmd
}

fn image(name: &str) -> tempfile::NamedTempFile {
    let f = tempfile::Builder::new()
        .prefix(&format!("kiln-seccomp-{name}-"))
        .tempfile()
        .unwrap();
    f.as_file().set_len(16 << 20).unwrap();
    f
}

/// The disk and the vCPU threads (whose filter every VM test runs under)
/// do a disk's work with their filters in.
#[test]
fn a_disk_thread_works_under_its_filter() {
    let img = image("works");
    let o = common::Running::start(kiln_with_a_disk(
        &[],
        "agent.test=blk-rw:0,blk-flush,blk-bench",
        img.path(),
    ))
    .wait(TIMEOUT);
    let r = agent::Report::parse(&o.stdout);
    o.check(
        r.ok(),
        "every disk check passes with --seccomp on (the default)",
    );
    o.check(!o.stderr.contains("seccomp"), "no seccomp report");
}

#[test]
fn a_forbidden_call_on_a_disk_vcpu_or_api_thread_stops_kiln_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let sock = sock.to_str().unwrap();
    for (kind, label, opts) in [
        ("disk", "disk I/O", vec![]),
        ("vcpu", "vCPU", vec![]),
        ("api", "API", vec!["--api-sock", sock]),
    ] {
        let img = image("stops");
        let mut cmd = kiln_with_a_disk(&opts, "agent.test=blk-rw:0", img.path());
        cmd.env("KILN_SECCOMP_SELFTEST", kind);
        let o = common::Running::start(cmd).wait(TIMEOUT);
        o.check(!o.timed_out, "kiln stopped by itself");
        o.check(o.code == Some(159), "exit code 128 + SIGSYS");
        o.check(
            o.stderr.contains(&format!(
                "kiln: error: seccomp: the {label} thread made the system call getppid (110)"
            )),
            "one line naming the thread and the call",
        );
    }
}

#[test]
fn seccomp_log_and_off_let_the_call_through() {
    for mode in ["log", "off"] {
        let img = image(mode);
        let mut cmd = kiln_with_a_disk(&["--seccomp", mode], "agent.test=blk-rw:0", img.path());
        cmd.env(
            "KILN_SECCOMP_SELFTEST",
            if mode == "log" { "vcpu" } else { "disk" },
        );
        let o = common::Running::start(cmd).wait(TIMEOUT);
        let r = agent::Report::parse(&o.stdout);
        o.check(
            o.code == Some(0) && r.ok(),
            &format!("--seccomp {mode}: the run goes on"),
        );
        o.check(!o.stderr.contains("seccomp:"), "no report");
    }
    let o = common::Running::start({
        let mut c = common::kiln();
        c.args(["run", "--seccomp", "maybe", "--kernel", "/nonexistent"]);
        c
    })
    .wait(TIMEOUT);
    o.check(o.code == Some(2), "a bad --seccomp value is a usage error");
    o.check(
        o.stderr.contains("--seccomp") && o.stderr.lines().count() == 1,
        "one line naming the option",
    );
}
