//! virtio-blk (virtio 1.x, section 5.2): a disk backed by an image file.
//!
//! - [`DiskImage`] (image.rs) opens, sizes, locks and probes the host file;
//! - [`Block`] (this file) is the [`VirtioDevice`]: features, config space,
//!   the queue loop, counters and rate-limited logging;
//! - request.rs turns one descriptor chain into a checked request and
//!   carries it out with pread/pwrite straight between guest memory and
//!   the file.
//!
//! Requests run synchronously on the thread that calls
//! [`VirtioDevice::process_queue`] (the event loop). A FLUSH completes only
//! after `fdatasync` on the image returned.

mod image;
pub mod overlay;
mod request;

#[cfg(any(test, feature = "fuzz"))]
pub mod driver;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{debug, warn};
use virtio_bindings::virtio_blk::{
    virtio_blk_config, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
    VIRTIO_BLK_ID_BYTES,
};
use virtio_queue::{DescriptorChain, QueueOwnedT};

use super::{device_type, features, Memory, Queue, QueueT, VirtioDevice};
use request::{Kind, Outcome, Problem};

pub use image::DiskImage;

/// Bytes in a virtio-blk sector (capacity and `sector` are counted in
/// these, whatever the block size).
pub const SECTOR_SIZE: u64 = 512;
/// The one queue's maximum size.
pub const QUEUE_SIZE: u16 = 256;
/// Most data segments in one request (the header and status take the
/// other two descriptors of a full queue).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest single data segment the driver should build.
pub const SIZE_MAX: u32 = 1 << 20;
/// Most descriptors one chain may have (indirect tables included).
const MAX_DESCRIPTORS: usize = QUEUE_SIZE as usize;
/// Most sectors in one DISCARD / WRITE_ZEROES range (just under 4 GiB).
const MAX_DISCARD_SECTORS: u32 = u32::MAX / SECTOR_SIZE as u32;
/// Most ranges in one DISCARD / WRITE_ZEROES request.
const MAX_DISCARD_SEG: u32 = 32;
/// DISCARD alignment hint, in sectors (4 KiB, a file-system block).
const DISCARD_SECTOR_ALIGNMENT: u32 = 8;
/// Length of the GET_ID answer.
const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;
/// The config space we expose: `struct virtio_blk_config` up to and
/// including `write_zeroes_may_unmap` and its padding.
const CONFIG_LEN: usize = 60;

const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];

/// Errors opening a disk image. Each displays as one line that names the
/// file, the problem and what to do.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image cannot be opened at all.
    #[error("cannot open disk image {}: {source}: check the path and its permissions", .path.display())]
    Open {
        /// The image.
        path: PathBuf,
        /// What open(2) said.
        source: std::io::Error,
    },
    /// The image can be read but not written.
    #[error("disk image {} is not writable ({source}): add ,ro to its --disk option to attach it read-only, or make it writable", .path.display())]
    OpenWritable {
        /// The image.
        path: PathBuf,
        /// What open(2) said.
        source: std::io::Error,
    },
    /// fstat or seek failed.
    #[error("cannot find the size of disk image {}: {source}", .path.display())]
    Size {
        /// The image.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// Neither a regular file nor a block device.
    #[error("disk image {} is not a regular file or block device: give the path of an image file", .path.display())]
    FileType {
        /// The image.
        path: PathBuf,
    },
    /// A zero-byte image.
    #[error("disk image {} is empty: give it a size, e.g. truncate -s 64M {}", .path.display(), .path.display())]
    Empty {
        /// The image.
        path: PathBuf,
    },
    /// The size is not a whole number of 512-byte sectors.
    #[error("disk image {} is {size} bytes, not a multiple of 512: resize it to whole sectors, e.g. truncate -s {} {}", .path.display(), .size.next_multiple_of(SECTOR_SIZE), .path.display())]
    SizeAlignment {
        /// The image.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// Another process holds a conflicting lock on the image.
    #[error("disk image {} is in use by {holder} (kiln needs {wanted} lock): stop that process, or give this VM its own copy of the image", .path.display())]
    Locked {
        /// The image.
        path: PathBuf,
        /// Who holds the lock, e.g. `process 1234 (kiln)`.
        holder: String,
        /// `exclusive` (read-write) or `shared` (read-only).
        wanted: &'static str,
    },
    /// flock failed for another reason.
    #[error("cannot lock disk image {}: {source}: put the image on a file system that supports flock", .path.display())]
    Lock {
        /// The image.
        path: PathBuf,
        /// What flock(2) said.
        source: std::io::Error,
    },
    /// The copy-on-write layer of a `snapshot` disk could not be made.
    #[error("cannot make the copy-on-write layer for disk image {}: {source}: check that $TMPDIR (default /tmp) is writable and has room", .path.display())]
    Overlay {
        /// The image.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The `id=` is longer than GET_ID can return.
    #[error("disk image {}: id={id} is {} bytes, more than the 20 virtio-blk allows: use a shorter id", .path.display(), .id.len())]
    Id {
        /// The image.
        path: PathBuf,
        /// The id given.
        id: String,
    },
}

/// Request counters, printed when the VM stops.
#[derive(Debug, Default)]
struct Stats {
    reads: u64,
    writes: u64,
    flushes: u64,
    discards: u64,
    read_bytes: u64,
    written_bytes: u64,
    errors: u64,
    malformed: u64,
}

/// Lets a burst of warnings per window through and counts the rest, so a
/// guest cannot flood the log with bad requests.
#[derive(Debug)]
struct LogLimiter {
    window_start: Instant,
    shown: u32,
    suppressed: u64,
}

impl LogLimiter {
    const BURST: u32 = 10;
    const WINDOW: Duration = Duration::from_secs(10);

    fn new() -> Self {
        LogLimiter {
            window_start: Instant::now(),
            shown: 0,
            suppressed: 0,
        }
    }

    /// True when the next message may be logged.
    fn allow(&mut self, name: &str) -> bool {
        let now = Instant::now();
        if now.duration_since(self.window_start) >= Self::WINDOW {
            if self.suppressed > 0 {
                warn!(
                    "{name}: {} more bad requests were not logged",
                    self.suppressed
                );
            }
            self.window_start = now;
            self.shown = 0;
            self.suppressed = 0;
        }
        if self.shown < Self::BURST {
            self.shown += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

/// A virtio-blk device over one [`DiskImage`].
#[derive(Debug)]
pub struct Block {
    image: DiskImage,
    name: String,
    features: u64,
    acked: u64,
    config: [u8; CONFIG_LEN],
    stats: Stats,
    limiter: LogLimiter,
    /// The last process_queue stopped at its budget with work left.
    rerun: bool,
}

/// Most chains one process_queue call handles before it yields to the
/// event loop (and asks to be run again): a guest that keeps the queue
/// full cannot keep the loop from the console, signals or other devices.
pub const CHAINS_PER_CALL: usize = 64;

impl Block {
    /// A virtio-blk device serving `image`. Its features follow the image:
    /// RO when it was opened read-only, DISCARD and WRITE_ZEROES when its
    /// file system can punch holes.
    pub fn new(image: DiskImage) -> Block {
        let discard = image.supports_discard();
        let mut f = features::VERSION_1
            | features::RING_EVENT_IDX
            | features::RING_INDIRECT_DESC
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_SIZE_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE;
        if image.read_only() {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        if discard {
            f |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        Block {
            name: format!("virtio-blk {}", image.label()),
            config: config_space(image.sectors(), discard),
            image,
            features: f,
            acked: 0,
            stats: Stats::default(),
            limiter: LogLimiter::new(),
            rerun: false,
        }
    }

    /// The image this device serves.
    pub fn image(&self) -> &DiskImage {
        &self.image
    }

    fn discard_offered(&self) -> bool {
        self.features & 1 << VIRTIO_BLK_F_DISCARD != 0
    }

    /// Handles one chain and returns its used length.
    fn handle(&mut self, chain: DescriptorChain<&Memory>, mem: &Memory) -> u32 {
        let ctx = request::Context {
            discard: self.discard_offered(),
            image: &mut self.image,
        };
        let out = request::process(ctx, chain, mem);
        self.account(&out);
        out.used_len
    }

    fn account(&mut self, out: &Outcome) {
        let s = &mut self.stats;
        match out.kind {
            Some(Kind::Read) => s.reads += 1,
            Some(Kind::Write) => s.writes += 1,
            Some(Kind::Flush) => s.flushes += 1,
            Some(Kind::Discard | Kind::WriteZeroes) => s.discards += 1,
            Some(Kind::GetId | Kind::Other) | None => {}
        }
        let Some(problem) = &out.problem else {
            match out.kind {
                Some(Kind::Read) => s.read_bytes += out.bytes,
                Some(Kind::Write) => s.written_bytes += out.bytes,
                _ => {}
            }
            return;
        };
        s.errors += 1;
        if matches!(problem, Problem::Malformed(_)) {
            s.malformed += 1;
        }
        if !self.limiter.allow(&self.name) {
            return;
        }
        let name = &self.name;
        let kind = out.kind.map(|k| format!("{k:?}")).unwrap_or_default();
        match problem {
            Problem::Malformed(why) if out.status.is_none() => {
                warn!("{name}: bad descriptor chain ({why}), returned without a status")
            }
            Problem::Malformed(why) => warn!("{name}: bad {kind} request: {why}"),
            Problem::Refused(why) => debug!("{name}: {kind} request refused: {why}"),
            Problem::Io(what, e) => warn!("{name}: {what} failed on the image: {e}"),
        }
    }

    fn bad_queue(&mut self, what: &str, e: impl std::fmt::Display) {
        if self.limiter.allow(&self.name) {
            warn!("{}: {what}: {e}", self.name);
        }
    }
}

/// The config space: `struct virtio_blk_config` (virtio 1.x 5.2.4),
/// little-endian, fields placed at their C offsets.
fn config_space(sectors: u64, discard: bool) -> [u8; CONFIG_LEN] {
    use std::mem::offset_of;
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |offset: usize, bytes: &[u8]| {
        c[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    put(
        offset_of!(virtio_blk_config, capacity),
        &sectors.to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, size_max),
        &SIZE_MAX.to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, seg_max),
        &SEG_MAX.to_le_bytes(),
    );
    // SECTOR_SIZE fits a u32.
    put(
        offset_of!(virtio_blk_config, blk_size),
        &(SECTOR_SIZE as u32).to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, num_queues),
        &1u16.to_le_bytes(),
    );
    if discard {
        put(
            offset_of!(virtio_blk_config, max_discard_sectors),
            &MAX_DISCARD_SECTORS.to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, max_discard_seg),
            &MAX_DISCARD_SEG.to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, discard_sector_alignment),
            &DISCARD_SECTOR_ALIGNMENT.to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, max_write_zeroes_sectors),
            &MAX_DISCARD_SECTORS.to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, max_write_zeroes_seg),
            &MAX_DISCARD_SEG.to_le_bytes(),
        );
        put(offset_of!(virtio_blk_config, write_zeroes_may_unmap), &[1]);
    }
    c
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn layer(&self) -> Option<&overlay::Overlay> {
        self.image.overlay()
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if start >= CONFIG_LEN {
            return;
        }
        let n = data.len().min(CONFIG_LEN - start);
        data[..n].copy_from_slice(&self.config[start..start + n]);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Nothing is writable (no CONFIG_WCE).
        debug!(
            "{}: ignored config write of {} bytes at {offset:#x}",
            self.name,
            data.len()
        );
    }

    fn activate(&mut self, acked: u64) -> Result<(), String> {
        self.acked = acked & self.features;
        Ok(())
    }

    fn reset(&mut self) {
        self.acked = 0;
    }

    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &Memory) -> bool {
        let Some(queue) = queues.get_mut(index).filter(|_| index == 0) else {
            return false;
        };
        if !queue.is_valid(mem) {
            self.bad_queue("queue not usable", "not ready or outside guest memory");
            return false;
        }
        let mut used = false;
        let mut budget = CHAINS_PER_CALL;
        self.rerun = false;
        'outer: loop {
            if let Err(e) = queue.disable_notification(mem) {
                self.bad_queue("cannot disable notifications", e);
                break;
            }
            let mut progressed = false;
            loop {
                let chain = match queue.iter(mem) {
                    Ok(mut avail) => avail.next(),
                    Err(e) => {
                        self.bad_queue("bad available ring", e);
                        None
                    }
                };
                let Some(chain) = chain else { break };
                if budget == 0 {
                    // Leave notifications off and the chain in the ring:
                    // the event loop calls again once others were served.
                    queue.go_to_previous_position();
                    self.rerun = true;
                    break 'outer;
                }
                budget -= 1;
                progressed = true;
                let head = chain.head_index();
                let len = self.handle(chain, mem);
                if head >= queue.size() {
                    // Nothing to give back: the used ring only takes
                    // indexes inside the table.
                    self.bad_queue("chain head outside the queue", head);
                    continue;
                }
                match queue.add_used(mem, head, len) {
                    Ok(()) => used = true,
                    Err(e) => self.bad_queue("cannot add to the used ring", e),
                }
            }
            match queue.enable_notification(mem) {
                // More arrived while notifications were off: go round,
                // unless nothing could be taken (a bad ring index).
                Ok(true) if progressed => {}
                Ok(_) => break,
                Err(e) => {
                    self.bad_queue("cannot enable notifications", e);
                    break;
                }
            }
        }
        used && super::needs_interrupt(queue, mem)
    }

    fn rerun(&self, index: usize) -> bool {
        index == 0 && self.rerun
    }

    fn stats(&self) -> Option<String> {
        let s = &self.stats;
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let layer = match self.image.snapshot_sectors() {
            Some(n) => format!("; {:.1} MiB in the snapshot layer", mib(n * SECTOR_SIZE)),
            None => String::new(),
        };
        Some(format!(
            "{} reads ({:.1} MiB), {} writes ({:.1} MiB), {} flushes, {} discards, {} errors ({} malformed){layer}",
            s.reads,
            mib(s.read_bytes),
            s.writes,
            mib(s.written_bytes),
            s.flushes,
            s.discards,
            s.errors,
            s.malformed
        ))
    }
}

#[cfg(test)]
mod tests;
