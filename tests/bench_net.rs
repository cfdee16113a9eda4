//! The network rows of resources/bench.sh, as an ignored test (it prints
//! figures and asserts only that the runs worked):
//!
//!     cargo test --release --test bench_net -- --ignored --nocapture
//!
//! In a fresh network namespace with a tap, the test agent runs `net-ping`
//! (ICMP echoes with the host kernel: request/response latency) and
//! `net-bulk` (a checked UDP stream each way with the host's peer,
//! tests/common/udppeer.rs) under kiln and under QEMU microvm with KVM,
//! taking turns, `KILN_BENCH_ROUNDS` times (default 3). Each run prints
//!
//!     BENCH: vmm=kiln tx_mib_s=N rx_mib_s=N rtt_us=N
//!
//! (tx: guest to host; rtt: the median of the run's echoes) or
//! `BENCH: vmm=qemu failed=REASON`.

#[path = "agent/mod.rs"]
mod agent;
#[path = "common/mod.rs"]
mod common;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/udppeer.rs"]
mod udppeer;

use std::path::Path;
use std::time::Duration;

use netns::NetNs;
use udppeer::{Peer, PeerConfig, GUEST_MAC, HOST_IP, TAP};

const TIMEOUT: Duration = Duration::from_secs(180);
const BYTES: u64 = 16 << 20;
const PINGS: u32 = 50;

/// One run of `vmm` ("kiln" or "qemu"): its BENCH line.
fn run(vmm: &str, seed: u64) -> String {
    let ns = NetNs::new("bnet");
    ns.add_tap(TAP, &format!("{HOST_IP}/24"));
    let peer = Peer::start(&ns, PeerConfig::new(seed, BYTES));
    let elf = agent::build();
    let append = format!(
        "agent.test=net-ping,net-bulk agent.net_pings={PINGS} agent.seed={seed:#x} \
         agent.net_bytes={BYTES}"
    );
    let mut cmd;
    if vmm == "kiln" {
        cmd = ns.command(Path::new(env!("CARGO_BIN_EXE_kiln")));
        cmd.args(["run", "--memory", "128M", "--kernel"])
            .arg(&elf)
            .args(["--cmdline", &append, "--net"])
            .arg(format!("tap={TAP},mac={GUEST_MAC}"));
    } else {
        cmd = ns.command(Path::new("qemu-system-x86_64"));
        cmd.args([
            "-M",
            "microvm,acpi=off",
            "-accel",
            "kvm",
            "-smp",
            "1",
            "-m",
            "128",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-serial",
            "stdio",
            "-global",
            "virtio-mmio.force-legacy=false",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4",
            "-kernel",
        ])
        .arg(&elf)
        .args(["-append", &append, "-netdev"])
        .arg(format!("tap,id=n0,ifname={TAP},script=no,downscript=no"))
        .args(["-device"])
        .arg(format!("virtio-net-device,netdev=n0,mac={GUEST_MAC}"));
    }
    let o = common::Running::start(cmd).wait(TIMEOUT);
    let host = peer.finish();
    let r = agent::Report::parse(&o.stdout);
    let bulk = agent::info(&o.stdout, "net-bulk");
    if !r.ok() || bulk.is_none() || host.up_bytes != BYTES {
        let why = format!("{} (peer got {} bytes)", r.summary(), host.up_bytes);
        return format!("BENCH: vmm={vmm} failed={}", why.replace(' ', "_"));
    }
    let bulk = bulk.unwrap();
    let mut rtts: Vec<u64> = o
        .stdout
        .lines()
        .filter(|l| l.contains("AGENT: net-ping echo"))
        .filter_map(|l| l.rsplit("rtt_us=").next()?.trim().parse().ok())
        .collect();
    rtts.sort_unstable();
    format!(
        "BENCH: vmm={vmm} tx_mib_s={} rx_mib_s={} rtt_us={}",
        bulk["tx_mib_s"],
        bulk["rx_mib_s"],
        rtts.get(rtts.len() / 2).copied().unwrap_or_default()
    )
}

#[test]
#[ignore = "a benchmark: run by resources/bench.sh"]
fn net_throughput_and_latency_kiln_and_qemu() {
    let rounds: u64 = std::env::var("KILN_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut kiln_ok = 0;
    for round in 0..rounds {
        for vmm in ["kiln", "qemu"] {
            let line = run(vmm, 0xbe9c_0000 + round);
            println!("{line}");
            kiln_ok += u32::from(vmm == "kiln" && !line.contains("failed="));
        }
    }
    assert!(kiln_ok > 0, "no kiln run worked");
}
