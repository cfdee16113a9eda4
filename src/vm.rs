//! The VM: /dev/kvm, the VM file descriptor, guest RAM and its memory
//! slots, the in-kernel interrupt controllers and the PIT.

use std::path::{Path, PathBuf};

use std::fs::File;

use boot::layout;
use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};
use vmm_sys_util::eventfd::EventFd;

/// Errors opening KVM or creating the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// No KVM device node.
    #[error("{0} does not exist: this host has no KVM; enable hardware virtualization (VT-x/AMD-V) and load the kvm module")]
    NoKvm(PathBuf),
    /// No permission on the KVM device node.
    #[error("permission denied opening {0}: run kiln as root or add your user to the group that owns it (usually 'kvm')")]
    KvmPermission(PathBuf),
    /// Opening the KVM device failed otherwise.
    #[error("cannot open {0}: {1}")]
    OpenKvm(PathBuf, kvm_ioctls::Error),
    /// Wrong KVM API version.
    #[error("KVM API version {0} is not supported: kiln needs version 12")]
    ApiVersion(i32),
    /// A needed capability is missing.
    #[error("KVM lacks the {0} capability, which kiln needs; update the host kernel")]
    MissingCapability(&'static str),
    /// More vCPUs than KVM allows.
    #[error("--cpus {got} is more than this host's KVM allows ({max})")]
    TooManyCpus {
        /// Asked for.
        got: u8,
        /// KVM's limit.
        max: usize,
    },
    /// KVM_CREATE_VM failed.
    #[error("cannot create the VM: {0}")]
    CreateVm(kvm_ioctls::Error),
    /// KVM_SET_TSS_ADDR / KVM_SET_IDENTITY_MAP_ADDR failed.
    #[error("cannot set the TSS/identity-map address: {0}")]
    SetTss(kvm_ioctls::Error),
    /// KVM_CREATE_IRQCHIP failed.
    #[error("cannot create the in-kernel irqchip: {0}")]
    CreateIrqchip(kvm_ioctls::Error),
    /// KVM_CREATE_PIT2 failed.
    #[error("cannot create the in-kernel PIT: {0}")]
    CreatePit(kvm_ioctls::Error),
    /// KVM_CREATE_VCPU failed.
    #[error("cannot create vCPU {0}: {1}")]
    CreateVcpu(u8, kvm_ioctls::Error),
    /// mmap of guest RAM failed.
    #[error("cannot allocate {0} MiB of guest RAM: {1}")]
    AllocMemory(u64, String),
    /// KVM_SET_USER_MEMORY_REGION failed.
    #[error("cannot register guest RAM with KVM: {0}")]
    SetMemoryRegion(kvm_ioctls::Error),
    /// KVM_IRQFD failed.
    #[error("cannot connect interrupt {0}: {1}")]
    Irqfd(u32, kvm_ioctls::Error),
    /// KVM_IOEVENTFD failed.
    #[error("cannot attach a queue notification at {0:#x}: {1}")]
    Ioeventfd(u64, kvm_ioctls::Error),
    /// eventfd() failed.
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    /// Reading the interrupt controllers, PIT or clock failed.
    #[error("cannot read the VM's {0}: {1}")]
    SaveState(&'static str, kvm_ioctls::Error),
    /// Writing them back failed.
    #[error("cannot restore the VM's {0}: {1}")]
    RestoreState(&'static str, kvm_ioctls::Error),
    /// The memory file does not fit the VM.
    #[error("the memory file {path} holds {found} bytes, the snapshot's VM has {want} bytes of RAM: use the memory file taken with this state file")]
    MemoryFileSize {
        /// The file.
        path: PathBuf,
        /// Its size.
        found: u64,
        /// The RAM size.
        want: u64,
    },
    /// Mapping the memory file failed.
    #[error("cannot map the memory file {0}: {1}")]
    MapMemoryFile(PathBuf, String),
}

/// The VM-wide state a snapshot keeps: the in-kernel PICs and IOAPIC, the
/// PIT and the KVM clock.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct VmState {
    /// The master 8259.
    pub pic_master: kvm_irqchip,
    /// The slave 8259.
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC.
    pub ioapic: kvm_irqchip,
    /// The 8254 PIT.
    pub pit: kvm_pit_state2,
    /// The KVM clock.
    pub clock: kvm_clock_data,
}

impl std::fmt::Debug for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmState")
            .field("clock", &self.clock.clock)
            .finish_non_exhaustive()
    }
}

/// Capabilities kiln cannot run without.
pub const REQUIRED_CAPS: [(Cap, &str); 6] = [
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

/// Opens the KVM device and checks the API version and capabilities.
pub fn open_kvm(path: &Path) -> Result<Kvm, VmError> {
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| VmError::NoKvm(path.to_path_buf()))?;
    let kvm = Kvm::new_with_path(&cpath).map_err(|e| match e.errno() {
        libc::ENOENT => VmError::NoKvm(path.to_path_buf()),
        libc::EACCES | libc::EPERM => VmError::KvmPermission(path.to_path_buf()),
        _ => VmError::OpenKvm(path.to_path_buf(), e),
    })?;
    check_kvm(&kvm)?;
    Ok(kvm)
}

fn check_kvm(kvm: &Kvm) -> Result<(), VmError> {
    let version = kvm.get_api_version();
    if version != kvm_bindings::KVM_API_VERSION as i32 {
        return Err(VmError::ApiVersion(version));
    }
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(cap) {
            return Err(VmError::MissingCapability(name));
        }
    }
    Ok(())
}

/// A created VM with its RAM and vCPU file descriptors.
pub struct Vm {
    /// The VM file descriptor.
    pub fd: VmFd,
    /// Guest RAM.
    pub mem: GuestMemoryMmap,
    /// One fd per vCPU, taken by the vCPU threads.
    pub vcpu_fds: Vec<VcpuFd>,
}

impl Vm {
    /// Creates the VM with its irqchip, PIT and vCPUs (boot phase 3).
    pub fn new(kvm: &Kvm, cpus: u8) -> Result<Vm, VmError> {
        let max = kvm.get_max_vcpus();
        if usize::from(cpus) > max {
            return Err(VmError::TooManyCpus { got: cpus, max });
        }
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        fd.set_identity_map_address(layout::KVM_IDENTITY_MAP_START)
            .map_err(VmError::SetTss)?;
        fd.set_tss_address(layout::KVM_TSS_START as usize)
            .map_err(VmError::SetTss)?;
        fd.create_irq_chip().map_err(VmError::CreateIrqchip)?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(VmError::CreatePit)?;
        // vCPUs are created after the irqchip, so their LAPICs are in-kernel.
        let vcpu_fds = (0..cpus)
            .map(|id| {
                fd.create_vcpu(u64::from(id))
                    .map_err(|e| VmError::CreateVcpu(id, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mem = GuestMemoryMmap::default();
        Ok(Vm { fd, mem, vcpu_fds })
    }

    /// The TSC frequency KVM gives the guest, in kHz.
    pub fn tsc_khz(&self) -> Option<u32> {
        self.vcpu_fds.first()?.get_tsc_khz().ok()
    }

    /// Allocates guest RAM around the MMIO gap and registers it (boot phase 4).
    pub fn add_memory(&mut self, mem_size: u64) -> Result<(), VmError> {
        let ranges: Vec<(GuestAddress, usize)> = layout::ram_regions(mem_size)
            .into_iter()
            .map(|(start, size)| (GuestAddress(start), size as usize))
            .collect();
        self.mem = GuestMemoryMmap::from_ranges(&ranges)
            .map_err(|e| VmError::AllocMemory(mem_size >> 20, e.to_string()))?;
        self.register_memory(mem_size)
    }

    /// Guest RAM from a snapshot's memory file, mapped copy-on-write
    /// (`MAP_PRIVATE`): nothing is read until the guest touches it, the
    /// guest's writes never reach the file, and VMs restored from the
    /// same file share its unchanged pages.
    pub fn add_memory_from_file(&mut self, mem_size: u64, path: &Path) -> Result<(), VmError> {
        let map_err = |e: String| VmError::MapMemoryFile(path.to_path_buf(), e);
        let file = File::open(path).map_err(|e| map_err(e.to_string()))?;
        let found = file.metadata().map_err(|e| map_err(e.to_string()))?.len();
        let want: u64 = layout::ram_regions(mem_size).iter().map(|r| r.1).sum();
        if found != want {
            return Err(VmError::MemoryFileSize {
                path: path.to_path_buf(),
                found,
                want,
            });
        }
        let mut regions = Vec::new();
        let mut offset = 0;
        for (start, size) in layout::ram_regions(mem_size) {
            let fd = file.try_clone().map_err(|e| map_err(e.to_string()))?;
            let mapping = MmapRegionBuilder::new(size as usize)
                .with_file_offset(FileOffset::new(fd, offset))
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
                .build()
                .map_err(|e| map_err(e.to_string()))?;
            regions.push(
                GuestRegionMmap::new(mapping, GuestAddress(start))
                    .ok_or_else(|| map_err("a region wraps around".into()))?,
            );
            offset += size;
        }
        self.mem = GuestMemoryMmap::from_regions(regions).map_err(|e| map_err(e.to_string()))?;
        self.register_memory(mem_size)
    }

    /// Reads the interrupt controllers, PIT and clock.
    pub fn save_state(&self) -> Result<VmState, VmError> {
        let chip = |id| {
            let mut c = kvm_irqchip {
                chip_id: id,
                ..Default::default()
            };
            self.fd
                .get_irqchip(&mut c)
                .map(|()| c)
                .map_err(|e| VmError::SaveState("interrupt controller", e))
        };
        Ok(VmState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
            pit: self
                .fd
                .get_pit2()
                .map_err(|e| VmError::SaveState("PIT", e))?,
            clock: self
                .fd
                .get_clock()
                .map_err(|e| VmError::SaveState("clock", e))?,
        })
    }

    /// Writes back what [`Vm::save_state`] read (before any vCPU runs).
    pub fn restore_state(&self, s: &VmState) -> Result<(), VmError> {
        self.fd
            .set_pit2(&s.pit)
            .map_err(|e| VmError::RestoreState("PIT", e))?;
        // KVM_SET_CLOCK takes no flags but KVM_CLOCK_REALTIME's, which is
        // not wanted: the guest's clock continues from where it was.
        let clock = kvm_clock_data {
            flags: 0,
            ..s.clock
        };
        self.fd
            .set_clock(&clock)
            .map_err(|e| VmError::RestoreState("clock", e))?;
        for (chip, id) in [
            (&s.pic_master, KVM_IRQCHIP_PIC_MASTER),
            (&s.pic_slave, KVM_IRQCHIP_PIC_SLAVE),
            (&s.ioapic, KVM_IRQCHIP_IOAPIC),
        ] {
            if chip.chip_id != id {
                return Err(VmError::RestoreState(
                    "interrupt controllers",
                    kvm_ioctls::Error::new(libc::EINVAL),
                ));
            }
            self.fd
                .set_irqchip(chip)
                .map_err(|e| VmError::RestoreState("interrupt controller", e))?;
        }
        Ok(())
    }

    fn register_memory(&mut self, mem_size: u64) -> Result<(), VmError> {
        for (slot, region) in self.mem.iter().enumerate() {
            let host = self
                .mem
                .get_host_address(region.start_addr())
                .map_err(|e| VmError::AllocMemory(mem_size >> 20, e.to_string()))?;
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mapping owned by `self.mem`, which
            // outlives the VM's use of it (both are dropped together at exit).
            unsafe { self.fd.set_user_memory_region(region) }.map_err(VmError::SetMemoryRegion)?;
        }
        Ok(())
    }

    /// An eventfd wired to interrupt line `gsi` through KVM_IRQFD.
    pub fn irqfd(&self, gsi: u32) -> Result<EventFd, VmError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
        self.fd
            .register_irqfd(&evt, gsi)
            .map_err(|e| VmError::Irqfd(gsi, e))?;
        Ok(evt)
    }

    /// An eventfd that KVM signals, without an exit, when the guest writes
    /// `datamatch` as a 32-bit value to the MMIO address `addr`.
    pub fn ioeventfd(&self, addr: u64, datamatch: u32) -> Result<EventFd, VmError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
        self.fd
            .register_ioevent(&evt, &IoEventAddress::Mmio(addr), datamatch)
            .map_err(|e| VmError::Ioeventfd(addr, e))?;
        Ok(evt)
    }
}
