//! Taking a snapshot of a paused machine: the state file (vCPUs,
//! interrupt controllers, devices, configuration) and the memory file.
//! Restoring is [`Machine::restore`] (in `build`): the same phases as a
//! boot, with the saved state written into them.

use std::fs::File;
use std::path::Path;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::{Machine, VmmError};
use crate::snapshot::{self, DeviceStates, Snapshot};

/// Bytes of guest RAM copied at a time while writing the memory file.
const CHUNK: usize = 1 << 20;

impl Machine {
    /// Writes the state file `state` and the memory file `memory` of this
    /// paused machine. Each is written whole or not at all.
    pub fn snapshot(&self, state: &Path, memory: &Path) -> Result<(), VmmError> {
        if !self.is_paused() {
            return Err(VmmError::CannotSnapshot(
                "the VM is running: pause it first".into(),
            ));
        }
        if same_file(state, memory) {
            return Err(VmmError::CannotSnapshot(
                "the state file and the memory file must be two files".into(),
            ));
        }
        let t = std::time::Instant::now();
        let files = snapshot::Files {
            state: state.to_path_buf(),
            memory: memory.to_path_buf(),
        };
        // The disks' temporary layers (the guest's writes since it booted).
        let mut layers = Vec::new();
        for (i, a) in self.virtio.iter().enumerate().take(self.config.disks.len()) {
            let t = a.transport.lock().expect("virtio lock");
            match t.device().layer() {
                Some(layer) => {
                    snapshot::write_atomically(&files.layer(i), |f| layer.copy_to(f))?;
                    layers.push(Some(layer.written().to_vec()));
                }
                None => layers.push(None),
            }
        }
        let vcpus = self
            .paused
            .iter()
            .map(|v| v.save_state(&self.msr_list))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| VmmError::CannotSnapshot(e.to_string()))?;
        let snap = Snapshot {
            kiln_version: env!("CARGO_PKG_VERSION").into(),
            cpu_vendor: snapshot::host_cpu_vendor(),
            machine: self.config.machine(),
            vm: self.vm.save_state()?,
            vcpus,
            devices: DeviceStates {
                serial: self.serial.lock().expect("serial lock").save(),
                cmos_index: self.cmos.lock().expect("cmos lock").index(),
                i8042: self.i8042.lock().expect("i8042 lock").save(),
                virtio: self
                    .virtio
                    .iter()
                    .map(|a| a.transport.lock().expect("virtio lock").save())
                    .collect(),
                layers,
            },
        };
        snapshot::write_atomically(memory, |f| self.write_memory(f))?;
        snapshot::write_state(state, &snap)?;
        log::info!(
            "snapshot written in {:.1} ms: {} and {}",
            t.elapsed().as_secs_f64() * 1000.0,
            state.display(),
            memory.display()
        );
        Ok(())
    }

    /// Guest RAM, region after region, zero pages as holes.
    fn write_memory(&self, f: &mut File) -> std::io::Result<()> {
        let mut buf = vec![0u8; CHUNK];
        for region in self.vm.mem.iter() {
            let start = region.start_addr().0;
            let len = region.len();
            let mut off = 0;
            while off < len {
                let n = (len - off).min(CHUNK as u64) as usize;
                self.vm
                    .mem
                    .read_slice(&mut buf[..n], GuestAddress(start + off))
                    .map_err(std::io::Error::other)?;
                snapshot::write_sparse(f, &buf[..n])?;
                off += n as u64;
            }
        }
        Ok(())
    }
}

/// Whether two paths name one file (false when either does not exist).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => (x.dev(), x.ino()) == (y.dev(), y.ino()),
        _ => a == b,
    }
}
