//! Tests on real taps. They need root and iproute2 (else they pass with a
//! note) and run in a network namespace of their own, deleted at the end:
//! the only traffic is between the device and the namespace's kernel.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_net as vnet;
use vm_memory::{Bytes, GuestAddress};

use super::tests::rings;
use super::*;

/// A network namespace for this test, deleted on drop.
struct Netns(String);

impl Netns {
    /// None when not root or without iproute2: the test is skipped.
    fn new(tag: &str) -> Option<Netns> {
        // SAFETY: geteuid has no preconditions and touches no memory.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let name = format!("kiln-ut-{}-{tag}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Netns(name))
    }

    fn ip(&self, args: &[&str]) {
        let status = Command::new("ip")
            .args(["-n", &self.0])
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "ip {args:?}");
    }

    /// Runs `f` on a thread that has entered the namespace (setns moves
    /// only the calling thread).
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let ns = File::open(path).unwrap();
                    // SAFETY: setns takes an open namespace fd and moves only
                    // this thread, which ends with the closure.
                    let ret = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(ret, 0, "setns: {}", io::Error::last_os_error());
                    f()
                })
                .join()
                .unwrap()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Opens the tap named by KILN_UT_TAP and prints the outcome. Run by
/// `real_taps_open_and_fail_clearly` without capabilities.
#[test]
#[ignore = "helper run by real_taps_open_and_fail_clearly"]
fn open_tap_named_in_env() {
    let name = std::env::var("KILN_UT_TAP").unwrap();
    match Tap::open(&name) {
        Ok(_) => println!("KILN-UT: opened"),
        Err(err) => println!("KILN-UT: {err}"),
    }
}

#[test]
fn real_taps_open_and_fail_clearly() {
    let Some(ns) = Netns::new("open") else {
        eprintln!("skipped: needs root and iproute2");
        return;
    };
    ns.ip(&["tuntap", "add", "kt0", "mode", "tap"]);
    ns.ip(&["tuntap", "add", "kt1", "mode", "tun"]);
    ns.ip(&["tuntap", "add", "kt2", "mode", "tap", "user", "1000"]);
    ns.ip(&["link", "set", "kt0", "up"]);
    ns.run(|| {
        let tap = Tap::open("kt0").unwrap();
        assert_ne!(tap.offloads() & libc::TUN_F_CSUM, 0, "checksum offload");
        let err = Tap::open("kt0").unwrap_err();
        assert!(matches!(err, NetError::TapBusy { .. }), "{err}");
        drop(tap);
        // Other tests fork (to run `ip`) while this one runs; a child holds
        // a copy of the fd until it execs, so the tap can stay busy briefly.
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut tap = loop {
            match Tap::open("kt0") {
                Err(NetError::TapBusy { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                other => break other.unwrap(),
            }
        };
        Backend::set_offload(&mut tap, libc::TUN_F_CSUM | libc::TUN_F_TSO4).unwrap();
        let mut buf = [0u8; 64];
        let err = tap.recv(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "non-blocking");

        let err = Tap::open("kt1").unwrap_err();
        assert!(matches!(err, NetError::NotTap { .. }), "{err}");
        let err = Tap::open("kt9").unwrap_err();
        assert!(matches!(err, NetError::TapMissing { .. }), "{err}");
    });
    let listed = Command::new("ip")
        .args(["-n", &ns.0, "link", "show", "kt9"])
        .output()
        .unwrap();
    assert!(!listed.status.success(), "opening kt9 must not create it");

    // Without CAP_NET_ADMIN, root may not attach to user 1000's tap (and
    // still owns /dev/net/tun, which is often mode 0600).
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0, "setpriv"])
        .args(["--inh-caps=-all", "--bounding-set=-all"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "virtio::net::tap_tests::open_tap_named_in_env"])
        .args(["--ignored", "--nocapture", "--test-threads=1"])
        .env("KILN_UT_TAP", "kt2")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("KILN-UT: tap `kt2` belongs to another user"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An ARP request from `mac` at 192.0.2.2 for 192.0.2.1.
fn arp_request(mac: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[192, 0, 2, 2]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[192, 0, 2, 1]);
    f
}

#[test]
fn the_host_kernel_answers_arp_through_a_real_tap() {
    let Some(ns) = Netns::new("arp") else {
        eprintln!("skipped: needs root and iproute2");
        return;
    };
    // No IPv6 chatter (router solicitations and such) on the new tap.
    let _ = Command::new("ip")
        .args(["netns", "exec", &ns.0, "sysctl", "-qw"])
        .arg("net.ipv6.conf.default.disable_ipv6=1")
        .status();
    ns.ip(&["tuntap", "add", "kt0", "mode", "tap"]);
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "kt0"]);
    ns.ip(&["link", "set", "kt0", "up"]);
    let tap = ns.run(|| Tap::open("kt0")).unwrap();
    let offloads = tap.offloads();
    let mem = Memory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let (rxq, txq, mut queues) = rings(&mem);
    let mac: MacAddr = "52:54:00:12:34:56".parse().unwrap();
    let mut net = Net::with_backend("virtio-net kt0".into(), tap, mac);
    let mut acked = features::VERSION_1 | (1 << vnet::VIRTIO_NET_F_MRG_RXBUF);
    if offloads & libc::TUN_F_CSUM != 0 {
        acked |= (1 << vnet::VIRTIO_NET_F_GUEST_CSUM) | (1 << vnet::VIRTIO_NET_F_CSUM);
    }
    net.activate(acked).unwrap();

    let mut request = vec![0u8; VNET_HDR_LEN];
    request.extend_from_slice(&arp_request(mac.bytes()));
    mem.write_slice(&request, GuestAddress(0x10000)).unwrap();
    for i in 0..8u16 {
        rxq.add_chain(i, &[(0x20000 + u64::from(i) * 0x1000, 2048, true)]);
    }

    // Ask, as a guest would, every 200 ms (the kernel may drop the first
    // replies: a fresh tap's carrier reaches its queue discipline up to a
    // second after kiln attaches), and read what the namespace's kernel
    // sends back until the ARP reply shows up.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut asked = 0u16;
    let reply = 'wait: loop {
        assert!(Instant::now() < deadline, "no ARP reply: {:?}", net.stats());
        txq.add_chain(asked % 16, &[(0x10000, request.len() as u32, false)]);
        asked += 1;
        net.process_queue(TX_QUEUE, &mut queues, &mem);
        assert_eq!(
            net.net_stats().tx_frames,
            u64::from(asked),
            "{:?}",
            net.stats()
        );
        for _ in 0..20 {
            net.process_backend(&mut queues, &mem);
            let found = rxq.used().iter().find_map(|&(head, len)| {
                let mut frame = vec![0u8; len as usize];
                let addr = 0x20000 + u64::from(head) * 0x1000;
                mem.read_slice(&mut frame, GuestAddress(addr)).unwrap();
                let eth = &frame[VNET_HDR_LEN..];
                (eth.len() >= 42 && eth[12..14] == [8, 6] && eth[20..22] == [0, 2])
                    .then(|| frame.clone())
            });
            if let Some(frame) = found {
                break 'wait frame;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let eth = &reply[VNET_HDR_LEN..];
    assert_eq!(&eth[..6], &mac.bytes(), "to the guest");
    assert_eq!(&eth[28..32], &[192, 0, 2, 1], "from the tap's address");
    assert_eq!(&eth[32..38], &mac.bytes());
    assert_eq!(u16::from_le_bytes([reply[10], reply[11]]), 1, "num_buffers");
    assert!(net.net_stats().rx_frames >= 1);
    assert_eq!(net.net_stats().rx_dropped, 0);
}

/// Opens the tap named by KILN_UT_STALL in a device whose guest posts no
/// receive buffers, floods it from the namespace and prints the stats. Run
/// inside the namespace by `a_guest_without_buffers_stalls_and_drops_are_counted`.
#[test]
#[ignore = "helper run by a_guest_without_buffers_stalls_and_drops_are_counted"]
fn stall_tap_named_in_env() {
    let name = std::env::var("KILN_UT_STALL").unwrap();
    let tap = Tap::open(&name).unwrap();
    let mem = Memory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let (_rxq, _txq, mut queues) = rings(&mem);
    let mac: MacAddr = "52:54:00:12:34:56".parse().unwrap();
    let mut net = Net::with_backend(format!("virtio-net {name}"), tap, mac);
    net.activate(features::VERSION_1).unwrap();
    // The carrier comes up (and the kernel starts sending to the tap) up
    // to a second after the tap is attached: send until a frame arrives.
    let sock = std::net::UdpSocket::bind("192.0.2.1:0").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while net.backend_interest().readable {
        assert!(Instant::now() < deadline, "{name} never passed a frame");
        sock.send_to(&[0u8; 100], "192.0.2.2:9").unwrap();
        std::thread::sleep(Duration::from_millis(10));
        assert!(!net.process_backend(&mut queues, &mem));
    }
    // Now the guest has one frame waiting and no buffers: kiln stops
    // watching the tap, whose own queue fills and then drops.
    for _ in 0..64 {
        sock.send_to(&[0u8; 100], "192.0.2.2:9").unwrap();
    }
    println!("KILN-UT: {}", net.stats().unwrap());
}

#[test]
fn a_guest_without_buffers_stalls_and_drops_are_counted() {
    let Some(ns) = Netns::new("stall") else {
        eprintln!("skipped: needs root and iproute2");
        return;
    };
    ns.ip(&["tuntap", "add", "kt0", "mode", "tap"]);
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "kt0"]);
    ns.ip(&["link", "set", "kt0", "txqueuelen", "8", "up"]);
    ns.ip(&[
        "neigh",
        "add",
        "192.0.2.2",
        "lladdr",
        "52:54:00:12:34:56",
        "dev",
        "kt0",
        "nud",
        "permanent",
    ]);
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "virtio::net::tap_tests::stall_tap_named_in_env"])
        .args(["--ignored", "--nocapture", "--test-threads=1"])
        .env("KILN_UT_STALL", "kt0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split("KILN-UT: ").nth(1))
        .unwrap_or_else(|| panic!("{stdout}{}", String::from_utf8_lossy(&out.stderr)));
    assert!(line.contains("rx 0 frames 0 bytes, 0 dropped"), "{line}");
    assert!(line.contains("1 stalls"), "{line}");
    // 64 sent: one waits in the device, 8 in the tap's queue, the rest
    // dropped by the kernel.
    let drops: u64 = line
        .split("; ")
        .find_map(|part| {
            part.strip_suffix(" frames dropped by the host kernel before kiln read them")
        })
        .unwrap_or_else(|| panic!("no kernel drop count: {line}"))
        .parse()
        .unwrap();
    assert!(drops >= 50, "{line}");
}
