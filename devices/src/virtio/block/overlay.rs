//! The copy-on-write layer of a disk opened with `snapshot` (QEMU's
//! `snapshot=on`): the image itself is opened read-only (and shared), the
//! guest's writes go to an anonymous temporary file of the same size, and
//! a bitmap says which 512-byte sectors live there. The file is unnamed
//! from the start (O_TMPFILE, in `$TMPDIR`), sparse, and gone when kiln
//! exits, however it exits.

use std::fs::File;
use std::io;

use super::SECTOR_SIZE;

/// The layer: the temporary file and which sectors it holds.
#[derive(Debug)]
pub struct Overlay {
    file: File,
    written: Vec<u64>,
    sectors: u64,
    /// Sectors written at least once (for the stats line).
    count: u64,
}

/// One piece of a byte range: where it starts, its length, and whether it
/// is read from the layer (true) or from the image (false).
pub type Run = (u64, u64, bool);

impl Overlay {
    /// A layer for an image of `size` bytes (a multiple of 512).
    pub fn new(size: u64) -> io::Result<Overlay> {
        let file = tempfile::tempfile()?;
        file.set_len(size)?;
        let sectors = size / SECTOR_SIZE;
        Ok(Overlay {
            file,
            written: vec![0; sectors.div_ceil(64) as usize],
            sectors,
            count: 0,
        })
    }

    /// The temporary file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Sectors the guest has written.
    pub fn written_sectors(&self) -> u64 {
        self.count
    }

    fn is_written(&self, sector: u64) -> bool {
        self.written[(sector / 64) as usize] & (1 << (sector % 64)) != 0
    }

    /// Records that `[offset, offset + len)` was written to the layer; a
    /// sector touched at all counts (a request always covers whole
    /// sectors, even when its buffers split them).
    pub fn mark(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let last = ((offset + len - 1) / SECTOR_SIZE).min(self.sectors.saturating_sub(1));
        for s in offset / SECTOR_SIZE..=last {
            if !self.is_written(s) {
                self.written[(s / 64) as usize] |= 1 << (s % 64);
                self.count += 1;
            }
        }
    }

    /// Splits `[offset, offset + len)` into runs that come wholly from the
    /// layer or wholly from the image, in order.
    pub fn runs(&self, offset: u64, len: u64) -> Vec<Run> {
        let mut runs: Vec<Run> = Vec::new();
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let sector = at / SECTOR_SIZE;
            let here = sector < self.sectors && self.is_written(sector);
            let next = ((sector + 1) * SECTOR_SIZE).min(end);
            match runs.last_mut() {
                Some((_, l, w)) if *w == here => *l += next - at,
                _ => runs.push((at, next - at, here)),
            }
            at = next;
        }
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwritten_ranges_come_from_the_image() {
        let o = Overlay::new(8 * SECTOR_SIZE).unwrap();
        assert_eq!(o.runs(0, 4096), [(0, 4096, false)]);
        assert_eq!(o.written_sectors(), 0);
    }

    #[test]
    fn written_sectors_come_from_the_layer_in_runs() {
        let mut o = Overlay::new(8 * SECTOR_SIZE).unwrap();
        // Sectors 2-3, written through buffers that split sector 2.
        o.mark(1024, 100);
        o.mark(1124, 924);
        assert_eq!(o.written_sectors(), 2);
        assert_eq!(
            o.runs(0, 4096),
            [(0, 1024, false), (1024, 1024, true), (2048, 2048, false)]
        );
        // A range starting inside a written sector.
        assert_eq!(o.runs(1500, 1000), [(1500, 548, true), (2048, 452, false)]);
        o.mark(0, 4096);
        assert_eq!(o.runs(0, 4096), [(0, 4096, true)]);
        assert_eq!(o.written_sectors(), 8);
    }

    #[test]
    fn the_layer_is_a_sparse_unnamed_file_of_the_image_size() {
        let o = Overlay::new(1 << 30).unwrap();
        let meta = o.file().metadata().unwrap();
        assert_eq!(meta.len(), 1 << 30);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() < 64, "sparse: {} blocks", meta.blocks());
        assert_eq!(meta.nlink(), 0, "no name anywhere");
    }
}
