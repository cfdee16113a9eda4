//! Block device tests: a fake driver (driver.rs) over a small guest
//! memory, and a temporary image file.

use std::io::Write;

use tempfile::NamedTempFile;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_SCSI_CMD, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use vm_memory::{Bytes, GuestAddress};

use super::driver::{self, Buf, Driver, DATA, F_INDIRECT, F_NEXT, HOLE, HOLE_END, RAM_END};
use super::*;
use crate::Rng;

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// Where the tests put headers, status bytes and data.
const HDR: u64 = DATA;
const STATUS: u64 = DATA + 0x40;
const BUF: u64 = DATA + 0x1000;
/// A second data buffer, straddling the boundary between two RAM regions.
const SPLIT_BUF: u64 = 0x10000 - 0x100;

/// The initial content of sector `s`, byte `i`.
fn pattern(s: u64, i: usize) -> u8 {
    (s as usize * 31 + i * 7 + 1) as u8
}

fn image_file(sectors: u64) -> NamedTempFile {
    let mut f = NamedTempFile::new().unwrap();
    let mut data = Vec::new();
    for s in 0..sectors {
        data.extend((0..512).map(|i| pattern(s, i)));
    }
    f.write_all(&data).unwrap();
    f
}

struct Fixture {
    file: NamedTempFile,
    block: Block,
    d: Driver,
    original: Vec<u8>,
}

impl Fixture {
    fn new(sectors: u64, read_only: bool) -> Fixture {
        Fixture::with_queue(sectors, read_only, 256, false)
    }

    fn with_queue(sectors: u64, read_only: bool, size: u16, event_idx: bool) -> Fixture {
        let file = image_file(sectors);
        let image = DiskImage::open(file.path(), read_only, Some("kiln-test")).unwrap();
        let original = std::fs::read(file.path()).unwrap();
        Fixture {
            block: Block::new(image),
            d: Driver::new(size, event_idx),
            file,
            original,
        }
    }

    fn contents(&self) -> Vec<u8> {
        std::fs::read(self.file.path()).unwrap()
    }

    fn assert_unchanged(&self) {
        assert!(
            self.contents() == self.original,
            "the image file was modified"
        );
    }

    fn header(&self, type_: u32, sector: u64) {
        let mut raw = [0u8; 16];
        raw[0..4].copy_from_slice(&type_.to_le_bytes());
        raw[8..16].copy_from_slice(&sector.to_le_bytes());
        self.d.mem.write_slice(&raw, GuestAddress(HDR)).unwrap();
    }

    fn status(&self) -> u8 {
        self.d.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    fn fill(&self, at: u64, len: usize, byte: u8) {
        self.d
            .mem
            .write_slice(&vec![byte; len], GuestAddress(at))
            .unwrap();
    }

    fn read_mem(&self, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.d.mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }

    /// Publishes `bufs`, kicks, and returns the one used length.
    fn submit(&mut self, bufs: &[Buf]) -> u32 {
        // A sentinel, so a status that was never written shows.
        self.fill(STATUS, 1, 0xee);
        let head = self.d.add_chain(bufs);
        self.d.kick(&mut self.block);
        let used = self.d.take_used();
        assert_eq!(used.len(), 1, "one chain, one used entry");
        assert_eq!(used[0].0, u32::from(head));
        used[0].1
    }

    /// A request with the usual three descriptors.
    fn request(&mut self, type_: u32, sector: u64, data: Buf) -> (u32, u8) {
        self.header(type_, sector);
        let len = self.submit(&[Buf::r(HDR, 16), data, Buf::w(STATUS, 1)]);
        (len, self.status())
    }

    fn read(&mut self, sector: u64, len: u32) -> (u32, u8) {
        self.request(VIRTIO_BLK_T_IN, sector, Buf::w(BUF, len))
    }

    fn write(&mut self, sector: u64, len: u32) -> (u32, u8) {
        self.request(VIRTIO_BLK_T_OUT, sector, Buf::r(BUF, len))
    }

    /// DISCARD or WRITE_ZEROES with `ranges` (sector, sectors, flags).
    fn discard(&mut self, type_: u32, ranges: &[(u64, u32, u32)]) -> (u32, u8) {
        let mut raw = Vec::new();
        for (s, n, f) in ranges {
            raw.extend(s.to_le_bytes());
            raw.extend(n.to_le_bytes());
            raw.extend(f.to_le_bytes());
        }
        self.d.mem.write_slice(&raw, GuestAddress(BUF)).unwrap();
        self.request(type_, 0, Buf::r(BUF, raw.len() as u32))
    }
}

fn expected_sectors(first: u64, count: u64) -> Vec<u8> {
    (first..first + count)
        .flat_map(|s| (0..512).map(move |i| pattern(s, i)))
        .collect()
}

// ---- features and config space ----

#[test]
fn offers_the_block_features() {
    let f = Fixture::new(8, false);
    let feats = f.block.features();
    for bit in [
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_SIZE_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
    ] {
        assert!(feats & 1 << bit != 0, "feature bit {bit}");
    }
    assert!(feats & features::VERSION_1 != 0);
    assert!(feats & features::RING_EVENT_IDX != 0);
    assert_eq!(feats & 1 << VIRTIO_BLK_F_RO, 0);
    let discard = f.block.image().supports_discard();
    assert_eq!(feats & 1 << VIRTIO_BLK_F_DISCARD != 0, discard);
    assert_eq!(feats & 1 << VIRTIO_BLK_F_WRITE_ZEROES != 0, discard);
    assert_eq!(f.block.device_type(), 2);
    assert_eq!(f.block.queue_max_sizes(), &[256]);
    assert_eq!(f.block.name(), "virtio-blk kiln-test");

    let ro = Fixture::new(8, true);
    let feats = ro.block.features();
    assert!(feats & 1 << VIRTIO_BLK_F_RO != 0);
    assert_eq!(feats & 1 << VIRTIO_BLK_F_DISCARD, 0);
    assert_eq!(feats & 1 << VIRTIO_BLK_F_WRITE_ZEROES, 0);
}

#[test]
fn ext4_and_tmpfs_images_offer_discard() {
    // The temporary directory here is ext4 or tmpfs, which punch holes.
    let f = Fixture::new(8, false);
    assert!(f.block.image().supports_discard());
}

fn config_u32(b: &Block, offset: u64) -> u32 {
    let mut v = [0u8; 4];
    b.read_config(offset, &mut v);
    u32::from_le_bytes(v)
}

#[test]
fn config_space_has_the_virtio_layout() {
    let f = Fixture::new(2048, false);
    let b = &f.block;
    let mut cap = [0u8; 8];
    b.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 2048);
    assert_eq!(config_u32(b, 8), SIZE_MAX);
    assert_eq!(config_u32(b, 12), 254);
    assert_eq!(config_u32(b, 20), 512);
    let mut nq = [0u8; 2];
    b.read_config(34, &mut nq);
    assert_eq!(u16::from_le_bytes(nq), 1);
    if b.image().supports_discard() {
        assert_eq!(config_u32(b, 36), MAX_DISCARD_SECTORS);
        assert_eq!(config_u32(b, 40), MAX_DISCARD_SEG);
        assert_eq!(config_u32(b, 44), DISCARD_SECTOR_ALIGNMENT);
        assert_eq!(config_u32(b, 48), MAX_DISCARD_SECTORS);
        assert_eq!(config_u32(b, 52), MAX_DISCARD_SEG);
        let mut unmap = [0u8; 1];
        b.read_config(56, &mut unmap);
        assert_eq!(unmap[0], 1);
    }
}

#[test]
fn config_reads_at_any_offset_and_length() {
    let f = Fixture::new(0x0102, false);
    let b = &f.block;
    let mut whole = [0u8; CONFIG_LEN];
    b.read_config(0, &mut whole);
    for offset in 0..CONFIG_LEN as u64 + 8 {
        for len in [1usize, 2, 3, 4, 8, 64] {
            let mut got = vec![0xffu8; len];
            b.read_config(offset, &mut got);
            for (i, byte) in got.iter().enumerate() {
                let at = offset as usize + i;
                let want = whole.get(at).copied().unwrap_or(0);
                assert_eq!(*byte, want, "offset {offset} len {len} byte {i}");
            }
        }
    }
    let mut far = [0xffu8; 4];
    b.read_config(u64::MAX, &mut far);
    assert_eq!(far, [0; 4]);
    b.read_config(1 << 40, &mut far);
    assert_eq!(far, [0; 4]);
    let mut empty = [];
    b.read_config(3, &mut empty);
}

#[test]
fn config_writes_are_ignored() {
    let mut f = Fixture::new(8, false);
    f.block.write_config(0, &[0xff; 8]);
    let mut cap = [0u8; 8];
    f.block.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 8);
}

// ---- requests ----

#[test]
fn reads_return_the_image_contents() {
    let mut f = Fixture::new(16, false);
    assert_eq!(f.read(3, 1024), (1025, OK));
    assert_eq!(f.read_mem(BUF, 1024), expected_sectors(3, 2));
    assert_eq!(f.read(15, 512), (513, OK));
    assert_eq!(f.read_mem(BUF, 512), expected_sectors(15, 1));
    f.assert_unchanged();
}

#[test]
fn writes_reach_the_file_and_read_back() {
    let mut f = Fixture::new(16, false);
    let data: Vec<u8> = (0..1536).map(|i| (i * 13 % 251) as u8).collect();
    f.d.mem.write_slice(&data, GuestAddress(BUF)).unwrap();
    assert_eq!(f.write(5, 1536), (1, OK));
    let file = f.contents();
    assert_eq!(&file[5 * 512..8 * 512], &data[..]);
    assert_eq!(&file[..5 * 512], &f.original[..5 * 512]);
    assert_eq!(&file[8 * 512..], &f.original[8 * 512..]);

    f.fill(BUF, 1536, 0);
    assert_eq!(f.read(5, 1536), (1537, OK));
    assert_eq!(f.read_mem(BUF, 1536), data);
}

#[test]
fn a_snapshot_disk_takes_writes_and_never_changes_the_image() {
    let file = image_file(16);
    let image = DiskImage::open_snapshot(file.path(), None).unwrap();
    let original = std::fs::read(file.path()).unwrap();
    let mut f = Fixture {
        block: Block::new(image),
        d: Driver::new(256, false),
        file,
        original,
    };
    assert_eq!(f.block.image().snapshot_sectors(), Some(0));
    assert!(
        !f.block.image().read_only(),
        "the guest sees a writable disk"
    );
    // Sectors 5-7, written through buffers that split sector 5.
    let data: Vec<u8> = (0..1536).map(|i| (i * 13 % 251) as u8).collect();
    f.d.mem
        .write_slice(&data[..100], GuestAddress(BUF))
        .unwrap();
    f.d.mem
        .write_slice(&data[100..], GuestAddress(BUF + 0x1000))
        .unwrap();
    f.header(VIRTIO_BLK_T_OUT, 5);
    let len = f.submit(&[
        Buf::r(HDR, 16),
        Buf::r(BUF, 100),
        Buf::r(BUF + 0x1000, 1436),
        Buf::w(STATUS, 1),
    ]);
    assert_eq!((len, f.status()), (1, OK));
    assert_eq!(f.request(VIRTIO_BLK_T_FLUSH, 0, Buf::r(BUF, 0)).1, OK);
    f.assert_unchanged();
    assert_eq!(f.block.image().snapshot_sectors(), Some(3));
    // A read across written and unwritten sectors sees both.
    f.fill(BUF, 8 * 512, 0);
    assert_eq!(f.read(4, 8 * 512), (8 * 512 + 1, OK));
    let mut want = expected_sectors(4, 1);
    want.extend(&data);
    want.extend(expected_sectors(8, 4));
    assert_eq!(f.read_mem(BUF, 8 * 512), want);
    // The image is shared: another snapshot may open it, a writer not.
    let path = f.file.path().to_path_buf();
    assert!(DiskImage::open_snapshot(&path, None).is_ok());
    assert!(matches!(
        DiskImage::open(&path, false, None),
        Err(BlockError::Locked { .. })
    ));
}

#[test]
fn data_may_be_split_across_descriptors_and_memory_regions() {
    let mut f = Fixture::new(16, false);
    // Header split 10 + 6 bytes, data in three buffers (one straddling
    // two RAM regions), status after the data in the same descriptor.
    let data: Vec<u8> = (0..1024).map(|i| (i % 249) as u8).collect();
    f.d.mem
        .write_slice(&data[..100], GuestAddress(BUF))
        .unwrap();
    f.d.mem
        .write_slice(&data[100..612], GuestAddress(SPLIT_BUF))
        .unwrap();
    f.d.mem
        .write_slice(&data[612..], GuestAddress(BUF + 0x800))
        .unwrap();
    f.header(VIRTIO_BLK_T_OUT, 2);
    let len = f.submit(&[
        Buf::r(HDR, 10),
        Buf::r(HDR + 10, 6),
        Buf::r(BUF, 100),
        Buf::r(SPLIT_BUF, 512),
        Buf::r(BUF + 0x800, 412),
        Buf::w(STATUS, 1),
    ]);
    assert_eq!((len, f.status()), (1, OK));
    assert_eq!(&f.contents()[1024..2048], &data[..]);

    // Read it back into a split buffer whose last byte is the status.
    f.header(VIRTIO_BLK_T_IN, 2);
    let len = f.submit(&[
        Buf::r(HDR, 16),
        Buf::w(SPLIT_BUF, 600),
        Buf::w(BUF + 0x2000, 425),
    ]);
    assert_eq!(len, 1025);
    let mut back = f.read_mem(SPLIT_BUF, 600);
    back.extend(f.read_mem(BUF + 0x2000, 424));
    assert_eq!(back, data);
    assert_eq!(f.read_mem(BUF + 0x2000 + 424, 1), vec![OK]);
}

#[test]
fn indirect_descriptors_work() {
    let mut f = Fixture::new(16, false);
    let table = DATA + 0x6000;
    f.header(VIRTIO_BLK_T_IN, 1);
    f.d.write_desc_at(table, 0, Buf::r(HDR, 16), F_NEXT, 1);
    f.d.write_desc_at(table, 1, Buf::w(BUF, 512), F_NEXT, 2);
    f.d.write_desc_at(table, 2, Buf::w(STATUS, 1), 0, 0);
    f.d.write_desc(0, Buf::r(table, 48), F_INDIRECT, 0);
    f.d.publish(0);
    f.d.kick(&mut f.block);
    assert_eq!(f.d.take_used(), vec![(0, 513)]);
    assert_eq!(f.status(), OK);
    assert_eq!(f.read_mem(BUF, 512), expected_sectors(1, 1));
}

#[test]
fn flush_succeeds() {
    let mut f = Fixture::new(8, false);
    f.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(f.submit(&[Buf::r(HDR, 16), Buf::w(STATUS, 1)]), 1);
    assert_eq!(f.status(), OK);
    assert_eq!(f.block.stats.flushes, 1);
}

#[test]
fn get_id_returns_the_id() {
    let mut f = Fixture::new(8, false);
    f.fill(BUF, 20, 0xff);
    assert_eq!(f.request(VIRTIO_BLK_T_GET_ID, 0, Buf::w(BUF, 20)), (21, OK));
    let mut want = b"kiln-test".to_vec();
    want.resize(20, 0);
    assert_eq!(f.read_mem(BUF, 20), want);
    // A short buffer gets what fits.
    f.fill(BUF, 20, 0xff);
    assert_eq!(f.request(VIRTIO_BLK_T_GET_ID, 0, Buf::w(BUF, 4)), (5, OK));
    assert_eq!(f.read_mem(BUF, 5), b"kiln\xff");
}

#[test]
fn get_id_without_an_id_is_derived_from_the_file() {
    let file = image_file(8);
    let image = DiskImage::open(file.path(), true, None).unwrap();
    let id = *image.id();
    let mut block = Block::new(image);
    let mut d = Driver::new(16, false);
    let mut raw = [0u8; 16];
    raw[0] = VIRTIO_BLK_T_GET_ID as u8;
    d.mem.write_slice(&raw, GuestAddress(HDR)).unwrap();
    d.add_chain(&[Buf::r(HDR, 16), Buf::w(BUF, 20), Buf::w(STATUS, 1)]);
    d.kick(&mut block);
    let mut got = [0u8; 20];
    d.mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
    assert_eq!(got, id);
    assert_ne!(got, [0; 20]);
}

#[test]
fn unknown_requests_are_unsupported() {
    let mut f = Fixture::new(8, false);
    for t in [VIRTIO_BLK_T_SCSI_CMD, 3, 9, 0x8000_0000, u32::MAX] {
        f.header(t, 0);
        assert_eq!(f.submit(&[Buf::r(HDR, 16), Buf::w(STATUS, 1)]), 1);
        assert_eq!(f.status(), UNSUPP, "type {t:#x}");
    }
    f.assert_unchanged();
}

#[test]
fn many_chains_in_one_kick_complete_in_order() {
    let mut f = Fixture::new(64, false);
    let mut heads = Vec::new();
    for i in 0..40u64 {
        let hdr = DATA + 0x100 + i * 0x20;
        let mut raw = [0u8; 16];
        raw[8..16].copy_from_slice(&i.to_le_bytes());
        f.d.mem.write_slice(&raw, GuestAddress(hdr)).unwrap();
        heads.push(f.d.add_chain(&[
            Buf::r(hdr, 16),
            Buf::w(BUF + i * 512, 512),
            Buf::w(hdr + 16, 1),
        ]));
    }
    assert!(f.d.kick(&mut f.block));
    let used = f.d.take_used();
    assert_eq!(
        used,
        heads
            .iter()
            .map(|&h| (u32::from(h), 513))
            .collect::<Vec<_>>()
    );
    for i in 0..40u64 {
        assert_eq!(f.read_mem(BUF + i * 512, 512), expected_sectors(i, 1));
    }
}

#[test]
fn a_full_queue_is_served_in_budgeted_rounds() {
    let mut f = Fixture::new(128, false);
    let n = CHAINS_PER_CALL as u64 + 16;
    for i in 0..n {
        let hdr = DATA + 0x100 + i * 0x20;
        let mut raw = [0u8; 16];
        raw[8..16].copy_from_slice(&i.to_le_bytes());
        f.d.mem.write_slice(&raw, GuestAddress(hdr)).unwrap();
        f.d.add_chain(&[
            Buf::r(hdr, 16),
            Buf::w(BUF + i * 512, 512),
            Buf::w(hdr + 16, 1),
        ]);
    }
    f.d.kick(&mut f.block);
    assert_eq!(f.d.take_used().len(), CHAINS_PER_CALL);
    assert!(f.block.rerun(0), "stopped at the budget with work left");
    f.d.kick(&mut f.block);
    assert_eq!(f.d.take_used().len(), 16);
    assert!(!f.block.rerun(0), "done");
    for i in 0..n {
        assert_eq!(f.read_mem(BUF + i * 512, 512), expected_sectors(i, 1));
    }
}

// ---- read-only disks ----

#[test]
fn read_only_disk_rejects_writes_and_stays_bit_identical() {
    let mut f = Fixture::new(16, true);
    f.fill(BUF, 4096, 0x5a);
    assert_eq!(f.write(0, 512), (1, IOERR));
    assert_eq!(f.write(4, 4096), (1, IOERR));
    assert_eq!(f.discard(VIRTIO_BLK_T_DISCARD, &[(0, 8, 0)]), (1, IOERR));
    assert_eq!(
        f.discard(VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 8, 0)]),
        (1, IOERR)
    );
    // Reads, flushes and GET_ID still work.
    assert_eq!(f.read(2, 512), (513, OK));
    assert_eq!(f.read_mem(BUF, 512), expected_sectors(2, 1));
    f.header(VIRTIO_BLK_T_FLUSH, 0);
    f.submit(&[Buf::r(HDR, 16), Buf::w(STATUS, 1)]);
    assert_eq!(f.status(), OK);
    f.assert_unchanged();
    assert_eq!(f.block.stats.errors, 4);
}

// ---- discard and write zeroes ----

#[test]
fn discard_and_write_zeroes_zero_their_ranges() {
    let mut f = Fixture::new(64, false);
    if !f.block.image().supports_discard() {
        assert_eq!(f.discard(VIRTIO_BLK_T_DISCARD, &[(0, 8, 0)]), (1, UNSUPP));
        return;
    }
    assert_eq!(f.discard(VIRTIO_BLK_T_DISCARD, &[(8, 8, 0)]), (1, OK));
    assert_eq!(
        f.discard(
            VIRTIO_BLK_T_WRITE_ZEROES,
            &[(20, 3, 0), (30, 1, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)]
        ),
        (1, OK)
    );
    let file = f.contents();
    assert_eq!(file.len(), 64 * 512, "the size never changes");
    for s in 0..64u64 {
        let zeroed = (8..16).contains(&s) || (20..23).contains(&s) || s == 30;
        let got = &file[s as usize * 512..(s as usize + 1) * 512];
        if zeroed {
            assert!(got.iter().all(|&b| b == 0), "sector {s} not zeroed");
        } else {
            assert_eq!(got, &expected_sectors(s, 1)[..], "sector {s} changed");
        }
    }
    // And the guest reads zeros back.
    assert_eq!(f.read(8, 512), (513, OK));
    assert_eq!(f.read_mem(BUF, 512), vec![0; 512]);
}

#[test]
fn write_zeroes_falls_back_to_writing_zeros() {
    let mut f = Fixture::new(32, false);
    if !f.block.image().supports_discard() {
        return;
    }
    f.block.image.disable_zero_range();
    assert_eq!(f.discard(VIRTIO_BLK_T_WRITE_ZEROES, &[(4, 4, 0)]), (1, OK));
    let file = f.contents();
    assert!(file[4 * 512..8 * 512].iter().all(|&b| b == 0));
    assert_eq!(&file[8 * 512..], &f.original[8 * 512..]);
}

#[test]
fn bad_discard_requests_change_nothing() {
    let mut f = Fixture::new(32, false);
    if !f.block.image().supports_discard() {
        return;
    }
    let unmap = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
    type Case<'a> = (u32, &'a [(u64, u32, u32)], u8);
    let cases: &[Case] = &[
        // Beyond the end, partly beyond, overflowing.
        (VIRTIO_BLK_T_DISCARD, &[(32, 1, 0)], IOERR),
        (VIRTIO_BLK_T_DISCARD, &[(0, 1, 0), (30, 4, 0)], IOERR),
        (VIRTIO_BLK_T_DISCARD, &[(u64::MAX / 512, 1, 0)], IOERR),
        (VIRTIO_BLK_T_WRITE_ZEROES, &[(u64::MAX, u32::MAX, 0)], IOERR),
        // Unknown flags; UNMAP on a discard.
        (VIRTIO_BLK_T_DISCARD, &[(0, 1, unmap)], UNSUPP),
        (VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 1, 2)], UNSUPP),
        // Too large.
        (VIRTIO_BLK_T_DISCARD, &[(0, u32::MAX, 0)], IOERR),
    ];
    for (t, ranges, want) in cases {
        assert_eq!(f.discard(*t, ranges), (1, *want), "{t} {ranges:?}");
    }
    // Too many ranges, and a payload that is not whole ranges.
    let many = vec![(0u64, 1u32, 0u32); MAX_DISCARD_SEG as usize + 1];
    assert_eq!(f.discard(VIRTIO_BLK_T_DISCARD, &many), (1, IOERR));
    assert_eq!(
        f.request(VIRTIO_BLK_T_DISCARD, 0, Buf::r(BUF, 15)),
        (1, IOERR)
    );
    f.header(VIRTIO_BLK_T_DISCARD, 0);
    f.submit(&[Buf::r(HDR, 16), Buf::w(STATUS, 1)]);
    assert_eq!(f.status(), IOERR, "discard without ranges");
    f.assert_unchanged();
}

// ---- hostile chains ----

/// Runs `bufs` (header already written) and checks: IOERR in the status
/// byte, used length 1, file unchanged.
fn assert_ioerr(f: &mut Fixture, bufs: &[Buf]) {
    let len = f.submit(bufs);
    assert_eq!((len, f.status()), (1, IOERR), "{bufs:?}");
    f.assert_unchanged();
}

#[test]
fn buffers_outside_guest_memory_get_ioerr() {
    let mut f = Fixture::new(16, false);
    for bad in [
        RAM_END,
        RAM_END - 256,
        HOLE,
        HOLE_END - 1,
        HOLE - 256,
        u64::MAX - 100,
        u64::MAX,
    ] {
        f.header(VIRTIO_BLK_T_OUT, 0);
        assert_ioerr(
            &mut f,
            &[Buf::r(HDR, 16), Buf::r(bad, 512), Buf::w(STATUS, 1)],
        );
        f.header(VIRTIO_BLK_T_IN, 0);
        assert_ioerr(
            &mut f,
            &[Buf::r(HDR, 16), Buf::w(bad, 512), Buf::w(STATUS, 1)],
        );
    }
    // The header itself (partly) outside RAM.
    for bad in [
        RAM_END - 8,
        RAM_END,
        HOLE - 8,
        HOLE,
        HOLE_END - 1,
        u64::MAX - 8,
    ] {
        assert_ioerr(&mut f, &[Buf::r(bad, 16), Buf::w(STATUS, 1)]);
    }
    // A status byte outside RAM: nothing to write, the chain still
    // comes back, with length 0, and nothing happens to the file.
    f.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        f.submit(&[Buf::r(HDR, 16), Buf::r(BUF, 512), Buf::w(RAM_END, 1)]),
        0
    );
    f.assert_unchanged();
}

#[test]
fn looping_chains_get_ioerr() {
    let mut f = Fixture::new(16, false);
    f.header(VIRTIO_BLK_T_IN, 0);
    // 0 -> 1 -> 2 -> 1 -> 2 ...
    f.d.write_desc(0, Buf::r(HDR, 16), F_NEXT, 1);
    f.d.write_desc(1, Buf::w(BUF, 512), F_NEXT, 2);
    f.d.write_desc(2, Buf::w(STATUS, 1), F_NEXT, 1);
    f.d.publish(0);
    f.d.kick(&mut f.block);
    assert_eq!(f.d.take_used(), vec![(0, 1)]);
    // The walk stops wherever the iterator's budget runs out; the error
    // goes to the last writable byte it saw (here the data buffer's).
    assert!(f.status() == IOERR || f.read_mem(BUF + 511, 1) == [IOERR]);
    // 3 -> 4 -> 3 -> 4 ...: ends on the status descriptor.
    f.d.write_desc(3, Buf::r(HDR, 16), F_NEXT, 4);
    f.d.write_desc(4, Buf::w(STATUS, 1), F_NEXT, 3);
    f.d.publish(3);
    f.fill(STATUS, 1, 0xee);
    f.d.kick(&mut f.block);
    assert_eq!(f.d.take_used(), vec![(3, 1)]);
    assert_eq!(f.status(), IOERR);
    // A descriptor pointing at itself.
    f.d.write_desc(5, Buf::w(STATUS, 1), F_NEXT, 5);
    f.d.publish(5);
    f.fill(STATUS, 1, 0xee);
    f.d.kick(&mut f.block);
    assert_eq!(f.d.take_used(), vec![(5, 1)]);
    assert_eq!(f.status(), IOERR);
    f.assert_unchanged();
}

#[test]
fn next_index_beyond_the_table_gets_ioerr() {
    let mut f = Fixture::with_queue(16, false, 16, false);
    f.header(VIRTIO_BLK_T_OUT, 0);
    f.d.write_desc(0, Buf::r(HDR, 16), F_NEXT, 1);
    f.d.write_desc(1, Buf::r(BUF, 512), F_NEXT, 2);
    f.d.write_desc(2, Buf::w(STATUS, 1), F_NEXT, 300);
    f.d.publish(0);
    f.d.kick(&mut f.block);
    assert_eq!(f.d.take_used(), vec![(0, 1)]);
    assert_eq!(f.status(), IOERR);
    f.assert_unchanged();
}

#[test]
fn chains_longer_than_the_queue_get_ioerr() {
    let mut f = Fixture::new(16, false);
    // An indirect table of 300 descriptors: more than a queue holds.
    let table = DATA + 0x8000;
    f.header(VIRTIO_BLK_T_OUT, 0);
    f.d.write_desc_at(table, 0, Buf::r(HDR, 16), F_NEXT, 1);
    for i in 1..299u16 {
        f.d.write_desc_at(table, i, Buf::r(BUF, 512), F_NEXT, i + 1);
    }
    f.d.write_desc_at(table, 299, Buf::w(STATUS, 1), 0, 0);
    f.d.write_desc(0, Buf::r(table, 300 * 16), F_INDIRECT, 0);
    f.d.publish(0);
    f.d.kick(&mut f.block);
    assert_eq!(f.d.take_used(), vec![(0, 1)]);
    assert_eq!(f.status(), IOERR);
    f.assert_unchanged();
}

#[test]
fn bad_indirect_tables_are_returned() {
    let mut f = Fixture::new(16, false);
    // Length not a multiple of 16, and a table outside RAM.
    f.d.write_desc(0, Buf::r(DATA + 0x8000, 20), F_INDIRECT, 0);
    f.d.write_desc(1, Buf::r(RAM_END + 0x1000, 32), F_INDIRECT, 0);
    f.d.publish(0);
    f.d.publish(1);
    f.d.kick(&mut f.block);
    assert_eq!(f.d.take_used(), vec![(0, 0), (1, 0)]);
    // A nested indirect descriptor.
    let table = DATA + 0x8000;
    f.header(VIRTIO_BLK_T_IN, 0);
    f.d.write_desc_at(table, 0, Buf::r(HDR, 16), F_NEXT, 1);
    f.d.write_desc_at(table, 1, Buf::w(STATUS, 1), F_NEXT, 2);
    f.d.write_desc_at(table, 2, Buf::r(table, 48), F_INDIRECT, 0);
    f.d.write_desc(2, Buf::r(table, 48), F_INDIRECT, 0);
    f.d.publish(2);
    f.fill(STATUS, 1, 0xee);
    f.d.kick(&mut f.block);
    assert_eq!(f.d.take_used(), vec![(2, 1)]);
    assert_eq!(f.status(), IOERR);
    f.assert_unchanged();
}

#[test]
fn header_in_a_writable_descriptor_gets_ioerr() {
    let mut f = Fixture::new(16, false);
    f.header(VIRTIO_BLK_T_OUT, 0);
    assert_ioerr(
        &mut f,
        &[Buf::w(HDR, 16), Buf::w(BUF, 512), Buf::w(STATUS, 1)],
    );
    // A header shorter than 16 bytes.
    assert_ioerr(&mut f, &[Buf::r(HDR, 8), Buf::w(STATUS, 1)]);
}

#[test]
fn data_in_the_wrong_direction_gets_ioerr() {
    let mut f = Fixture::new(16, false);
    f.fill(BUF, 512, 0x77);
    // A write whose data the device would have to write.
    f.header(VIRTIO_BLK_T_OUT, 1);
    assert_ioerr(
        &mut f,
        &[Buf::r(HDR, 16), Buf::w(BUF, 512), Buf::w(STATUS, 1)],
    );
    // A read whose data is device-readable.
    f.header(VIRTIO_BLK_T_IN, 1);
    assert_ioerr(
        &mut f,
        &[Buf::r(HDR, 16), Buf::r(BUF, 512), Buf::w(STATUS, 1)],
    );
    assert_eq!(
        f.read_mem(BUF, 512),
        vec![0x77; 512],
        "guest buffer untouched"
    );
}

#[test]
fn missing_or_read_only_status_still_returns_the_chain() {
    let mut f = Fixture::new(16, false);
    f.fill(BUF, 512, 0x77);
    // No writable byte at all: used length 0, and the write is not done.
    f.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(f.submit(&[Buf::r(HDR, 16), Buf::r(BUF, 512)]), 0);
    assert_eq!(
        f.submit(&[Buf::r(HDR, 16), Buf::r(BUF, 512), Buf::r(STATUS, 1)]),
        0
    );
    assert_eq!(
        f.submit(&[Buf::r(HDR, 16), Buf::r(BUF, 512), Buf::w(STATUS, 0)]),
        0
    );
    f.assert_unchanged();
    // A read with a read-only status descriptor: the error lands in the
    // last writable byte there is.
    f.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        f.submit(&[Buf::r(HDR, 16), Buf::w(BUF, 512), Buf::r(STATUS, 1)]),
        1
    );
    assert_eq!(f.read_mem(BUF + 511, 1), vec![IOERR]);
    // Missing status on a read: the data's last byte is the status, and
    // 511 bytes is not whole sectors.
    f.fill(BUF, 512, 0x77);
    assert_eq!(f.submit(&[Buf::r(HDR, 16), Buf::w(BUF, 512)]), 1);
    assert_eq!(f.read_mem(BUF + 511, 1), vec![IOERR]);
    f.assert_unchanged();
}

#[test]
fn sectors_beyond_the_end_get_ioerr() {
    let mut f = Fixture::new(16, false);
    for (sector, len) in [
        (16, 512),
        (15, 1024),
        (0, 16 * 512 + 512),
        (u64::MAX, 512),
        (u64::MAX / 512, 512),
        (u64::MAX / 512 + 1, 512),
        (1 << 55, 512),
    ] {
        assert_eq!(f.write(sector, len), (1, IOERR), "write {sector} {len}");
        assert_eq!(f.read(sector, len), (1, IOERR), "read {sector} {len}");
    }
    // The last sector is fine.
    assert_eq!(f.read(15, 512), (513, OK));
    f.assert_unchanged();
}

#[test]
fn lengths_that_are_not_whole_sectors_get_ioerr() {
    let mut f = Fixture::new(16, false);
    for len in [1, 100, 511, 513, 1000] {
        assert_eq!(f.write(0, len), (1, IOERR), "write {len}");
        assert_eq!(f.read(0, len), (1, IOERR), "read {len}");
    }
    f.assert_unchanged();
}

#[test]
fn bad_head_indexes_and_avail_indexes_do_not_stop_the_queue() {
    let mut f = Fixture::with_queue(16, false, 16, false);
    // Heads outside the table cannot be returned; they are skipped.
    f.d.publish(16);
    f.d.publish(u16::MAX);
    f.d.kick(&mut f.block);
    assert!(f.d.take_used().is_empty());
    // Then a good request goes through.
    assert_eq!(f.read(0, 512), (513, OK));

    // An available index far ahead of what was published: refused
    // without a hang; once the driver behaves again, work goes on.
    f.d.set_avail_idx(f.d.used_idx().wrapping_add(1000));
    assert!(!f.d.kick(&mut f.block));
    assert!(f.d.take_used().is_empty());
    let idx = f.d.used_idx();
    f.d.set_avail_idx(idx);
    assert_eq!(f.read(1, 512), (513, OK));
    assert_eq!(f.read_mem(BUF, 512), expected_sectors(1, 1));
}

#[test]
fn zero_length_descriptors_are_skipped() {
    let mut f = Fixture::new(16, false);
    f.header(VIRTIO_BLK_T_IN, 4);
    let len = f.submit(&[
        Buf::r(RAM_END + 0x1000, 0),
        Buf::r(HDR, 16),
        Buf::w(BUF, 0),
        Buf::w(BUF, 512),
        Buf::w(STATUS, 1),
    ]);
    assert_eq!((len, f.status()), (513, OK));
    assert_eq!(f.read_mem(BUF, 512), expected_sectors(4, 1));
}

#[test]
fn hostile_requests_are_counted() {
    let mut f = Fixture::new(16, false);
    for _ in 0..50 {
        f.header(VIRTIO_BLK_T_IN, 0);
        f.submit(&[Buf::w(HDR, 16), Buf::w(STATUS, 1)]);
    }
    assert_eq!(f.block.stats.malformed, 50);
    let stats = f.block.stats().unwrap();
    assert!(stats.contains("50 errors (50 malformed)"), "{stats}");
    // The rate limiter let a burst through and counted the rest.
    assert_eq!(f.block.limiter.shown, LogLimiter::BURST);
    assert_eq!(f.block.limiter.suppressed, 40);
}

// ---- notifications ----

#[test]
fn without_event_idx_every_completion_interrupts() {
    let mut f = Fixture::new(8, false);
    f.header(VIRTIO_BLK_T_IN, 0);
    f.d.add_chain(&[Buf::r(HDR, 16), Buf::w(BUF, 512), Buf::w(STATUS, 1)]);
    assert!(f.d.kick(&mut f.block));
    // A kick with nothing new adds nothing and does not interrupt.
    assert!(!f.d.kick(&mut f.block));
}

#[test]
fn event_idx_interrupts_only_when_the_driver_asked() {
    let mut f = Fixture::with_queue(8, false, 16, true);
    f.header(VIRTIO_BLK_T_IN, 0);
    // The driver wants an interrupt after the used index passes 2.
    f.d.set_used_event(2);
    f.d.add_chain(&[Buf::r(HDR, 16), Buf::w(BUF, 512), Buf::w(STATUS, 1)]);
    assert!(!f.d.kick(&mut f.block), "used 1: not yet");
    assert_eq!(f.d.avail_event(), 1, "device asks for the next kick");
    f.d.add_chain(&[Buf::r(HDR, 16), Buf::w(BUF, 512), Buf::w(STATUS, 1)]);
    assert!(!f.d.kick(&mut f.block), "used 2: not yet");
    f.d.add_chain(&[Buf::r(HDR, 16), Buf::w(BUF, 512), Buf::w(STATUS, 1)]);
    assert!(f.d.kick(&mut f.block), "used 3 passes used_event 2");
    assert_eq!(f.d.avail_event(), 3);
    assert_eq!(f.d.take_used().len(), 3);
}

#[test]
fn only_queue_zero_exists() {
    let mut f = Fixture::new(8, false);
    assert!(!f.block.process_queue(1, &mut f.d.queues, &f.d.mem));
    let mut none: [Queue; 0] = [];
    assert!(!f.block.process_queue(0, &mut none, &f.d.mem));
}

// ---- mini fuzz ----

/// A random buffer: mostly plausible, sometimes hostile.
fn random_buf(rng: &mut Rng, write: bool) -> Buf {
    if rng.chance(2) {
        let sectors = 1 + rng.below(8);
        let addr = DATA + 0x4000 + rng.below(0x8000);
        return Buf {
            addr,
            len: (sectors * 512) as u32,
            write,
        };
    }
    let addr = match rng.below(20) {
        0 => RAM_END - rng.below(64),
        1 => HOLE - rng.below(64),
        2 => u64::MAX - rng.below(4096),
        3 => SPLIT_BUF,
        // The rings and descriptor table: only for the device to read, as
        // writes there would (legitimately) scramble the queue and with
        // it this test's bookkeeping.
        4 if !write => rng.below(0x3000),
        _ => DATA + 0x100 + rng.below(0x10000),
    };
    let len = match rng.below(6) {
        0 => rng.below(16) as u32,
        1 => 16,
        2 => 1,
        3 => u32::MAX - rng.below(16) as u32,
        _ => 512 * (1 + rng.below(8)) as u32 + if rng.chance(8) { 1 } else { 0 },
    };
    Buf { addr, len, write }
}

/// Writes a random header (type mostly valid, sector mostly near the
/// disk) at `at`; returns whether its data is device-writable.
fn random_header(rng: &mut Rng, mem: &Memory, at: u64, sectors: u64) -> bool {
    const TYPES: [u32; 8] = [
        VIRTIO_BLK_T_IN,
        VIRTIO_BLK_T_OUT,
        VIRTIO_BLK_T_FLUSH,
        VIRTIO_BLK_T_GET_ID,
        VIRTIO_BLK_T_DISCARD,
        VIRTIO_BLK_T_WRITE_ZEROES,
        VIRTIO_BLK_T_SCSI_CMD,
        77,
    ];
    let t = TYPES[rng.below(8) as usize];
    let sector = match rng.below(8) {
        0 => u64::MAX - rng.below(4),
        1 => sectors + rng.below(4),
        _ => rng.below(sectors),
    };
    let mut raw = [0u8; 16];
    raw[0..4].copy_from_slice(&t.to_le_bytes());
    raw[8..16].copy_from_slice(&sector.to_le_bytes());
    let _ = mem.write_slice(&raw, GuestAddress(at));
    // Discard payloads read from anywhere in the data area: sprinkle
    // plausible ranges there too.
    let mut range = [0u8; 16];
    range[0..8].copy_from_slice(&rng.below(sectors + 2).to_le_bytes());
    range[8..12].copy_from_slice(&(rng.below(4) as u32).to_le_bytes());
    range[12..16].copy_from_slice(&(rng.below(3) as u32).to_le_bytes());
    let _ = mem.write_slice(&range, GuestAddress(DATA + 0x100 + rng.below(0x10000)));
    t == VIRTIO_BLK_T_IN || t == VIRTIO_BLK_T_GET_ID
}

/// Runs `rounds` batches of random chains through a device and checks it
/// never panics or hangs, returns every valid head exactly once, writes
/// only valid status values, and (read-only) never changes the file.
fn mini_fuzz(seed: u64, read_only: bool, rounds: usize) {
    let sectors = 64;
    let mut rng = Rng(seed);
    let mut f = Fixture::with_queue(sectors, read_only, 64, seed.is_multiple_of(2));
    let size = f.d.size();
    let mut chains = 0;
    for _ in 0..rounds {
        let batch = 1 + rng.below(8) as usize;
        let mut expected = Vec::new();
        let mut slot = rng.below(u64::from(size)) as u16;
        for _ in 0..batch {
            let hdr = DATA + 0x100 + rng.below(0x400) * 16;
            let data_write = random_header(&mut rng, &f.d.mem, hdr, sectors);
            let n = if rng.chance(2) {
                3
            } else {
                1 + rng.below(6) as usize
            };
            let head = slot;
            for i in 0..n {
                let last = i + 1 == n;
                let mut b = match i {
                    0 if !rng.chance(10) => Buf::r(hdr, 16),
                    _ if last && !rng.chance(10) => Buf::w(hdr + 16, 1),
                    _ => {
                        let write = data_write != rng.chance(10);
                        random_buf(&mut rng, write)
                    }
                };
                if rng.chance(30) {
                    b.write = !b.write;
                }
                let mut flags = if last { 0 } else { F_NEXT };
                let mut next = (slot + 1) % size;
                if rng.chance(40) {
                    flags |= F_NEXT;
                    next = rng.below(u64::from(size) + 4) as u16;
                }
                if rng.chance(60) {
                    flags |= F_INDIRECT;
                }
                f.d.write_desc(slot, b, flags, next);
                slot = (slot + 1) % size;
            }
            let head = if rng.chance(50) {
                size + rng.below(4) as u16
            } else {
                head
            };
            f.d.publish(head);
            if head < size {
                expected.push(u32::from(head));
            }
            chains += 1;
        }
        f.d.set_used_event(rng.below(u64::from(size)) as u16);
        f.d.kick(&mut f.block);
        let used = f.d.take_used();
        let heads: Vec<u32> = used.iter().map(|u| u.0).collect();
        assert_eq!(
            heads, expected,
            "seed {seed}: every valid head once, in order"
        );
    }
    assert!(chains > 0);
    if read_only {
        f.assert_unchanged();
    }
    assert_eq!(
        f.contents().len() as u64,
        sectors * 512,
        "size never changes"
    );
}

#[test]
fn mini_fuzz_random_chains_read_write() {
    for seed in 1..=4u64 {
        mini_fuzz(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), false, 500);
    }
}

#[test]
fn mini_fuzz_random_chains_read_only() {
    for seed in 1..=4u64 {
        mini_fuzz(seed.wrapping_mul(0xd1b5_4a32_d192_ed03), true, 500);
    }
}

#[test]
fn mini_fuzz_raw_bytes_through_the_fuzz_target() {
    let file = image_file(16);
    let ro_file = image_file(16);
    let ro_original = std::fs::read(ro_file.path()).unwrap();
    let mut rw = Block::new(DiskImage::open(file.path(), false, None).unwrap());
    let mut ro = Block::new(DiskImage::open(ro_file.path(), true, None).unwrap());
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for i in 0..2000 {
        let len = rng.below(2048) as usize;
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        driver::run(if i % 2 == 0 { &mut rw } else { &mut ro }, &data);
    }
    assert_eq!(std::fs::read(ro_file.path()).unwrap(), ro_original);
}

#[test]
fn a_write_in_flight_across_a_snapshot_lands_exactly_once() {
    use crate::virtio::mmio::QueueSnapshot;
    let mut f = Fixture::new(16, false);
    // A write the device finished before the snapshot...
    f.fill(BUF, 512, 0x11);
    assert_eq!(f.write(1, 512), (1, OK));
    // ...and one the driver published whose notification the old process
    // took with it: in flight at the snapshot.
    f.header(VIRTIO_BLK_T_OUT, 2);
    f.fill(BUF, 512, 0x22);
    f.fill(STATUS, 1, 0xee);
    let head =
        f.d.add_chain(&[Buf::r(HDR, 16), Buf::r(BUF, 512), Buf::w(STATUS, 1)]);
    let saved = QueueSnapshot::from(f.d.queues[0].state());

    // The restored VM: a new device on the same image (the old one let go
    // of its lock), the queue rebuilt from the saved state, same memory.
    let other = image_file(1);
    drop(std::mem::replace(
        &mut f.block,
        Block::new(DiskImage::open(other.path(), true, None).unwrap()),
    ));
    f.block = Block::new(DiskImage::open(f.file.path(), false, Some("kiln-test")).unwrap());
    f.d.queues[0] = Queue::try_from(virtio_queue::QueueState::from(saved)).unwrap();
    f.d.kick(&mut f.block);
    assert_eq!(
        f.d.take_used(),
        [(u32::from(head), 1)],
        "served once, after the restore"
    );
    assert_eq!(f.status(), OK);
    f.d.kick(&mut f.block);
    assert!(f.d.take_used().is_empty(), "and never again");
    let image = f.contents();
    assert!(
        image[512..1024].iter().all(|&b| b == 0x11),
        "the earlier write kept"
    );
    assert!(
        image[1024..1536].iter().all(|&b| b == 0x22),
        "the in-flight write landed"
    );
    assert!(
        image[1536..2048]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern(3, i)),
        "nothing else written"
    );
}
