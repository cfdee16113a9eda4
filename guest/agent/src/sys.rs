//! What the agent needs from the guest kernel as PID 1: the usual mounts,
//! a vsock connection to the host, and a clean end.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;
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
