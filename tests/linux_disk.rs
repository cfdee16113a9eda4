//! virtio-blk with a real Linux guest (our minimal kernel, which finds
//! virtio-mmio devices through kiln's `virtio_mmio.device=` entries):
//! - the guest boots from an ext4 root disk (`--root-disk`), writes a file
//!   of random bytes, syncs and reboots; the host reads the same bytes out
//!   of the image with e2fsprogs' debugfs, without mounting it;
//! - with the initramfs as root and the guest's script on /dev/vda, two
//!   data disks appear as /dev/vdb and /dev/vdc with their sizes and IDs,
//!   a read-only disk rejects writes and its image is bit-identical
//!   afterwards, and the read-write one keeps what the guest wrote at the
//!   offset it wrote it.
//!
//! Boots take one to three minutes on nested kvm_pvm hosts: generous
//! timeouts, and the VM is killed when one runs out.

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::Outcome;

const TIMEOUT: Duration = Duration::from_secs(600);

fn artifact(rel: &str) -> PathBuf {
    common::guest_artifact(rel, "run ./resources/guests.sh first")
}

fn make_image(path: &Path, size: u64, fill: u8) {
    std::fs::write(path, vec![fill; size as usize]).unwrap();
}

fn ran_cleanly(o: &Outcome, status: i32) {
    o.check(!o.timed_out, "the guest finished before the timeout");
    o.check(o.errors().is_empty(), "kiln reported no error");
    o.check(
        o.exit_status() == Some(status),
        &format!("init reported exit status {status}"),
    );
    o.check(o.code == Some(0), "the guest's reboot ended kiln with 0");
}

#[test]
fn root_disk_write_reaches_the_host_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.ext4");
    std::fs::copy(artifact("rootfs.ext4"), &root).unwrap();
    let kernel = artifact("minimal/vmlinux");
    // 192 KiB of fresh random bytes, their hash printed by the guest.
    let command = "head -c 196608 /dev/urandom > /kiln-data.bin && \
                   echo GUEST_SHA=$(sha256sum /kiln-data.bin | cut -d' ' -f1) && \
                   echo ROOT=$(awk '$2==\"/\"{print $1\":\"$3}' /proc/mounts) && sync";
    let disk = format!("{},id=kiln-root", root.display());
    let cmdline = format!("-- {command}");
    let o = common::run(
        &[
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--disk",
            &disk,
            "--root-disk",
            "--cmdline",
            &cmdline,
            "-v",
        ],
        TIMEOUT,
    );
    ran_cleanly(&o, 0);
    o.check(
        o.reported("ROOT") == Some("/dev/root:ext4") || o.reported("ROOT") == Some("/dev/vda:ext4"),
        "the root file system is the ext4 disk",
    );
    let guest_sha = o.reported("GUEST_SHA").map(str::to_string);
    o.check(guest_sha.is_some(), "the guest printed the file's hash");

    // Read the file out of the image without mounting it.
    let out_file = dir.path().join("out.bin");
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump /kiln-data.bin {}", out_file.display()))
        .arg(&root)
        .output()
        .expect("debugfs (e2fsprogs) runs");
    o.check(
        out.status.success() && out_file.exists(),
        "debugfs dumped the guest's file",
    );
    o.check(
        std::fs::metadata(&out_file).map(|m| m.len()).ok() == Some(196608),
        "the file has the size the guest wrote",
    );
    o.check(
        Some(common::sha256_of(&out_file)) == guest_sha,
        "the host file holds the bytes the guest wrote",
    );
    let fsck = Command::new("e2fsck")
        .args(["-fn"])
        .arg(&root)
        .output()
        .unwrap();
    o.check(fsck.status.success(), "the image passes e2fsck -fn");
}

#[test]
fn data_disks_sizes_read_only_and_writes_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let rw = dir.path().join("rw.img");
    let ro = dir.path().join("ro.img");
    make_image(&rw, 8 << 20, 0);
    make_image(&ro, 3 << 20, 0x5a);
    let ro_before = common::sha256_of(&ro);
    let kernel = artifact("minimal/vmlinux");
    let initrd = artifact("initramfs.cpio");
    // The guest's script is on the first disk (vda, read-only); the data
    // disks are vdb (read-write) and vdc (read-only). It prints sizes in
    // 512-byte sectors, the ro flag and serial Linux saw, tries a write to
    // the read-only disk, and writes a marker 1 MiB into vdb.
    let script = common::script_disk(
        dir.path(),
        r#"
for d in vdb vdc; do echo "SIZE_$d=$(cat /sys/block/$d/size)"; done
echo "VDC_RO=$(cat /sys/block/vdc/ro)"
echo "VDB_SERIAL=$(cat /sys/block/vdb/serial)"
if dd if=/dev/zero of=/dev/vdc bs=4096 count=1 oflag=direct 2>/dev/null; then
    echo VDC_WRITE=ok
else
    echo VDC_WRITE=failed
fi
echo "VDC_HEAD=$(head -c 4 /dev/vdc | od -An -tx1 | tr -d ' ')"
printf kiln-marker | dd of=/dev/vdb bs=512 seek=2048 conv=fsync 2>/dev/null && echo VDB_DONE=1
"#,
    );
    let script_spec = format!("{},ro", script.display());
    let rw_spec = format!("{},id=kiln-data", rw.display());
    let ro_spec = format!("{},ro", ro.display());
    let o = common::run(
        &[
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--disk",
            &script_spec,
            "--disk",
            &rw_spec,
            "--disk",
            &ro_spec,
            "--cmdline",
            "-- sh /dev/vda",
            "-v",
        ],
        TIMEOUT,
    );
    ran_cleanly(&o, 0);
    o.check(o.reported("SIZE_vdb") == Some("16384"), "vdb is 8 MiB");
    o.check(o.reported("SIZE_vdc") == Some("6144"), "vdc is 3 MiB");
    o.check(
        o.reported("VDC_RO") == Some("1"),
        "Linux sees vdc read-only",
    );
    o.check(
        o.reported("VDB_SERIAL") == Some("kiln-data"),
        "vdb's serial is its id=",
    );
    o.check(
        o.reported("VDC_WRITE") == Some("failed"),
        "a write to the read-only disk fails",
    );
    o.check(
        o.reported("VDC_HEAD") == Some("5a5a5a5a"),
        "the read-only disk still reads",
    );
    o.check(o.reported("VDB_DONE") == Some("1"), "the guest wrote vdb");
    o.check(
        common::sha256_of(&ro) == ro_before,
        "the read-only image is bit-identical",
    );
    let data = std::fs::read(&rw).unwrap();
    o.check(
        &data[1 << 20..(1 << 20) + 11] == b"kiln-marker",
        "the marker is at 1 MiB in the host file",
    );
    o.check(
        data[..1 << 20].iter().all(|&b| b == 0),
        "nothing else was written before it",
    );
}
