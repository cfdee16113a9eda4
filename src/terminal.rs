//! Raw mode for the console when stdin is a terminal, restored on every
//! exit path (drop, error, signal).

use std::io::IsTerminal;

/// Restores the terminal settings it replaced when dropped.
pub struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    /// Switches stdin to raw mode if it is a terminal; output keeps its
    /// newline translation (for the serial console).
    pub fn enable() -> Option<RawTerminal> {
        Self::enable_with(true)
    }

    /// As [`RawTerminal::enable`], with output untouched too (for a
    /// command on a guest terminal, which translates newlines itself).
    pub fn enable_full() -> Option<RawTerminal> {
        Self::enable_with(false)
    }

    fn enable_with(keep_newlines: bool) -> Option<RawTerminal> {
        if !std::io::stdin().is_terminal() {
            return None;
        }
        // SAFETY: zero is a valid termios; tcgetattr fills it.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 is open; `saved` is a valid out-pointer.
        if unsafe { libc::tcgetattr(0, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: `raw` is a valid termios.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing so "\n" still returns the carriage.
        if keep_newlines {
            raw.c_oflag |= libc::OPOST | libc::ONLCR;
        }
        // SAFETY: fd 0 is a terminal; `raw` is a valid termios.
        if unsafe { libc::tcsetattr(0, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(RawTerminal { saved })
    }
}

/// The size of the terminal on stdin: (rows, columns).
pub fn window_size() -> Option<(u16, u16)> {
    // SAFETY: zero is a valid winsize; TIOCGWINSZ fills it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a winsize to a valid pointer.
    if unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) } != 0 || ws.ws_row == 0 {
        return None;
    }
    Some((ws.ws_row, ws.ws_col))
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restoring the settings read in `enable` on the same fd.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.saved) };
    }
}
