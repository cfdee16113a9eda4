//! Files and directory trees over the sandbox channel (COPY_IN and
//! COPY_OUT): one tar stream (the `tar` crate; ustar with GNU long names)
//! cut into TAR frames, an empty TAR frame ending it. The stream holds one
//! top-level entry: the file, symlink or directory tree copied, with its
//! modes, symlinks and empty directories.
//!
//! The receiver unpacks into a fresh staging directory next to the
//! destination ([`unpack`]) and only then moves the entry into place
//! ([`Staged::commit`]), so a copy that fails halfway leaves nothing.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::Msg;

/// Bytes buffered before a TAR frame is sent.
const CHUNK: usize = 256 * 1024;

/// A [`Write`] that sends what it is given as TAR frames through `send`.
pub struct TarWriter<F: FnMut(Msg) -> io::Result<()>> {
    send: F,
    buf: Vec<u8>,
}

impl<F: FnMut(Msg) -> io::Result<()>> TarWriter<F> {
    /// Frames go through `send` (a writer lock, a socket).
    pub fn new(send: F) -> Self {
        TarWriter {
            send,
            buf: Vec::with_capacity(CHUNK),
        }
    }

    /// Sends what is buffered and the empty frame that ends the stream.
    pub fn finish(mut self) -> io::Result<()> {
        self.flush()?;
        (self.send)(Msg::Tar(Vec::new()))
    }
}

impl<F: FnMut(Msg) -> io::Result<()>> Write for TarWriter<F> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
            (self.send)(Msg::Tar(data))?;
        }
        Ok(())
    }
}

/// A [`Read`] over the TAR frames that `recv` returns, up to the empty
/// one; any other frame is an error.
pub struct TarReader<F: FnMut() -> io::Result<Option<Msg>>> {
    recv: F,
    cur: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl<F: FnMut() -> io::Result<Option<Msg>>> TarReader<F> {
    /// Frames come from `recv` (e.g. `|| read_msg(&mut stream)`).
    pub fn new(recv: F) -> Self {
        TarReader {
            recv,
            cur: Vec::new(),
            pos: 0,
            ended: false,
        }
    }

    /// Reads and drops the rest of the stream, so the frames after it can
    /// be read (after an unpack that failed or stopped at the tar's end).
    pub fn drain(&mut self) -> io::Result<()> {
        let mut sink = [0u8; 8192];
        while self.read(&mut sink)? > 0 {}
        Ok(())
    }
}

impl<F: FnMut() -> io::Result<Option<Msg>>> Read for TarReader<F> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.ended {
                return Ok(0);
            }
            match (self.recv)()? {
                Some(Msg::Tar(d)) if d.is_empty() => self.ended = true,
                Some(Msg::Tar(d)) => (self.cur, self.pos) = (d, 0),
                Some(other) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("frame type {:#04x} in the middle of a copy", other.kind()),
                    ))
                }
                None => return Err(io::ErrorKind::UnexpectedEof.into()),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The name a copy of `path` gets: its last component.
pub fn entry_name(path: &Path) -> io::Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} has no name of its own to copy under (name the directory itself, not / or ..)",
                    path.display()
                ),
            )
        })
}

/// Writes `path` (a file, a symlink, which is not followed, or a directory
/// tree) to `out` as a tar stream whose one top-level entry is its name.
pub fn pack(path: &Path, out: impl Write) -> io::Result<()> {
    let name = entry_name(path)?;
    let meta = fs::symlink_metadata(path)?;
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    if meta.is_dir() {
        b.append_dir_all(&name, path)?;
    } else {
        b.append_path_with_name(path, &name)?;
    }
    b.into_inner()?.flush()
}

/// A copy unpacked into its staging directory, not yet in place. Dropping
/// it removes the staging directory and everything in it.
#[derive(Debug)]
pub struct Staged {
    dir: PathBuf,
    entry: PathBuf,
    name: std::ffi::OsString,
}

impl Staged {
    /// Moves the copy to `dest` (into it, under the copy's own name, when
    /// `dest` is a directory) and returns where it went. With `replace`
    /// false an existing file or directory there is an error; with it,
    /// rename(2)'s rules apply (a file is replaced, a non-empty directory
    /// is not).
    pub fn commit(self, dest: &Path, replace: bool) -> io::Result<PathBuf> {
        let target = if dest.is_dir() {
            dest.join(&self.name)
        } else {
            dest.to_path_buf()
        };
        if !replace && fs::symlink_metadata(&target).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists; remove it or copy somewhere else",
                    target.display()
                ),
            ));
        }
        fs::rename(&self.entry, &target).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot move the copy to {}: {e}", target.display()),
            )
        })?;
        Ok(target)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The directory a copy for `dest` is staged in (the same file system, so
/// that [`Staged::commit`] is a rename).
pub fn staging_parent(dest: &Path) -> PathBuf {
    if dest.is_dir() {
        return dest.to_path_buf();
    }
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Unpacks the tar stream `from` into a new staging directory in
/// `parent`. `trusted` keeps set-user-ID, set-group-ID and sticky bits
/// (the guest unpacking what the host sends); the host unpacking what a
/// guest sends keeps only the permission bits. Either way the tar crate
/// refuses entries that would land outside the staging directory.
pub fn unpack(from: impl Read, parent: &Path, trusted: bool) -> io::Result<Staged> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let dir = parent.join(format!(
        ".kiln-copy.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir(&dir)?;
    let mut staged = Staged {
        dir: dir.clone(),
        entry: PathBuf::new(),
        name: Default::default(),
    };
    let mut archive = tar::Archive::new(from);
    archive.set_preserve_permissions(trusted);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    archive.unpack(&dir)?;
    let mut entries = fs::read_dir(&dir)?.collect::<Result<Vec<_>, _>>()?;
    if entries.len() != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the copy holds {} top-level entries, not one",
                entries.len()
            ),
        ));
    }
    let entry = entries.pop().expect("one");
    staged.name = entry.file_name();
    staged.entry = entry.path();
    Ok(staged)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::sync::mpsc;

    use super::*;

    /// Packs `src` into frames and unpacks them into a staging directory
    /// in `parent`, as the two ends of a connection would.
    fn round_trip(src: &Path, parent: &Path, trusted: bool) -> io::Result<Staged> {
        let (tx, rx) = mpsc::channel();
        let mut w = TarWriter::new(|m| {
            tx.send(m).unwrap();
            Ok(())
        });
        pack(src, &mut w)?;
        w.finish()?;
        drop(tx);
        let mut r = TarReader::new(|| Ok(rx.recv().ok()));
        let staged = unpack(&mut r, parent, trusted);
        r.drain()?;
        staged
    }

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn tree(root: &Path) {
        fs::create_dir_all(root.join("sub/empty")).unwrap();
        fs::write(root.join("sub/file"), vec![7u8; 300_000]).unwrap();
        fs::write(root.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o4750)).unwrap();
        symlink("sub/file", root.join("link")).unwrap();
        symlink("/nowhere", root.join("dangling")).unwrap();
        fs::set_permissions(root.join("sub"), fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn a_tree_arrives_with_modes_symlinks_and_empty_dirs() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        tree(&src);
        let out = d.path().join("out");
        let staged = round_trip(&src, d.path(), true).unwrap();
        assert_eq!(staged.commit(&out, false).unwrap(), out);
        assert_eq!(fs::read(out.join("sub/file")).unwrap(), vec![7u8; 300_000]);
        assert_eq!(mode(&out.join("run.sh")), 0o4750);
        assert_eq!(mode(&out.join("sub")), 0o700);
        assert!(out.join("sub/empty").is_dir());
        assert_eq!(
            fs::read_link(out.join("link")).unwrap(),
            Path::new("sub/file")
        );
        assert_eq!(
            fs::read_link(out.join("dangling")).unwrap(),
            Path::new("/nowhere")
        );
        // No staging directory is left.
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn untrusted_copies_lose_setuid_and_never_overwrite() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        tree(&src);
        let into = d.path().join("into");
        fs::create_dir(&into).unwrap();
        // Into an existing directory, under the copy's own name.
        let staged = round_trip(&src, &into, false).unwrap();
        let at = staged.commit(&into, false).unwrap();
        assert_eq!(at, into.join("src"));
        assert_eq!(mode(&at.join("run.sh")), 0o750);
        // Again: it exists now, and the first copy is left alone.
        let staged = round_trip(&src, &into, false).unwrap();
        let e = staged.commit(&into, false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_dir(&into).unwrap().count(), 1);
    }

    #[test]
    fn a_single_file_and_a_replace() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("a.txt");
        fs::write(&src, b"new").unwrap();
        let dest = d.path().join("b.txt");
        fs::write(&dest, b"old").unwrap();
        let staged = round_trip(&src, d.path(), true).unwrap();
        staged.commit(&dest, true).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"new");
    }

    #[test]
    fn hostile_streams_are_refused_and_leave_nothing() {
        let d = tempfile::tempdir().unwrap();
        let parent = d.path().join("p");
        fs::create_dir(&parent).unwrap();
        // Two top-level entries.
        let mut b = tar::Builder::new(Vec::new());
        for name in ["a", "b"] {
            let mut h = tar::Header::new_gnu();
            h.set_size(1);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, &b"x"[..]).unwrap();
        }
        let two = b.into_inner().unwrap();
        let e = unpack(&two[..], &parent, false).unwrap_err();
        assert!(e.to_string().contains("2 top-level entries"), "{e}");
        // An entry that climbs out, by name: the tar crate skips it.
        let mut evil = vec![0u8; 512];
        evil[..9].copy_from_slice(b"../escape");
        let mut h = tar::Header::new_old();
        h.as_mut_bytes().copy_from_slice(&evil);
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let mut data = h.as_bytes().to_vec();
        data.extend_from_slice(&[b'x'; 512]);
        data.extend_from_slice(&[0u8; 1024]);
        assert!(unpack(&data[..], &parent, false).is_err());
        assert!(!d.path().join("escape").exists());
        // Garbage, and an empty stream.
        assert!(unpack(&[1u8; 2000][..], &parent, false).is_err());
        assert!(unpack(&[][..], &parent, false).is_err());
        assert_eq!(fs::read_dir(&parent).unwrap().count(), 0, "no staging left");
    }

    #[test]
    fn a_foreign_frame_inside_a_copy_is_an_error() {
        let frames = vec![Msg::Tar(vec![1, 2, 3]), Msg::Stdin(vec![4])];
        let mut it = frames.into_iter();
        let mut r = TarReader::new(|| Ok(it.next()));
        let mut out = Vec::new();
        let e = r.read_to_end(&mut out).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(out, [1, 2, 3]);
    }

    #[test]
    fn root_and_dot_dot_have_no_name() {
        assert!(entry_name(Path::new("/")).is_err());
        assert!(entry_name(Path::new("a/..")).is_err());
        assert_eq!(entry_name(Path::new("/x/y/")).unwrap(), "y");
    }
}
