//! Parsing the command line's value syntaxes: sizes, `--disk`, `--net`,
//! `--vsock`, `--console`. Each error names the value and what is wrong.

use std::path::PathBuf;

use super::{ConfigError, ConsoleMode, DiskConfig, NetConfig, VsockConfig};

/// Parses a memory size: a number with an optional K, M, G or T suffix
/// (binary units, an optional trailing "B" or "iB"); a bare number is MiB.
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.chars().last()?.to_ascii_uppercase() {
        'K' => (&t[..t.len() - 1], 10),
        'M' => (&t[..t.len() - 1], 20),
        'G' => (&t[..t.len() - 1], 30),
        'T' => (&t[..t.len() - 1], 40),
        c if c.is_ascii_digit() => (t, 20),
        _ => return None,
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    num.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

/// Longest disk ID virtio-blk can return (VIRTIO_BLK_ID_BYTES).
pub const DISK_ID_MAX: usize = 20;
/// Longest Linux interface name (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// Parses one --disk: `PATH[,ro][,id=NAME]`.
pub fn parse_disk(spec: &str) -> Result<DiskConfig, ConfigError> {
    let bad = |why: &str| ConfigError::DiskSpec {
        spec: spec.to_string(),
        why: why.to_string(),
    };
    let mut parts = spec.split(',');
    let path = parts.next().unwrap_or_default();
    if path.is_empty() {
        return Err(bad("no image path"));
    }
    let mut disk = DiskConfig {
        path: PathBuf::from(path),
        read_only: false,
        snapshot: false,
        id: None,
    };
    let mut mode: Option<&str> = None;
    for opt in parts {
        match opt.split_once('=') {
            None if matches!(opt, "ro" | "rw" | "snapshot") => {
                if let Some(earlier) = mode.filter(|&m| m != opt) {
                    return Err(bad(&format!(
                        "'{earlier}' and '{opt}' contradict each other"
                    )));
                }
                mode = Some(opt);
                disk.read_only = opt == "ro";
                disk.snapshot = opt == "snapshot";
            }
            Some(("id", id)) => {
                if id.is_empty() || id.len() > DISK_ID_MAX {
                    return Err(bad("the id must be 1 to 20 characters"));
                }
                if !id.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(bad("the id must be printable ASCII without spaces"));
                }
                disk.id = Some(id.to_string());
            }
            _ => return Err(bad(&format!("unknown option '{opt}'"))),
        }
    }
    Ok(disk)
}

/// Parses one --net: `tap=NAME[,mac=MAC]`.
pub fn parse_net(spec: &str) -> Result<NetConfig, ConfigError> {
    let bad = |why: &str| ConfigError::NetSpec {
        spec: spec.to_string(),
        why: why.to_string(),
    };
    let mut tap = None;
    let mut mac = None;
    for opt in spec.split(',') {
        match opt.split_once('=') {
            Some(("tap", name)) => {
                if name.is_empty() || name.len() > IFNAME_MAX || name.contains('/') {
                    return Err(bad("the tap name must be 1 to 15 characters, no '/'"));
                }
                tap = Some(name.to_string());
            }
            Some(("mac", m)) => mac = Some(m.to_string()),
            _ => return Err(bad(&format!("unknown option '{opt}'"))),
        }
    }
    let tap = tap.ok_or_else(|| bad("no tap=NAME"))?;
    Ok(NetConfig { id: None, tap, mac })
}

/// Parses --vsock: `PATH[,cid=N]`.
pub fn parse_vsock(spec: &str) -> Result<VsockConfig, ConfigError> {
    let bad = |why: &str| ConfigError::VsockSpec {
        spec: spec.to_string(),
        why: why.to_string(),
    };
    let mut parts = spec.split(',');
    let path = parts.next().unwrap_or_default();
    if path.is_empty() {
        return Err(bad("no socket path"));
    }
    let mut cid = devices::virtio::vsock::DEFAULT_CID;
    for opt in parts {
        match opt.split_once('=') {
            Some(("cid", n)) => {
                cid = n
                    .parse()
                    .ok()
                    .filter(|&c| c > 2 && c < u64::from(u32::MAX))
                    .ok_or_else(|| bad(&format!("cid '{n}' is not a guest CID")))?;
            }
            _ => return Err(bad(&format!("unknown option '{opt}'"))),
        }
    }
    let path = PathBuf::from(path);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(bad(&format!("directory {} does not exist", dir.display())));
    }
    Ok(VsockConfig { path, cid })
}

/// Parses --console.
pub fn parse_console(s: &str) -> Result<ConsoleMode, ConfigError> {
    match s {
        "stdio" => Ok(ConsoleMode::Stdio),
        "none" => Ok(ConsoleMode::None),
        _ => match s.strip_prefix("file:") {
            Some(p) if !p.is_empty() => Ok(ConsoleMode::File(PathBuf::from(p))),
            _ => Err(ConfigError::Console(s.to_string())),
        },
    }
}

/// A size as a person reads it, never rounded: "40 MiB", "40000 KiB",
/// "1000 bytes".
pub fn describe_size(bytes: u64) -> String {
    match bytes {
        b if b.is_multiple_of(1 << 20) => format!("{} MiB", b >> 20),
        b if b.is_multiple_of(1 << 10) => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::check_memory;
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("128M"), Some(128 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("1536M"), Some(1536 << 20));
        assert_eq!(parse_size("1536MiB"), Some(1536 << 20));
        assert_eq!(parse_size("2g"), Some(2 << 30));
        assert_eq!(parse_size("65536K"), Some(64 << 20));
        assert_eq!(parse_size("512"), Some(512 << 20));
        for bad in [
            "",
            "M",
            "12X",
            "-1G",
            "1.5G",
            "1 G",
            "ten",
            "99999999999999999999G",
        ] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sizes_are_described_without_rounding() {
        assert_eq!(describe_size(40 << 20), "40 MiB");
        assert_eq!(describe_size(40000 << 10), "40000 KiB");
        assert_eq!(describe_size(1 << 10), "1 KiB");
        assert_eq!(describe_size(1000), "1000 bytes");
        let e = check_memory(1 << 10, None).unwrap_err().to_string();
        assert!(e.starts_with("--memory 1 KiB is too small"), "{e}");
    }

    #[test]
    fn consoles_parse() {
        assert_eq!(parse_console("stdio").unwrap(), ConsoleMode::Stdio);
        assert_eq!(parse_console("none").unwrap(), ConsoleMode::None);
        assert_eq!(
            parse_console("file:/tmp/x").unwrap(),
            ConsoleMode::File("/tmp/x".into())
        );
        assert!(parse_console("file:").is_err());
        assert!(parse_console("tty").is_err());
    }

    #[test]
    fn disks_parse() {
        assert_eq!(
            parse_disk("a.img").unwrap(),
            DiskConfig {
                path: "a.img".into(),
                read_only: false,
                snapshot: false,
                id: None
            }
        );
        let d = parse_disk("a.img,snapshot,snapshot").unwrap();
        assert!(d.snapshot && !d.read_only);
        assert!(parse_disk("a.img,ro,ro").unwrap().read_only);
        let d = parse_disk("/x/b.img,ro,id=data-1").unwrap();
        assert!(d.read_only);
        assert_eq!(d.id.as_deref(), Some("data-1"));
        for bad in [
            "",
            ",ro",
            "a,readonly",
            "a,id=",
            "a,id=123456789012345678901",
            "a,id=has space",
            "a,ro,rw",
            "a,rw,ro",
            "a,ro,snapshot",
            "a,snapshot,rw",
        ] {
            assert!(parse_disk(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nets_parse() {
        let n = parse_net("tap=tap0,mac=02:00:00:00:00:01").unwrap();
        assert_eq!(n.tap, "tap0");
        assert_eq!(n.mac.as_deref(), Some("02:00:00:00:00:01"));
        assert_eq!(parse_net("tap=t").unwrap().mac, None);
        for bad in [
            "",
            "tap=",
            "mac=02:00:00:00:00:01",
            "tap=a,x=1",
            "tap=0123456789abcdef",
        ] {
            assert!(parse_net(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn vsock_parses() {
        let v = parse_vsock("/tmp/v.sock").unwrap();
        assert_eq!((v.path, v.cid), (PathBuf::from("/tmp/v.sock"), 3));
        assert_eq!(parse_vsock("v.sock,cid=42").unwrap().cid, 42);
        for bad in [
            "",
            ",cid=4",
            "/tmp/v,cid=2",
            "/tmp/v,cid=4294967295",
            "/tmp/v,cid=x",
            "/tmp/v,ro",
            "/no/such/dir/v.sock",
        ] {
            assert!(
                matches!(parse_vsock(bad), Err(ConfigError::VsockSpec { .. })),
                "{bad}"
            );
        }
    }
}
