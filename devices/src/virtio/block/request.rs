//! One virtio-blk request: a descriptor chain is collected and checked,
//! its header parsed, and the request carried out against the image.
//!
//! Layout (virtio 1.x 5.2.6, any layout): the device-readable bytes start
//! with the 16-byte header (`type`, `ioprio`, `sector`), followed by the
//! data of OUT, DISCARD and WRITE_ZEROES requests; the device-writable
//! bytes hold the data of IN and GET_ID requests and end with the status
//! byte. Descriptor boundaries mean nothing.
//!
//! Everything the guest controls is checked here: the number of
//! descriptors, that the chain ends, that readable descriptors precede
//! writable ones, that every buffer lies in guest RAM, the header, the
//! direction and size of the data, and the sector range (with overflow
//! checks). A request that fails a check gets VIRTIO_BLK_S_IOERR in its
//! status byte; a chain without a writable byte for the status is still
//! returned to the driver, with a used length of 0.

use std::io;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::SECTOR_SIZE;
use super::{DiskImage, Memory, MAX_DESCRIPTORS, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG};

/// Size of the request header (`struct virtio_blk_outhdr`).
const HEADER_LEN: usize = 16;
/// Size of one DISCARD / WRITE_ZEROES range
/// (`struct virtio_blk_discard_write_zeroes`).
const RANGE_LEN: usize = 16;

/// A buffer in guest memory: start and length, known to lie in guest RAM.
type Seg = (GuestAddress, usize);

/// What went wrong with a request, for the log and the counters.
#[derive(Debug)]
pub(super) enum Problem {
    /// The chain breaks the virtio rules: a buggy or hostile driver.
    Malformed(&'static str),
    /// A well-formed request the device refuses (e.g. a write to a
    /// read-only disk).
    Refused(&'static str),
    /// The host file failed.
    Io(&'static str, io::Error),
}

/// The request types the counters tell apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Read,
    Write,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    Other,
}

/// The result of one chain.
#[derive(Debug)]
pub(super) struct Outcome {
    /// The parsed request type, when the header could be read.
    pub kind: Option<Kind>,
    /// The status byte written (None: the chain had no writable byte).
    pub status: Option<u8>,
    /// Bytes written into the chain's writable buffers (the used length).
    pub used_len: u32,
    /// Data bytes moved between guest memory and the image.
    pub bytes: u64,
    /// Why the status is not OK.
    pub problem: Option<Problem>,
}

/// A chain's buffers, sorted by direction, with the status byte taken off
/// the end of the writable part.
struct Buffers {
    readable: Vec<Seg>,
    writable: Vec<Seg>,
    status: Option<GuestAddress>,
    problem: Option<&'static str>,
}

/// Walks the whole chain once, checking its shape and every buffer's
/// address. It goes on past problems (the iterator itself ends loops and
/// bounds indirect tables) so that a writable status byte can still be
/// found and given an error.
fn collect(chain: DescriptorChain<&Memory>, mem: &Memory) -> Buffers {
    fn note(b: &mut Buffers, p: &'static str) {
        b.problem.get_or_insert(p);
    }
    let mut b = Buffers {
        readable: Vec::new(),
        writable: Vec::new(),
        status: None,
        problem: None,
    };
    let mut count = 0usize;
    let mut last_has_next = false;
    let mut last_writable: Option<Seg> = None;
    for desc in chain {
        count += 1;
        last_has_next = desc.has_next();
        let len = desc.len() as usize;
        if len == 0 {
            continue;
        }
        let seg = (desc.addr(), len);
        let in_ram = GuestMemoryBackend::check_range(mem, desc.addr(), len);
        if desc.is_write_only() && in_ram {
            last_writable = Some(seg);
        }
        if count > MAX_DESCRIPTORS {
            note(&mut b, "chain has more descriptors than the queue");
        } else if !in_ram {
            note(&mut b, "buffer outside guest memory");
        } else if desc.is_write_only() {
            b.writable.push(seg);
        } else if b.writable.is_empty() {
            b.readable.push(seg);
        } else {
            note(&mut b, "device-readable buffer after a device-writable one");
        }
    }
    // The iterator stops early, with no error, on a loop (its ttl runs
    // out), a next index beyond the table, or an unreadable descriptor:
    // then the last descriptor it gave still says "next".
    if last_has_next {
        note(&mut b, "chain does not end (loop or bad next index)");
    }
    if count == 0 {
        note(&mut b, "empty chain (bad head index or descriptor table)");
    }
    // The status is the last writable byte. In a well-formed chain that
    // is the end of the last writable buffer collected: take it off.
    if let Some((addr, len)) = last_writable {
        // In range: the whole buffer was checked.
        b.status = addr.checked_add(len as u64 - 1);
        if b.problem.is_none() {
            if let Some(last) = b.writable.last_mut() {
                last.1 -= 1;
                if last.1 == 0 {
                    b.writable.pop();
                }
            }
        }
    }
    b
}

/// Total length of `segs` (at most MAX_DESCRIPTORS buffers of less than
/// 4 GiB each: cannot overflow a 64-bit usize).
fn total(segs: &[Seg]) -> usize {
    segs.iter().map(|s| s.1).sum()
}

/// Removes the first `n` bytes of `segs` and returns them; None when
/// `segs` holds fewer than `n` bytes.
fn take_front(segs: &mut Vec<Seg>, n: usize) -> Option<Vec<Seg>> {
    let mut front = Vec::new();
    let mut need = n;
    while need > 0 {
        let first = segs.first_mut()?;
        if first.1 <= need {
            need -= first.1;
            front.push(segs.remove(0));
        } else {
            front.push((first.0, need));
            first.0 = first.0.unchecked_add(need as u64);
            first.1 -= need;
            need = 0;
        }
    }
    Some(front)
}

/// Copies the first `buf.len()` bytes of `segs` into `buf`.
fn gather(mem: &Memory, segs: &[Seg], buf: &mut [u8]) -> bool {
    let mut done = 0;
    for &(addr, len) in segs {
        if done == buf.len() {
            break;
        }
        let n = len.min(buf.len() - done);
        if mem.read_slice(&mut buf[done..done + n], addr).is_err() {
            return false;
        }
        done += n;
    }
    done == buf.len()
}

/// Copies `data` into the start of `segs`; returns the bytes written.
fn scatter(mem: &Memory, segs: &[Seg], data: &[u8]) -> usize {
    let mut done = 0;
    for &(addr, len) in segs {
        if done == data.len() {
            break;
        }
        let n = len.min(data.len() - done);
        if mem.write_slice(&data[done..done + n], addr).is_err() {
            break;
        }
        done += n;
    }
    done
}

/// The request header.
struct Header {
    type_: u32,
    sector: u64,
}

impl Header {
    fn parse(raw: &[u8; HEADER_LEN]) -> Header {
        let mut t = [0u8; 4];
        t.copy_from_slice(&raw[0..4]);
        let mut s = [0u8; 8];
        s.copy_from_slice(&raw[8..16]);
        Header {
            type_: u32::from_le_bytes(t),
            sector: u64::from_le_bytes(s),
        }
    }
}

/// A failed request: its status and why.
type Failure = (u32, Problem);

fn malformed(why: &'static str) -> Failure {
    (VIRTIO_BLK_S_IOERR, Problem::Malformed(why))
}

fn refused(why: &'static str) -> Failure {
    (VIRTIO_BLK_S_IOERR, Problem::Refused(why))
}

fn io_error(what: &'static str) -> impl FnOnce(io::Error) -> Failure {
    move |e| (VIRTIO_BLK_S_IOERR, Problem::Io(what, e))
}

fn unsupported(why: &'static str) -> Failure {
    (VIRTIO_BLK_S_UNSUPP, Problem::Refused(why))
}

/// What a request needs of the device besides the image.
pub(super) struct Context<'a> {
    /// The host file.
    pub image: &'a mut DiskImage,
    /// DISCARD and WRITE_ZEROES are offered.
    pub discard: bool,
}

/// Carries out one descriptor chain and writes its status byte.
pub(super) fn process(ctx: Context<'_>, chain: DescriptorChain<&Memory>, mem: &Memory) -> Outcome {
    let mut b = collect(chain, mem);
    let mut out = Outcome {
        kind: None,
        status: None,
        used_len: 0,
        bytes: 0,
        problem: None,
    };
    let Some(status_addr) = b.status else {
        out.problem = Some(Problem::Malformed(
            b.problem.unwrap_or("no device-writable status byte"),
        ));
        return out;
    };
    let result = match b.problem {
        Some(p) => Err(malformed(p)),
        None => execute(ctx, &mut b, mem, &mut out),
    };
    let (status, data_written) = match result {
        Ok(n) => (VIRTIO_BLK_S_OK, n),
        Err((status, problem)) => {
            out.problem = Some(problem);
            (status, 0)
        }
    };
    // Status values are 0..=2: the cast cannot truncate.
    let status = status as u8;
    if mem.write_obj(status, status_addr).is_ok() {
        out.status = Some(status);
        out.used_len = data_written.saturating_add(1);
    }
    out
}

/// Runs a well-formed chain's request; returns the bytes written into
/// the writable data buffers.
fn execute(
    ctx: Context<'_>,
    b: &mut Buffers,
    mem: &Memory,
    out: &mut Outcome,
) -> Result<u32, Failure> {
    let header_segs = take_front(&mut b.readable, HEADER_LEN)
        .ok_or_else(|| malformed("header shorter than 16 device-readable bytes"))?;
    let mut raw = [0u8; HEADER_LEN];
    if !gather(mem, &header_segs, &mut raw) {
        return Err(malformed("header unreadable"));
    }
    let header = Header::parse(&raw);
    let image = ctx.image;
    match header.type_ {
        VIRTIO_BLK_T_IN => {
            out.kind = Some(Kind::Read);
            if !b.readable.is_empty() {
                return Err(malformed("read with device-readable data buffers"));
            }
            let len = total(&b.writable);
            let offset = data_range(image, header.sector, len)?;
            transfer(mem, &b.writable, offset, |slice, at| {
                image.read_into(slice, at)
            })
            .map_err(io_error("read"))?;
            out.bytes = len as u64;
            // At most the chain's length, which the queue caps below 4 GiB.
            Ok(u32::try_from(len).unwrap_or(u32::MAX))
        }
        VIRTIO_BLK_T_OUT => {
            out.kind = Some(Kind::Write);
            if !b.writable.is_empty() {
                return Err(malformed("write with device-writable data buffers"));
            }
            let len = total(&b.readable);
            let offset = data_range(image, header.sector, len)?;
            if image.read_only() {
                return Err(refused("write to a read-only disk"));
            }
            transfer(mem, &b.readable, offset, |slice, at| {
                image.write_from(slice, at)
            })
            .map_err(io_error("write"))?;
            out.bytes = len as u64;
            Ok(0)
        }
        VIRTIO_BLK_T_FLUSH => {
            out.kind = Some(Kind::Flush);
            image.flush().map_err(io_error("flush (fdatasync)"))?;
            Ok(0)
        }
        VIRTIO_BLK_T_GET_ID => {
            out.kind = Some(Kind::GetId);
            let n = scatter(mem, &b.writable, image.id());
            // At most ID_BYTES.
            Ok(n as u32)
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let zeroes = header.type_ == VIRTIO_BLK_T_WRITE_ZEROES;
            out.kind = Some(if zeroes {
                Kind::WriteZeroes
            } else {
                Kind::Discard
            });
            if image.read_only() {
                return Err(refused("discard or write-zeroes on a read-only disk"));
            }
            if !ctx.discard {
                return Err(unsupported("discard or write-zeroes not offered"));
            }
            discard(image, zeroes, &b.readable, mem, out)?;
            Ok(0)
        }
        _ => {
            out.kind = Some(Kind::Other);
            Err(unsupported("unsupported request type"))
        }
    }
}

/// Checks that `len` data bytes at `sector` are whole sectors inside the
/// disk; returns the byte offset.
fn data_range(image: &DiskImage, sector: u64, len: usize) -> Result<u64, Failure> {
    if !(len as u64).is_multiple_of(SECTOR_SIZE) {
        return Err(malformed("data length not a multiple of 512"));
    }
    byte_range(image, sector, len as u64)
        .ok_or_else(|| refused("sectors beyond the end of the disk"))
}

/// The byte offset of `len` bytes at `sector` when they lie inside the
/// disk (no overflow on the way).
fn byte_range(image: &DiskImage, sector: u64, len: u64) -> Option<u64> {
    let offset = sector.checked_mul(SECTOR_SIZE)?;
    let end = offset.checked_add(len)?;
    (end <= image.size()).then_some(offset)
}

/// Runs `op` over every guest-memory slice of `segs`, with the image
/// offset each one starts at.
fn transfer(
    mem: &Memory,
    segs: &[Seg],
    mut offset: u64,
    mut op: impl FnMut(&mut vm_memory::VolatileSlice<'_>, u64) -> io::Result<()>,
) -> io::Result<()> {
    for &(addr, len) in segs {
        for slice in GuestMemoryBackend::get_slices(mem, addr, len) {
            let mut slice = slice.map_err(io::Error::other)?;
            op(&mut slice, offset)?;
            offset += slice.len() as u64;
        }
    }
    Ok(())
}

/// DISCARD / WRITE_ZEROES: every range is checked before any is applied.
fn discard(
    image: &mut DiskImage,
    zeroes: bool,
    payload: &[Seg],
    mem: &Memory,
    out: &mut Outcome,
) -> Result<(), Failure> {
    let len = total(payload);
    if len == 0 || !len.is_multiple_of(RANGE_LEN) {
        return Err(malformed("discard payload not a list of 16-byte ranges"));
    }
    if len / RANGE_LEN > MAX_DISCARD_SEG as usize {
        return Err(malformed("more discard ranges than max_discard_seg"));
    }
    let mut raw = vec![0u8; len];
    if !gather(mem, payload, &mut raw) {
        return Err(malformed("discard ranges unreadable"));
    }
    let mut ranges = Vec::with_capacity(len / RANGE_LEN);
    for r in raw.chunks_exact(RANGE_LEN) {
        let mut s = [0u8; 8];
        s.copy_from_slice(&r[0..8]);
        let mut n = [0u8; 4];
        n.copy_from_slice(&r[8..12]);
        let mut f = [0u8; 4];
        f.copy_from_slice(&r[12..16]);
        let (sector, sectors, flags) = (
            u64::from_le_bytes(s),
            u32::from_le_bytes(n),
            u32::from_le_bytes(f),
        );
        let allowed = if zeroes {
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
        } else {
            0
        };
        if flags & !allowed != 0 {
            return Err(unsupported("unknown discard / write-zeroes flags"));
        }
        if sectors > MAX_DISCARD_SECTORS {
            return Err(malformed("discard range larger than its maximum"));
        }
        let bytes = u64::from(sectors) * SECTOR_SIZE;
        let offset = byte_range(image, sector, bytes)
            .ok_or_else(|| refused("sectors beyond the end of the disk"))?;
        ranges.push((
            offset,
            bytes,
            flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
        ));
    }
    for (offset, bytes, unmap) in ranges {
        if bytes == 0 {
            continue;
        }
        if !zeroes || unmap {
            image
                .punch_hole(offset, bytes)
                .map_err(io_error("punch hole"))?;
        } else {
            image
                .write_zeroes(offset, bytes)
                .map_err(io_error("zero range"))?;
        }
        out.bytes += bytes;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::ID_BYTES;
    use super::*;

    #[test]
    fn take_front_splits_inside_and_between_buffers() {
        let a = GuestAddress(0x1000);
        let b = GuestAddress(0x3000);
        let mut segs = vec![(a, 10), (b, 20)];
        assert_eq!(take_front(&mut segs, 10).unwrap(), vec![(a, 10)]);
        assert_eq!(segs, vec![(b, 20)]);
        let mut segs = vec![(a, 10), (b, 20)];
        assert_eq!(take_front(&mut segs, 16).unwrap(), vec![(a, 10), (b, 6)]);
        assert_eq!(segs, vec![(GuestAddress(0x3006), 14)]);
        let mut segs = vec![(a, 10)];
        assert!(take_front(&mut segs, 11).is_none());
        assert!(take_front(&mut vec![], 0).unwrap().is_empty());
    }

    #[test]
    fn header_is_little_endian() {
        let mut raw = [0u8; 16];
        raw[0] = 8;
        raw[8..16].copy_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        let h = Header::parse(&raw);
        assert_eq!(h.type_, VIRTIO_BLK_T_GET_ID);
        assert_eq!(h.sector, 0x0102_0304_0506_0708);
    }

    #[test]
    fn id_fits_its_constant() {
        assert_eq!(ID_BYTES, 20);
    }
}
