//! `kiln run --rootfs debian-root.ext4 -- CMD`: commands in a real Debian 12
//! root (resources/debian-root.sh: mmdebstrap from Debian's packages, the
//! guest agent as init) on our minimal kernel. Each run boots Linux, and
//! Debian's programs are big: 45-90 s per run on the nested test hosts.

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Outcome, Running};

/// Generous: a boot takes 30-45 s here and gcc as long again.
const TIMEOUT: Duration = Duration::from_secs(600);

fn debian_root() -> PathBuf {
    common::guest_artifact(
        "debian-root.ext4",
        "run ./resources/guests.sh --debian (or ./resources/debian-root.sh)",
    )
}

/// `kiln run --kernel <minimal> --rootfs <debian> -- sh -c script` with
/// `stdin`; `tmp` (TMPDIR) must be left empty.
fn debian(script: &str, stdin: &[u8], tmp: &Path) -> Outcome {
    let mut cmd = common::kiln();
    cmd.arg("run")
        .arg("--kernel")
        .arg(common::guest_artifact(
            "minimal/vmlinux",
            "run ./resources/guests.sh",
        ))
        .arg("--rootfs")
        .arg(debian_root())
        .args(["--", "sh", "-c", script])
        .env("TMPDIR", tmp);
    let mut r = Running::start(cmd);
    r.send(stdin);
    r.close_stdin();
    let o = r.wait(TIMEOUT);
    o.check(!o.timed_out, "kiln finished by itself");
    let left: Vec<_> = std::fs::read_dir(tmp).unwrap().collect();
    o.check(left.is_empty(), &format!("temporary files left: {left:?}"));
    o
}

#[test]
fn python_and_gcc_run_with_exact_streams_and_status() {
    let tmp = common::scratch("debian-tools");
    let data: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let script = r#"
        python3 -c 'import sys, hashlib; print(6*7); print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()); print("to stderr", file=sys.stderr)' &&
        printf '#include <stdio.h>\nint main(void) { puts("compiled"); return 7; }\n' >/tmp/a.c &&
        gcc -O2 -o /tmp/a /tmp/a.c && /tmp/a
    "#;
    let o = debian(script, &data, &tmp);
    o.check(
        o.code == Some(7),
        "kiln exits with the compiled program's status",
    );
    let want = format!("42\n{}\ncompiled\n", common::sha256_hex(&data));
    o.check(
        o.stdout == want,
        &format!("stdout is python's and the program's: {want:?}"),
    );
    o.check(
        o.stderr_bytes == b"to stderr\n",
        "stderr is python's, nothing else",
    );
}

#[test]
fn the_debian_image_is_never_modified() {
    let tmp = common::scratch("debian-rm");
    let image = debian_root();
    let before = common::sha256_of(&image);
    // (Not `rm -rf /usr`, as tests/sandbox.rs does on the busybox root:
    // every unlink is emulated ring-0 work here, ~0.1 s each, and Debian's
    // /usr has ~20,000 files.)
    let script = r#"
        . /etc/os-release && echo "$VERSION_CODENAME" &&
        rm -rf /usr/bin/python3* /etc/hostname &&
        echo gone >/etc/new-file && sync &&
        if command -v python3; then echo "python3 still there"; exit 1; fi &&
        read -r line </etc/new-file && echo "$line" && exit 3
    "#;
    let o = debian(script, b"", &tmp);
    o.check(
        o.code == Some(3) && o.stdout == "bookworm\ngone\n",
        "the command ran on Debian 12 and saw its own writes",
    );
    o.check(
        common::sha256_of(&image) == before,
        "the image is unchanged",
    );
}
