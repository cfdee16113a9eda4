//! A tiny fake virtio driver for testing device models without a guest:
//! a small guest memory (with a hole in it), one split queue laid out in
//! it, helpers to write descriptors and publish chains, and a reader for
//! the used ring. The unit tests use it, and so does the fuzz target
//! (`devices/fuzz`) through [`run`], which builds a whole queue from
//! arbitrary bytes. Compiled for tests and with the `fuzz` feature only.

use vm_memory::{Bytes, GuestAddress};

use super::{Block, QUEUE_SIZE};
use crate::virtio::{Memory, Queue, QueueT, VirtioDevice};

/// The descriptor table.
pub const DESC_TABLE: u64 = 0x0;
/// The available ring.
pub const AVAIL_RING: u64 = 0x1000;
/// The used ring.
pub const USED_RING: u64 = 0x2000;
/// Where data buffers go.
pub const DATA: u64 = 0x3000;
/// Guest RAM: [0, RAM_END) with a hole at [HOLE, HOLE_END).
pub const HOLE: u64 = 0x20000;
/// End of the hole.
pub const HOLE_END: u64 = 0x30000;
/// End of guest RAM.
pub const RAM_END: u64 = 0x40000;

/// `VIRTQ_DESC_F_NEXT`.
pub const F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`.
pub const F_WRITE: u16 = 2;
/// `VIRTQ_DESC_F_INDIRECT`.
pub const F_INDIRECT: u16 = 4;

/// One buffer of a chain.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

impl Buf {
    /// A device-readable buffer.
    pub fn r(addr: u64, len: u32) -> Buf {
        Buf {
            addr,
            len,
            write: false,
        }
    }

    /// A device-writable buffer.
    pub fn w(addr: u64, len: u32) -> Buf {
        Buf {
            addr,
            len,
            write: true,
        }
    }
}

/// The driver side of one split queue.
pub struct Driver {
    /// Guest memory.
    pub mem: Memory,
    /// The device side of the queue, ready to hand to `process_queue`.
    pub queues: Vec<Queue>,
    size: u16,
    avail_idx: u16,
    next_desc: u16,
    used_seen: u16,
}

impl Driver {
    /// Guest memory and a ready queue of `size` entries (a power of two,
    /// at most 256).
    pub fn new(size: u16, event_idx: bool) -> Driver {
        let mem = Memory::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x10000), (HOLE - 0x10000) as usize),
            (GuestAddress(HOLE_END), (RAM_END - HOLE_END) as usize),
        ])
        .expect("test guest memory");
        let mut q = Queue::new(QUEUE_SIZE).expect("queue");
        q.set_size(size);
        q.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
        q.set_used_ring_address(Some(USED_RING as u32), Some(0));
        q.set_event_idx(event_idx);
        q.set_ready(true);
        Driver {
            mem,
            queues: vec![q],
            size,
            avail_idx: 0,
            next_desc: 0,
            used_seen: 0,
        }
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Writes descriptor `index` of the table at `table`.
    pub fn write_desc_at(&self, table: u64, index: u16, b: Buf, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&b.addr.to_le_bytes());
        raw[8..12].copy_from_slice(&b.len.to_le_bytes());
        let flags = flags | if b.write { F_WRITE } else { 0 };
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        let addr = GuestAddress(table + u64::from(index) * 16);
        // Tests may aim outside RAM on purpose; ignore what does not fit.
        let _ = self.mem.write_slice(&raw, addr);
    }

    /// Writes descriptor `index` of the queue's table.
    pub fn write_desc(&self, index: u16, b: Buf, flags: u16, next: u16) {
        self.write_desc_at(DESC_TABLE, index, b, flags, next);
    }

    /// Writes `bufs` as a chain into free table slots and publishes it;
    /// returns its head index.
    pub fn add_chain(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (i, b) in bufs.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let next = (index + 1) % self.size;
            let flags = if i + 1 < bufs.len() { F_NEXT } else { 0 };
            self.write_desc(index, *b, flags, next);
        }
        self.next_desc = (head + bufs.len() as u16) % self.size;
        self.publish(head);
        head
    }

    /// Puts `head` in the available ring and bumps its index.
    pub fn publish(&mut self, head: u16) {
        let slot = AVAIL_RING + 4 + u64::from(self.avail_idx % self.size) * 2;
        self.mem.write_obj(head, GuestAddress(slot)).expect("avail");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(self.avail_idx);
    }

    /// Writes the available ring's index (hostile tests lie with it).
    pub fn set_avail_idx(&self, idx: u16) {
        self.mem
            .write_obj(idx, GuestAddress(AVAIL_RING + 2))
            .expect("avail idx");
    }

    /// Writes `used_event` (the driver's side of EVENT_IDX).
    pub fn set_used_event(&self, idx: u16) {
        let at = AVAIL_RING + 4 + u64::from(self.size) * 2;
        self.mem
            .write_obj(idx, GuestAddress(at))
            .expect("used_event");
    }

    /// The device's `avail_event` (EVENT_IDX).
    pub fn avail_event(&self) -> u16 {
        let at = USED_RING + 4 + u64::from(self.size) * 8;
        self.mem.read_obj(GuestAddress(at)).expect("avail_event")
    }

    /// The used ring's index.
    pub fn used_idx(&self) -> u16 {
        self.mem
            .read_obj(GuestAddress(USED_RING + 2))
            .expect("used idx")
    }

    /// Used-ring entries (head, length) added since the last call.
    pub fn take_used(&mut self) -> Vec<(u32, u32)> {
        let idx = self.used_idx();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let at = USED_RING + 4 + u64::from(self.used_seen % self.size) * 8;
            let id: u32 = self.mem.read_obj(GuestAddress(at)).expect("used id");
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).expect("used len");
            out.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// Notifies the device; returns whether it asked for an interrupt.
    pub fn kick(&mut self, dev: &mut dyn VirtioDevice) -> bool {
        dev.process_queue(0, &mut self.queues, &self.mem)
    }
}

/// Reads fuzz input front to back; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
}

/// Lengths a structured descriptor picks from: the interesting edges
/// around a header, a status byte, sectors and discard ranges.
const LENS: [u32; 16] = [
    0,
    1,
    15,
    16,
    17,
    32,
    48,
    511,
    512,
    513,
    1024,
    4096,
    20,
    0x10_0000,
    u32::MAX,
    0x8000_0000,
];

/// Request types a structured header picks from (the last one: raw).
const TYPES: [u32; 8] = [0, 1, 4, 8, 11, 13, 2, 0];

/// Where structured buffer `slot` lives: 32 slots of 2 KiB from DATA (one
/// of them straddles two RAM regions), or somewhere hostile.
fn slot_addr(sel: u8, input: &mut Input<'_>) -> u64 {
    match sel >> 3 {
        0..=23 => DATA + u64::from(sel & 31) * 0x800 + u64::from(sel >> 5) * 0x10,
        24 => HOLE - 8,
        25 => HOLE_END - 8,
        26 => RAM_END - 8,
        27 => RAM_END,
        28 => u64::from(input.u16()) & 0x2fff, // the rings themselves
        29 => u64::MAX - 8,
        _ => input.u64(),
    }
}

/// Builds a queue from arbitrary bytes and lets `block` process it: the
/// fuzz target's body. Panics only if the device breaks an invariant: a
/// used entry for a head that was never published, or more used entries
/// than chains.
///
/// The first byte picks the queue size (bits 0-1), EVENT_IDX (bit 2),
/// a made-up available index (bit 3) and the encoding (bit 4):
/// - raw: a descriptor table of arbitrary entries, arbitrary heads;
/// - structured (the default): up to 16 chains, each a header (type,
///   sector, one discard range) and 1-6 descriptors of 3 bytes (buffer
///   slot, length from [`LENS`], flags: write, wrong NEXT, indirect, odd
///   next index), linked in table order like a real driver does.
///
/// Whatever input is left fills the data area under the headers.
pub fn run(block: &mut Block, data: &[u8]) {
    let mut input = Input(data);
    let flags = input.u8();
    let size = [256u16, 16, 4, 1][usize::from(flags & 3)];
    let mut d = Driver::new(size, flags & 4 != 0);
    let mut published = Vec::new();
    let mut headers = Vec::new();
    // A device-writable buffer over the rings lets the device's own
    // writes change the queue: then only the basic invariants hold.
    let mut scrambled = false;

    if flags & 0x10 != 0 {
        scrambled = raw_queue(&mut d, &mut input, &mut published);
    } else {
        let chains = input.u8() % 17;
        let mut slot = 0u16;
        for _ in 0..chains {
            let t = input.u8();
            let type_ = match TYPES[usize::from(t & 7)] {
                0 if t & 7 == 7 => input.u32(),
                t => t,
            };
            let sector = match input.u8() {
                s @ 0..=199 => u64::from(s % 40),
                200..=219 => u64::MAX - u64::from(input.u8()),
                _ => input.u64(),
            };
            let range = input.bytes::<3>();
            let n = 1 + usize::from(input.u8() % 6);
            let head = slot;
            let mut first_addr = None;
            for i in 0..n {
                let sel = input.u8();
                let addr = slot_addr(sel, &mut input);
                first_addr.get_or_insert(addr);
                let len = LENS[usize::from(input.u8() & 15)];
                let f = input.u8();
                let last = i + 1 == n;
                let mut dflags = if last { 0 } else { F_NEXT };
                if f & 2 != 0 {
                    dflags ^= F_NEXT;
                }
                if f & 4 != 0 && f & 0x40 != 0 {
                    dflags |= F_INDIRECT;
                }
                let mut next = (slot + 1) % size;
                if f & 8 != 0 {
                    next = u16::from(input.u8());
                }
                let b = Buf {
                    addr,
                    len,
                    write: f & 1 != 0,
                };
                scrambled |= b.write && addr < DATA;
                d.write_desc(slot, b, dflags, next);
                slot = (slot + 1) % size;
            }
            let mut hdr = [0u8; 32];
            hdr[0..4].copy_from_slice(&type_.to_le_bytes());
            hdr[8..16].copy_from_slice(&sector.to_le_bytes());
            hdr[16..24].copy_from_slice(&u64::from(range[0] % 40).to_le_bytes());
            hdr[24..28].copy_from_slice(&u32::from(range[1]).to_le_bytes());
            hdr[28..32].copy_from_slice(&u32::from(range[2] & 3).to_le_bytes());
            if let Some(at) = first_addr {
                headers.push((at, hdr));
            }
            d.publish(head);
            published.push(head);
        }
    }
    if flags & 8 != 0 {
        d.set_avail_idx(input.u16());
    }
    d.set_used_event(input.u16());

    // The rest fills the data area; then the headers go on top.
    let rest = input.0;
    let n = rest.len().min((HOLE - DATA) as usize);
    d.mem
        .write_slice(&rest[..n], GuestAddress(DATA))
        .expect("data area");
    for (at, hdr) in headers {
        if at >= DATA {
            let _ = d.mem.write_slice(&hdr, GuestAddress(at));
        }
    }

    d.kick(block);
    d.kick(block);

    let used = d.take_used();
    // With a made-up available index the device reads ring slots nobody
    // wrote (head 0).
    let exact = flags & 8 == 0 && !scrambled;
    if exact {
        assert!(
            used.len() <= published.len(),
            "more used entries than chains"
        );
    }
    for (id, _) in used {
        assert!(id < u32::from(size), "used id {id} outside the queue");
        assert!(
            !exact || published.iter().any(|&h| u32::from(h) == id),
            "used id {id} was never published"
        );
    }
}

/// The raw encoding: arbitrary descriptor-table entries and heads.
/// Returns true when a device-writable buffer may overlap the rings.
fn raw_queue(d: &mut Driver, input: &mut Input<'_>, published: &mut Vec<u16>) -> bool {
    let mut scrambled = false;
    let size = d.size();
    let descs = usize::from(input.u8()) % (usize::from(size) + 1);
    for index in 0..descs {
        let sel = input.u8();
        let addr = match sel {
            0..=199 => DATA + u64::from(input.u16()) * 2,
            200..=219 => HOLE - 0x100 + u64::from(input.u16() % 0x200),
            220..=239 => RAM_END - 0x100 + u64::from(input.u16() % 0x200),
            _ => input.u64(),
        };
        let len = if sel & 1 == 0 {
            u32::from(input.u16() % 0x1400)
        } else {
            input.u32()
        };
        let f = input.u8();
        scrambled |= u16::from(f) & F_WRITE != 0 && addr < DATA;
        let next = u16::from(input.u8()) % size.saturating_add(2);
        // The index is below the queue size, at most 256.
        d.write_desc(index as u16, Buf::r(addr, len), u16::from(f & 7), next);
    }
    let heads = input.u8() % 8;
    for _ in 0..heads {
        let head = u16::from(input.u8()) % size.saturating_add(2);
        d.publish(head);
        published.push(head);
    }
    scrambled
}
