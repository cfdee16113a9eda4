//! The virtio-mmio transport, version 2 (virtio 1.x, section 4.2): the
//! register window a driver uses to find a device, negotiate features, set
//! up its queues and acknowledge interrupts. One [`MmioTransport`] wraps one
//! [`VirtioDevice`] and sits on the MMIO bus.
//!
//! The status state machine (section 2.1): the driver sets ACKNOWLEDGE,
//! DRIVER, then FEATURES_OK (refused here when it acked features the device
//! did not offer, or not VERSION_1), then sets up queues and sets DRIVER_OK,
//! which activates the device. Writing 0 resets everything. A device whose
//! activation fails is marked DEVICE_NEEDS_RESET.

use std::sync::Arc;

use log::{debug, warn};
use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio as reg;

use super::{features, Memory, Queue, QueueT, VirtioDevice};
use crate::bus::BusDevice;
use crate::Interrupt;

/// "virt" in little-endian: the first register of every virtio-mmio window.
pub const MAGIC: u32 = 0x7472_6976;
/// The transport version this module implements (modern, virtio 1.x).
pub const VERSION: u32 = 2;
/// Vendor ID reported to the driver ("KILN" in little-endian ASCII).
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"KILN");
/// Offset of the QueueNotify register, where a queue eventfd is attached.
pub const NOTIFY_OFFSET: u64 = reg::VIRTIO_MMIO_QUEUE_NOTIFY as u64;
/// Offset of the device-specific configuration space.
const CONFIG_OFFSET: u64 = reg::VIRTIO_MMIO_CONFIG as u64;

/// The name of the register at `offset` in a virtio-mmio window (virtio
/// 1.2, 4.2.2), for kiln's exit trace; offsets from 0x100 on are the
/// device's configuration space.
pub fn register_name(offset: u64) -> &'static str {
    if offset >= CONFIG_OFFSET {
        return "Config";
    }
    match offset as u32 {
        reg::VIRTIO_MMIO_MAGIC_VALUE => "MagicValue",
        reg::VIRTIO_MMIO_VERSION => "Version",
        reg::VIRTIO_MMIO_DEVICE_ID => "DeviceID",
        reg::VIRTIO_MMIO_VENDOR_ID => "VendorID",
        reg::VIRTIO_MMIO_DEVICE_FEATURES => "DeviceFeatures",
        reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL => "DeviceFeaturesSel",
        reg::VIRTIO_MMIO_DRIVER_FEATURES => "DriverFeatures",
        reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL => "DriverFeaturesSel",
        reg::VIRTIO_MMIO_QUEUE_SEL => "QueueSel",
        reg::VIRTIO_MMIO_QUEUE_NUM_MAX => "QueueNumMax",
        reg::VIRTIO_MMIO_QUEUE_NUM => "QueueNum",
        reg::VIRTIO_MMIO_QUEUE_READY => "QueueReady",
        reg::VIRTIO_MMIO_QUEUE_NOTIFY => "QueueNotify",
        reg::VIRTIO_MMIO_INTERRUPT_STATUS => "InterruptStatus",
        reg::VIRTIO_MMIO_INTERRUPT_ACK => "InterruptACK",
        reg::VIRTIO_MMIO_STATUS => "Status",
        reg::VIRTIO_MMIO_QUEUE_DESC_LOW => "QueueDescLow",
        reg::VIRTIO_MMIO_QUEUE_DESC_HIGH => "QueueDescHigh",
        reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW => "QueueDriverLow",
        reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH => "QueueDriverHigh",
        reg::VIRTIO_MMIO_QUEUE_USED_LOW => "QueueDeviceLow",
        reg::VIRTIO_MMIO_QUEUE_USED_HIGH => "QueueDeviceHigh",
        reg::VIRTIO_MMIO_CONFIG_GENERATION => "ConfigGeneration",
        _ => "reserved",
    }
}

/// The device-status bits set in `status`, by their spec names.
pub fn status_names(status: u32) -> String {
    let names = [
        (VIRTIO_CONFIG_S_ACKNOWLEDGE, "ACKNOWLEDGE"),
        (VIRTIO_CONFIG_S_DRIVER, "DRIVER"),
        (VIRTIO_CONFIG_S_FEATURES_OK, "FEATURES_OK"),
        (VIRTIO_CONFIG_S_DRIVER_OK, "DRIVER_OK"),
        (VIRTIO_CONFIG_S_NEEDS_RESET, "NEEDS_RESET"),
        (VIRTIO_CONFIG_S_FAILED, "FAILED"),
    ];
    let set: Vec<&str> = names
        .iter()
        .filter(|(bit, _)| status & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    if set.is_empty() {
        "reset".into()
    } else {
        set.join("|")
    }
}

/// Errors creating a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// A queue size reported by the device is not usable.
    #[error("{name}: queue {index} has an invalid maximum size {size}")]
    CreateQueue {
        /// The device's name.
        name: String,
        /// Queue index.
        index: usize,
        /// The size it asked for.
        size: u16,
    },
    /// A saved state does not fit this device.
    #[error("{name}: the saved state does not fit this device: {why}")]
    BadState {
        /// The device's name.
        name: String,
        /// What is wrong.
        why: String,
    },
}

/// One queue's saved state (virtio-queue's `QueueState`, with serde).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// The maximum size the device offers.
    pub max_size: u16,
    /// Next available-ring index the device will read.
    pub next_avail: u16,
    /// Next used-ring index the device will write.
    pub next_used: u16,
    /// VIRTIO_F_RING_EVENT_IDX negotiated.
    pub event_idx: bool,
    /// The size the driver chose.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available ring address.
    pub avail_ring: u64,
    /// Used ring address.
    pub used_ring: u64,
}

impl From<virtio_queue::QueueState> for QueueSnapshot {
    fn from(q: virtio_queue::QueueState) -> Self {
        QueueSnapshot {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl From<QueueSnapshot> for virtio_queue::QueueState {
    fn from(q: QueueSnapshot) -> Self {
        virtio_queue::QueueState {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

/// What a transport needs to continue after a restore: the registers a
/// driver wrote and each queue's state. The device model itself is
/// rebuilt from the VM's configuration and re-activated with the same
/// features.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioState {
    /// The device type, checked on restore.
    pub device_type: u32,
    /// QueueSel.
    pub queue_sel: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// The features the driver acked.
    pub driver_features: u64,
    /// The device status.
    pub status: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// Every queue.
    pub queues: Vec<QueueSnapshot>,
}

/// The three parts of a split virtqueue, each with its own address.
#[derive(Debug, Clone, Copy)]
enum Ring {
    Desc,
    Avail,
    Used,
}

/// One virtio device behind a virtio-mmio register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: Memory,
    interrupt: Arc<dyn Interrupt>,
    queues: Vec<Queue>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    interrupt_status: u32,
    config_generation: u32,
}

impl MmioTransport {
    /// Wraps `device`, whose queues live in `mem` and whose interrupt is
    /// `interrupt`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: Memory,
        interrupt: Arc<dyn Interrupt>,
    ) -> Result<Self, MmioError> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .enumerate()
            .map(|(index, &size)| {
                Queue::new(size).map_err(|_| MmioError::CreateQueue {
                    name: device.name().to_string(),
                    index,
                    size,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            device,
            mem,
            interrupt,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
        })
    }

    /// The wrapped device.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// How many queues the device has (one notify eventfd each).
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// True once the driver has set DRIVER_OK and the device runs.
    pub fn is_active(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0
            && self.status & VIRTIO_CONFIG_S_NEEDS_RESET == 0
    }

    /// The driver notified queue `index` (through its ioeventfd, or by an
    /// MMIO write when no ioeventfd caught it). Returns true when the
    /// device stopped early and wants another call (see
    /// [`VirtioDevice::rerun`]).
    pub fn notify(&mut self, index: usize) -> bool {
        if !self.is_active() {
            debug!("{}: notify before DRIVER_OK ignored", self.device.name());
            return false;
        }
        match self.queues.get(index) {
            Some(q) if q.ready() => {
                if self
                    .device
                    .process_queue(index, &mut self.queues, &self.mem)
                {
                    self.signal_used();
                }
                self.device.rerun(index)
            }
            _ => {
                debug!(
                    "{}: notify for queue {index}, which is not ready",
                    self.device.name()
                );
                false
            }
        }
    }

    /// The transport's state, for a snapshot (taken while no vCPU runs).
    pub fn save(&self) -> MmioState {
        MmioState {
            device_type: self.device.device_type(),
            queue_sel: self.queue_sel,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            status: self.status,
            interrupt_status: self.interrupt_status,
            config_generation: self.config_generation,
            queues: self.queues.iter().map(|q| q.state().into()).collect(),
        }
    }

    /// Puts a freshly made transport into the state `s` was saved in: the
    /// registers, the queues, and an active device activated again with
    /// the same features. Then the device may tell the driver about the
    /// restore ([`VirtioDevice::restored`]), and every ready queue is
    /// served once, so buffers the driver added just before the snapshot
    /// (whose notification the old process took with it) are not left
    /// waiting. Nothing is changed when the state does not fit.
    pub fn restore(&mut self, s: &MmioState) -> Result<(), MmioError> {
        let bad = |why: String| MmioError::BadState {
            name: self.device.name().to_string(),
            why,
        };
        if s.device_type != self.device.device_type() {
            return Err(bad(format!(
                "it is of device type {}, this device is of type {}",
                s.device_type,
                self.device.device_type()
            )));
        }
        if s.queues.len() != self.queues.len() {
            return Err(bad(format!(
                "it has {} queues, this device {}",
                s.queues.len(),
                self.queues.len()
            )));
        }
        let mut queues = Vec::with_capacity(s.queues.len());
        for (i, (saved, now)) in s.queues.iter().zip(&self.queues).enumerate() {
            if saved.max_size != now.max_size() {
                return Err(bad(format!(
                    "queue {i} had at most {} entries, now {}",
                    saved.max_size,
                    now.max_size()
                )));
            }
            let q = Queue::try_from(virtio_queue::QueueState::from(*saved))
                .map_err(|e| bad(format!("queue {i}: {e:?}")))?;
            if q.ready() && !q.is_valid(&self.mem) {
                return Err(bad(format!("queue {i} lies outside guest memory")));
            }
            queues.push(q);
        }
        self.queues = queues;
        self.queue_sel = s.queue_sel;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.driver_features = s.driver_features;
        self.status = s.status;
        self.interrupt_status = s.interrupt_status;
        self.config_generation = s.config_generation;
        if self.is_active() {
            if let Err(e) = self.device.activate(self.driver_features) {
                warn!(
                    "{}: cannot activate after a restore: {e}",
                    self.device.name()
                );
                self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
                self.signal_config();
                return Ok(());
            }
            if self.device.restored(&mut self.queues, &self.mem) {
                self.signal_used();
            }
            for i in 0..self.queues.len() {
                while self.notify(i) {}
            }
        }
        Ok(())
    }

    /// The device's backend file descriptor is ready.
    pub fn backend_ready(&mut self) {
        if self.is_active() && self.device.process_backend(&mut self.queues, &self.mem) {
            self.signal_used();
        }
    }

    fn signal_used(&mut self) {
        self.interrupt_status |= reg::VIRTIO_MMIO_INT_VRING;
        if let Err(e) = self.interrupt.trigger() {
            warn!("{}: cannot raise the interrupt: {e}", self.device.name());
        }
    }

    fn signal_config(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        self.interrupt_status |= reg::VIRTIO_MMIO_INT_CONFIG;
        if let Err(e) = self.interrupt.trigger() {
            warn!("{}: cannot raise the interrupt: {e}", self.device.name());
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        debug!("{}: reset by the driver", self.device.name());
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt_status = 0;
    }

    fn read_register(&mut self, offset: u32) -> u32 {
        match offset {
            reg::VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            reg::VIRTIO_MMIO_VERSION => VERSION,
            reg::VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            reg::VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            reg::VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            reg::VIRTIO_MMIO_QUEUE_NUM_MAX => {
                self.selected_queue().map_or(0, |q| q.max_size().into())
            }
            reg::VIRTIO_MMIO_QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready().into()),
            reg::VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt_status,
            reg::VIRTIO_MMIO_STATUS => self.status,
            reg::VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            _ => {
                debug!(
                    "{}: read of unknown register {offset:#x}",
                    self.device.name()
                );
                0
            }
        }
    }

    /// May the driver change the selected queue's set-up now? Only while
    /// that queue is not ready (section 4.2.2.1: a driver stops a queue by
    /// writing 0 to QueueReady before touching it).
    fn queue_writable(&self) -> bool {
        self.queues
            .get(self.queue_sel as usize)
            .is_some_and(|q| !q.ready())
    }

    fn write_register(&mut self, offset: u32, v: u32) {
        let queue_reg = matches!(
            offset,
            reg::VIRTIO_MMIO_QUEUE_NUM
                | reg::VIRTIO_MMIO_QUEUE_DESC_LOW
                | reg::VIRTIO_MMIO_QUEUE_DESC_HIGH
                | reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW
                | reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH
                | reg::VIRTIO_MMIO_QUEUE_USED_LOW
                | reg::VIRTIO_MMIO_QUEUE_USED_HIGH
        );
        if queue_reg && !self.queue_writable() {
            warn!(
                "{}: queue register {offset:#x} written in status {:#x} (queue {}): ignored",
                self.device.name(),
                self.status,
                self.queue_sel
            );
            return;
        }
        match offset {
            reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::VIRTIO_MMIO_DRIVER_FEATURES => {
                if self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
                    warn!(
                        "{}: features written after FEATURES_OK: ignored",
                        self.device.name()
                    );
                    return;
                }
                match self.driver_features_sel {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {}
                }
            }
            reg::VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            reg::VIRTIO_MMIO_QUEUE_NUM => {
                let name = self.device.name().to_string();
                if let Some(q) = self.selected_queue() {
                    // Zero (written by drivers tidying up), too large or not
                    // a power of two: keep the old size; is_valid() decides
                    // at QueueReady.
                    if q.try_set_size(v as u16).is_err() || v > u32::from(u16::MAX) {
                        debug!("{name}: queue size {v} refused");
                    }
                }
            }
            reg::VIRTIO_MMIO_QUEUE_READY => self.write_queue_ready(v),
            reg::VIRTIO_MMIO_QUEUE_DESC_LOW => self.set_ring(Ring::Desc, v, false),
            reg::VIRTIO_MMIO_QUEUE_DESC_HIGH => self.set_ring(Ring::Desc, v, true),
            reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW => self.set_ring(Ring::Avail, v, false),
            reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH => self.set_ring(Ring::Avail, v, true),
            reg::VIRTIO_MMIO_QUEUE_USED_LOW => self.set_ring(Ring::Used, v, false),
            reg::VIRTIO_MMIO_QUEUE_USED_HIGH => self.set_ring(Ring::Used, v, true),
            reg::VIRTIO_MMIO_QUEUE_NOTIFY => {
                // Without an ioeventfd there is no loop to come back to:
                // finish the work here.
                while self.notify(v as usize) {}
            }
            reg::VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt_status &= !v,
            reg::VIRTIO_MMIO_STATUS => self.write_status(v),
            _ => debug!(
                "{}: write of {v:#x} to unknown register {offset:#x}",
                self.device.name()
            ),
        }
    }

    /// Sets the low or high half of one of the selected queue's ring
    /// addresses. A misaligned address is refused (and logged at debug
    /// level only: a guest can write these as often as it likes).
    fn set_ring(&mut self, ring: Ring, v: u32, high: bool) {
        let name = self.device.name().to_string();
        let Some(q) = self.selected_queue() else {
            return;
        };
        let old = match ring {
            Ring::Desc => q.desc_table(),
            Ring::Avail => q.avail_ring(),
            Ring::Used => q.used_ring(),
        };
        let addr = if high {
            (old & 0xffff_ffff) | (u64::from(v) << 32)
        } else {
            (old & !0xffff_ffff) | u64::from(v)
        };
        let addr = vm_memory::GuestAddress(addr);
        let result = match ring {
            Ring::Desc => q.try_set_desc_table_address(addr),
            Ring::Avail => q.try_set_avail_ring_address(addr),
            Ring::Used => q.try_set_used_ring_address(addr),
        };
        if result.is_err() {
            debug!(
                "{name}: misaligned {ring:?} ring address {:#x} refused",
                addr.0
            );
        }
    }

    fn write_queue_ready(&mut self, v: u32) {
        // Stopping a queue is always allowed (reading QueueReady returns
        // what was last written); starting one needs FEATURES_OK.
        if v == 1 && self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            warn!(
                "{}: QueueReady set in status {:#x}, before FEATURES_OK: ignored",
                self.device.name(),
                self.status
            );
            return;
        }
        let event_idx = self.driver_features & features::RING_EVENT_IDX != 0;
        let Some(q) = self.queues.get_mut(self.queue_sel as usize) else {
            return;
        };
        q.set_event_idx(event_idx);
        // is_valid() only looks at a queue that is marked ready.
        q.set_ready(v == 1);
        if v == 1 && !q.is_valid(&self.mem) {
            q.set_ready(false);
            warn!(
                "{}: queue {} is not valid (size {}, rings at {:#x}/{:#x}/{:#x}): not made ready",
                self.device.name(),
                self.queue_sel,
                q.size(),
                q.desc_table(),
                q.avail_ring(),
                q.used_ring()
            );
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if v & old != old {
            warn!(
                "{}: status {v:#x} clears bits of {old:#x} without a reset: ignored",
                self.device.name()
            );
            return;
        }
        let new = v & !old;
        let mut status = v;
        if new & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            let offered = self.device.features();
            let acked = self.driver_features;
            if acked & !offered != 0 || acked & features::VERSION_1 == 0 {
                warn!(
                    "{}: driver acked features {acked:#x}, device offers {offered:#x} (VERSION_1 required): FEATURES_OK refused",
                    self.device.name()
                );
                status &= !VIRTIO_CONFIG_S_FEATURES_OK;
            }
        }
        let ready_for_driver_ok =
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
        if new & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            if status & ready_for_driver_ok != ready_for_driver_ok {
                warn!(
                    "{}: DRIVER_OK in status {status:#x} before FEATURES_OK: ignored",
                    self.device.name()
                );
                status &= !VIRTIO_CONFIG_S_DRIVER_OK;
            } else {
                self.status = status;
                if let Err(e) = self.device.activate(self.driver_features) {
                    warn!("{}: cannot activate: {e}", self.device.name());
                    self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
                    self.signal_config();
                    return;
                }
                debug!(
                    "{}: active, features {:#x}",
                    self.device.name(),
                    self.driver_features
                );
                return;
            }
        }
        if new & VIRTIO_CONFIG_S_FAILED != 0 {
            warn!(
                "{}: the driver gave up on the device (FAILED)",
                self.device.name()
            );
        }
        self.status = status;
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            self.device.read_config(offset - CONFIG_OFFSET, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            debug!(
                "{}: {}-byte read at {offset:#x} (registers are 32-bit)",
                self.device.name(),
                data.len()
            );
            data.fill(0);
            return;
        }
        let v = self.read_register(offset as u32);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            self.device.write_config(offset - CONFIG_OFFSET, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            debug!(
                "{}: {}-byte write at {offset:#x} ignored (registers are 32-bit)",
                self.device.name(),
                data.len()
            );
            return;
        };
        if offset.is_multiple_of(4) {
            self.write_register(offset as u32, u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn registers_and_status_have_their_spec_names() {
        assert_eq!(register_name(0x50), "QueueNotify");
        assert_eq!(register_name(0x70), "Status");
        assert_eq!(register_name(0x104), "Config");
        assert_eq!(register_name(0x0fe), "reserved");
        assert_eq!(status_names(0), "reset");
        assert_eq!(
            status_names(0xf),
            "ACKNOWLEDGE|DRIVER|FEATURES_OK|DRIVER_OK"
        );
    }

    /// A device that records what the transport did to it.
    #[derive(Default)]
    struct Probe {
        notified: Arc<Mutex<Vec<usize>>>,
        activated: Arc<Mutex<Option<u64>>>,
        resets: Arc<AtomicU32>,
        fail_activate: bool,
    }

    impl VirtioDevice for Probe {
        fn device_type(&self) -> u32 {
            2
        }
        fn name(&self) -> &str {
            "probe"
        }
        fn features(&self) -> u64 {
            features::VERSION_1 | features::RING_EVENT_IDX | 1 << 5
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = 0x40 + offset as u8 + i as u8;
            }
        }
        fn activate(&mut self, acked: u64) -> Result<(), String> {
            if self.fail_activate {
                return Err("no".into());
            }
            *self.activated.lock().unwrap() = Some(acked);
            Ok(())
        }
        fn reset(&mut self) {
            self.resets.fetch_add(1, Ordering::SeqCst);
        }
        fn process_queue(&mut self, index: usize, _: &mut [Queue], _: &Memory) -> bool {
            self.notified.lock().unwrap().push(index);
            true
        }
    }

    use crate::CountingInterrupt as Counter;

    fn mem() -> Memory {
        Memory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn transport(probe: Probe) -> (MmioTransport, Arc<Counter>) {
        let irq = Arc::new(Counter::default());
        let t = MmioTransport::new(Box::new(probe), mem(), irq.clone()).unwrap();
        (t, irq)
    }

    use crate::virtio::mmio_fuzz::{read32 as r, write32 as w};

    /// Walks the driver side of initialisation (section 3.1.1) for both
    /// queues, with rings placed in the first MiB.
    fn bring_up(t: &mut MmioTransport, acked: u64) {
        w(t, reg::VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        w(
            t,
            reg::VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        w(t, reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        w(t, reg::VIRTIO_MMIO_DRIVER_FEATURES, acked as u32);
        w(t, reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        w(t, reg::VIRTIO_MMIO_DRIVER_FEATURES, (acked >> 32) as u32);
        let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
        w(t, reg::VIRTIO_MMIO_STATUS, s);
        for q in 0..2u32 {
            let base = 0x1000 * (1 + 4 * q);
            w(t, reg::VIRTIO_MMIO_QUEUE_SEL, q);
            w(t, reg::VIRTIO_MMIO_QUEUE_NUM, 8);
            w(t, reg::VIRTIO_MMIO_QUEUE_DESC_LOW, base);
            w(t, reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW, base + 0x1000);
            w(t, reg::VIRTIO_MMIO_QUEUE_USED_LOW, base + 0x2000);
            w(t, reg::VIRTIO_MMIO_QUEUE_READY, 1);
        }
        if r(t, reg::VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            w(t, reg::VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK);
        }
    }

    #[test]
    fn a_saved_transport_is_restored_into_a_new_one_and_reactivated() {
        let probe = Probe::default();
        let (mut t, _) = transport(probe);
        let acked = features::VERSION_1 | features::RING_EVENT_IDX;
        bring_up(&mut t, acked);
        assert!(t.is_active());
        w(&mut t, reg::VIRTIO_MMIO_QUEUE_SEL, 1);
        let saved = t.save();
        assert_eq!(saved.queues.len(), 2);
        assert!(saved.queues.iter().all(|q| q.ready && q.size == 8));

        let fresh = Probe::default();
        let (activated, notified) = (fresh.activated.clone(), fresh.notified.clone());
        let (mut t2, irq) = transport(fresh);
        t2.restore(&saved).unwrap();
        // The probe says every queue used buffers, so an interrupt is pending.
        assert_eq!(
            t2.save(),
            MmioState {
                interrupt_status: reg::VIRTIO_MMIO_INT_VRING,
                ..saved.clone()
            }
        );
        assert_eq!(*activated.lock().unwrap(), Some(acked), "activated again");
        assert_eq!(
            *notified.lock().unwrap(),
            vec![0, 1],
            "every queue served once"
        );
        assert!(irq.0.load(Ordering::SeqCst) > 0);
        assert_eq!(
            r(&mut t2, reg::VIRTIO_MMIO_QUEUE_NUM_MAX),
            8,
            "QueueSel kept"
        );

        // States that do not fit are refused and change nothing.
        let (mut t3, _) = transport(Probe::default());
        let mut wrong = saved.clone();
        wrong.device_type = 1;
        assert!(t3.restore(&wrong).is_err());
        let mut wrong = saved.clone();
        wrong.queues.pop();
        assert!(t3.restore(&wrong).is_err());
        let mut wrong = saved.clone();
        wrong.queues[0].size = 3;
        assert!(t3.restore(&wrong).is_err());
        let mut wrong = saved.clone();
        wrong.queues[1].used_ring = 0x7000_0000;
        assert!(t3.restore(&wrong).is_err());
        assert!(!t3.is_active());
    }

    #[test]
    fn identifies_itself() {
        let (mut t, _) = transport(Probe::default());
        assert_eq!(r(&mut t, reg::VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(r(&mut t, reg::VIRTIO_MMIO_VERSION), 2);
        assert_eq!(r(&mut t, reg::VIRTIO_MMIO_DEVICE_ID), 2);
        assert_eq!(r(&mut t, reg::VIRTIO_MMIO_VENDOR_ID), VENDOR_ID);
        w(&mut t, reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        assert_eq!(
            r(&mut t, reg::VIRTIO_MMIO_DEVICE_FEATURES),
            1 << 29 | 1 << 5
        );
        w(&mut t, reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, reg::VIRTIO_MMIO_DEVICE_FEATURES), 1);
        w(&mut t, reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
        assert_eq!(r(&mut t, reg::VIRTIO_MMIO_DEVICE_FEATURES), 0);
        w(&mut t, reg::VIRTIO_MMIO_QUEUE_SEL, 1);
        assert_eq!(r(&mut t, reg::VIRTIO_MMIO_QUEUE_NUM_MAX), 8);
        w(&mut t, reg::VIRTIO_MMIO_QUEUE_SEL, 2);
        assert_eq!(r(&mut t, reg::VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
    }

    #[test]
    fn config_space_goes_to_the_device_at_any_width() {
        let (mut t, _) = transport(Probe::default());
        let mut b = [0u8; 1];
        t.read(0x102, &mut b);
        assert_eq!(b, [0x42]);
        let mut q = [0u8; 8];
        t.read(0x100, &mut q);
        assert_eq!(q[7], 0x47);
    }

    #[test]
    fn odd_widths_on_registers_are_ignored() {
        let (mut t, _) = transport(Probe::default());
        let mut b = [0xffu8; 2];
        t.read(0, &mut b);
        assert_eq!(b, [0, 0]);
        t.write(reg::VIRTIO_MMIO_STATUS.into(), &[1]);
        assert_eq!(r(&mut t, reg::VIRTIO_MMIO_STATUS), 0);
    }

    #[test]
    fn full_initialisation_activates_with_the_acked_features() {
        let p = Probe::default();
        let activated = p.activated.clone();
        let (mut t, _) = transport(p);
        bring_up(&mut t, features::VERSION_1 | features::RING_EVENT_IDX);
        assert!(t.is_active());
        assert_eq!(
            *activated.lock().unwrap(),
            Some(features::VERSION_1 | features::RING_EVENT_IDX)
        );
        assert_eq!(r(&mut t, reg::VIRTIO_MMIO_QUEUE_READY), 1);
    }

    #[test]
    fn features_not_offered_or_legacy_drivers_are_refused() {
        for acked in [features::VERSION_1 | 1 << 7, 1 << 5] {
            let p = Probe::default();
            let activated = p.activated.clone();
            let (mut t, _) = transport(p);
            bring_up(&mut t, acked);
            assert_eq!(
                r(&mut t, reg::VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
                0
            );
            assert!(!t.is_active());
            assert_eq!(*activated.lock().unwrap(), None);
        }
    }

    #[test]
    fn driver_ok_without_features_ok_is_ignored() {
        let (mut t, _) = transport(Probe::default());
        w(&mut t, reg::VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        w(
            &mut t,
            reg::VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER_OK,
        );
        assert!(!t.is_active());
        assert_eq!(
            r(&mut t, reg::VIRTIO_MMIO_STATUS),
            VIRTIO_CONFIG_S_ACKNOWLEDGE
        );
    }

    #[test]
    fn status_bits_cannot_be_cleared_without_reset() {
        let (mut t, _) = transport(Probe::default());
        bring_up(&mut t, features::VERSION_1);
        w(&mut t, reg::VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        assert!(t.is_active());
    }

    #[test]
    fn queue_setup_after_driver_ok_is_ignored() {
        let (mut t, _) = transport(Probe::default());
        bring_up(&mut t, features::VERSION_1);
        w(&mut t, reg::VIRTIO_MMIO_QUEUE_SEL, 0);
        w(&mut t, reg::VIRTIO_MMIO_QUEUE_DESC_LOW, 0xdead_0000);
        assert_eq!(t.queues[0].desc_table(), 0x1000);
    }

    #[test]
    fn a_running_queue_can_be_stopped_and_reads_back_0() {
        let (mut t, _) = transport(Probe::default());
        bring_up(&mut t, features::VERSION_1);
        w(&mut t, reg::VIRTIO_MMIO_QUEUE_SEL, 1);
        w(&mut t, reg::VIRTIO_MMIO_QUEUE_READY, 0);
        assert_eq!(r(&mut t, reg::VIRTIO_MMIO_QUEUE_READY), 0);
        // A stopped queue may be set up again; it is not served meanwhile.
        w(&mut t, reg::VIRTIO_MMIO_QUEUE_DESC_LOW, 0x8000);
        assert_eq!(t.queues[1].desc_table(), 0x8000);
        t.notify(1);
        // After a reset, zeroing the registers is quietly accepted.
        w(&mut t, reg::VIRTIO_MMIO_STATUS, 0);
        w(&mut t, reg::VIRTIO_MMIO_QUEUE_DESC_LOW, 0);
        assert_eq!(t.queues[1].desc_table(), 0);
    }

    #[test]
    fn queue_outside_memory_is_not_made_ready() {
        let p = Probe::default();
        let (mut t, _) = transport(p);
        w(
            &mut t,
            reg::VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        w(&mut t, reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        w(&mut t, reg::VIRTIO_MMIO_DRIVER_FEATURES, 1);
        w(
            &mut t,
            reg::VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
        );
        w(&mut t, reg::VIRTIO_MMIO_QUEUE_SEL, 0);
        w(&mut t, reg::VIRTIO_MMIO_QUEUE_NUM, 8);
        w(&mut t, reg::VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1000);
        w(&mut t, reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x2000);
        w(&mut t, reg::VIRTIO_MMIO_QUEUE_USED_LOW, 0);
        w(&mut t, reg::VIRTIO_MMIO_QUEUE_USED_HIGH, 0x10);
        w(&mut t, reg::VIRTIO_MMIO_QUEUE_READY, 1);
        assert_eq!(r(&mut t, reg::VIRTIO_MMIO_QUEUE_READY), 0);
    }

    #[test]
    fn notify_reaches_the_device_and_raises_the_interrupt() {
        let p = Probe::default();
        let notified = p.notified.clone();
        let (mut t, irq) = transport(p);
        // Before DRIVER_OK a notify is ignored.
        w(&mut t, reg::VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert!(notified.lock().unwrap().is_empty());
        bring_up(&mut t, features::VERSION_1);
        w(&mut t, reg::VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        t.notify(0);
        t.notify(7);
        assert_eq!(*notified.lock().unwrap(), vec![1, 0]);
        assert_eq!(irq.0.load(Ordering::SeqCst), 2);
        assert_eq!(r(&mut t, reg::VIRTIO_MMIO_INTERRUPT_STATUS), 1);
        w(&mut t, reg::VIRTIO_MMIO_INTERRUPT_ACK, 1);
        assert_eq!(r(&mut t, reg::VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    }

    #[test]
    fn reset_clears_everything_and_tells_the_device() {
        let p = Probe::default();
        let resets = p.resets.clone();
        let (mut t, _) = transport(p);
        bring_up(&mut t, features::VERSION_1);
        w(&mut t, reg::VIRTIO_MMIO_STATUS, 0);
        assert!(!t.is_active());
        assert_eq!(r(&mut t, reg::VIRTIO_MMIO_STATUS), 0);
        assert_eq!(resets.load(Ordering::SeqCst), 1);
        w(&mut t, reg::VIRTIO_MMIO_QUEUE_SEL, 0);
        assert_eq!(r(&mut t, reg::VIRTIO_MMIO_QUEUE_READY), 0);
        // And it can be brought up again.
        bring_up(&mut t, features::VERSION_1);
        assert!(t.is_active());
    }

    #[test]
    fn failed_activation_needs_reset_and_raises_a_config_interrupt() {
        let (mut t, irq) = transport(Probe {
            fail_activate: true,
            ..Probe::default()
        });
        bring_up(&mut t, features::VERSION_1);
        assert!(!t.is_active());
        assert_ne!(
            r(&mut t, reg::VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
            0
        );
        assert_eq!(r(&mut t, reg::VIRTIO_MMIO_INTERRUPT_STATUS), 2);
        assert_eq!(r(&mut t, reg::VIRTIO_MMIO_CONFIG_GENERATION), 1);
        assert_eq!(irq.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn rings_are_checked_against_guest_memory() {
        let m = mem();
        m.write_obj(0u16, GuestAddress(0x2000)).unwrap();
        let (mut t, _) = transport(Probe::default());
        bring_up(&mut t, features::VERSION_1);
        assert!(t.queues.iter().all(|q| q.is_valid(&m)));
    }
}
