//! The host side of a sandbox session: waits for the guest agent's
//! connection, sends it the command, copies kiln's stdin to it and its
//! output to kiln's stdout and stderr, and settles the outcome.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use kiln_proto::{read_msg, write_data, write_msg, Exec, Msg, VERSION};

use super::{Outcome, Settle};

/// How long the agent may take from connecting to saying HELLO.
const HELLO_WAIT: Duration = Duration::from_secs(30);

/// Runs the session; every way it can end settles an outcome.
pub fn serve(listener: UnixListener, exec: Exec, agent_wait: Duration, settle: Settle) {
    let outcome = match accept(&listener, agent_wait, &settle) {
        Ok(stream) => session(stream, exec),
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

fn session(mut stream: UnixStream, exec: Exec) -> Outcome {
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
    if let Err(e) = write_msg(&mut stream, &Msg::Exec(exec)) {
        return Outcome::Failed(format!("cannot send the command to the guest agent: {e}"));
    }
    if let Ok(to_guest) = stream.try_clone() {
        std::thread::spawn(move || forward_stdin(to_guest));
    }
    let stdout = io::stdout();
    let stderr = io::stderr();
    loop {
        let msg = match read_msg(&mut stream) {
            Ok(Some(m)) => m,
            Ok(None) => return ended_early(),
            Err(e) => return bad_agent(e),
        };
        let written = match msg {
            Msg::Stdout(d) if d.is_empty() => Ok(()),
            Msg::Stderr(d) if d.is_empty() => Ok(()),
            Msg::Stdout(d) => {
                let mut out = stdout.lock();
                out.write_all(&d).and_then(|()| out.flush())
            }
            Msg::Stderr(d) => stderr.lock().write_all(&d),
            Msg::Failed(why) => {
                log::error!("cannot run the command: {why}");
                Ok(())
            }
            Msg::Exited(status) => return Outcome::Exited(status),
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

/// Copies kiln's stdin to the command; its end becomes the command's.
fn forward_stdin(mut to: UnixStream) {
    let mut stdin = io::stdin().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if write_data(&mut to, &buf[..n], Msg::Stdin).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = write_msg(&mut to, &Msg::Stdin(Vec::new()));
}
