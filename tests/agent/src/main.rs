//! kiln test agent: a tiny bare-metal guest for kiln's integration tests.
//!
//! - src/boot.S: the ring-0 part in assembly (PVH entry, page tables, GDT,
//!   TSS, IDT, fault handler) that ends by dropping to ring 3;
//! - this file: the Rust entry at ring 3, the panic handler, the test loop;
//! - serial.rs (COM1, `println!`), cmdline.rs (`agent.*` options),
//!   checks.rs (the check framework), tests.rs (the test table and the
//!   basic tests), io.rs (ports, MMIO, reset), mem.rs (memcpy and friends,
//!   since there is no libc), time.rs (TSC);
//! - virtio.rs (finding virtio-mmio devices, opening disks), hal.rs
//!   (virtio-drivers' DMA pool), blk.rs (the `blk-*` checks through
//!   virtio-drivers), hostile.rs (`blk-hostile`: broken chains by hand),
//!   inflight.rs (`blk-inflight`: a write in flight across a snapshot),
//!   irq.rs (`irq`: IOAPIC and LAPIC set-up, interrupt counting);
//! - net.rs (virtio-net through virtio-drivers, Ethernet/ARP/IPv4/UDP/ICMP
//!   by hand), netcheck.rs (the `net-*` checks and their UDP protocol);
//! - vsock.rs (the `vsock-*` checks through virtio-drivers' socket driver,
//!   which needs the heap below).
//!
//! Everything here runs at ring 3, natively even on a nested kvm_pvm host.
//! It is built for the ordinary host target (x86_64-unknown-linux-gnu)
//! with a static relocation model and our own linker script (agent.ld).
#![no_std]
#![no_main]
// A failed check carries its reason in a fixed 160-byte buffer: there is
// no heap to box it into, and returning it by value is cheap enough here.
#![allow(clippy::result_large_err)]

extern crate alloc;

mod blk;
mod checks;
mod cmdline;
mod hal;
mod hostile;
mod inflight;
mod io;
mod irq;
mod mem;
mod net;
mod netcheck;
mod serial;
mod tests;
mod time;
mod virtio;
mod vsock;

core::arch::global_asm!(include_str!("boot.S"), options(att_syntax));

/// `hvm_start_info.magic` (PVH boot protocol).
const PVH_START_MAGIC: u32 = 0x336e_c578;
/// Offset of `cmdline_paddr` (u64) in `hvm_start_info`: after magic,
/// version, flags, nr_modules (4 x u32) and modlist_paddr (u64).
const PVH_CMDLINE_PADDR: usize = 24;
/// Longest command line we look at (x86 Linux's COMMAND_LINE_SIZE).
const CMDLINE_MAX: usize = 2048;

/// The heap: virtio-drivers' socket driver allocates its receive buffers
/// and per-connection ring buffers. Nothing else uses it.
#[global_allocator]
static HEAP: linked_list_allocator::LockedHeap = linked_list_allocator::LockedHeap::empty();
/// Bytes of heap, in .bss.
const HEAP_SIZE: usize = 4 << 20;
static mut HEAP_SPACE: [u8; HEAP_SIZE] = [0; HEAP_SIZE];

/// Called by boot.S (`ring3_entry`) at ring 3 with the physical address of
/// the PVH `hvm_start_info` (identity mapped, so also its virtual address).
#[no_mangle]
extern "C" fn agent_start(start_info: usize) -> ! {
    serial::init();
    // SAFETY: HEAP_SPACE is used by nothing but the heap, which is
    // initialised exactly once, here, before anything allocates.
    unsafe {
        HEAP.lock()
            .init(core::ptr::addr_of_mut!(HEAP_SPACE).cast(), HEAP_SIZE)
    };
    // SAFETY: boot.S passes what kiln put in EBX at the PVH entry.
    let cmdline = unsafe { pvh_cmdline(start_info) };
    agent_main(cmdline)
}

/// Finds the NUL-terminated command line through `hvm_start_info`.
///
/// # Safety
/// `start_info` must be 0 or an identity-mapped address.
unsafe fn pvh_cmdline(start_info: usize) -> &'static str {
    if start_info == 0 || (start_info as *const u32).read_volatile() != PVH_START_MAGIC {
        println!("AGENT: warning: no PVH start info at {start_info:#x}");
        return "";
    }
    let paddr = ((start_info + PVH_CMDLINE_PADDR) as *const u64).read_unaligned() as usize;
    if paddr == 0 {
        return "";
    }
    let bytes = core::slice::from_raw_parts(paddr as *const u8, CMDLINE_MAX);
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(CMDLINE_MAX);
    match core::str::from_utf8(&bytes[..len]) {
        Ok(s) => s,
        Err(e) => {
            println!("AGENT: warning: command line is not UTF-8 ({e})");
            ""
        }
    }
}

/// Runs the tests named on the command line, then resets the machine.
fn agent_main(cmdline: &str) -> ! {
    let args = cmdline::parse(cmdline);
    println!("AGENT: start tests={}", args.tests);
    let mut runner = checks::Runner::new(args.fail);
    for name in args.tests() {
        let (base, arg) = match name.split_once(':') {
            Some((base, arg)) => (base, Some(arg)),
            None => (name, None),
        };
        let ctx = tests::Context { cmdline, args, arg };
        match tests::find(base) {
            Some(test) => runner.check(name, || test(&ctx)),
            None => runner.check(name, || fail!("unknown test")),
        }
    }
    runner.finish()
}

/// Never called: panics abort. The host target's precompiled libcore is
/// built for unwinding and refers to this symbol; only LTO (the release
/// profile) drops that reference, so without it a dev build does not link.
#[no_mangle]
extern "C" fn rust_eh_personality() {}

/// A panic prints one line (message and location) and resets: the missing
/// `AGENT: done` line tells the harness that the run failed.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    print!("\nAGENT: panic: {}", info.message());
    if let Some(loc) = info.location() {
        print!(" at {}:{}:{}", loc.file(), loc.line(), loc.column());
    }
    println!();
    io::reset()
}
