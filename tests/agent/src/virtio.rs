//! Finding virtio-mmio devices and opening block devices through
//! virtio-drivers.
//!
//! Devices are found by probing the windows where VMMs put them for the
//! virtio magic value: kiln and Firecracker 4 KiB apart from 0xd0000000,
//! QEMU microvm 512 bytes apart from 0xfeb00000. Windows described on the
//! command line (`virtio_mmio.device=SIZE@BASE:IRQ`, which kiln, QEMU
//! microvm with `acpi=off` and Firecracker all pass) are probed too, and
//! give each device its interrupt line; without one, a window at
//! 0xd0000000 + i * 0x1000 has IOAPIC pin 5 + i (kiln's and Firecracker's
//! layout). Devices are numbered in address order, so on kiln "disk N" is
//! the N-th `--disk`.

use core::mem::ManuallyDrop;
use core::ptr::NonNull;

use virtio_drivers::device::blk::VirtIOBlk;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};

use crate::checks::Fail;
use crate::hal::AgentHal;
use crate::tests::Context;
use crate::{cmdline, fail, io, println};

/// "virt" in little endian: the MagicValue register of a virtio-mmio device.
pub const MAGIC: u32 = 0x7472_6976;
/// virtio device ID of a block device.
pub const DEVICE_ID_BLOCK: u32 = 2;

/// Register offsets in a virtio-mmio window (virtio 1.2, 4.2.2).
pub mod reg {
    pub const MAGIC: usize = 0x000;
    pub const VERSION: usize = 0x004;
    pub const DEVICE_ID: usize = 0x008;
    pub const DEVICE_FEATURES: usize = 0x010;
    pub const DEVICE_FEATURES_SEL: usize = 0x014;
    pub const DRIVER_FEATURES: usize = 0x020;
    pub const DRIVER_FEATURES_SEL: usize = 0x024;
    pub const QUEUE_SEL: usize = 0x030;
    pub const QUEUE_NUM_MAX: usize = 0x034;
    pub const QUEUE_NUM: usize = 0x038;
    pub const QUEUE_READY: usize = 0x044;
    pub const QUEUE_NOTIFY: usize = 0x050;
    pub const INTERRUPT_STATUS: usize = 0x060;
    pub const STATUS: usize = 0x070;
    pub const QUEUE_DESC_LOW: usize = 0x080;
    pub const QUEUE_DRIVER_LOW: usize = 0x090;
    pub const QUEUE_DEVICE_LOW: usize = 0x0a0;
    pub const CONFIG: usize = 0x100;
}

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// Feature bits used here (virtio 1.2, 5.2.3 and 6).
pub mod feature {
    pub const BLK_RO: u64 = 1 << 5;
    pub const BLK_FLUSH: u64 = 1 << 9;
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    pub const VERSION_1: u64 = 1 << 32;
}

/// Where VMMs put virtio-mmio windows: (first, stride, count).
const WINDOWS: &[(usize, usize, usize)] = &[(0xd000_0000, 0x1000, 32), (0xfeb0_0000, 0x200, 32)];
/// kiln's and Firecracker's first virtio IOAPIC pin (window 0).
const KILN_FIRST_PIN: u32 = 5;
/// At most this many devices are listed.
const MAX_DEVICES: usize = 32;

/// One virtio-mmio device.
#[derive(Clone, Copy, Debug, Default)]
pub struct Device {
    pub base: usize,
    pub size: usize,
    pub device_id: u32,
    pub version: u32,
    /// Its interrupt (a GSI: IOAPIC pin), if known.
    pub gsi: Option<u32>,
}

impl Device {
    /// Reads a 32-bit register.
    pub fn read(&self, offset: usize) -> u32 {
        // SAFETY: base is a probed virtio-mmio window in the identity map
        // and offset one of its registers.
        unsafe { io::mmio_read32(self.base + offset) }
    }

    /// Writes a 32-bit register.
    pub fn write(&self, offset: usize, value: u32) {
        // SAFETY: as for `read`.
        unsafe { io::mmio_write32(self.base + offset, value) }
    }

    /// The 64 feature bits the device offers.
    pub fn device_features(&self) -> u64 {
        self.write(reg::DEVICE_FEATURES_SEL, 0);
        let low = self.read(reg::DEVICE_FEATURES);
        self.write(reg::DEVICE_FEATURES_SEL, 1);
        let high = self.read(reg::DEVICE_FEATURES);
        u64::from(high) << 32 | u64::from(low)
    }
}

/// The devices found, in address order, and how many windows held an
/// empty transport (device ID 0: QEMU microvm has 24 of them).
pub struct Devices {
    list: [Device; MAX_DEVICES],
    len: usize,
    pub empty: usize,
}

impl Devices {
    /// The devices.
    pub fn all(&self) -> &[Device] {
        &self.list[..self.len]
    }

    /// The `n`-th device with this device ID.
    pub fn nth(&self, device_id: u32, n: usize) -> Option<Device> {
        self.all()
            .iter()
            .filter(|d| d.device_id == device_id)
            .nth(n)
            .copied()
    }
}

/// A `virtio_mmio.device=SIZE@BASE:IRQ[:ID]` entry.
fn described(entry: &str) -> Option<(usize, usize, u32)> {
    let (size, rest) = entry.split_once('@')?;
    let (base, rest) = rest.split_once(':')?;
    let irq = rest.split(':').next()?;
    Some((
        cmdline::size(size)? as usize,
        cmdline::number(base)? as usize,
        cmdline::number(irq)? as u32,
    ))
}

/// Probes every known window and those on the command line.
pub fn discover(cmdline_text: &str) -> Devices {
    let mut devices = Devices {
        list: [Device::default(); MAX_DEVICES],
        len: 0,
        empty: 0,
    };
    let mut probe = |base: usize, size: usize, gsi: Option<u32>| {
        if devices.all().iter().any(|d| d.base == base) || devices.len == MAX_DEVICES {
            return;
        }
        let mut dev = Device {
            base,
            size,
            gsi,
            ..Device::default()
        };
        // Where nothing is mapped kiln returns zeros (one VM exit each).
        if dev.read(reg::MAGIC) != MAGIC {
            return;
        }
        dev.device_id = dev.read(reg::DEVICE_ID);
        dev.version = dev.read(reg::VERSION);
        if dev.device_id == 0 {
            devices.empty += 1;
            return;
        }
        devices.list[devices.len] = dev;
        devices.len += 1;
    };
    for (size, base, irq) in
        cmdline::values(cmdline_text, "virtio_mmio.device").filter_map(described)
    {
        probe(base, size, Some(irq));
    }
    for &(first, stride, count) in WINDOWS {
        for n in 0..count {
            let gsi = (first == 0xd000_0000).then_some(KILN_FIRST_PIN + n as u32);
            probe(first + n * stride, stride, gsi);
        }
    }
    devices.list[..devices.len].sort_unstable_by_key(|d| d.base);
    devices
}

/// A block device driven by virtio-drivers.
pub type Blk = VirtIOBlk<AgentHal, MmioTransport<'static>>;

/// An opened disk.
pub struct Disk {
    /// Which disk (the N-th block device).
    pub index: usize,
    pub dev: Device,
    /// The features the device offered (virtio-drivers keeps the ones it
    /// negotiated to itself).
    pub offered: u64,
    /// The driver; dropped by our Drop, in the right order.
    pub blk: ManuallyDrop<Blk>,
    /// Whether [`Disk::close`] stopped the queue.
    closed: bool,
}

impl Disk {
    /// The device's status register.
    pub fn status(&self) -> u32 {
        self.dev.read(reg::STATUS)
    }

    /// Stops using the disk the way virtio-drivers does when it drops a
    /// driver (virtio 1.2, 4.2.2.2: write 0 to QueueReady and read it back
    /// until it says 0), but with a time limit: virtio-drivers would spin
    /// forever on a device that ignores the write. Then resets the device.
    pub fn close(mut self, clock: &crate::time::Clock) -> Result<(), Fail> {
        self.dev.write(reg::QUEUE_SEL, 0);
        self.dev.write(reg::QUEUE_READY, 0);
        let deadline = clock.deadline(1_000);
        while self.dev.read(reg::QUEUE_READY) != 0 {
            if deadline.passed() {
                fail!(
                    "disk {}: QueueReady still reads 1 a second after the driver wrote 0 \
                     to stop the queue (virtio 1.2, 4.2.2.2; device status {:#x})",
                    self.index,
                    self.status()
                );
            }
            core::hint::spin_loop();
        }
        self.closed = true;
        Ok(())
    }
}

impl Drop for Disk {
    /// Lets virtio-drivers clean up, then resets the device. Unless
    /// [`Disk::close`] stopped the queue, the device is reset first: it
    /// then stops using our memory whatever state a failed check left it
    /// in, and QueueReady reads 0, which virtio-drivers' clean-up waits for.
    fn drop(&mut self) {
        if !self.closed {
            self.dev.write(reg::STATUS, 0);
        }
        // SAFETY: the only place `blk` is dropped, and it is not used after.
        unsafe { ManuallyDrop::drop(&mut self.blk) };
        self.dev.write(reg::STATUS, 0);
    }
}

/// The disk index a check works on: its argument (`blk-rw:1`), default 0.
pub fn disk_index(ctx: &Context) -> Result<usize, Fail> {
    match ctx.arg {
        None => Ok(0),
        Some(a) => match a.parse() {
            Ok(n) => Ok(n),
            Err(_) => fail!("argument {a:?} is not a disk number"),
        },
    }
}

/// Opens the disk the check names (see [`disk_index`]) with
/// virtio-drivers, with interrupts suppressed (the agent polls).
pub fn open_disk(ctx: &Context) -> Result<Disk, Fail> {
    let index = disk_index(ctx)?;
    let devices = discover(ctx.cmdline);
    let Some(dev) = devices.nth(DEVICE_ID_BLOCK, index) else {
        fail!(
            "no virtio-blk disk {index} ({} virtio-mmio devices found)",
            devices.all().len()
        );
    };
    let offered = dev.device_features();
    let Some(header) = NonNull::new(dev.base as *mut VirtIOHeader) else {
        fail!("virtio window at address 0");
    };
    // SAFETY: a virtio-mmio window of `size` bytes, identity mapped, stays
    // valid for the whole run; only this Disk drives it while it lives.
    let transport = match unsafe { MmioTransport::new(header, dev.size) } {
        Ok(t) => t,
        Err(e) => fail!("disk {index} at {:#x}: transport: {e}", dev.base),
    };
    let mut blk = match Blk::new(transport) {
        Ok(b) => b,
        Err(e) => fail!("disk {index} at {:#x}: virtio-drivers: {e}", dev.base),
    };
    blk.disable_interrupts();
    let disk = Disk {
        index,
        dev,
        offered,
        blk: ManuallyDrop::new(blk),
        closed: false,
    };
    let st = disk.status();
    let ready = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
    if st & (status::NEEDS_RESET | status::FAILED) != 0 || st & ready != ready {
        fail!("disk {index}: device status {st:#x} after initialisation");
    }
    let cap = disk.blk.capacity();
    println!(
        "AGENT: disk {index} at {:#x} (version {}, irq {:?}): {cap} sectors ({} KiB), \
         features offered {offered:#x}, readonly {}",
        dev.base,
        dev.version,
        dev.gsi,
        cap / 2,
        disk.blk.readonly()
    );
    Ok(disk)
}
