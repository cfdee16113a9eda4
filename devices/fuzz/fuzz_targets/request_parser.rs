//! Feeds the virtio-blk request parser random queues: the input becomes a
//! descriptor table, available ring and data area in a small guest memory
//! (see `devices::virtio::block::driver::run`), and a virtio-blk device
//! processes them against a 16-sector image. Half the inputs go to a
//! read-only disk, whose image must stay bit-identical.
//!
//!     cd devices/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run request_parser

#![no_main]

use std::sync::{Mutex, OnceLock};

use devices::virtio::block::{driver, Block, DiskImage};
use libfuzzer_sys::fuzz_target;

struct Disks {
    rw: Block,
    ro: Block,
    ro_original: Vec<u8>,
    // Kept alive so the files exist while the devices use them.
    files: (tempfile::NamedTempFile, tempfile::NamedTempFile),
}

fn image() -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().expect("temp image");
    let data: Vec<u8> = (0..16 * 512).map(|i| (i * 7 + i / 512) as u8).collect();
    std::fs::write(f.path(), data).expect("write image");
    f
}

fn disks() -> &'static Mutex<Disks> {
    static DISKS: OnceLock<Mutex<Disks>> = OnceLock::new();
    DISKS.get_or_init(|| {
        let (rw_file, ro_file) = (image(), image());
        let ro_original = std::fs::read(ro_file.path()).expect("read image");
        let rw = Block::new(DiskImage::open(rw_file.path(), false, None).expect("rw image"));
        let ro = Block::new(DiskImage::open(ro_file.path(), true, None).expect("ro image"));
        Mutex::new(Disks {
            rw,
            ro,
            ro_original,
            files: (rw_file, ro_file),
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let mut disks = disks().lock().unwrap_or_else(|e| e.into_inner());
    let read_only = data.first().is_some_and(|b| b & 0x80 != 0);
    if read_only {
        driver::run(&mut disks.ro, data);
        let now = std::fs::read(disks.files.1.path()).expect("read image");
        assert!(now == disks.ro_original, "read-only image modified");
    } else {
        driver::run(&mut disks.rw, data);
    }
});
