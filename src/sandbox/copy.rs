//! `--copy-in HOST:GUEST` and `--copy-out GUEST:HOST`: what they mean,
//! the checks made before the VM starts, and the host's half of the
//! COPY_IN and COPY_OUT exchanges (kiln_proto::copy carries the files).
//!
//! Names follow `cp -r`: a copy goes into an existing directory under its
//! own name, else to the path given. The guest path never holds a `:`
//! (the host path may): `--copy-in` splits at the last one, `--copy-out`
//! at the first.

use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kiln_proto::copy::{entry_name, pack, staging_parent, unpack, TarReader, TarWriter};
use kiln_proto::{read_msg, write_msg, Msg};

/// A bad `--copy-in` or `--copy-out`, found before the VM starts.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Not `A:B` with an absolute guest path.
    #[error("invalid {flag} '{spec}': use {form} with an absolute guest path")]
    Spec {
        /// --copy-in or --copy-out.
        flag: &'static str,
        /// What was given.
        spec: String,
        /// HOST:GUEST or GUEST:HOST.
        form: &'static str,
    },
    /// The host side of a copy-in cannot be read.
    #[error("--copy-in {path}: {source}; check the path", path = .0.display(), source = .1)]
    Source(PathBuf, io::Error),
    /// The place a copy-out would go is taken or missing.
    #[error("--copy-out {0}")]
    Target(String),
}

/// One `--copy-in`: a host file or tree to a guest path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyIn {
    /// What to copy.
    pub host: PathBuf,
    /// Where it goes in the guest.
    pub guest: Vec<u8>,
}

/// One `--copy-out`: a guest file or tree to a host path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyOut {
    /// What to copy back.
    pub guest: Vec<u8>,
    /// Where it goes on the host.
    pub host: PathBuf,
}

/// Splits a copy spec into (host path, guest path): `--copy-in` is
/// HOST:GUEST split at the last `:`, `--copy-out` GUEST:HOST at the first,
/// so only the host path may hold a `:`. The guest path must be absolute.
fn split(spec: &OsStr, copy_in: bool) -> Result<(PathBuf, &[u8]), CopyError> {
    let bytes = spec.as_bytes();
    let bad = || CopyError::Spec {
        flag: if copy_in { "--copy-in" } else { "--copy-out" },
        spec: spec.to_string_lossy().into_owned(),
        form: if copy_in { "HOST:GUEST" } else { "GUEST:HOST" },
    };
    let colon = |&b: &u8| b == b':';
    let at = if copy_in {
        bytes.iter().rposition(colon)
    } else {
        bytes.iter().position(colon)
    }
    .ok_or_else(bad)?;
    let (first, second) = (&bytes[..at], &bytes[at + 1..]);
    let (host, guest) = if copy_in {
        (first, second)
    } else {
        (second, first)
    };
    if host.is_empty() || !guest.starts_with(b"/") {
        return Err(bad());
    }
    Ok((PathBuf::from(OsString::from_vec(host.to_vec())), guest))
}

/// Parses and checks `--copy-in HOST:GUEST`: the source must exist.
pub fn parse_copy_in(spec: &OsStr) -> Result<CopyIn, CopyError> {
    let (host, guest) = split(spec, true)?;
    std::fs::symlink_metadata(&host).map_err(|e| CopyError::Source(host.clone(), e))?;
    entry_name(&host).map_err(|e| CopyError::Source(host.clone(), e))?;
    Ok(CopyIn {
        host,
        guest: guest.to_vec(),
    })
}

/// Parses and checks `--copy-out GUEST:HOST`: the copy must have a free
/// place to land (nothing on the host is ever overwritten).
pub fn parse_copy_out(spec: &OsStr) -> Result<CopyOut, CopyError> {
    let (host, guest) = split(spec, false)?;
    let name = entry_name(Path::new(OsStr::from_bytes(guest)))
        .map_err(|e| CopyError::Target(format!("{}: {e}", String::from_utf8_lossy(guest))))?;
    let target = if host.is_dir() {
        host.join(name)
    } else {
        host.clone()
    };
    if std::fs::symlink_metadata(&target).is_ok() {
        return Err(CopyError::Target(format!(
            "{}: {} exists; remove it or copy somewhere else",
            String::from_utf8_lossy(guest),
            target.display()
        )));
    }
    let parent = staging_parent(&host);
    if !parent.is_dir() {
        return Err(CopyError::Target(format!(
            "{}: directory {} does not exist",
            String::from_utf8_lossy(guest),
            parent.display()
        )));
    }
    Ok(CopyOut {
        guest: guest.to_vec(),
        host,
    })
}

/// Sends one copy-in and waits for the agent to unpack it; Err is the line
/// to report.
pub fn send_in(stream: &UnixStream, copy: &CopyIn) -> Result<(), String> {
    let what = || format!("--copy-in {}", copy.host.display());
    let mut s = stream;
    let lost = |e: io::Error| format!("{}: lost the guest agent: {e}", what());
    write_msg(&mut s, &Msg::CopyIn(copy.guest.clone())).map_err(lost)?;
    let mut tar = TarWriter::new(|m| write_msg(&mut s, &m));
    let packed = pack(&copy.host, &mut tar);
    tar.finish().map_err(lost)?;
    packed.map_err(|e| format!("{}: {e}", what()))?;
    match read_msg(&mut s) {
        Ok(Some(Msg::Done(None))) => Ok(()),
        Ok(Some(Msg::Done(Some(why)))) => {
            Err(format!("{}: the guest could not take it: {why}", what()))
        }
        Ok(Some(other)) => Err(format!(
            "{}: the guest agent answered with frame type {:#04x}",
            what(),
            other.kind()
        )),
        Ok(None) => Err(format!("{}: the guest agent hung up", what())),
        Err(e) => Err(format!("{}: {e}", what())),
    }
}

/// The command's output, for frames that arrive in the middle of a copy
/// (a background process may still write).
pub struct Output<'a> {
    /// The command's stdout.
    pub out: &'a mut dyn Write,
    /// The command's stderr.
    pub err: &'a mut dyn Write,
}

impl Output<'_> {
    /// Reads the next frame that is not output (which is written out) or
    /// a late CREDIT for input (which no longer matters).
    fn next(&mut self, mut s: &UnixStream) -> io::Result<Option<Msg>> {
        loop {
            match read_msg(&mut s)? {
                Some(Msg::Stdout(d)) => self.out.write_all(&d)?,
                Some(Msg::Stderr(d)) => self.err.write_all(&d)?,
                Some(Msg::Credit(_)) => {}
                other => return Ok(other),
            }
        }
    }
}

/// Asks for one copy-out and puts it in place; returns where it went, or
/// the line to report. `to_guest` is the one writer of the connection.
pub fn fetch_out(
    stream: &UnixStream,
    to_guest: &Mutex<UnixStream>,
    copy: &CopyOut,
    output: &mut Output,
) -> Result<PathBuf, String> {
    let what = || format!("--copy-out {}", String::from_utf8_lossy(&copy.guest));
    let lost = |e: io::Error| format!("{}: lost the guest agent: {e}", what());
    write_msg(
        &mut *to_guest.lock().expect("agent writer"),
        &Msg::CopyOut(copy.guest.clone()),
    )
    .map_err(lost)?;
    let parent = staging_parent(&copy.host);
    let mut tar = TarReader::new(|| output.next(stream));
    // The guest is not trusted: no set-user-ID bits, nothing outside the
    // staging directory, nothing overwritten.
    let staged = unpack(&mut tar, &parent, false);
    tar.drain().map_err(lost)?;
    match output.next(stream).map_err(lost)? {
        Some(Msg::Done(None)) => {}
        Some(Msg::Done(Some(why))) => return Err(format!("{}: {why}", what())),
        Some(other) => {
            return Err(format!(
                "{}: the guest agent answered with frame type {:#04x}",
                what(),
                other.kind()
            ))
        }
        None => return Err(format!("{}: the guest agent hung up", what())),
    }
    let staged = staged.map_err(|e| format!("{}: the guest sent a bad copy: {e}", what()))?;
    staged
        .commit(&copy.host, false)
        .map_err(|e| format!("{}: {e}", what()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_split_where_the_guest_path_cannot_hold_a_colon() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("a:b");
        std::fs::write(&src, b"x").unwrap();
        let spec = format!("{}:/work/in", src.display());
        let c = parse_copy_in(OsStr::new(&spec)).unwrap();
        assert_eq!((c.host, c.guest), (src.clone(), b"/work/in".to_vec()));
        let spec = format!("/out/x:{}/new:file", d.path().display());
        let c = parse_copy_out(OsStr::new(&spec)).unwrap();
        assert_eq!(c.guest, b"/out/x");
        assert_eq!(c.host, d.path().join("new:file"));
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let d = tempfile::tempdir().unwrap();
        let show = |r: Result<CopyIn, CopyError>| r.unwrap_err().to_string();
        assert!(show(parse_copy_in(OsStr::new("nocolon"))).contains("use HOST:GUEST"));
        assert!(show(parse_copy_in(OsStr::new("/etc:relative"))).contains("absolute"));
        assert!(show(parse_copy_in(OsStr::new(":/x"))).contains("use HOST:GUEST"));
        let missing = format!("{}/missing:/x", d.path().display());
        assert!(show(parse_copy_in(OsStr::new(&missing))).contains("No such file"));
        assert!(show(parse_copy_in(OsStr::new("/:/x"))).contains("no name of its own"));
        let out = |s: String| parse_copy_out(OsStr::new(&s)).unwrap_err().to_string();
        // Into an existing directory: its entry must be free.
        std::fs::write(d.path().join("f"), b"").unwrap();
        assert!(out(format!("/guest/f:{}", d.path().display())).contains("exists"));
        assert!(out(format!("/g:{}/f", d.path().display())).contains("exists"));
        assert!(out(format!("/g:{}/no/dir/x", d.path().display())).contains("does not exist"));
        assert!(out("relative:/tmp/x".into()).contains("use GUEST:HOST"));
        assert!(out("/:/tmp/x-kiln-test".into()).contains("no name of its own"));
    }
}
