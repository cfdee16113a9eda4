//! `blk-hostile[:N]`: a guest that misbehaves on purpose. It bypasses
//! virtio-drivers and drives disk N's request queue by hand (its own
//! descriptor table and avail/used rings in the DMA pool), submits broken
//! descriptor chains one at a time, reports what the device answered for
//! each, and finally proves the device still serves a normal read.
//!
//! Each case prints
//!
//! ```text
//! AGENT: blk-hostile CASE: used id 0 len L status S (last data byte B) -> ok
//! AGENT: blk-hostile CASE: no answer (device status 0x..) -> BAD
//! ```
//!
//! where S is the status byte the device wrote (0 OK, 1 IOERR, 2 UNSUPP;
//! 0xff: the device did not write it). A case passes when the device
//! answers (puts the chain in the used ring) without asking for a reset,
//! and: for a chain with a usable status byte, the status is an error; for
//! one without any device-writable byte, nothing is written and the used
//! length is 0; for a loop, either; for a chain whose status descriptor is
//! unusable (device-readable, empty) or unreachable (past a bad `next`),
//! also an error status in the last byte of the data buffer, the last
//! device-writable byte the device could use (the spec defines the status
//! as the last byte of the device-writable part). A case without an answer within 2 s, or after
//! which the device sets DEVICE_NEEDS_RESET, fails the check; the device
//! is then reset and re-initialised so that the remaining cases still run.
//! The disk must be writable: sectors 0-7 are written (and read back at
//! the end); hostile writes aim at sectors 8-15.

use core::ptr::NonNull;
use core::sync::atomic::{fence, Ordering};

use crate::checks::{CheckResult, Fail};
use crate::hal;
use crate::tests::Context;
use crate::time::{self, Clock};
use crate::virtio::{self, feature, reg, status, Device, DEVICE_ID_BLOCK};
use crate::{blk, cmdline, ensure, fail, println};

/// The queue size we configure.
pub const QSIZE: u16 = 16;
/// How long a case may take.
const TIMEOUT_MS: u64 = 2_000;
/// Descriptor flags.
pub const NEXT: u16 = 1;
pub const WRITE: u16 = 2;
/// virtio-blk request types and statuses.
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
/// Where hostile writes go (sectors 8-15), so that one the device
/// wrongly carries out does not spoil the final read of sectors 0-7.
const SCRATCH: u64 = 8;
/// What the status byte holds before the device answers.
pub const UNTOUCHED: u8 = 0xff;
/// Addresses no guest has RAM at: far above any RAM, and in the 32-bit
/// MMIO hole (3-4 GiB, no RAM on kiln, Firecracker or QEMU microvm).
const OUTSIDE_RAM: u64 = 0x7fff_0000_0000;
const IN_MMIO_HOLE: u64 = 0xc000_1000;

/// The pool pages: descriptor table, avail ring, used ring, request
/// header and status, data (8 sectors).
pub const PAGES: usize = 5;
const DESC: usize = 0x0000;
const AVAIL: usize = 0x1000;
const USED: usize = 0x2000;
pub const HEADER: usize = 0x3000;
pub const STATUS: usize = 0x3100;
pub const DATA: usize = 0x4000;
pub const DATA_LEN: u32 = 4096;
pub const DATA_SECTORS: u64 = 8;

/// What a case must get.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A well-formed request: status OK.
    Ok,
    /// An error status (IOERR or UNSUPP) in the status byte.
    Error,
    /// No usable status byte: the status stays untouched, used length 0.
    Nothing,
    /// Either of the two above (a loop).
    ErrorOrNothing,
    /// As ErrorOrNothing, but the error status may also be in the last
    /// byte of the data buffer: the chain's last usable device-writable
    /// descriptor, and the spec defines the status as the last byte of the
    /// device-writable part (chains whose status descriptor is unusable or
    /// unreachable).
    ErrorInLastWritableOrNothing,
}

/// A virtqueue driven by hand (also used by src/inflight.rs): its rings
/// in the first three of `mem`'s pages, at least [`PAGES`] of them.
pub struct RawQueue {
    pub dev: Device,
    pub mem: NonNull<u8>,
    pub avail_idx: u16,
    pub used_idx: u16,
}

impl RawQueue {
    /// The physical (= virtual) address of an offset in our pages.
    pub fn addr(&self, offset: usize) -> u64 {
        self.mem.as_ptr() as u64 + offset as u64
    }

    pub fn ptr<T>(&self, offset: usize) -> *mut T {
        // SAFETY: callers pass offsets inside the pages they allocated.
        unsafe { self.mem.as_ptr().add(offset) as *mut T }
    }

    /// Writes descriptor `i` (any index below 256: the table has room).
    pub fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        assert!(i < 256);
        let d = self.ptr::<u8>(DESC + 16 * usize::from(i));
        // SAFETY: inside the descriptor table page; volatile because the
        // device reads it.
        unsafe {
            (d as *mut u64).write_volatile(addr);
            (d.add(8) as *mut u32).write_volatile(len);
            (d.add(12) as *mut u16).write_volatile(flags);
            (d.add(14) as *mut u16).write_volatile(next);
        }
    }

    /// Writes the request header (type, reserved, sector).
    fn header(&self, type_: u32, sector: u64) {
        self.header_at(HEADER, type_, sector);
    }

    /// Writes a request header at `offset`.
    pub fn header_at(&self, offset: usize, type_: u32, sector: u64) {
        // SAFETY: the header lives in our pages.
        unsafe {
            self.ptr::<u32>(offset).write_volatile(type_);
            self.ptr::<u32>(offset + 4).write_volatile(0);
            self.ptr::<u64>(offset + 8).write_volatile(sector);
        }
    }

    pub fn status_byte(&self) -> u8 {
        // SAFETY: in our pages; the device may have written it.
        unsafe { self.ptr::<u8>(STATUS).read_volatile() }
    }

    pub fn data(&mut self) -> &mut [u8] {
        // SAFETY: the data page is ours; the device is not using it while
        // no request is in flight, which is when callers look.
        unsafe { core::slice::from_raw_parts_mut(self.ptr::<u8>(DATA), DATA_LEN as usize) }
    }

    /// Resets the device and sets up queue 0 with our rings (virtio 1.2,
    /// 3.1.1 and 4.2.3.2).
    pub fn init(&mut self, clock: &Clock) -> CheckResult {
        let dev = self.dev;
        dev.write(reg::STATUS, 0);
        let deadline = clock.deadline(TIMEOUT_MS);
        while dev.read(reg::STATUS) != 0 {
            ensure!(!deadline.passed(), "the device does not finish its reset");
            core::hint::spin_loop();
        }
        // SAFETY: the three ring pages are ours and the device is reset.
        unsafe { self.mem.as_ptr().write_bytes(0, 3 * 4096) };
        (self.avail_idx, self.used_idx) = (0, 0);
        dev.write(reg::STATUS, status::ACKNOWLEDGE);
        dev.write(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        let offered = dev.device_features();
        ensure!(
            offered & feature::VERSION_1 != 0,
            "the device does not offer VERSION_1 (legacy virtio-mmio is not supported here)"
        );
        dev.write(reg::DRIVER_FEATURES_SEL, 0);
        dev.write(reg::DRIVER_FEATURES, 0);
        dev.write(reg::DRIVER_FEATURES_SEL, 1);
        dev.write(reg::DRIVER_FEATURES, (feature::VERSION_1 >> 32) as u32);
        let st = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        dev.write(reg::STATUS, st);
        ensure!(
            dev.read(reg::STATUS) & status::FEATURES_OK != 0,
            "the device refused features VERSION_1 alone"
        );
        dev.write(reg::QUEUE_SEL, 0);
        let max = dev.read(reg::QUEUE_NUM_MAX);
        ensure!(max >= u32::from(QSIZE), "queue 0 has only {max} entries");
        dev.write(reg::QUEUE_NUM, u32::from(QSIZE));
        // Each address register pair: low half, then high half 4 bytes on.
        for (low, offset) in [
            (reg::QUEUE_DESC_LOW, DESC),
            (reg::QUEUE_DRIVER_LOW, AVAIL),
            (reg::QUEUE_DEVICE_LOW, USED),
        ] {
            let a = self.addr(offset);
            dev.write(low, a as u32);
            dev.write(low + 4, (a >> 32) as u32);
        }
        // SAFETY: avail.flags in our pages: no interrupts, we poll.
        unsafe { self.ptr::<u16>(AVAIL).write_volatile(1) };
        dev.write(reg::QUEUE_READY, 1);
        dev.write(reg::STATUS, st | status::DRIVER_OK);
        let now = dev.read(reg::STATUS);
        ensure!(
            now & (status::NEEDS_RESET | status::FAILED) == 0,
            "device status {now:#x} after initialisation"
        );
        Ok(())
    }

    /// Makes the chain at `head` available, notifies, and waits for the
    /// device to use it: `Some((id, len))`, or `None` after the timeout or
    /// as soon as the device sets DEVICE_NEEDS_RESET (polled every
    /// millisecond: each look is a VM exit).
    pub fn submit(&mut self, head: u16, clock: &Clock) -> Option<(u32, u32)> {
        self.publish(head);
        self.dev.write(reg::QUEUE_NOTIFY, 0);
        self.wait_used(clock, TIMEOUT_MS, 1)
    }

    /// Makes the chain at `head` available without notifying the device.
    pub fn publish(&mut self, head: u16) {
        let slot = usize::from(self.avail_idx % QSIZE);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // SAFETY: avail ring in our pages (flags, idx, ring[QSIZE]).
        unsafe {
            self.ptr::<u16>(AVAIL + 4 + 2 * slot).write_volatile(head);
            fence(Ordering::SeqCst);
            self.ptr::<u16>(AVAIL + 2).write_volatile(self.avail_idx);
        }
        fence(Ordering::SeqCst);
    }

    /// The used ring's index as the device last wrote it.
    pub fn used_idx_now(&self) -> u16 {
        // SAFETY: used ring in our pages; the device writes it.
        unsafe { self.ptr::<u16>(USED + 2).read_volatile() }
    }

    /// Waits up to `timeout_ms` for the next used element; the device
    /// status is looked at every `status_ms` (each look is a VM exit).
    pub fn wait_used(
        &mut self,
        clock: &Clock,
        timeout_ms: u64,
        status_ms: u64,
    ) -> Option<(u32, u32)> {
        let deadline = clock.deadline(timeout_ms);
        let mut next_look = clock.deadline(status_ms);
        loop {
            if self.used_idx_now() != self.used_idx {
                fence(Ordering::SeqCst);
                // Used ring: flags, idx, ring[QSIZE] of {id: u32, len: u32}.
                let at = USED + 4 + 8 * usize::from(self.used_idx % QSIZE);
                self.used_idx = self.used_idx.wrapping_add(1);
                // SAFETY: as above.
                return unsafe {
                    Some((
                        self.ptr::<u32>(at).read_volatile(),
                        self.ptr::<u32>(at + 4).read_volatile(),
                    ))
                };
            }
            if deadline.passed() {
                return None;
            }
            if next_look.passed() {
                if self.dev.read(reg::STATUS) & status::NEEDS_RESET != 0 {
                    return None;
                }
                next_look = clock.deadline(status_ms);
            }
            core::hint::spin_loop();
        }
    }
}

/// The usual three-descriptor request: header, data, status.
pub fn request(q: &RawQueue, type_: u32, sector: u64, data_flags: u16) {
    q.header(type_, sector);
    q.desc(0, q.addr(HEADER), 16, NEXT, 1);
    q.desc(1, q.addr(DATA), DATA_LEN, data_flags | NEXT, 2);
    q.desc(2, q.addr(STATUS), 1, WRITE, 0);
}

/// The cases: name, expectation, and how to build the chain at head 0.
type Build = fn(&RawQueue, u64);
const CASES: &[(&str, Expect, Build)] = &[
    // Well-formed, to show the hand-made queue works: write sectors 0-7,
    // read them back (the data is compared below).
    ("write", Expect::Ok, |q, _| request(q, T_OUT, 0, 0)),
    ("read", Expect::Ok, |q, _| request(q, T_IN, 0, WRITE)),
    ("buffer-outside-ram", Expect::Error, |q, _| {
        request(q, T_IN, 0, WRITE);
        q.desc(1, OUTSIDE_RAM, DATA_LEN, WRITE | NEXT, 2);
    }),
    ("buffer-in-mmio-hole", Expect::Error, |q, _| {
        request(q, T_IN, 0, WRITE);
        q.desc(1, IN_MMIO_HOLE, DATA_LEN, WRITE | NEXT, 2);
    }),
    ("write-from-outside-ram", Expect::Error, |q, _| {
        request(q, T_OUT, SCRATCH, 0);
        q.desc(1, OUTSIDE_RAM, DATA_LEN, NEXT, 2);
    }),
    ("header-outside-ram", Expect::Error, |q, _| {
        request(q, T_IN, 0, WRITE);
        q.desc(0, OUTSIDE_RAM, 16, NEXT, 1);
    }),
    ("header-device-writable", Expect::Error, |q, _| {
        request(q, T_IN, 0, WRITE);
        q.desc(0, q.addr(HEADER), 16, WRITE | NEXT, 1);
    }),
    ("header-too-short", Expect::Error, |q, _| {
        request(q, T_IN, 0, WRITE);
        q.desc(0, q.addr(HEADER), 8, NEXT, 1);
    }),
    ("read-into-device-readable-buffer", Expect::Error, |q, _| {
        request(q, T_IN, 0, 0)
    }),
    (
        "write-from-device-writable-buffer",
        Expect::Error,
        |q, _| request(q, T_OUT, SCRATCH, WRITE),
    ),
    ("read-beyond-end", Expect::Error, |q, cap| {
        request(q, T_IN, cap.saturating_sub(DATA_SECTORS / 2), WRITE)
    }),
    ("read-at-end", Expect::Error, |q, cap| {
        request(q, T_IN, cap, WRITE)
    }),
    ("sector-overflow", Expect::Error, |q, _| {
        request(q, T_IN, u64::MAX - 3, WRITE)
    }),
    ("unknown-type", Expect::Error, |q, _| {
        request(q, 0x7fff_0000, 0, WRITE)
    }),
    ("descriptor-loop", Expect::ErrorOrNothing, |q, _| {
        request(q, T_IN, 0, WRITE);
        q.desc(2, q.addr(STATUS), 1, WRITE | NEXT, 0);
    }),
    (
        "chain-longer-than-queue",
        Expect::ErrorInLastWritableOrNothing,
        |q, _| {
            // Header, 15 data descriptors, status: 17 > QSIZE descriptors,
            // the last one at index 16, past the end of the table.
            q.header(T_IN, 0);
            q.desc(0, q.addr(HEADER), 16, NEXT, 1);
            for i in 1..QSIZE {
                let piece = u64::from(i % 8) * 512;
                q.desc(i, q.addr(DATA) + piece, 512, WRITE | NEXT, i + 1);
            }
            q.desc(QSIZE, q.addr(STATUS), 1, WRITE, 0);
        },
    ),
    (
        "next-out-of-range",
        Expect::ErrorInLastWritableOrNothing,
        |q, _| {
            request(q, T_IN, 0, WRITE);
            q.desc(1, q.addr(DATA), DATA_LEN, WRITE | NEXT, 0x1234);
        },
    ),
    ("no-status-descriptor", Expect::Nothing, |q, _| {
        q.header(T_OUT, SCRATCH);
        q.desc(0, q.addr(HEADER), 16, 0, 0);
    }),
    (
        "status-device-readable",
        Expect::ErrorInLastWritableOrNothing,
        |q, _| {
            request(q, T_IN, 0, WRITE);
            q.desc(2, q.addr(STATUS), 1, 0, 0);
        },
    ),
    (
        "status-zero-length",
        Expect::ErrorInLastWritableOrNothing,
        |q, _| {
            request(q, T_IN, 0, WRITE);
            q.desc(2, q.addr(STATUS), 0, WRITE, 0);
        },
    ),
];

/// Whether an answer meets the expectation: `status` is the status byte,
/// `last` the last byte of the data buffer.
fn meets(expect: Expect, status: u8, last: u8, len: u32) -> bool {
    let error = |s| s == S_IOERR || s == S_UNSUPP;
    let nothing = status == UNTOUCHED && last == UNTOUCHED && len == 0;
    match expect {
        Expect::Ok => status == S_OK,
        Expect::Error => error(status),
        Expect::Nothing => nothing,
        Expect::ErrorOrNothing => error(status) || nothing,
        Expect::ErrorInLastWritableOrNothing => error(status) || error(last) || nothing,
    }
}

/// `blk-hostile[:N]`.
pub fn blk_hostile(ctx: &Context) -> CheckResult {
    with_raw_queue(ctx, PAGES, |q, clock| run_cases(ctx, q, clock))
}

/// Runs `f` with a hand-driven queue on disk N (the test's argument) over
/// `pages` DMA pages (at least [`PAGES`]), then resets the device (it must
/// not touch the pages any more) and frees them.
pub fn with_raw_queue(
    ctx: &Context,
    pages: usize,
    f: impl FnOnce(&mut RawQueue, &Clock) -> CheckResult,
) -> CheckResult {
    let clock = Clock::new(ctx.cmdline);
    let index = virtio::disk_index(ctx)?;
    let Some(dev) = virtio::discover(ctx.cmdline).nth(DEVICE_ID_BLOCK, index) else {
        fail!("no virtio-blk disk {index}");
    };
    let Some(mem) = hal::alloc_pages(pages) else {
        fail!("the DMA pool is exhausted");
    };
    let mut q = RawQueue {
        dev,
        mem,
        avail_idx: 0,
        used_idx: 0,
    };
    let result = f(&mut q, &clock);
    dev.write(reg::STATUS, 0);
    hal::free_pages(mem.as_ptr() as usize, pages);
    result
}

fn run_cases(ctx: &Context, q: &mut RawQueue, clock: &Clock) -> CheckResult {
    q.init(clock)?;
    // Capacity: the first 8 bytes of the block device's config space.
    let cap = u64::from(q.dev.read(reg::CONFIG)) | u64::from(q.dev.read(reg::CONFIG + 4)) << 32;
    ensure!(cap >= 2 * DATA_SECTORS, "disk too small: {cap} sectors");
    let seed = cmdline::get(ctx.cmdline, "agent.seed")
        .and_then(cmdline::number)
        .unwrap_or_else(|| blk::splitmix64(time::now()));
    println!(
        "AGENT: blk-hostile disk {} at {:#x}: {cap} sectors, queue size {QSIZE}",
        virtio::disk_index(ctx)?,
        q.dev.base
    );

    let mut bad = 0;
    let mut first_bad: Option<&str> = None;
    for &(name, expect, build) in CASES {
        if name == "write" {
            fill(seed, q.data());
        } else {
            q.data().fill(UNTOUCHED);
        }
        // SAFETY: the status byte is in our pages; no request is in flight.
        unsafe { q.ptr::<u8>(STATUS).write_volatile(UNTOUCHED) };
        build(q, cap);
        let answer = q.submit(0, clock);
        let dev_status = q.dev.read(reg::STATUS);
        let mut ok = match answer {
            Some((id, len)) => {
                let s = q.status_byte();
                let last = q.data()[DATA_LEN as usize - 1];
                let fits = meets(expect, s, last, len) && id == 0;
                println!(
                    "AGENT: blk-hostile {name}: used id {id} len {len} status {s:#04x} \
                     (last data byte {last:#04x}) -> {}",
                    if fits { "ok" } else { "BAD" }
                );
                fits
            }
            None => {
                println!(
                    "AGENT: blk-hostile {name}: no answer (device status {dev_status:#x}) -> BAD"
                );
                false
            }
        };
        if name == "read" && ok {
            if let Err(e) = check_data(seed, q.data()) {
                println!("AGENT: blk-hostile read: data differs: {}", e.as_str());
                ok = false;
            }
        }
        if dev_status & status::NEEDS_RESET != 0 {
            println!("AGENT: blk-hostile {name}: the device set DEVICE_NEEDS_RESET -> BAD");
            ok = false;
        }
        if !ok {
            bad += 1;
            first_bad.get_or_insert(name);
            // Start over so that the other cases still say something.
            if answer.is_none() || dev_status & status::NEEDS_RESET != 0 {
                println!("AGENT: blk-hostile: resetting the device");
                q.init(clock)?;
            }
        }
    }

    // The device must still serve an ordinary read of what we wrote.
    q.data().fill(0);
    // SAFETY: as above.
    unsafe { q.ptr::<u8>(STATUS).write_volatile(UNTOUCHED) };
    request(q, T_IN, 0, WRITE);
    match q.submit(0, clock) {
        Some((_, len)) if q.status_byte() == S_OK => {
            if let Err(e) = check_data(seed, q.data()) {
                fail!(
                    "the final read of sectors 0-7 returned other data: {}",
                    e.as_str()
                );
            }
            println!("AGENT: blk-hostile final read: used len {len} status 0 -> ok");
        }
        Some((_, len)) => fail!(
            "the final read got status {:#04x} (used len {len})",
            q.status_byte()
        ),
        None => fail!(
            "the final read got no answer (device status {:#x})",
            q.dev.read(reg::STATUS)
        ),
    }
    ensure!(
        bad == 0,
        "{bad} of {} hostile cases answered wrongly, first {}",
        CASES.len(),
        first_bad.unwrap_or("?")
    );
    Ok(())
}

/// The blk pattern for sectors 0-7.
fn fill(seed: u64, data: &mut [u8]) {
    fill_from(seed, 0, data);
}

/// The blk pattern for the sectors from `first` on.
pub fn fill_from(seed: u64, first: u64, data: &mut [u8]) {
    for (i, word) in data.chunks_exact_mut(8).enumerate() {
        let (s, w) = (first + i as u64 / 64, i as u64 % 64);
        word.copy_from_slice(&blk::pattern(seed, s, w).to_le_bytes());
    }
}

fn check_data(seed: u64, data: &[u8]) -> Result<(), Fail> {
    check_data_from(seed, 0, data)
}

/// Whether `data` holds the blk pattern for the sectors from `first` on.
pub fn check_data_from(seed: u64, first: u64, data: &[u8]) -> Result<(), Fail> {
    for (i, word) in data.chunks_exact(8).enumerate() {
        let (s, w) = (first + i as u64 / 64, i as u64 % 64);
        let got = u64::from_le_bytes(word.try_into().unwrap());
        ensure!(
            got == blk::pattern(seed, s, w),
            "sector {s} word {w}: {got:#x}"
        );
    }
    Ok(())
}
