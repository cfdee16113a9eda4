//! kiln's stdin on its way to the command, flow-controlled: at most
//! [`STDIN_WINDOW`] bytes are sent and not yet credited by the agent, so
//! a command that never reads (`yes | kiln run -- sleep 100`) cannot make
//! the guest agent pile up input until the guest runs out of memory.

use std::io::{self, Read, Write};
use std::sync::{Condvar, Mutex};

use kiln_proto::{kind, FrameBuf, STDIN_WINDOW};

/// The most one STDIN frame carries.
const CHUNK: usize = 64 * 1024;

/// The bytes the agent still accepts, shared by the thread that sends
/// input (it takes) and the one that reads the agent's frames (it gives).
#[derive(Debug)]
pub struct Window {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug)]
struct State {
    /// Bytes that may be sent now.
    open: u32,
    /// The session is over: nothing more is sent.
    closed: bool,
}

impl Default for Window {
    /// A window of [`STDIN_WINDOW`] bytes, all open.
    fn default() -> Window {
        Window {
            state: Mutex::new(State {
                open: STDIN_WINDOW,
                closed: false,
            }),
            changed: Condvar::new(),
        }
    }
}

impl Window {
    /// Waits until `n` bytes (at most the window's size) may be sent and
    /// takes them; false when the session ended first.
    fn take(&self, n: u32) -> bool {
        let mut s = self.state.lock().expect("stdin window");
        while !s.closed && s.open < n {
            s = self.changed.wait(s).expect("stdin window");
        }
        if s.closed {
            return false;
        }
        s.open -= n;
        true
    }

    /// The agent passed `n` more bytes on. An agent cannot open the window
    /// wider than its size by crediting what it never got.
    pub fn give(&self, n: u32) {
        let mut s = self.state.lock().expect("stdin window");
        s.open = s.open.saturating_add(n).min(STDIN_WINDOW);
        self.changed.notify_all();
    }

    /// The session is over: a sender waiting for room gives up.
    pub fn close(&self) {
        self.state.lock().expect("stdin window").closed = true;
        self.changed.notify_all();
    }
}

/// Closes the window when dropped: whichever way a session ends, the
/// thread sending input stops.
pub struct CloseOnDrop<'a>(pub &'a Window);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Copies `input` to the agent as STDIN frames through `to` (the one
/// writer of the connection), each sent only when `window` has room for
/// it; the end of input becomes the empty STDIN frame. Returns when input
/// ends, the connection breaks or the session is over.
pub fn forward<W: Write>(mut input: impl Read, to: &Mutex<W>, window: &Window) {
    let mut buf = FrameBuf::new(kind::STDIN, CHUNK);
    loop {
        let n = match input.read(buf.payload()) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if !window.take(n as u32) {
            return;
        }
        if to
            .lock()
            .expect("agent writer")
            .write_all(buf.frame(n))
            .is_err()
        {
            return;
        }
    }
    let _ = to.lock().expect("agent writer").write_all(buf.frame(0));
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use kiln_proto::{read_msg, Msg};

    use super::*;

    /// Endless input that counts what was read from it.
    struct Endless(Arc<std::sync::atomic::AtomicU64>);

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            buf.fill(b'y');
            self.0
                .fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(buf.len())
        }
    }

    fn stdin_bytes(frames: &[u8]) -> (usize, usize, bool) {
        let (mut r, mut bytes, mut count, mut ended) = (frames, 0, 0, false);
        while let Some(msg) = read_msg(&mut r).unwrap() {
            match msg {
                Msg::Stdin(d) if d.is_empty() => ended = true,
                Msg::Stdin(d) => {
                    bytes += d.len();
                    count += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        (bytes, count, ended)
    }

    #[test]
    fn input_goes_as_stdin_frames_and_ends_with_an_empty_one() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let out = Mutex::new(Vec::new());
        forward(&data[..], &out, &Window::default());
        let frames = out.into_inner().unwrap();
        let (bytes, count, ended) = stdin_bytes(&frames);
        assert_eq!((bytes, count, ended), (data.len(), 4, true));
    }

    #[test]
    fn without_credit_no_more_than_the_window_is_sent() {
        let read = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let out = Arc::new(Mutex::new(Vec::new()));
        let window = Arc::new(Window::default());
        let sender = {
            let (read, out, window) = (read.clone(), out.clone(), window.clone());
            std::thread::spawn(move || forward(Endless(read), &*out, &window))
        };
        std::thread::sleep(Duration::from_millis(300));
        let sent = stdin_bytes(&out.lock().unwrap()).0;
        assert_eq!(sent, STDIN_WINDOW as usize, "a full window, then it waits");
        let taken = read.load(std::sync::atomic::Ordering::Relaxed);
        assert!(taken <= (STDIN_WINDOW as usize + CHUNK) as u64, "{taken}");
        // Credit for one chunk lets exactly one more chunk through.
        window.give(CHUNK as u32);
        std::thread::sleep(Duration::from_millis(300));
        let sent = stdin_bytes(&out.lock().unwrap()).0;
        assert_eq!(sent, STDIN_WINDOW as usize + CHUNK);
        // The end of the session frees the waiting sender.
        window.close();
        sender.join().unwrap();
    }

    #[test]
    fn credit_beyond_what_was_sent_does_not_widen_the_window() {
        let window = Window::default();
        window.give(u32::MAX);
        assert!(window.take(STDIN_WINDOW));
        let s = window.state.lock().unwrap();
        assert_eq!(s.open, 0);
    }
}
