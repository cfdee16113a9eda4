//! The test agent (tests/agent: a no_std guest that boots through kiln's
//! PVH entry and runs its checks at ring 3) under the real kiln binary.
//! It boots and finishes in tens of milliseconds; the harness around it
//! must be able to fail, which the deliberate-failure tests prove.

#[path = "agent/mod.rs"]
mod agent;
#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);

fn run_agent(cmdline: &str) -> (common::Outcome, agent::Report) {
    let elf = agent::build();
    let o = common::run(
        &[
            "run",
            "--kernel",
            elf.to_str().unwrap(),
            "--cmdline",
            cmdline,
        ],
        TIMEOUT,
    );
    let report = agent::Report::parse(&o.stdout);
    (o, report)
}

#[test]
fn agent_checks_pass() {
    let (o, r) = run_agent("agent.test=selftest,boottime,probe");
    o.check(o.code == Some(0), "the agent resets at the end");
    o.check(r.ok(), &r.summary());
    for name in ["boottime", "probe"] {
        o.check(
            r.check(name) == Some(None),
            &format!("check {name} ran and passed"),
        );
    }
    o.check(
        o.stderr.contains("boot-timer: guest boot time"),
        "boot timer logged",
    );
    o.check(
        o.stderr.contains("PVH entry"),
        "booted through the PVH note",
    );
}

#[test]
fn agent_runs_with_two_vcpus_and_little_memory() {
    let (o, r) = run_agent("agent.test=selftest");
    o.check(o.code == Some(0) && r.ok(), &r.summary());
    let elf = agent::build();
    let o = common::run(
        &[
            "run",
            "--kernel",
            elf.to_str().unwrap(),
            "--cpus",
            "2",
            "--memory",
            "64M",
        ],
        TIMEOUT,
    );
    let r = agent::Report::parse(&o.stdout);
    o.check(o.code == Some(0) && r.ok(), &r.summary());
}

#[test]
fn a_forced_failure_fails_the_report() {
    let (o, r) = run_agent("agent.test=selftest agent.fail=selftest");
    o.check(!r.ok(), "a failed check makes the report fail");
    o.check(
        matches!(r.check("selftest"), Some(Some(_))),
        "selftest reported FAIL",
    );
    o.check(
        r.done.map(|d| d.1) == Some(1),
        "done line counts one failure",
    );
}

#[test]
fn a_crashing_guest_fails_the_report() {
    for test in ["fault", "badport", "panic"] {
        let (o, r) = run_agent(&format!("agent.test={test}"));
        o.check(!r.ok(), &format!("{test}: a crash is not a pass"));
        o.check(
            r.crash.is_some(),
            &format!("{test}: the crash was reported"),
        );
        o.check(r.done.is_none(), &format!("{test}: no done line"));
    }
}

/// `wait` (used by resources/bench.sh) waits for a console byte and passes
/// when one comes; without one it fails after `agent.wait_ms`.
#[test]
fn the_wait_check_answers_a_console_byte() {
    let elf = agent::build();
    let mut cmd = common::kiln();
    cmd.args(["run", "--kernel", elf.to_str().unwrap(), "--cmdline"])
        .arg("agent.test=wait");
    let mut vm = common::Running::start(cmd);
    let waiting = vm.wait_for_stdout("AGENT: wait for a byte", TIMEOUT);
    vm.send(b"x");
    let o = vm.wait(TIMEOUT);
    let r = agent::Report::parse(&o.stdout);
    o.check(waiting, "the agent said it waits");
    o.check(r.check("wait") == Some(None), &r.summary());

    let (o, r) = run_agent("agent.test=wait agent.wait_ms=100");
    o.check(
        matches!(r.check("wait"), Some(Some(why)) if why.contains("within 100 ms")),
        "without a byte the check fails after agent.wait_ms",
    );
}
