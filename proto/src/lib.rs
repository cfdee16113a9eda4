//! kiln's sandbox protocol: how `kiln run -- CMD` on the host and the
//! guest agent (`guest/agent`, or your own in your own image) talk.
//!
//! # Transport
//!
//! One vsock stream. The agent opens it: it connects to the host (CID 2)
//! on port [`AGENT_PORT`] as soon as it is up. (With kiln's vsock device
//! that reaches the Unix socket `PATH_1024`, where `kiln run` listens.)
//!
//! # Frames
//!
//! Every message is one frame: a type byte, the payload length as a
//! little-endian u32, then the payload (at most [`MAX_PAYLOAD`] bytes).
//! Strings and byte strings inside payloads are a little-endian u32
//! length and the bytes; lists are a u32 count and their items. Bytes are
//! bytes: arguments, environment and output need not be UTF-8.
//!
//! | type | name | from | payload |
//! |---|---|---|---|
//! | 0x01 | HELLO | agent | u32 protocol version ([`VERSION`]) |
//! | 0x02 | STDOUT | agent | output bytes; empty: the command's stdout closed |
//! | 0x03 | STDERR | agent | output bytes; empty: the command's stderr closed |
//! | 0x04 | EXITED | agent | u8 how (0: exit code, 1: killed by a signal, 2: the guest kernel's OOM killer struck), i32 the code or signal |
//! | 0x05 | FAILED | agent | string: why the command could not start (EXITED follows) |
//! | 0x06 | DONE | agent | u8 ok (1) or not (0), string: why not; answers COPY_IN and COPY_OUT |
//! | 0x07 | CREDIT | agent | u32 bytes of STDIN the agent has passed on (or dropped): the host may send that many more |
//! | 0x10 | EXEC | host | list argv, list env (`KEY=VALUE`), u8 has-workdir, string workdir, u8 has-tty, u16 rows, u16 columns |
//! | 0x11 | STDIN | host | input bytes; empty: end of input |
//! | 0x12 | SIGNAL | host | i32 signal number, for the command |
//! | 0x13 | COPY_IN | host | string: guest path; TAR frames follow |
//! | 0x14 | TAR | both | a piece of a tar stream; empty: its end |
//! | 0x15 | COPY_OUT | host | string: guest path to send back as TAR frames |
//! | 0x16 | RESIZE | host | u16 rows, u16 columns: the terminal's new size |
//! | 0x17 | SETUP | host | u64 wall-clock time (ns since 1970), bytes entropy (at most 512), string hostname, string machine id |
//!
//! A session: the agent sends HELLO; the host sends SETUP (the guest may
//! be a clone restored from a snapshot: the agent sets the clock, feeds
//! the entropy to the kernel's RNG and reseeds it, and takes the hostname
//! and machine id, so no two sandboxes share them); the host may send COPY_IN requests,
//! each followed by its TAR frames and answered by DONE once unpacked;
//! then the host sends EXEC, then STDIN and SIGNAL frames as they come;
//! the agent streams STDOUT and STDERR and ends with EXITED (after FAILED
//! when the command could not start).
//!
//! Input is flow-controlled, so a command that does not read its stdin
//! cannot make the agent hold more than a window of it: the host may have
//! at most [`STDIN_WINDOW`] bytes of STDIN payload sent and not yet
//! credited. The agent sends CREDIT with the byte count of each STDIN
//! payload once it has written it to the command (or dropped it because
//! the command's stdin is closed or the command has ended). SIGNAL and
//! RESIZE frames are never held back by the window. A host ignores CREDIT
//! wherever it arrives (also after EXITED). With a tty in EXEC the command runs
//! on a pseudo-terminal of that size: its output (stdout and stderr alike)
//! comes as STDOUT, STDIN goes to the terminal (control characters such as
//! ^C act as on any terminal; the end of input is not passed on), and
//! RESIZE changes its size. After EXITED the host may send
//! COPY_OUT requests, each answered by TAR frames (the empty one always
//! comes) and DONE; then it closes the connection (the agent powers the
//! guest off once it is closed, or after 5 s without a request).
//!
//! If the connection breaks before the agent has a command (the VM was
//! snapshotted while the agent waited, and this is a restored copy: vsock
//! connections do not survive a restore), the agent connects again and
//! starts over with HELLO.
//!
//! Copies ([`copy`]) are tar streams (ustar with GNU long names) holding
//! one top-level entry, the file, symlink or directory tree copied. The
//! receiver stages it next to the destination and moves it into place, as
//! `cp -r` names things: into an existing directory under the entry's
//! name, else at the destination path itself.

use std::io::{self, Read, Write};

/// The vsock port the agent connects to on the host.
pub const AGENT_PORT: u32 = 1024;
/// The protocol version this crate speaks.
pub const VERSION: u32 = 4;
/// The most entropy one SETUP frame may carry.
pub const MAX_ENTROPY: usize = 512;
/// The largest payload of one frame.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// The most STDIN payload bytes the host may have sent and not yet had
/// credited by CREDIT frames.
pub const STDIN_WINDOW: u32 = 1 << 20;
/// Bytes of a frame header.
pub const HEADER_LEN: usize = 5;

/// Frame types.
pub mod kind {
    /// The agent is up.
    pub const HELLO: u8 = 0x01;
    /// The command's standard output.
    pub const STDOUT: u8 = 0x02;
    /// The command's standard error.
    pub const STDERR: u8 = 0x03;
    /// The command ended.
    pub const EXITED: u8 = 0x04;
    /// The command could not start.
    pub const FAILED: u8 = 0x05;
    /// A copy request was carried out, or why not.
    pub const DONE: u8 = 0x06;
    /// STDIN bytes passed on: the host may send that many more.
    pub const CREDIT: u8 = 0x07;
    /// Run this command.
    pub const EXEC: u8 = 0x10;
    /// Input for the command.
    pub const STDIN: u8 = 0x11;
    /// Send the command a signal.
    pub const SIGNAL: u8 = 0x12;
    /// Files for the guest follow.
    pub const COPY_IN: u8 = 0x13;
    /// A piece of a tar stream.
    pub const TAR: u8 = 0x14;
    /// Send these files back.
    pub const COPY_OUT: u8 = 0x15;
    /// The terminal changed size.
    pub const RESIZE: u8 = 0x16;
    /// Clock, entropy and identity for this sandbox.
    pub const SETUP: u8 = 0x17;
}

/// How the command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// It died (SIGKILL, or a shell's 137) after the guest kernel's
    /// out-of-memory killer struck; the value is what it reported.
    OomKilled(i32),
}

impl ExitStatus {
    /// The status a shell would report: the code, or 128 + the signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
            ExitStatus::OomKilled(code) => code,
        }
    }
}

/// What to run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exec {
    /// The program and its arguments (argv[0] is looked up in PATH).
    pub argv: Vec<Vec<u8>>,
    /// The whole environment, `KEY=VALUE` each.
    pub env: Vec<Vec<u8>>,
    /// The working directory (the agent's default when None).
    pub workdir: Option<Vec<u8>>,
    /// Run it on a pseudo-terminal of this size.
    pub tty: Option<WinSize>,
}

/// A terminal's size in characters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WinSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// What makes a sandbox itself: the time, fresh randomness and names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Setup {
    /// The host's wall-clock time, in nanoseconds since 1970.
    pub time_ns: u64,
    /// Random bytes for the guest kernel's RNG.
    pub entropy: Vec<u8>,
    /// The guest's hostname.
    pub hostname: Vec<u8>,
    /// The guest's machine id (32 hex digits).
    pub machine_id: Vec<u8>,
}

/// One message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    /// The agent is up and speaks this version.
    Hello {
        /// Protocol version.
        version: u32,
    },
    /// Output on the command's stdout (empty: closed).
    Stdout(Vec<u8>),
    /// Output on the command's stderr (empty: closed).
    Stderr(Vec<u8>),
    /// The command ended.
    Exited(ExitStatus),
    /// The command could not start.
    Failed(String),
    /// Run a command.
    Exec(Exec),
    /// Input for the command (empty: end of input).
    Stdin(Vec<u8>),
    /// A signal for the command.
    Signal(i32),
    /// Unpack the TAR frames that follow at this guest path.
    CopyIn(Vec<u8>),
    /// A piece of a tar stream (empty: its end).
    Tar(Vec<u8>),
    /// Send this guest path back as TAR frames.
    CopyOut(Vec<u8>),
    /// A copy request is done: None, or why it failed.
    Done(Option<String>),
    /// This many STDIN bytes were passed on to the command (or dropped).
    Credit(u32),
    /// The terminal changed size.
    Resize(WinSize),
    /// The sandbox's clock, entropy and identity.
    Setup(Setup),
}

/// A frame that is not what this protocol allows.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    /// Unknown type byte.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// Payload longer than allowed.
    #[error("frame of {0} bytes, more than the {MAX_PAYLOAD} allowed")]
    TooLong(usize),
    /// The payload does not match its type.
    #[error("malformed {what} frame: {why}")]
    Malformed {
        /// The frame type's name.
        what: &'static str,
        /// What is wrong.
        why: &'static str,
    },
}

impl From<ProtoError> for io::Error {
    fn from(e: ProtoError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Appends `b` as a u32 length and the bytes.
fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Appends a terminal size: rows, then columns, u16 each.
fn put_size(out: &mut Vec<u8>, size: WinSize) {
    out.extend_from_slice(&size.rows.to_le_bytes());
    out.extend_from_slice(&size.cols.to_le_bytes());
}

/// Appends a list of byte strings.
fn put_list(out: &mut Vec<u8>, items: &[Vec<u8>]) {
    out.extend_from_slice(&(items.len() as u32).to_le_bytes());
    for i in items {
        put_bytes(out, i);
    }
}

impl Msg {
    /// The frame type byte.
    pub fn kind(&self) -> u8 {
        match self {
            Msg::Hello { .. } => kind::HELLO,
            Msg::Stdout(_) => kind::STDOUT,
            Msg::Stderr(_) => kind::STDERR,
            Msg::Exited(_) => kind::EXITED,
            Msg::Failed(_) => kind::FAILED,
            Msg::Exec(_) => kind::EXEC,
            Msg::Stdin(_) => kind::STDIN,
            Msg::Signal(_) => kind::SIGNAL,
            Msg::CopyIn(_) => kind::COPY_IN,
            Msg::Tar(_) => kind::TAR,
            Msg::CopyOut(_) => kind::COPY_OUT,
            Msg::Done(_) => kind::DONE,
            Msg::Credit(_) => kind::CREDIT,
            Msg::Resize(_) => kind::RESIZE,
            Msg::Setup(_) => kind::SETUP,
        }
    }

    /// The whole frame, header included. Data frames longer than
    /// [`MAX_PAYLOAD`] must be split by the caller ([`write_data`] does).
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::new();
        match self {
            Msg::Hello { version: n } | Msg::Credit(n) => p.extend_from_slice(&n.to_le_bytes()),
            Msg::Stdout(d) | Msg::Stderr(d) | Msg::Stdin(d) | Msg::Tar(d) => p.extend_from_slice(d),
            Msg::CopyIn(path) | Msg::CopyOut(path) => put_bytes(&mut p, path),
            Msg::Done(why) => {
                p.push(u8::from(why.is_none()));
                put_bytes(&mut p, why.as_deref().unwrap_or_default().as_bytes());
            }
            Msg::Exited(s) => {
                let (how, v) = match *s {
                    ExitStatus::Code(c) => (0u8, c),
                    ExitStatus::Signal(n) => (1u8, n),
                    ExitStatus::OomKilled(c) => (2u8, c),
                };
                p.push(how);
                p.extend_from_slice(&v.to_le_bytes());
            }
            Msg::Failed(why) => put_bytes(&mut p, why.as_bytes()),
            Msg::Exec(e) => {
                put_list(&mut p, &e.argv);
                put_list(&mut p, &e.env);
                p.push(u8::from(e.workdir.is_some()));
                put_bytes(&mut p, e.workdir.as_deref().unwrap_or_default());
                p.push(u8::from(e.tty.is_some()));
                put_size(&mut p, e.tty.unwrap_or_default());
            }
            Msg::Signal(n) => p.extend_from_slice(&n.to_le_bytes()),
            Msg::Resize(size) => put_size(&mut p, *size),
            Msg::Setup(s) => {
                p.extend_from_slice(&s.time_ns.to_le_bytes());
                put_bytes(&mut p, &s.entropy);
                put_bytes(&mut p, &s.hostname);
                put_bytes(&mut p, &s.machine_id);
            }
        }
        let mut frame = Vec::with_capacity(HEADER_LEN + p.len());
        frame.extend_from_slice(&header(self.kind(), p.len()));
        frame.extend_from_slice(&p);
        frame
    }

    /// Decodes one frame from the start of `buf`: the message and the
    /// bytes it took, or None when `buf` does not hold a whole frame yet.
    pub fn decode(buf: &[u8]) -> Result<Option<(Msg, usize)>, ProtoError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let kind = buf[0];
        if !matches!(kind, 0x01..=0x07 | 0x10..=0x17) {
            return Err(ProtoError::UnknownType(kind));
        }
        let len = u32::from_le_bytes(buf[1..5].try_into().expect("4 bytes")) as usize;
        if len > MAX_PAYLOAD {
            return Err(ProtoError::TooLong(len));
        }
        let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
            return Ok(None);
        };
        Ok(Some((parse(kind, payload)?, HEADER_LEN + len)))
    }
}

/// Reads a payload field by field.
struct Fields<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Fields<'a> {
    fn bad(&self, why: &'static str) -> ProtoError {
        ProtoError::Malformed {
            what: self.what,
            why,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if self.rest.len() < n {
            return Err(self.bad("shorter than its fields"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, ProtoError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn size(&mut self) -> Result<WinSize, ProtoError> {
        let rows = u16::from_le_bytes(self.take(2)?.try_into().expect("2"));
        let cols = u16::from_le_bytes(self.take(2)?.try_into().expect("2"));
        Ok(WinSize { rows, cols })
    }

    fn u64(&mut self) -> Result<u64, ProtoError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }

    fn i32(&mut self) -> Result<i32, ProtoError> {
        Ok(i32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, ProtoError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }

    fn list(&mut self) -> Result<Vec<Vec<u8>>, ProtoError> {
        let n = self.u32()? as usize;
        // Each item needs at least its 4-byte length: a count larger than
        // that cannot be honest (and must not size an allocation).
        if n > self.rest.len() / 4 {
            return Err(self.bad("list count beyond the frame"));
        }
        (0..n).map(|_| self.bytes()).collect()
    }

    fn end(self) -> Result<(), ProtoError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.bad("bytes after its fields"))
        }
    }
}

fn parse(kind: u8, payload: &[u8]) -> Result<Msg, ProtoError> {
    let fields = |what| Fields {
        rest: payload,
        what,
    };
    let msg = match kind {
        kind::HELLO => {
            let mut f = fields("HELLO");
            let version = f.u32()?;
            f.end()?;
            Msg::Hello { version }
        }
        kind::CREDIT => {
            let mut f = fields("CREDIT");
            let n = f.u32()?;
            f.end()?;
            Msg::Credit(n)
        }
        kind::STDOUT => Msg::Stdout(payload.to_vec()),
        kind::STDERR => Msg::Stderr(payload.to_vec()),
        kind::STDIN => Msg::Stdin(payload.to_vec()),
        kind::TAR => Msg::Tar(payload.to_vec()),
        kind::COPY_IN | kind::COPY_OUT => {
            let what = if kind == kind::COPY_IN {
                "COPY_IN"
            } else {
                "COPY_OUT"
            };
            let mut f = fields(what);
            let path = f.bytes()?;
            f.end()?;
            if path.is_empty() || path.contains(&0) {
                return Err(ProtoError::Malformed {
                    what,
                    why: "empty path or a NUL byte in it",
                });
            }
            if kind == kind::COPY_IN {
                Msg::CopyIn(path)
            } else {
                Msg::CopyOut(path)
            }
        }
        kind::DONE => {
            let mut f = fields("DONE");
            let ok = f.u8()?;
            let why = f.bytes()?;
            f.end()?;
            match ok {
                1 => Msg::Done(None),
                0 => Msg::Done(Some(String::from_utf8_lossy(&why).into_owned())),
                _ => {
                    return Err(ProtoError::Malformed {
                        what: "DONE",
                        why: "ok is neither 0 nor 1",
                    })
                }
            }
        }
        kind::EXITED => {
            let mut f = fields("EXITED");
            let how = f.u8()?;
            let v = f.i32()?;
            let status = match how {
                0 => ExitStatus::Code(v),
                1 if (1..=64).contains(&v) => ExitStatus::Signal(v),
                1 => return Err(f.bad("signal number out of range")),
                2 => ExitStatus::OomKilled(v),
                _ => return Err(f.bad("unknown way of ending")),
            };
            f.end()?;
            Msg::Exited(status)
        }
        kind::FAILED => {
            let mut f = fields("FAILED");
            let why = f.bytes()?;
            f.end()?;
            Msg::Failed(String::from_utf8_lossy(&why).into_owned())
        }
        kind::EXEC => {
            let mut f = fields("EXEC");
            let argv = f.list()?;
            let env = f.list()?;
            let has_workdir = f.u8()?;
            let workdir = f.bytes()?;
            let has_tty = f.u8()?;
            let tty = f.size()?;
            f.end()?;
            if argv.is_empty() {
                return Err(ProtoError::Malformed {
                    what: "EXEC",
                    why: "no program",
                });
            }
            Msg::Exec(Exec {
                argv,
                env,
                workdir: (has_workdir != 0).then_some(workdir),
                tty: (has_tty != 0).then_some(tty),
            })
        }
        kind::RESIZE => {
            let mut f = fields("RESIZE");
            let size = f.size()?;
            f.end()?;
            Msg::Resize(size)
        }
        kind::SETUP => {
            let mut f = fields("SETUP");
            let time_ns = f.u64()?;
            let entropy = f.bytes()?;
            let hostname = f.bytes()?;
            let machine_id = f.bytes()?;
            f.end()?;
            if entropy.len() > MAX_ENTROPY {
                return Err(ProtoError::Malformed {
                    what: "SETUP",
                    why: "more entropy than allowed",
                });
            }
            // Linux's hostnames hold 64 bytes.
            if hostname.is_empty() || hostname.len() > 64 || hostname.contains(&0) {
                return Err(ProtoError::Malformed {
                    what: "SETUP",
                    why: "a hostname of 1 to 64 bytes without NUL",
                });
            }
            if machine_id.len() != 32 || !machine_id.iter().all(u8::is_ascii_hexdigit) {
                return Err(ProtoError::Malformed {
                    what: "SETUP",
                    why: "a machine id of 32 hex digits",
                });
            }
            Msg::Setup(Setup {
                time_ns,
                entropy,
                hostname,
                machine_id,
            })
        }
        kind::SIGNAL => {
            let mut f = fields("SIGNAL");
            let n = f.i32()?;
            f.end()?;
            Msg::Signal(n)
        }
        other => return Err(ProtoError::UnknownType(other)),
    };
    Ok(msg)
}

/// Reads one message; None at a clean end of stream (between frames).
pub fn read_msg(r: &mut impl Read) -> io::Result<Option<Msg>> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    // Check the type and length before trusting the length.
    Msg::decode(&header)?;
    let len = u32::from_le_bytes(header[1..5].try_into().expect("4")) as usize;
    let mut frame = vec![0u8; HEADER_LEN + len];
    frame[..HEADER_LEN].copy_from_slice(&header);
    r.read_exact(&mut frame[HEADER_LEN..])?;
    match Msg::decode(&frame)? {
        Some((msg, _)) => Ok(Some(msg)),
        None => Err(io::ErrorKind::UnexpectedEof.into()),
    }
}

/// Writes one message.
pub fn write_msg(w: &mut impl Write, msg: &Msg) -> io::Result<()> {
    w.write_all(&msg.encode())
}

/// A frame header: the type, then the payload's length (u32 LE).
fn header(kind: u8, len: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = kind;
    h[1..].copy_from_slice(&(len as u32).to_le_bytes());
    h
}

/// One reusable buffer for the data frames of a stream (STDOUT, STDERR,
/// STDIN, TAR): read the bytes into [`FrameBuf::payload`], then send
/// [`FrameBuf::frame`], header and payload in one slice, with no copy and
/// no allocation per frame (the guest agent's output pumps).
pub struct FrameBuf {
    buf: Vec<u8>,
}

impl FrameBuf {
    /// A buffer for frames of type `kind` carrying up to `capacity` bytes
    /// (at most [`MAX_PAYLOAD`]).
    pub fn new(kind: u8, capacity: usize) -> FrameBuf {
        assert!(
            capacity <= MAX_PAYLOAD,
            "a frame carries at most MAX_PAYLOAD bytes"
        );
        let mut buf = vec![0u8; HEADER_LEN + capacity];
        buf[0] = kind;
        FrameBuf { buf }
    }

    /// Where the next frame's bytes go.
    pub fn payload(&mut self) -> &mut [u8] {
        &mut self.buf[HEADER_LEN..]
    }

    /// The whole frame carrying the first `n` payload bytes (0: the empty
    /// end-of-stream frame).
    pub fn frame(&mut self, n: usize) -> &[u8] {
        let h = header(self.buf[0], n);
        self.buf[..HEADER_LEN].copy_from_slice(&h);
        &self.buf[..HEADER_LEN + n]
    }
}

/// Writes output or input bytes as STDOUT/STDERR/STDIN/TAR frames of at most
/// [`MAX_PAYLOAD`] bytes each (`make` picks the frame type). An empty
/// `data` writes nothing: send the empty end-of-stream frame explicitly.
pub fn write_data(w: &mut impl Write, data: &[u8], make: fn(Vec<u8>) -> Msg) -> io::Result<()> {
    for chunk in data.chunks(MAX_PAYLOAD) {
        write_msg(w, &make(chunk.to_vec()))?;
    }
    Ok(())
}

pub mod copy;

#[cfg(test)]
mod tests;
