//! `kiln run -- CMD` from a template: the first run boots the guest and
//! snapshots it when its agent comes up; later runs restore that snapshot
//! (in parallel too), each with its own clock, randomness, hostname and
//! machine id; `--no-template` boots; a broken template is replaced.
//! Each test has a cache directory of its own (KILN_CACHE_DIR).

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Outcome, Running};

/// Generous: a boot takes 30-45 s here, more on a loaded host.
const TIMEOUT: Duration = Duration::from_secs(300);

fn guest() -> (PathBuf, PathBuf) {
    (
        common::guest_artifact("minimal/vmlinux", "run ./resources/guests.sh"),
        common::guest_artifact("initramfs.cpio", "run ./resources/guests.sh"),
    )
}

/// `kiln run -v [opts] -- sh -c SCRIPT` with the cache in `cache` (the
/// initramfs unless `opts` has `--rootfs`).
fn run(cache: &Path, opts: &[&str], script: &str) -> Running {
    let (kernel, initrd) = guest();
    let mut cmd = common::kiln();
    cmd.arg("run").arg("-v").arg("--kernel").arg(kernel);
    if !opts.contains(&"--rootfs") {
        cmd.arg("--initrd").arg(initrd);
    }
    cmd.args(opts)
        .args(["--", "sh", "-c", script])
        .env("KILN_CACHE_DIR", cache);
    Running::start(cmd)
}

fn finished(r: Running) -> Outcome {
    let o = r.wait(TIMEOUT);
    o.check(!o.timed_out, "kiln finished by itself");
    o
}

fn restored(o: &Outcome) -> bool {
    o.stderr.contains("sandbox: restored from the template")
}

fn saved(o: &Outcome) -> bool {
    o.stderr.contains("sandbox: template saved")
}

/// The one template in `cache`.
fn the_template(cache: &Path) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(cache.join("templates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "one template: {dirs:?}");
    dirs.pop().unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// What a clone reports about itself.
const IDENTITY: &str = "hostname; cat /etc/machine-id; date +%s; \
     head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo";

#[test]
fn one_boot_makes_the_template_and_clones_restore_it_each_as_itself() {
    let cache = tempfile::tempdir().unwrap();
    let first = finished(run(cache.path(), &[], "echo first; exit 3"));
    first.check(first.code == Some(3), "the command's status");
    first.check(first.stdout == "first\n", "the command's output");
    first.check(saved(&first) && !restored(&first), "booted, template saved");
    the_template(cache.path());

    // Three clones at once, each running its own command.
    let clones: Vec<Running> = (0..3)
        .map(|i| run(cache.path(), &[], &format!("echo clone-{i}; {IDENTITY}")))
        .collect();
    let mut seen: Vec<Vec<String>> = Vec::new();
    for (i, r) in clones.into_iter().enumerate() {
        let o = finished(r);
        o.check(o.code == Some(0), "a clone's command succeeds");
        o.check(restored(&o) && !saved(&o), "restored, not booted");
        let lines: Vec<String> = o.stdout.lines().map(String::from).collect();
        o.check(lines.len() == 5, "five lines");
        o.check(lines[0] == format!("clone-{i}"), "its own command ran");
        o.check(lines[1].starts_with("kiln-"), "a kiln hostname");
        o.check(lines[2].len() == 32, "a machine id");
        let t: u64 = lines[3].parse().expect("date +%s");
        o.check(
            t.abs_diff(now()) < 120,
            &format!("the guest's clock is the host's, not the template's: {t}"),
        );
        o.check(lines[4].len() == 32, "16 random bytes");
        eprintln!(
            "clone {i}: restored run took {:.1} s",
            o.elapsed.as_secs_f64()
        );
        seen.push(lines[1..].to_vec());
    }
    for field in [0, 1, 3] {
        let mut values: Vec<&String> = seen.iter().map(|s| &s[field]).collect();
        values.sort();
        values.dedup();
        assert_eq!(
            values.len(),
            3,
            "field {field} differs between clones: {seen:?}"
        );
    }
    eprintln!(
        "first (booted) run took {:.1} s",
        first.elapsed.as_secs_f64()
    );

    // A clone counts and traces as a booted kiln does: --trace's table
    // and -v's counters come after the command.
    let o = finished(run(cache.path(), &["--trace=vsock"], "echo traced"));
    o.check(o.code == Some(0) && o.stdout == "traced\n", "ran");
    o.check(restored(&o), "restored");
    o.check(
        o.stderr.contains("kiln trace: ") && o.stderr.contains("  vsock "),
        "the trace's table, with the vsock device's line",
    );
    o.check(o.stderr.contains("kiln: exits: "), "-v's exit counters");
}

#[test]
fn no_template_boots_and_a_broken_template_is_replaced() {
    let cache = tempfile::tempdir().unwrap();
    let o = finished(run(cache.path(), &["--no-template"], "echo fresh"));
    o.check(o.code == Some(0) && o.stdout == "fresh\n", "ran");
    o.check(!saved(&o) && !restored(&o), "no template made or used");
    assert!(!cache.path().join("templates").exists());

    let o = finished(run(cache.path(), &[], "true"));
    o.check(saved(&o), "template made");
    let dir = the_template(cache.path());
    // Truncate its state file: the next run says so, boots, makes a new one.
    let state = dir.join("state");
    let len = std::fs::metadata(&state).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&state)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let o = finished(run(cache.path(), &[], "echo after"));
    o.check(o.code == Some(0) && o.stdout == "after\n", "ran anyway");
    o.check(
        o.stderr.contains("the template cannot be restored") && o.stderr.contains("truncated"),
        "the broken template is named",
    );
    o.check(saved(&o), "and replaced");
    let o = finished(run(cache.path(), &[], "echo again"));
    o.check(restored(&o) && o.stdout == "again\n", "the new one is used");
}

#[test]
fn a_rootfs_template_keeps_its_layer_and_clones_never_see_each_others_writes() {
    let cache = tempfile::tempdir().unwrap();
    let image = common::guest_artifact("rootfs.ext4", "run ./resources/guests.sh");
    let before = common::sha256_of(&image);
    let rootfs = image.to_str().unwrap();
    let write = "cat /mark 2>/dev/null || echo none; echo $$ > /mark; sync; cat /mark >/dev/null && echo wrote";
    let first = finished(run(cache.path(), &["--rootfs", rootfs], write));
    first.check(first.stdout == "none\nwrote\n", "a fresh root");
    first.check(saved(&first), "template saved, with the root's layer");
    let dir = the_template(cache.path());
    assert!(dir.join("state.layer0").is_file(), "the layer is kept");
    for _ in 0..2 {
        let o = finished(run(cache.path(), &["--rootfs", rootfs], write));
        o.check(restored(&o), "restored");
        o.check(
            o.stdout == "none\nwrote\n",
            "the template's root, without the other runs' writes",
        );
    }
    assert_eq!(common::sha256_of(&image), before, "the image never changes");
}
