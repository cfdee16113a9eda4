//! What the agent needs from the guest kernel as PID 1: the usual mounts,
//! a vsock connection to the host, the clock and RNG of a sandbox, and a
//! clean end.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

/// Mounts proc, sysfs, devtmpfs, devpts and tmpfs where a program expects
/// them; what is mounted already (the kernel mounts devtmpfs itself on a
/// disk root) is left alone.
pub fn mount_basics() {
    for (source, target, fstype, data) in [
        ("proc", "/proc", "proc", ""),
        ("sysfs", "/sys", "sysfs", ""),
        ("devtmpfs", "/dev", "devtmpfs", ""),
        ("devpts", "/dev/pts", "devpts", "mode=620,ptmxmode=666"),
        ("tmpfs", "/dev/shm", "tmpfs", "mode=1777"),
        ("tmpfs", "/tmp", "tmpfs", "mode=1777"),
        ("tmpfs", "/run", "tmpfs", "mode=755"),
    ] {
        let _ = std::fs::create_dir_all(target);
        if let Err(e) = mount(source, target, fstype, data) {
            if e.raw_os_error() != Some(libc::EBUSY) {
                eprintln!("kiln-agent: mount {target}: {e}");
            }
        }
    }
}

fn mount(source: &str, target: &str, fstype: &str, data: &str) -> io::Result<()> {
    let c = |s: &str| CString::new(s).expect("no NUL in constants");
    let (source, target, fstype, data) = (c(source), c(target), c(fstype), c(data));
    // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID,
            data.as_ptr().cast(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets the wall clock (CLOCK_REALTIME) to `ns` nanoseconds since 1970.
pub fn set_clock(ns: u64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec for the duration of the call.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// RNDADDENTROPY and RNDRESEEDCRNG (linux/random.h).
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Mixes `entropy` into the kernel's input pool, credited as entropy, and
/// reseeds the kernel's RNG from it at once (both need CAP_SYS_ADMIN).
pub fn add_entropy(entropy: &[u8]) -> io::Result<()> {
    if entropy.is_empty() {
        return Ok(());
    }
    let words = entropy.len().div_ceil(4);
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = vec![0u32; 2 + words];
    info[0] = (entropy.len() * 8) as u32;
    info[1] = entropy.len() as u32;
    for (i, chunk) in entropy.chunks(4).enumerate() {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        info[2 + i] = u32::from_ne_bytes(w);
    }
    let random = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")?;
    // SAFETY: `info` is a rand_pool_info whose buf holds buf_size bytes.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Connects to vsock `cid`:`port`, retrying until `within` has passed
/// (the host side may not listen yet, or the device not be probed).
pub fn vsock_connect(cid: u32, port: u32, within: Duration) -> io::Result<File> {
    let t0 = Instant::now();
    loop {
        match vsock_connect_once(cid, port) {
            Ok(f) => return Ok(f),
            Err(e) if t0.elapsed() >= within => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn vsock_connect_once(cid: u32, port: u32) -> io::Result<File> {
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_vm is valid.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    // SAFETY: `addr` is a valid sockaddr_vm and the length is its size.
    let r = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Syncs the file systems and restarts the machine: kiln ends the run
/// when the guest resets. Never returns.
pub fn reboot() -> ! {
    // SAFETY: sync(2) and reboot(2) take no pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    // PID 1 must not exit (the kernel would panic).
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Watches the kernel log for the out-of-memory killer while the command
/// runs: /dev/kmsg, read from its end at the start.
pub struct OomWatch(Option<File>);

impl OomWatch {
    /// Starts watching (quietly does nothing without /dev/kmsg).
    pub fn start() -> OomWatch {
        use std::io::{Seek, SeekFrom};
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .ok()
            .and_then(|mut f| f.seek(SeekFrom::End(0)).ok().map(|_| f));
        OomWatch(f)
    }

    /// Whether the OOM killer killed anything since [`OomWatch::start`].
    pub fn fired(&mut self) -> bool {
        use std::io::Read;
        let Some(f) = self.0.as_mut() else {
            return false;
        };
        // One record per read; EAGAIN at the end.
        let mut record = [0u8; 8192];
        loop {
            match f.read(&mut record) {
                Ok(0) => return false,
                Ok(n) => {
                    let text = String::from_utf8_lossy(&record[..n]);
                    if text.contains("Out of memory: Killed process")
                        || text.contains("Memory cgroup out of memory: Killed process")
                    {
                        return true;
                    }
                }
                // EPIPE: records were overwritten meanwhile; go on.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
                Err(_) => return false,
            }
        }
    }
}

/// Keeps freed memory in the process: glibc otherwise gives the top of a
/// heap back to the kernel once 128 KiB of it are free, and the next
/// frames allocated there page-fault again (on nested kvm_pvm hosts every
/// page fault passes kiln's page-fault breakpoint and the emulated
/// fault handler, and the page is zeroed in emulated ring 0).
pub fn keep_freed_memory() {
    // SAFETY: mallopt only changes the allocator's settings.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
