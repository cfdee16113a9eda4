//! virtio-net under the real kiln binary, driven from inside the guest by
//! the test agent (tests/agent) through the third-party `virtio-drivers`
//! net driver, with Ethernet, ARP, IPv4, ICMP and UDP frames built by hand.
//!
//! Each test creates its own network namespace (tests/common/netns.rs)
//! with a tap `kt0` at 10.0.2.1/24, runs kiln inside it (`ip netns exec`)
//! with `--net tap=kt0,mac=...`, and, for the UDP checks, a peer on a
//! thread inside the namespace that speaks the agent's protocol (see
//! tests/agent/src/netcheck.rs): it checks every datagram the guest sends
//! and sends the guest its own stream back. Nothing leaves the namespace,
//! which is deleted at the end with its tap; kiln is killed if it outlives
//! a test. The peer and the stream pattern: tests/common/udppeer.rs.

#[path = "agent/mod.rs"]
mod agent;
#[path = "common/mod.rs"]
mod common;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/udppeer.rs"]
mod udppeer;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use netns::NetNs;
use udppeer::{Peer, PeerConfig, GUEST_IP, GUEST_MAC, HOST_IP, TAP};

const TIMEOUT: Duration = Duration::from_secs(180);
/// The agent's receive buffers (net::QUEUE_SIZE).
const GUEST_RX_BUFFERS: u64 = 256;

/// The tests share two cores: one VM at a time keeps the throughput and
/// CPU figures meaningful.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A namespace with the tap, its address, up.
fn namespace(tag: &str) -> NetNs {
    let ns = NetNs::new(tag);
    ns.add_tap(TAP, &format!("{HOST_IP}/24"));
    ns
}

/// Starts kiln with the agent inside `ns`, `-v` for the device counters.
fn start_kiln(ns: &NetNs, cmdline: &str) -> common::Running {
    let elf = agent::build();
    let mut cmd = ns.command(Path::new(env!("CARGO_BIN_EXE_kiln")));
    cmd.args([
        "run",
        "-v",
        "--kernel",
        elf.to_str().unwrap(),
        "--cmdline",
        cmdline,
        "--net",
        &format!("tap={TAP},mac={GUEST_MAC}"),
    ]);
    common::Running::start(cmd)
}

/// The agent ran, got to its end and every named check passed.
fn passed(o: &common::Outcome, r: &agent::Report, names: &[&str]) {
    o.check(!o.timed_out, "kiln ended by itself");
    o.check(o.errors().is_empty(), "kiln reported no errors");
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

/// A numeric field of an agent info line.
fn field(o: &common::Outcome, info: &HashMap<String, String>, key: &str) -> u64 {
    let v = info.get(key).and_then(|v| v.parse().ok());
    o.check(v.is_some(), &format!("the info line has a number {key}="));
    v.unwrap()
}

/// kiln's exit counters for the NIC (`kiln run -v`): `rx_frames`,
/// `rx_bytes`, `rx_dropped`, `rx_bad`, `rx_stalls`, `tx_*` alike and
/// `tx_retries`, and `kernel_drops`.
fn counters(o: &common::Outcome) -> HashMap<String, u64> {
    let tag = format!("virtio-net {TAP}: ");
    let line = o
        .stderr
        .lines()
        .find_map(|l| Some(&l[l.find(&tag)? + tag.len()..]));
    o.check(line.is_some(), "kiln -v printed the NIC's counters");
    let mut map = HashMap::new();
    for part in line.unwrap().split(';') {
        let words: Vec<&str> = part
            .split_whitespace()
            .map(|w| w.trim_matches(|c: char| c == ',' || c == '(' || c == ')'))
            .collect();
        let prefix = match words.first() {
            Some(&"rx") => "rx_",
            Some(&"tx") => "tx_",
            _ => "kernel_",
        };
        for pair in words.windows(2) {
            if let Ok(n) = pair[0].parse::<u64>() {
                let name = match pair[1] {
                    "frames" if prefix == "kernel_" => "drops",
                    "chains" => continue,
                    w => w,
                };
                map.insert(format!("{prefix}{name}"), n);
            }
        }
        // "N bad chains": the word before "chains" is "bad".
        for pair in words.windows(3) {
            if pair[1] == "bad" && pair[2] == "chains" {
                if let Ok(n) = pair[0].parse::<u64>() {
                    map.insert(format!("{prefix}bad"), n);
                }
            }
        }
    }
    map
}

/// kiln sent every frame the agent queued, and delivered at least every
/// frame the agent took (frames the host sent after the agent's last look,
/// IPv6 chatter say, may be in buffers it never read).
fn frames_agree(o: &common::Outcome, info: &HashMap<String, String>, c: &HashMap<String, u64>) {
    let (rx, tx) = (
        field(o, info, "nic_rx_frames"),
        field(o, info, "nic_tx_frames"),
    );
    o.check(
        c["tx_frames"] == tx,
        &format!("kiln sent {} frames, the agent queued {tx}", c["tx_frames"]),
    );
    o.check(
        c["rx_frames"] >= rx,
        &format!(
            "kiln delivered {} frames, the agent took {rx}",
            c["rx_frames"]
        ),
    );
}

/// The tap's MAC, as the namespace's kernel sees it.
fn tap_mac(ns: &NetNs) -> String {
    let out = ns.ip_output(&["-br", "link", "show", TAP]);
    out.split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_string()
}

// ---- the tests ------------------------------------------------------------------

/// ARP resolves the tap's side (the host kernel answers with the tap's
/// MAC), and eight ICMP echoes of 0 to 1472 data bytes come back intact.
#[test]
fn arp_and_icmp_echo_with_the_host_kernel() {
    let _one = serial();
    let ns = namespace("aping");
    let vm = start_kiln(&ns, "agent.test=net-ping agent.net_pings=8");
    let o = vm.wait(TIMEOUT);
    eprintln!("kiln run took {:?}", o.elapsed);
    let r = agent::Report::parse(&o.stdout);
    passed(&o, &r, &["net-ping"]);

    let arp = agent::info(&o.stdout, "net-ping arp").expect("net-ping arp line");
    o.check(
        arp.get("host_mac") == Some(&tap_mac(&ns)),
        &format!("ARP gave the tap's MAC {}", tap_mac(&ns)),
    );
    let info = agent::info(&o.stdout, "net-ping done").expect("net-ping summary");
    eprintln!("net-ping: {info:?}");
    o.check(
        o.stdout.contains(&format!(
            "net-ping done host={HOST_IP} ip={GUEST_IP} mac={GUEST_MAC} sent=8 received=8 "
        )),
        "eight echoes each way, from the MAC given to kiln",
    );
    o.check(
        o.stdout.matches("AGENT: net-ping echo seq=").count() == 8,
        "a line per echo",
    );
    let c = counters(&o);
    eprintln!("kiln counters: {c:?}");
    o.check(
        c["rx_frames"] >= 9 && c["tx_frames"] >= 9,
        "kiln counted the ARP and echo frames both ways",
    );
    frames_agree(&o, &info, &c);
    o.check(
        c["rx_dropped"] == 0 && c["rx_bad"] == 0 && c["tx_bad"] == 0 && c["tx_dropped"] == 0,
        "nothing dropped or malformed",
    );
}

/// 16 MiB each way in UDP datagrams: every datagram the guest sent is
/// checked here, every one the peer sent is checked in the guest, losses
/// are sent again, and both sides count exactly 16 MiB of data.
#[test]
fn sixteen_mib_each_way_checked_on_both_sides() {
    let _one = serial();
    let ns = namespace("abulk");
    let (seed, bytes) = (0x5eed_0b01_u64, 16u64 << 20);
    let cfg = PeerConfig::new(seed, bytes);
    let elf = agent::build();
    assert!(elf.exists());
    let peer = Peer::start(&ns, cfg);
    let vm = start_kiln(
        &ns,
        &format!("agent.test=net-bulk agent.seed={seed:#x} agent.net_bytes={bytes}"),
    );
    peer.pid.store(vm.pid(), Ordering::SeqCst);
    let o = vm.wait(TIMEOUT);
    let host = peer.finish();
    eprintln!("kiln run took {:?}; peer: {host:?}", o.elapsed);
    let r = agent::Report::parse(&o.stdout);
    passed(&o, &r, &["net-bulk"]);
    o.check(
        host.problems.is_empty(),
        &format!("the peer saw nothing odd: {:?}", host.problems),
    );

    // Guest to host: every datagram, intact, exactly 16 MiB of data.
    o.check(
        host.up_bad == 0 && host.up_datagrams == u64::from(cfg.count) && host.up_bytes == bytes,
        &format!(
            "the host got {} of {} datagrams, {} of {bytes} bytes, {} bad",
            host.up_datagrams, cfg.count, host.up_bytes, host.up_bad
        ),
    );
    // Host to guest: the agent checked each datagram (it fails on a bad
    // one) and counted exactly 16 MiB; the peer sent each at least once.
    let info = agent::info(&o.stdout, "net-bulk").expect("net-bulk info line");
    eprintln!("net-bulk: {info:?}");
    o.check(
        field(&o, &info, "bytes") == bytes && field(&o, &info, "datagrams") == cfg.count.into(),
        "the agent moved the configured amount",
    );
    o.check(
        host.down_sent - host.down_resent == u64::from(cfg.count),
        "the peer sent every DOWN datagram",
    );
    o.check(
        field(&o, &info, "host_bytes") == bytes && field(&o, &info, "host_bad") == 0,
        "the agent heard the host's counts",
    );
    o.check(
        host.done
            == Some((
                cfg.count,
                field(&o, &info, "tx_resent") as u32,
                field(&o, &info, "rx_asked_again") as u32,
            )),
        "the agent's DONE matches its info line",
    );
    let c = counters(&o);
    eprintln!("kiln counters: {c:?}");
    o.check(
        c["tx_bytes"] >= bytes && c["rx_bytes"] >= bytes,
        "kiln moved at least 16 MiB each way",
    );
    frames_agree(&o, &info, &c);
    o.check(
        c["tx_bad"] == 0 && c["rx_bad"] == 0 && c["tx_dropped"] == 0,
        "no malformed chains, no refused frames",
    );
    eprintln!(
        "throughput: guest->host {} MiB/s ({} resent), host->guest {} MiB/s ({} asked again, {} \
         late duplicates); kiln rx dropped {} stalls {}, kernel drops {:?}",
        info["tx_mib_s"],
        info["tx_resent"],
        info["rx_mib_s"],
        info["rx_asked_again"],
        info["rx_duplicates"],
        c["rx_dropped"],
        c["rx_stalls"],
        c.get("kernel_drops")
    );
}

/// Lost datagrams are detected and repaired, each way: the peer ignores
/// some of the guest's datagrams the first time and withholds some of its
/// own the first time they are asked for; the guest sends the first kind
/// again (the peer's ACK says what is missing) and asks again for the
/// second, and both sides still count every byte exactly once.
#[test]
fn lost_datagrams_are_detected_and_sent_again() {
    let _one = serial();
    let ns = namespace("aloss");
    let (seed, bytes) = (0x1055_u64, 2u64 << 20);
    let mut cfg = PeerConfig::new(seed, bytes);
    cfg.lose_every = 97;
    let lost = |residue| (0..cfg.count).filter(|&s| cfg.lost(s, residue)).count() as u64;
    let (up_lost, down_lost) = (lost(5), lost(3));
    let elf = agent::build();
    assert!(elf.exists());
    let peer = Peer::start(&ns, cfg);
    let vm = start_kiln(
        &ns,
        &format!("agent.test=net-bulk agent.seed={seed:#x} agent.net_bytes={bytes}"),
    );
    let o = vm.wait(TIMEOUT);
    let host = peer.finish();
    eprintln!("kiln run took {:?}; peer: {host:?}", o.elapsed);
    let r = agent::Report::parse(&o.stdout);
    passed(&o, &r, &["net-bulk"]);
    let info = agent::info(&o.stdout, "net-bulk").expect("net-bulk info line");
    eprintln!("net-bulk: {info:?}");
    o.check(
        host.up_lost == up_lost && host.down_lost == down_lost,
        &format!("the peer lost {up_lost} and {down_lost} datagrams"),
    );
    o.check(
        field(&o, &info, "tx_resent") >= up_lost,
        &format!("the guest sent the {up_lost} lost datagrams again"),
    );
    o.check(
        field(&o, &info, "rx_asked_again") >= down_lost,
        &format!("the guest asked again for the {down_lost} withheld datagrams"),
    );
    o.check(
        host.up_bad == 0
            && host.up_datagrams == u64::from(cfg.count)
            && host.up_bytes == bytes
            && field(&o, &info, "host_bytes") == bytes,
        "every byte arrived exactly once each way",
    );
}

/// A guest that stops taking receive buffers under a flood: kiln stops
/// reading the tap (its stall counter), the host kernel drops and counts
/// the rest, kiln's event loop stays idle meanwhile (CPU time printed,
/// with only an order-of-magnitude bound), and once the guest refills its
/// queue frames flow again (a fresh echo is answered).
#[test]
fn a_guest_without_receive_buffers_stalls_the_nic_without_wedging_or_spinning() {
    let _one = serial();
    let ns = namespace("astall");
    // The flood must not wait for ARP while the guest is deaf.
    ns.ip(&[
        "neigh",
        "replace",
        GUEST_IP,
        "lladdr",
        GUEST_MAC,
        "dev",
        TAP,
        "nud",
        "permanent",
    ]);
    let cfg = PeerConfig::new(1, 1);
    let elf = agent::build();
    assert!(elf.exists());
    let peer = Peer::start(&ns, cfg);
    let vm = start_kiln(&ns, "agent.test=net-stall agent.net_stall_ms=3000");
    peer.pid.store(vm.pid(), Ordering::SeqCst);
    let o = vm.wait(TIMEOUT);
    let host = peer.finish();
    eprintln!("kiln run took {:?}; peer: {host:?}", o.elapsed);
    let r = agent::Report::parse(&o.stdout);
    passed(&o, &r, &["net-stall"]);
    let info = agent::info(&o.stdout, "net-stall").expect("net-stall info line");
    eprintln!("net-stall: {info:?}");
    let c = counters(&o);
    eprintln!("kiln counters: {c:?}");

    o.check(host.floods.len() == 1, "the peer flooded once");
    let f = &host.floods[0];
    o.check(
        u64::from(f.ms) == field(&o, &info, "flood_ms"),
        "the peer flooded as long as the agent asked",
    );
    o.check(
        f.frames > GUEST_RX_BUFFERS + 2_000,
        &format!(
            "the flood ({} frames) outnumbers the guest's buffers and the tap's queue",
            f.frames
        ),
    );
    o.check(
        field(&o, &info, "used_during_stall") == GUEST_RX_BUFFERS,
        "the guest's buffers all filled up",
    );
    o.check(
        c["rx_stalls"] >= 1,
        "kiln counted the stall (no guest buffers)",
    );
    o.check(
        c.get("kernel_drops").is_some_and(|&d| d > 0),
        "kiln reports the frames the host kernel dropped meanwhile",
    );
    o.check(
        field(&o, &info, "frames_after_refill") >= 1,
        "frames arrive again after the refill",
    );
    frames_agree(&o, &info, &c);
    eprintln!(
        "flood: {} frames in {:?} ({} send errors); kiln ({:?}) CPU meanwhile: {:?} ms \
         outside the vCPUs, {:?} ms in all (the vCPU spins in the guest); kiln: rx stalls {}, \
         rx dropped {}, kernel drops {:?}",
        f.frames,
        f.wall,
        f.send_errors,
        f.comm,
        f.kiln_cpu_ms,
        f.kiln_cpu_all_ms,
        c["rx_stalls"],
        c["rx_dropped"],
        c.get("kernel_drops")
    );
    // Only a sanity bound: a device that kept polling the tap would burn
    // a whole core for the flood's duration.
    o.check(
        f.comm == "kiln",
        &format!("the process watched is kiln ({:?})", f.comm),
    );
    let cpu = f.kiln_cpu_ms.expect("kiln's CPU time was read");
    o.check(
        (cpu as u128) * 4 < f.wall.as_millis(),
        &format!(
            "kiln's event loop used {cpu} ms of CPU during a {:?} flood: it should idle",
            f.wall
        ),
    );
}

/// Real failures fail the report, quickly: an `agent.net_host` nobody
/// answers ARP for fails net-ping and net-bulk, and a UDP port with no
/// listener fails net-bulk (the host kernel's port unreachable).
#[test]
fn a_failing_net_check_fails_the_report() {
    let _one = serial();
    let ns = namespace("afail");
    let vm = start_kiln(&ns, "agent.test=net-ping,net-bulk agent.net_host=10.0.2.99");
    let o = vm.wait(TIMEOUT);
    eprintln!("kiln run took {:?}", o.elapsed);
    let r = agent::Report::parse(&o.stdout);
    o.check(!r.ok(), "failed checks make the report fail");
    for name in ["net-ping", "net-bulk"] {
        o.check(
            matches!(r.check(name), Some(Some(why)) if why.contains("no ARP reply from 10.0.2.99")),
            &format!("{name} failed for want of an ARP reply"),
        );
    }
    o.check(r.done == Some((0, 2)), "done line counts two failures");
    o.check(
        o.code == Some(0) && o.elapsed < Duration::from_secs(30),
        "the agent gave up in bounded time and ended the VM",
    );

    let vm = start_kiln(&ns, "agent.test=net-bulk agent.net_port=7999");
    let o = vm.wait(TIMEOUT);
    eprintln!("kiln run took {:?}", o.elapsed);
    let r = agent::Report::parse(&o.stdout);
    o.check(
        matches!(r.check("net-bulk"), Some(Some(why)) if why.contains("port 7999 unreachable")),
        "net-bulk failed: nobody listens on the port",
    );
    o.check(r.done == Some((0, 1)), "done line counts the failure");
}

/// The same checks under QEMU microvm (installed by
/// resources/setup-host.sh; TCG) on a tap in the namespace: QEMU's
/// virtio-net and virtio-drivers agree, which validates the agent
/// independently of kiln.
#[test]
fn the_net_agent_agrees_with_qemu_microvm() {
    let qemu = "qemu-system-x86_64";
    assert!(
        std::process::Command::new(qemu)
            .arg("--version")
            .output()
            .is_ok(),
        "{qemu} is not installed: run ./resources/setup-host.sh"
    );
    let _one = serial();
    let ns = namespace("aqemu");
    let (seed, bytes) = (0x9e0_u64, 16u64 << 20);
    let cfg = PeerConfig::new(seed, bytes);
    let elf = agent::build();
    let peer = Peer::start(&ns, cfg);
    let mut cmd = ns.command(Path::new(qemu));
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
        &format!("agent.test=net-ping,net-bulk agent.seed={seed:#x} agent.net_bytes={bytes}"),
        "-netdev",
        &format!("tap,id=n0,ifname={TAP},script=no,downscript=no"),
        "-device",
        &format!("virtio-net-device,netdev=n0,mac={GUEST_MAC}"),
    ]);
    let o = common::Running::start(cmd).wait(TIMEOUT);
    let host = peer.finish();
    eprintln!("QEMU run took {:?}; peer: {host:?}", o.elapsed);
    let r = agent::Report::parse(&o.stdout);
    // QEMU's debug-exit device ends the run with status (0 << 1) | 1.
    o.check(
        o.code == Some(1) && !o.timed_out,
        "QEMU ended through the debug exit",
    );
    o.check(r.ok(), &r.summary());
    o.check(
        host.up_bad == 0 && host.up_bytes == bytes && host.problems.is_empty(),
        "the host got the guest's stream intact",
    );
    let info = agent::info(&o.stdout, "net-bulk").expect("net-bulk info line");
    eprintln!("net-bulk under QEMU: {info:?}");
}
