//! One sandbox session over a connected channel (vsock in the guest, a
//! socket pair in the unit tests): say HELLO, unpack the files the host
//! copies in, take EXEC, run the command with its stdin, stdout and stderr
//! on pipes, stream them, forward signals, report how it ended, send back
//! the files the host asks for. See the kiln-proto crate for the frames.

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::command;
use crate::pty::{self, Pty};
use kiln_proto::copy::{pack, staging_parent, unpack, TarReader, TarWriter};
use kiln_proto::{kind, read_msg, write_msg, ExitStatus, FrameBuf, Msg, Setup, VERSION};

/// The most one output frame carries: a full pipe (Linux's default size).
const PUMP_CHUNK: usize = 64 * 1024;
/// The buffer in front of the connection's reading side.
const READ_BUF: usize = 256 * 1024;

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
    /// After EXITED, how long to wait for the host's next request (a
    /// COPY_OUT) or for it to close the connection.
    pub goodbye: Duration,
    /// Apply SETUP to the machine (clock, RNG, hostname, machine id):
    /// only as PID 1 of a guest.
    pub apply_setup: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            reap_all: false,
            drain: Duration::from_secs(2),
            workdir: "/",
            watch_oom: false,
            goodbye: Duration::from_secs(5),
            apply_setup: false,
        }
    }
}

/// Makes this guest the sandbox SETUP describes: sets the wall clock (a
/// guest restored from a snapshot wakes with its snapshot's time), mixes
/// the entropy into the kernel's RNG and reseeds it (clones of one
/// snapshot start with the same RNG state), and takes the hostname and
/// machine id. Failures are reported, not fatal: the command still runs.
fn apply_setup(s: &Setup) {
    if let Err(e) = crate::sys::set_clock(s.time_ns) {
        eprintln!("kiln-agent: cannot set the clock: {e}");
    }
    if let Err(e) = crate::sys::add_entropy(&s.entropy) {
        eprintln!("kiln-agent: cannot reseed the RNG: {e}");
    }
    if let Err(e) = std::fs::write("/proc/sys/kernel/hostname", &s.hostname) {
        eprintln!("kiln-agent: cannot set the hostname: {e}");
    }
    if Path::new("/etc").is_dir() {
        let mut id = s.machine_id.to_ascii_lowercase();
        id.push(b'\n');
        if let Err(e) = std::fs::write("/etc/machine-id", id) {
            eprintln!("kiln-agent: cannot write /etc/machine-id: {e}");
        }
    }
}

/// Serves one session; returns how the command ended.
pub fn serve<C: Channel>(conn: C, opts: &Options) -> io::Result<ExitStatus> {
    // Buffered: one read(2) takes what the guest kernel has queued (each
    // vsock packet it receives is at most 4 KiB), instead of a header and
    // a payload read per frame; a system call is dear when the guest
    // kernel is emulated (nested kvm_pvm hosts).
    let mut reader = io::BufReader::with_capacity(READ_BUF, conn.try_clone()?);
    let writer = Arc::new(Mutex::new(conn));
    send(&writer, &Msg::Hello { version: VERSION })?;
    let exec = loop {
        // The connection may break here when this guest is a copy restored
        // from a snapshot taken while the agent waited: the caller then
        // connects again (ConnectionReset).
        let msg = read_msg(&mut reader).map_err(|e| match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected => io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("the host went away before sending a command ({e})"),
            ),
            _ => e,
        })?;
        match msg {
            Some(Msg::Exec(e)) => break e,
            Some(Msg::Setup(setup)) => {
                if opts.apply_setup {
                    apply_setup(&setup);
                }
            }
            Some(Msg::CopyIn(path)) => {
                let result = copy_in(&mut reader, &path)?;
                send(&writer, &Msg::Done(result.err()))?;
            }
            Some(other) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("expected EXEC, got frame type {:#04x}", other.kind()),
                ))
            }
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "the host closed the connection before sending a command",
                ))
            }
        }
    };
    // Frames from the host from now on: input for the command's stdin
    // (written by a thread of its own, so a command that does not read
    // cannot block signals), signals for the command once it runs, and
    // the rest (COPY_OUT after the command) in `requests`.
    let (in_tx, in_rx) = mpsc::channel::<Vec<u8>>();
    let (request_tx, requests) = mpsc::channel::<Msg>();
    let command_pid = Arc::new(AtomicI32::new(0));
    let terminal: Arc<Mutex<Terminal>> = Arc::default();
    {
        let command_pid = command_pid.clone();
        let terminal = terminal.clone();
        crate::workers::spawn(move || {
            while let Ok(Some(msg)) = read_msg(&mut reader) {
                match msg {
                    Msg::Stdin(data) => {
                        let _ = in_tx.send(data);
                    }
                    Msg::Signal(sig) => {
                        let pid = command_pid.load(Ordering::Acquire);
                        if pid > 0 {
                            // SAFETY: kill(2) on the command's pid; no memory involved.
                            unsafe { libc::kill(pid, sig) };
                        }
                    }
                    Msg::Resize(size) => terminal.lock().expect("terminal").resize(size),
                    other => {
                        let _ = request_tx.send(other);
                    }
                }
            }
        });
    }
    let status = run(&exec, opts, &writer, in_rx, &command_pid, &terminal)?;
    send(&writer, &Msg::Exited(status))?;
    // Requests for files until the host closes the connection or goes
    // quiet (then the guest may power off).
    while let Ok(msg) = requests.recv_timeout(opts.goodbye) {
        if let Msg::CopyOut(path) = msg {
            copy_out(&writer, &path)?;
        }
    }
    Ok(status)
}

/// The command's terminal, for RESIZE frames: its master once it is
/// open, else the size that arrived before it was.
#[derive(Default)]
pub struct Terminal {
    master: Option<std::fs::File>,
    pending: Option<kiln_proto::WinSize>,
}

impl Terminal {
    fn resize(&mut self, size: kiln_proto::WinSize) {
        match &self.master {
            Some(m) => {
                let _ = pty::resize(m, size);
            }
            None => self.pending = Some(size),
        }
    }

    fn attach(&mut self, master: std::fs::File) {
        if let Some(size) = self.pending.take() {
            let _ = pty::resize(&master, size);
        }
        self.master = Some(master);
    }
}

/// Runs the command with `input` on its stdin and its output streamed;
/// returns how it ended.
fn run<C: Channel>(
    exec: &kiln_proto::Exec,
    opts: &Options,
    writer: &Arc<Mutex<C>>,
    input: mpsc::Receiver<Vec<u8>>,
    command_pid: &AtomicI32,
    terminal: &Mutex<Terminal>,
) -> io::Result<ExitStatus> {
    let mut oom = opts.watch_oom.then(crate::sys::OomWatch::start);
    let pty = match exec.tty.map(Pty::open).transpose() {
        Ok(p) => p,
        Err(e) => {
            send(
                writer,
                &Msg::Failed(format!("cannot open a pseudo-terminal: {e}")),
            )?;
            return Ok(ExitStatus::Code(126));
        }
    };
    let mut child = match command::spawn(exec, opts, pty.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            let name = String::from_utf8_lossy(&exec.argv[0]).into_owned();
            send(writer, &Msg::Failed(format!("{name}: {e}")))?;
            // As a shell: 127 when there is no such program, else 126.
            let code = if e.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            return Ok(ExitStatus::Code(code));
        }
    };
    command_pid.store(child.id() as i32, Ordering::Release);

    // Output pumps: each says when its stream has closed. On a terminal
    // there is one stream, and the end of input is not passed on (closing
    // the terminal would hang it up; ^D is how a terminal ends input).
    let (done_tx, done_rx) = mpsc::channel();
    let tty = pty.is_some();
    let (streams, stdin): (usize, Box<dyn Write + Send>) = match pty {
        Some(pty) => {
            let master = pty.release_terminal();
            terminal
                .lock()
                .expect("terminal")
                .attach(master.try_clone()?);
            pump(master.try_clone()?, writer.clone(), kind::STDOUT, done_tx);
            (1, Box::new(master))
        }
        None => {
            let stdout = child.stdout.take().expect("piped");
            let stderr = child.stderr.take().expect("piped");
            pump(stdout, writer.clone(), kind::STDOUT, done_tx.clone());
            pump(stderr, writer.clone(), kind::STDERR, done_tx);
            (2, Box::new(child.stdin.take().expect("piped")))
        }
    };
    // Input: each piece is credited once the command has it (or once it
    // is dropped because the command's stdin is closed), so the host
    // never has more than a window of it queued here.
    let credit = writer.clone();
    crate::workers::spawn(move || {
        let mut stdin = Some(stdin);
        for data in input {
            if let Some(s) = stdin.as_mut() {
                if (data.is_empty() && !tty) || s.write_all(&data).is_err() {
                    stdin = None; // end of input, or the command closed it
                }
            }
            if !data.is_empty() && send(&credit, &Msg::Credit(data.len() as u32)).is_err() {
                return;
            }
        }
    });

    let mut status = command::wait(&mut child, opts.reap_all)?;
    command_pid.store(0, Ordering::Release);
    terminal.lock().expect("terminal").master = None;
    if matches!(
        status,
        ExitStatus::Signal(libc::SIGKILL) | ExitStatus::Code(137)
    ) && oom.as_mut().is_some_and(|w| w.fired())
    {
        status = ExitStatus::OomKilled(status.shell_code());
    }
    // Let the output drain, but not forever.
    for _ in 0..streams {
        if done_rx.recv_timeout(opts.drain).is_err() {
            break;
        }
    }
    Ok(status)
}

fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// Unpacks the TAR frames that follow COPY_IN at guest path `dest` (an
/// absolute path; missing parents are made). The outer error is the
/// connection's, the inner one what DONE reports.
fn copy_in(reader: &mut impl Read, dest: &[u8]) -> io::Result<Result<(), String>> {
    let path = Path::new(OsStr::from_bytes(dest));
    let mut tar = TarReader::new(|| read_msg(reader));
    let result = if path.is_absolute() {
        let parent = staging_parent(path);
        std::fs::create_dir_all(&parent)
            .and_then(|()| unpack(&mut tar, &parent, true))
            .and_then(|staged| staged.commit(path, true))
            .map(drop)
            .map_err(|e| format!("{}: {e}", show(dest)))
    } else {
        Err(format!("{}: not an absolute path", show(dest)))
    };
    tar.drain()?;
    Ok(result)
}

/// Sends guest path `path` back as TAR frames and DONE.
fn copy_out<C: Write>(writer: &Mutex<C>, path: &[u8]) -> io::Result<()> {
    let mut tar = TarWriter::new(|m| send(writer, &m));
    let packed = pack(Path::new(OsStr::from_bytes(path)), &mut tar);
    tar.finish()?;
    send(
        writer,
        &Msg::Done(packed.err().map(|e| format!("{}: {e}", show(path)))),
    )
}

fn send<C: Write>(w: &Mutex<C>, msg: &Msg) -> io::Result<()> {
    let mut w = w.lock().expect("writer lock");
    write_msg(&mut *w, msg)?;
    w.flush()
}

/// Copies one output stream into frames of type `kind`; an empty frame
/// marks its end. Each frame is read straight into one reused buffer
/// behind room for its header and goes out in one write(2)
/// ([`FrameBuf`]): no allocation or copy per frame.
fn pump<R: Read + Send + 'static, C: Channel>(
    mut from: R,
    to: Arc<Mutex<C>>,
    kind: u8,
    done: mpsc::Sender<()>,
) {
    crate::workers::spawn(move || {
        let mut buf = FrameBuf::new(kind, PUMP_CHUNK);
        loop {
            let n = match from.read(buf.payload()) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut w = to.lock().expect("writer lock");
            if w.write_all(buf.frame(n)).is_err() {
                return;
            }
        }
        // The end of the stream: an empty frame.
        {
            let mut w = to.lock().expect("writer lock");
            let _ = w.write_all(buf.frame(0)).and_then(|()| w.flush());
        }
        let _ = done.send(());
    });
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::thread;

    use std::os::unix::ffi::OsStrExt;

    use kiln_proto::{write_data, Exec};

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
            tty: None,
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
        drop(host); // the host is done: the agent stops waiting
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
        let credited: u32 = msgs
            .iter()
            .map(|m| if let Msg::Credit(n) = m { *n } else { 0 })
            .sum();
        assert_eq!(credited as usize, input.len(), "every byte credited");
    }

    /// Input is credited only as the command takes it: a command asleep
    /// holds up the credit (the host then stops sending), and what it
    /// never read is credited once it has ended.
    #[test]
    fn input_is_credited_as_the_command_takes_it() {
        const PIECE: usize = 64 * 1024;
        let (agent, mut host) = UnixStream::pair().unwrap();
        let server = thread::spawn(move || serve(agent, &Options::default()));
        read_msg(&mut host).unwrap();
        let script = "sleep 0.5; echo woke; sleep 0.5";
        let exec = Exec {
            argv: vec![b"sh".to_vec(), b"-c".to_vec(), script.as_bytes().to_vec()],
            env: vec![b"PATH=/bin:/usr/bin".to_vec()],
            workdir: None,
            tty: None,
        };
        write_msg(&mut host, &Msg::Exec(exec)).unwrap();
        for _ in 0..8 {
            write_msg(&mut host, &Msg::Stdin(vec![b'y'; PIECE])).unwrap();
        }
        write_msg(&mut host, &Msg::Stdin(Vec::new())).unwrap();
        let (mut credited, mut before_woke, mut exited) = (0usize, None, false);
        while credited < 8 * PIECE || !exited {
            match read_msg(&mut host).unwrap().unwrap() {
                Msg::Credit(n) => credited += n as usize,
                Msg::Stdout(d) if d == b"woke\n" => before_woke = Some(credited),
                Msg::Exited(s) => {
                    assert_eq!(s, ExitStatus::Code(0));
                    exited = true;
                }
                _ => {}
            }
        }
        // A pipe holds 64 KiB: at most that much went to the sleeper.
        let before_woke = before_woke.expect("the command's output");
        assert!(before_woke <= PIECE, "{before_woke} bytes credited early");
        assert_eq!(credited, 8 * PIECE, "the rest credited once it ended");
        drop(host);
        server.join().unwrap().unwrap();
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
            tty: None,
        };
        write_msg(&mut host, &Msg::Exec(exec)).unwrap();
        thread::sleep(Duration::from_millis(100));
        write_msg(&mut host, &Msg::Signal(libc::SIGTERM)).unwrap();
        while !matches!(read_msg(&mut host).unwrap(), Some(Msg::Exited(_))) {}
        drop(host);
        let status = server.join().unwrap().unwrap();
        assert_eq!(status, ExitStatus::Signal(libc::SIGTERM));
        assert_eq!(status.shell_code(), 143);
    }

    /// Sends `path` as COPY_IN to `dest` and returns the agent's DONE.
    fn copy_in(host: &mut UnixStream, path: &Path, dest: &[u8]) -> Option<String> {
        write_msg(host, &Msg::CopyIn(dest.to_vec())).unwrap();
        let mut tar = TarWriter::new(|m| write_msg(host, &m));
        pack(path, &mut tar).unwrap();
        tar.finish().unwrap();
        match read_msg(host).unwrap() {
            Some(Msg::Done(why)) => why,
            other => panic!("expected DONE, got {other:?}"),
        }
    }

    #[test]
    fn files_copied_in_are_there_for_the_command_and_copied_out_after() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("in");
        std::fs::create_dir_all(src.join("empty")).unwrap();
        std::fs::write(src.join("data"), b"copied in\n").unwrap();
        let guest = d.path().join("guest");
        let guest_in = guest.join("deep/in");
        let (agent, mut host) = UnixStream::pair().unwrap();
        let opts = Options {
            goodbye: Duration::from_secs(30),
            ..Default::default()
        };
        let server = thread::spawn(move || serve(agent, &opts));
        read_msg(&mut host).unwrap();
        // Parents are made; a relative destination is refused and the
        // session goes on.
        assert_eq!(
            copy_in(&mut host, &src, guest_in.as_os_str().as_bytes()),
            None
        );
        let why = copy_in(&mut host, &src, b"relative/path").unwrap();
        assert!(why.contains("not an absolute path"), "{why}");
        let script = "cat in/data && test -d in/empty && mkdir out && echo made >out/file";
        let exec = Exec {
            argv: vec![b"sh".to_vec(), b"-c".to_vec(), script.as_bytes().to_vec()],
            env: vec![b"PATH=/bin:/usr/bin".to_vec()],
            workdir: Some(guest.join("deep").as_os_str().as_bytes().to_vec()),
            tty: None,
        };
        write_msg(&mut host, &Msg::Exec(exec)).unwrap();
        write_msg(&mut host, &Msg::Stdin(Vec::new())).unwrap();
        let mut out = Vec::new();
        loop {
            match read_msg(&mut host).unwrap().unwrap() {
                Msg::Stdout(d) => out.extend(d),
                Msg::Exited(s) => {
                    assert_eq!(s, ExitStatus::Code(0));
                    break;
                }
                _ => {}
            }
        }
        assert_eq!(out, b"copied in\n");
        // Copy-out: the tree the command made, then a path that is not there.
        let back = d.path().join("back");
        for (path, ok) in [(guest.join("deep/out"), true), (guest.join("nope"), false)] {
            write_msg(
                &mut host,
                &Msg::CopyOut(path.as_os_str().as_bytes().to_vec()),
            )
            .unwrap();
            let mut reader = host.try_clone().unwrap();
            let mut tar = TarReader::new(|| read_msg(&mut reader));
            let staged = unpack(&mut tar, d.path(), false);
            tar.drain().unwrap();
            let done = read_msg(&mut host).unwrap();
            if ok {
                assert_eq!(done, Some(Msg::Done(None)));
                staged.unwrap().commit(&back, false).unwrap();
            } else {
                assert!(
                    matches!(done, Some(Msg::Done(Some(ref why))) if why.contains("nope")),
                    "{done:?}"
                );
            }
        }
        assert_eq!(std::fs::read(back.join("file")).unwrap(), b"made\n");
        drop(host);
        assert_eq!(server.join().unwrap().unwrap(), ExitStatus::Code(0));
    }

    #[test]
    fn a_command_on_a_terminal_sees_its_size_input_and_resizes() {
        let (agent, mut host) = UnixStream::pair().unwrap();
        let server = thread::spawn(move || serve(agent, &Options::default()));
        read_msg(&mut host).unwrap();
        let script = "stty size; tty; read x; echo \"got $x\"; stty size; exit 4";
        let exec = Exec {
            argv: vec![b"sh".to_vec(), b"-c".to_vec(), script.as_bytes().to_vec()],
            env: vec![b"PATH=/bin:/usr/bin".to_vec()],
            workdir: None,
            tty: Some(kiln_proto::WinSize {
                rows: 33,
                cols: 101,
            }),
        };
        write_msg(&mut host, &Msg::Exec(exec)).unwrap();
        // The end of input is not passed on to a terminal.
        write_msg(&mut host, &Msg::Stdin(Vec::new())).unwrap();
        let (mut out, mut errors, mut sent, mut credited) = (Vec::new(), 0, false, 0);
        let status = loop {
            match read_msg(&mut host).unwrap().unwrap() {
                Msg::Stdout(d) => {
                    out.extend(d);
                    // Once it reads: a resize, then the line.
                    if !sent && String::from_utf8_lossy(&out).contains("/dev/pts/") {
                        let size = kiln_proto::WinSize {
                            rows: 40,
                            cols: 120,
                        };
                        write_msg(&mut host, &Msg::Resize(size)).unwrap();
                        write_msg(&mut host, &Msg::Stdin(b"hello\n".to_vec())).unwrap();
                        sent = true;
                    }
                }
                Msg::Stderr(_) => errors += 1,
                Msg::Credit(n) => credited += n,
                Msg::Exited(s) => break s,
                other => panic!("{other:?}"),
            }
        };
        drop(host);
        let out = String::from_utf8_lossy(&out).into_owned();
        assert_eq!(status, ExitStatus::Code(4));
        assert!(out.starts_with("33 101\r\n/dev/pts/"), "{out:?}");
        assert!(out.ends_with("hello\r\ngot hello\r\n40 120\r\n"), "{out:?}");
        assert_eq!(errors, 0, "a terminal has one output stream");
        assert_eq!(credited, 6, "the line was credited");
        server.join().unwrap().unwrap();
    }
}
