//! virtio-net with a real Linux guest (our minimal kernel): inside a
//! network namespace the test creates, the guest gets an address on each
//! of two NICs, pings the host side of each tap, and moves 1 MiB each way
//! over TCP with busybox nc; both ends check SHA-256 sums. Nothing leaves
//! the namespace, which is deleted at the end with its taps.

#[path = "common/mod.rs"]
mod common;
#[path = "common/netns.rs"]
mod netns;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use netns::NetNs;

const TIMEOUT: Duration = Duration::from_secs(600);
const BYTES: usize = 1 << 20;

fn artifact(rel: &str) -> PathBuf {
    common::guest_artifact(rel, "run ./resources/guests.sh first")
}

/// Pseudo-random bytes (xorshift), different for each seed.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn two_nics_ping_and_tcp_both_ways() {
    let ns = NetNs::new("lnx");
    ns.add_tap("kt0", "10.0.2.1/24");
    ns.add_tap("kt1", "10.0.3.1/24");

    // Host side, inside the namespace: take 1 MiB from the guest on port
    // 5000 and send 1 MiB to it on port 5001.
    let to_guest = pattern(BYTES, 7);
    let to_guest_sha = common::sha256_hex(&to_guest);
    let server = ns.run_inside(move || {
        let rx = TcpListener::bind("10.0.2.1:5000").unwrap();
        let tx = TcpListener::bind("10.0.3.1:5001").unwrap();
        let (mut c, _) = rx.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
        let mut got = vec![0u8; BYTES];
        let ok = c.read_exact(&mut got).is_ok();
        drop(c);
        let (mut c, _) = tx.accept().unwrap();
        c.write_all(&to_guest).unwrap();
        drop(c);
        (ok, got)
    });

    let kernel = artifact("minimal/vmlinux");
    let initrd = artifact("initramfs.cpio");
    let dir = tempfile::tempdir().unwrap();
    let script = common::script_disk(
        dir.path(),
        r#"
set -e
ip addr add 10.0.2.2/24 dev eth0
ip link set eth0 up
ip addr add 10.0.3.2/24 dev eth1
ip link set eth1 up
echo "MACS=$(cat /sys/class/net/eth0/address),$(cat /sys/class/net/eth1/address)"
ping -c 2 -W 10 10.0.2.1 >/dev/null && echo PING0=ok
ping -c 2 -W 10 10.0.3.1 >/dev/null && echo PING1=ok
head -c 1048576 /dev/urandom > /tmp/tx.bin
echo "TX_SHA=$(sha256sum /tmp/tx.bin | cut -d' ' -f1)"
nc 10.0.2.1 5000 < /tmp/tx.bin
nc 10.0.3.1 5001 < /dev/null > /tmp/rx.bin
echo "RX_SHA=$(sha256sum /tmp/rx.bin | cut -d' ' -f1)"
"#,
    );
    let script_spec = format!("{},ro", script.display());
    let mut cmd = ns.command(std::path::Path::new(env!("CARGO_BIN_EXE_kiln")));
    cmd.args([
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--net",
        "tap=kt0,mac=02:6b:69:6c:6e:01",
        "--net",
        "tap=kt1",
        "--disk",
        &script_spec,
        "--cmdline",
        "-- sh /dev/vda",
        "-v",
    ]);
    let o = common::Running::start(cmd).wait(TIMEOUT);
    o.check(!o.timed_out, "the guest finished before the timeout");
    o.check(o.errors().is_empty(), "kiln reported no error");
    o.check(o.code == Some(0), "the guest's reboot ended kiln with 0");
    let macs = o.reported("MACS").unwrap_or_default();
    o.check(
        macs.starts_with("02:6b:69:6c:6e:01,"),
        "eth0 has the MAC given on the command line",
    );
    o.check(o.reported("PING0") == Some("ok"), "eth0 pings the host");
    o.check(o.reported("PING1") == Some("ok"), "eth1 pings the host");
    if o.timed_out || o.reported("TX_SHA").is_none() {
        // The server thread would wait forever for a guest that is gone.
        o.check(false, "the guest reached the TCP transfers");
    }
    let (ok, got) = server.join().unwrap();
    o.check(ok, "the host received 1 MiB from the guest");
    o.check(
        o.reported("TX_SHA") == Some(common::sha256_hex(&got).as_str()),
        "guest to host: the bytes arrived intact",
    );
    o.check(
        o.reported("RX_SHA") == Some(to_guest_sha.as_str()),
        "host to guest: the bytes arrived intact",
    );
}
