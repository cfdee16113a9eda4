//! Host side of the serial console: where guest output goes, and the
//! Ctrl-A escape on input (Ctrl-A x quits, Ctrl-A Ctrl-A sends a Ctrl-A),
//! as in QEMU.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::config::ConsoleMode;

/// Errors setting the console up.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The output file could not be opened.
    #[error("cannot open console file {0}: {1}")]
    OpenFile(std::path::PathBuf, std::io::Error),
}

/// Writes straight to a file descriptor, unbuffered, so every byte the
/// guest prints appears at once (also without a newline, in raw mode).
pub struct FdWriter(OwnedFd);

impl Write for FdWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // SAFETY: writing from a valid buffer to an fd we own.
        let n = unsafe { libc::write(self.0.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The writer guest output goes to.
pub fn output(mode: &ConsoleMode) -> Result<Box<dyn Write + Send>, ConsoleError> {
    Ok(match mode {
        ConsoleMode::Stdio => {
            let fd = std::io::stdout()
                .as_fd_owned()
                .map_err(|e| ConsoleError::OpenFile("stdout".into(), e))?;
            Box::new(FdWriter(fd))
        }
        ConsoleMode::None => Box::new(std::io::sink()),
        ConsoleMode::File(path) => {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| ConsoleError::OpenFile(path.clone(), e))?;
            Box::new(FdWriter(f.into()))
        }
    })
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
