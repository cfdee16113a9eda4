//! One sandbox session over a connected channel (vsock in the guest, a
//! socket pair in the unit tests): say HELLO, take EXEC, run the command
//! with its stdin, stdout and stderr on pipes, stream them, forward
//! signals, report how it ended. See the kiln-proto crate for the frames.

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use kiln_proto::{read_msg, write_data, write_msg, ExitStatus, Msg, VERSION};

/// A byte stream that can be split into a reading and a writing half.
pub trait Channel: Read + Write + Send + Sized + 'static {
    /// A second handle on the same stream.
    fn try_clone(&self) -> io::Result<Self>;
}

impl Channel for std::fs::File {
    fn try_clone(&self) -> io::Result<Self> {
        std::fs::File::try_clone(self)
    }
}

impl Channel for std::os::unix::net::UnixStream {
    fn try_clone(&self) -> io::Result<Self> {
        std::os::unix::net::UnixStream::try_clone(self)
    }
}

/// How the session behaves.
#[derive(Clone, Debug)]
pub struct Options {
    /// Reap every child that ends (the agent is PID 1 and inherits
    /// orphans), not only the command.
    pub reap_all: bool,
    /// How long to wait for the command's output to close after it
    /// exited (a background process may hold it open).
    pub drain: Duration,
    /// Working directory when EXEC names none.
    pub workdir: &'static str,
    /// Tell an out-of-memory kill apart (reads the kernel log).
    pub watch_oom: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            reap_all: false,
            drain: Duration::from_secs(2),
            workdir: "/",
            watch_oom: false,
        }
    }
}

/// Serves one session; returns how the command ended.
pub fn serve<C: Channel>(conn: C, opts: &Options) -> io::Result<ExitStatus> {
    let mut reader = conn.try_clone()?;
    let writer = Arc::new(Mutex::new(conn));
    send(&writer, &Msg::Hello { version: VERSION })?;
    let exec = match read_msg(&mut reader)? {
        Some(Msg::Exec(e)) => e,
        Some(other) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("expected EXEC, got frame type {:#04x}", other.kind()),
            ))
        }
        None => return Err(io::ErrorKind::UnexpectedEof.into()),
    };
    let mut oom = opts.watch_oom.then(crate::sys::OomWatch::start);
    let mut child = match spawn(&exec, opts) {
        Ok(c) => c,
        Err(e) => {
            let name = String::from_utf8_lossy(&exec.argv[0]).into_owned();
            send(&writer, &Msg::Failed(format!("{name}: {e}")))?;
            // As a shell: 127 when there is no such program, else 126.
            let code = if e.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            let status = ExitStatus::Code(code);
            send(&writer, &Msg::Exited(status))?;
            return Ok(status);
        }
    };
    let pid = child.id() as i32;

    // Output pumps: each says when its stream has closed.
    let (done_tx, done_rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    pump(stdout, writer.clone(), Msg::Stdout, done_tx.clone());
    pump(stderr, writer.clone(), Msg::Stderr, done_tx);

    // Input: frames from the host; stdin is written by a thread of its
    // own so a command that does not read cannot block signals.
    let stdin = child.stdin.take().expect("piped");
    let (in_tx, in_rx) = mpsc::channel::<Vec<u8>>();
    thread::spawn(move || {
        let mut stdin = Some(stdin);
        for data in in_rx {
            let Some(s) = stdin.as_mut() else { continue };
            if data.is_empty() || s.write_all(&data).is_err() {
                stdin = None; // end of input, or the command closed it
            }
        }
    });
    thread::spawn(move || {
        while let Ok(Some(msg)) = read_msg(&mut reader) {
            match msg {
                Msg::Stdin(data) => {
                    let _ = in_tx.send(data);
                }
                // SAFETY: kill(2) on the command's pid; no memory involved.
                Msg::Signal(sig) => unsafe {
                    libc::kill(pid, sig);
                },
                _ => {}
            }
        }
    });

    let mut status = wait(&mut child, opts.reap_all)?;
    if matches!(
        status,
        ExitStatus::Signal(libc::SIGKILL) | ExitStatus::Code(137)
    ) && oom.as_mut().is_some_and(|w| w.fired())
    {
        status = ExitStatus::OomKilled(status.shell_code());
    }
    // Let the output drain, but not forever.
    for _ in 0..2 {
        if done_rx.recv_timeout(opts.drain).is_err() {
            break;
        }
    }
    send(&writer, &Msg::Exited(status))?;
    Ok(status)
}

fn send<C: Write>(w: &Mutex<C>, msg: &Msg) -> io::Result<()> {
    let mut w = w.lock().expect("writer lock");
    write_msg(&mut *w, msg)?;
    w.flush()
}

fn spawn(exec: &kiln_proto::Exec, opts: &Options) -> io::Result<Child> {
    let mut cmd = Command::new(OsStr::from_bytes(&exec.argv[0]));
    cmd.args(exec.argv[1..].iter().map(|a| OsStr::from_bytes(a)))
        .env_clear()
        .current_dir(
            exec.workdir
                .as_deref()
                .map_or(OsStr::new(opts.workdir), OsStr::from_bytes),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for kv in &exec.env {
        let (k, v) = match kv.iter().position(|&b| b == b'=') {
            Some(i) => (&kv[..i], &kv[i + 1..]),
            None => (&kv[..], &b""[..]),
        };
        cmd.env(OsStr::from_bytes(k), OsStr::from_bytes(v));
    }
    cmd.spawn()
}

/// Copies one output stream into frames; an empty frame marks its end.
fn pump<R: Read + Send + 'static, C: Channel>(
    mut from: R,
    to: Arc<Mutex<C>>,
    make: fn(Vec<u8>) -> Msg,
    done: mpsc::Sender<()>,
) {
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut w = to.lock().expect("writer lock");
            if write_data(&mut *w, &buf[..n], make).is_err() {
                return;
            }
        }
        let _ = send(&to, &make(Vec::new()));
        let _ = done.send(());
    });
}

/// Waits for the command; as PID 1 also reaps every orphan meanwhile.
fn wait(child: &mut Child, reap_all: bool) -> io::Result<ExitStatus> {
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
    use std::os::unix::net::UnixStream;

    use kiln_proto::Exec;

    use super::*;

    /// Runs a session on one end of a socket pair; the test is the host.
    fn session(argv: &[&[u8]], env: &[&[u8]], stdin: &[u8]) -> (Vec<Msg>, io::Result<ExitStatus>) {
        let (agent, mut host) = UnixStream::pair().unwrap();
        let server = thread::spawn(move || serve(agent, &Options::default()));
        assert_eq!(
            read_msg(&mut host).unwrap(),
            Some(Msg::Hello { version: VERSION })
        );
        let exec = Exec {
            argv: argv.iter().map(|a| a.to_vec()).collect(),
            env: env.iter().map(|a| a.to_vec()).collect(),
            workdir: None,
        };
        write_msg(&mut host, &Msg::Exec(exec)).unwrap();
        write_data(&mut host, stdin, Msg::Stdin).unwrap();
        write_msg(&mut host, &Msg::Stdin(Vec::new())).unwrap();
        let mut msgs = Vec::new();
        while let Some(m) = read_msg(&mut host).unwrap() {
            let last = matches!(m, Msg::Exited(_));
            msgs.push(m);
            if last {
                break;
            }
        }
        (msgs, server.join().unwrap())
    }

    fn stream(msgs: &[Msg], which: fn(&Msg) -> Option<&Vec<u8>>) -> Vec<u8> {
        msgs.iter().filter_map(which).flatten().copied().collect()
    }

    fn out(m: &Msg) -> Option<&Vec<u8>> {
        match m {
            Msg::Stdout(d) => Some(d),
            _ => None,
        }
    }

    fn err(m: &Msg) -> Option<&Vec<u8>> {
        match m {
            Msg::Stderr(d) => Some(d),
            _ => None,
        }
    }

    #[test]
    fn runs_the_command_with_its_arguments_and_environment() {
        let (msgs, status) = session(
            &[
                b"/bin/sh",
                b"-c",
                b"printf '%s|' \"$@\"; echo \"$X\" >&2; exit 7",
                b"sh",
                b"a b",
                b"",
                b"$HOME",
                b"\xff",
            ],
            &[b"X=y=z", b"PATH=/bin:/usr/bin"],
            b"",
        );
        assert_eq!(status.unwrap(), ExitStatus::Code(7));
        assert_eq!(stream(&msgs, out), b"a b||$HOME|\xff|");
        assert_eq!(stream(&msgs, err), b"y=z\n");
        assert_eq!(msgs.last(), Some(&Msg::Exited(ExitStatus::Code(7))));
        // Both streams were closed (empty frames) before EXITED.
        let ends = msgs
            .iter()
            .filter(|m| matches!(m, Msg::Stdout(d) | Msg::Stderr(d) if d.is_empty()))
            .count();
        assert_eq!(ends, 2);
    }

    #[test]
    fn stdin_reaches_the_command_and_eof_ends_it() {
        let input: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (msgs, status) = session(&[b"cat"], &[b"PATH=/bin:/usr/bin"], &input);
        assert_eq!(status.unwrap(), ExitStatus::Code(0));
        assert_eq!(stream(&msgs, out), input);
    }

    #[test]
    fn a_missing_program_fails_like_a_shell() {
        let (msgs, status) = session(&[b"/no/such/program"], &[], b"");
        assert_eq!(status.unwrap(), ExitStatus::Code(127));
        assert!(matches!(&msgs[0], Msg::Failed(why) if why.starts_with("/no/such/program: ")));
        let (_, status) = session(&[b"/"], &[], b"");
        assert_eq!(status.unwrap(), ExitStatus::Code(126));
    }

    #[test]
    fn a_signal_from_the_host_reaches_the_command() {
        let (agent, mut host) = UnixStream::pair().unwrap();
        let server = thread::spawn(move || serve(agent, &Options::default()));
        read_msg(&mut host).unwrap();
        let exec = Exec {
            argv: vec![b"sleep".to_vec(), b"30".to_vec()],
            env: vec![b"PATH=/bin:/usr/bin".to_vec()],
            workdir: Some(b"/tmp".to_vec()),
        };
        write_msg(&mut host, &Msg::Exec(exec)).unwrap();
        thread::sleep(Duration::from_millis(100));
        write_msg(&mut host, &Msg::Signal(libc::SIGTERM)).unwrap();
        let status = server.join().unwrap().unwrap();
        assert_eq!(status, ExitStatus::Signal(libc::SIGTERM));
        assert_eq!(status.shell_code(), 143);
    }
}
