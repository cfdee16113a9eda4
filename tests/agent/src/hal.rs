//! virtio-drivers' hardware abstraction for the agent: DMA memory from a
//! static pool, and identity translation everywhere, because the agent
//! runs identity mapped (boot.S maps the first 4 GiB 1:1), so a pointer is
//! its own physical address and the device can use any buffer as it is.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

/// Pages in the DMA pool: one bit each in [`USED`]. A virtio-drivers
/// queue takes two or three pages, the hostile check five.
const POOL_PAGES: usize = 64;

/// The pool: page aligned, in .bss (zeroed), identity mapped.
#[repr(C, align(4096))]
struct Pool([u8; POOL_PAGES * PAGE_SIZE]);
static mut POOL: Pool = Pool([0; POOL_PAGES * PAGE_SIZE]);

/// Which pages of the pool are allocated (bit n = page n). The agent has
/// one thread; an atomic just avoids a `static mut`.
static USED: AtomicU64 = AtomicU64::new(0);

/// Allocates `pages` zeroed, contiguous pages; `None` if the pool has no
/// such run.
pub fn alloc_pages(pages: usize) -> Option<NonNull<u8>> {
    if pages == 0 || pages > POOL_PAGES {
        return None;
    }
    let run = if pages == 64 {
        u64::MAX
    } else {
        (1u64 << pages) - 1
    };
    let used = USED.load(Ordering::Relaxed);
    let first = (0..=POOL_PAGES - pages).find(|&n| used & (run << n) == 0)?;
    USED.store(used | (run << first), Ordering::Relaxed);
    let base = core::ptr::addr_of_mut!(POOL) as *mut u8;
    // SAFETY: first + pages <= POOL_PAGES, so the range is inside POOL,
    // and its pages were free: nothing else refers to them.
    unsafe {
        let p = base.add(first * PAGE_SIZE);
        p.write_bytes(0, pages * PAGE_SIZE);
        NonNull::new(p)
    }
}

/// Returns pages from [`alloc_pages`] to the pool.
pub fn free_pages(addr: usize, pages: usize) {
    let base = core::ptr::addr_of!(POOL) as usize;
    assert!(
        addr >= base && pages > 0,
        "freeing {addr:#x}: not from the pool"
    );
    let first = (addr - base) / PAGE_SIZE;
    assert!(
        first + pages <= POOL_PAGES,
        "freeing {addr:#x}: past the pool"
    );
    let run = if pages == 64 {
        u64::MAX
    } else {
        (1u64 << pages) - 1
    };
    USED.fetch_and(!(run << first), Ordering::Relaxed);
}

/// The agent's [`Hal`].
pub struct AgentHal;

// SAFETY: dma_alloc returns page-aligned, zeroed pages from POOL that no
// one else uses until dma_dealloc; every address is identity mapped, so the
// physical addresses handed to the device are the buffers' own addresses.
unsafe impl Hal for AgentHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        match alloc_pages(pages) {
            Some(p) => (p.as_ptr() as PhysAddr, p),
            // virtio-drivers reads a zero physical address as failure.
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        free_pages(paddr as usize, pages);
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("MMIO at physical address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}
