//! The virtio-net checks, over [`crate::net`] (virtio-drivers'
//! `VirtIONetRaw` and hand-made frames). The other end is the host kernel
//! on the tap (ARP, ICMP echo) and, for `net-bulk` and `net-stall`, a
//! UDP peer the host test runs in the tap's network namespace
//! (tests/agent_net.rs), speaking the protocol below.
//!
//! - `net-ping[:N]`: ARP-resolves `agent.net_host`, then sends
//!   `agent.net_pings` ICMP echo requests of several sizes and checks each
//!   reply (identifier, sequence number, data, checksums); prints RTTs.
//! - `net-bulk[:N]`: `agent.net_bytes` (default 16 MiB) of a seeded
//!   pattern to the host's UDP port and the same amount back, each
//!   datagram checked on the receiving side; lost datagrams are detected
//!   by sequence number and sent again; prints throughput each way.
//! - `net-stall[:N]`: asks the host to flood the guest, stops refilling
//!   the receive queue until the device has used every buffer and then
//!   some more (`agent.net_stall_ms`), refills, and must get a fresh ping
//!   reply through.
//!
//! # The UDP protocol
//!
//! The agent uses UDP port [`AGENT_PORT`] (7000) and talks to
//! `agent.net_host`:`agent.net_port` (default 7001). Every datagram starts
//! with a kind byte, three zero bytes and a little-endian u32 `a`:
//!
//! | kind | direction | rest |
//! |---|---|---|
//! | 1 UP | agent -> host | `a` = sequence number; data |
//! | 2 DOWN | host -> agent | `a` = sequence number; data |
//! | 3 POLL | agent -> host | `a` = first; u32 count: "which of these did you get?" |
//! | 4 ACK | host -> agent | `a` = first; u32 count; bitmap, bit i = `first + i` arrived intact |
//! | 5 REQ | agent -> host | `a` = first; u32 count; bitmap of the DOWN datagrams to send |
//! | 6 DONE | agent -> host | `a` = 0; u32 datagrams, u32 resent up, u32 asked again down |
//! | 7 DONE_ACK | host -> agent | `a` = 0; u32 distinct UP received, u32 bad, u32 duplicates, u64 data bytes |
//! | 8 STALL | agent -> host | `a` = flood id; u32 ms, u16 port: flood the agent's port for that long |
//! | 9 STALL_ACK | host -> agent | `a` = flood id (the flood starts now) |
//!
//! The data stream (each direction `agent.net_bytes` long) is cut into
//! [`CHUNK`]-byte pieces, the last one shorter; datagram `s` carries
//! stream bytes `s * CHUNK ..`. Little-endian u64 word `w` of the stream
//! is `splitmix64(seed ^ w)`, with `seed` = `agent.seed` up and
//! `agent.seed ^ DOWN_SALT` down. The agent sends a window of
//! `agent.net_window` datagrams, POLLs, and sends again what the ACK says
//! is missing; downwards it REQuests a window and asks again for what has
//! not come after a quiet spell.

use crate::blk::splitmix64;
use crate::checks::{CheckResult, Fail};
use crate::net::{
    parse_udp, Ip, Ipv4, Link, Mac, Rx, ICMP_HLEN, MAX_UDP_PAYLOAD, PROTO_ICMP, QUEUE_SIZE,
};
use crate::tests::Context;
use crate::time::{self, Clock};
use crate::{cmdline, ensure, fail, println};

/// The agent's UDP port.
pub const AGENT_PORT: u16 = 7000;
/// Where the host floods the agent during `net-stall`.
pub const FLOOD_PORT: u16 = 7002;
/// The host's UDP port unless `agent.net_port` says otherwise.
const DEFAULT_HOST_PORT: u16 = 7001;
/// VIRTIO_NET_F_MAC: the device has a MAC address in its config space.
const FEATURE_MAC: u64 = 1 << 5;
/// Header of every datagram: kind, three zero bytes, u32.
const MSG_HLEN: usize = 8;
/// Data bytes per UP/DOWN datagram: the largest multiple of 8 that fits
/// one unfragmented frame with the header (1464 + 8 = 1472 bytes of UDP
/// payload, a 1514-byte frame).
pub const CHUNK: usize = (MAX_UDP_PAYLOAD - MSG_HLEN) / 8 * 8;
/// XORed into the seed for the host-to-agent stream.
pub const DOWN_SALT: u64 = 0xd0d0_d0d0_d0d0_d0d0;

const UP: u8 = 1;
const DOWN: u8 = 2;
const POLL: u8 = 3;
const ACK: u8 = 4;
const REQ: u8 = 5;
const DONE: u8 = 6;
const DONE_ACK: u8 = 7;
const STALL: u8 = 8;
const STALL_ACK: u8 = 9;

/// How long ARP may take.
const ARP_TIMEOUT_MS: u64 = 3_000;
/// How long an echo reply may take.
const PING_TIMEOUT_MS: u64 = 2_000;
/// ICMP echo identifier ("KN").
const PING_ID: u16 = 0x4b4e;
/// Echo data sizes, in turn (1472: the largest unfragmented).
const PING_SIZES: [usize; 5] = [56, 1472, 0, 512, 1000];
/// How long to wait for each answer of the host's UDP peer, and how
/// often to ask before giving up.
const ANSWER_MS: u64 = 300;
const ASKS: u32 = 20;
/// After this long without a new DOWN datagram, ask again for the rest.
const QUIET_MS: u64 = 500;
/// Rounds of sending again (or asking again) for one window.
const MAX_ROUNDS: u32 = 20;
/// The largest window: the host's burst must fit the receive buffers.
const MAX_WINDOW: usize = 192;

// ---- options ----------------------------------------------------------------

/// A numeric `agent.KEY=` option in `range`, or `default`.
pub(crate) fn option(
    ctx: &Context,
    key: &str,
    default: u64,
    range: core::ops::RangeInclusive<u64>,
) -> Result<u64, Fail> {
    match cmdline::get(ctx.cmdline, key) {
        None => Ok(default),
        Some(text) => match cmdline::size(text) {
            Some(v) if range.contains(&v) => Ok(v),
            _ => fail!(
                "{key}={text}: expected a number from {} to {}",
                range.start(),
                range.end()
            ),
        },
    }
}

/// The host's UDP port.
fn host_port(ctx: &Context) -> Result<u16, Fail> {
    Ok(option(ctx, "agent.net_port", DEFAULT_HOST_PORT.into(), 1..=65535)? as u16)
}

/// Microseconds in `ticks`.
fn us(clock: &Clock, ticks: u64) -> u64 {
    clock.micros(ticks)
}

// ---- ICMP echo --------------------------------------------------------------

/// Echo data byte `i` of request `seq`.
fn echo_byte(seq: u16, i: usize) -> u8 {
    (splitmix64(u64::from(seq) << 32 ^ (i as u64 / 8)) >> (i % 8 * 8)) as u8
}

/// Sends echo request `seq` with `size` data bytes and waits for its reply;
/// returns the round trip in TSC ticks. Other packets (stale replies,
/// UDP, ...) are skipped.
fn ping(link: &mut Link, seq: u16, size: usize, timeout_ms: u64) -> Result<u64, Fail> {
    let t0 = time::now();
    link.send_ipv4(PROTO_ICMP, ICMP_HLEN + size, |p| {
        p[..8].copy_from_slice(&[8, 0, 0, 0, 0, 0, 0, 0]);
        p[4..6].copy_from_slice(&PING_ID.to_be_bytes());
        p[6..8].copy_from_slice(&seq.to_be_bytes());
        for (i, b) in p[8..].iter_mut().enumerate() {
            *b = echo_byte(seq, i);
        }
        let sum = crate::net::csum_fold(crate::net::csum_add(0, p));
        p[2..4].copy_from_slice(&sum.to_be_bytes());
    })?;
    let deadline = link.nic.clock.deadline(timeout_ms);
    let host = link.host_ip;
    let got = link.wait_for(deadline, |link, rx, ip| {
        if ip.proto != PROTO_ICMP {
            return Ok(None);
        }
        let frame = link.nic.frame(rx);
        let p = &frame[ip.start..ip.start + ip.len];
        if p.len() < ICMP_HLEN || p[0] != 0 {
            return Ok(None);
        }
        let (id, got_seq) = (
            u16::from_be_bytes([p[4], p[5]]),
            u16::from_be_bytes([p[6], p[7]]),
        );
        if id != PING_ID || got_seq != seq {
            return Ok(None);
        }
        let t1 = time::now();
        ensure!(
            ip.src == host,
            "echo reply {seq} came from {}, not {}",
            Ip(ip.src),
            Ip(host)
        );
        ensure!(
            crate::net::csum_fold(crate::net::csum_add(0, p)) == 0,
            "echo reply {seq}: bad ICMP checksum"
        );
        ensure!(
            p[1] == 0 && p.len() == ICMP_HLEN + size,
            "echo reply {seq}: code {} and {} data bytes, sent {size}",
            p[1],
            p.len() - ICMP_HLEN
        );
        if let Some(i) = (0..size).find(|&i| p[ICMP_HLEN + i] != echo_byte(seq, i)) {
            fail!(
                "echo reply {seq}: data byte {i} is {:#04x}, sent {:#04x}",
                p[ICMP_HLEN + i],
                echo_byte(seq, i)
            );
        }
        Ok(Some(t1 - t0))
    })?;
    match got {
        Some(rtt) => Ok(rtt),
        None => fail!(
            "no echo reply to request {seq} ({size} bytes) from {} within {timeout_ms} ms",
            Ip(host)
        ),
    }
}

/// `net-ping[:N]`: ARP, then `agent.net_pings` echoes (default 5).
pub fn net_ping(ctx: &Context) -> CheckResult {
    let count = option(ctx, "agent.net_pings", 5, 1..=1000)? as u16;
    let mut link = Link::open(ctx)?;
    let clock = link.nic.clock;
    ensure!(
        link.nic.offered & FEATURE_MAC != 0,
        "the device does not offer VIRTIO_NET_F_MAC (features {:#x})",
        link.nic.offered
    );
    let (arp, requests) = link.resolve(ARP_TIMEOUT_MS)?;
    let host_mac = link.host_mac.unwrap_or_default();
    println!(
        "AGENT: net-ping arp host={} host_mac={} requests={requests} arp_us={}",
        Ip(link.host_ip),
        Mac(host_mac),
        us(&clock, arp)
    );
    let (mut min, mut max, mut sum) = (u64::MAX, 0, 0);
    for seq in 1..=count {
        let size = PING_SIZES[usize::from(seq - 1) % PING_SIZES.len()];
        let rtt = us(&clock, ping(&mut link, seq, size, PING_TIMEOUT_MS)?);
        println!("AGENT: net-ping echo seq={seq} bytes={size} rtt_us={rtt}");
        (min, max, sum) = (min.min(rtt), max.max(rtt), sum + rtt);
    }
    println!(
        "AGENT: net-ping done host={} ip={} mac={} sent={count} received={count} rtt_min_us={min} \
         rtt_avg_us={} rtt_max_us={max} arp_answered={} ignored={} bad={} nic_rx_frames={} \
         nic_tx_frames={}",
        Ip(link.host_ip),
        Ip(link.ip),
        Mac(link.nic.mac),
        sum / u64::from(count),
        link.stats.arp_answered,
        link.stats.ignored,
        link.stats.bad,
        link.nic.stats.rx_frames,
        link.nic.stats.tx_frames
    );
    link.nic.close()
}

// ---- the UDP peer -----------------------------------------------------------

/// A window's worth of flags (bit i: datagram `first + i`).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Bits([u64; 4]);

impl Bits {
    /// The first `n` bits set.
    fn first(n: usize) -> Bits {
        let mut b = Bits([0; 4]);
        for i in 0..n {
            b.set(i, true);
        }
        b
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] >> (i % 64) & 1 == 1
    }
    fn set(&mut self, i: usize, on: bool) {
        if on {
            self.0[i / 64] |= 1 << (i % 64);
        } else {
            self.0[i / 64] &= !(1 << (i % 64));
        }
    }
    fn count(&self) -> u32 {
        self.0.iter().map(|w| w.count_ones()).sum()
    }
    /// The bitmap as sent: (n + 7) / 8 bytes, bit i in byte i / 8.
    fn write(&self, n: usize, out: &mut [u8]) {
        for (i, byte) in out[..n.div_ceil(8)].iter_mut().enumerate() {
            *byte = (self.0[i / 8] >> (i % 8 * 8)) as u8;
        }
    }
    fn read(n: usize, bytes: &[u8]) -> Bits {
        let mut b = Bits([0; 4]);
        for i in 0..n {
            b.set(i, bytes[i / 8] >> (i % 8) & 1 == 1);
        }
        b
    }
}

/// What the bulk transfer works with.
struct Bulk {
    port: u16,
    seed: u64,
    bytes: u64,
    /// Datagrams each way.
    count: u32,
    window: usize,
}

impl Bulk {
    fn from(ctx: &Context) -> Result<Bulk, Fail> {
        let bytes = option(ctx, "agent.net_bytes", 16 << 20, 1..=1 << 30)?;
        Ok(Bulk {
            port: host_port(ctx)?,
            seed: crate::blk::seed(ctx),
            bytes,
            count: bytes.div_ceil(CHUNK as u64) as u32,
            window: option(ctx, "agent.net_window", 128, 1..=MAX_WINDOW as u64)? as usize,
        })
    }

    /// Data bytes in datagram `seq`.
    fn chunk_len(&self, seq: u32) -> usize {
        let start = u64::from(seq) * CHUNK as u64;
        (self.bytes - start).min(CHUNK as u64) as usize
    }
}

/// Stream word `w` for `seed`.
fn word(seed: u64, w: u64) -> [u8; 8] {
    splitmix64(seed ^ w).to_le_bytes()
}

/// Writes datagram `seq`'s share of the stream.
fn fill_chunk(seed: u64, seq: u32, out: &mut [u8]) {
    let first = u64::from(seq) * (CHUNK as u64 / 8);
    for (w, bytes) in out.chunks_mut(8).enumerate() {
        bytes.copy_from_slice(&word(seed, first + w as u64)[..bytes.len()]);
    }
}

/// The first byte of `data` that is not datagram `seq`'s share.
fn check_chunk(seed: u64, seq: u32, data: &[u8]) -> Option<(usize, u8, u8)> {
    let first = u64::from(seq) * (CHUNK as u64 / 8);
    for (w, bytes) in data.chunks(8).enumerate() {
        let want = word(seed, first + w as u64);
        if bytes != &want[..bytes.len()] {
            let i = (0..bytes.len()).find(|&i| bytes[i] != want[i]).unwrap_or(0);
            return Some((w * 8 + i, bytes[i], want[i]));
        }
    }
    None
}

/// A message to the host's port: kind, `a`, then `rest` bytes that `fill`
/// writes.
fn send_msg(
    link: &mut Link,
    port: u16,
    kind: u8,
    a: u32,
    rest: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Result<(), Fail> {
    link.send_udp(AGENT_PORT, port, MSG_HLEN + rest, |m| {
        m[..4].copy_from_slice(&[kind, 0, 0, 0]);
        m[4..8].copy_from_slice(&a.to_le_bytes());
        fill(&mut m[MSG_HLEN..]);
    })
}

/// A datagram from the host's port to ours: its message bytes (kind
/// first). An ICMP "port unreachable" from the host fails the check: no
/// one listens there.
fn host_msg<'a>(link: &'a Link, port: u16, rx: &Rx, ip: &Ipv4) -> Result<Option<&'a [u8]>, Fail> {
    let frame = link.nic.frame(rx);
    if ip.proto == PROTO_ICMP {
        let p = &frame[ip.start..ip.start + ip.len];
        if p.len() >= ICMP_HLEN && p[0] == 3 && p[1] == 3 {
            fail!(
                "{}: UDP port {port} unreachable (nobody listens there?)",
                Ip(link.host_ip)
            );
        }
        return Ok(None);
    }
    let Some(u) = parse_udp(frame, ip, link.ip) else {
        return Ok(None);
    };
    if u.src != link.host_ip || u.src_port != port || u.dst_port != AGENT_PORT || u.len < MSG_HLEN {
        return Ok(None);
    }
    Ok(Some(&frame[u.start..u.start + u.len]))
}

/// The u32 at `at` in a message.
fn u32_at(m: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(m[at..at + 4].try_into().unwrap())
}

/// Sends a request until the host answers with a message `pick` accepts.
fn ask<T>(
    link: &mut Link,
    port: u16,
    what: &str,
    mut send: impl FnMut(&mut Link) -> Result<(), Fail>,
    mut pick: impl FnMut(&[u8]) -> Result<Option<T>, Fail>,
) -> Result<T, Fail> {
    for _ in 0..ASKS {
        send(link)?;
        let deadline = link.nic.clock.deadline(ANSWER_MS);
        let got = link.wait_for(deadline, |link, rx, ip| {
            match host_msg(link, port, rx, ip)? {
                Some(m) => pick(m),
                None => Ok(None),
            }
        })?;
        if let Some(v) = got {
            return Ok(v);
        }
    }
    fail!(
        "{}:{port} did not answer {what} ({ASKS} tries, {ANSWER_MS} ms each)",
        Ip(link.host_ip)
    )
}

/// Agent to host: every datagram, window by window, sent again until the
/// host has it. Returns how many were sent again.
fn upload(link: &mut Link, b: &Bulk) -> Result<u32, Fail> {
    let mut resent = 0;
    let mut first = 0;
    while first < b.count {
        let n = b.window.min((b.count - first) as usize);
        let mut missing = Bits::first(n);
        let mut round = 0;
        loop {
            for i in (0..n).filter(|&i| missing.get(i)) {
                let seq = first + i as u32;
                let len = b.chunk_len(seq);
                send_msg(link, b.port, UP, seq, len, |d| fill_chunk(b.seed, seq, d))?;
            }
            if round > 0 {
                resent += missing.count();
            }
            let acked = ask(
                link,
                b.port,
                "a POLL",
                |link| {
                    send_msg(link, b.port, POLL, first, 4, |d| {
                        d.copy_from_slice(&(n as u32).to_le_bytes())
                    })
                },
                |m| {
                    let ok = m[0] == ACK
                        && m.len() >= 12 + n.div_ceil(8)
                        && u32_at(m, 4) == first
                        && u32_at(m, 8) == n as u32;
                    Ok(ok.then(|| Bits::read(n, &m[12..])))
                },
            )?;
            for i in 0..n {
                missing.set(i, !acked.get(i));
            }
            if missing.count() == 0 {
                break;
            }
            round += 1;
            ensure!(
                round <= MAX_ROUNDS,
                "upload: datagrams {first}+{n}: {} still missing after {MAX_ROUNDS} rounds",
                missing.count()
            );
        }
        first += n as u32;
    }
    Ok(resent)
}

/// What the download saw.
#[derive(Default)]
struct Down {
    /// Datagrams asked for again (lost or late).
    asked_again: u32,
    /// Datagrams that came twice (late ones).
    duplicates: u32,
    /// Data bytes received and checked (each datagram once).
    bytes: u64,
}

/// Host to agent: each window REQuested, checked datagram by datagram,
/// the missing ones asked for again after a quiet spell.
fn download(link: &mut Link, b: &Bulk) -> Result<Down, Fail> {
    let mut down = Down::default();
    let seed = b.seed ^ DOWN_SALT;
    let mut first = 0;
    while first < b.count {
        let n = b.window.min((b.count - first) as usize);
        let mut wanted = Bits::first(n);
        let mut round = 0;
        while wanted.count() > 0 {
            if round > 0 {
                down.asked_again += wanted.count();
            }
            ensure!(
                round <= MAX_ROUNDS,
                "download: datagrams {first}+{n}: {} still missing after {MAX_ROUNDS} requests",
                wanted.count()
            );
            let w = wanted;
            send_msg(link, b.port, REQ, first, 4 + n.div_ceil(8), |d| {
                d[..4].copy_from_slice(&(n as u32).to_le_bytes());
                w.write(n, &mut d[4..]);
            })?;
            round += 1;
            let mut quiet = link.nic.clock.deadline(QUIET_MS);
            while wanted.count() > 0 {
                let Some((rx, ip)) = link.poll()? else {
                    if quiet.passed() {
                        break;
                    }
                    core::hint::spin_loop();
                    continue;
                };
                let got = take_down(link, b, seed, &rx, &ip, first, n, &mut wanted, &mut down);
                link.nic.release(rx)?;
                if got? {
                    quiet = link.nic.clock.deadline(QUIET_MS);
                }
            }
        }
        first += n as u32;
    }
    Ok(down)
}

/// Checks one received packet as a DOWN datagram of the window `first`+`n`;
/// true if it was a wanted one.
#[allow(clippy::too_many_arguments)]
fn take_down(
    link: &Link,
    b: &Bulk,
    seed: u64,
    rx: &Rx,
    ip: &Ipv4,
    first: u32,
    n: usize,
    wanted: &mut Bits,
    down: &mut Down,
) -> Result<bool, Fail> {
    let Some(m) = host_msg(link, b.port, rx, ip)? else {
        return Ok(false);
    };
    if m[0] != DOWN {
        return Ok(false);
    }
    let seq = u32_at(m, 4);
    let in_window = seq >= first && ((seq - first) as usize) < n;
    if !in_window || !wanted.get((seq - first) as usize) {
        // Sent again after we asked twice, or from an earlier window.
        ensure!(seq < b.count, "download: datagram {seq} of {}", b.count);
        down.duplicates += 1;
        return Ok(false);
    }
    let data = &m[MSG_HLEN..];
    ensure!(
        data.len() == b.chunk_len(seq),
        "download: datagram {seq} has {} data bytes, not {}",
        data.len(),
        b.chunk_len(seq)
    );
    if let Some((i, got, want)) = check_chunk(seed, seq, data) {
        fail!("download: datagram {seq} byte {i} is {got:#04x}, expected {want:#04x}");
    }
    wanted.set((seq - first) as usize, false);
    down.bytes += data.len() as u64;
    Ok(true)
}

/// MiB/s with two decimals, for `bytes` in `ticks`.
struct Rate(u64);
impl core::fmt::Display for Rate {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

/// `net-bulk[:N]`: `agent.net_bytes` each way through the host's peer.
pub fn net_bulk(ctx: &Context) -> CheckResult {
    let b = Bulk::from(ctx)?;
    let mut link = Link::open(ctx)?;
    let clock = link.nic.clock;
    link.resolve(ARP_TIMEOUT_MS)?;

    let t0 = time::now();
    let resent = upload(&mut link, &b)?;
    let t_up = time::now() - t0;
    let t1 = time::now();
    let down = download(&mut link, &b)?;
    let t_down = time::now() - t1;
    ensure!(
        down.bytes == b.bytes,
        "download: {} data bytes checked, expected {}",
        down.bytes,
        b.bytes
    );

    // Compare notes with the host.
    let (count, asked_again) = (b.count, down.asked_again);
    let host = ask(
        &mut link,
        b.port,
        "DONE",
        |link| {
            send_msg(link, b.port, DONE, 0, 12, |d| {
                d[..4].copy_from_slice(&count.to_le_bytes());
                d[4..8].copy_from_slice(&resent.to_le_bytes());
                d[8..12].copy_from_slice(&asked_again.to_le_bytes());
            })
        },
        |m| {
            let ok = m[0] == DONE_ACK && m.len() >= 28;
            Ok(ok.then(|| {
                (
                    u32_at(m, 8),
                    u32_at(m, 12),
                    u32_at(m, 16),
                    u64::from_le_bytes(m[20..28].try_into().unwrap()),
                )
            }))
        },
    )?;
    let (host_datagrams, host_bad, host_dups, host_bytes) = host;
    println!(
        "AGENT: net-bulk seed={:#x} bytes={} datagrams={} chunk={CHUNK} window={} \
         tx_ms={} tx_mib_s={} tx_resent={resent} rx_ms={} rx_mib_s={} rx_asked_again={} \
         rx_duplicates={} host_datagrams={host_datagrams} host_bytes={host_bytes} \
         host_bad={host_bad} host_duplicates={host_dups} arp_answered={} nic_rx_frames={} \
         nic_tx_frames={} (tsc {} kHz, {:?})",
        b.seed,
        b.bytes,
        b.count,
        b.window,
        clock.micros(t_up) / 1000,
        Rate(clock.mib_per_s_x100(b.bytes, t_up)),
        clock.micros(t_down) / 1000,
        Rate(clock.mib_per_s_x100(b.bytes, t_down)),
        down.asked_again,
        down.duplicates,
        link.stats.arp_answered,
        link.nic.stats.rx_frames,
        link.nic.stats.tx_frames,
        clock.khz,
        clock.source
    );
    ensure!(
        host_datagrams == b.count && host_bytes == b.bytes && host_bad == 0,
        "the host got {host_datagrams} of {} datagrams ({host_bytes} of {} bytes), \
         {host_bad} bad",
        b.count,
        b.bytes
    );
    link.nic.close()
}

// ---- a guest that stops taking buffers --------------------------------------

/// `net-stall[:N]`: the receive queue runs dry under a flood, then works
/// again once refilled.
pub fn net_stall(ctx: &Context) -> CheckResult {
    let port = host_port(ctx)?;
    let stall_ms = option(ctx, "agent.net_stall_ms", 3_000, 500..=60_000)?;
    // The host floods for two thirds of the stall; the rest is quiet.
    let flood_ms = (stall_ms * 2 / 3) as u32;
    let mut link = Link::open(ctx)?;
    let clock = link.nic.clock;
    link.resolve(ARP_TIMEOUT_MS)?;
    let rtt_before = us(&clock, ping(&mut link, 1, 56, PING_TIMEOUT_MS)?);

    let id = (time::now() as u32) | 1;
    ask(
        &mut link,
        port,
        "STALL",
        |link| {
            send_msg(link, port, STALL, id, 6, |d| {
                d[..4].copy_from_slice(&flood_ms.to_le_bytes());
                d[4..6].copy_from_slice(&FLOOD_PORT.to_le_bytes());
            })
        },
        |m| Ok((m[0] == STALL_ACK && u32_at(m, 4) == id).then_some(())),
    )?;

    // Stop refilling: frames still arrive in the buffers already posted,
    // and are taken but their buffers kept, until none is left.
    link.nic.set_refill(false)?;
    let rx_before = link.nic.stats.rx_frames;
    let t0 = time::now();
    let mut dry_after = None;
    let end = clock.deadline(stall_ms);
    while !end.passed() {
        match link.nic.recv()? {
            Some(rx) => link.nic.release(rx)?,
            None => core::hint::spin_loop(),
        }
        if dry_after.is_none() && link.nic.parked() == QUEUE_SIZE {
            dry_after = Some(time::now() - t0);
        }
    }
    let used = link.nic.parked();
    let taken = link.nic.stats.rx_frames - rx_before;

    // Refill, and the link must work again: the backlog drains and a
    // fresh echo gets its reply.
    let posted = link.nic.set_refill(true)?;
    let rx_resumed = link.nic.stats.rx_frames;
    let t1 = time::now();
    let rtt_after = ping(&mut link, 2, 56, 5_000);
    let resume_us = us(&clock, time::now() - t1);
    let after = link.nic.stats.rx_frames - rx_resumed;
    println!(
        "AGENT: net-stall stall_ms={stall_ms} flood_ms={flood_ms} buffers={QUEUE_SIZE} \
         used_during_stall={used} frames_during_stall={taken} dry_after_ms={} refilled={posted} \
         frames_after_refill={after} ping_before_us={rtt_before} ping_after_us={} \
         resume_us={resume_us} nic_rx_frames={} nic_tx_frames={}",
        dry_after.map_or(-1, |t| (clock.micros(t) / 1000) as i64),
        rtt_after.as_ref().map_or(-1, |&t| clock.micros(t) as i64),
        link.nic.stats.rx_frames,
        link.nic.stats.tx_frames
    );
    rtt_after?;
    ensure!(
        used == QUEUE_SIZE,
        "the flood used only {used} of {QUEUE_SIZE} receive buffers: the device never ran dry"
    );
    link.nic.close()
}
