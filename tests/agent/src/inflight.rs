//! `blk-inflight[:N]`: a write that is in flight across a snapshot. With
//! the hand-driven queue of src/hostile.rs it
//!
//! 1. writes sectors 0-7 (notified; served at once: used index 1), then
//!    gives the device 200 ms to finish with the queue;
//! 2. makes a write of sectors 8-15 available WITHOUT notifying the
//!    device, prints `AGENT: blk-inflight waiting`, and spins on the used
//!    ring (no VM exits but a device-status look every 100 ms) for up to
//!    `agent.inflight_ms` (default 120 s).
//!
//! The host test snapshots the VM while it waits, checks that the image
//! does not hold sectors 8-15 yet, and restores the snapshot in a new
//! kiln, which serves every ready queue once after a restore. The agent
//! then sees the write used exactly once (used index 2, not 3, also
//! 300 ms later), with status OK, reads sectors 0-15 back and compares
//! them with the pattern, and prints
//! `AGENT: blk-inflight served ms=N used_idx=2`.
//!
//! Without a restore nothing serves the write and the check fails after
//! the wait; the device never serving an unnotified buffer by itself is
//! part of what the host test checks.

use crate::checks::CheckResult;
use crate::hostile::{
    self, RawQueue, DATA_LEN, HEADER, NEXT, PAGES, STATUS, S_OK, T_IN, T_OUT, UNTOUCHED, WRITE,
};
use crate::tests::Context;
use crate::time::{self, Clock};
use crate::virtio::reg;
use crate::{blk, cmdline, ensure, fail, println};

/// Our pages: the hostile queue's, plus one for the second write's data.
const OUR_PAGES: usize = PAGES + 1;
/// The in-flight write: its descriptors, header, status byte and data.
const HEAD_B: u16 = 3;
const HEADER_B: usize = HEADER + 0x40;
const STATUS_B: usize = STATUS + 0x10;
const DATA_B: usize = PAGES * 4096;
/// Its first sector (it writes 8).
const SECTOR_B: u64 = 8;
/// How long a notified request may take.
const REQUEST_MS: u64 = 2_000;

/// `blk-inflight[:N]`.
pub fn blk_inflight(ctx: &Context) -> CheckResult {
    hostile::with_raw_queue(ctx, OUR_PAGES, |q, clock| run(ctx, q, clock))
}

/// Submits a notified request built by `hostile::request` at head 0 and
/// expects status OK.
fn request_ok(q: &mut RawQueue, clock: &Clock, type_: u32, sector: u64, what: &str) -> CheckResult {
    // SAFETY: the status byte is in our pages; no request is in flight.
    unsafe { q.ptr::<u8>(STATUS).write_volatile(UNTOUCHED) };
    let flags = if type_ == T_IN { WRITE } else { 0 };
    hostile::request(q, type_, sector, flags);
    q.publish(0);
    q.dev.write(reg::QUEUE_NOTIFY, 0);
    match q.wait_used(clock, REQUEST_MS, 1) {
        Some((0, _)) if q.status_byte() == S_OK => Ok(()),
        Some((id, len)) => fail!(
            "{what}: used id {id} len {len} status {:#04x}",
            q.status_byte()
        ),
        None => fail!("{what}: no answer"),
    }
}

fn run(ctx: &Context, q: &mut RawQueue, clock: &Clock) -> CheckResult {
    q.init(clock)?;
    let cap = u64::from(q.dev.read(reg::CONFIG)) | u64::from(q.dev.read(reg::CONFIG + 4)) << 32;
    ensure!(cap >= 16, "disk too small: {cap} sectors");
    let seed = blk::seed(ctx);
    let wait_ms = cmdline::get(ctx.cmdline, "agent.inflight_ms")
        .and_then(cmdline::number)
        .unwrap_or(120_000);

    // 1. A write served before the snapshot.
    hostile::fill_from(seed, 0, q.data());
    request_ok(q, clock, T_OUT, 0, "the first write")?;
    // A device may look at the avail ring whenever it likes, and kiln's
    // does once more when it finishes a batch: let it finish first.
    let idle = clock.deadline(200);
    while !idle.passed() {
        core::hint::spin_loop();
    }

    // 2. The write left in flight: header, data (its own page), status.
    q.header_at(HEADER_B, T_OUT, SECTOR_B);
    // SAFETY: the second data page and status byte are in our pages; the
    // device does not know of them yet.
    unsafe {
        let data = core::slice::from_raw_parts_mut(q.ptr::<u8>(DATA_B), DATA_LEN as usize);
        hostile::fill_from(seed, SECTOR_B, data);
        q.ptr::<u8>(STATUS_B).write_volatile(UNTOUCHED);
    }
    q.desc(HEAD_B, q.addr(HEADER_B), 16, NEXT, HEAD_B + 1);
    q.desc(HEAD_B + 1, q.addr(DATA_B), DATA_LEN, NEXT, HEAD_B + 2);
    q.desc(HEAD_B + 2, q.addr(STATUS_B), 1, WRITE, 0);
    q.publish(HEAD_B);
    println!("AGENT: blk-inflight waiting seed={seed:#x} sectors={SECTOR_B}-15");
    let start = time::now();
    let Some((id, _)) = q.wait_used(clock, wait_ms, 100) else {
        fail!(
            "the write made available without a notification was not served within {wait_ms} ms \
             (used index {})",
            q.used_idx_now()
        );
    };
    let ms = clock.micros(time::now().wrapping_sub(start)) / 1000;
    ensure!(
        id == u32::from(HEAD_B),
        "the device used id {id}, not the in-flight chain {HEAD_B}"
    );
    // SAFETY: the device has used the chain.
    let st = unsafe { q.ptr::<u8>(STATUS_B).read_volatile() };
    ensure!(st == S_OK, "the in-flight write got status {st:#04x}");
    // Exactly once: nothing else shows up in the used ring.
    let settle = clock.deadline(300);
    while !settle.passed() {
        core::hint::spin_loop();
    }
    let now = q.used_idx_now();
    ensure!(
        now == 2,
        "the used index is {now} after two requests: a request was lost or served twice"
    );
    println!("AGENT: blk-inflight served ms={ms} used_idx={now}");

    // 3. Both writes are on the disk.
    for first in [0, SECTOR_B] {
        q.data().fill(0);
        request_ok(q, clock, T_IN, first, "reading back")?;
        if let Err(e) = hostile::check_data_from(seed, first, q.data()) {
            fail!("sectors {first}-{}: {}", first + 7, e.as_str());
        }
    }
    Ok(())
}
