//! The host side of a sandbox session: waits for the guest agent's
//! connection, sends it the command, copies kiln's stdin to it and its
//! output to kiln's stdout and stderr, and settles the outcome.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_proto::{read_msg, write_msg, Exec, Msg, Setup, WinSize, VERSION};

use super::copy::{fetch_out, send_in, CopyIn, CopyOut, Output};
use super::stdin::{self, CloseOnDrop, Window};
use super::{Outcome, Settle};

/// What the session does: files in, the command, files out.
#[derive(Clone, Debug, Default)]
pub struct Job {
    /// The command.
    pub exec: Exec,
    /// Copied in before it starts, in order.
    pub copy_in: Vec<CopyIn>,
    /// Copied out after it ends, in order.
    pub copy_out: Vec<CopyOut>,
}

impl From<Exec> for Job {
    fn from(exec: Exec) -> Job {
        Job {
            exec,
            ..Job::default()
        }
    }
}

/// A sandbox's own clock, entropy and names ([`Msg::Setup`]): the host's
/// time now, 64 bytes from the host's RNG, hostname `kiln-` and 8 random
/// hex digits, a random machine id. No two sandboxes share them, also
/// when they are clones of one snapshot.
pub fn new_identity() -> Setup {
    let mut random = [0u8; 64 + 4 + 16];
    fill_random(&mut random);
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let time_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    Setup {
        time_ns,
        entropy: random[..64].to_vec(),
        hostname: format!("kiln-{}", hex(&random[64..68])).into_bytes(),
        machine_id: hex(&random[68..]).into_bytes(),
    }
}

/// Fills `buf` from the kernel's RNG (getrandom(2)).
fn fill_random(buf: &mut [u8]) {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: writes at most the rest of `buf`, which it points into.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n > 0 {
            done += n as usize;
        }
    }
}

/// How long the agent may take from connecting to saying HELLO.
const HELLO_WAIT: Duration = Duration::from_secs(30);

/// Where the command's input comes from and its output goes: kiln's own
/// stdin, stdout and stderr, or buffers in tests.
pub struct Stdio {
    /// Read by a thread of its own and sent to the command.
    pub input: Box<dyn Read + Send>,
    /// The command's stdout.
    pub output: Box<dyn Write + Send>,
    /// The command's stderr.
    pub errors: Box<dyn Write + Send>,
}

impl Stdio {
    /// kiln's stdin, stdout and stderr.
    pub fn inherit() -> Stdio {
        Stdio {
            input: Box::new(io::stdin()),
            output: Box::new(io::stdout()),
            errors: Box::new(io::stderr()),
        }
    }
}

/// Called once the agent has said HELLO and waits for its first request:
/// the moment a template snapshot of the guest is taken.
pub type AfterHello = Box<dyn FnOnce() + Send>;

/// Runs the session; every way it can end settles an outcome.
pub fn serve(
    listener: UnixListener,
    job: Job,
    agent_wait: Duration,
    settle: Settle,
    stdio: Stdio,
    after_hello: Option<AfterHello>,
) {
    let outcome = match accept(&listener, agent_wait, &settle) {
        Ok(stream) => {
            settle.mark("guest agent connected");
            let outcome = session(&stream, job, stdio, &settle, after_hello);
            // Done with the agent: signals stop the VM again, and every
            // handle on the socket (input, signals) sees it closed.
            settle.stop_forwarding();
            let _ = stream.shutdown(std::net::Shutdown::Both);
            outcome
        }
        Err(outcome) => outcome,
    };
    settle.settle(outcome);
}

/// Waits for the agent to connect, while the VM runs.
fn accept(listener: &UnixListener, wait: Duration, settle: &Settle) -> Result<UnixStream, Outcome> {
    let _ = listener.set_nonblocking(true);
    let t0 = Instant::now();
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                return Ok(stream);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(Outcome::Failed(format!("sandbox: accept failed: {e}"))),
        }
        if settle.stopping() {
            return Err(Outcome::AgentNeverUp(
                "the guest stopped before its agent connected: does it run kiln-agent as init?"
                    .into(),
            ));
        }
        if t0.elapsed() >= wait {
            return Err(Outcome::AgentNeverUp(format!(
                "no guest agent connected within {} s: does the guest run kiln-agent (with CONFIG_VIRTIO_VSOCKETS)?",
                wait.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn session(
    stream: &UnixStream,
    job: Job,
    stdio: Stdio,
    settle: &Settle,
    after_hello: Option<AfterHello>,
) -> Outcome {
    let mut stream = stream;
    let Stdio {
        input,
        mut output,
        mut errors,
    } = stdio;
    let _ = stream.set_read_timeout(Some(HELLO_WAIT));
    match read_msg(&mut stream) {
        Ok(Some(Msg::Hello { version })) if version == VERSION => {}
        Ok(Some(Msg::Hello { version })) => {
            return Outcome::Failed(format!(
                "the guest agent speaks protocol version {version}, this kiln {VERSION}: use matching versions"
            ))
        }
        Ok(Some(other)) => {
            return Outcome::Failed(format!(
                "the guest agent sent frame type {:#04x} before HELLO",
                other.kind()
            ))
        }
        Ok(None) => return ended_early(),
        Err(e) => return bad_agent(e),
    }
    let _ = stream.set_read_timeout(None);
    if let Some(hook) = after_hello {
        hook();
    }
    if let Err(e) = write_msg(&mut stream, &Msg::Setup(new_identity())) {
        return Outcome::GuestStopped(format!(
            "lost the guest agent before the command started: {e}"
        ));
    }
    // Input and signals share one writer, so their frames never interleave.
    let to_guest = match stream.try_clone() {
        Ok(s) => Arc::new(Mutex::new(s)),
        Err(e) => return Outcome::Failed(format!("sandbox: cannot share the agent's socket: {e}")),
    };
    for copy in &job.copy_in {
        if let Err(why) = send_in(stream, copy) {
            return Outcome::Failed(why);
        }
    }
    let tty = job.exec.tty;
    if let Err(e) = write_msg(&mut stream, &Msg::Exec(job.exec)) {
        return Outcome::GuestStopped(format!(
            "lost the guest agent before the command started: {e}"
        ));
    }
    settle.mark("command sent");
    // Signals go to the command from the moment it is on its way.
    let (signals, forwarded) = mpsc::channel();
    settle.forward_signals_to(signals);
    // Input goes as the agent's credit allows; when the session ends,
    // however it ends, the thread sending it stops.
    let window = Arc::new(Window::default());
    let _close = CloseOnDrop(&window);
    {
        let (to_guest, window) = (to_guest.clone(), window.clone());
        std::thread::spawn(move || stdin::forward(input, &*to_guest, &window));
    }
    if let Some(size) = tty {
        let to_guest = to_guest.clone();
        std::thread::spawn(move || follow_window_size(size, &to_guest));
    }
    {
        let to_guest = to_guest.clone();
        std::thread::spawn(move || {
            for sig in forwarded {
                let mut w = to_guest.lock().expect("agent writer");
                if write_msg(&mut *w, &Msg::Signal(sig)).is_err() {
                    return;
                }
            }
        });
    }
    loop {
        let msg = match read_msg(&mut stream) {
            Ok(Some(m)) => m,
            Ok(None) => return ended_early(),
            Err(e) => return bad_agent(e),
        };
        let written = match msg {
            Msg::Credit(n) => {
                window.give(n);
                Ok(())
            }
            Msg::Stdout(d) if d.is_empty() => Ok(()),
            Msg::Stderr(d) if d.is_empty() => Ok(()),
            Msg::Stdout(d) => output.write_all(&d).and_then(|()| output.flush()),
            Msg::Stderr(d) => errors.write_all(&d).and_then(|()| errors.flush()),
            Msg::Failed(why) => {
                log::error!("cannot run the command: {why}");
                Ok(())
            }
            Msg::Exited(status) => {
                settle.mark("command ended");
                let mut output = Output {
                    out: &mut output,
                    err: &mut errors,
                };
                for copy in &job.copy_out {
                    if let Err(why) = fetch_out(stream, &to_guest, copy, &mut output) {
                        return Outcome::Failed(format!(
                            "{why} (the command had ended with status {})",
                            status.shell_code()
                        ));
                    }
                }
                return Outcome::Exited(status);
            }
            other => {
                return Outcome::Failed(format!(
                    "the guest agent sent frame type {:#04x}, which only the host sends",
                    other.kind()
                ))
            }
        };
        if let Err(e) = written {
            return Outcome::Failed(format!("cannot write the command's output: {e}"));
        }
    }
}

/// The connection ended before EXITED.
fn ended_early() -> Outcome {
    Outcome::GuestStopped("the guest agent's connection closed before the command ended".into())
}

fn bad_agent(e: io::Error) -> Outcome {
    if e.kind() == io::ErrorKind::InvalidData {
        Outcome::Failed(format!("the guest agent broke the protocol: {e}"))
    } else {
        Outcome::GuestStopped(format!(
            "lost the guest agent before the command ended: {e}"
        ))
    }
}

/// With -t: sends RESIZE whenever kiln's terminal changes size (checked
/// five times a second) until the connection is gone.
fn follow_window_size(mut size: WinSize, to: &Mutex<UnixStream>) {
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let Some((rows, cols)) = crate::terminal::window_size() else {
            continue;
        };
        let now = WinSize { rows, cols };
        if now != size {
            size = now;
            if write_msg(&mut *to.lock().expect("agent writer"), &Msg::Resize(now)).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use std::path::PathBuf;

    use kiln_proto::{ExitStatus, VERSION};

    use super::super::Outcome;
    use super::*;
    use crate::control::VmControl;

    /// A Write that tests can read back.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Runs the host side against `agent`, a fake guest agent given the
    /// connected stream; returns the outcome, stdout and stderr.
    fn run_with(
        input: &'static [u8],
        agent: impl FnOnce(UnixStream) + Send + 'static,
    ) -> (Outcome, Vec<u8>, Vec<u8>) {
        let (outcome, out, err, _) = run_fake(input, true, vec![], move |s, _| agent(s));
        (outcome, out, err)
    }

    /// As [`run_with`], and the fake also gets the VM's control block (to
    /// play a signal to kiln), which is returned too; `linger` false: the
    /// fake agent hangs up as soon as it is done.
    fn run_fake(
        input: &'static [u8],
        linger: bool,
        copy_out: Vec<CopyOut>,
        agent: impl FnOnce(UnixStream, Arc<VmControl>) + Send + 'static,
    ) -> (Outcome, Vec<u8>, Vec<u8>, Arc<VmControl>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock_1024");
        let listener = UnixListener::bind(&path).unwrap();
        let control = Arc::new(VmControl::new(1).unwrap());
        let settle = Settle::new(control.clone(), Instant::now());
        let (out, err) = (Buffer::default(), Buffer::default());
        let stdio = Stdio {
            input: Box::new(input),
            output: Box::new(out.clone()),
            errors: Box::new(err.clone()),
        };
        let for_agent = control.clone();
        let fake = std::thread::spawn(move || {
            let s = UnixStream::connect(path).unwrap();
            let mut rest = s.try_clone().unwrap();
            agent(s, for_agent);
            // Stay connected until the host is done, as a real agent
            // would: what the host writes is drained.
            if linger {
                let _ = io::copy(&mut rest, &mut io::sink());
            }
        });
        let exec = Exec {
            argv: vec![b"cmd".to_vec()],
            ..Exec::default()
        };
        let job = Job {
            exec,
            copy_out,
            ..Job::default()
        };
        serve(
            listener,
            job,
            Duration::from_secs(5),
            settle.clone(),
            stdio,
            None,
        );
        fake.join().unwrap();
        assert!(control.stopping(), "the outcome stops the VM");
        let outcome = settle.outcome().expect("settled");
        let take = |b: &Buffer| b.0.lock().unwrap().clone();
        (outcome, take(&out), take(&err), control)
    }

    /// Stdio with no input and output nobody reads.
    fn quiet_stdio() -> Stdio {
        Stdio {
            input: Box::new(&b""[..]),
            output: Box::new(Buffer::default()),
            errors: Box::new(Buffer::default()),
        }
    }

    /// HELLO, then the SETUP every session starts with.
    fn hello(s: &mut UnixStream) {
        write_msg(s, &Msg::Hello { version: VERSION }).unwrap();
        let Ok(Some(Msg::Setup(setup))) = read_msg(s) else {
            panic!("no SETUP after HELLO")
        };
        assert_eq!(setup.entropy.len(), 64);
        assert!(setup.hostname.starts_with(b"kiln-"));
    }

    #[test]
    fn every_sandbox_gets_its_own_identity() {
        let (a, b) = (new_identity(), new_identity());
        assert_ne!(a.entropy, b.entropy);
        assert_ne!(a.hostname, b.hostname);
        assert_ne!(a.machine_id, b.machine_id);
        assert_eq!(a.machine_id.len(), 32);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        assert!(now - a.time_ns < 60_000_000_000);
        // Each one is a valid SETUP frame.
        let frame = Msg::Setup(a.clone()).encode();
        assert_eq!(Msg::decode(&frame).unwrap().unwrap().0, Msg::Setup(a));
    }

    #[test]
    fn a_session_streams_input_and_output_and_ends_with_the_status() {
        let (outcome, out, err) = run_with(b"abc", |mut s| {
            hello(&mut s);
            let Some(Msg::Exec(e)) = read_msg(&mut s).unwrap() else {
                panic!("no EXEC")
            };
            assert_eq!(e.argv, [b"cmd".to_vec()]);
            let mut input = Vec::new();
            loop {
                match read_msg(&mut s).unwrap() {
                    Some(Msg::Stdin(d)) if d.is_empty() => break,
                    Some(Msg::Stdin(d)) => input.extend(d),
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(input, b"abc");
            for m in [
                Msg::Stdout(b"o".to_vec()),
                Msg::Stderr(b"e".to_vec()),
                Msg::Stdout(Vec::new()),
                Msg::Exited(ExitStatus::Code(3)),
            ] {
                write_msg(&mut s, &m).unwrap();
            }
        });
        assert_eq!(outcome, Outcome::Exited(ExitStatus::Code(3)));
        assert_eq!((out.as_slice(), err.as_slice()), (&b"o"[..], &b"e"[..]));
    }

    fn failure(outcome: &Outcome) -> &str {
        match outcome {
            Outcome::Failed(why) => why,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn a_hostile_agent_is_reported_not_obeyed() {
        let (o, ..) = run_with(b"", |mut s| {
            write_msg(&mut s, &Msg::Hello { version: 99 }).unwrap();
        });
        assert!(failure(&o).contains("protocol version 99"));
        let (o, ..) = run_with(b"", |mut s| {
            hello(&mut s);
            s.write_all(&[0x7f, 1, 0, 0, 0, 0]).unwrap();
        });
        assert!(failure(&o).contains("broke the protocol"), "{o:?}");
        let (o, ..) = run_with(b"", |mut s| {
            hello(&mut s);
            // A 4 GiB frame must be refused, not allocated.
            s.write_all(&[kiln_proto::kind::STDOUT, 0xff, 0xff, 0xff, 0xff])
                .unwrap();
        });
        assert!(failure(&o).contains("broke the protocol"), "{o:?}");
        let (o, ..) = run_with(b"", |mut s| {
            hello(&mut s);
            write_msg(&mut s, &Msg::Signal(9)).unwrap();
        });
        assert!(failure(&o).contains("only the host sends"), "{o:?}");
        let (o, ..) = run_with(b"", |mut s| {
            write_msg(&mut s, &Msg::Stdout(b"early".to_vec())).unwrap();
        });
        assert!(failure(&o).contains("before HELLO"), "{o:?}");
    }

    #[test]
    fn signals_to_kiln_reach_the_command_while_it_runs() {
        let (outcome, _, _, control) = run_fake(b"", true, vec![], |mut s, control| {
            hello(&mut s);
            assert!(matches!(read_msg(&mut s), Ok(Some(Msg::Exec(_)))));
            // kiln gets SIGTERM now (the event loop would call this); the
            // host sets forwarding up just after sending EXEC.
            let t0 = std::time::Instant::now();
            while !control.forward_signal(libc::SIGTERM) {
                assert!(t0.elapsed() < Duration::from_secs(5), "never forwarded");
                std::thread::sleep(Duration::from_millis(1));
            }
            loop {
                match read_msg(&mut s).unwrap() {
                    Some(Msg::Signal(n)) => {
                        assert_eq!(n, libc::SIGTERM);
                        break;
                    }
                    Some(Msg::Stdin(_)) => {}
                    other => panic!("{other:?}"),
                }
            }
            write_msg(&mut s, &Msg::Exited(ExitStatus::Signal(libc::SIGTERM))).unwrap();
        });
        assert_eq!(outcome, Outcome::Exited(ExitStatus::Signal(libc::SIGTERM)));
        assert!(
            !control.forward_signal(libc::SIGINT),
            "after the session a signal stops the VM again"
        );
    }

    #[test]
    fn an_agent_that_goes_away_is_a_stopped_guest() {
        let (o, ..) = run_fake(b"", false, vec![], |mut s, _| {
            hello(&mut s);
            write_msg(&mut s, &Msg::Stdout(b"partial".to_vec())).unwrap();
        });
        assert!(matches!(o, Outcome::GuestStopped(_)), "{o:?}");
    }

    #[test]
    fn no_agent_at_all_is_reported_after_the_wait_or_when_the_vm_stops() {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("s")).unwrap();
        let settle = Settle::new(Arc::new(VmControl::new(1).unwrap()), Instant::now());
        serve(
            listener.try_clone().unwrap(),
            Job::default(),
            Duration::from_millis(50),
            settle.clone(),
            quiet_stdio(),
            None,
        );
        assert!(
            matches!(settle.outcome(), Some(Outcome::AgentNeverUp(why)) if why.contains("within"))
        );
        // The VM stopping ends the wait too.
        let control = Arc::new(VmControl::new(1).unwrap());
        control.request_stop(crate::control::StopReason::Reset);
        let settle = Settle::new(control, Instant::now());
        serve(
            listener,
            Job::default(),
            Duration::from_secs(60),
            settle.clone(),
            quiet_stdio(),
            None,
        );
        assert!(
            matches!(settle.outcome(), Some(Outcome::AgentNeverUp(why)) if why.contains("stopped before"))
        );
    }

    /// A fake agent that ends the command at once and answers one
    /// COPY_OUT with `tar` (output frames mixed in) and DONE.
    fn copy_out_with(tar: Vec<u8>, dest: PathBuf) -> (Outcome, Vec<u8>) {
        let copy = CopyOut {
            guest: b"/guest/thing".to_vec(),
            host: dest,
        };
        let (outcome, out, _, _) = run_fake(b"", true, vec![copy], move |mut s, _| {
            hello(&mut s);
            assert!(matches!(read_msg(&mut s), Ok(Some(Msg::Exec(_)))));
            write_msg(&mut s, &Msg::Exited(ExitStatus::Code(3))).unwrap();
            loop {
                match read_msg(&mut s).unwrap() {
                    Some(Msg::CopyOut(p)) => {
                        assert_eq!(p, b"/guest/thing");
                        break;
                    }
                    Some(Msg::Stdin(_)) => {}
                    other => panic!("{other:?}"),
                }
            }
            for (i, chunk) in tar.chunks(700).enumerate() {
                write_msg(&mut s, &Msg::Tar(chunk.to_vec())).unwrap();
                if i == 1 {
                    write_msg(&mut s, &Msg::Stdout(b"late output".to_vec())).unwrap();
                }
            }
            write_msg(&mut s, &Msg::Tar(Vec::new())).unwrap();
            write_msg(&mut s, &Msg::Done(None)).unwrap();
        });
        (outcome, out)
    }

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o4755);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn a_copy_out_lands_in_place_without_set_user_id_bits() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("got");
        let data = vec![5u8; 3000];
        let (outcome, out) = copy_out_with(tar_of(&[("thing", &data)]), dest.clone());
        assert_eq!(outcome, Outcome::Exited(ExitStatus::Code(3)));
        assert_eq!(
            out, b"late output",
            "output in the middle of a copy still arrives"
        );
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o755);
    }

    #[test]
    fn a_hostile_copy_out_is_refused_and_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("got");
        let two = tar_of(&[("a", b"1"), ("b", b"2")]);
        let (outcome, _) = copy_out_with(two, dest.clone());
        let Outcome::Failed(why) = outcome else {
            panic!("{outcome:?}")
        };
        assert!(
            why.contains("bad copy") && why.contains("status 3"),
            "{why}"
        );
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            0,
            "nothing left"
        );
    }
}
