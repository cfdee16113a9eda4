//! virtio-vsock through the test agent (virtio-drivers' socket driver in
//! the guest) and kiln's Unix sockets on the host, in Firecracker's
//! convention: the guest connects to `PATH_<port>`, the host connects to
//! PATH and says `CONNECT <port>\n`. Every byte is checked on both sides
//! (the agent's seeded stream, recomputed here).

#[path = "agent/mod.rs"]
mod agent;
#[path = "common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(90);
const SEED: u64 = 0x5eed_50c4;

/// Byte `i` of the agent's stream (tests/agent/src/vsock.rs).
fn stream_byte(seed: u64, i: u64) -> u8 {
    agent::splitmix64(seed ^ (i / 8)).to_le_bytes()[(i % 8) as usize]
}

fn kiln_with_vsock(sock: &Path, cmdline: &str) -> common::Running {
    let elf = agent::build();
    let mut cmd = common::kiln();
    cmd.args(["run", "-v", "--kernel", elf.to_str().unwrap(), "--vsock"])
        .arg(sock)
        .args(["--cmdline", cmdline]);
    common::Running::start(cmd)
}

/// The scratch directory and the vsock socket path in it.
fn socket_path(name: &str) -> (PathBuf, PathBuf) {
    let dir = common::scratch(name);
    let sock = dir.join("v.sock");
    (dir, sock)
}

#[test]
fn guest_connects_to_a_host_socket_and_gets_every_byte_echoed() {
    let (dir, sock) = socket_path("vsock-echo");
    let listener = UnixListener::bind(format!("{}_5000", sock.display())).unwrap();
    let bytes: u64 = 4 << 20;
    let echo = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 65536];
        let mut total = 0u64;
        let mut bad = None;
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break; // the guest's SHUTDOWN reaches us as EOF
            }
            for (k, &b) in buf[..n].iter().enumerate() {
                let i = total + k as u64;
                if bad.is_none() && b != stream_byte(SEED, i) {
                    bad = Some(i);
                }
            }
            s.write_all(&buf[..n]).unwrap();
            total += n as u64;
        }
        (total, bad)
    });
    let o = kiln_with_vsock(
        &sock,
        &format!("agent.test=vsock-echo agent.vsock_bytes={bytes} agent.seed={SEED}"),
    )
    .wait(TIMEOUT);
    let r = agent::Report::parse(&o.stdout);
    o.check(o.code == Some(0) && r.ok(), &r.summary());
    let (total, bad) = echo.join().unwrap();
    o.check(total == bytes, &format!("the host got {total} bytes"));
    o.check(bad.is_none(), &format!("first bad byte at {bad:?}"));
    let info = agent::info(&o.stdout, "vsock-echo").expect("info line");
    eprintln!(
        "vsock echo: {bytes} bytes each way, {} ms, {}.{:02} MiB/s",
        info["rx_ms"],
        info["mib_s_x100"].parse::<u64>().unwrap() / 100,
        info["mib_s_x100"].parse::<u64>().unwrap() % 100
    );
    o.check(
        o.stderr.contains("1 from the guest, 0 refused"),
        "kiln counted the connection",
    );
    o.check(!sock.exists(), "kiln removes its socket at exit");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Connects to kiln's socket and asks for guest port `port` until the
/// guest accepts (it may not listen yet); returns the stream and the port
/// kiln gave the host side.
fn connect_to_guest(sock: &Path, port: u32, within: Duration) -> (UnixStream, u32) {
    let t0 = Instant::now();
    let mut refused = 0;
    loop {
        assert!(
            t0.elapsed() < within,
            "no connection to guest port {port} in {within:?} ({refused} refused)"
        );
        let Ok(mut s) = UnixStream::connect(sock) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut reader = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        if let Some(host_port) = line.strip_prefix("OK ") {
            let host_port = host_port.trim_end().parse().expect("OK <port>");
            assert!(reader.buffer().is_empty(), "data before the OK line ended");
            s.set_read_timeout(None).unwrap();
            return (s, host_port);
        }
        // Not listening yet: kiln closed the socket without OK.
        refused += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn host_connects_to_a_guest_port_with_connect_and_gets_ok() {
    let (dir, sock) = socket_path("vsock-listen");
    let bytes: u64 = 1 << 20;
    let mut kiln = kiln_with_vsock(
        &sock,
        &format!("agent.test=vsock-listen agent.vsock_bytes={bytes} agent.seed={SEED}"),
    );
    assert!(
        kiln.wait_for_stdout("vsock-listen listening", Duration::from_secs(30)),
        "the agent never listened"
    );
    let (s, host_port) = connect_to_guest(&sock, 5001, Duration::from_secs(20));
    assert!(
        (1 << 30..1 << 31).contains(&host_port),
        "host port {host_port}"
    );
    let mut writer = s.try_clone().unwrap();
    let send = std::thread::spawn(move || {
        let data: Vec<u8> = (0..bytes).map(|i| stream_byte(SEED, i)).collect();
        writer.write_all(&data).unwrap();
    });
    let mut back = vec![0u8; bytes as usize];
    (&s).read_exact(&mut back).unwrap();
    send.join().unwrap();
    let first_bad = (0..bytes).find(|&i| back[i as usize] != stream_byte(SEED, i));
    drop(s);
    let o = kiln.wait(TIMEOUT);
    let r = agent::Report::parse(&o.stdout);
    o.check(o.code == Some(0) && r.ok(), &r.summary());
    o.check(
        first_bad.is_none(),
        &format!("echo differs at {first_bad:?}"),
    );
    let info = agent::info(&o.stdout, "vsock-listen port=5001").expect("info line");
    o.check(
        info["host_port"] == host_port.to_string(),
        "the guest saw the host port kiln announced",
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn guest_connection_to_a_port_nobody_listens_on_is_refused() {
    let (dir, sock) = socket_path("vsock-refused");
    let o = kiln_with_vsock(&sock, "agent.test=vsock-refused").wait(TIMEOUT);
    let r = agent::Report::parse(&o.stdout);
    o.check(o.code == Some(0) && r.ok(), &r.summary());
    o.check(o.stderr.contains("1 refused"), "kiln counted the refusal");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_is_an_error() {
    let (dir, sock) = socket_path("vsock-stale");
    drop(UnixListener::bind(&sock).unwrap()); // left behind by a dead VMM
    let o = kiln_with_vsock(&sock, "agent.test=probe").wait(TIMEOUT);
    let r = agent::Report::parse(&o.stdout);
    o.check(o.code == Some(0) && r.ok(), "a stale socket is replaced");

    let _live = UnixListener::bind(&sock).unwrap();
    let o = kiln_with_vsock(&sock, "agent.test=probe").wait(TIMEOUT);
    o.check(o.code == Some(2), "a socket in use is bad input");
    o.check(
        o.errors().len() == 1 && o.errors()[0].contains("in use by another process"),
        "one error line names the problem",
    );
    std::fs::remove_dir_all(dir).unwrap();
}
