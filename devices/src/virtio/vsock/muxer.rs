//! The host side of kiln's vsock device: guest connections become Unix
//! stream sockets, with Firecracker's conventions ("hybrid vsock"):
//!
//! - the host opens a connection by connecting to the socket at PATH and
//!   writing `CONNECT <port>\n`; once the guest accepts, kiln writes
//!   `OK <host port>\n` and the socket carries the stream; if the guest
//!   refuses (or does not answer in 2 s) kiln closes the socket;
//! - the guest opens one by connecting to CID 2 (the host), port P; kiln
//!   connects to the Unix socket `PATH_P` and refuses (RST) when nobody
//!   listens there.
//!
//! All sockets (the listener, host sockets that have not sent their
//! CONNECT line yet, connections' sockets) and a timer for deadlines sit in
//! one epoll set of the muxer's own; its fd is what the VMM's event loop
//! watches for the device.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::conn::Conn;
use super::proto::{op, Packet, HOST_CID, TYPE_STREAM};
use super::{VsockError, VsockStats};

/// Most connections at once (as Firecracker).
pub const MAX_CONNECTIONS: usize = 1023;
/// Most host sockets that have connected but not sent `CONNECT` yet.
const MAX_PENDING: usize = 64;
/// How long a host socket may take to send its `CONNECT` line.
const CONNECT_LINE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest `CONNECT <port>\n` line accepted.
const CONNECT_LINE_MAX: usize = 32;
/// Period of the deadline timer while any deadline is set.
const TICK: Duration = Duration::from_millis(250);
/// Host ports for host-initiated connections: [1 << 30, 1 << 31).
const LOCAL_PORT_FIRST: u32 = 1 << 30;

/// epoll data of the listener and the timer; sockets use their fd.
const LISTENER: u64 = u64::MAX;
const TIMER: u64 = u64::MAX - 1;

/// A connection's key: (host port, guest port).
type Key = (u32, u32);

/// What one fd in the epoll set is.
#[derive(Debug, Clone, Copy)]
enum Watch {
    /// A host socket that has not sent its CONNECT line.
    Pending,
    /// A connection's socket, registered for (readable, writable).
    Conn(Key, (bool, bool)),
}

/// A host socket waiting to say which guest port it wants.
struct PendingHost {
    stream: UnixStream,
    since: Instant,
}

/// Something to send to the guest.
#[derive(Debug, Clone, Copy)]
enum RxItem {
    /// A connection has packets owed.
    Conn(Key),
    /// An RST for a packet that belongs to no connection.
    Rst(Packet),
}

/// The muxer.
pub struct Muxer {
    cid: u64,
    path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    timer: TimerFd,
    timer_armed: bool,
    listening: bool,
    conns: HashMap<Key, Conn>,
    watches: HashMap<RawFd, Watch>,
    pending: HashMap<RawFd, PendingHost>,
    rxq: VecDeque<RxItem>,
    last_local_port: u32,
    /// Counters, shared with the device.
    pub stats: VsockStats,
}

impl Muxer {
    /// Binds the host socket at `path` for a guest with CID `cid`. A stale
    /// socket left by a VMM that died is replaced; a live one is an error.
    pub fn new(cid: u64, path: &Path) -> Result<Muxer, VsockError> {
        // Guest connections go to "PATH_<port>": that must fit sun_path too.
        let longest = path.as_os_str().len() + "_4294967295".len();
        if longest >= SUN_PATH_MAX {
            return Err(VsockError::PathTooLong {
                path: path.to_path_buf(),
                max: SUN_PATH_MAX - 1 - "_4294967295".len(),
            });
        }
        let listener = bind(path)?;
        listener
            .set_nonblocking(true)
            .map_err(|e| VsockError::Setup("make the socket non-blocking", e))?;
        let epoll = Epoll::new().map_err(|e| VsockError::Setup("create an epoll set", e))?;
        let timer = TimerFd::new().map_err(|e| VsockError::Setup("create a timer", e.into()))?;
        epoll
            .ctl(
                ControlOperation::Add,
                timer.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TIMER),
            )
            .map_err(|e| VsockError::Setup("watch the timer", e))?;
        Ok(Muxer {
            cid,
            path: path.to_path_buf(),
            listener,
            epoll,
            timer,
            timer_armed: false,
            listening: false,
            conns: HashMap::new(),
            watches: HashMap::new(),
            pending: HashMap::new(),
            rxq: VecDeque::new(),
            last_local_port: LOCAL_PORT_FIRST - 1,
            stats: VsockStats::default(),
        })
    }

    /// The fd the VMM's event loop watches (readable: call [`Self::process_events`]).
    pub fn fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// The driver is ready: start taking host connections.
    pub fn activate(&mut self) {
        if !self.listening {
            match self.epoll.ctl(
                ControlOperation::Add,
                self.listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, LISTENER),
            ) {
                Ok(()) => self.listening = true,
                Err(e) => log::error!("vsock: cannot watch {}: {e}", self.path.display()),
            }
        }
    }

    /// The driver reset the device: every connection is closed.
    pub fn reset(&mut self) {
        for fd in self.watches.keys().copied().collect::<Vec<_>>() {
            self.unwatch(fd);
        }
        self.conns.clear();
        self.pending.clear();
        self.rxq.clear();
        if self.listening {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                self.listener.as_raw_fd(),
                EpollEvent::default(),
            );
            self.listening = false;
        }
        self.update_timer();
    }

    /// Whether packets are waiting for the guest.
    pub fn has_rx(&self) -> bool {
        !self.rxq.is_empty()
    }

    /// Handles what the epoll set reports (without waiting).
    pub fn process_events(&mut self) {
        let mut events = [EpollEvent::default(); 64];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("vsock: epoll_wait failed: {e}");
                return;
            }
        };
        let now = Instant::now();
        for ev in &events[..n] {
            let set = EventSet::from_bits_truncate(ev.events);
            match ev.data() {
                LISTENER => self.accept(now),
                TIMER => {
                    let _ = self.timer.wait();
                    self.sweep(now);
                }
                data => {
                    let fd = data as RawFd;
                    match self.watches.get(&fd).copied() {
                        Some(Watch::Pending) => self.read_connect_line(fd, now),
                        Some(Watch::Conn(key, _)) => self.conn_event(key, set, now),
                        None => {}
                    }
                }
            }
        }
        self.update_timer();
    }

    /// A packet from the guest. `data` is the payload of an RW packet.
    pub fn send<B: BitmapSlice>(&mut self, pkt: &Packet, data: Option<&VolatileSlice<B>>) {
        let now = Instant::now();
        if pkt.dst_cid != HOST_CID || pkt.src_cid != self.cid {
            self.stats.tx_dropped += 1;
            log::debug!("vsock: dropped a guest packet from CID {} to CID {} (the guest is CID {}, the host 2)", pkt.src_cid, pkt.dst_cid, self.cid);
            return;
        }
        let key = (pkt.dst_port, pkt.src_port);
        if pkt.type_ != TYPE_STREAM {
            // Not a stream: refuse, unless it is an RST itself.
            if pkt.op != op::RST {
                self.queue_rst(pkt);
            }
            return;
        }
        if !self.conns.contains_key(&key) {
            match pkt.op {
                op::REQUEST => self.guest_connect(pkt),
                op::RST => {}
                _ => self.queue_rst(pkt),
            }
            self.update_timer();
            return;
        }
        if pkt.op == op::RST {
            self.remove(key);
            return;
        }
        self.with_conn(key, now, |c, now| c.on_guest_packet(pkt, data, now));
        self.update_timer();
    }

    /// Fills the next packet for the guest: `hdr` gets the header, `data`
    /// the payload of RW packets. Returns false when nothing is owed.
    pub fn recv<B: BitmapSlice>(
        &mut self,
        hdr: &mut Packet,
        data: Option<&VolatileSlice<B>>,
    ) -> bool {
        let now = Instant::now();
        // One pass at most: a connection that cannot fill this buffer (RW
        // owed but the guest gave no room for data) goes to the back and
        // must not make this loop spin.
        for _ in 0..self.rxq.len() {
            let Some(item) = self.rxq.pop_front() else {
                break;
            };
            match item {
                RxItem::Rst(p) => {
                    *hdr = Packet {
                        src_cid: HOST_CID,
                        dst_cid: self.cid,
                        src_port: p.dst_port,
                        dst_port: p.src_port,
                        type_: p.type_,
                        op: op::RST,
                        ..Packet::default()
                    };
                    return true;
                }
                RxItem::Conn(key) => {
                    let Some(conn) = self.conns.get_mut(&key) else {
                        continue;
                    };
                    let filled = conn.next_for_guest(hdr, data, now);
                    if filled {
                        hdr.src_cid = HOST_CID;
                        hdr.dst_cid = self.cid;
                        hdr.src_port = key.0;
                        hdr.dst_port = key.1;
                        hdr.type_ = TYPE_STREAM;
                    }
                    if conn.is_over() {
                        self.remove(key);
                    } else {
                        // Round robin: a connection with more to say goes to
                        // the back; its socket interest may have changed.
                        if conn.has_rx() {
                            self.rxq.push_back(RxItem::Conn(key));
                        }
                        self.rewatch(key);
                    }
                    if filled {
                        return true;
                    }
                }
            }
        }
        false
    }

    fn queue_rst(&mut self, pkt: &Packet) {
        // A guest that floods unroutable packets gets RSTs only as fast as
        // it takes them.
        if self.rxq.len() < 4 * MAX_CONNECTIONS {
            self.rxq.push_back(RxItem::Rst(*pkt));
        }
    }

    /// The guest connects to host port `pkt.dst_port`: connect to
    /// `PATH_<port>`, or refuse.
    fn guest_connect(&mut self, pkt: &Packet) {
        let key = (pkt.dst_port, pkt.src_port);
        if self.conns.len() >= MAX_CONNECTIONS {
            log::warn!("vsock: {MAX_CONNECTIONS} connections open; refusing another");
            self.stats.refused += 1;
            return self.queue_rst(pkt);
        }
        let target = port_path(&self.path, pkt.dst_port);
        match connect_nonblocking(&target) {
            Ok(stream) => {
                self.stats.guest_connections += 1;
                let conn = Conn::guest_initiated(stream, key.0, key.1, pkt);
                self.insert(key, conn);
            }
            Err(e) => {
                log::debug!(
                    "vsock: guest connection to port {} refused: {}: {e}",
                    pkt.dst_port,
                    target.display()
                );
                self.stats.refused += 1;
                self.queue_rst(pkt);
            }
        }
    }

    fn insert(&mut self, key: Key, conn: Conn) {
        let has_rx = conn.has_rx();
        self.conns.insert(key, conn);
        if has_rx {
            self.rxq.push_back(RxItem::Conn(key));
        }
        self.rewatch(key);
    }

    fn remove(&mut self, key: Key) {
        if let Some(conn) = self.conns.remove(&key) {
            self.unwatch(conn.fd());
        }
    }

    /// Runs `f` on a connection, then queues what it owes the guest and
    /// updates what its socket is watched for.
    fn with_conn(&mut self, key: Key, now: Instant, f: impl FnOnce(&mut Conn, Instant)) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let had_rx = conn.has_rx();
        f(conn, now);
        if !had_rx && conn.has_rx() {
            self.rxq.push_back(RxItem::Conn(key));
        }
        if conn.is_over() {
            self.remove(key);
        } else {
            self.rewatch(key);
        }
    }

    /// Registers, changes or removes a connection's socket in the epoll
    /// set so it matches what the connection wants now. A socket that
    /// wants nothing is removed: epoll would report its hang-up anyway.
    fn rewatch(&mut self, key: Key) {
        let Some(conn) = self.conns.get(&key) else {
            return;
        };
        let fd = conn.fd();
        let want = conn.interest();
        let current = match self.watches.get(&fd) {
            Some(Watch::Conn(_, w)) => Some(*w),
            _ => None,
        };
        if current == Some(want) || (current.is_none() && want == (false, false)) {
            return;
        }
        if want == (false, false) {
            return self.unwatch(fd);
        }
        let mut set = EventSet::empty();
        if want.0 {
            set |= EventSet::IN | EventSet::READ_HANG_UP;
        }
        if want.1 {
            set |= EventSet::OUT;
        }
        let operation = if current.is_some() {
            ControlOperation::Modify
        } else {
            ControlOperation::Add
        };
        match self
            .epoll
            .ctl(operation, fd, EpollEvent::new(set, fd as u64))
        {
            Ok(()) => {
                self.watches.insert(fd, Watch::Conn(key, want));
            }
            Err(e) => {
                log::warn!("vsock: cannot watch a connection's socket: {e}; resetting it");
                if let Some(c) = self.conns.get_mut(&key) {
                    c.kill();
                    if !self
                        .rxq
                        .iter()
                        .any(|i| matches!(i, RxItem::Conn(k) if *k == key))
                    {
                        self.rxq.push_back(RxItem::Conn(key));
                    }
                }
            }
        }
    }

    fn unwatch(&mut self, fd: RawFd) {
        if self.watches.remove(&fd).is_some() {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
    }

    fn conn_event(&mut self, key: Key, set: EventSet, now: Instant) {
        let hup = set.intersects(EventSet::HANG_UP | EventSet::ERROR);
        self.with_conn(key, now, |c, now| {
            if set.contains(EventSet::OUT) {
                c.writable(now);
            }
            if set.intersects(EventSet::IN | EventSet::READ_HANG_UP) || hup {
                c.readable(hup);
            }
        });
    }

    /// Accepts host connections; each must first send its CONNECT line.
    fn accept(&mut self, now: Instant) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("vsock: accept on {} failed: {e}", self.path.display());
                    return;
                }
            };
            if self.pending.len() >= MAX_PENDING || self.conns.len() >= MAX_CONNECTIONS {
                log::warn!("vsock: too many host connections; closing a new one");
                self.stats.refused += 1;
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            if self
                .epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, fd as u64),
                )
                .is_ok()
            {
                self.watches.insert(fd, Watch::Pending);
                self.pending.insert(fd, PendingHost { stream, since: now });
                // The line may be there already.
                self.read_connect_line(fd, now);
            }
        }
    }

    /// Reads a host socket's `CONNECT <port>\n` (without taking any byte
    /// after it) and opens the connection to the guest.
    fn read_connect_line(&mut self, fd: RawFd, now: Instant) {
        let Some(p) = self.pending.get(&fd) else {
            return;
        };
        let mut buf = [0u8; CONNECT_LINE_MAX];
        // Peek first so that data sent right after the line stays in the
        // socket for the guest.
        // SAFETY: recv into a local buffer of the given length.
        let n = unsafe {
            libc::recv(
                p.stream.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_PEEK,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) {
                return;
            }
        }
        let n = n.max(0) as usize;
        let line_end = buf[..n].iter().position(|&b| b == b'\n');
        let verdict = match line_end {
            Some(end) => parse_connect(&buf[..end]).ok_or("not `CONNECT <port>`"),
            None if n == 0 => Err("closed before its CONNECT line"),
            None if n == CONNECT_LINE_MAX => Err("line too long"),
            None => return, // wait for the rest of the line
        };
        self.unwatch(fd);
        let Some(mut p) = self.pending.remove(&fd) else {
            return;
        };
        let port = match verdict {
            Ok(port) => port,
            Err(why) => {
                log::debug!("vsock: host connection closed: {why}");
                self.stats.refused += 1;
                return;
            }
        };
        let mut line = vec![0u8; line_end.unwrap_or(0) + 1];
        if io::Read::read_exact(&mut p.stream, &mut line).is_err() {
            return;
        }
        let local = self.allocate_port();
        self.stats.host_connections += 1;
        let conn = Conn::host_initiated(p.stream, local, port, now);
        self.insert((local, port), conn);
    }

    fn allocate_port(&mut self) -> u32 {
        loop {
            self.last_local_port = self.last_local_port.wrapping_add(1);
            if self.last_local_port >= 1 << 31 || self.last_local_port < LOCAL_PORT_FIRST {
                self.last_local_port = LOCAL_PORT_FIRST;
            }
            let port = self.last_local_port;
            if !self.conns.keys().any(|&(local, _)| local == port) {
                return port;
            }
        }
    }

    /// Resets connections whose deadline passed; closes host sockets that
    /// never sent their CONNECT line.
    fn sweep(&mut self, now: Instant) {
        let expired: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.expired(now))
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            log::debug!("vsock {}:{}: timed out; resetting", key.0, key.1);
            self.stats.timeouts += 1;
            // A host-initiated connection the guest never answered: its
            // socket is closed and the guest told to forget the request.
            self.with_conn(key, now, |c, _| c.kill());
        }
        let stalled: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.wants_tick())
            .map(|(k, _)| *k)
            .collect();
        for key in stalled {
            self.with_conn(key, now, |c, _| c.tick());
        }
        let stale: Vec<RawFd> = self
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.since) >= CONNECT_LINE_TIMEOUT)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in stale {
            self.unwatch(fd);
            self.pending.remove(&fd);
            self.stats.refused += 1;
        }
    }

    /// Runs the timer while anything has a deadline.
    fn update_timer(&mut self) {
        let need = !self.pending.is_empty() || self.conns.values().any(Conn::wants_tick);
        if need == self.timer_armed {
            return;
        }
        let result = if need {
            self.timer.reset(TICK, Some(TICK))
        } else {
            self.timer.reset(Duration::ZERO, None)
        };
        match result {
            Ok(()) => self.timer_armed = need,
            Err(e) => log::warn!("vsock: cannot set the deadline timer: {e}"),
        }
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `sizeof(sockaddr_un.sun_path)`.
const SUN_PATH_MAX: usize = 108;

/// The socket a guest connection to `port` goes to.
pub fn port_path(path: &Path, port: u32) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

/// Parses `CONNECT <port>` (Firecracker accepts any case and extra blanks).
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_whitespace();
    if !words.next()?.eq_ignore_ascii_case("connect") {
        return None;
    }
    let port = words.next()?.parse().ok()?;
    words.next().is_none().then_some(port)
}

/// Binds the listening socket, replacing a stale one.
fn bind(path: &Path) -> Result<UnixListener, VsockError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(VsockError::InUse(path.to_path_buf()));
            }
            // Nobody listens: a VMM that died left it.
            let _ = std::fs::remove_file(path);
        }
        Ok(_) => return Err(VsockError::NotASocket(path.to_path_buf())),
        Err(_) => {}
    }
    UnixListener::bind(path).map_err(|source| VsockError::Bind {
        path: path.to_path_buf(),
        source,
    })
}

/// Connects to a Unix stream socket without blocking: a listener whose
/// backlog is full refuses (EAGAIN) instead of stalling the event loop.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= SUN_PATH_MAX {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket that nothing else owns.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `addr` is a valid sockaddr_un and the length is its size.
    let r = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines_parse_as_firecracker_does() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"connect 52"), Some(52));
        assert_eq!(parse_connect(b"  Connect   4294967295 "), Some(u32::MAX));
        assert_eq!(parse_connect(b"CONNECT"), None);
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"CONNECT 4294967296"), None);
        assert_eq!(parse_connect(b"CONNECT 5 6"), None);
        assert_eq!(parse_connect(b"LISTEN 5"), None);
        assert_eq!(parse_connect(b"CONNECT \xff"), None);
    }

    #[test]
    fn port_paths_append_the_port() {
        assert_eq!(
            port_path(Path::new("/tmp/v.sock"), 52),
            PathBuf::from("/tmp/v.sock_52")
        );
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        drop(UnixListener::bind(&path).unwrap()); // stale: nobody listens
        let m = Muxer::new(3, &path).unwrap();
        assert!(matches!(Muxer::new(3, &path), Err(VsockError::InUse(_))));
        drop(m);
        assert!(!path.exists(), "the socket is removed with the device");
        std::fs::write(&path, b"data").unwrap();
        assert!(matches!(
            Muxer::new(3, &path),
            Err(VsockError::NotASocket(_))
        ));
        let long = dir.path().join("x".repeat(100));
        assert!(matches!(
            Muxer::new(3, &long),
            Err(VsockError::PathTooLong { .. })
        ));
    }
}
