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

    /// A layer as `saved` was, its data read from `data` (a copy of the
    /// saved layer's file, see [`Overlay::copy_to`]): a new temporary file
    /// with the written sectors copied in, so this VM's writes never reach
    /// `data`, which other VMs may restore from too.
    pub fn restore(size: u64, written: &[u64], data: &File) -> io::Result<Overlay> {
        let mut o = Overlay::new(size)?;
        if written.len() != o.written.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the saved layer is for {} sectors, the disk has {}",
                    written.len() * 64,
                    o.sectors
                ),
            ));
        }
        o.written = written.to_vec();
        o.count = written.iter().map(|w| u64::from(w.count_ones())).sum();
        o.copy_runs(data, &o.file)?;
        Ok(o)
    }

    /// Which sectors are written, 64 to a word (what a snapshot keeps).
    pub fn written(&self) -> &[u64] {
        &self.written
    }

    /// Copies the written sectors to `to` (a file of its own, left sparse
    /// elsewhere) for a snapshot.
    pub fn copy_to(&self, to: &File) -> io::Result<()> {
        to.set_len(self.sectors * SECTOR_SIZE)?;
        self.copy_runs(&self.file, to)
    }

    /// Copies every run of written sectors from `from` to `to` at the same
    /// offsets.
    fn copy_runs(&self, from: &File, to: &File) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; 1 << 20];
        for (at, len, layered) in self.runs(0, self.sectors * SECTOR_SIZE) {
            if !layered {
                continue;
            }
            let mut done = 0;
            while done < len {
                let n = (len - done).min(buf.len() as u64) as usize;
                from.read_exact_at(&mut buf[..n], at + done)?;
                to.write_all_at(&buf[..n], at + done)?;
                done += n as u64;
            }
        }
        Ok(())
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
    fn a_layer_is_saved_and_restored_into_a_file_of_its_own() {
        use std::os::unix::fs::FileExt;
        let mut o = Overlay::new(64 * SECTOR_SIZE).unwrap();
        o.file()
            .write_all_at(&[7u8; 1024], 3 * SECTOR_SIZE)
            .unwrap();
        o.mark(3 * SECTOR_SIZE, 1024);
        o.file()
            .write_all_at(&[9u8; 512], 63 * SECTOR_SIZE)
            .unwrap();
        o.mark(63 * SECTOR_SIZE, 512);
        let saved = tempfile::tempfile().unwrap();
        o.copy_to(&saved).unwrap();
        let mut r = Overlay::restore(64 * SECTOR_SIZE, o.written(), &saved).unwrap();
        assert_eq!(r.written_sectors(), 3);
        assert_eq!(r.runs(0, 64 * SECTOR_SIZE), o.runs(0, 64 * SECTOR_SIZE));
        let mut b = [0u8; 1024];
        r.file().read_exact_at(&mut b, 3 * SECTOR_SIZE).unwrap();
        assert_eq!(b, [7u8; 1024]);
        // The restored layer's writes stay its own.
        r.file().write_all_at(&[1u8; 512], 3 * SECTOR_SIZE).unwrap();
        r.mark(3 * SECTOR_SIZE, 512);
        saved.read_exact_at(&mut b[..512], 3 * SECTOR_SIZE).unwrap();
        assert_eq!(b[..512], [7u8; 512]);
        assert!(Overlay::restore(128 * SECTOR_SIZE, o.written(), &saved).is_err());
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
