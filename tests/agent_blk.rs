//! virtio-blk under the real kiln binary, driven from inside the guest by
//! the test agent (tests/agent) through the third-party `virtio-drivers`
//! block driver, and by the agent's hostile mode, which builds broken
//! descriptor chains by hand. Images are real files in a scratch
//! directory; what the guest wrote is checked in the files afterwards (or,
//! for FLUSH, while the VM still runs).
//!
//! The agent's pattern and hash are recomputed here (see
//! tests/agent/src/blk.rs): word `w` of sector `s` is
//! `splitmix64(seed ^ (s * 64 + w))`, little endian; the disk hash is the
//! wrapping sum over sectors of `fnv1a64(s as u64 LE ++ sector)`.
//!
//! These tests need `kiln run --disk PATH[,ro][,id=NAME]`. If kiln rejects
//! the option they fail, saying so.

#[path = "agent/mod.rs"]
mod agent;
#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);
const SECTOR: usize = 512;
/// Where the agent's blk-flush check writes (FLUSH_FIRST/FLUSH_SECTORS).
const FLUSH_FIRST: u64 = 16;
const FLUSH_SECTORS: u64 = 64;

/// The first sector in `sectors` (counted from `first`) of `image` that
/// does not hold the agent's pattern for `seed`.
fn pattern_mismatch(image: &[u8], seed: u64, first: u64, sectors: u64) -> Option<u64> {
    (first..first + sectors).find(|&s| {
        let at = s as usize * SECTOR;
        let Some(sector) = image.get(at..at + SECTOR) else {
            return true;
        };
        sector.chunks_exact(8).enumerate().any(|(w, word)| {
            u64::from_le_bytes(word.try_into().unwrap())
                != agent::splitmix64(seed ^ (s.wrapping_mul(64) + w as u64))
        })
    })
}

/// The agent's whole-disk hash.
fn disk_hash(image: &[u8]) -> u64 {
    let fnv = |mut h: u64, bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    };
    image
        .chunks_exact(SECTOR)
        .enumerate()
        .fold(0u64, |sum, (s, sector)| {
            let h = fnv(0xcbf2_9ce4_8422_2325, &(s as u64).to_le_bytes());
            sum.wrapping_add(fnv(h, sector))
        })
}

/// An image of `len` bytes of deterministic pseudo-random content.
fn random_image(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let bytes: Vec<u8> = (0..len / 8)
        .flat_map(|i| agent::splitmix64(seed ^ i as u64).to_le_bytes())
        .collect();
    std::fs::write(path, &bytes).unwrap();
    bytes
}

/// A zero-filled (sparse) image.
fn empty_image(path: &Path, len: u64) {
    std::fs::File::create(path).unwrap().set_len(len).unwrap();
}

/// The kiln command line for the agent with `disks` (`PATH[,ro][,id=..]`).
fn agent_command(cmdline: &str, disks: &[String]) -> Command {
    let elf = agent::build();
    let mut cmd = common::kiln();
    cmd.args([
        "run",
        "--kernel",
        elf.to_str().unwrap(),
        "--cmdline",
        cmdline,
    ]);
    for d in disks {
        cmd.args(["--disk", d]);
    }
    cmd
}

/// Fails clearly when kiln did not take the --disk options at all.
fn check_disks_accepted(o: &common::Outcome) {
    o.check(
        !(o.code == Some(2) && o.stderr.contains("--disk")),
        "kiln rejected --disk: `kiln run --disk PATH[,ro][,id=NAME]` is not wired up yet",
    );
    o.check(o.errors().is_empty(), "kiln reported errors");
}

/// Runs the agent with disks and returns the outcome and its report.
fn run_agent(cmdline: &str, disks: &[String]) -> (common::Outcome, agent::Report) {
    let o = common::Running::start(agent_command(cmdline, disks)).wait(TIMEOUT);
    eprintln!("kiln run ({cmdline}) took {:?}", o.elapsed);
    check_disks_accepted(&o);
    let report = agent::Report::parse(&o.stdout);
    (o, report)
}

fn passed(o: &common::Outcome, r: &agent::Report, names: &[&str]) {
    o.check(
        o.code == Some(0),
        "the agent resets at the end: kiln exits 0",
    );
    o.check(r.ok(), &r.summary());
    for name in names {
        o.check(
            r.check(name) == Some(None),
            &format!("check {name} ran and passed"),
        );
    }
}

fn disk_arg(path: &Path, opts: &str) -> String {
    format!("{}{opts}", path.display())
}

fn scratch(name: &str) -> PathBuf {
    common::scratch(&format!("agent-blk-{name}"))
}

/// Every sector of an 8 MiB disk written and read back through
/// virtio-drivers; the pattern is then found in the image file.
#[test]
fn patterns_across_the_whole_disk_read_back_intact() {
    let dir = scratch("rw");
    let img = dir.join("rw.img");
    empty_image(&img, 8 << 20);
    let seed = 0x5eed_0001_u64;
    let (o, r) = run_agent(
        &format!("agent.test=blk-rw agent.seed={seed:#x}"),
        &[disk_arg(&img, "")],
    );
    passed(&o, &r, &["blk-rw"]);
    let info = agent::info(&o.stdout, "blk-rw").expect("blk-rw info line");
    o.check(
        info.get("sectors").map(String::as_str) == Some("16384"),
        "capacity 16384 sectors",
    );
    eprintln!("blk-rw: {info:?}");
    let image = std::fs::read(&img).unwrap();
    o.check(
        pattern_mismatch(&image, seed, 0, 16384).is_none(),
        &format!(
            "the image holds the guest's pattern (first bad sector {:?})",
            pattern_mismatch(&image, seed, 0, 16384)
        ),
    );
}

/// After the guest's FLUSH completes, the bytes are in the host file while
/// the VM still runs (the agent waits for a byte on the console).
#[test]
fn flushed_data_is_in_the_host_file_while_the_vm_runs() {
    let dir = scratch("flush");
    let img = dir.join("flush.img");
    empty_image(&img, 1 << 20);
    let seed = 0xf1a5_0002_u64;
    let mut vm = common::Running::start(agent_command(
        &format!("agent.test=blk-flush agent.flush_wait agent.seed={seed:#x}"),
        &[disk_arg(&img, "")],
    ));
    let waiting = vm.wait_for_stdout("AGENT: blk-flush waiting", TIMEOUT);
    let image = std::fs::read(&img).unwrap();
    // The disk is served by a thread of its own, not the event loop.
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", vm.pid()))
        .map(|d| {
            d.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|c| c.trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    let mismatch = pattern_mismatch(&image, seed, FLUSH_FIRST, FLUSH_SECTORS);
    if waiting {
        vm.send(b"x");
    }
    let o = vm.wait(TIMEOUT);
    check_disks_accepted(&o);
    o.check(waiting, "the agent got to its FLUSH and waited");
    o.check(
        threads.iter().any(|t| t == "kiln-disk0"),
        &format!("the disk has its thread kiln-disk0: {threads:?}"),
    );
    o.check(
        mismatch.is_none(),
        &format!("flushed sectors are in the file during the run (first bad: {mismatch:?})"),
    );
    let r = agent::Report::parse(&o.stdout);
    passed(&o, &r, &["blk-flush"]);
    let info = agent::info(&o.stdout, "blk-flush").expect("blk-flush info line");
    o.check(
        info.get("seed").map(String::as_str) == Some(&format!("{seed:#x}")),
        "the agent used our seed",
    );
}

/// A read-only disk advertises RO, fails a write with IOERR, reads back
/// exactly the file's bytes, and the file is bit-identical afterwards.
#[test]
fn a_read_only_disk_rejects_writes_and_stays_identical() {
    let dir = scratch("ro");
    let img = dir.join("ro.img");
    let before = random_image(&img, 2 << 20, 0x0123);
    let (o, r) = run_agent("agent.test=blk-ro", &[disk_arg(&img, ",ro")]);
    passed(&o, &r, &["blk-ro"]);
    let info = agent::info(&o.stdout, "blk-ro").expect("blk-ro info line");
    let want = format!("{:#018x}", disk_hash(&before));
    o.check(
        info.get("hash") == Some(&want),
        &format!("the guest read the file's bytes: hash {want} on the host"),
    );
    o.check(
        std::fs::read(&img).unwrap() == before,
        "the read-only image is bit-identical after the run",
    );
}

/// Two disks with IDs: in --disk order, each with its GET_ID name, one
/// writable and one read-only, with the right sizes.
#[test]
fn two_disks_with_ids_in_order() {
    let dir = scratch("two");
    let (a, b) = (dir.join("a.img"), dir.join("b.img"));
    empty_image(&a, 4 << 20);
    let b_bytes = random_image(&b, 1 << 20, 0x4567);
    let (o, r) = run_agent(
        "agent.test=probe,blk-id:0,blk-id:1,blk-rw:0,blk-ro:1 agent.blk_id=alpha,beta-disk",
        &[disk_arg(&a, ",id=alpha"), disk_arg(&b, ",ro,id=beta-disk")],
    );
    passed(&o, &r, &["blk-id:0", "blk-id:1", "blk-rw:0", "blk-ro:1"]);
    for (disk, sectors) in [(0, 8192), (1, 2048)] {
        o.check(
            o.stdout.contains(&format!(
                "AGENT: disk {disk} at 0x{:x} ",
                0xd000_0000u32 + disk * 0x1000
            )),
            &format!("disk {disk} in window {disk}"),
        );
        o.check(
            o.stdout.contains(&format!(
                "AGENT: blk-{} disk={disk} sectors={sectors} ",
                ["rw", "ro"][disk as usize]
            )),
            &format!("disk {disk} has {sectors} sectors"),
        );
    }
    o.check(std::fs::read(&b).unwrap() == b_bytes, "disk 1 unchanged");
}

/// The hostile guest: broken chains (outside RAM, loops, too long, wrong
/// directions, beyond the end, no status) all get error statuses (or are
/// returned unused), and kiln keeps serving the same disk afterwards.
#[test]
fn hostile_chains_get_errors_and_kiln_keeps_serving() {
    let dir = scratch("hostile");
    let img = dir.join("hostile.img");
    empty_image(&img, 1 << 20);
    let (o, r) = run_agent(
        "agent.test=blk-hostile,blk-rw agent.seed=0x77",
        &[disk_arg(&img, "")],
    );
    passed(&o, &r, &["blk-hostile", "blk-rw"]);
    o.check(
        !o.stdout.contains("-> BAD"),
        "every hostile case was answered as expected",
    );
}

/// kiln's interrupt path: the disk's IOAPIC pin (5 for the first disk)
/// delivers an interrupt for each completed request to the agent's ring-0
/// handler, and so does the UART's pin 4.
#[test]
fn interrupts_reach_the_guest() {
    let dir = scratch("irq");
    let img = dir.join("irq.img");
    empty_image(&img, 1 << 20);
    let (o, r) = run_agent("agent.test=irq,irq:com1", &[disk_arg(&img, "")]);
    passed(&o, &r, &["irq", "irq:com1"]);
    o.check(
        o.stdout
            .contains("AGENT: irq: GSI 5 = IOAPIC 0xfec00000 pin 5"),
        "disk 0 interrupts on pin 5",
    );
}

/// A check that really fails (not a forced failure) fails the report: a
/// writable disk is not read-only, and a wrong ID is wrong.
#[test]
fn a_failing_blk_check_fails_the_report() {
    let dir = scratch("fail");
    let img = dir.join("fail.img");
    empty_image(&img, 1 << 20);
    let (o, r) = run_agent(
        "agent.test=blk-ro,blk-id agent.blk_id=not-its-name",
        &[disk_arg(&img, ",id=its-name")],
    );
    o.check(!r.ok(), "failed checks make the report fail");
    o.check(
        matches!(r.check("blk-ro"), Some(Some(_))),
        "blk-ro failed on a writable disk",
    );
    o.check(
        matches!(r.check("blk-id"), Some(Some(why)) if why.contains("its-name")),
        "blk-id failed, naming the ID it got",
    );
    o.check(r.done == Some((0, 2)), "done line counts two failures");
}

/// `blk-bench` (used by resources/bench.sh) completes every pattern and
/// prints a positive figure for each.
#[test]
fn the_blk_benchmark_reports_every_figure() {
    let dir = scratch("bench");
    let img = dir.join("bench.img");
    empty_image(&img, 4 << 20);
    let (o, r) = run_agent(
        "agent.test=blk-bench agent.bench_requests=64",
        &[disk_arg(&img, "")],
    );
    passed(&o, &r, &["blk-bench"]);
    let info = agent::info(&o.stdout, "blk-bench").expect("blk-bench info line");
    for key in [
        "seq_write_mib_s",
        "seq_read_mib_s",
        "randread_qd1_iops",
        "randwrite_qd1_iops",
        "randread_deep_iops",
        "randwrite_deep_iops",
    ] {
        let v: f64 = info
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_default();
        o.check(v > 0.0, &format!("{key} is a positive number: {info:?}"));
    }
    o.check(
        info.get("deep_qd").map(String::as_str) == Some("16"),
        "16 requests in flight (kiln offers indirect descriptors)",
    );
}

/// The same agent under QEMU microvm (installed by resources/setup-host.sh;
/// TCG, a few tenths of a second): virtio-drivers and QEMU's virtio-blk
/// agree, which validates the agent independently of kiln. QEMU puts the
/// first -device in the highest virtio-mmio slot, so disk 0 (address
/// order) is the last -device. blk-hostile is not run: QEMU accepts DMA
/// outside RAM and marks the device broken for malformed chains, which the
/// check rightly reports as failures.
#[test]
fn the_agent_agrees_with_qemu_microvm() {
    let qemu = "qemu-system-x86_64";
    assert!(
        Command::new(qemu).arg("--version").output().is_ok(),
        "{qemu} is not installed: run ./resources/setup-host.sh"
    );
    let dir = scratch("qemu");
    let (rw, ro) = (dir.join("rw.img"), dir.join("ro.img"));
    empty_image(&rw, 4 << 20);
    let ro_bytes = random_image(&ro, 1 << 20, 0x89);
    let elf = agent::build();
    let seed = 0x9e_u64;
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-M",
        "microvm,acpi=off",
        "-accel",
        "tcg",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
        "-m",
        "64",
        "-global",
        "virtio-mmio.force-legacy=false",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=4",
        "-kernel",
        elf.to_str().unwrap(),
        "-append",
        &format!(
            "agent.test=probe,blk-rw:1,blk-flush:1,blk-ro:0,blk-id:0,blk-id:1,irq:0,irq:com1 \
             agent.blk_id=ro-disk,rw-disk agent.seed={seed:#x}"
        ),
        "-drive",
        &format!("id=rw,file={},format=raw,if=none", rw.display()),
        "-device",
        "virtio-blk-device,drive=rw,serial=rw-disk",
        "-drive",
        &format!("id=ro,file={},format=raw,if=none,readonly=on", ro.display()),
        "-device",
        "virtio-blk-device,drive=ro,serial=ro-disk",
    ]);
    let o = common::Running::start(cmd).wait(TIMEOUT);
    let r = agent::Report::parse(&o.stdout);
    // QEMU's debug-exit device ends the run with status (0 << 1) | 1.
    o.check(
        o.code == Some(1) && !o.timed_out,
        "QEMU ended through the debug exit",
    );
    o.check(r.ok(), &r.summary());
    let image = std::fs::read(&rw).unwrap();
    o.check(
        pattern_mismatch(&image, seed, FLUSH_FIRST, FLUSH_SECTORS).is_none(),
        "the flushed pattern is in the file",
    );
    let info = agent::info(&o.stdout, "blk-ro").expect("blk-ro info line");
    o.check(
        info.get("hash") == Some(&format!("{:#018x}", disk_hash(&ro_bytes))),
        "the read-only disk read back exactly",
    );
}
