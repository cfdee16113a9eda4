//! One vsock stream connection: a guest port on one side, a host Unix
//! stream socket on the other, and the state the virtio-vsock protocol
//! keeps between them (virtio 1.2, 5.10.6).
//!
//! - Handshake: the side that opens sends REQUEST, the other RESPONSE (or
//!   RST to refuse). A host-initiated connection waits for the guest's
//!   RESPONSE for at most [`REQUEST_TIMEOUT`], then writes `OK <port>\n` to
//!   the host socket (Firecracker's convention).
//! - Flow control: every packet carries `buf_alloc` (the sender's receive
//!   buffer) and `fwd_cnt` (bytes it has consumed); a sender may have at
//!   most `buf_alloc - (sent - fwd_cnt)` bytes in flight. kiln buffers up to
//!   [`CONN_BUF`] bytes from the guest that the host socket has not taken
//!   yet; a guest that sends more has ignored its credit and is reset.
//!   Towards the guest kiln reads from the host socket only as much as the
//!   guest has room for, asks for credit once when it has none, and tells
//!   the guest about freed space before it runs dry.
//! - Closing: a guest SHUTDOWN(SEND) becomes `shutdown(SHUT_WR)` on the host
//!   socket once the buffered bytes are written, so the host reads EOF; EOF
//!   on the host socket becomes SHUTDOWN(SEND) to the guest, or
//!   SHUTDOWN(SEND|RCV) when the host closed its socket altogether. A side
//!   that has been told both is answered with RST, which ends the
//!   connection; one that does not answer within [`SHUTDOWN_TIMEOUT`] gets
//!   an RST.
//!
//! Nothing here knows about queues or epoll: the muxer feeds packets and
//! socket readiness in, and asks for packets to hand to the guest.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileSlice, WriteVolatile};

use super::proto::{op, shutdown, Packet};

/// Bytes kiln buffers per connection for the host socket (the `buf_alloc`
/// it advertises to the guest).
pub const CONN_BUF: u32 = 256 * 1024;
/// Tell the guest about freed buffer space once it believes less than this
/// is left.
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF / 2;
/// How long a host-initiated connection waits for the guest's RESPONSE.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a closing connection waits for the other side's RST, or for the
/// host socket to take the last buffered bytes.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Opened by the host: REQUEST to the guest pending or sent.
    LocalInit,
    /// Opened by the guest: our RESPONSE pending.
    PeerInit,
    /// Data flows (possibly in one direction only, after a SHUTDOWN).
    Established,
    /// We told the guest the host will neither send nor receive: waiting
    /// for its RST.
    Closing,
    /// An RST to the guest is pending; the connection ends once it is sent.
    Dead,
}

/// Packets owed to the guest, one bit each (sent in this order of priority).
mod owed {
    pub const RST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const REQUEST: u8 = 4;
    /// The host socket is readable: data (or its EOF) to deliver.
    pub const RW: u8 = 8;
    pub const CREDIT_REQUEST: u8 = 16;
    pub const CREDIT_UPDATE: u8 = 32;
}

/// One connection.
#[derive(Debug)]
pub struct Conn {
    /// The host-side port (the one the guest connected to, or the one kiln
    /// allocated for a host-initiated connection).
    pub local_port: u32,
    /// The guest-side port.
    pub peer_port: u32,
    stream: UnixStream,
    state: State,
    owed: u8,
    /// Guest bytes the host socket has not taken yet.
    to_host: VecDeque<u8>,
    /// Guest bytes written to the host socket (our `fwd_cnt`).
    fwd_cnt: Wrapping<u32>,
    /// The `fwd_cnt` the guest last heard from us.
    fwd_cnt_told: Wrapping<u32>,
    /// The guest's receive buffer size and consumed count (its credit).
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// A CREDIT_REQUEST went out and no credit came since.
    credit_asked: bool,
    /// The guest will not receive / send any more (its SHUTDOWN flags).
    peer_no_recv: bool,
    peer_no_send: bool,
    /// The host socket's write side was shut (the host read EOF).
    host_write_shut: bool,
    /// The host socket read EOF (SHUTDOWN sent to the guest).
    host_eof: bool,
    /// The host socket hung up altogether (EPOLLHUP).
    host_hup: bool,
    /// When the connection is reset if nothing moves it on.
    expiry: Option<Instant>,
}

impl Conn {
    /// A connection the host opened to guest port `peer_port`; the REQUEST
    /// is owed to the guest.
    pub fn host_initiated(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        now: Instant,
    ) -> Conn {
        let mut c = Conn::new(
            stream,
            local_port,
            peer_port,
            State::LocalInit,
            owed::REQUEST,
        );
        c.expiry = Some(now + REQUEST_TIMEOUT);
        c
    }

    /// A connection the guest opened from `peer_port` to host port
    /// `local_port`, accepted: the RESPONSE is owed.
    pub fn guest_initiated(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        peer: &Packet,
    ) -> Conn {
        let mut c = Conn::new(
            stream,
            local_port,
            peer_port,
            State::PeerInit,
            owed::RESPONSE,
        );
        c.peer_buf_alloc = peer.buf_alloc;
        c.peer_fwd_cnt = Wrapping(peer.fwd_cnt);
        c
    }

    fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: State, owed: u8) -> Conn {
        Conn {
            local_port,
            peer_port,
            stream,
            state,
            owed,
            to_host: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            fwd_cnt_told: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            credit_asked: false,
            peer_no_recv: false,
            peer_no_send: false,
            host_write_shut: false,
            host_eof: false,
            host_hup: false,
            expiry: None,
        }
    }

    /// The host socket.
    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// The connection's state.
    #[cfg(test)]
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether a packet is owed to the guest.
    pub fn has_rx(&self) -> bool {
        self.owed != 0
    }

    /// Whether the connection is over (its RST was sent): drop it.
    pub fn is_over(&self) -> bool {
        self.state == State::Dead && self.owed & owed::RST == 0
    }

    /// Whether the connection's deadline has passed.
    pub fn expired(&self, now: Instant) -> bool {
        self.expiry.is_some_and(|t| t <= now)
    }

    /// Whether the connection needs the muxer's periodic tick: it has a
    /// deadline, or it waits for credit the guest may never volunteer.
    pub fn wants_tick(&self) -> bool {
        self.expiry.is_some() || self.credit_stalled()
    }

    /// Host data waits, the guest has no credit and was asked for some.
    fn credit_stalled(&self) -> bool {
        self.credit_asked && self.peer_credit() == 0
    }

    /// The periodic tick: a guest that did not answer our CREDIT_REQUEST
    /// (a driver need not volunteer updates) is asked again, so a missed
    /// update cannot stall the connection for good.
    pub fn tick(&mut self) {
        if self.credit_stalled() {
            self.credit_asked = false;
        }
    }

    /// Ends the connection with an RST to the guest; buffered bytes are
    /// dropped.
    pub fn kill(&mut self) {
        self.state = State::Dead;
        self.owed = owed::RST;
        self.to_host.clear();
        self.expiry = None;
    }

    /// Ends the connection with the RST the caller is sending right now.
    fn reset_now(&mut self) -> u16 {
        self.kill();
        self.owed = 0;
        op::RST
    }

    /// Credit the guest has: bytes we may send it now.
    fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt - self.peer_fwd_cnt;
        self.peer_buf_alloc.saturating_sub(in_flight.0)
    }

    /// Whether host data may flow to the guest in this state.
    fn may_send_data(&self) -> bool {
        self.state == State::Established && !self.peer_no_recv && !self.host_eof
    }

    /// What to watch the host socket for: (readable, writable).
    pub fn interest(&self) -> (bool, bool) {
        let readable = self.may_send_data()
            && self.owed & owed::RW == 0
            && (self.peer_credit() > 0 || !self.credit_asked);
        (readable, !self.to_host.is_empty())
    }

    /// The host socket is readable (`hup`: the host closed it).
    pub fn readable(&mut self, hup: bool) {
        self.host_hup |= hup;
        if self.may_send_data() {
            self.owed |= owed::RW;
        }
    }

    /// The host socket is writable: write out what the guest sent.
    pub fn writable(&mut self, now: Instant) {
        if let Err(e) = self.flush_to_host() {
            log::debug!(
                "vsock {}:{}: the host socket failed: {e}",
                self.local_port,
                self.peer_port
            );
            self.kill();
            return;
        }
        self.after_flush(now);
    }

    /// Writes buffered guest bytes to the host socket until it would block.
    fn flush_to_host(&mut self) -> io::Result<()> {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt += n as u32;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// After guest bytes went to the host: pass on a guest SHUTDOWN, tell
    /// the guest about the freed space.
    fn after_flush(&mut self, now: Instant) {
        if !self.to_host.is_empty() {
            return self.maybe_credit_update();
        }
        if self.peer_no_send && !self.host_write_shut {
            self.host_write_shut = true;
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        if self.peer_no_send && self.peer_no_recv {
            // The guest is done both ways and has nothing left here.
            self.state = State::Dead;
            self.owed = owed::RST;
            self.expiry = None;
            return;
        }
        if self.state == State::Closing && self.expiry.is_none() {
            self.expiry = Some(now + SHUTDOWN_TIMEOUT);
        }
        self.maybe_credit_update();
    }

    /// Owes the guest a CREDIT_UPDATE when it believes it has less than
    /// the threshold left and we have more room than that.
    fn maybe_credit_update(&mut self) {
        if self.state != State::Established || self.peer_no_send {
            return;
        }
        let received = self.fwd_cnt + Wrapping(self.to_host.len() as u32);
        let seen_free = CONN_BUF.saturating_sub((received - self.fwd_cnt_told).0);
        let free = CONN_BUF - self.to_host.len() as u32;
        if seen_free < CREDIT_UPDATE_THRESHOLD && free > seen_free {
            self.owed |= owed::CREDIT_UPDATE;
        }
    }

    /// A packet from the guest for this connection (RSTs are the muxer's).
    /// `data` is its payload for RW packets.
    pub fn on_guest_packet<B: BitmapSlice>(
        &mut self,
        pkt: &Packet,
        data: Option<&VolatileSlice<B>>,
        now: Instant,
    ) {
        self.peer_buf_alloc = pkt.buf_alloc;
        if Wrapping(pkt.fwd_cnt) != self.peer_fwd_cnt {
            self.peer_fwd_cnt = Wrapping(pkt.fwd_cnt);
            self.credit_asked = false;
        }
        match (self.state, pkt.op) {
            (State::LocalInit, op::RESPONSE) => {
                self.state = State::Established;
                self.expiry = None;
                let ack = format!("OK {}\n", self.local_port);
                // A fresh socket's buffer takes a few bytes; if it does not,
                // the host end is broken.
                if !matches!(self.stream.write(ack.as_bytes()), Ok(n) if n == ack.len()) {
                    self.kill();
                }
            }
            (State::Established, op::RW) if !self.peer_no_send => {
                let Some(data) = data else { return };
                if let Err(e) = self.take_data(data) {
                    log::debug!(
                        "vsock {}:{}: {e}; resetting the connection",
                        self.local_port,
                        self.peer_port
                    );
                    self.kill();
                    return;
                }
                self.after_flush(now);
            }
            (State::Established | State::Closing, op::SHUTDOWN) => {
                self.peer_no_recv |= pkt.flags & shutdown::RCV != 0;
                self.peer_no_send |= pkt.flags & shutdown::SEND != 0;
                if self.peer_no_recv {
                    self.owed &= !(owed::RW | owed::CREDIT_REQUEST);
                }
                if self.state == State::Closing && self.peer_no_send && self.peer_no_recv {
                    self.kill();
                    return;
                }
                if self.peer_no_send && self.peer_no_recv && !self.to_host.is_empty() {
                    self.expiry = Some(now + SHUTDOWN_TIMEOUT);
                }
                self.after_flush(now);
            }
            (State::Established | State::PeerInit, op::CREDIT_REQUEST) => {
                self.owed |= owed::CREDIT_UPDATE;
            }
            // CREDIT_UPDATE carries nothing but the credit read above.
            (_, op::CREDIT_UPDATE) => {}
            (state, op) => log::debug!(
                "vsock {}:{}: ignored packet op {op} in state {state:?}",
                self.local_port,
                self.peer_port
            ),
        }
    }

    /// Takes a guest payload: straight to the host socket when nothing is
    /// waiting, the rest into the buffer (within the credit we gave).
    fn take_data<B: BitmapSlice>(&mut self, data: &VolatileSlice<B>) -> Result<(), String> {
        let mut done = 0;
        if self.to_host.is_empty() {
            loop {
                match self
                    .stream
                    .write_volatile(&data.offset(done).map_err(|e| e.to_string())?)
                {
                    Ok(n) => {
                        done += n;
                        self.fwd_cnt += n as u32;
                        if done == data.len() || n == 0 {
                            break;
                        }
                    }
                    Err(vm_memory::VolatileMemoryError::IOError(e))
                        if e.kind() == io::ErrorKind::WouldBlock =>
                    {
                        break
                    }
                    Err(vm_memory::VolatileMemoryError::IOError(e))
                        if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("the host socket failed: {e}")),
                }
            }
        }
        let rest = data.len() - done;
        if rest == 0 {
            return Ok(());
        }
        if self.to_host.len() + rest > CONN_BUF as usize {
            return Err(format!(
                "the guest sent {rest} bytes with {} already buffered, beyond the {CONN_BUF} bytes of credit it was given",
                self.to_host.len()
            ));
        }
        let mut bytes = vec![0u8; rest];
        data.offset(done)
            .map_err(|e| e.to_string())?
            .copy_to(&mut bytes[..]);
        self.to_host.extend(bytes);
        Ok(())
    }

    /// Fills `hdr` (and `data`, for RW) with the next packet owed to the
    /// guest: op, flags, len, credit. Returns false when nothing is owed
    /// after all (e.g. the host socket had no data yet). The caller sets
    /// CIDs, ports and type.
    pub fn next_for_guest<B: BitmapSlice>(
        &mut self,
        hdr: &mut Packet,
        data: Option<&VolatileSlice<B>>,
        now: Instant,
    ) -> bool {
        hdr.flags = 0;
        hdr.len = 0;
        let op = if self.take(owed::RST) {
            op::RST
        } else if self.take(owed::RESPONSE) {
            self.state = State::Established;
            op::RESPONSE
        } else if self.take(owed::REQUEST) {
            op::REQUEST
        } else if self.owed & owed::RW != 0 && data.is_some_and(|d| !d.is_empty()) {
            match self.read_for_guest(hdr, data.expect("checked above"), now) {
                Some(op) => op,
                None => return self.next_for_guest(hdr, data, now),
            }
        } else if self.take(owed::CREDIT_REQUEST) {
            op::CREDIT_REQUEST
        } else if self.take(owed::CREDIT_UPDATE) {
            op::CREDIT_UPDATE
        } else {
            return false;
        };
        hdr.op = op;
        hdr.buf_alloc = CONN_BUF;
        hdr.fwd_cnt = self.fwd_cnt.0;
        self.fwd_cnt_told = self.fwd_cnt;
        self.owed &= !owed::CREDIT_UPDATE;
        true
    }

    fn take(&mut self, bit: u8) -> bool {
        let had = self.owed & bit != 0;
        self.owed &= !bit;
        had
    }

    /// Reads host data for the guest into `data`, within its credit.
    /// Returns the op to send, or None when the socket had nothing after
    /// all (the RW bit is then cleared).
    fn read_for_guest<B: BitmapSlice>(
        &mut self,
        hdr: &mut Packet,
        data: &VolatileSlice<B>,
        now: Instant,
    ) -> Option<u16> {
        if !self.may_send_data() {
            self.owed &= !owed::RW;
            return None;
        }
        let credit = self.peer_credit() as usize;
        if credit == 0 {
            self.owed &= !owed::RW;
            if self.credit_asked {
                return None;
            }
            self.credit_asked = true;
            return Some(op::CREDIT_REQUEST);
        }
        let want = data.len().min(credit);
        let mut buf = data.subslice(0, want).ok()?;
        loop {
            return match self.stream.read_volatile(&mut buf) {
                Ok(0) => {
                    self.owed &= !owed::RW;
                    self.host_eof = true;
                    hdr.flags = shutdown::SEND;
                    if self.host_hup {
                        hdr.flags |= shutdown::RCV;
                        if self.peer_no_send && self.peer_no_recv {
                            return Some(self.reset_now());
                        }
                        self.state = State::Closing;
                        self.expiry = Some(now + SHUTDOWN_TIMEOUT);
                    }
                    Some(op::SHUTDOWN)
                }
                Ok(n) => {
                    hdr.len = n as u32;
                    self.rx_cnt += n as u32;
                    Some(op::RW)
                }
                Err(vm_memory::VolatileMemoryError::IOError(e))
                    if e.kind() == io::ErrorKind::Interrupted =>
                {
                    continue
                }
                Err(vm_memory::VolatileMemoryError::IOError(e))
                    if e.kind() == io::ErrorKind::WouldBlock =>
                {
                    self.owed &= !owed::RW;
                    None
                }
                Err(e) => {
                    log::debug!(
                        "vsock {}:{}: reading the host socket failed: {e}",
                        self.local_port,
                        self.peer_port
                    );
                    Some(self.reset_now())
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn pkt(op: u16) -> Packet {
        Packet {
            op,
            buf_alloc: 64 * 1024,
            ..Packet::default()
        }
    }

    fn slice(buf: &mut [u8]) -> VolatileSlice<'_, ()> {
        VolatileSlice::from(buf)
    }

    fn guest_conn() -> (Conn, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut c = Conn::guest_initiated(a, 52, 1000, &pkt(op::REQUEST));
        let mut hdr = Packet::default();
        assert!(c.next_for_guest::<()>(&mut hdr, None, Instant::now()));
        assert_eq!(hdr.op, op::RESPONSE);
        assert_eq!(c.state(), State::Established);
        (c, b)
    }

    #[test]
    fn host_initiated_connection_acks_after_the_response() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let now = Instant::now();
        let mut c = Conn::host_initiated(a, 1 << 30, 52, now);
        let mut hdr = Packet::default();
        assert!(c.next_for_guest::<()>(&mut hdr, None, now));
        assert_eq!(hdr.op, op::REQUEST);
        assert!(!c.has_rx());
        assert!(c.expired(now + REQUEST_TIMEOUT));
        c.on_guest_packet::<()>(&pkt(op::RESPONSE), None, now);
        assert_eq!(c.state(), State::Established);
        assert!(!c.wants_tick());
        let mut ack = [0u8; 32];
        let n = b.read(&mut ack).unwrap();
        assert_eq!(&ack[..n], b"OK 1073741824\n");
    }

    #[test]
    fn data_flows_both_ways_within_credit() {
        let (mut c, mut host) = guest_conn();
        // Guest -> host.
        let mut payload = *b"hello";
        let mut p = pkt(op::RW);
        p.len = 5;
        c.on_guest_packet(&p, Some(&slice(&mut payload)), Instant::now());
        let mut got = [0u8; 5];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        // Host -> guest, limited by the guest's credit (64 KiB here).
        host.write_all(&vec![7u8; 100_000]).unwrap();
        c.readable(false);
        let mut total = 0;
        let mut buf = vec![0u8; 4096];
        loop {
            let mut hdr = Packet::default();
            if !c.next_for_guest(&mut hdr, Some(&slice(&mut buf)), Instant::now()) {
                break;
            }
            match hdr.op {
                op::RW => total += hdr.len as usize,
                op::CREDIT_REQUEST => break,
                other => panic!("unexpected op {other}"),
            }
            c.readable(false);
        }
        assert_eq!(total, 64 * 1024);
        assert_eq!(c.interest(), (false, false), "no credit: stop reading");
        // The guest consumed it all: reading goes on.
        let mut credit = pkt(op::CREDIT_UPDATE);
        credit.fwd_cnt = total as u32;
        c.on_guest_packet::<()>(&credit, None, Instant::now());
        assert_eq!(c.interest(), (true, false));
    }

    #[test]
    fn an_unanswered_credit_request_is_repeated_on_the_tick() {
        let (mut c, mut host) = guest_conn();
        host.write_all(&vec![7u8; 70_000]).unwrap();
        let mut buf = vec![0u8; 65536];
        let mut ops = Vec::new();
        for _ in 0..2 {
            c.readable(false);
            let mut hdr = Packet::default();
            assert!(c.next_for_guest(&mut hdr, Some(&slice(&mut buf)), Instant::now()));
            ops.push(hdr.op);
        }
        assert_eq!(ops, [op::RW, op::CREDIT_REQUEST]);
        // Asked once: nothing more until the tick.
        c.readable(false);
        let mut hdr = Packet::default();
        assert!(!c.next_for_guest(&mut hdr, Some(&slice(&mut buf)), Instant::now()));
        assert!(c.wants_tick() && c.interest() == (false, false));
        c.tick();
        assert_eq!(c.interest(), (true, false), "watch the socket again");
        c.readable(false);
        let mut hdr = Packet::default();
        assert!(c.next_for_guest(&mut hdr, Some(&slice(&mut buf)), Instant::now()));
        assert_eq!(hdr.op, op::CREDIT_REQUEST);
    }

    #[test]
    fn guest_shutdown_reaches_the_host_as_eof_and_rst_ends_it() {
        let (mut c, mut host) = guest_conn();
        let mut p = pkt(op::SHUTDOWN);
        p.flags = shutdown::SEND;
        c.on_guest_packet::<()>(&p, None, Instant::now());
        let mut buf = [0u8; 8];
        assert_eq!(host.read(&mut buf).unwrap(), 0, "host reads EOF");
        assert!(!c.has_rx());
        p.flags = shutdown::RCV;
        c.on_guest_packet::<()>(&p, None, Instant::now());
        let mut hdr = Packet::default();
        assert!(c.next_for_guest::<()>(&mut hdr, None, Instant::now()));
        assert_eq!(hdr.op, op::RST);
        assert!(c.is_over());
    }

    #[test]
    fn host_half_close_and_full_close() {
        let (mut c, host) = guest_conn();
        host.shutdown(std::net::Shutdown::Write).unwrap();
        c.readable(false);
        let mut buf = [0u8; 64];
        let mut hdr = Packet::default();
        assert!(c.next_for_guest(&mut hdr, Some(&slice(&mut buf)), Instant::now()));
        assert_eq!((hdr.op, hdr.flags), (op::SHUTDOWN, shutdown::SEND));
        assert_eq!(c.state(), State::Established, "the guest may still send");
        drop(host);

        let (mut c, host) = guest_conn();
        drop(host);
        c.readable(true);
        let now = Instant::now();
        assert!(c.next_for_guest(&mut hdr, Some(&slice(&mut buf)), now));
        assert_eq!(hdr.op, op::SHUTDOWN);
        assert_eq!(hdr.flags, shutdown::SEND | shutdown::RCV);
        assert_eq!(c.state(), State::Closing);
        assert!(c.expired(now + SHUTDOWN_TIMEOUT));
    }

    #[test]
    fn a_guest_beyond_its_credit_is_reset() {
        let (mut c, _host) = guest_conn();
        // Nobody reads the host end: the socket buffer, then ours, fill up.
        let mut chunk = vec![1u8; 64 * 1024];
        let mut reset = false;
        for _ in 0..200 {
            let mut p = pkt(op::RW);
            p.len = chunk.len() as u32;
            c.on_guest_packet(&p, Some(&slice(&mut chunk)), Instant::now());
            if c.state() == State::Dead {
                reset = true;
                break;
            }
        }
        assert!(reset);
        let mut hdr = Packet::default();
        assert!(c.next_for_guest::<()>(&mut hdr, None, Instant::now()));
        assert_eq!(hdr.op, op::RST);
    }

    #[test]
    fn freed_space_is_announced() {
        let (mut c, mut host) = guest_conn();
        let mut chunk = vec![1u8; 64 * 1024];
        // Send 3 x 64 KiB that the host reads at once: the guest believes
        // only 64 KiB are left, so kiln owes it an update.
        for _ in 0..3 {
            let mut p = pkt(op::RW);
            p.len = chunk.len() as u32;
            c.on_guest_packet(&p, Some(&slice(&mut chunk)), Instant::now());
            let mut sink = vec![0u8; 64 * 1024];
            host.read_exact(&mut sink).unwrap();
        }
        let mut hdr = Packet::default();
        assert!(c.next_for_guest::<()>(&mut hdr, None, Instant::now()));
        assert_eq!(hdr.op, op::CREDIT_UPDATE);
        assert_eq!(hdr.fwd_cnt, 3 * 64 * 1024);
        assert_eq!(hdr.buf_alloc, CONN_BUF);
    }
}
