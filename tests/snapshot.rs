//! Snapshot and restore through the real binary, with the bare-metal test
//! payload counting timer interrupts in memory: snapshotted mid-run with
//! `kiln snapshot` (over the API socket), continued in new kiln processes
//! with the count intact; bad and foreign snapshot files; and, with the
//! test agent, a virtio-blk write in flight across a snapshot. (Firecracker's
//! API driven with curl: tests/firecracker_api.rs.)

#[path = "agent/mod.rs"]
mod agent;
#[path = "common/mod.rs"]
mod common;
#[path = "payload/mod.rs"]
mod payload;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{kiln, Outcome, Running};
use payload::{count_line, counts};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Starts the payload counting, with an API socket at `sock`.
fn counting(sock: &Path) -> Running {
    let elf = payload::build();
    let mut cmd = kiln();
    cmd.args(["run", "--memory", "64M", "--kernel"])
        .arg(elf)
        .args(["--cmdline", "payload=count", "--api-sock"])
        .arg(sock)
        .current_dir(sock.parent().expect("the socket's directory"));
    Running::start(cmd)
}

/// `kiln snapshot` against `sock`.
fn kiln_snapshot(sock: &Path, dir: &Path, extra: &[&str]) -> std::process::Output {
    kiln()
        .arg("snapshot")
        .arg("--api-sock")
        .arg(sock)
        .args(extra)
        .arg(dir)
        .output()
        .expect("run kiln snapshot")
}

/// `kiln snapshot --leave-paused` of `orig` into `snap`, then SIGTERM to
/// the original, which must stop with 143.
fn snapshot_and_stop(orig: Running, sock: &Path, snap: &Path) -> Outcome {
    let out = kiln_snapshot(sock, snap, &["--leave-paused"]);
    assert!(
        out.status.success(),
        "kiln snapshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let o = orig.terminate(TIMEOUT);
    o.check(o.code == Some(143), "the original stops on SIGTERM");
    o
}

/// Takes a snapshot of a payload that has counted to at least 5, leaving
/// it paused; returns what the original printed in all.
fn snapshot_counting_payload(dir: &Path, snap: &Path) -> Outcome {
    let sock = dir.join("api.sock");
    let mut orig = counting(&sock);
    assert!(
        orig.wait_for_stdout(&count_line(5), TIMEOUT),
        "the payload counts to 5"
    );
    let o = snapshot_and_stop(orig, &sock, snap);
    o.check(!sock.exists(), "the API socket is removed at exit");
    o
}

#[test]
fn a_counting_guest_continues_in_new_kilns_from_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap");
    let orig = snapshot_counting_payload(dir.path(), &snap);
    let before = counts(&orig.stdout);
    let last = *before.last().unwrap();
    assert!(last >= 5);
    let memory = std::fs::read(snap.join("memory")).unwrap();
    assert_eq!(memory.len(), 64 << 20, "the memory file is guest RAM");

    // Restored twice from the same files: each continues the count where
    // the original was paused, with nothing lost or repeated (the stream
    // of the original followed by the restored one's is 1, 2, 3, ...).
    for round in 0..2 {
        let mut cmd = kiln();
        cmd.arg("run").arg("--restore").arg(&snap);
        let mut r = Running::start(cmd);
        assert!(
            r.wait_for_stdout(&count_line(last + 3), TIMEOUT),
            "round {round}: the restored guest counts on"
        );
        let o = r.terminate(TIMEOUT);
        o.check(o.code == Some(143), "the restored kiln stops on SIGTERM");
        o.check(o.stderr.contains("restored 1 vCPU(s)"), "restore logged");
        let joined = format!("{}{}", orig.stdout, o.stdout);
        let all = counts(&joined);
        let expect: Vec<u64> = (1..=*all.last().unwrap()).collect();
        o.check(
            all == expect,
            &format!("round {round}: counts continue without a gap or a repeat: {all:?}"),
        );
        o.check(
            !o.stdout.contains("mode=count"),
            "no boot in the restored VM",
        );
    }
    // MAP_PRIVATE: the restored guests' writes never reached the file.
    assert!(std::fs::read(snap.join("memory")).unwrap() == memory);
}

/// Runs `kiln run --restore DIR` expecting a refusal: exit 2, one error
/// line that contains `what`, no guest output.
fn refused(dir: &Path, what: &str) {
    let mut cmd = kiln();
    cmd.arg("run").arg("--restore").arg(dir);
    let o = Running::start(cmd).wait(TIMEOUT);
    o.check(o.code == Some(2), &format!("refused with 2 ({what})"));
    let errors = o.errors();
    o.check(errors.len() == 1, "one error line");
    o.check(
        errors[0].contains(what),
        &format!("the error says {what:?}"),
    );
    o.check(o.stdout.is_empty(), "no guest ran");
}

/// A copy of the snapshot in `snap` with its state file changed by `f`.
fn variant(snap: &Path, name: &str, f: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let dir = snap.with_file_name(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut state = std::fs::read(snap.join("state")).unwrap();
    f(&mut state);
    std::fs::write(dir.join("state"), state).unwrap();
    std::os::unix::fs::symlink(snap.join("memory"), dir.join("memory")).unwrap();
    dir
}

#[test]
fn bad_and_foreign_snapshots_are_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap");
    snapshot_counting_payload(dir.path(), &snap);

    refused(&dir.path().join("nothing-here"), "nothing-here/state");
    let trunc = variant(&snap, "truncated", |s| s.truncate(s.len() / 2));
    refused(&trunc, "truncated");
    let flip = variant(&snap, "flipped", |s| {
        let i = s.len() - 100;
        s[i] ^= 0x55;
    });
    refused(&flip, "corrupted");
    let format = variant(&snap, "format", |s| s[8] = 77);
    refused(&format, "snapshot format 77");
    let elf = variant(&snap, "elf", |s| *s = b"\x7fELF\x02\x01\x01".to_vec());
    refused(&elf, "not a kiln snapshot");
    let empty = variant(&snap, "empty", Vec::clear);
    refused(&empty, "not a kiln snapshot");

    // A memory file of another size.
    let small = dir.path().join("small-memory");
    std::fs::create_dir_all(&small).unwrap();
    std::fs::copy(snap.join("state"), small.join("state")).unwrap();
    std::fs::write(small.join("memory"), vec![0u8; 4096]).unwrap();
    refused(&small, "the memory file");

    // And the good one still restores.
    let mut cmd = kiln();
    cmd.arg("run").arg("--restore").arg(&snap);
    let mut r = Running::start(cmd);
    assert!(r.wait_for_stdout(&count_line(7), TIMEOUT));
    r.terminate(TIMEOUT);
}

/// Whether sectors `first..first + 8` of `image` hold the agent's blk
/// pattern for `seed` (word `w` of sector `s` is
/// `splitmix64(seed ^ (s * 64 + w))`, little endian).
fn holds_pattern(image: &[u8], seed: u64, first: u64) -> bool {
    (first..first + 8).all(|s| {
        let sector = &image[s as usize * 512..][..512];
        sector.chunks_exact(8).enumerate().all(|(w, word)| {
            u64::from_le_bytes(word.try_into().unwrap())
                == agent::splitmix64(seed ^ (s * 64 + w as u64))
        })
    })
}

/// The agent's `blk-inflight` check makes a write available without
/// notifying the device and waits; the snapshot is taken then. The
/// original never serves it; the restored kiln does, exactly once (the
/// agent checks the used index and reads the data back), and the sectors
/// are in the image afterwards.
#[test]
fn a_block_write_in_flight_across_a_snapshot_lands_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (img, sock, snap) = (
        dir.path().join("disk.img"),
        dir.path().join("api.sock"),
        dir.path().join("snap"),
    );
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let seed = 0x1f_f119_u64;
    let mut cmd = kiln();
    cmd.args(["run", "--memory", "64M", "--kernel"])
        .arg(agent::build())
        .arg("--cmdline")
        .arg(format!("agent.test=blk-inflight agent.seed={seed:#x}"))
        .arg("--disk")
        .arg(&img)
        .arg("--api-sock")
        .arg(&sock);
    let mut orig = Running::start(cmd);
    assert!(
        orig.wait_for_stdout("AGENT: blk-inflight waiting", TIMEOUT),
        "the agent leaves a write in flight"
    );
    let o = snapshot_and_stop(orig, &sock, &snap);
    o.check(
        !o.stdout.contains("AGENT: check"),
        "the original never finished the check",
    );
    let before = std::fs::read(&img).unwrap();
    o.check(
        holds_pattern(&before, seed, 0),
        "the notified write reached the image",
    );
    o.check(
        before[8 * 512..16 * 512].iter().all(|&b| b == 0),
        "the write left in flight did not reach the image before the restore",
    );

    let mut cmd = kiln();
    cmd.arg("run").arg("--restore").arg(&snap);
    let r = Running::start(cmd).wait(TIMEOUT);
    let report = agent::Report::parse(&r.stdout);
    r.check(r.code == Some(0), "the restored agent finishes and resets");
    r.check(
        report.check("blk-inflight") == Some(None),
        &format!("blk-inflight passed: {}", report.summary()),
    );
    r.check(
        r.stdout.contains("used_idx=2"),
        "the in-flight write was used exactly once",
    );
    let after = std::fs::read(&img).unwrap();
    r.check(
        holds_pattern(&after, seed, 0) && holds_pattern(&after, seed, 8),
        "both writes are in the image",
    );
}
