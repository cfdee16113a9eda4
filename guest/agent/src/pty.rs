//! A pseudo-terminal for a command run with a tty (`kiln run -t`): the
//! command gets the terminal side as its controlling terminal and stdin,
//! stdout and stderr; the agent keeps the other side.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use kiln_proto::WinSize;

/// The agent's side of a pseudo-terminal.
pub struct Pty {
    /// Read for the command's output, written with its input.
    pub master: File,
    terminal: OwnedFd,
}

impl Pty {
    /// Opens a pseudo-terminal of `size`.
    pub fn open(size: WinSize) -> io::Result<Pty> {
        let (mut master, mut terminal) = (-1, -1);
        let ws = winsize(size);
        // SAFETY: openpty(3) writes two fds into the locals; the name and
        // termios pointers may be null, `ws` is a valid winsize.
        let r = unsafe {
            libc::openpty(
                &mut master,
                &mut terminal,
                std::ptr::null_mut(),
                std::ptr::null(),
                &ws,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: openpty succeeded: both fds are open and ours alone.
        let (master, terminal) =
            unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(terminal)) };
        Ok(Pty { master, terminal })
    }

    /// Makes `cmd` run on the terminal: in a new session whose
    /// controlling terminal it is, with it as stdin, stdout and stderr.
    pub fn attach(&self, cmd: &mut Command) -> io::Result<()> {
        let fd = || self.terminal.try_clone().map(Stdio::from);
        cmd.stdin(fd()?).stdout(fd()?).stderr(fd()?);
        // SAFETY: only async-signal-safe calls (setsid, ioctl) between
        // fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// Closes the agent's copy of the terminal side (after the command
    /// started), so the master reads EOF (EIO) once the command's are gone.
    pub fn release_terminal(self) -> File {
        self.master
    }
}

fn winsize(size: WinSize) -> libc::winsize {
    libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Sets the size of the terminal whose master is `master` (the command
/// gets SIGWINCH).
pub fn resize(master: &File, size: WinSize) -> io::Result<()> {
    let ws = winsize(size);
    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
