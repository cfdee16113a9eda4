//! Snapshot files. A snapshot is two files: the state file (this module:
//! vCPUs, interrupt controllers, devices, the machine's configuration)
//! and the memory file (guest RAM, region after region, zero pages left
//! as holes), which a restore maps `MAP_PRIVATE`, so restoring copies
//! nothing and clones of one snapshot share the page cache.
//!
//! The state file is
//!
//! ```text
//! magic "KILNSNAP" | format version (le32) | payload length (le64)
//!   | CRC-64/XZ of the payload (le64) | payload (postcard)
//! ```
//!
//! and is read back only when every part checks out: a file from another
//! format version, another kiln, another CPU vendor, a truncated or a
//! corrupted one gives one line saying which.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{DiskConfig, NetConfig, VsockConfig};

/// The first bytes of every state file.
pub const MAGIC: [u8; 8] = *b"KILNSNAP";
/// The state file's format version: bump it when [`Snapshot`] changes.
pub const FORMAT_VERSION: u32 = 2;
/// The header: magic, version, length, checksum.
const HEADER_LEN: usize = 8 + 4 + 8 + 8;
/// The largest payload kiln will read (a state file is a few KiB per vCPU).
const MAX_PAYLOAD: u64 = 64 << 20;
/// The checksum (the one xz uses).
const CRC: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_XZ);

/// CRC-64/XZ of `bytes`: the state file's checksum (template keys use it too).
pub fn checksum(bytes: &[u8]) -> u64 {
    CRC.checksum(bytes)
}

/// Errors reading or writing snapshot files.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file could not be read or written.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// Not a kiln state file at all.
    #[error("{0} is not a kiln snapshot state file (no KILNSNAP magic)")]
    NotASnapshot(PathBuf),
    /// Another state-file format.
    #[error("{path} was written in snapshot format {found}; this kiln reads format {FORMAT_VERSION}: take the snapshot again with this kiln")]
    Format {
        /// The file.
        path: PathBuf,
        /// Its format version.
        found: u32,
    },
    /// Shorter than its header says.
    #[error("{0} is truncated: take the snapshot again")]
    Truncated(PathBuf),
    /// The checksum does not match.
    #[error("{0} is corrupted (checksum mismatch): take the snapshot again")]
    Corrupted(PathBuf),
    /// The payload does not decode.
    #[error("{0} is corrupted ({1}): take the snapshot again")]
    Decode(PathBuf, String),
    /// The payload could not be encoded.
    #[error("cannot encode the snapshot: {0}")]
    Encode(String),
    /// Written by another kiln.
    #[error("{path} was written by kiln {found}; this is kiln {}: take the snapshot again with this kiln", env!("CARGO_PKG_VERSION"))]
    Version {
        /// The file.
        path: PathBuf,
        /// The kiln that wrote it.
        found: String,
    },
    /// Taken on a CPU of another vendor.
    #[error("{path} was taken on a {found} CPU; this host's CPU is {here}: a VM cannot move between CPU vendors")]
    Vendor {
        /// The file.
        path: PathBuf,
        /// Its vendor.
        found: String,
        /// This host's vendor.
        here: String,
    },
}

/// The machine a snapshot was taken of: what a restore rebuilds before it
/// loads the saved state. Files and taps are opened again from here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfig {
    /// vCPUs.
    pub cpus: u8,
    /// RAM in bytes.
    pub mem_size: u64,
    /// Booted without ACPI tables (no ACPI PM device on the bus).
    pub no_acpi: bool,
    /// Disks, in guest order.
    pub disks: Vec<DiskConfig>,
    /// Network cards, in guest order.
    pub nets: Vec<NetConfig>,
    /// The vsock device.
    pub vsock: Option<VsockConfig>,
}

/// Everything a state file holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    /// The kiln that wrote it.
    pub kiln_version: String,
    /// The host CPU's vendor string (CPUID leaf 0).
    pub cpu_vendor: String,
    /// The machine.
    pub machine: MachineConfig,
    /// Interrupt controllers, PIT, clock.
    pub vm: crate::vm::VmState,
    /// One per vCPU, in order.
    pub vcpus: Vec<crate::vcpu::state::VcpuState>,
    /// The devices.
    pub devices: DeviceStates,
}

/// Where a snapshot's files are: the state file, the memory file, and
/// next to the state file the copy-on-write layer of each disk whose
/// writes are temporary (`STATE.layerN`, N the disk's index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// The state file.
    pub state: PathBuf,
    /// The memory file.
    pub memory: PathBuf,
}

impl Files {
    /// The layer file of disk `index`.
    pub fn layer(&self, index: usize) -> PathBuf {
        let mut name = self.state.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".layer{index}"));
        self.state.with_file_name(name)
    }
}

/// The devices' states.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceStates {
    /// COM1.
    pub serial: devices::serial::SerialSnapshot,
    /// The CMOS index register.
    pub cmos_index: u8,
    /// The PS/2 controller and keyboard.
    pub i8042: devices::i8042::I8042State,
    /// Each virtio transport, in slot order.
    pub virtio: Vec<devices::virtio::mmio::MmioState>,
    /// Per disk: which sectors its copy-on-write layer holds (64 to a
    /// word), for disks whose writes are temporary; the data is in the
    /// layer file ([`Files::layer`]).
    pub layers: Vec<Option<Vec<u64>>>,
}

/// This host's CPU vendor string ("GenuineIntel", "AuthenticAMD", ...).
pub fn host_cpu_vendor() -> String {
    let r = std::arch::x86_64::__cpuid(0);
    let mut v = Vec::with_capacity(12);
    for reg in [r.ebx, r.edx, r.ecx] {
        v.extend_from_slice(&reg.to_le_bytes());
    }
    String::from_utf8_lossy(&v).into_owned()
}

/// Encodes `snap` as a state file's bytes.
pub fn encode(snap: &Snapshot) -> Result<Vec<u8>, SnapshotError> {
    let payload = postcard::to_stdvec(snap).map_err(|e| SnapshotError::Encode(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&checksum(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Decodes a state file's bytes (`path` names it in errors), checking
/// magic, format, length, checksum, kiln version and CPU vendor.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    let p = || path.to_path_buf();
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError::NotASnapshot(p()));
    }
    if bytes.len() < HEADER_LEN {
        return Err(SnapshotError::Truncated(p()));
    }
    let le32 = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
    let le64 = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    let format = le32(&bytes[8..12]);
    if format != FORMAT_VERSION {
        return Err(SnapshotError::Format {
            path: p(),
            found: format,
        });
    }
    let len = le64(&bytes[12..20]);
    let crc = le64(&bytes[20..28]);
    let payload = &bytes[HEADER_LEN..];
    if (payload.len() as u64) < len {
        return Err(SnapshotError::Truncated(p()));
    }
    if (payload.len() as u64) > len {
        return Err(SnapshotError::Decode(
            p(),
            format!("{} bytes after its end", payload.len() as u64 - len),
        ));
    }
    if checksum(payload) != crc {
        return Err(SnapshotError::Corrupted(p()));
    }
    let snap: Snapshot =
        postcard::from_bytes(payload).map_err(|e| SnapshotError::Decode(p(), e.to_string()))?;
    if snap.kiln_version != env!("CARGO_PKG_VERSION") {
        return Err(SnapshotError::Version {
            path: p(),
            found: snap.kiln_version,
        });
    }
    let here = host_cpu_vendor();
    if snap.cpu_vendor != here {
        return Err(SnapshotError::Vendor {
            path: p(),
            found: snap.cpu_vendor,
            here,
        });
    }
    Ok(snap)
}

/// Writes the state file at `path` (through a temporary file renamed into
/// place: a failed write leaves no half file).
pub fn write_state(path: &Path, snap: &Snapshot) -> Result<(), SnapshotError> {
    let bytes = encode(snap)?;
    write_atomically(path, |f| f.write_all(&bytes))
}

/// Reads and checks the state file at `path`.
pub fn read_state(path: &Path) -> Result<Snapshot, SnapshotError> {
    let io = |e| SnapshotError::Io(path.to_path_buf(), e);
    let mut f = File::open(path).map_err(io)?;
    let size = f.metadata().map_err(io)?.len();
    if size > MAX_PAYLOAD + HEADER_LEN as u64 {
        return Err(SnapshotError::Decode(
            path.to_path_buf(),
            format!("{size} bytes is too large for a state file"),
        ));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    f.read_to_end(&mut bytes).map_err(io)?;
    decode(path, &bytes)
}

/// Creates `path` through `path.tmp-PID`: `fill` writes it, it is synced
/// and renamed over `path`; on any failure the temporary file is removed
/// and `path` is untouched.
pub fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<(), SnapshotError> {
    let io = |e| SnapshotError::Io(path.to_path_buf(), e);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(name);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        fill(&mut f)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(())
}

/// Page size used to find zero pages while writing the memory file.
const PAGE: usize = 4096;

/// Writes `bytes` (one RAM region) to `f`, leaving all-zero pages as holes.
pub fn write_sparse(f: &mut File, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut run_start: Option<usize> = None;
    let mut pos = 0;
    for chunk in bytes.chunks(PAGE) {
        let zero = chunk.iter().all(|&b| b == 0);
        match (zero, run_start) {
            (false, None) => run_start = Some(pos),
            (true, Some(s)) => {
                f.write_all(&bytes[s..pos])?;
                run_start = None;
            }
            _ => {}
        }
        if zero {
            f.seek(SeekFrom::Current(chunk.len() as i64))?;
        }
        pos += chunk.len();
    }
    if let Some(s) = run_start {
        f.write_all(&bytes[s..pos])?;
    }
    // A trailing hole needs the file's length set explicitly.
    let end = f.stream_position()?;
    f.set_len(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            kiln_version: env!("CARGO_PKG_VERSION").into(),
            cpu_vendor: host_cpu_vendor(),
            machine: MachineConfig {
                cpus: 2,
                mem_size: 64 << 20,
                no_acpi: false,
                disks: vec![DiskConfig {
                    path: "/tmp/d.img".into(),
                    read_only: true,
                    snapshot: false,
                    id: Some("data".into()),
                }],
                nets: vec![],
                vsock: None,
            },
            vm: crate::vm::VmState::default(),
            vcpus: vec![],
            devices: DeviceStates {
                serial: Default::default(),
                cmos_index: 3,
                i8042: Default::default(),
                virtio: vec![],
                layers: vec![None, Some(vec![1, 2])],
            },
        }
    }

    #[test]
    fn a_state_file_round_trips() {
        let bytes = encode(&sample()).unwrap();
        assert_eq!(&bytes[..8], b"KILNSNAP");
        let back = decode(Path::new("s"), &bytes).unwrap();
        assert_eq!(back.machine, sample().machine);
        assert_eq!(back.devices.cmos_index, 3);
        assert_eq!(back.devices.layers, [None, Some(vec![1, 2])]);
        let files = Files {
            state: "/s/vm.state".into(),
            memory: "/s/vm.mem".into(),
        };
        assert_eq!(files.layer(2), Path::new("/s/vm.state.layer2"));
    }

    #[test]
    fn bad_files_are_named_for_what_is_wrong() {
        let good = encode(&sample()).unwrap();
        let p = Path::new("state");
        let err = |b: &[u8]| decode(p, b).unwrap_err().to_string();
        assert!(err(b"").contains("not a kiln snapshot"));
        assert!(err(b"\x7fELF\x02\x01\x01\0\0\0\0\0").contains("not a kiln snapshot"));
        assert!(err(&good[..20]).contains("truncated"));
        assert!(err(&good[..good.len() - 1]).contains("truncated"));
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(err(&flipped).contains("corrupted (checksum"));
        let mut other = good.clone();
        other[8] = 99;
        assert!(err(&other).contains(&format!(
            "format 99; this kiln reads format {FORMAT_VERSION}"
        )));
        let mut longer = good.clone();
        longer.push(0);
        assert!(err(&longer).contains("after its end"));

        let mut s = sample();
        s.kiln_version = "0.0.9".into();
        assert!(err(&encode(&s).unwrap()).contains("written by kiln 0.0.9"));
        let mut s = sample();
        s.cpu_vendor = "CyrixInstead".into();
        assert!(err(&encode(&s).unwrap()).contains("taken on a CyrixInstead CPU"));
    }

    #[test]
    fn sparse_writes_keep_data_and_leave_holes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem");
        let mut data = vec![0u8; 64 * PAGE];
        data[5 * PAGE + 7] = 1;
        data[6 * PAGE] = 2;
        data[63 * PAGE + 1] = 3;
        let mut f = File::create(&path).unwrap();
        write_sparse(&mut f, &data).unwrap();
        write_sparse(&mut f, &vec![0u8; 8 * PAGE]).unwrap();
        drop(f);
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back.len(), 72 * PAGE);
        assert_eq!(&back[..64 * PAGE], &data[..]);
        assert!(back[64 * PAGE..].iter().all(|&b| b == 0));
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.blocks() * 512 < 16 * PAGE as u64, "holes stay holes");
    }

    #[test]
    fn atomic_writes_leave_nothing_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        std::fs::write(&path, b"old").unwrap();
        let e = write_atomically(&path, |_| Err(std::io::Error::other("disk full")));
        assert!(e.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        write_state(&path, &sample()).unwrap();
        assert_eq!(read_state(&path).unwrap().devices.cmos_index, 3);
    }

    /// Mutated payloads with a checksum that matches (a hostile or buggy
    /// writer, not a bit flip): decoding gives a snapshot or an error,
    /// never a panic or a huge allocation. 2,000 seeds of byte flips,
    /// insertions and cuts in the payload of a real state file.
    #[test]
    fn mini_fuzz_payloads_with_a_matching_checksum() {
        let good = encode(&sample()).unwrap();
        let payload = &good[HEADER_LEN..];
        let mut rng = crate::testing::Rng(0x853c_49e6_748f_ea9b);
        let mut next = move || rng.next();
        let (mut ok, mut refused) = (0, 0);
        for _ in 0..2000 {
            let mut p = payload.to_vec();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % (p.len() + 1);
                match next() % 4 {
                    0 if at < p.len() => p[at] ^= 1 << (next() % 8),
                    1 if at < p.len() => p[at] = 0xff,
                    2 => p.insert(at, next() as u8),
                    _ => p.truncate(at),
                }
            }
            let mut file = good[..HEADER_LEN].to_vec();
            file[12..20].copy_from_slice(&(p.len() as u64).to_le_bytes());
            file[20..28].copy_from_slice(&checksum(&p).to_le_bytes());
            file.extend_from_slice(&p);
            match decode(Path::new("fuzzed"), &file) {
                Ok(_) => ok += 1,
                Err(e) => {
                    assert!(e.to_string().starts_with("fuzzed"), "{e}");
                    refused += 1;
                }
            }
        }
        assert!(
            refused > 0 && ok + refused == 2000,
            "{ok} decoded, {refused} refused"
        );
    }
}
