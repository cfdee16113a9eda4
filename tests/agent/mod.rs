//! Builds the kiln test agent (tests/agent, a separate cargo project: a
//! `#![no_std]` guest that boots through kiln's PVH entry and runs checks
//! at ring 3) and reads its console output. Include it from an integration
//! test with `#[path = "agent/mod.rs"] mod agent;`.
//!
//! ```ignore
//! let elf = agent::build();
//! let o = common::run(&["run", "--kernel", elf.to_str().unwrap(),
//!                       "--cmdline", "agent.test=selftest,boottime"], TIMEOUT);
//! let report = agent::Report::parse(&o.stdout);
//! o.check(o.code == Some(0) && report.ok(), &report.summary());
//! ```
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Prefix of every line the agent prints.
pub const PREFIX: &str = "AGENT: ";

/// Builds the agent once per test process; returns the ELF's path.
///
/// Runs `cargo build --release` in tests/agent (so that its
/// .cargo/config.toml applies) with its own target directory under
/// CARGO_TARGET_TMPDIR. Test binaries running in parallel all call cargo,
/// and cargo's lock on that directory serialises them.
pub fn build() -> PathBuf {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    ELF.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/agent");
        let tmp = std::env::var_os("CARGO_TARGET_TMPDIR")
            .map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")), PathBuf::from);
        let target_dir = tmp.join("agent-target");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&src)
            .args(["build", "--release", "--manifest-path"])
            .arg(src.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target_dir);
        // Settings meant for kiln's own build must not leak into the
        // agent's: they would replace the flags in .cargo/config.toml.
        for var in [
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_BUILD_RUSTFLAGS",
            "CARGO_BUILD_TARGET",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_TARGET_DIR",
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER",
        ] {
            cmd.env_remove(var);
        }
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        if !out.status.success() {
            panic!(
                "{cmd:?} failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let elf = target_dir.join("x86_64-unknown-linux-gnu/release/kiln-test-agent");
        let bytes = std::fs::read(&elf).unwrap_or_else(|e| panic!("{}: {e}", elf.display()));
        if let Err(e) = check_elf(&bytes) {
            panic!("{}: not a bootable agent image: {e}", elf.display());
        }
        elf
    })
    .clone()
}

/// Checks what kiln relies on: program headers only PT_LOAD (at 1 MiB or
/// above, p_paddr == p_vaddr) and exactly one PT_NOTE holding exactly the
/// Xen PVH entry note; no PT_INTERP or PT_DYNAMIC (nothing to relocate).
pub fn check_elf(elf: &[u8]) -> Result<(), String> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        return Err("not an ELF64 file".into());
    }
    let short = || "truncated".to_string();
    let phoff = u64_at(0x20).ok_or_else(short)? as usize;
    let phentsize = u16_at(0x36).ok_or_else(short)? as usize;
    let phnum = u16_at(0x38).ok_or_else(short)? as usize;
    let (mut notes, mut loads) = (0, 0);
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let p_type = u32_at(ph).ok_or_else(short)?;
        let offset = u64_at(ph + 8).ok_or_else(short)? as usize;
        let vaddr = u64_at(ph + 16).ok_or_else(short)?;
        let paddr = u64_at(ph + 24).ok_or_else(short)?;
        let filesz = u64_at(ph + 32).ok_or_else(short)? as usize;
        match p_type {
            1 => {
                loads += 1;
                if paddr != vaddr || paddr < 0x10_0000 {
                    return Err(format!("PT_LOAD at vaddr {vaddr:#x} paddr {paddr:#x}"));
                }
            }
            4 => {
                notes += 1;
                // namesz 4, descsz 4, type 18 (XEN_ELFNOTE_PHYS32_ENTRY), "Xen\0", entry
                let note = elf.get(offset..offset + filesz).ok_or_else(short)?;
                if filesz != 20 || note[..16] != *b"\x04\0\0\0\x04\0\0\0\x12\0\0\0Xen\0" {
                    return Err(format!("PT_NOTE is not just the PVH note: {note:02x?}"));
                }
            }
            2 | 3 => return Err(format!("has a PT_DYNAMIC or PT_INTERP ({p_type})")),
            _ => return Err(format!("unexpected program header type {p_type:#x}")),
        }
    }
    if notes != 1 || loads == 0 {
        return Err(format!("{notes} PT_NOTE and {loads} PT_LOAD headers"));
    }
    Ok(())
}

/// The `key=value` words of the first agent line that starts with `tag`
/// (`AGENT: blk-rw disk=0 sectors=16384 ...` for tag `blk-rw`), if any.
pub fn info(stdout: &str, tag: &str) -> Option<std::collections::HashMap<String, String>> {
    let line = stdout.lines().find_map(|l| {
        let rest = &l[l.find(PREFIX)? + PREFIX.len()..];
        rest.strip_prefix(tag)?.strip_prefix(' ')
    })?;
    Some(
        line.split_whitespace()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// What the agent reported on the console.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// `(name, None)` for `check NAME ok`, `(name, Some(reason))` for FAIL.
    pub checks: Vec<(String, Option<String>)>,
    /// The counts of the `done` line, if it was printed.
    pub done: Option<(u32, u32)>,
    /// A `fault ...` (CPU exception) or `panic: ...` line, if any.
    pub crash: Option<String>,
}

impl Report {
    /// Reads the agent's lines out of the console output (other lines, and
    /// anything before the prefix on a line, are ignored).
    pub fn parse(stdout: &str) -> Report {
        let mut r = Report::default();
        for line in stdout.lines() {
            let Some(at) = line.find(PREFIX) else {
                continue;
            };
            let line = &line[at + PREFIX.len()..];
            if let Some(rest) = line.strip_prefix("check ") {
                if let Some(name) = rest.strip_suffix(" ok") {
                    r.checks.push((name.to_string(), None));
                } else if let Some((name, why)) = rest.split_once(" FAIL: ") {
                    r.checks.push((name.to_string(), Some(why.to_string())));
                }
            } else if let Some(rest) = line.strip_prefix("done ") {
                let count = |key: &str| {
                    rest.split_whitespace()
                        .find_map(|w| w.strip_prefix(key)?.parse().ok())
                };
                r.done = count("passed=").zip(count("failed="));
            } else if line.starts_with("fault ") || line.starts_with("panic: ") {
                r.crash.get_or_insert_with(|| line.to_string());
            }
        }
        r
    }

    /// All checks passed, the agent got to its `done` line, and the counts agree.
    pub fn ok(&self) -> bool {
        let failed = self.checks.iter().filter(|c| c.1.is_some()).count() as u32;
        let passed = self.checks.len() as u32 - failed;
        self.crash.is_none() && failed == 0 && self.done == Some((passed, failed))
    }

    /// The check called `name`: `Some(None)` passed, `Some(Some(why))` failed.
    pub fn check(&self, name: &str) -> Option<Option<&str>> {
        self.checks
            .iter()
            .find(|c| c.0 == name)
            .map(|c| c.1.as_deref())
    }

    /// One line for assertion messages.
    pub fn summary(&self) -> String {
        format!(
            "agent: {} checks, done {:?}, crash {:?}, failures {:?}",
            self.checks.len(),
            self.done,
            self.crash,
            self.checks
                .iter()
                .filter(|c| c.1.is_some())
                .collect::<Vec<_>>()
        )
    }
}

/// splitmix64: the agent's pattern generator (src/blk.rs, src/netcheck.rs),
/// recomputed on the host to check what the agent wrote or sent.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
