//! The host side of a virtio-blk disk: an image file (or block device),
//! opened, sized, locked and probed once, then read and written at byte
//! offsets straight from and into guest memory.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice, WriteVolatile};
use vmm_sys_util::fallocate::{fallocate, FallocateMode};

use super::overlay::Overlay;
use super::{BlockError, ID_BYTES, SECTOR_SIZE};

/// An open, locked disk image.
#[derive(Debug)]
pub struct DiskImage {
    file: File,
    path: PathBuf,
    label: String,
    size: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
    punch_hole: bool,
    /// Cleared the first time FALLOC_FL_ZERO_RANGE is refused; WRITE_ZEROES
    /// then writes zeros instead.
    zero_range: bool,
    /// A `snapshot` disk's copy-on-write layer: the file above is then
    /// open read-only and never written.
    overlay: Option<Overlay>,
}

impl DiskImage {
    /// Opens the image at `path` for a virtio-blk disk.
    ///
    /// The file is opened read-write (read-only when `read_only`), must be
    /// a non-empty regular file or block device whose size is a multiple
    /// of 512 bytes, and is locked with `flock`: exclusively when
    /// read-write, shared when read-only, so that two kiln processes never
    /// write one image. `id` is what the guest reads with GET_ID (at most
    /// 20 bytes); without it the id is derived from the file's device and
    /// inode numbers, stable for as long as the file exists.
    pub fn open(path: &Path, read_only: bool, id: Option<&str>) -> Result<DiskImage, BlockError> {
        let owned = || path.to_path_buf();
        if let Some(id) = id {
            if id.len() > ID_BYTES {
                return Err(BlockError::Id {
                    path: owned(),
                    id: id.to_string(),
                });
            }
        }
        // Look before opening: opening a FIFO would block.
        if let Ok(meta) = std::fs::metadata(path) {
            let kind = meta.file_type();
            if !kind.is_file() && !kind.is_block_device() {
                return Err(BlockError::FileType { path: owned() });
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| {
                // Tell "cannot write" apart from "cannot open at all": if a
                // read-only open works, only write access is missing.
                if !read_only
                    && source.raw_os_error() != Some(libc::EISDIR)
                    && File::open(path).is_ok()
                {
                    BlockError::OpenWritable {
                        path: owned(),
                        source,
                    }
                } else {
                    BlockError::Open {
                        path: owned(),
                        source,
                    }
                }
            })?;
        let meta = file.metadata().map_err(|source| BlockError::Size {
            path: owned(),
            source,
        })?;
        let kind = meta.file_type();
        let size = if kind.is_file() {
            meta.len()
        } else if kind.is_block_device() {
            (&file)
                .seek(SeekFrom::End(0))
                .map_err(|source| BlockError::Size {
                    path: owned(),
                    source,
                })?
        } else {
            return Err(BlockError::FileType { path: owned() });
        };
        if size == 0 {
            return Err(BlockError::Empty { path: owned() });
        }
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(BlockError::SizeAlignment {
                path: owned(),
                size,
            });
        }

        let locked = if read_only {
            file.try_lock_shared()
        } else {
            file.try_lock()
        };
        match locked {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(BlockError::Locked {
                    path: owned(),
                    holder: lock_holder(meta.dev(), meta.ino()),
                    wanted: if read_only {
                        "a shared"
                    } else {
                        "an exclusive"
                    },
                })
            }
            Err(TryLockError::Error(source)) => {
                return Err(BlockError::Lock {
                    path: owned(),
                    source,
                })
            }
        }

        let id_bytes = match id {
            Some(id) => pad_id(id.as_bytes()),
            None => pad_id(format!("{:x}-{:x}", meta.dev(), meta.ino()).as_bytes()),
        };
        // Punching a hole past the end with KEEP_SIZE changes nothing but
        // tells whether the file system can deallocate ranges at all.
        let punch_hole = !read_only
            && fallocate(&file, FallocateMode::PunchHole, true, size, SECTOR_SIZE).is_ok();

        let label = match id {
            Some(id) => id.to_string(),
            None => path
                .file_name()
                .unwrap_or(path.as_os_str())
                .to_string_lossy()
                .into_owned(),
        };
        Ok(DiskImage {
            file,
            path: owned(),
            label,
            size,
            read_only,
            id: id_bytes,
            punch_hole,
            zero_range: true,
            overlay: None,
        })
    }

    /// Opens the image at `path` as a `snapshot` disk: the file is opened
    /// read-only with a shared lock (other snapshots may use it at the same
    /// time, a writer may not), and the guest's writes go to a temporary
    /// copy-on-write layer that disappears with kiln. The guest sees a
    /// writable disk; the image never changes.
    pub fn open_snapshot(path: &Path, id: Option<&str>) -> Result<DiskImage, BlockError> {
        Self::open_layered(path, id, Overlay::new)
    }

    /// A `snapshot` disk whose layer starts as a saved one was (`written`,
    /// its data in `layer`), for a VM restored from a snapshot.
    pub fn open_snapshot_restored(
        path: &Path,
        id: Option<&str>,
        written: &[u64],
        layer: &File,
    ) -> Result<DiskImage, BlockError> {
        Self::open_layered(path, id, |size| Overlay::restore(size, written, layer))
    }

    /// The image opened read-only and shared, with the layer `make` makes
    /// for its size above it.
    fn open_layered(
        path: &Path,
        id: Option<&str>,
        make: impl FnOnce(u64) -> std::io::Result<Overlay>,
    ) -> Result<DiskImage, BlockError> {
        let mut image = DiskImage::open(path, true, id)?;
        let overlay = make(image.size).map_err(|source| BlockError::Overlay {
            path: path.to_path_buf(),
            source,
        })?;
        image.overlay = Some(overlay);
        image.read_only = false;
        image.punch_hole = false;
        Ok(image)
    }

    /// The copy-on-write layer of a `snapshot` disk.
    pub fn overlay(&self) -> Option<&Overlay> {
        self.overlay.as_ref()
    }

    /// Sectors written to a `snapshot` disk's layer, if it is one.
    pub fn snapshot_sectors(&self) -> Option<u64> {
        self.overlay.as_ref().map(Overlay::written_sectors)
    }

    /// The path the image was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A short name for logs: the `id=` when given, else the file name.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The size in bytes (a multiple of 512).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The size in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.size / SECTOR_SIZE
    }

    /// True when opened read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The 20-byte GET_ID answer (NUL-padded).
    pub fn id(&self) -> &[u8; ID_BYTES] {
        &self.id
    }

    /// True when the file system can punch holes, so DISCARD and
    /// WRITE_ZEROES can be offered.
    pub fn supports_discard(&self) -> bool {
        self.punch_hole
    }

    /// Fills `buf` from the image at byte `offset` (pread into guest memory).
    pub(super) fn read_into<B: BitmapSlice>(
        &self,
        buf: &mut VolatileSlice<B>,
        offset: u64,
    ) -> io::Result<()> {
        let Some(overlay) = &self.overlay else {
            return FileAt::new(&self.file, offset)
                .read_exact_volatile(buf)
                .map_err(volatile_to_io);
        };
        for (at, len, layered) in overlay.runs(offset, buf.len() as u64) {
            let file = if layered { overlay.file() } else { &self.file };
            // Runs lie inside [offset, offset + buf.len()).
            let mut part = buf
                .subslice((at - offset) as usize, len as usize)
                .map_err(io::Error::other)?;
            FileAt::new(file, at)
                .read_exact_volatile(&mut part)
                .map_err(volatile_to_io)?;
        }
        Ok(())
    }

    /// Writes all of `buf` to the image at byte `offset` (pwrite from guest
    /// memory). Never called on a read-only image.
    pub(super) fn write_from<B: BitmapSlice>(
        &mut self,
        buf: &VolatileSlice<B>,
        offset: u64,
    ) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        if let Some(overlay) = &mut self.overlay {
            FileAt::new(overlay.file(), offset)
                .write_all_volatile(buf)
                .map_err(volatile_to_io)?;
            overlay.mark(offset, buf.len() as u64);
            return Ok(());
        }
        FileAt::new(&self.file, offset)
            .write_all_volatile(buf)
            .map_err(volatile_to_io)
    }

    /// Makes everything written so far durable (fdatasync); a snapshot's
    /// layer is thrown away at exit, so there is nothing to make durable.
    pub(super) fn flush(&self) -> io::Result<()> {
        if self.overlay.is_some() {
            return Ok(());
        }
        self.file.sync_data()
    }

    /// Deallocates `len` bytes at `offset`; they read back as zeros.
    pub(super) fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        fallocate(&self.file, FallocateMode::PunchHole, true, offset, len).map_err(io::Error::from)
    }

    /// Zeroes `len` bytes at `offset` while keeping them allocated.
    pub(super) fn write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        if self.zero_range {
            match fallocate(&self.file, FallocateMode::ZeroRange, true, offset, len) {
                Ok(()) => return Ok(()),
                Err(e) if e.errno() == libc::EOPNOTSUPP => self.zero_range = false,
                Err(e) => return Err(e.into()),
            }
        }
        // The file system cannot zero a range: write zeros.
        use std::os::unix::fs::FileExt;
        const CHUNK: usize = 64 << 10;
        let zeros = vec![0u8; CHUNK];
        let mut done = 0u64;
        while done < len {
            // Bounded by CHUNK, so the cast cannot truncate.
            let n = (len - done).min(CHUNK as u64) as usize;
            self.file.write_all_at(&zeros[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    #[cfg(test)]
    pub(super) fn disable_zero_range(&mut self) {
        self.zero_range = false;
    }
}

/// `id` NUL-padded (or cut) to the 20 bytes of a GET_ID answer.
fn pad_id(id: &[u8]) -> [u8; ID_BYTES] {
    let mut out = [0u8; ID_BYTES];
    let n = id.len().min(ID_BYTES);
    out[..n].copy_from_slice(&id[..n]);
    out
}

fn volatile_to_io(e: VolatileMemoryError) -> io::Error {
    match e {
        VolatileMemoryError::IOError(e) => e,
        other => io::Error::other(other),
    }
}

/// A cursor into the image file whose reads and writes are pread/pwrite
/// straight between guest memory and the file: no VMM buffer in between.
struct FileAt<'a> {
    file: &'a File,
    offset: u64,
}

impl<'a> FileAt<'a> {
    fn new(file: &'a File, offset: u64) -> Self {
        FileAt { file, offset }
    }

    fn offset(&self) -> Result<libc::off64_t, VolatileMemoryError> {
        libc::off64_t::try_from(self.offset)
            .map_err(|_| VolatileMemoryError::IOError(io::Error::from_raw_os_error(libc::EINVAL)))
    }
}

impl ReadVolatile for FileAt<'_> {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let offset = self.offset()?;
        let guard = buf.ptr_guard_mut();
        // SAFETY: the file descriptor is open for as long as `self.file` is
        // borrowed; `guard` points to `buf.len()` bytes of guest memory that
        // stay mapped while the guard lives (VolatileSlice's invariant), and
        // the kernel writes at most that many bytes there.
        let n = unsafe {
            libc::pread64(
                self.file.as_raw_fd(),
                guard.as_ptr().cast::<libc::c_void>(),
                buf.len(),
                offset,
            )
        };
        if n < 0 {
            buf.bitmap().mark_dirty(0, buf.len());
            return Err(VolatileMemoryError::IOError(io::Error::last_os_error()));
        }
        // Non-negative and at most buf.len(), so it fits a usize.
        let n = n as usize;
        buf.bitmap().mark_dirty(0, n);
        self.offset += n as u64;
        Ok(n)
    }
}

impl WriteVolatile for FileAt<'_> {
    fn write_volatile<B: BitmapSlice>(
        &mut self,
        buf: &VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let offset = self.offset()?;
        let guard = buf.ptr_guard();
        // SAFETY: the file descriptor is open for as long as `self.file` is
        // borrowed; `guard` points to `buf.len()` readable bytes of guest
        // memory that stay mapped while the guard lives, and the kernel
        // reads at most that many.
        let n = unsafe {
            libc::pwrite64(
                self.file.as_raw_fd(),
                guard.as_ptr().cast::<libc::c_void>(),
                buf.len(),
                offset,
            )
        };
        if n < 0 {
            return Err(VolatileMemoryError::IOError(io::Error::last_os_error()));
        }
        // Non-negative and at most buf.len(), so it fits a usize.
        let n = n as usize;
        self.offset += n as u64;
        Ok(n)
    }
}

/// Who holds the flock on the file `dev`:`ino`, for the "in use"
/// error: "process 1234 (kiln)", or a vaguer phrase when /proc does not say.
///
/// /proc/locks names the file by the device and inode the lock sits on,
/// which on overlayfs or btrfs subvolumes (containers, CI runners) are not
/// the `st_dev`/`st_ino` that stat reports. When nothing matches there, the
/// processes with the file open are asked instead: /proc/PID/fdinfo lists the
/// locks held through each open file.
fn lock_holder(dev: u64, ino: u64) -> String {
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    let mut pids = flock_holders(&locks, (libc::major(dev), libc::minor(dev)), ino);
    if pids.is_empty() {
        pids = holders_with_open(dev, ino);
    }
    if pids.is_empty() {
        return "another process".to_string();
    }
    let names: Vec<String> = pids
        .iter()
        .map(|&pid| {
            if pid <= 0 {
                return "a process in another PID namespace".to_string();
            }
            match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
                Ok(comm) => format!("process {pid} ({})", comm.trim()),
                Err(_) => format!("process {pid}"),
            }
        })
        .collect();
    names.join(", ")
}

/// PIDs of the processes that have the file `dev`:`ino` open through a file
/// that holds (not waits for) a flock, from /proc/PID/fd (stat through the
/// link gives the same numbers as stat on the path) and /proc/PID/fdinfo.
fn holders_with_open(dev: u64, ino: u64) -> Vec<i64> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i64>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::metadata(fd.path()).is_ok_and(|m| m.dev() == dev && m.ino() == ino)
                && std::fs::read_to_string(format!(
                    "/proc/{pid}/fdinfo/{}",
                    fd.file_name().to_string_lossy()
                ))
                .is_ok_and(|info| fdinfo_holds_flock(&info))
        });
        if holds {
            pids.push(pid);
        }
    }
    pids
}

/// Whether an fdinfo text has a held flock: a line such as
/// `lock:\t1: FLOCK  ADVISORY  WRITE 1234 00:2d:5678 0 EOF`.
fn fdinfo_holds_flock(info: &str) -> bool {
    info.lines().any(|line| {
        line.strip_prefix("lock:").is_some_and(|rest| {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.get(1) == Some(&"FLOCK")
        })
    })
}

/// PIDs holding (not waiting for) a flock on `major:minor:ino`, parsed
/// from /proc/locks lines such as
/// `1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF` (device numbers in
/// hex, inode in decimal; waiters have `->` after the number).
fn flock_holders(locks: &str, (major, minor): (u32, u32), ino: u64) -> Vec<i64> {
    let mut pids = Vec::new();
    for line in locks.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, kind, _, _, pid, file, ..] = fields.as_slice() else {
            continue;
        };
        if *kind != "FLOCK" {
            continue;
        }
        let mut parts = file.split(':');
        let (Some(maj), Some(min), Some(i), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let same_dev =
            u32::from_str_radix(maj, 16) == Ok(major) && u32::from_str_radix(min, 16) == Ok(minor);
        let matches = same_dev && i.parse::<u64>() == Ok(ino);
        if let (true, Ok(pid)) = (matches, pid.parse::<i64>()) {
            if !pids.contains(&pid) {
                pids.push(pid);
            }
        }
    }
    pids
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn image(len: usize) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&vec![0xa5; len]).unwrap();
        f
    }

    #[test]
    fn opens_a_sector_multiple_and_reports_its_size() {
        let f = image(4096);
        let d = DiskImage::open(f.path(), false, Some("data")).unwrap();
        assert_eq!(d.size(), 4096);
        assert_eq!(d.sectors(), 8);
        assert!(!d.read_only());
        assert_eq!(&d.id()[..5], b"data\0");
    }

    #[test]
    fn refuses_a_size_that_is_not_a_multiple_of_512() {
        let f = image(1000);
        let e = DiskImage::open(f.path(), false, None).unwrap_err();
        assert!(matches!(e, BlockError::SizeAlignment { size: 1000, .. }));
        let msg = e.to_string();
        assert!(msg.contains("1000 bytes"), "{msg}");
        assert!(msg.contains(&f.path().display().to_string()), "{msg}");
        assert!(msg.contains("truncate -s 1024"), "{msg}");
    }

    #[test]
    fn refuses_an_empty_file_a_directory_and_a_missing_file() {
        let f = image(0);
        assert!(matches!(
            DiskImage::open(f.path(), false, None),
            Err(BlockError::Empty { .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        let e = DiskImage::open(dir.path(), true, None).unwrap_err();
        assert!(matches!(e, BlockError::FileType { .. }), "{e}");
        let e = DiskImage::open(dir.path(), false, None).unwrap_err();
        assert!(matches!(e, BlockError::FileType { .. }), "{e}");
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo reads a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = DiskImage::open(&fifo, false, None).unwrap_err();
        assert!(matches!(e, BlockError::FileType { .. }), "{e}");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e = DiskImage::open(&dir.path().join("nope"), false, None).unwrap_err();
        assert!(matches!(e, BlockError::Open { .. }), "{e}");
        assert!(e.to_string().contains("nope"));
    }

    #[test]
    fn refuses_an_id_longer_than_20_bytes() {
        let f = image(512);
        let e = DiskImage::open(f.path(), false, Some("abcdefghijklmnopqrstu")).unwrap_err();
        assert!(matches!(e, BlockError::Id { .. }), "{e}");
        assert!(DiskImage::open(f.path(), false, Some("abcdefghijklmnopqrst")).is_ok());
    }

    #[test]
    fn derived_id_is_stable_and_differs_between_files() {
        let (f, g) = (image(512), image(512));
        let a = *DiskImage::open(f.path(), true, None).unwrap().id();
        let b = *DiskImage::open(f.path(), true, None).unwrap().id();
        let c = *DiskImage::open(g.path(), true, None).unwrap().id();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a[0], 0);
    }

    #[test]
    fn second_writer_is_refused_and_told_who_holds_the_lock() {
        let f = image(512);
        let first = DiskImage::open(f.path(), false, None).unwrap();
        let e = DiskImage::open(f.path(), false, None).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, BlockError::Locked { .. }), "{msg}");
        let me = format!("process {}", std::process::id());
        if proc_reports_flocks() {
            assert!(msg.contains(&me), "{msg}");
        } else {
            assert!(msg.contains("is in use by "), "{msg}");
        }
        // A reader is refused too while the writer runs ...
        assert!(matches!(
            DiskImage::open(f.path(), true, None),
            Err(BlockError::Locked { .. })
        ));
        // ... and once it is gone, readers share the image.
        drop(first);
        let r1 = DiskImage::open(f.path(), true, None).unwrap();
        let _r2 = DiskImage::open(f.path(), true, None).unwrap();
        assert!(matches!(
            DiskImage::open(f.path(), false, None),
            Err(BlockError::Locked { .. })
        ));
        drop((r1, _r2));
        DiskImage::open(f.path(), false, None).unwrap();
    }

    #[test]
    fn parses_proc_locks() {
        let locks = "1: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 77 08:01:1234 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 99 08:01:1234 0 EOF\n\
                     3: FLOCK  ADVISORY  READ 5 fd:1a:1234 0 EOF\n\
                     4: FLOCK  ADVISORY  WRITE 6 08:01:999 0 EOF\n\
                     garbage\n";
        assert_eq!(flock_holders(locks, (8, 1), 1234), vec![4242]);
        assert_eq!(flock_holders(locks, (0xfd, 0x1a), 1234), vec![5]);
        assert!(flock_holders(locks, (8, 2), 1234).is_empty());
    }

    #[test]
    fn parses_fdinfo_locks() {
        let held = "pos:\t0\nflags:\t0100002\nlock:\t1: FLOCK  ADVISORY  WRITE 7 fe:00:10 0 EOF\n";
        assert!(fdinfo_holds_flock(held));
        assert!(!fdinfo_holds_flock("pos:\t0\nflags:\t0100002\n"));
        let posix = "lock:\t1: POSIX  ADVISORY  WRITE 7 fe:00:10 0 EOF\n";
        assert!(!fdinfo_holds_flock(posix));
    }

    #[test]
    fn lock_holders_are_found_through_their_open_files() {
        // The fallback for file systems where /proc/locks names another
        // device or inode than stat (overlayfs, btrfs): asked directly, it
        // finds this process, which holds the lock.
        let f = image(512);
        let _held = DiskImage::open(f.path(), false, None).unwrap();
        let held = std::fs::metadata(f.path()).unwrap();
        let me = i64::from(std::process::id());
        let found = holders_with_open(held.dev(), held.ino());
        assert_eq!(found.contains(&me), proc_reports_flocks(), "{found:?}");
        let g = image(512);
        let _open = std::fs::File::open(g.path()).unwrap();
        let unlocked = std::fs::metadata(g.path()).unwrap();
        assert!(!holders_with_open(unlocked.dev(), unlocked.ino()).contains(&me));
    }

    /// Whether this kernel lists held flocks in /proc/self/fdinfo (Linux
    /// does since 4.2; sandboxes such as gVisor may not), asked with a lock
    /// taken here by hand: where /proc cannot tell, the "in use" error names
    /// no process.
    fn proc_reports_flocks() -> bool {
        let f = tempfile::tempfile().unwrap();
        f.try_lock().unwrap();
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", f.as_raw_fd()));
        info.is_ok_and(|info| fdinfo_holds_flock(&info))
    }

    #[test]
    fn read_only_open_of_an_unwritable_file_works() {
        let f = image(512);
        let mut perms = std::fs::metadata(f.path()).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
        std::fs::set_permissions(f.path(), perms).unwrap();
        assert!(DiskImage::open(f.path(), true, None).is_ok());
        // Root may write anyway; everyone else must be told to add ,ro.
        match DiskImage::open(f.path(), false, None) {
            Ok(_) => {}
            Err(e) => {
                assert!(matches!(e, BlockError::OpenWritable { .. }), "{e}");
                assert!(e.to_string().contains(",ro"), "{e}");
            }
        }
    }

    #[test]
    fn unwritable_error_says_to_add_ro() {
        let e = BlockError::OpenWritable {
            path: "/img".into(),
            source: io::Error::from_raw_os_error(libc::EROFS),
        };
        let msg = e.to_string();
        assert!(msg.contains("/img") && msg.contains(",ro"), "{msg}");
        assert!(!msg.contains('\n'));
    }
}
