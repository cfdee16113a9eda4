//! Feeds the virtio-mmio transport register accesses in any order, with
//! any width and value, between guest-memory writes and queue
//! notifications (see `devices::virtio::mmio_fuzz::run`), with a
//! virtio-blk device behind it on a 16-sector image. Each input gets a
//! fresh transport; half of them a read-only disk, whose image must stay
//! bit-identical.
//!
//!     cd devices/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run mmio_transport

#![no_main]

use std::sync::OnceLock;

use devices::virtio::block::{Block, DiskImage};
use devices::virtio::mmio_fuzz;
use libfuzzer_sys::fuzz_target;

struct Images {
    rw: tempfile::NamedTempFile,
    ro: tempfile::NamedTempFile,
    ro_original: Vec<u8>,
}

fn image() -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().expect("temp image");
    let data: Vec<u8> = (0..16 * 512).map(|i| (i * 7 + i / 512) as u8).collect();
    std::fs::write(f.path(), data).expect("write image");
    f
}

fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let (rw, ro) = (image(), image());
        let ro_original = std::fs::read(ro.path()).expect("read image");
        Images {
            rw,
            ro,
            ro_original,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let images = images();
    let read_only = data.first().is_some_and(|b| b & 0x80 != 0);
    let file = if read_only { &images.ro } else { &images.rw };
    let disk = DiskImage::open(file.path(), read_only, Some("fuzz")).expect("image opens");
    let (mut transport, mem) = mmio_fuzz::transport(Box::new(Block::new(disk)));
    mmio_fuzz::run(&mut transport, &mem, data.get(1..).unwrap_or_default());
    drop(transport);
    if read_only {
        let now = std::fs::read(images.ro.path()).expect("read image");
        assert!(now == images.ro_original, "read-only image modified");
    }
});
