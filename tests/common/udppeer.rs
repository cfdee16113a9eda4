//! The host's side of the test agent's UDP protocol (see
//! tests/agent/src/netcheck.rs): a peer on a thread inside a test's
//! network namespace that checks every datagram the guest sends and sends
//! the guest its own stream back, and floods it on request. Used by
//! tests/agent_net.rs and by the network benchmark (tests/bench_net.rs).
//!
//! The stream pattern is recomputed here: little-endian u64 word `w` is
//! `splitmix64(seed ^ w)` (guest to host), `splitmix64(seed ^ DOWN_SALT ^
//! w)` (host to guest); datagram `s` carries stream bytes `s * CHUNK ..`.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::agent;
use super::netns::NetNs;

pub const TAP: &str = "kt0";
pub const HOST_IP: &str = "10.0.2.1";
pub const GUEST_IP: &str = "10.0.2.2";
pub const GUEST_MAC: &str = "52:54:00:4b:4e:01";
/// The agent's UDP port and the peer's (AGENT_PORT, DEFAULT_HOST_PORT).
pub const AGENT_PORT: u16 = 7000;
pub const PEER_PORT: u16 = 7001;
/// Data bytes per datagram and the download salt (CHUNK, DOWN_SALT).
pub const CHUNK: usize = 1464;
pub const DOWN_SALT: u64 = 0xd0d0_d0d0_d0d0_d0d0;

/// Datagram `seq`'s share of the stream for `seed`.
pub fn chunk(seed: u64, seq: u32, len: usize) -> Vec<u8> {
    let first = u64::from(seq) * (CHUNK as u64 / 8);
    let mut out: Vec<u8> = (0..len.div_ceil(8) as u64)
        .flat_map(|w| agent::splitmix64(seed ^ (first + w)).to_le_bytes())
        .collect();
    out.truncate(len);
    out
}

// ---- the host's UDP peer ------------------------------------------------------

/// What the peer does the stream with.
#[derive(Clone, Copy)]
pub struct PeerConfig {
    pub seed: u64,
    pub bytes: u64,
    /// Datagrams each way.
    pub count: u32,
    /// Loss on purpose, to see it detected and repaired: UP datagrams
    /// whose sequence number is 5 modulo this are ignored the first time
    /// they arrive, and DOWN datagrams 3 modulo this are not sent the
    /// first time they are asked for (0: no loss).
    pub lose_every: u32,
}

impl PeerConfig {
    pub fn new(seed: u64, bytes: u64) -> PeerConfig {
        PeerConfig {
            seed,
            bytes,
            count: bytes.div_ceil(CHUNK as u64) as u32,
            lose_every: 0,
        }
    }

    /// Whether datagram `seq` is lost the first time (UP: 5, DOWN: 3
    /// modulo `lose_every`).
    pub fn lost(&self, seq: u32, residue: u32) -> bool {
        self.lose_every != 0 && seq % self.lose_every == residue
    }

    pub fn chunk_len(&self, seq: u32) -> usize {
        (self.bytes - u64::from(seq) * CHUNK as u64).min(CHUNK as u64) as usize
    }
}

/// One flood the agent asked for, and kiln's CPU time meanwhile.
#[derive(Debug, Default, Clone)]
pub struct Flood {
    pub ms: u32,
    pub frames: u64,
    pub send_errors: u64,
    pub wall: Duration,
    /// The name of the process watched (kiln, once `ip netns exec` has
    /// exec'd it).
    pub comm: String,
    /// CPU time of kiln's threads except the vCPUs (the event loop that
    /// serves the NIC), and of the whole process.
    pub kiln_cpu_ms: Option<u64>,
    pub kiln_cpu_all_ms: Option<u64>,
}

/// What the peer saw.
#[derive(Debug, Default)]
pub struct PeerReport {
    /// Distinct UP datagrams that arrived intact, and their data bytes.
    pub up_datagrams: u64,
    pub up_bytes: u64,
    pub up_bad: u64,
    pub up_duplicates: u64,
    pub polls: u64,
    /// DOWN datagrams sent, and how many of them were sent again.
    pub down_sent: u64,
    pub down_resent: u64,
    /// Datagrams lost on purpose (PeerConfig::lose_every) each way.
    pub up_lost: u64,
    pub down_lost: u64,
    pub requests: u64,
    /// The agent's DONE: datagrams, resent up, asked again down.
    pub done: Option<(u32, u32, u32)>,
    pub floods: Vec<Flood>,
    /// Anything unexpected (bad datagrams, strangers), first few.
    pub problems: Vec<String>,
}

impl PeerReport {
    pub fn problem(&mut self, what: String) {
        if self.problems.len() < 10 {
            self.problems.push(what);
        }
    }
}

/// The peer thread: stops when `stop` is set (the guard does it).
pub struct Peer {
    pub stop: Arc<AtomicBool>,
    pub pid: Arc<AtomicI32>,
    pub thread: Option<std::thread::JoinHandle<PeerReport>>,
}

impl Peer {
    /// Starts the peer inside `ns` on PEER_PORT; returns once it listens.
    pub fn start(ns: &NetNs, cfg: PeerConfig) -> Peer {
        let stop = Arc::new(AtomicBool::new(false));
        let pid = Arc::new(AtomicI32::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (s, p) = (stop.clone(), pid.clone());
        let thread = ns.run_inside(move || {
            let sock = UdpSocket::bind((HOST_IP, PEER_PORT)).expect("peer socket");
            set_rcvbuf(&sock, 4 << 20);
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            ready_tx.send(()).unwrap();
            serve(&sock, cfg, &s, &p)
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the peer listens");
        Peer {
            stop,
            pid,
            thread: Some(thread),
        }
    }

    /// Stops the peer and returns its report.
    pub fn finish(mut self) -> PeerReport {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().expect("peer thread")
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A bigger receive buffer than the default (SO_RCVBUFFORCE: we are root),
/// so a window of datagrams never overflows it.
fn set_rcvbuf(sock: &UdpSocket, bytes: i32) {
    // SAFETY: setsockopt reads an int from a valid pointer for the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
}

fn u32_at(m: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(m[at..at + 4].try_into().unwrap())
}

/// Serves the agent until `stop`.
fn serve(sock: &UdpSocket, cfg: PeerConfig, stop: &AtomicBool, pid: &AtomicI32) -> PeerReport {
    let mut r = PeerReport::default();
    let agent: SocketAddr = format!("{GUEST_IP}:{AGENT_PORT}").parse().unwrap();
    let mut got = vec![false; cfg.count as usize];
    let mut sent = vec![false; cfg.count as usize];
    let mut lost_up = vec![false; cfg.count as usize];
    let mut held_down = vec![false; cfg.count as usize];
    let mut last_flood = None;
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::SeqCst) {
        let (len, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => {
                r.problem(format!("recv: {e}"));
                continue;
            }
        };
        let m = &buf[..len];
        if from != agent || len < 8 {
            r.problem(format!("{len} bytes from {from}"));
            continue;
        }
        let a = u32_at(m, 4);
        let reply = |msg: &[u8]| {
            let _ = sock.send_to(msg, agent);
        };
        match m[0] {
            // UP: check the data against the stream.
            1 => {
                if a >= cfg.count {
                    r.up_bad += 1;
                    r.problem(format!("UP datagram {a} of {}", cfg.count));
                } else if m[8..] != chunk(cfg.seed, a, cfg.chunk_len(a)) {
                    r.up_bad += 1;
                    r.problem(format!(
                        "UP datagram {a}: {} data bytes, not the pattern",
                        len - 8
                    ));
                } else if cfg.lost(a, 5) && !std::mem::replace(&mut lost_up[a as usize], true) {
                    r.up_lost += 1;
                } else if got[a as usize] {
                    r.up_duplicates += 1;
                } else {
                    got[a as usize] = true;
                    r.up_datagrams += 1;
                    r.up_bytes += (len - 8) as u64;
                }
            }
            // POLL: which of first..first+n arrived.
            3 if len >= 12 => {
                r.polls += 1;
                let n = u32_at(m, 8) as usize;
                let mut ack = vec![4, 0, 0, 0];
                ack.extend_from_slice(&a.to_le_bytes());
                ack.extend_from_slice(&(n as u32).to_le_bytes());
                let mut bits = vec![0u8; n.div_ceil(8)];
                for i in 0..n {
                    if got.get(a as usize + i) == Some(&true) {
                        bits[i / 8] |= 1 << (i % 8);
                    }
                }
                ack.extend_from_slice(&bits);
                reply(&ack);
            }
            // REQ: send the DOWN datagrams asked for.
            5 if len >= 12 => {
                r.requests += 1;
                let n = u32_at(m, 8) as usize;
                for i in 0..n {
                    let seq = a + i as u32;
                    if m.get(12 + i / 8).is_some_and(|b| b >> (i % 8) & 1 == 1) && seq < cfg.count {
                        if cfg.lost(seq, 3)
                            && !std::mem::replace(&mut held_down[seq as usize], true)
                        {
                            r.down_lost += 1;
                            continue;
                        }
                        let mut d = vec![2, 0, 0, 0];
                        d.extend_from_slice(&seq.to_le_bytes());
                        d.extend_from_slice(&chunk(cfg.seed ^ DOWN_SALT, seq, cfg.chunk_len(seq)));
                        if let Err(e) = sock.send_to(&d, agent) {
                            r.problem(format!("sending DOWN {seq}: {e}"));
                        }
                        r.down_sent += 1;
                        if std::mem::replace(&mut sent[seq as usize], true) {
                            r.down_resent += 1;
                        }
                    }
                }
            }
            // DONE: our counts back.
            6 if len >= 20 => {
                r.done = Some((u32_at(m, 8), u32_at(m, 12), u32_at(m, 16)));
                let mut ack = vec![7, 0, 0, 0, 0, 0, 0, 0];
                for v in [r.up_datagrams, r.up_bad, r.up_duplicates] {
                    ack.extend_from_slice(&(v as u32).to_le_bytes());
                }
                ack.extend_from_slice(&r.up_bytes.to_le_bytes());
                reply(&ack);
            }
            // STALL: acknowledge, then flood (once per id).
            8 if len >= 14 => {
                let mut ack = vec![9, 0, 0, 0];
                ack.extend_from_slice(&a.to_le_bytes());
                reply(&ack);
                if last_flood != Some(a) {
                    last_flood = Some(a);
                    let ms = u32_at(m, 8);
                    let port = u16::from_le_bytes([m[12], m[13]]);
                    let flood = flood(ms, port, pid.load(Ordering::SeqCst));
                    r.floods.push(flood);
                }
            }
            k => r.problem(format!("message kind {k}, {len} bytes")),
        }
    }
    r
}

/// CPU time (ms) of kiln's threads other than the vCPUs, and of all of
/// them, from /proc/PID/task/*/stat (utime + stime).
pub fn kiln_cpu_ms(pid: i32) -> Option<(u64, u64)> {
    if pid <= 0 {
        return None;
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let (mut others, mut all) = (0, 0);
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        // Fields after "(comm)": state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        all += ticks;
        if !comm.starts_with("vcpu") {
            others += ticks;
        }
    }
    Some((others * 1000 / hz, all * 1000 / hz))
}

/// Floods the agent's `port` with 1 KiB datagrams for `ms` (bursts of 64
/// a millisecond), measuring kiln's CPU time meanwhile.
pub fn flood(ms: u32, port: u16, pid: i32) -> Flood {
    let sock = UdpSocket::bind((HOST_IP, 0)).expect("flood socket");
    sock.set_nonblocking(true).unwrap();
    let to: SocketAddr = format!("{GUEST_IP}:{port}").parse().unwrap();
    let payload = vec![0x5au8; 1024];
    let mut f = Flood {
        ms,
        ..Flood::default()
    };
    f.comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string();
    let cpu0 = kiln_cpu_ms(pid);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(ms.into()) {
        for _ in 0..64 {
            match sock.send_to(&payload, to) {
                Ok(_) => f.frames += 1,
                Err(_) => f.send_errors += 1,
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    f.wall = t0.elapsed();
    let cpu1 = kiln_cpu_ms(pid);
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        f.kiln_cpu_ms = Some(b.0 - a.0);
        f.kiln_cpu_all_ms = Some(b.1 - a.1);
    }
    f
}
