//! kiln's ACPI tables through the real binary:
//! - the bare-metal payload finds the root pointer (or, with `--no-acpi`,
//!   does not) and powers off through the FADT's sleep-control register;
//! - the "acpi" kernel (resources/kernel/acpi.config: our minimal kernel
//!   with ACPI and without command-line virtio-mmio devices, built by
//!   `resources/minimal-kernel.sh acpi`) finds 4 CPUs through the MADT;
//!   finds a disk and a NIC through the DSDT only (the disk's size is
//!   right, the NIC pings the host side of its tap); and a guest
//!   `poweroff -f` ends kiln with exit code 0 through S5;
//! - Debian's stock kernel does the same with the virtio modules that its
//!   initramfs loads.
//!
//! Linux boots take three to four minutes here on nested kvm_pvm hosts
//! when the two cores are otherwise idle, and several times that when other
//! VMs share them (4 vCPUs make it worse): generous timeouts, and the VM is
//! killed when one runs out.

#[path = "common/mod.rs"]
mod common;
#[allow(dead_code)] // run_inside: not needed here
#[path = "common/netns.rs"]
mod netns;
#[path = "payload/mod.rs"]
mod payload;

use std::path::PathBuf;
use std::time::Duration;

use common::Outcome;
use netns::NetNs;

const PAYLOAD_TIMEOUT: Duration = Duration::from_secs(30);
const LINUX_TIMEOUT: Duration = Duration::from_secs(1800);

/// kiln's log line when the guest writes S5 to the sleep-control register.
const ACPI_POWEROFF: &str = "acpi: guest requested power off (S5)";
/// kiln's log line when it sees every vCPU halted (poweroff without ACPI).
const HALT_POWEROFF: &str = "the guest powered off";

fn payload_acpi(extra: &[&str]) -> Outcome {
    let elf = payload::build();
    let mut args = vec![
        "run",
        "--kernel",
        elf.to_str().unwrap(),
        "--cmdline",
        "payload=acpi",
    ];
    args.extend_from_slice(extra);
    common::run(&args, PAYLOAD_TIMEOUT)
}

#[test]
fn payload_finds_the_rsdp_and_powers_off_through_s5() {
    let o = payload_acpi(&["--cpus", "2"]);
    o.check(
        o.stdout.contains("kiln-payload: acpi rsdp=yes"),
        "RSDP at its layout address",
    );
    o.check(o.stderr.contains(ACPI_POWEROFF), "S5 request logged");
    o.check(
        !o.stderr.contains(HALT_POWEROFF),
        "stopped by the S5 write, not by the halt detection",
    );
    o.check(o.code == Some(0) && !o.timed_out, "poweroff exits 0");
}

#[test]
fn no_acpi_writes_no_tables_and_places_no_power_registers() {
    let o = payload_acpi(&["--no-acpi"]);
    o.check(
        o.stdout.contains("kiln-payload: acpi rsdp=no"),
        "no RSDP with --no-acpi",
    );
    o.check(
        !o.stderr.contains(ACPI_POWEROFF),
        "the sleep-control port is unclaimed",
    );
    o.check(o.stderr.contains(HALT_POWEROFF), "poweroff by halting");
    o.check(o.code == Some(0) && !o.timed_out, "poweroff exits 0");
}

fn artifact(rel: &str) -> PathBuf {
    common::guest_artifact(
        rel,
        "run ./resources/guests.sh --debian (it builds the acpi kernel and Debian's initramfs) first",
    )
}

/// `kiln run` arguments that boot `kernel` with `initrd` (build/guest/
/// paths), which runs `command`, plus `extra`.
///
/// `rcupdate.rcu_cpu_stall_suppress=1` (also a kiln default on kvm_pvm
/// hosts, given here for hardware KVM too): with several vCPUs on a loaded
/// 2-core nested host, RCU stall warnings are routine, and each one's NMI
/// backtraces cost time.
fn kernel_args(kernel: &str, initrd: &str, command: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "run".into(),
        "--kernel".into(),
        artifact(kernel).to_str().unwrap().into(),
        "--initrd".into(),
        artifact(initrd).to_str().unwrap().into(),
        "--cmdline".into(),
        format!("rcupdate.rcu_cpu_stall_suppress=1 -- {command}"),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// The kernel found and loaded kiln's tables without complaint.
fn acpi_came_up(o: &Outcome) {
    o.check(o.errors().is_empty(), "kiln reported no error");
    o.check(
        o.stdout.contains("ACPI: RSDP 0x00000000000E0000"),
        "the kernel found the RSDP at its layout address",
    );
    o.check(
        o.stdout.contains("ACPI: Interpreter enabled"),
        "the DSDT loaded",
    );
    o.check(
        !o.stdout.contains("ACPI Error") && !o.stdout.contains("ACPI BIOS Error"),
        "no ACPI error in the kernel log",
    );
}

/// Through the PVH entry (hvm_start_info.rsdp_paddr): the MADT's 4 CPUs
/// come up, and a reboot still ends the run through the i8042.
#[test]
fn acpi_kernel_brings_up_four_cpus() {
    let args = kernel_args(
        "acpi/vmlinux",
        "initramfs.cpio",
        "grep -c ^processor /proc/cpuinfo",
        &["--cpus", "4"],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = common::run(&args, LINUX_TIMEOUT);
    o.check(!o.timed_out, "the guest finished before the timeout");
    acpi_came_up(&o);
    o.check(
        o.stdout
            .contains("ACPI: Using ACPI (MADT) for SMP configuration information"),
        "CPUs from the MADT, not the MP table",
    );
    o.check(
        o.stdout.contains("KILN-INIT: kernel=") && o.stdout.contains(" cpus=4"),
        "init saw 4 online CPUs",
    );
    o.check(
        o.stdout.lines().any(|l| l.trim() == "4"),
        "/proc/cpuinfo lists 4 processors",
    );
    o.check(o.stdout.contains("KILN-EXIT: 0"), "the command succeeded");
    o.check(
        o.stderr.contains("i8042: guest requested a reset"),
        "reboot through the i8042 as before",
    );
    o.check(o.code == Some(0), "the guest's reboot ended kiln with 0");
}

/// What the device tests run in the guest: count the LNRO0005 devices,
/// report vdb's size, ping the host through eth0, and power off.
const DEVICE_SCRIPT: &str = r#"
echo "VIRTIO_ACPI=$(ls /sys/bus/acpi/devices | grep -c LNRO0005)"
echo "VDB_SECTORS=$(cat /sys/block/vdb/size)"
ip addr add 10.0.4.2/24 dev eth0 && ip link set eth0 up &&
    ping -c 2 -W 10 10.0.4.1 >/dev/null && echo PING=ok
poweroff -f
"#;

/// Boots `kernel` with `initrd`, a read-only script disk (vda), an 8 MiB
/// data disk (vdb) and a NIC on a tap in a fresh namespace (`ns_name`),
/// runs [`DEVICE_SCRIPT`] and checks that the kernel found all three
/// through the DSDT and powered off through S5.
fn devices_from_the_dsdt(ns_name: &str, kernel: &str, initrd: &str) -> Outcome {
    let ns = NetNs::new(ns_name);
    ns.add_tap("ka0", "10.0.4.1/24");
    let dir = tempfile::tempdir().unwrap();
    let script = common::script_disk(dir.path(), DEVICE_SCRIPT);
    let data = dir.path().join("data.img");
    std::fs::write(&data, vec![0u8; 8 << 20]).unwrap();
    let script_spec = format!("{},ro", script.display());
    let args = kernel_args(
        kernel,
        initrd,
        "sh /dev/vda",
        &[
            "--disk",
            &script_spec,
            "--disk",
            data.to_str().unwrap(),
            "--net",
            "tap=ka0",
        ],
    );
    let mut cmd = ns.command(std::path::Path::new(env!("CARGO_BIN_EXE_kiln")));
    cmd.args(&args);
    let o = common::Running::start(cmd).wait(LINUX_TIMEOUT);
    o.check(!o.timed_out, "the guest finished before the timeout");
    acpi_came_up(&o);
    o.check(
        o.reported("VIRTIO_ACPI") == Some("3"),
        "three LNRO0005 devices in the ACPI namespace",
    );
    o.check(
        o.reported("VDB_SECTORS") == Some("16384"),
        "vdb has the data disk's size (8 MiB)",
    );
    o.check(o.reported("PING") == Some("ok"), "eth0 pings the host");
    o.check(o.stderr.contains(ACPI_POWEROFF), "S5 request logged");
    o.check(
        !o.stderr.contains(HALT_POWEROFF),
        "stopped by the S5 write, not by the halt detection",
    );
    o.check(o.code == Some(0), "poweroff exits 0");
    o
}

/// Through the 64-bit boot protocol (boot_params.acpi_rsdp_addr): a disk
/// and a NIC that the kernel can only find in the DSDT work, and busybox
/// `poweroff -f` makes Linux write S5 to the sleep-control register.
#[test]
fn acpi_kernel_finds_virtio_devices_and_powers_off() {
    let config = std::fs::read_to_string(artifact("acpi/config")).unwrap();
    assert!(
        config.contains("# CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set"),
        "the acpi kernel must not take virtio-mmio devices from the command line"
    );
    devices_from_the_dsdt("acpi", "acpi/bzImage", "initramfs.cpio");
}

/// Debian's stock kernel builds virtio-mmio, virtio-blk and virtio-net as
/// modules and finds virtio-mmio devices only through ACPI: its initramfs
/// (resources/guests.sh --debian) insmods them from the same kernel
/// package, in dependency order (virtio_ring, virtio, virtio_mmio, ...,
/// failover, net_failover, virtio_net), and the devices work as with our
/// acpi kernel. On kvm_pvm hosts this boot takes about ten minutes (the
/// first module with BTF makes the kernel parse its own BTF).
#[test]
fn debian_kernel_loads_virtio_modules_and_finds_its_devices() {
    let config = std::fs::read_to_string(artifact("debian/config")).unwrap();
    assert!(
        config.contains("CONFIG_VIRTIO_MMIO=m")
            && !config.contains("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y"),
        "Debian's kernel has virtio-mmio as a module, without command-line devices"
    );
    let o = devices_from_the_dsdt("acpideb", "debian/vmlinux", "debian/initramfs.cpio");
    o.check(
        !o.stdout.contains("KILN-INIT: insmod"),
        "every module in the initramfs loaded",
    );
}

/// A kernel panic (init exits: "Attempted to kill init") reaches kiln
/// through pvpanic, which the acpi kernel finds in the DSDT (QEMU0001):
/// kiln stops at once and exits 123 with the panic line, instead of the
/// reset `panic=-1` would make look like success.
#[test]
fn a_guest_kernel_panic_is_reported_through_pvpanic() {
    let kernel = artifact("acpi/vmlinux");
    let initrd = artifact("initramfs.cpio");
    let o = common::run(
        &[
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--cmdline",
            "rcupdate.rcu_cpu_stall_suppress=1 rdinit=/bin/false",
        ],
        LINUX_TIMEOUT,
    );
    o.check(!o.timed_out, "the guest finished before the timeout");
    o.check(
        o.stderr
            .contains("pvpanic: the guest kernel reports a panic"),
        "the panic came through pvpanic",
    );
    o.check(o.code == Some(123), "exit code 123");
    o.check(
        o.errors().len() == 1
            && o.errors()[0].contains(
                "the guest kernel panicked: Kernel panic - not syncing: Attempted to kill init",
            ),
        "one line with the panic message",
    );
    o.check(
        !o.stderr.contains("guest requested a reset"),
        "kiln stopped before the reset",
    );
}
