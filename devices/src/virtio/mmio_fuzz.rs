//! A fake driver that pokes a virtio-mmio transport's registers in any
//! order, with any width and value, between writes of arbitrary bytes
//! into guest memory and queue notifications: the body of the
//! `mmio_transport` fuzz target (`devices/fuzz`) and of a seeded mini-fuzz
//! in the unit tests. Compiled for tests and with the `fuzz` feature only.
//!
//! Input: a sequence of operations, each a tag byte followed by its
//! operands (missing bytes read as zero):
//! - `0`: write a known register: index (1 byte, into [`REGISTERS`]),
//!   value (4 bytes);
//! - `1`: read a known register: index;
//! - `2`: write anywhere in the window: offset (2 bytes, up to 0x1ff),
//!   width (1 byte: 1, 2, 4 or 8 bytes, or an odd one), that many bytes;
//! - `3`: read anywhere: offset, width;
//! - `4`: notify a queue (1 byte; out-of-range queues included);
//! - `5`: write 8 bytes of guest memory in its first 16 KiB, where the
//!   bring-up below puts queue 0 most often: offset (2 bytes, times 8);
//! - `6`: a driver's whole bring-up with acked features (8 bytes) and
//!   queue 0 placed at offsets chosen by 3 bytes;
//! - `7`: the transport's backend-ready event.
//!
//! After every operation the transport must still answer as a virtio-mmio
//! window does: MagicValue, Version and DeviceID fixed; after a write of 0
//! to Status, a reset device with status 0. Anything else is a panic,
//! which the fuzzer reports.

use std::sync::Arc;

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_mmio as reg;
use vm_memory::{Bytes, GuestAddress};

use super::mmio::{MmioTransport, MAGIC, VERSION};
use super::{Memory, VirtioDevice};
use crate::bus::BusDevice;
use crate::Interrupt;

/// Guest RAM for the transport: [0, 0x20000) and [0x30000, 0x40000), a
/// hole between.
pub fn memory() -> Memory {
    Memory::from_ranges(&[(GuestAddress(0), 0x20000), (GuestAddress(0x30000), 0x10000)])
        .expect("two small regions map")
}

/// An interrupt line nobody listens to.
pub struct Quiet;

impl Interrupt for Quiet {
    fn trigger(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `device` behind a transport on [`memory`]; returns the memory too (the
/// same mapping) for the fuzzer's writes.
pub fn transport(device: Box<dyn VirtioDevice>) -> (MmioTransport, Memory) {
    let mem = memory();
    let t = MmioTransport::new(device, mem.clone(), Arc::new(Quiet)).expect("queues build");
    (t, mem)
}

/// The registers of the window (virtio 1.x, 4.2.2), and two offsets into
/// the device's configuration space.
pub const REGISTERS: &[u32] = &[
    reg::VIRTIO_MMIO_MAGIC_VALUE,
    reg::VIRTIO_MMIO_VERSION,
    reg::VIRTIO_MMIO_DEVICE_ID,
    reg::VIRTIO_MMIO_VENDOR_ID,
    reg::VIRTIO_MMIO_DEVICE_FEATURES,
    reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL,
    reg::VIRTIO_MMIO_DRIVER_FEATURES,
    reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL,
    reg::VIRTIO_MMIO_QUEUE_SEL,
    reg::VIRTIO_MMIO_QUEUE_NUM_MAX,
    reg::VIRTIO_MMIO_QUEUE_NUM,
    reg::VIRTIO_MMIO_QUEUE_READY,
    reg::VIRTIO_MMIO_QUEUE_NOTIFY,
    reg::VIRTIO_MMIO_INTERRUPT_STATUS,
    reg::VIRTIO_MMIO_INTERRUPT_ACK,
    reg::VIRTIO_MMIO_STATUS,
    reg::VIRTIO_MMIO_QUEUE_DESC_LOW,
    reg::VIRTIO_MMIO_QUEUE_DESC_HIGH,
    reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW,
    reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
    reg::VIRTIO_MMIO_QUEUE_USED_LOW,
    reg::VIRTIO_MMIO_QUEUE_USED_HIGH,
    reg::VIRTIO_MMIO_CONFIG_GENERATION,
    reg::VIRTIO_MMIO_CONFIG,
    reg::VIRTIO_MMIO_CONFIG + 8,
];

/// Reads the input a byte at a time; zeros once it is used up.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for b in &mut out {
            *b = self.byte();
        }
        out
    }
}

/// Reads a 32-bit register.
pub(crate) fn read32(t: &mut MmioTransport, offset: u32) -> u32 {
    let mut d = [0u8; 4];
    t.read(offset.into(), &mut d);
    u32::from_le_bytes(d)
}

/// Writes a 32-bit register.
pub(crate) fn write32(t: &mut MmioTransport, offset: u32, v: u32) {
    t.write(offset.into(), &v.to_le_bytes());
}

/// Runs the operations in `data` against `t` (whose guest memory is
/// `mem`), checking the window's invariants after each. Returns how many
/// operations found the device active (a measure of how deep the input
/// got).
pub fn run(t: &mut MmioTransport, mem: &Memory, data: &[u8]) -> usize {
    let device_type = t.device().device_type();
    let mut active = 0;
    let mut input = Input(data);
    // Bounded: every operation takes at least its tag byte.
    while !input.0.is_empty() {
        match input.byte() % 8 {
            0 => {
                let offset = REGISTERS[input.byte() as usize % REGISTERS.len()];
                let value = u32::from_le_bytes(input.bytes());
                write32(t, offset, value);
                if offset == reg::VIRTIO_MMIO_STATUS && value == 0 {
                    assert!(!t.is_active(), "a reset device is not active");
                    assert_eq!(read32(t, reg::VIRTIO_MMIO_STATUS), 0, "status after reset");
                }
            }
            1 => {
                let offset = REGISTERS[input.byte() as usize % REGISTERS.len()];
                read32(t, offset);
            }
            2 => {
                let offset = u16::from_le_bytes(input.bytes()) & 0x1ff;
                let width = (input.byte() % 9) as usize;
                let bytes: [u8; 8] = input.bytes();
                t.write(offset.into(), &bytes[..width]);
            }
            3 => {
                let offset = u16::from_le_bytes(input.bytes()) & 0x1ff;
                let width = (input.byte() % 9) as usize;
                let mut out = [0u8; 8];
                t.read(offset.into(), &mut out[..width]);
            }
            4 => {
                let queue = input.byte() as usize % 4;
                while t.notify(queue) {}
            }
            5 => {
                let at = u64::from(u16::from_le_bytes(input.bytes()) & 0x7ff) * 8;
                let bytes: [u8; 8] = input.bytes();
                // The hole and the end refuse the write; that is fine.
                let _ = mem.write_slice(&bytes, GuestAddress(at));
            }
            6 => {
                let acked = u64::from_le_bytes(input.bytes());
                let [d, a, u] = input.bytes();
                bring_up(t, acked, [d, a, u]);
            }
            _ => t.backend_ready(),
        }
        assert_eq!(read32(t, reg::VIRTIO_MMIO_MAGIC_VALUE), MAGIC);
        assert_eq!(read32(t, reg::VIRTIO_MMIO_VERSION), VERSION);
        assert_eq!(read32(t, reg::VIRTIO_MMIO_DEVICE_ID), device_type);
        active += usize::from(t.is_active());
    }
    active
}

/// A driver's bring-up (virtio 3.1.1) and queue 0's rings at offsets
/// picked by `place` (each a 4 KiB page of RAM, or of the hole). The
/// features acked are `acked` as given when bit 7 of `place[0]` is set,
/// else those of `acked` the device offers, plus VERSION_1 (a driver that
/// plays by the rules).
fn bring_up(t: &mut MmioTransport, acked: u64, place: [u8; 3]) {
    let acked = if place[0] & 0x80 != 0 {
        acked
    } else {
        (acked & t.device().features()) | super::features::VERSION_1
    };
    let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
    write32(t, reg::VIRTIO_MMIO_STATUS, 0);
    write32(t, reg::VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    write32(t, reg::VIRTIO_MMIO_STATUS, s);
    for sel in 0..2 {
        write32(t, reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
        write32(
            t,
            reg::VIRTIO_MMIO_DRIVER_FEATURES,
            (acked >> (32 * sel)) as u32,
        );
    }
    write32(t, reg::VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_FEATURES_OK);
    write32(t, reg::VIRTIO_MMIO_QUEUE_SEL, 0);
    let max = read32(t, reg::VIRTIO_MMIO_QUEUE_NUM_MAX);
    write32(t, reg::VIRTIO_MMIO_QUEUE_NUM, max);
    let page = |b: u8| u32::from(b % 64) * 0x1000;
    write32(t, reg::VIRTIO_MMIO_QUEUE_DESC_LOW, page(place[0]));
    write32(t, reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW, page(place[1]));
    write32(t, reg::VIRTIO_MMIO_QUEUE_USED_LOW, page(place[2]));
    write32(t, reg::VIRTIO_MMIO_QUEUE_READY, 1);
    write32(
        t,
        reg::VIRTIO_MMIO_STATUS,
        s | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::block::{Block, DiskImage};

    fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut rng = crate::Rng(seed);
        (0..n).map(|_| (rng.next() >> 56) as u8).collect()
    }

    /// A read-only and a writable 16-sector disk behind the transport.
    fn block(read_only: bool) -> (tempfile::NamedTempFile, MmioTransport, Memory) {
        let image = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            image.path(),
            (0..8192u32).map(|i| i as u8).collect::<Vec<_>>(),
        )
        .unwrap();
        let disk = DiskImage::open(image.path(), read_only, Some("fuzz")).unwrap();
        let (t, mem) = transport(Box::new(Block::new(disk)));
        (image, t, mem)
    }

    /// Two thousand seeded inputs, a bring-up first in half of them (so
    /// queues are live more often than chance would make them), and at
    /// least a tenth of all operations reach a running device; a
    /// read-only image stays as it was.
    #[test]
    fn mini_fuzz_register_accesses_in_any_order() {
        let (mut active, mut ops) = (0, 0);
        for seed in 1..=2000u64 {
            let read_only = seed % 2 == 0;
            let (image, mut t, mem) = block(read_only);
            let mut data = random_bytes(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), 400);
            if seed % 4 < 2 {
                // Tag 6 with VERSION_1 acked, queue rings on pages 1-3.
                let mut up = vec![6, 0, 0, 0, 0, 1, 0, 0, 0, 1, 2, 3];
                up.extend_from_slice(&data);
                data = up;
            }
            active += run(&mut t, &mem, &data);
            ops += data.len() / 4;
            if read_only {
                let now = std::fs::read(image.path()).unwrap();
                assert!(
                    now.iter().enumerate().all(|(i, &b)| b == i as u8),
                    "seed {seed}: the read-only image changed"
                );
            }
        }
        // Roughly: an operation is 4 bytes on average.
        eprintln!("operations on an active device: {active} of about {ops}");
        assert!(
            active * 10 > ops,
            "the inputs rarely reach a running device: {active} of about {ops}"
        );
    }

    #[test]
    fn an_empty_or_truncated_input_is_fine() {
        let (_image, mut t, mem) = block(false);
        assert_eq!(run(&mut t, &mem, &[]), 0);
        for tag in 0..8u8 {
            run(&mut t, &mem, &[tag]);
        }
    }
}
