//! Starting the command and waiting for it.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use kiln_proto::ExitStatus;

use crate::pty::Pty;
use crate::session::Options;

/// Where a program is looked for when neither the command's environment
/// nor the agent's own has a PATH (execvp's default).
const DEFAULT_PATH: &[u8] = b"/bin:/usr/bin";

/// Where `execvp` would find program `name` (no `/` in it) along `path`
/// (relative entries, the empty one included, are taken from `workdir`):
/// the first regular file there with an execute bit.
fn find_in_path(name: &[u8], path: &[u8], workdir: &Path) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    path.split(|&b| b == b':').find_map(|dir| {
        let dir = Path::new(OsStr::from_bytes(if dir.is_empty() { b"." } else { dir }));
        let candidate = workdir.join(dir).join(OsStr::from_bytes(name));
        let meta = std::fs::metadata(&candidate).ok()?;
        (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then_some(candidate)
    })
}

/// Starts the command. The agent finds the program along the command's
/// PATH itself and leaves the working directory alone when it is already
/// the agent's: then Rust's std starts it with posix_spawn (a vfork) and
/// not fork. That matters on nested hosts, where the guest kernel's ring 0
/// is emulated: copying the agent's page tables for the fork and tearing
/// them down again at exec took a good part of `kiln run -- true`.
pub fn spawn(exec: &kiln_proto::Exec, opts: &Options, pty: Option<&Pty>) -> io::Result<Child> {
    let name = &exec.argv[0];
    let workdir = Path::new(
        exec.workdir
            .as_deref()
            .map_or(OsStr::new(opts.workdir), OsStr::from_bytes),
    );
    // As std (and execvp) look a program up: along the command's PATH,
    // else the agent's own.
    let own_path = std::env::var_os("PATH");
    let path_var = exec
        .env
        .iter()
        .find_map(|kv| kv.strip_prefix(b"PATH="))
        .or(own_path.as_ref().map(|p| p.as_bytes()))
        .unwrap_or(DEFAULT_PATH);
    let program = if name.contains(&b'/') {
        None
    } else {
        find_in_path(name, path_var, workdir)
    };
    let mut cmd = match &program {
        Some(p) => Command::new(p),
        None => Command::new(OsStr::from_bytes(name)),
    };
    cmd.arg0(OsStr::from_bytes(name))
        .args(exec.argv[1..].iter().map(|a| OsStr::from_bytes(a)))
        .env_clear();
    if std::env::current_dir().ok().as_deref() != Some(workdir) {
        cmd.current_dir(workdir);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(pty) = pty {
        pty.attach(&mut cmd)?;
    }
    for kv in &exec.env {
        let (k, v) = match kv.iter().position(|&b| b == b'=') {
            Some(i) => (&kv[..i], &kv[i + 1..]),
            None => (&kv[..], &b""[..]),
        };
        cmd.env(OsStr::from_bytes(k), OsStr::from_bytes(v));
    }
    cmd.spawn()
}

/// Waits for the command; as PID 1 also reaps every orphan meanwhile.
pub fn wait(child: &mut Child, reap_all: bool) -> io::Result<ExitStatus> {
    let status = if reap_all {
        let pid = child.id() as i32;
        loop {
            let mut raw = 0;
            // SAFETY: waitpid(2) with a valid pointer to a local int.
            let got = unsafe { libc::waitpid(-1, &mut raw, 0) };
            if got == pid {
                break std::process::ExitStatus::from_raw(raw);
            }
            if got < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    } else {
        child.wait()?
    };
    Ok(match (status.code(), status.signal()) {
        (Some(c), _) => ExitStatus::Code(c),
        (None, Some(s)) => ExitStatus::Signal(s),
        (None, None) => ExitStatus::Code(255),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_along_path_as_execvp_would() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("kiln-agent-path-{}", std::process::id()));
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let make = |p: &Path, mode| {
            std::fs::write(p, b"#!/bin/sh\n").unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        make(&a.join("tool"), 0o644); // not executable: skipped
        make(&b.join("tool"), 0o755);
        std::fs::create_dir_all(a.join("dir")).unwrap(); // a directory: skipped
        make(&b.join("dir"), 0o755);
        let path = format!("{}:{}", a.display(), b.display());
        let find = |name: &str, path: &str| find_in_path(name.as_bytes(), path.as_bytes(), &dir);
        assert_eq!(find("tool", &path), Some(b.join("tool")));
        assert_eq!(find("dir", &path), Some(b.join("dir")));
        assert_eq!(find("missing", &path), None);
        // Relative entries (the empty one is ".") are the working directory's.
        assert_eq!(find("tool", "a::b"), Some(dir.join("b").join("tool")));
        assert_eq!(find("tool", ":"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
