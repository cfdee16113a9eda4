//! Wiring a virtio device into the VM: its virtio-mmio window on the MMIO
//! bus, an irqfd for its interrupt line, one ioeventfd per queue on the
//! QueueNotify register (so a notification never leaves KVM as an exit),
//! and a subscriber that hands those events to the transport, served by
//! the main event loop or, for a disk, by a thread of its own.
//!
//! Device `index` gets the window `layout::virtio_mmio_addr(index)` and the
//! interrupt line `VIRTIO_IRQ_BASE + index`; the guest learns both from a
//! `virtio_mmio.device=` command-line entry (and from ACPI when it is on).

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use boot::layout;
use devices::bus::Bus;
use devices::virtio::mmio::{MmioTransport, NOTIFY_OFFSET};
use devices::virtio::{Interest, VirtioDevice};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use crate::trace::{Thread, TracedExit, Tracer};
use crate::vm::Vm;

/// Errors attaching a virtio device.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// More devices than interrupt lines.
    #[error("too many virtio devices: kiln has interrupt lines for {max}; use fewer --disk/--net")]
    TooManyDevices {
        /// The limit.
        max: usize,
    },
    /// The transport could not be built.
    #[error(transparent)]
    Transport(#[from] devices::virtio::mmio::MmioError),
    /// The window could not be placed on the bus.
    #[error("cannot place virtio device {0}: {1}")]
    Bus(String, devices::bus::BusError),
    /// irqfd or ioeventfd registration failed.
    #[error(transparent)]
    Vm(#[from] crate::vm::VmError),
}

/// Where a virtio-mmio device lives in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Guest-physical base of its register window.
    pub base: u64,
    /// Size of the window.
    pub size: u64,
    /// Its interrupt line (GSI and IOAPIC pin).
    pub irq: u32,
}

impl Slot {
    /// The slot of device number `index`, if there is an interrupt line for it.
    pub fn for_index(index: usize) -> Result<Slot, VirtioError> {
        let max = (layout::IRQ_MAX - layout::VIRTIO_IRQ_BASE + 1) as usize;
        if index >= max {
            return Err(VirtioError::TooManyDevices { max });
        }
        Ok(Slot {
            base: layout::virtio_mmio_addr(index),
            size: layout::VIRTIO_MMIO_SIZE,
            irq: layout::VIRTIO_IRQ_BASE + index as u32,
        })
    }

    /// The kernel command-line entry that describes this slot to a kernel
    /// built with CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES.
    pub fn cmdline(&self) -> String {
        format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            self.size >> 10,
            self.base,
            self.irq
        )
    }
}

/// A device attached to the VM.
pub struct Attached {
    /// Where it lives.
    pub slot: Slot,
    /// Its transport, shared with the MMIO bus and the event loop.
    pub transport: Arc<Mutex<MmioTransport>>,
    /// The event-loop subscriber that serves its queues and backend.
    pub events: Arc<Mutex<VirtioEvents>>,
}

/// Attaches `device` as virtio device number `index`.
pub fn attach(
    vm: &Vm,
    mmio: &mut Bus,
    index: usize,
    device: Box<dyn VirtioDevice>,
    tracer: Option<Arc<Tracer>>,
) -> Result<Attached, VirtioError> {
    let slot = Slot::for_index(index)?;
    let name = device.name().to_string();
    let irq = Arc::new(vm.irqfd(slot.irq)?);
    let transport = MmioTransport::new(device, vm.mem.clone(), irq)?;
    let queue_evts = (0..transport.queue_count())
        .map(|q| vm.ioeventfd(slot.base + NOTIFY_OFFSET, q as u32))
        .collect::<Result<Vec<_>, _>>()?;
    let backend = transport.device().backend_fd();
    let transport = Arc::new(Mutex::new(transport));
    mmio.insert(slot.base, slot.size, transport.clone())
        .map_err(|e| VirtioError::Bus(name.clone(), e))?;
    log::debug!(
        "{name}: virtio-mmio at {:#x}, irq {}, {} queue(s)",
        slot.base,
        slot.irq,
        queue_evts.len()
    );
    let events = Arc::new(Mutex::new(VirtioEvents {
        transport: transport.clone(),
        queue_evts,
        backend,
        watching: Interest::NONE,
        tracer,
        base: slot.base,
        thread: Thread::EventLoop,
    }));
    Ok(Attached {
        slot,
        transport,
        events,
    })
}

/// Event data of the backend fd (queue eventfds use their queue index).
const BACKEND: u32 = u32::MAX;

/// Serves one device's queue notifications and backend in the event loop.
pub struct VirtioEvents {
    transport: Arc<Mutex<MmioTransport>>,
    queue_evts: Vec<EventFd>,
    backend: Option<RawFd>,
    /// What the backend fd is registered for now (NONE: not registered).
    watching: Interest,
    /// `--trace`: notifications and backend events are recorded here.
    tracer: Option<Arc<Tracer>>,
    /// Base of the device's window (names it in the trace).
    base: u64,
    /// The thread that serves it, as the trace names it.
    thread: Thread,
}

impl VirtioEvents {
    /// Says which thread serves the device (the trace's track for it).
    pub fn set_thread(&mut self, thread: Thread) {
        self.thread = thread;
    }

    /// Re-registers the backend fd when the device wants other events.
    /// An inactive device (not yet started, or reset by the driver) is
    /// never watched; it is picked up again at the next queue notification.
    fn update_backend(&mut self, ops: &mut EventOps) {
        let Some(fd) = self.backend else { return };
        let want = {
            let t = self.transport.lock().expect("virtio lock");
            if t.is_active() {
                t.device().backend_interest()
            } else {
                Interest::NONE
            }
        };
        if want == self.watching {
            return;
        }
        let mut set = EventSet::empty();
        if want.readable {
            set |= EventSet::IN;
        }
        if want.writable {
            set |= EventSet::OUT;
        }
        let result = if self.watching == Interest::NONE {
            ops.add(Events::with_data_raw(fd, BACKEND, set))
        } else if want == Interest::NONE {
            ops.remove(Events::with_data_raw(fd, BACKEND, EventSet::empty()))
        } else {
            ops.modify(Events::with_data_raw(fd, BACKEND, set))
        };
        match result {
            Ok(()) => self.watching = want,
            Err(e) => {
                log::error!("cannot change what the event loop watches on a virtio backend: {e:?}")
            }
        }
    }
}

impl MutEventSubscriber for VirtioEvents {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let data = events.data();
        let tracing = crate::trace::COMPILED_IN && self.tracer.is_some();
        let since = tracing.then(std::time::Instant::now);
        if data == BACKEND {
            self.transport.lock().expect("virtio lock").backend_ready();
        } else if let Some(evt) = self.queue_evts.get(data as usize) {
            // Drain the counter; several notifications may have coalesced.
            let _ = evt.read();
            let again = self
                .transport
                .lock()
                .expect("virtio lock")
                .notify(data as usize);
            if again {
                // Come back after the other ready events (console,
                // signals, other devices) were served.
                let _ = evt.write(1);
            }
        }
        if let (Some(t), Some(since)) = (&self.tracer, since) {
            let event = if data == BACKEND {
                TracedExit::backend(self.base)
            } else {
                TracedExit::notify(self.base, data as usize)
            };
            // Only vCPU exits count towards `kiln explain`'s stop.
            let _ = t.record(self.thread, &event, since.elapsed(), || None);
        }
        self.update_backend(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                log::error!("cannot watch a virtio queue eventfd: {e:?}");
            }
        }
        self.update_backend(ops);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_layout() {
        let s = Slot::for_index(0).unwrap();
        assert_eq!(s.base, layout::VIRTIO_MMIO_START);
        assert_eq!(s.irq, layout::VIRTIO_IRQ_BASE);
        assert_eq!(s.cmdline(), "virtio_mmio.device=4K@0xd0000000:5");
        let s = Slot::for_index(2).unwrap();
        assert_eq!(s.cmdline(), "virtio_mmio.device=4K@0xd0002000:7");
        let last = (layout::IRQ_MAX - layout::VIRTIO_IRQ_BASE) as usize;
        assert_eq!(Slot::for_index(last).unwrap().irq, layout::IRQ_MAX);
        assert!(matches!(
            Slot::for_index(last + 1),
            Err(VirtioError::TooManyDevices { .. })
        ));
    }
}
