//! Checking the guest's descriptor chains before touching the buffers they
//! name: every buffer inside guest RAM, in the right direction, the chain
//! complete (no loop, no dangling `next`) and of a sane size.

use std::ops::Deref;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, VolatileSlice};

use super::{Memory, MAX_FRAME_LEN, MIN_FRAME_LEN, VNET_HDR_LEN};

/// Most iovecs one `writev` takes (`IOV_MAX`).
const MAX_IOVECS: usize = 1024;

/// Why a chain was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A buffer the device must read is device-writable, or the reverse.
    #[error("a buffer has the wrong direction")]
    WrongDirection,
    /// A buffer lies (partly) outside guest RAM.
    #[error("a buffer at {0:#x} is outside guest memory")]
    OutsideMemory(u64),
    /// The chain ended on a descriptor that says more follow: it loops,
    /// points past the table, or its table is outside RAM.
    #[error("the chain is cut short (loop, bad next index or bad table)")]
    Truncated,
    /// The buffers cannot hold a header (and, to transmit, a frame).
    #[error("the chain is too short ({0} bytes)")]
    TooShort(usize),
    /// A frame longer than the device handles.
    #[error("the chain is too long (over {0} bytes)")]
    TooLong(usize),
    /// More pieces than one `writev` takes.
    #[error("the chain has too many pieces")]
    TooManyPieces,
}

/// Walks every descriptor of `chain`, calling `visit` on each, and fails
/// when the walk ended early (a loop or bad `next` makes the iterator stop
/// on a descriptor that still has NEXT set).
fn walk<M>(
    chain: DescriptorChain<M>,
    mut visit: impl FnMut(&Descriptor) -> Result<(), ChainError>,
) -> Result<(), ChainError>
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut last_has_next = true;
    for desc in chain {
        visit(&desc)?;
        last_has_next = desc.has_next();
    }
    if last_has_next {
        return Err(ChainError::Truncated);
    }
    Ok(())
}

/// A transmit chain's frame as slices of guest memory, header first.
pub struct TxFrame<'m> {
    /// The pieces, in order.
    pub slices: Vec<VolatileSlice<'m>>,
    /// Their total length, header included.
    pub len: usize,
}

impl<'m> TxFrame<'m> {
    /// Checks a transmit chain: device-readable buffers only, inside RAM,
    /// a header plus at least an Ethernet header, at most a header plus
    /// [`MAX_FRAME_LEN`].
    pub fn parse(chain: DescriptorChain<&'m Memory>, mem: &'m Memory) -> Result<Self, ChainError> {
        let mut slices = Vec::new();
        let mut len = 0usize;
        walk(chain, |desc| {
            if desc.is_write_only() {
                return Err(ChainError::WrongDirection);
            }
            let size = desc.len() as usize;
            len += size;
            if len > VNET_HDR_LEN + MAX_FRAME_LEN {
                return Err(ChainError::TooLong(VNET_HDR_LEN + MAX_FRAME_LEN));
            }
            for slice in GuestMemoryBackend::get_slices(mem, desc.addr(), size) {
                let slice = slice.map_err(|_| ChainError::OutsideMemory(desc.addr().0))?;
                slices.push(slice);
                if slices.len() > MAX_IOVECS {
                    return Err(ChainError::TooManyPieces);
                }
            }
            Ok(())
        })?;
        if len < VNET_HDR_LEN + MIN_FRAME_LEN {
            return Err(ChainError::TooShort(len));
        }
        Ok(TxFrame { slices, len })
    }
}

/// A checked receive chain, taken from the ring and not yet used.
#[derive(Debug)]
pub struct RxChain {
    /// Head index, for the used ring.
    pub head: u16,
    /// Total writable bytes.
    pub capacity: usize,
    /// Descriptors in the chain.
    pub descriptors: usize,
    buffers: Vec<(GuestAddress, usize)>,
}

impl RxChain {
    /// Checks a receive chain: device-writable buffers only, inside RAM,
    /// room for at least the header.
    pub fn parse(chain: DescriptorChain<&Memory>, mem: &Memory) -> Result<Self, ChainError> {
        let head = chain.head_index();
        let mut buffers = Vec::new();
        let mut capacity = 0usize;
        let mut descriptors = 0usize;
        walk(chain, |desc| {
            descriptors += 1;
            if !desc.is_write_only() {
                return Err(ChainError::WrongDirection);
            }
            let size = desc.len() as usize;
            if size == 0 {
                return Ok(());
            }
            if !GuestMemoryBackend::check_range(mem, desc.addr(), size) {
                return Err(ChainError::OutsideMemory(desc.addr().0));
            }
            capacity += size;
            buffers.push((desc.addr(), size));
            Ok(())
        })?;
        if capacity < VNET_HDR_LEN {
            return Err(ChainError::TooShort(capacity));
        }
        Ok(RxChain {
            head,
            capacity,
            descriptors,
            buffers,
        })
    }

    /// Copies `data` (at most `capacity` bytes) into the chain's buffers in
    /// order; false if guest memory refused a write.
    pub fn write(&self, mem: &Memory, mut data: &[u8]) -> bool {
        for &(addr, size) in &self.buffers {
            if data.is_empty() {
                break;
            }
            let take = size.min(data.len());
            if mem.write_slice(&data[..take], addr).is_err() {
                return false;
            }
            data = &data[take..];
        }
        data.is_empty()
    }
}
