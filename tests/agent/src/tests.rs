//! The agent's tests. Each entry of [`TESTS`] is one check, selected by
//! name with `agent.test=NAME[,NAME...]`. To add one: write a
//! `fn(&Context) -> CheckResult` below and add it to the table.

use core::hint::black_box;

use crate::checks::CheckResult;
use crate::cmdline::{self, Args};
use crate::io;
use crate::{ensure, fail, println};

/// What a test may look at.
pub struct Context<'a> {
    /// The whole kernel command line (kiln's defaults included).
    pub cmdline: &'a str,
    /// The agent's options parsed from it.
    pub args: Args<'a>,
    /// The test's argument: what follows a colon in its name (`blk-rw:1`).
    pub arg: Option<&'a str>,
}

/// A test: returns Ok or why it failed.
pub type Test = fn(&Context) -> CheckResult;

/// Every test, by name.
pub const TESTS: &[(&str, Test)] = &[
    ("selftest", selftest),
    ("boottime", boottime),
    ("probe", probe),
    ("wait", wait),
    // virtio-blk through virtio-drivers (src/blk.rs) and by hand (src/hostile.rs,
    // src/inflight.rs).
    ("blk-rw", crate::blk::blk_rw),
    ("blk-flush", crate::blk::blk_flush),
    ("blk-ro", crate::blk::blk_ro),
    ("blk-id", crate::blk::blk_id),
    ("blk-bench", crate::blk::blk_bench),
    ("blk-hostile", crate::hostile::blk_hostile),
    ("blk-inflight", crate::inflight::blk_inflight),
    // virtio-net through virtio-drivers, frames by hand (src/netcheck.rs).
    ("net-ping", crate::netcheck::net_ping),
    ("net-bulk", crate::netcheck::net_bulk),
    ("net-stall", crate::netcheck::net_stall),
    // virtio-vsock through virtio-drivers (src/vsock.rs).
    ("vsock-echo", crate::vsock::vsock_echo),
    ("vsock-listen", crate::vsock::vsock_listen),
    ("vsock-refused", crate::vsock::vsock_refused),
    // Interrupt delivery through the IOAPIC and LAPIC (src/irq.rs).
    ("irq", crate::irq::irq),
    // These crash on purpose, to test how the harness handles a dead guest.
    ("fault", fault),
    ("badport", badport),
    ("panic", panic),
];

/// Looks a test up by name (without its `:argument`).
pub fn find(name: &str) -> Option<Test> {
    TESTS.iter().find(|(n, _)| *n == name).map(|&(_, t)| t)
}

// ---- selftest -----------------------------------------------------------

/// Does the agent itself work: command line, 128-bit integers, floating
/// point and SSE at ring 3, a 1 MiB memory pattern, and running at CPL 3
/// with IOPL 0.
fn selftest(ctx: &Context) -> CheckResult {
    // 1. The command line arrived (kiln always passes its defaults) and
    //    the parser does what cmdline.rs says.
    ensure!(
        !ctx.cmdline.is_empty(),
        "cmdline: empty (no PVH start info?)"
    );
    let a =
        cmdline::parse("console=ttyS0 agent.test=x agent.test=a,,b, agent.fail=c -- agent.fail=z");
    ensure!(
        a.tests().eq(["a", "b"]),
        "cmdline: tests parsed as {:?}",
        a.tests
    );
    ensure!(a.fail == Some("c"), "cmdline: fail parsed as {:?}", a.fail);
    ensure!(
        cmdline::parse("quiet").tests().eq(["selftest"]),
        "cmdline: default test list"
    );
    ensure!(
        ctx.args.tests().any(|t| t == "selftest"),
        "cmdline: selftest runs but is not in {:?}",
        ctx.args.tests
    );

    // 2. u128: multiplication inline, division through compiler_builtins.
    //    black_box keeps the compiler from computing it all at build time.
    let m = black_box(u64::MAX as u128);
    let sq = m * m;
    ensure!(
        sq == 0xffff_ffff_ffff_fffe_0000_0000_0000_0001,
        "u128: {m:#x}^2 = {sq:#x}"
    );
    let d = black_box(0x1234_5678_9abc_def0_u128);
    let (q, r) = (sq / d, sq % d);
    ensure!(
        q * d + r == sq && r < d,
        "u128: {sq:#x} / {d:#x} = {q:#x} rem {r:#x}"
    );

    // 3. f64 (the x86-64 ABI does all floating point in SSE registers),
    //    explicit SSE2 instructions, and float formatting.
    let x = black_box(0.1_f64) + black_box(0.2_f64);
    ensure!(
        x != 0.3 && (x - 0.3) < 1e-15 && (x - 0.3) > -1e-15,
        "f64: 0.1+0.2 = {x}"
    );
    ensure!(
        black_box(1.0_f64) / black_box(3.0) * 3.0 == 1.0,
        "f64: 1/3*3 != 1"
    );
    let sse = sse2_dot(black_box([1.5, -2.0]), black_box([4.0, 0.25]));
    ensure!(sse == 5.5, "sse2: [1.5,-2]*[4,0.25] summed = {sse}");
    // (Fail is just a small text buffer, handy for formatting here too.)
    let text = crate::checks::Fail::new(format_args!("{:.3}", black_box(2.0_f64) / 3.0));
    ensure!(
        text.as_str() == "0.667",
        "f64: 2/3 formatted as {}",
        text.as_str()
    );

    // 4. Memory: fill 1 MiB with a pattern, read it back.
    memory_pattern()?;

    // 5. We really are at ring 3, with IOPL 0 (so only the TSS bitmap
    //    decides which ports we reach) and IF=1 (boot.S enters ring 3 so;
    //    every interrupt source stays masked unless the irq check opens one).
    ensure!(io::cpl() == 3, "cpl: running at CPL {}", io::cpl());
    let flags = io::rflags();
    ensure!(
        (flags >> 12) & 3 == 0,
        "rflags: IOPL is {} ({flags:#x})",
        (flags >> 12) & 3
    );
    ensure!(flags & (1 << 9) != 0, "rflags: IF is 0 ({flags:#x})");
    Ok(())
}

/// a[0]*b[0] + a[1]*b[1] with SSE2 packed-double instructions.
fn sse2_dot(a: [f64; 2], b: [f64; 2]) -> f64 {
    use core::arch::x86_64::*;
    // SAFETY: SSE2 is part of the x86-64 baseline (the target enables it),
    // and ring 3 runs SSE natively; boot.S set CR0/CR4 for hardware KVM.
    unsafe {
        let p = _mm_mul_pd(_mm_loadu_pd(a.as_ptr()), _mm_loadu_pd(b.as_ptr()));
        let sum = _mm_add_sd(p, _mm_unpackhi_pd(p, p));
        _mm_cvtsd_f64(sum)
    }
}

/// 1 MiB in .bss (zeroed by kiln: fresh guest RAM), page aligned.
#[repr(C, align(4096))]
struct Buffer([u64; BUFFER_WORDS]);
const BUFFER_WORDS: usize = (1 << 20) / 8;
static mut BUFFER: Buffer = Buffer([0; BUFFER_WORDS]);

fn memory_pattern() -> CheckResult {
    // A pattern where every word differs from its neighbours and from
    // what other offsets hold, so lost or misdirected writes show up.
    let pattern = |i: usize| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5a5a;
    // Volatile accesses: the optimiser must not skip the round trip.
    let base = core::ptr::addr_of_mut!(BUFFER) as *mut u64;
    for i in 0..BUFFER_WORDS {
        // SAFETY: i < BUFFER_WORDS; single-threaded, nobody else uses BUFFER.
        unsafe { base.add(i).write_volatile(pattern(i)) };
    }
    for i in 0..BUFFER_WORDS {
        // SAFETY: as above.
        let got = unsafe { base.add(i).read_volatile() };
        if got != pattern(i) {
            fail!(
                "memory: word {i} at {:#x}: {got:#x} != {:#x}",
                base as usize + i * 8,
                pattern(i)
            );
        }
    }
    Ok(())
}

// ---- boottime -------------------------------------------------------------

/// kiln's (and Firecracker's) boot-timer device: writing 123 to its first
/// byte makes the VMM log the time since it started (`boot-timer:` on
/// kiln's stderr).
const BOOT_TIMER: usize = 0xc000_0000;
const BOOT_TIMER_MAGIC: u8 = 123;

fn boottime(_: &Context) -> CheckResult {
    // SAFETY: the boot timer is an MMIO device in the identity map.
    unsafe { io::mmio_write8(BOOT_TIMER, BOOT_TIMER_MAGIC) };
    Ok(())
}

// ---- wait -----------------------------------------------------------------

/// `wait`: prints `AGENT: wait for a byte on the console` and passes when
/// one arrives (within `agent.wait_ms`, default 600 s). The benchmarks use
/// it to look at a running VMM from outside (its memory, a snapshot) and
/// to time a restored guest's first answer.
fn wait(ctx: &Context) -> CheckResult {
    let ms = cmdline::get(ctx.cmdline, "agent.wait_ms")
        .and_then(cmdline::number)
        .unwrap_or(600_000);
    let clock = crate::time::Clock::new(ctx.cmdline);
    println!("AGENT: wait for a byte on the console");
    ensure!(
        crate::serial::read_byte(clock.deadline(ms)).is_some(),
        "nothing arrived on the console within {ms} ms"
    );
    Ok(())
}

// ---- probe ----------------------------------------------------------------

/// Lists the virtio-mmio devices (src/virtio.rs says where it looks).
/// Finding none is fine. Transports with device ID 0 are empty slots (QEMU
/// microvm always has some) and are only counted.
fn probe(ctx: &Context) -> CheckResult {
    let devices = crate::virtio::discover(ctx.cmdline);
    for d in devices.all() {
        println!(
            "AGENT: virtio-mmio at {:#x} device-id {} version {} irq {:?}",
            d.base, d.device_id, d.version, d.gsi
        );
    }
    println!(
        "AGENT: probe: {} virtio-mmio device(s), {} empty transport(s)",
        devices.all().len(),
        devices.empty
    );
    Ok(())
}

// ---- crashing on purpose --------------------------------------------------

/// Executes UD2: the ring-0 handler must print
/// `AGENT: fault vector=0x06 ...` and reset. Never reports a result.
fn fault(_: &Context) -> CheckResult {
    // SAFETY: the point is to fault; the handler resets the machine.
    unsafe { core::arch::asm!("ud2", options(nomem, nostack, noreturn)) }
}

/// Reads port 0x80, which the TSS I/O bitmap denies: expect
/// `AGENT: fault vector=0x0d ...` (#GP). Never reports a result.
fn badport(_: &Context) -> CheckResult {
    // SAFETY: as for `fault`.
    let v = unsafe { io::inb(0x80) };
    fail!("port 0x80 was readable from ring 3 (got {v:#x})")
}

/// Panics: the panic handler must print `AGENT: panic: ...` and reset.
fn panic(_: &Context) -> CheckResult {
    panic!("on purpose (agent.test=panic)")
}
