//! The host side of virtio-net: an existing tap device, opened through
//! `/dev/net/tun`. This file holds the TUN/TAP ioctls and the `writev(2)`
//! over guest memory, the only unsafe code of the network device.
//!
//! kiln never creates a tap: the user makes one (`ip tuntap add NAME mode
//! tap user USER`) and gives it an address, so kiln needs no privileges to
//! run and never leaves interfaces behind.

use std::ffi::{c_void, CString};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use vm_memory::VolatileSlice;

use super::{Backend, NetError, VNET_HDR_LEN};

/// `struct ifreq` as TUNSETIFF/TUNGETIFF use it: a name and flags.
fn ifreq(name: &str, flags: i32) -> libc::ifreq {
    // SAFETY: ifreq is a plain C struct (a byte array and a union of
    // integers, addresses and a pointer) for which all-zero bytes are a valid
    // value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // The flags are a c_short in the kernel's struct; all IFF_* values used
    // here fit.
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    req
}

/// Checks `name` the way the kernel's `dev_valid_name` does, so a typo gets
/// a clear message instead of an ioctl's EINVAL.
fn check_name(name: &str) -> Result<(), NetError> {
    let valid = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|c| c == b'/' || c == b':' || c == 0 || c.is_ascii_whitespace());
    if valid {
        Ok(())
    } else {
        Err(NetError::TapName(name.to_string()))
    }
}

/// The interface index of `name` in this process's network namespace, or
/// None when there is no such interface.
fn if_index(name: &str) -> Option<u32> {
    let c_name = CString::new(name).ok()?;
    // SAFETY: c_name is a valid NUL-terminated string that outlives the
    // call; if_nametoindex only reads it.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Reads a sysfs attribute of interface `name`, trimmed.
fn sysfs_attr(name: &str, attr: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/sys/class/net").join(name).join(attr))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Whether `/sys/class/net/NAME` describes the interface this process sees
/// under that name. It does not when the process entered a network
/// namespace without remounting /sys (`ip netns exec` remounts it).
fn sysfs_is_ours(name: &str, index: u32) -> bool {
    sysfs_attr(name, "ifindex").and_then(|s| s.parse::<u32>().ok()) == Some(index)
}

/// An open tap device, read and written one frame at a time, each frame
/// preceded by a 12-byte virtio-net header.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    /// TUN_F_* offloads the tap accepted when probed at open.
    offloads: u32,
    /// The kernel's count of frames the tap dropped towards us (its
    /// transmit drops in /proc/net/dev) when it was opened.
    kernel_drops_at_open: Option<u64>,
}

impl Tap {
    /// Opens the existing tap `name`: non-blocking, close-on-exec, with
    /// virtio-net headers, and probes which offloads it accepts.
    ///
    /// A missing interface, one that is not a tap, one owned by another user
    /// and one already in use each get their own [`NetError`] that says what
    /// to do.
    pub fn open(name: &str) -> Result<Tap, NetError> {
        check_name(name)?;
        let missing = || NetError::TapMissing {
            name: name.to_string(),
        };
        let index = if_index(name).ok_or_else(missing)?;
        let sysfs = sysfs_is_ours(name, index);
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if sysfs {
            // tun_flags exists only for tun/tap interfaces.
            let tun_flags = sysfs_attr(name, "tun_flags")
                .and_then(|s| i32::from_str_radix(s.trim_start_matches("0x"), 16).ok())
                .ok_or_else(|| NetError::NotTap {
                    name: name.to_string(),
                    what: "not a tun/tap interface".to_string(),
                })?;
            if tun_flags & libc::IFF_TAP == 0 {
                return Err(NetError::NotTap {
                    name: name.to_string(),
                    what: "a tun (layer 3) device, not a tap".to_string(),
                });
            }
            // A multi-queue tap only accepts multi-queue opens.
            flags |= tun_flags & libc::IFF_MULTI_QUEUE;
        }

        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| NetError::OpenTunDevice { source })?;

        let mut req = ifreq(name, flags);
        // SAFETY: TUNSETIFF reads and writes a struct ifreq; req is one, valid
        // and exclusively borrowed for the call, and the fd is open.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if ret < 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => NetError::TapPermission {
                    name: name.to_string(),
                },
                Some(libc::EBUSY) => NetError::TapBusy {
                    name: name.to_string(),
                },
                Some(libc::EINVAL) => NetError::NotTap {
                    name: name.to_string(),
                    what: format!("the kernel refused to attach it as a tap ({err})"),
                },
                _ => NetError::AttachTap {
                    name: name.to_string(),
                    source: err,
                },
            });
        }

        let tap = Tap {
            file,
            name: name.to_string(),
            offloads: 0,
            kernel_drops_at_open: None,
        };
        // Between our check and TUNSETIFF the interface could have gone and
        // TUNSETIFF (as root) then made a new, non-persistent one, which
        // would vanish with us: refuse it.
        if tap.get_flags()? & libc::IFF_PERSIST == 0 {
            return Err(missing());
        }
        let up = sysfs_attr(name, "flags")
            .and_then(|s| i32::from_str_radix(s.trim_start_matches("0x"), 16).ok())
            .map(|flags| flags & libc::IFF_UP != 0);
        if sysfs && up == Some(false) {
            log::warn!(
                "tap {name} is down: the guest's frames are dropped until `ip link set {name} up`"
            );
        }
        tap.set_vnet_hdr_size()?;
        let offloads = tap.probe_offloads()?;
        let kernel_drops_at_open = tap.kernel_drops();
        Ok(Tap {
            offloads,
            kernel_drops_at_open,
            ..tap
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The TUN_F_* offloads this tap accepted when probed.
    pub fn offloads(&self) -> u32 {
        self.offloads
    }

    fn get_flags(&self) -> Result<i32, NetError> {
        let mut req = ifreq("", 0);
        // SAFETY: TUNGETIFF writes a struct ifreq; req is one, valid and
        // exclusively borrowed for the call.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNGETIFF, &mut req) };
        if ret < 0 {
            return Err(NetError::AttachTap {
                name: self.name.clone(),
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: TUNGETIFF filled in the flags member of the union.
        Ok(i32::from(unsafe { req.ifr_ifru.ifru_flags }) & 0xffff)
    }

    fn set_vnet_hdr_size(&self) -> Result<(), NetError> {
        let size: libc::c_int = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which
        // points at `size` for the duration of the call.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) };
        if ret < 0 {
            return Err(NetError::SetVnetHdrSize {
                name: self.name.clone(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    fn try_set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is
        // shared with the kernel.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Which of checksum, TSO4, TSO6 and UFO offloads the kernel accepts on
    /// this tap; leaves all offloads off.
    fn probe_offloads(&self) -> Result<u32, NetError> {
        let mut offloads = 0;
        if self.try_set_offload(libc::TUN_F_CSUM).is_ok() {
            offloads |= libc::TUN_F_CSUM;
            for extra in [libc::TUN_F_TSO4, libc::TUN_F_TSO6, libc::TUN_F_UFO] {
                if self.try_set_offload(libc::TUN_F_CSUM | extra).is_ok() {
                    offloads |= extra;
                }
            }
        }
        self.try_set_offload(0)
            .map_err(|source| NetError::SetOffload {
                name: self.name.clone(),
                source,
            })?;
        Ok(offloads)
    }

    /// The tap's kernel transmit-drop counter: frames for the guest that
    /// the kernel dropped because kiln did not read them in time (its queue,
    /// `txqueuelen` frames, was full). Read from /proc/net/dev, which shows
    /// this process's network namespace (sysfs may show another's).
    fn kernel_drops(&self) -> Option<u64> {
        let table = std::fs::read_to_string("/proc/net/dev").ok()?;
        tx_dropped(&table, &self.name)
    }
}

/// The transmit `drop` column of interface `name` in /proc/net/dev text.
fn tx_dropped(table: &str, name: &str) -> Option<u64> {
    table.lines().skip(2).find_map(|line| {
        let (iface, counters) = line.split_once(':')?;
        if iface.trim() != name {
            return None;
        }
        // 8 receive columns, then transmit bytes, packets, errs, drop.
        counters.split_whitespace().nth(11)?.parse().ok()
    })
}

impl Backend for Tap {
    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    fn send(&mut self, frame: &[VolatileSlice<'_>]) -> io::Result<usize> {
        writev_slices(self.file.as_raw_fd(), frame)
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        self.try_set_offload(flags & self.offloads)
    }

    fn offloads(&self) -> u32 {
        self.offloads
    }

    fn kernel_drops(&self) -> Option<u64> {
        let now = Tap::kernel_drops(self)?;
        Some(now.saturating_sub(self.kernel_drops_at_open?))
    }
}

/// Writes `slices` of guest memory to `fd` with one `writev(2)`: one
/// datagram on a tap or a datagram socket.
///
/// At most `IOV_MAX` (1024) slices; the caller bounds chains below that.
pub(crate) fn writev_slices(fd: RawFd, slices: &[VolatileSlice<'_>]) -> io::Result<usize> {
    // Guards keep the pointers valid (and mark dirty pages, when tracked)
    // until the call returns.
    let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard()).collect();
    let iovecs: Vec<libc::iovec> = guards
        .iter()
        .zip(slices)
        .map(|(guard, slice)| libc::iovec {
            iov_base: guard.as_ptr() as *mut c_void,
            iov_len: slice.len(),
        })
        .collect();
    let count = libc::c_int::try_from(iovecs.len())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: every iovec points at a VolatileSlice of guest memory that is
    // mapped for at least iov_len bytes while its guard lives (to the end of
    // this function); writev only reads from them. Guest memory may change
    // under us (another vCPU), which is harmless for a copy into the kernel.
    let ret = unsafe { libc::writev(fd, iovecs.as_ptr(), count) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn refuses_invalid_names_before_any_syscall() {
        for name in ["", "a/b", "a:b", "a b", ".", "..", "sixteen-chars-xx"] {
            let err = Tap::open(name).unwrap_err();
            assert!(matches!(err, NetError::TapName(_)), "{name:?}: {err}");
        }
    }

    #[test]
    fn a_missing_tap_is_named_and_never_created() {
        let name = format!("kiln-no{}", std::process::id() % 100_000);
        let err = Tap::open(&name).unwrap_err();
        assert!(matches!(err, NetError::TapMissing { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&name) && text.contains("ip tuntap add"),
            "{text}"
        );
        assert!(if_index(&name).is_none(), "open must not create {name}");
    }

    #[test]
    fn reads_transmit_drops_from_proc_net_dev() {
        let table = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0
  tap0: 5 6 7 8 9 10 11 12 13 14 15 4242 17 18 19 20
";
        assert_eq!(tx_dropped(table, "tap0"), Some(4242));
        assert_eq!(tx_dropped(table, "lo"), Some(0));
        assert_eq!(tx_dropped(table, "tap"), None);
    }

    #[test]
    fn a_non_tap_interface_is_refused() {
        // Loopback exists in every namespace and is not a tap.
        let err = Tap::open("lo").unwrap_err();
        assert!(matches!(err, NetError::NotTap { .. }), "{err}");
    }
}
