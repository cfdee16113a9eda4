//! Device tests: the guest side is played with split rings in a small
//! guest memory (net's test `Ring`), the host side with real Unix sockets
//! in a temporary directory.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};

use super::proto::{op, shutdown, HOST_CID, TYPE_STREAM};
use super::*;
use crate::virtio::net::tests::{Ring, LEN};

const RAM: usize = 0x10_0000;
const GUEST_CID: u64 = 3;
/// Receive buffers: one per descriptor index, header + 4 KiB each.
const RX_BUFS: u64 = 0x1_0000;
const RX_BUF_LEN: u32 = PKT_HEADER_SIZE as u32 + 4096;
/// Transmit packets (header then data) go here.
const TX_BUFS: u64 = 0x8_0000;

struct Rig {
    mem: Memory,
    dev: Vsock,
    queues: Vec<Queue>,
    dir: tempfile::TempDir,
    rx_next: u16,
    rx_seen: usize,
    tx_next: u16,
}

impl Rig {
    fn new() -> Rig {
        let mem = Memory::from_ranges(&[(GuestAddress(0), RAM)]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let dev = Vsock::new(GUEST_CID, &dir.path().join("v.sock")).unwrap();
        let queues = [0x0, 0x1000, 0x2000]
            .iter()
            .map(|&base| Ring::new(&mem, base).queue())
            .collect();
        let mut rig = Rig {
            mem,
            dev,
            queues,
            dir,
            rx_next: 0,
            rx_seen: 0,
            tx_next: 0,
        };
        rig.dev
            .activate(features::VERSION_1 | features::RING_EVENT_IDX)
            .unwrap();
        rig
    }

    fn ring(&self, base: u64) -> Ring<'_> {
        Ring::at(&self.mem, base)
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("v.sock")
    }

    /// Posts `n` receive buffers (one writable descriptor each, header and
    /// data together, as Linux 6.2+ and virtio-drivers do).
    fn post_rx(&mut self, n: u16) {
        for _ in 0..n {
            let i = self.rx_next % LEN;
            let addr = RX_BUFS + u64::from(i) * u64::from(RX_BUF_LEN);
            self.ring(0x0).add_chain(i, &[(addr, RX_BUF_LEN, true)]);
            self.rx_next = self.rx_next.wrapping_add(1);
        }
        self.dev
            .process_queue(RX_QUEUE, &mut self.queues, &self.mem);
    }

    /// The packets the device delivered since the last call.
    fn take_rx(&mut self) -> Vec<(Packet, Vec<u8>)> {
        let used = self.ring(0x0).used();
        let new: Vec<_> = used[self.rx_seen..].to_vec();
        self.rx_seen = used.len();
        new.into_iter()
            .map(|(id, len)| {
                let addr = RX_BUFS + u64::from(id) * u64::from(RX_BUF_LEN);
                let mut raw = vec![0u8; len as usize];
                self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
                let hdr = decode(&raw[..PKT_HEADER_SIZE]);
                (hdr, raw[PKT_HEADER_SIZE..].to_vec())
            })
            .collect()
    }

    /// Sends one packet from the guest (header and data descriptors).
    fn send(&mut self, hdr: Packet, data: &[u8]) {
        let i = (self.tx_next * 2) % LEN;
        let addr = TX_BUFS + u64::from(i) * 0x1000;
        self.mem
            .write_slice(&encode(&hdr), GuestAddress(addr))
            .unwrap();
        self.mem
            .write_slice(data, GuestAddress(addr + 0x100))
            .unwrap();
        let mut bufs = vec![(addr, PKT_HEADER_SIZE as u32, false)];
        if !data.is_empty() {
            bufs.push((addr + 0x100, data.len() as u32, false));
        }
        self.ring(0x1000).add_chain(i, &bufs);
        self.tx_next = self.tx_next.wrapping_add(1);
        self.dev
            .process_queue(TX_QUEUE, &mut self.queues, &self.mem);
    }

    /// Lets the device serve its sockets, as the event loop would.
    fn poll_backend(&mut self) {
        std::thread::sleep(Duration::from_millis(20));
        self.dev.process_backend(&mut self.queues, &self.mem);
    }
}

fn encode(p: &Packet) -> Vec<u8> {
    let mut b = Vec::with_capacity(PKT_HEADER_SIZE);
    b.extend_from_slice(&p.src_cid.to_le_bytes());
    b.extend_from_slice(&p.dst_cid.to_le_bytes());
    b.extend_from_slice(&p.src_port.to_le_bytes());
    b.extend_from_slice(&p.dst_port.to_le_bytes());
    b.extend_from_slice(&p.len.to_le_bytes());
    b.extend_from_slice(&p.type_.to_le_bytes());
    b.extend_from_slice(&p.op.to_le_bytes());
    b.extend_from_slice(&p.flags.to_le_bytes());
    b.extend_from_slice(&p.buf_alloc.to_le_bytes());
    b.extend_from_slice(&p.fwd_cnt.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Packet {
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
    Packet {
        src_cid: u64_at(0),
        dst_cid: u64_at(8),
        src_port: u32_at(16),
        dst_port: u32_at(20),
        len: u32_at(24),
        type_: u16_at(28),
        op: u16_at(30),
        flags: u32_at(32),
        buf_alloc: u32_at(36),
        fwd_cnt: u32_at(40),
    }
}

/// Asserts that kiln closed `s` (EOF, or a reset when it left our bytes
/// unread), within a second.
fn assert_closed(s: &mut UnixStream) {
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("socket still open: {other:?}"),
    }
}

/// A guest packet from guest port `src` to host port `dst`.
fn guest(op: u16, src: u32, dst: u32) -> Packet {
    Packet {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: src,
        dst_port: dst,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 64 * 1024,
        ..Packet::default()
    }
}

#[test]
fn config_space_holds_the_cid_and_features_are_modern() {
    let rig = Rig::new();
    let mut cid = [0u8; 8];
    rig.dev.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), GUEST_CID);
    let mut beyond = [0xffu8; 4];
    rig.dev.read_config(8, &mut beyond);
    assert_eq!(beyond, [0; 4]);
    assert_eq!(rig.dev.device_type(), 19);
    assert_eq!(rig.dev.queue_max_sizes().len(), 3);
    assert!(rig.dev.features() & features::VERSION_1 != 0);
}

#[test]
fn reserved_cids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for cid in [0, 1, 2, u64::from(u32::MAX)] {
        assert!(matches!(
            Vsock::new(cid, &dir.path().join("v")),
            Err(VsockError::BadCid(_))
        ));
    }
}

#[test]
fn guest_connects_to_a_host_listener_and_data_flows_both_ways() {
    let mut rig = Rig::new();
    let listener = UnixListener::bind(muxer::port_path(&rig.path(), 52)).unwrap();
    rig.post_rx(8);
    rig.send(guest(op::REQUEST, 1000, 52), &[]);
    let (mut host, _) = listener.accept().unwrap();
    let rx = rig.take_rx();
    assert_eq!(rx.len(), 1);
    let (hdr, _) = &rx[0];
    assert_eq!(hdr.op, op::RESPONSE);
    assert_eq!((hdr.src_cid, hdr.dst_cid), (HOST_CID, GUEST_CID));
    assert_eq!((hdr.src_port, hdr.dst_port), (52, 1000));
    assert_eq!(hdr.buf_alloc, conn::CONN_BUF);

    let mut rw = guest(op::RW, 1000, 52);
    rw.len = 4;
    rig.send(rw, b"ping");
    let mut got = [0u8; 4];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");

    host.write_all(b"pong").unwrap();
    rig.poll_backend();
    let rx = rig.take_rx();
    assert_eq!(rx.len(), 1, "{rx:?}");
    assert_eq!(rx[0].0.op, op::RW);
    assert_eq!(rx[0].1, b"pong");
    assert_eq!(rx[0].0.len, 4);

    // The host closes: the guest hears SHUTDOWN both ways, answers RST,
    // and the connection is gone (a new packet for it is refused).
    drop(host);
    rig.poll_backend();
    let rx = rig.take_rx();
    assert_eq!(rx.len(), 1, "{rx:?}");
    assert_eq!(rx[0].0.op, op::SHUTDOWN);
    assert_eq!(rx[0].0.flags, shutdown::RCV | shutdown::SEND);
    rig.send(guest(op::RST, 1000, 52), &[]);
    rig.send(guest(op::RW, 1000, 52), &[]);
    let rx = rig.take_rx();
    assert_eq!(rx.len(), 1);
    assert_eq!(rx[0].0.op, op::RST);
    let s = rig.dev.vsock_stats();
    assert_eq!((s.guest_connections, s.rx_bytes, s.tx_bytes), (1, 4, 4));
}

#[test]
fn guest_connection_to_a_port_nobody_listens_on_is_reset() {
    let mut rig = Rig::new();
    rig.post_rx(2);
    rig.send(guest(op::REQUEST, 1000, 99), &[]);
    let rx = rig.take_rx();
    assert_eq!(rx.len(), 1);
    assert_eq!(rx[0].0.op, op::RST);
    assert_eq!((rx[0].0.src_port, rx[0].0.dst_port), (99, 1000));
    assert_eq!(rig.dev.vsock_stats().refused, 1);
}

#[test]
fn host_connects_with_connect_line_and_gets_ok_after_the_guest_accepts() {
    let mut rig = Rig::new();
    rig.post_rx(4);
    let mut host = UnixStream::connect(rig.path()).unwrap();
    // The line may come in pieces, and data may follow it at once.
    host.write_all(b"CONN").unwrap();
    rig.poll_backend();
    assert!(rig.take_rx().is_empty());
    host.write_all(b"ECT 1234\nearly").unwrap();
    rig.poll_backend();
    let rx = rig.take_rx();
    assert_eq!(rx.len(), 1, "{rx:?}");
    let req = rx[0].0;
    assert_eq!(req.op, op::REQUEST);
    assert_eq!(req.dst_port, 1234);
    assert_eq!(req.src_port, 1 << 30);
    let mut resp = guest(op::RESPONSE, 1234, req.src_port);
    resp.buf_alloc = 4096;
    rig.send(resp, &[]);
    let mut ok = [0u8; 14];
    host.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"OK 1073741824\n");
    // The bytes sent after the line reach the guest.
    rig.poll_backend();
    let rx = rig.take_rx();
    assert_eq!(rx.len(), 1, "{rx:?}");
    assert_eq!(rx[0].1, b"early");
}

#[test]
fn host_connection_refused_or_unanswered_by_the_guest_is_closed() {
    let mut rig = Rig::new();
    rig.post_rx(8);
    let mut host = UnixStream::connect(rig.path()).unwrap();
    host.write_all(b"CONNECT 7\n").unwrap();
    rig.poll_backend();
    let req = rig.take_rx()[0].0;
    rig.send(guest(op::RST, 7, req.src_port), &[]);
    assert_closed(&mut host);

    // A bad line closes the socket at once.
    let mut bad = UnixStream::connect(rig.path()).unwrap();
    bad.write_all(b"HELLO\n").unwrap();
    rig.poll_backend();
    assert_closed(&mut bad);

    // No answer from the guest: reset after the request timeout.
    let mut slow = UnixStream::connect(rig.path()).unwrap();
    slow.write_all(b"CONNECT 8\n").unwrap();
    rig.poll_backend();
    let req = rig.take_rx();
    assert_eq!(req[0].0.op, op::REQUEST);
    std::thread::sleep(conn::REQUEST_TIMEOUT + Duration::from_millis(300));
    rig.poll_backend();
    let rx = rig.take_rx();
    assert_eq!(rx.len(), 1, "{rx:?}");
    assert_eq!(rx[0].0.op, op::RST);
    assert_closed(&mut slow);
    assert_eq!(rig.dev.vsock_stats().timeouts, 1);
}

#[test]
fn hostile_packets_are_answered_or_dropped_without_harm() {
    let mut rig = Rig::new();
    rig.post_rx(8);
    // Not a stream socket: RST.
    let mut dgram = guest(op::REQUEST, 1, 2);
    dgram.type_ = 2;
    rig.send(dgram, &[]);
    // From a CID that is not the guest's, or to one that is not the host:
    // dropped.
    let mut spoofed = guest(op::REQUEST, 1, 2);
    spoofed.src_cid = 77;
    rig.send(spoofed, &[]);
    let mut elsewhere = guest(op::REQUEST, 1, 2);
    elsewhere.dst_cid = 9;
    rig.send(elsewhere, &[]);
    // Data for no connection: RST.
    let mut stray = guest(op::RW, 5, 6);
    stray.len = 3;
    rig.send(stray, b"abc");
    // A length beyond the maximum, a header too short, a write-only header,
    // a header outside RAM: bad chains.
    let mut huge = guest(op::RW, 5, 6);
    huge.len = MAX_PKT_DATA + 1;
    rig.send(huge, b"x");
    let tx = rig.ring(0x1000);
    tx.add_chain(10, &[(TX_BUFS, 8, false)]);
    tx.add_chain(11, &[(TX_BUFS, PKT_HEADER_SIZE as u32, true)]);
    tx.add_raw(
        12,
        &[Descriptor::new(
            RAM as u64 + 0x1000,
            PKT_HEADER_SIZE as u32,
            0,
            0,
        )],
    );
    rig.dev.process_queue(TX_QUEUE, &mut rig.queues, &rig.mem);
    let rx = rig.take_rx();
    let ops: Vec<u16> = rx.iter().map(|(h, _)| h.op).collect();
    assert_eq!(ops, [op::RST, op::RST]);
    let s = rig.dev.vsock_stats();
    assert_eq!(s.tx_dropped, 2);
    assert_eq!(s.bad_chains, 4);
    // Every chain came back.
    assert_eq!(rig.ring(0x1000).used().len(), 8);
}

#[test]
fn receive_buffers_without_room_for_data_do_not_wedge_the_device() {
    let mut rig = Rig::new();
    let listener = UnixListener::bind(muxer::port_path(&rig.path(), 52)).unwrap();
    rig.post_rx(1);
    rig.send(guest(op::REQUEST, 1000, 52), &[]);
    let (mut host, _) = listener.accept().unwrap();
    assert_eq!(rig.take_rx()[0].0.op, op::RESPONSE);
    host.write_all(b"data").unwrap();
    // A hostile driver posts buffers without room for data: a header
    // alone, and a header with an empty data buffer.
    for bufs in [
        vec![(RX_BUFS, PKT_HEADER_SIZE as u32, true)],
        vec![
            (RX_BUFS, PKT_HEADER_SIZE as u32, true),
            (RX_BUFS + 0x100, 0, true),
        ],
    ] {
        let i = rig.rx_next % LEN;
        rig.ring(0x0).add_chain(i, &bufs);
        rig.rx_next += 2;
    }
    rig.poll_backend(); // returns: no spin
    let used = rig.ring(0x0).used();
    assert_eq!(
        &used[rig.rx_seen..].iter().map(|u| u.1).collect::<Vec<_>>(),
        &[0, 0]
    );
    rig.rx_seen = used.len();
    assert_eq!(rig.dev.vsock_stats().bad_chains, 2);
    // A proper buffer gets the data.
    rig.post_rx(1);
    let rx = rig.take_rx();
    assert_eq!(rx.len(), 1, "{rx:?}");
    assert_eq!(rx[0].1, b"data");
}

#[test]
fn reset_closes_every_connection() {
    let mut rig = Rig::new();
    let listener = UnixListener::bind(muxer::port_path(&rig.path(), 52)).unwrap();
    rig.post_rx(4);
    rig.send(guest(op::REQUEST, 1000, 52), &[]);
    let (mut host, _) = listener.accept().unwrap();
    rig.dev.reset();
    assert_closed(&mut host);
    // Host connections wait in the backlog until the driver is back.
    let _waiting = UnixStream::connect(rig.path()).unwrap();
}

/// The used index of the ring at `base`.
fn used_idx(rig: &Rig, base: u64) -> u16 {
    rig.mem.read_obj(GuestAddress(base + 0x802)).unwrap()
}

/// Seeded random packets from a hostile guest (any operation, flags,
/// ports, CIDs, credit fields and lengths, to host ports that listen and
/// ports that do not, with the host side writing and closing at random):
/// every transmitted chain comes back at once, and every delivered packet
/// goes from the host to the guest, is a stream packet (or an RST in the
/// type it refuses) and carries exactly the data its header says.
#[test]
fn mini_fuzz_random_packets_never_panic_or_wedge() {
    let mut rng = crate::Rng(0x9e37_79b9_7f4a_7c15);
    let mut next = move || rng.next();
    let (mut delivered, mut data_packets) = (0, 0);
    let (mut accepted, mut responses) = (0, 0);
    for round in 0..60 {
        let mut rig = Rig::new();
        let listeners: Vec<UnixListener> = [52, 53]
            .iter()
            .map(|&p| {
                let l = UnixListener::bind(muxer::port_path(&rig.path(), p)).unwrap();
                l.set_nonblocking(true).unwrap();
                l
            })
            .collect();
        let mut host_ends: Vec<UnixStream> = Vec::new();
        rig.post_rx(8);
        for i in 0..40 {
            let r = next();
            let ops = [
                op::REQUEST,
                op::RESPONSE,
                op::RST,
                op::SHUTDOWN,
                op::RW,
                op::CREDIT_UPDATE,
                op::CREDIT_REQUEST,
            ];
            // Mostly what a busy guest sends (REQUEST, RW, CREDIT_UPDATE),
            // sometimes anything.
            let opcode = match r % 16 {
                0 => (r >> 8) as u16,
                1..=3 => ops[((r >> 8) % 7) as usize],
                4..=6 => op::REQUEST,
                7..=8 => op::CREDIT_UPDATE,
                _ => op::RW,
            };
            let mut p = guest(
                opcode,
                1000 + ((r >> 4) % 3) as u32,
                [52, 53, 99, (r >> 32) as u32][((r >> 6) % 4) as usize],
            );
            let data = vec![round as u8; ((r >> 10) % 64) as usize];
            p.len = match (r >> 16) % 8 {
                0 => (r >> 20) as u32,
                _ => data.len() as u32,
            };
            p.flags = if (r >> 24) % 4 == 0 {
                (r >> 28) as u32
            } else {
                0
            };
            p.buf_alloc = if (r >> 36) % 4 == 0 {
                (r >> 40) as u32
            } else {
                64 * 1024
            };
            p.fwd_cnt = if (r >> 44) % 8 == 0 {
                (r >> 47) as u32
            } else {
                0
            };
            match (r >> 56) % 32 {
                0 => p.src_cid = r >> 8,
                1 => p.dst_cid = r >> 8,
                2 => p.type_ = (r >> 8) as u16,
                _ => {}
            }
            rig.send(p, &data);
            assert_eq!(
                used_idx(&rig, 0x1000),
                rig.tx_next,
                "round {round} packet {i}: every chain comes back"
            );
            // The host side: accept, write, sometimes hang up.
            for l in &listeners {
                while let Ok((s, _)) = l.accept() {
                    s.set_nonblocking(true).unwrap();
                    host_ends.push(s);
                    accepted += 1;
                }
            }
            if (r >> 50) % 2 == 0 {
                for s in &mut host_ends {
                    let _ = s.write(&[i as u8; 100]);
                }
            }
            if (r >> 58) % 8 == 0 && !host_ends.is_empty() {
                host_ends.swap_remove(0);
            }
            rig.dev.process_backend(&mut rig.queues, &rig.mem);
            if rig.rx_next.wrapping_sub(used_idx(&rig, 0x0)) < 4 {
                rig.post_rx(4);
            }
            for (hdr, body) in rig.take_rx() {
                assert_eq!((hdr.src_cid, hdr.dst_cid), (HOST_CID, GUEST_CID));
                // An RST answers in the type it refuses, as Linux does.
                assert!(hdr.type_ == TYPE_STREAM || hdr.op == op::RST, "{hdr:?}");
                assert_eq!(hdr.len as usize, body.len(), "round {round}");
                assert!(body.len() <= 4096);
                delivered += 1;
                responses += usize::from(hdr.op == op::RESPONSE);
                data_packets += usize::from(hdr.op == op::RW && !body.is_empty());
            }
        }
    }
    eprintln!("{delivered} packets delivered, {data_packets} with data, {accepted} accepted, {responses} responses");
    assert!(
        delivered > 100 && data_packets > 10,
        "only {delivered} packets came back, {data_packets} with data"
    );
}
