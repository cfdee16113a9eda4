//! virtio-blk checks through the third-party virtio-drivers block driver.
//!
//! - `blk-rw[:N]`: writes a pattern over every sector of disk N (default
//!   0) in large requests, several in flight, reads it all back and
//!   compares; prints capacity and throughput.
//! - `blk-flush[:N]`: writes the pattern to sectors 16..80, FLUSHes and
//!   prints the seed so the host can find the bytes in the image file;
//!   with `agent.flush_wait` it then waits for a byte on the console
//!   (the host checks the file while the VM still runs), then reads back.
//! - `blk-ro[:N]`: the disk advertises RO, a write fails with an I/O error
//!   and changes nothing, the whole disk reads; prints a hash of the whole
//!   disk the host can compare with the image file.
//! - `blk-id[:N]`: GET_ID returns the N-th name of `agent.blk_id=A,B,...`.
//!
//! Options: `agent.seed=N` (pattern seed; default: from the TSC, so every
//! run writes different data), `agent.blk_req=SIZE` (bytes per request,
//! default 256K), `agent.blk_qd=N` (requests in flight, 1-4, default 4).
//!
//! The pattern (the host side recomputes it): the little-endian u64 word
//! `w` (0..64) of sector `s` is `splitmix64(seed ^ (s * 64 + w))`.
//! The disk hash: the wrapping sum over all sectors `s` of
//! `fnv1a64(s as u64 little endian ++ the sector's 512 bytes)`.

use core::hint::spin_loop;

use virtio_drivers::device::blk::{BlkReq, BlkResp, SECTOR_SIZE};
use virtio_drivers::Error;

use crate::checks::{CheckResult, Fail};
use crate::tests::Context;
use crate::time::{self, Clock};
use crate::virtio::{self, feature, Disk};
use crate::{cmdline, ensure, fail, print, println, serial};

/// The room for request buffers: `agent.blk_qd` x `agent.blk_req` must fit.
const IO_BUF_SIZE: usize = 1 << 20;
/// At most this many requests in flight (3 descriptors each in
/// virtio-drivers' 16-entry queue) unless the device offers indirect
/// descriptors (one each): `blk-bench` uses up to [`BENCH_QD`].
const MAX_QD: usize = 16;
/// The default and the limit for `agent.blk_qd` (without indirect
/// descriptors five 3-descriptor chains fit in the queue).
const DEFAULT_QD: usize = 4;
/// A request that takes longer than this counts as lost.
const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Where `blk-flush` writes.
pub const FLUSH_FIRST: u64 = 16;
pub const FLUSH_SECTORS: u64 = 64;
/// How long `blk-flush` waits for the host with `agent.flush_wait`.
const FLUSH_WAIT_MS: u64 = 60_000;

#[repr(C, align(4096))]
struct IoBuf([u8; IO_BUF_SIZE]);
/// Request buffers, in .bss. Only [`transfer`] uses it, one slot per
/// request in flight.
static mut IO_BUF: IoBuf = IoBuf([0; IO_BUF_SIZE]);

/// splitmix64's output function.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Word `w` of sector `s` of the pattern.
pub fn pattern(seed: u64, sector: u64, word: u64) -> u64 {
    splitmix64(seed ^ (sector.wrapping_mul(64) + word))
}

/// Fills `buf` (whole sectors from `first`) with the pattern.
fn fill(seed: u64, first: u64, buf: &mut [u8]) {
    for (i, sector) in buf.chunks_exact_mut(SECTOR_SIZE).enumerate() {
        let s = first + i as u64;
        for (w, word) in sector.chunks_exact_mut(8).enumerate() {
            word.copy_from_slice(&pattern(seed, s, w as u64).to_le_bytes());
        }
    }
}

/// Checks that `buf` (whole sectors from `first`) holds the pattern.
fn verify(seed: u64, first: u64, buf: &[u8]) -> CheckResult {
    for (i, sector) in buf.chunks_exact(SECTOR_SIZE).enumerate() {
        let s = first + i as u64;
        for (w, word) in sector.chunks_exact(8).enumerate() {
            let got = u64::from_le_bytes(word.try_into().unwrap());
            let want = pattern(seed, s, w as u64);
            ensure!(
                got == want,
                "sector {s} word {w}: read {got:#018x}, wrote {want:#018x}"
            );
        }
    }
    Ok(())
}

/// FNV-1a, 64 bits, continued from `h`.
fn fnv1a64(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// One sector's share of the disk hash (see the module documentation).
fn sector_hash(sector: u64, data: &[u8]) -> u64 {
    fnv1a64(fnv1a64(FNV_OFFSET, &sector.to_le_bytes()), data)
}

/// The pattern seed: `agent.seed=N`, else from the TSC.
pub fn seed(ctx: &Context) -> u64 {
    cmdline::get(ctx.cmdline, "agent.seed")
        .and_then(cmdline::number)
        .unwrap_or_else(|| splitmix64(time::now()))
}

/// Request size and depth: `agent.blk_req`, `agent.blk_qd`.
fn request_shape(ctx: &Context) -> Result<(usize, usize), Fail> {
    let size = cmdline::get(ctx.cmdline, "agent.blk_req")
        .map_or(Some(256 << 10), cmdline::size)
        .unwrap_or(0) as usize;
    let qd = cmdline::get(ctx.cmdline, "agent.blk_qd")
        .map_or(Some(DEFAULT_QD as u64), cmdline::number)
        .unwrap_or(0) as usize;
    ensure!(
        size >= SECTOR_SIZE && size.is_multiple_of(SECTOR_SIZE) && (1..=DEFAULT_QD).contains(&qd),
        "agent.blk_req must be a multiple of 512, agent.blk_qd 1-{DEFAULT_QD}"
    );
    ensure!(
        size * qd <= IO_BUF_SIZE,
        "agent.blk_req x agent.blk_qd must not exceed {IO_BUF_SIZE} bytes"
    );
    Ok((size, qd))
}

/// Read or write.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Read,
    Write,
}

/// Which sectors a transfer moves.
#[derive(Clone, Copy)]
enum Order {
    /// `count` sectors from `first`, in order.
    Seq(u64, u64),
    /// `requests` requests at random request-aligned places below
    /// sector `span` (a seeded sequence).
    Random { span: u64, requests: u64, seed: u64 },
}

/// A request in flight.
struct Slot {
    req: BlkReq,
    resp: BlkResp,
    token: Option<u16>,
    sector: u64,
    sectors: usize,
}

/// Moves the sectors `order` names with requests of `req_size` bytes,
/// `qd` in flight. For writes `produce(sector, buf)` fills each buffer
/// first; for reads `consume(sector, buf)` sees each buffer when its
/// request completes (not necessarily in order). Returns the TSC ticks
/// it took. After a failure requests may still be in flight: the caller
/// drops the [`Disk`], which resets the device.
fn transfer(
    disk: &mut Disk,
    clock: &Clock,
    dir: Dir,
    order: Order,
    (req_size, qd): (usize, usize),
    mut produce: impl FnMut(u64, &mut [u8]),
    mut consume: impl FnMut(u64, &[u8]) -> CheckResult,
) -> Result<u64, Fail> {
    let base = core::ptr::addr_of_mut!(IO_BUF) as *mut u8;
    let buffer = |slot: usize, sectors: usize| {
        // SAFETY: slot < qd and qd * req_size <= IO_BUF_SIZE (checked by
        // request_shape), so every slot has its own part of IO_BUF; the
        // agent has one thread and only this function uses IO_BUF.
        unsafe { core::slice::from_raw_parts_mut(base.add(slot * req_size), sectors * SECTOR_SIZE) }
    };
    let mut slots: [Slot; MAX_QD] = core::array::from_fn(|_| Slot {
        req: BlkReq::default(),
        resp: BlkResp::default(),
        token: None,
        sector: 0,
        sectors: 0,
    });
    let per_req = (req_size / SECTOR_SIZE) as u64;
    // The next request: (sector, sectors), or None when all are out.
    let mut issued = 0;
    let mut next_request = move || -> Option<(u64, usize)> {
        let r = match order {
            Order::Seq(first, count) => {
                let next = first + issued * per_req;
                (next < first + count).then(|| (next, per_req.min(first + count - next)))
            }
            Order::Random {
                span,
                requests,
                seed,
            } => (issued < requests).then(|| {
                let slots = (span / per_req).max(1);
                (splitmix64(seed ^ issued) % slots * per_req, per_req)
            }),
        };
        issued += 1;
        r.map(|(s, n)| (s, n as usize))
    };
    let mut pending = next_request();
    let t0 = time::now();
    loop {
        // Keep the queue full.
        for (i, slot) in slots[..qd].iter_mut().enumerate() {
            if slot.token.is_some() {
                continue;
            }
            let Some((next, n)) = pending else {
                break;
            };
            let buf = buffer(i, n);
            // SAFETY: buf, req and resp stay in place and untouched until
            // the request completes below or the device is reset.
            let token = unsafe {
                match dir {
                    Dir::Write => {
                        produce(next, buf);
                        disk.blk
                            .write_blocks_nb(next as usize, &mut slot.req, buf, &mut slot.resp)
                    }
                    Dir::Read => {
                        disk.blk
                            .read_blocks_nb(next as usize, &mut slot.req, buf, &mut slot.resp)
                    }
                }
            };
            match token {
                Ok(t) => slot.token = Some(t),
                Err(e) => fail!("submitting sector {next} (+{n}): {e}"),
            }
            (slot.sector, slot.sectors) = (next, n);
            pending = next_request();
        }
        if slots.iter().all(|s| s.token.is_none()) {
            return Ok(time::now() - t0);
        }
        // Wait for any of them.
        let deadline = clock.deadline(REQUEST_TIMEOUT_MS);
        let token = loop {
            if let Some(t) = disk.blk.peek_used() {
                break t;
            }
            if deadline.passed() {
                fail!(
                    "no answer within {REQUEST_TIMEOUT_MS} ms (device status {:#x})",
                    disk.status()
                );
            }
            spin_loop();
        };
        let Some(i) = slots.iter().position(|s| s.token == Some(token)) else {
            fail!("the device returned unknown descriptor chain {token}");
        };
        let slot = &mut slots[i];
        let buf = buffer(i, slot.sectors);
        // SAFETY: the same buffers that were submitted with this token.
        let done = unsafe {
            match dir {
                Dir::Write => disk
                    .blk
                    .complete_write_blocks(token, &slot.req, buf, &mut slot.resp),
                Dir::Read => disk
                    .blk
                    .complete_read_blocks(token, &slot.req, buf, &mut slot.resp),
            }
        };
        slot.token = None;
        let what = if dir == Dir::Write { "write" } else { "read" };
        if let Err(e) = done {
            fail!(
                "{what} of sectors {}+{}: {e} ({:?})",
                slot.sector,
                slot.sectors,
                slot.resp.status()
            );
        }
        if dir == Dir::Read {
            consume(slot.sector, buf)?;
        }
    }
}

/// MiB/s with two decimals.
struct Rate(u64);
impl core::fmt::Display for Rate {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

/// `blk-rw[:N]`: the pattern over the whole disk, written and read back.
pub fn blk_rw(ctx: &Context) -> CheckResult {
    let clock = Clock::new(ctx.cmdline);
    let (req_size, qd) = request_shape(ctx)?;
    let mut disk = virtio::open_disk(ctx)?;
    ensure!(!disk.blk.readonly(), "disk {} is read-only", disk.index);
    let cap = disk.blk.capacity();
    ensure!(cap > 0, "disk {} has no sectors", disk.index);
    let seed = seed(ctx);
    let shape = (req_size, qd);
    let write = transfer(
        &mut disk,
        &clock,
        Dir::Write,
        Order::Seq(0, cap),
        shape,
        |s, buf| fill(seed, s, buf),
        |_, _| Ok(()),
    )?;
    let read = transfer(
        &mut disk,
        &clock,
        Dir::Read,
        Order::Seq(0, cap),
        shape,
        |_, _| {},
        |s, buf| verify(seed, s, buf),
    )?;
    let bytes = cap * SECTOR_SIZE as u64;
    println!(
        "AGENT: blk-rw disk={} sectors={cap} bytes={bytes} seed={seed:#x} req={req_size} qd={qd} \
         write_ms={} read_ms={} write_mib_s={} read_mib_s={} (tsc {} kHz, {:?})",
        disk.index,
        clock.micros(write) / 1000,
        clock.micros(read) / 1000,
        Rate(clock.mib_per_s_x100(bytes, write)),
        Rate(clock.mib_per_s_x100(bytes, read)),
        clock.khz,
        clock.source
    );
    disk.close(&clock)
}

/// `blk-flush[:N]`: a pattern, a FLUSH, and a line for the host.
pub fn blk_flush(ctx: &Context) -> CheckResult {
    let clock = Clock::new(ctx.cmdline);
    let mut disk = virtio::open_disk(ctx)?;
    ensure!(
        disk.offered & feature::BLK_FLUSH != 0,
        "disk {} does not offer VIRTIO_BLK_F_FLUSH (features {:#x})",
        disk.index,
        disk.offered
    );
    ensure!(
        disk.blk.capacity() >= FLUSH_FIRST + FLUSH_SECTORS,
        "disk {} is too small ({} sectors)",
        disk.index,
        disk.blk.capacity()
    );
    let seed = seed(ctx);
    let range = Order::Seq(FLUSH_FIRST, FLUSH_SECTORS);
    let shape = (FLUSH_SECTORS as usize * SECTOR_SIZE, 1);
    transfer(
        &mut disk,
        &clock,
        Dir::Write,
        range,
        shape,
        |s, buf| fill(seed, s, buf),
        |_, _| Ok(()),
    )?;
    let t0 = time::now();
    if let Err(e) = disk.blk.flush() {
        fail!("FLUSH: {e}");
    }
    println!(
        "AGENT: blk-flush disk={} first={FLUSH_FIRST} sectors={FLUSH_SECTORS} seed={seed:#x} \
         flushed in {} us",
        disk.index,
        clock.micros(time::now() - t0)
    );
    if cmdline::get(ctx.cmdline, "agent.flush_wait").is_some() {
        println!("AGENT: blk-flush waiting for a byte on the console");
        ensure!(
            serial::read_byte(clock.deadline(FLUSH_WAIT_MS)).is_some(),
            "nothing arrived on the console within {FLUSH_WAIT_MS} ms"
        );
    }
    transfer(
        &mut disk,
        &clock,
        Dir::Read,
        range,
        shape,
        |_, _| {},
        |s, buf| verify(seed, s, buf),
    )?;
    disk.close(&clock)
}

/// `blk-ro[:N]`: a read-only disk refuses writes and reads fine.
pub fn blk_ro(ctx: &Context) -> CheckResult {
    let clock = Clock::new(ctx.cmdline);
    let shape = request_shape(ctx)?;
    let mut disk = virtio::open_disk(ctx)?;
    ensure!(
        disk.offered & feature::BLK_RO != 0 && disk.blk.readonly(),
        "disk {} does not advertise VIRTIO_BLK_F_RO (features {:#x})",
        disk.index,
        disk.offered
    );
    let cap = disk.blk.capacity();
    ensure!(cap > 0, "disk {} has no sectors", disk.index);

    // A write of different data to sector 0 must fail and change nothing.
    let mut before = [0u8; SECTOR_SIZE];
    if let Err(e) = disk.blk.read_blocks(0, &mut before) {
        fail!("read of sector 0: {e}");
    }
    let mut other = before;
    other.iter_mut().for_each(|b| *b = !*b);
    match disk.blk.write_blocks(0, &other) {
        Err(Error::IoError) => {}
        Ok(()) => fail!("a write to the read-only disk succeeded"),
        Err(e) => fail!("a write to the read-only disk failed with {e:?}, not IoError"),
    }
    let mut after = [0u8; SECTOR_SIZE];
    if let Err(e) = disk.blk.read_blocks(0, &mut after) {
        fail!("read of sector 0 after the refused write: {e}");
    }
    ensure!(before == after, "sector 0 changed after the refused write");

    // The whole disk reads; its hash goes to the host.
    let mut hash = 0u64;
    let ticks = transfer(
        &mut disk,
        &clock,
        Dir::Read,
        Order::Seq(0, cap),
        shape,
        |_, _| {},
        |s, buf| {
            for (i, sector) in buf.chunks_exact(SECTOR_SIZE).enumerate() {
                hash = hash.wrapping_add(sector_hash(s + i as u64, sector));
            }
            Ok(())
        },
    )?;
    println!(
        "AGENT: blk-ro disk={} sectors={cap} hash={hash:#018x} read_mib_s={}",
        disk.index,
        Rate(clock.mib_per_s_x100(cap * SECTOR_SIZE as u64, ticks))
    );
    disk.close(&clock)
}

/// `blk-id[:N]`: GET_ID against `agent.blk_id=A,B,...` (entry N).
pub fn blk_id(ctx: &Context) -> CheckResult {
    let index = virtio::disk_index(ctx)?;
    let Some(expected) =
        cmdline::get(ctx.cmdline, "agent.blk_id").and_then(|ids| ids.split(',').nth(index))
    else {
        fail!("no expected ID: give agent.blk_id=ID0,ID1,... (entry {index})");
    };
    let mut disk = virtio::open_disk(ctx)?;
    let mut id = [0u8; 20];
    let len = match disk.blk.device_id(&mut id) {
        Ok(len) => len,
        Err(e) => fail!("GET_ID: {e}"),
    };
    let got = core::str::from_utf8(&id[..len]).unwrap_or("<not UTF-8>");
    println!("AGENT: blk-id disk={index} id={got:?}");
    ensure!(
        id[..len] == *expected.as_bytes(),
        "GET_ID returned {got:?}, expected {expected:?}"
    );
    disk.close(&Clock::new(ctx.cmdline))
}

/// `blk-bench[:N]`, for resources/bench.sh: sequential write and read of
/// the whole disk (256 KiB requests, 4 in flight) in MiB/s, then
/// `agent.bench_requests` (default 2000) 4 KiB requests at random places,
/// reads and writes, one in flight and 16 in flight (4 when the device
/// offers no indirect descriptors), in requests per second. Writes the
/// disk; checks nothing but that every request succeeds.
pub fn blk_bench(ctx: &Context) -> CheckResult {
    let clock = Clock::new(ctx.cmdline);
    let mut disk = virtio::open_disk(ctx)?;
    ensure!(!disk.blk.readonly(), "disk {} is read-only", disk.index);
    let cap = disk.blk.capacity();
    ensure!(cap >= 8, "disk {} is too small ({cap} sectors)", disk.index);
    let seed = seed(ctx);
    let requests = cmdline::get(ctx.cmdline, "agent.bench_requests")
        .and_then(cmdline::number)
        .unwrap_or(2000);
    let deep = if disk.offered & feature::RING_INDIRECT_DESC != 0 {
        MAX_QD
    } else {
        DEFAULT_QD
    };
    let random = Order::Random {
        span: cap,
        requests,
        seed,
    };
    let runs = [
        (
            "seq_write_mib_s",
            Dir::Write,
            Order::Seq(0, cap),
            (256 << 10, 4),
        ),
        (
            "seq_read_mib_s",
            Dir::Read,
            Order::Seq(0, cap),
            (256 << 10, 4),
        ),
        ("randread_qd1_iops", Dir::Read, random, (4096, 1)),
        ("randwrite_qd1_iops", Dir::Write, random, (4096, 1)),
        ("randread_deep_iops", Dir::Read, random, (4096, deep)),
        ("randwrite_deep_iops", Dir::Write, random, (4096, deep)),
    ];
    print!(
        "AGENT: blk-bench disk={} sectors={cap} deep_qd={deep}",
        disk.index
    );
    for (name, dir, order, shape) in runs {
        let ticks = transfer(
            &mut disk,
            &clock,
            dir,
            order,
            shape,
            |s, buf| fill(seed, s, buf),
            |_, _| Ok(()),
        )?;
        if let Order::Seq(_, count) = order {
            let bytes = count * SECTOR_SIZE as u64;
            print!(" {name}={}", Rate(clock.mib_per_s_x100(bytes, ticks)));
        } else {
            let us = clock.micros(ticks).max(1);
            print!(" {name}={}", requests * 1_000_000 / us);
        }
    }
    println!();
    disk.close(&clock)
}
