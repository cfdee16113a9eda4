//! A pseudo-terminal that stands in for a user's terminal, for tests of
//! what kiln does to the terminal it runs on (raw mode, `-t`, signals).

#![allow(dead_code)]

use std::time::Duration;

/// The side of a pseudo-terminal that stands in for a user's terminal.
pub struct UserTerminal {
    master: std::fs::File,
    terminal: std::os::fd::OwnedFd,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl UserTerminal {
    pub fn open(rows: u16, cols: u16) -> UserTerminal {
        use std::os::fd::{AsRawFd, FromRawFd};
        let (mut master, mut terminal) = (-1, -1);
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty(3) writes two fds into the locals; name and
        // termios may be null, `ws` is a valid winsize.
        let r = unsafe {
            libc::openpty(
                &mut master,
                &mut terminal,
                std::ptr::null_mut(),
                std::ptr::null(),
                &ws,
            )
        };
        assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: openpty succeeded; both fds are ours alone.
        let (master, terminal) = unsafe {
            (
                std::fs::File::from_raw_fd(master),
                std::os::fd::OwnedFd::from_raw_fd(terminal),
            )
        };
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut reading = master.try_clone().unwrap();
        let (into, done) = (seen.clone(), stop.clone());
        let reader = std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let mut pfd = libc::pollfd {
                    fd: reading.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: poll(2) on one valid pollfd.
                if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
                    continue;
                }
                match reading.read(&mut buf) {
                    Ok(n) if n > 0 => into.lock().unwrap().extend_from_slice(&buf[..n]),
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        UserTerminal {
            master,
            terminal,
            seen,
            stop,
            reader: Some(reader),
        }
    }

    pub fn stdio(&self) -> std::process::Stdio {
        self.terminal.try_clone().unwrap().into()
    }

    pub fn termios(&self) -> libc::termios {
        use std::os::fd::AsRawFd;
        // SAFETY: zero is a valid termios; tcgetattr fills it.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        assert_eq!(
            // SAFETY: a terminal fd and a valid pointer.
            unsafe { libc::tcgetattr(self.terminal.as_raw_fd(), &mut t) },
            0
        );
        t
    }

    pub fn resize(&self, rows: u16, cols: u16) {
        use std::os::fd::AsRawFd;
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        assert_eq!(
            // SAFETY: TIOCSWINSZ reads a valid winsize.
            unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) },
            0
        );
    }

    pub fn type_keys(&mut self, keys: &[u8]) {
        use std::io::Write;
        self.master.write_all(keys).unwrap();
    }

    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }

    /// Waits until what was shown after byte `from` contains `pattern`.
    pub fn wait_for(&self, from: usize, pattern: &str, timeout: Duration) -> bool {
        let t0 = std::time::Instant::now();
        while t0.elapsed() < timeout {
            if self
                .screen()
                .get(from..)
                .is_some_and(|s| s.contains(pattern))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for UserTerminal {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// A child process killed if the test ends before it does.
pub struct KillOnDrop(pub std::process::Child);

impl KillOnDrop {
    /// Its exit code, once it exits within `timeout` (killed otherwise).
    pub fn wait_for(&mut self, timeout: Duration) -> Option<i32> {
        let t0 = std::time::Instant::now();
        loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                return s.code();
            }
            if t0.elapsed() > timeout {
                let _ = self.0.kill();
                panic!("kiln did not finish within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
