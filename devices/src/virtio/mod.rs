//! virtio devices. [`mmio::MmioTransport`] is the virtio-mmio (version 2)
//! transport every device sits behind; a device model implements
//! [`VirtioDevice`] and never sees transport registers.
//!
//! Who calls what:
//! - vCPU threads read and write the transport's registers through the MMIO
//!   bus (feature negotiation, queue set-up, status, interrupt ack);
//! - queue notifications arrive on an ioeventfd that KVM signals without an
//!   exit; the event-loop thread then calls [`mmio::MmioTransport::notify`],
//!   which hands the queue to [`VirtioDevice::process_queue`];
//! - a device's own file descriptor (a tap, say) is watched by the event
//!   loop too and handed to [`VirtioDevice::process_backend`];
//! - used buffers are signalled by setting the interrupt status and
//!   triggering the device's [`crate::Interrupt`] (an irqfd).

pub mod block;
pub mod mmio;
#[cfg(any(test, feature = "fuzz"))]
pub mod mmio_fuzz;
pub mod net;
pub mod vsock;

use std::os::fd::RawFd;

pub use virtio_queue::{Queue, QueueT};
pub use vm_memory::GuestMemoryMmap as Memory;

/// Device types (virtio 1.x, section 5).
pub mod device_type {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Socket device (vsock).
    pub const VSOCK: u32 = 19;
}

/// Feature bits that belong to the transport, not the device.
pub mod features {
    /// The device speaks virtio 1.x (modern) only.
    pub const VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
    /// The driver and device use the event-index notification scheme.
    pub const RING_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
    /// Descriptors may point to indirect descriptor tables.
    pub const RING_INDIRECT_DESC: u64 =
        1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
}

/// Whether the driver wants an interrupt for the used buffers just added
/// (with event indexes it may not); yes when the ring cannot be read.
pub(crate) fn needs_interrupt(queue: &mut Queue, mem: &Memory) -> bool {
    queue.needs_notification(mem).unwrap_or(true)
}

/// What the event loop should wait for on a device's
/// [`VirtioDevice::backend_fd`] (EPOLLIN, EPOLLOUT, both or neither).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interest {
    /// Call [`VirtioDevice::process_backend`] when the fd is readable.
    pub readable: bool,
    /// Call [`VirtioDevice::process_backend`] when the fd is writable.
    pub writable: bool,
}

impl Interest {
    /// Readable only: the default for a device with a backend fd.
    pub const READABLE: Interest = Interest {
        readable: true,
        writable: false,
    };
    /// Nothing: the fd should not be watched at all for now.
    pub const NONE: Interest = Interest {
        readable: false,
        writable: false,
    };
}

/// A device model behind a virtio transport.
pub trait VirtioDevice: Send {
    /// The virtio device type ([`device_type`]).
    fn device_type(&self) -> u32;
    /// A short name for logs, e.g. `virtio-blk vda`.
    fn name(&self) -> &str;
    /// The features the device offers, transport bits included.
    fn features(&self) -> u64;
    /// The maximum size of each of its queues; the length is the queue count.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space (ignored by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set DRIVER_OK with `acked` features; queues are ready.
    /// An error puts the device into DEVICE_NEEDS_RESET.
    fn activate(&mut self, _acked: u64) -> Result<(), String> {
        Ok(())
    }
    /// The driver reset the device.
    fn reset(&mut self) {}
    /// The VM was just restored from a snapshot and the device activated
    /// again: tell the driver what it must know (vsock: its connections
    /// are gone). Returns true when the driver must be interrupted.
    fn restored(&mut self, _queues: &mut [Queue], _mem: &Memory) -> bool {
        false
    }
    /// Queue `index` was notified. Returns true when the driver must be
    /// interrupted (used buffers were added and the queue wants to know).
    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &Memory) -> bool;
    /// True when the last `process_queue(index)` stopped early (it used up
    /// its budget while the driver kept adding buffers) and wants to be
    /// called again after the event loop has served everything else, so a
    /// busy or hostile guest cannot monopolise the loop.
    fn rerun(&self, _index: usize) -> bool {
        false
    }
    /// A file descriptor the event loop should watch for this device.
    fn backend_fd(&self) -> Option<RawFd> {
        None
    }
    /// What to watch [`VirtioDevice::backend_fd`] for now. The event loop
    /// asks again after every call into the device (`activate`, `reset`,
    /// `process_queue`, `process_backend`) and re-registers the fd when the
    /// answer changed (level-triggered); for [`Interest::NONE`] it removes
    /// the fd, since epoll reports errors and hang-ups even with no events
    /// asked for. A network device stops asking for `readable` while the
    /// guest has no receive buffers, so a readable tap does not spin the
    /// loop, and asks for `writable` while its tap is full.
    fn backend_interest(&self) -> Interest {
        Interest::READABLE
    }
    /// The backend file descriptor is ready. Returns true when the driver
    /// must be interrupted.
    fn process_backend(&mut self, _queues: &mut [Queue], _mem: &Memory) -> bool {
        false
    }
    /// The copy-on-write layer of a disk whose writes are temporary: a
    /// snapshot keeps it (it is part of the guest's state).
    fn layer(&self) -> Option<&block::overlay::Overlay> {
        None
    }
    /// Counters worth printing when the VM stops (e.g. dropped frames), as
    /// one line; the caller prefixes the device's name.
    fn stats(&self) -> Option<String> {
        None
    }
}
