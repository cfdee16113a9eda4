//! Host side of the serial console: where guest output goes, and the
//! Ctrl-A escape on input (Ctrl-A x quits, Ctrl-A Ctrl-A sends a Ctrl-A),
//! as in QEMU.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use crate::config::ConsoleMode;

/// Errors setting the console up.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The output file could not be opened.
    #[error("cannot open console file {0}: {1}")]
    OpenFile(std::path::PathBuf, std::io::Error),
    /// The output file is a FIFO that nobody reads.
    #[error(
        "console file {0} is a FIFO with no reader: start the reader first, or use another file"
    )]
    NoReader(std::path::PathBuf),
    /// The output file is locked, as a VM locks its disk images.
    #[error("console file {0} is locked by another process (a disk image in use?): give the console its own file")]
    Locked(std::path::PathBuf),
}

/// Writes straight to a file descriptor, unbuffered, so every byte the
/// guest prints appears at once (also without a newline, in raw mode).
pub struct FdWriter(OwnedFd);

impl Write for FdWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        loop {
            // SAFETY: writing from a valid buffer to an fd we own.
            let n = unsafe { libc::write(self.0.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::Interrupted => {}
                // stdout may be shared with a process that made it
                // non-blocking: wait for room instead of failing.
                std::io::ErrorKind::WouldBlock => {
                    let mut pfd = libc::pollfd {
                        fd: self.0.as_raw_fd(),
                        events: libc::POLLOUT,
                        revents: 0,
                    };
                    // SAFETY: poll(2) on one valid pollfd.
                    unsafe { libc::poll(&mut pfd, 1, -1) };
                }
                _ => return Err(e),
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The last bytes the guest wrote to its console, wherever they went (a
/// sandbox reads a kernel panic message out of it).
#[derive(Clone, Default)]
pub struct ConsoleTail(Arc<Mutex<VecDeque<u8>>>);

impl std::fmt::Debug for ConsoleTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConsoleTail")
    }
}

impl ConsoleTail {
    /// How many bytes it keeps.
    pub const LEN: usize = 16 * 1024;

    fn push(&self, bytes: &[u8]) {
        let mut t = self.0.lock().expect("console tail lock");
        let bytes = &bytes[bytes.len().saturating_sub(Self::LEN)..];
        let excess = (t.len() + bytes.len()).saturating_sub(Self::LEN);
        t.drain(..excess);
        t.extend(bytes);
    }

    /// The kernel's panic line, if the kept output has one.
    pub fn panic_line(&self) -> Option<String> {
        let t = self.0.lock().expect("console tail lock");
        let bytes: Vec<u8> = t.iter().copied().collect();
        String::from_utf8_lossy(&bytes).lines().find_map(|l| {
            l.find("Kernel panic - not syncing")
                .map(|i| l[i..].trim_end().to_string())
        })
    }
}

/// A writer that also keeps the tail.
struct Tapped {
    inner: Box<dyn Write + Send>,
    tail: ConsoleTail,
}

impl Write for Tapped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.tail.push(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Passes output on until a write fails; then reports the failure once,
/// through `failed`, and drops all further output (the VM is stopping).
struct StopOnError {
    inner: Box<dyn Write + Send>,
    failed: Option<Box<dyn FnOnce(String) + Send>>,
}

impl Write for StopOnError {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.failed.is_none() {
            return Ok(buf.len());
        }
        match self.inner.write(buf) {
            Ok(n) => Ok(n),
            Err(e) => {
                if let Some(report) = self.failed.take() {
                    report(describe_write_error(&e));
                }
                Ok(buf.len())
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.failed.is_some() {
            let _ = self.inner.flush();
        }
        Ok(())
    }
}

/// A failed console write, for the line kiln ends with.
fn describe_write_error(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPIPE) => "broken pipe (nothing reads kiln's output any more)".into(),
        Some(libc::ENOSPC) => "no space left on the device".into(),
        _ => e.to_string(),
    }
}

/// The writer guest output goes to; with `tail`, its last bytes are kept
/// there too. The first write that fails calls `failed` with what went
/// wrong (the caller stops the VM), and output is dropped from then on.
pub fn output(
    mode: &ConsoleMode,
    tail: Option<&ConsoleTail>,
    failed: Box<dyn FnOnce(String) + Send>,
) -> Result<Box<dyn Write + Send>, ConsoleError> {
    let inner: Box<dyn Write + Send> = Box::new(StopOnError {
        inner: output_for(mode)?,
        failed: Some(failed),
    });
    Ok(match tail {
        Some(tail) => Box::new(Tapped {
            inner,
            tail: tail.clone(),
        }),
        None => inner,
    })
}

fn output_for(mode: &ConsoleMode) -> Result<Box<dyn Write + Send>, ConsoleError> {
    Ok(match mode {
        ConsoleMode::Stdio => {
            let fd = std::io::stdout()
                .as_fd_owned()
                .map_err(|e| ConsoleError::OpenFile("stdout".into(), e))?;
            Box::new(FdWriter(fd))
        }
        ConsoleMode::None => Box::new(std::io::sink()),
        ConsoleMode::File(path) => Box::new(FdWriter(open_console_file(path)?.into())),
    })
}

/// Opens `path` for the console's output: appended to, made if missing.
/// Never blocks: a FIFO must have a reader already (then its writes block
/// as usual). A regular file gets an exclusive lock, so it cannot be a
/// disk image another VM has open, nor the console of a second VM.
fn open_console_file(path: &std::path::Path) -> Result<std::fs::File, ConsoleError> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENXIO) => ConsoleError::NoReader(path.to_path_buf()),
            _ => ConsoleError::OpenFile(path.to_path_buf(), e),
        })?;
    let kind = f
        .metadata()
        .map_err(|e| ConsoleError::OpenFile(path.to_path_buf(), e))?
        .file_type();
    if kind.is_file() && f.try_lock().is_err() {
        return Err(ConsoleError::Locked(path.to_path_buf()));
    }
    // Back to blocking writes: a slow reader of a FIFO or terminal slows
    // the guest down rather than losing its output.
    // SAFETY: F_GETFL/F_SETFL on an fd we own.
    unsafe {
        let flags = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Ok(f)
}

trait AsFdOwned {
    fn as_fd_owned(&self) -> std::io::Result<OwnedFd>;
}

impl AsFdOwned for std::io::Stdout {
    fn as_fd_owned(&self) -> std::io::Result<OwnedFd> {
        use std::os::fd::AsFd;
        self.as_fd().try_clone_to_owned()
    }
}

#[cfg(test)]
mod tail_tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_last_bytes_and_finds_a_panic() {
        let tail = ConsoleTail::default();
        let mut w = output(&ConsoleMode::None, Some(&tail), Box::new(drop)).unwrap();
        w.write_all(&vec![b'x'; 3 * ConsoleTail::LEN]).unwrap();
        assert_eq!(tail.0.lock().unwrap().len(), ConsoleTail::LEN);
        assert_eq!(tail.panic_line(), None);
        w.write_all(b"\n[    1.0] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\r\n[ 1.1] CPU: 0")
            .unwrap();
        assert_eq!(
            tail.panic_line().as_deref(),
            Some("Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100")
        );
    }
}

/// The escape key: Ctrl-A.
pub const ESCAPE: u8 = 0x01;

/// What a chunk of console input means.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Input {
    /// Bytes for the guest.
    pub to_guest: Vec<u8>,
    /// The user asked to quit.
    pub quit: bool,
}

/// Tracks the Ctrl-A escape across reads.
#[derive(Debug, Default)]
pub struct EscapeParser {
    pending_escape: bool,
}

impl EscapeParser {
    /// Splits input into guest bytes and commands.
    pub fn feed(&mut self, bytes: &[u8]) -> Input {
        let mut out = Input::default();
        for &b in bytes {
            if self.pending_escape {
                self.pending_escape = false;
                match b {
                    b'x' | b'X' => {
                        out.quit = true;
                        return out;
                    }
                    ESCAPE => out.to_guest.push(ESCAPE),
                    // Unknown command: drop both, like QEMU.
                    _ => {}
                }
            } else if b == ESCAPE {
                self.pending_escape = true;
            } else {
                out.to_guest.push(b);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    fn fifo(dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("fifo");
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        path
    }

    #[test]
    fn the_first_failed_write_is_reported_once_and_output_then_dropped() {
        let (read, write) = std::io::pipe().unwrap();
        drop(read);
        let reports = Arc::new(Mutex::new(Vec::new()));
        let seen = reports.clone();
        let mut out = StopOnError {
            inner: Box::new(FdWriter(write.into())),
            failed: Some(Box::new(move |why| seen.lock().unwrap().push(why))),
        };
        for _ in 0..3 {
            assert_eq!(out.write(b"lost").unwrap(), 4);
        }
        let reports = reports.lock().unwrap();
        assert_eq!(reports.len(), 1);
        assert!(reports[0].starts_with("broken pipe"), "{reports:?}");
    }

    #[test]
    fn a_fifo_without_a_reader_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = fifo(dir.path());
        assert!(matches!(
            open_console_file(&path),
            Err(ConsoleError::NoReader(_))
        ));
        // With a reader it is a console like any other, writes blocking.
        let reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        let f = open_console_file(&path).unwrap();
        // SAFETY: F_GETFL on an open fd.
        let flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0);
        drop(reader);
    }

    #[test]
    fn a_locked_file_is_refused_and_a_console_file_locks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let first = open_console_file(&path).unwrap();
        assert!(matches!(
            open_console_file(&path),
            Err(ConsoleError::Locked(_))
        ));
        drop(first);
        let image = std::fs::File::open(&path).unwrap();
        image.lock_shared().unwrap();
        assert!(matches!(
            open_console_file(&path),
            Err(ConsoleError::Locked(_))
        ));
    }

    #[test]
    fn plain_bytes_pass_through() {
        let mut p = EscapeParser::default();
        assert_eq!(p.feed(b"ls\r").to_guest, b"ls\r");
    }

    #[test]
    fn ctrl_a_x_quits_even_across_reads() {
        let mut p = EscapeParser::default();
        let i = p.feed(b"ab\x01");
        assert_eq!((i.to_guest.as_slice(), i.quit), (&b"ab"[..], false));
        let i = p.feed(b"xzz");
        assert!(i.quit);
        assert!(i.to_guest.is_empty());
    }

    #[test]
    fn double_ctrl_a_sends_one() {
        let mut p = EscapeParser::default();
        assert_eq!(p.feed(b"\x01\x01q").to_guest, b"\x01q");
        assert_eq!(p.feed(b"\x01zq").to_guest, b"q");
    }
}
