//! Builds the bare-metal test payload (`tests/payload/payload.S`, linked by
//! `payload.ld`) into an ELF "kernel" that kiln can boot. Include it from an
//! integration test with `#[path = "payload/mod.rs"] mod payload;`.
//!
//! The payload reads `payload=MODE` from its command line (hello, echo,
//! halt, triple, spin, badport, insns, acpi, timer) and prints `kiln-payload: ...` lines
//! on COM1; see the comments in payload.S for what each mode does.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Prefix of every line the payload prints.
pub const PREFIX: &str = "kiln-payload: ";

/// The checks of `payload=insns`, in order; each prints `insn NAME ok`.
pub const INSNS: &[&str] = &[
    "popcnt_r32",
    "popcnt_r64",
    "popcnt_m32",
    "popcnt_m64",
    "popcnt_zero",
    "fwait",
    "clac",
    "stac",
    "xgetbv",
    "cmpxchg16b_eq",
    "cmpxchg16b_ne",
    "cmpxchg16b_gs",
    "int3",
    "lsl",
];

/// The line `payload=count` prints for count `n`.
pub fn count_line(n: u64) -> String {
    format!("{PREFIX}count {n}\n")
}

/// The counts in `payload=count`'s output, in order.
pub fn counts(out: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| l.strip_prefix(PREFIX)?.strip_prefix("count ")?.parse().ok())
        .collect()
}

/// `kiln run` arguments that boot the payload in `mode`, then `extra`.
pub fn run_args(mode: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "run".into(),
        "--kernel".into(),
        build().to_str().expect("UTF-8 path").into(),
        "--cmdline".into(),
        format!("payload={mode}"),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// Assembles and links the payload once per test process; returns the ELF's path.
pub fn build() -> PathBuf {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    ELF.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/payload");
        let out = std::env::var_os("CARGO_TARGET_TMPDIR")
            .map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")), PathBuf::from);
        std::fs::create_dir_all(&out).expect("create CARGO_TARGET_TMPDIR");
        // Test binaries run in parallel: build under per-process names, then
        // rename (atomic) so nobody ever sees a half-written payload.elf.
        let obj = out.join(format!("payload.{}.o", std::process::id()));
        let tmp = out.join(format!("payload.{}.elf", std::process::id()));
        let mut cc = Command::new("cc");
        run(cc.arg("-c").arg(src.join("payload.S")).arg("-o").arg(&obj));
        let mut ld = Command::new("ld");
        ld.arg("-T").arg(src.join("payload.ld"));
        run(ld.arg("-o").arg(&tmp).arg(&obj));
        let _ = std::fs::remove_file(&obj);
        let elf = out.join("payload.elf");
        std::fs::rename(&tmp, &elf).expect("rename payload.elf");
        elf
    })
    .clone()
}

fn run(cmd: &mut Command) {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !o.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    }
}
