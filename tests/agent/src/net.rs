//! virtio-net through the third-party virtio-drivers crate, and just
//! enough Ethernet, ARP, IPv4, ICMP and UDP, built by hand, to talk to the
//! host kernel on the other side of a tap.
//!
//! - [`Nic`]: one virtio-net device driven by virtio-drivers'
//!   `VirtIONetRaw` (no heap: it negotiates VERSION_1, MAC, STATUS and
//!   EVENT_IDX, no offloads and no MRG_RXBUF, so each frame has a 12-byte
//!   header and one receive buffer). Every receive buffer is posted at
//!   open; a received frame is handed out as an [`Rx`] and its buffer goes
//!   back to the device when released, unless refilling is off
//!   ([`Nic::set_refill`], for `net-stall`). Buffers live in two static
//!   pools (256 x 2 KiB each way), identity mapped like everything else.
//! - [`Link`]: the IPv4 end of the link: our address, the host's address
//!   and MAC (resolved with ARP), an ARP responder that answers the host
//!   whenever frames are polled, and frame builders and parsers with
//!   checksums verified on every received header.
//!
//! Nothing here uses interrupts: completions are polled in the rings,
//! which costs no VM exit; only notifications (when the device asks for
//! them, EVENT_IDX) and register accesses exit.

use core::mem::ManuallyDrop;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};

use crate::checks::Fail;
use crate::hal::AgentHal;
use crate::tests::Context;
use crate::time::{self, Clock, Deadline};
use crate::virtio::{self, reg, status, Device};
use crate::{cmdline, ensure, fail, println};

/// virtio device ID of a network card.
pub const DEVICE_ID_NET: u32 = 1;
/// Descriptors per queue, and receive and transmit buffers: kiln's maximum.
pub const QUEUE_SIZE: usize = 256;
/// Bytes per buffer: a 12-byte header and a 1514-byte frame fit
/// (virtio-drivers wants at least 1526 for a receive buffer).
const BUF_LEN: usize = 2048;
/// The longest Ethernet frame without offloads (MTU 1500, no FCS).
pub const MAX_FRAME: usize = 1514;
/// How long to wait for the device to return a transmit buffer.
const TX_TIMEOUT_MS: u64 = 5_000;

/// Ethernet header length and the EtherTypes we speak.
pub const ETH_HLEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
/// IPv4 header length (we send no options) and protocol numbers.
pub const IP_HLEN: usize = 20;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_UDP: u8 = 17;
/// UDP and ICMP echo header lengths.
pub const UDP_HLEN: usize = 8;
pub const ICMP_HLEN: usize = 8;
/// The largest UDP payload or ICMP echo data in one unfragmented frame.
pub const MAX_UDP_PAYLOAD: usize = MAX_FRAME - ETH_HLEN - IP_HLEN - UDP_HLEN;
/// The broadcast MAC.
const BROADCAST: [u8; 6] = [0xff; 6];

type Raw = VirtIONetRaw<AgentHal, MmioTransport<'static>, QUEUE_SIZE>;

/// One pool of buffers, page aligned, in .bss.
#[repr(C, align(4096))]
struct Pool([[u8; BUF_LEN]; QUEUE_SIZE]);
static mut RX_POOL: Pool = Pool([[0; BUF_LEN]; QUEUE_SIZE]);
static mut TX_POOL: Pool = Pool([[0; BUF_LEN]; QUEUE_SIZE]);
/// Whether a [`Nic`] holds the pools (one NIC at a time).
static POOLS_TAKEN: AtomicBool = AtomicBool::new(false);

/// Receive buffer `i`.
///
/// # Safety
/// The caller holds the pools (a live [`Nic`]), `i < QUEUE_SIZE`, and no
/// other reference to that buffer exists while the result lives; the
/// device may write the buffer only while it is posted and no reference
/// to it is held.
unsafe fn rx_buf<'a>(i: usize) -> &'a mut [u8] {
    &mut (*core::ptr::addr_of_mut!(RX_POOL)).0[i]
}

/// Receive buffer `i`, to read.
///
/// # Safety
/// As for [`rx_buf`], except that other shared references may exist.
unsafe fn rx_buf_ref<'a>(i: usize) -> &'a [u8] {
    &(*core::ptr::addr_of!(RX_POOL)).0[i]
}

/// Transmit buffer `i`; the same rules as [`rx_buf`].
unsafe fn tx_buf<'a>(i: usize) -> &'a mut [u8] {
    &mut (*core::ptr::addr_of_mut!(TX_POOL)).0[i]
}

/// A received frame: which receive buffer holds it and where.
#[derive(Debug)]
pub struct Rx {
    buf: u16,
    start: u16,
    len: u16,
}

/// What a NIC moved.
#[derive(Clone, Copy, Debug, Default)]
pub struct NicStats {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
}

/// A virtio-net card driven by virtio-drivers.
pub struct Nic {
    /// Which NIC (the N-th network device in address order).
    pub index: usize,
    pub dev: Device,
    /// Features the device offered (virtio-drivers keeps what it took).
    pub offered: u64,
    pub mac: [u8; 6],
    raw: ManuallyDrop<Raw>,
    /// Receive buffer of each descriptor chain (token) in the ring.
    rx_of_token: [u16; QUEUE_SIZE],
    /// Receive buffers taken back while refilling was off.
    parked: [u16; QUEUE_SIZE],
    parked_len: usize,
    refill: bool,
    /// Transmit buffer of each token, the length sent from each buffer,
    /// and the free buffers.
    tx_of_token: [u16; QUEUE_SIZE],
    tx_len: [u16; QUEUE_SIZE],
    tx_free: [u16; QUEUE_SIZE],
    tx_free_len: usize,
    closed: bool,
    pub clock: Clock,
    pub stats: NicStats,
}

/// The NIC index a check works on: its argument (`net-ping:1`), default 0.
pub fn nic_index(ctx: &Context) -> Result<usize, Fail> {
    match ctx.arg {
        None => Ok(0),
        Some(a) => match a.parse() {
            Ok(n) => Ok(n),
            Err(_) => fail!("argument {a:?} is not a NIC number"),
        },
    }
}

/// Formats a MAC address.
pub struct Mac(pub [u8; 6]);
impl core::fmt::Display for Mac {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Formats an IPv4 address.
pub struct Ip(pub [u8; 4]);
impl core::fmt::Display for Ip {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        let a = self.0;
        write!(f, "{}.{}.{}.{}", a[0], a[1], a[2], a[3])
    }
}

/// Parses a dotted-quad IPv4 address.
pub fn parse_ip(text: &str) -> Option<[u8; 4]> {
    let mut ip = [0u8; 4];
    let mut parts = text.split('.');
    for byte in ip.iter_mut() {
        *byte = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(ip)
}

impl Nic {
    /// Opens the NIC the check names with virtio-drivers, posts every
    /// receive buffer and prints a line about it.
    pub fn open(ctx: &Context) -> Result<Nic, Fail> {
        let index = nic_index(ctx)?;
        let devices = virtio::discover(ctx.cmdline);
        let Some(dev) = devices.nth(DEVICE_ID_NET, index) else {
            fail!(
                "no virtio-net NIC {index} ({} virtio-mmio devices found)",
                devices.all().len()
            );
        };
        ensure!(
            !POOLS_TAKEN.swap(true, Ordering::Acquire),
            "another NIC is open"
        );
        // From here on, Drop gives the pools back; build the Nic first.
        let offered = dev.device_features();
        let Some(header) = NonNull::new(dev.base as *mut VirtIOHeader) else {
            POOLS_TAKEN.store(false, Ordering::Release);
            fail!("virtio window at address 0");
        };
        // SAFETY: a virtio-mmio window of `size` bytes, identity mapped,
        // valid for the whole run; only this Nic drives it while it lives.
        let transport = match unsafe { MmioTransport::new(header, dev.size) } {
            Ok(t) => t,
            Err(e) => {
                POOLS_TAKEN.store(false, Ordering::Release);
                fail!("NIC {index} at {:#x}: transport: {e}", dev.base);
            }
        };
        let mut raw = match Raw::new(transport) {
            Ok(r) => r,
            Err(e) => {
                // Leave no half-initialised queue behind.
                dev.write(reg::STATUS, 0);
                POOLS_TAKEN.store(false, Ordering::Release);
                fail!("NIC {index} at {:#x}: virtio-drivers: {e}", dev.base);
            }
        };
        raw.disable_interrupts();
        let mut nic = Nic {
            index,
            dev,
            offered,
            mac: raw.mac_address(),
            raw: ManuallyDrop::new(raw),
            rx_of_token: [0; QUEUE_SIZE],
            parked: [0; QUEUE_SIZE],
            parked_len: 0,
            refill: true,
            tx_of_token: [0; QUEUE_SIZE],
            tx_len: [0; QUEUE_SIZE],
            tx_free: [0; QUEUE_SIZE],
            tx_free_len: QUEUE_SIZE,
            closed: false,
            clock: Clock::new(ctx.cmdline),
            stats: NicStats::default(),
        };
        for (i, slot) in nic.tx_free.iter_mut().enumerate() {
            *slot = i as u16;
        }
        let st = nic.dev.read(reg::STATUS);
        let ready = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
        if st & (status::NEEDS_RESET | status::FAILED) != 0 || st & ready != ready {
            fail!("NIC {index}: device status {st:#x} after initialisation");
        }
        for i in 0..QUEUE_SIZE {
            nic.post_rx(i as u16)?;
        }
        // virtio_net_config.status (offset 6): bit 0 is "link up".
        let link = nic.dev.read(reg::CONFIG + 4) >> 16 & 1;
        println!(
            "AGENT: nic {index} at {:#x} (version {}, irq {:?}): mac {}, link {}, \
             features offered {offered:#x}, {QUEUE_SIZE} receive buffers posted",
            dev.base,
            dev.version,
            dev.gsi,
            Mac(nic.mac),
            if link == 1 { "up" } else { "down" },
        );
        Ok(nic)
    }

    /// Hands receive buffer `buf` to the device.
    fn post_rx(&mut self, buf: u16) -> Result<(), Fail> {
        // SAFETY: we hold the pools; buffer `buf` is not posted (it was
        // just completed, parked or never used), so nothing else refers
        // to it, and virtio-drivers keeps only its address until we take
        // it back with receive_complete.
        let token = match unsafe { self.raw.receive_begin(rx_buf(usize::from(buf))) } {
            Ok(t) => t,
            Err(e) => fail!("posting receive buffer {buf}: {e}"),
        };
        self.rx_of_token[usize::from(token)] = buf;
        Ok(())
    }

    /// The next received frame, if the device has returned one.
    pub fn recv(&mut self) -> Result<Option<Rx>, Fail> {
        let Some(token) = self.raw.poll_receive() else {
            return Ok(None);
        };
        let Some(&buf) = self.rx_of_token.get(usize::from(token)) else {
            fail!("the device returned receive token {token}, beyond the ring");
        };
        // SAFETY: the buffer posted with this token, which the device has
        // now returned; no other reference to it exists.
        let done = unsafe { self.raw.receive_complete(token, rx_buf(usize::from(buf))) };
        let (hdr, len) = match done {
            Ok(r) => r,
            Err(e) => fail!("completing receive buffer {buf} (token {token}): {e}"),
        };
        if hdr + len > BUF_LEN {
            fail!("the device reports {len} bytes in a {BUF_LEN}-byte receive buffer");
        }
        self.stats.rx_frames += 1;
        self.stats.rx_bytes += len as u64;
        Ok(Some(Rx {
            buf,
            start: hdr as u16,
            len: len as u16,
        }))
    }

    /// The bytes of a received frame (Ethernet header first).
    pub fn frame(&self, rx: &Rx) -> &[u8] {
        // SAFETY: `rx` owns its buffer until released (the device is done
        // with it), and the result borrows self, so the buffer cannot be
        // released (posted again) while the result lives.
        let buf = unsafe { rx_buf_ref(usize::from(rx.buf)) };
        let start = usize::from(rx.start);
        &buf[start..start + usize::from(rx.len)]
    }

    /// Gives a frame's buffer back to the device, or keeps it while
    /// refilling is off.
    pub fn release(&mut self, rx: Rx) -> Result<(), Fail> {
        if self.refill {
            self.post_rx(rx.buf)
        } else {
            self.parked[self.parked_len] = rx.buf;
            self.parked_len += 1;
            Ok(())
        }
    }

    /// Turns refilling the receive queue off (buffers are kept as frames
    /// arrive, so the device runs out) or on again (every kept buffer is
    /// posted at once). Returns how many buffers were posted.
    pub fn set_refill(&mut self, on: bool) -> Result<usize, Fail> {
        self.refill = on;
        let mut posted = 0;
        while on && self.parked_len > 0 {
            self.parked_len -= 1;
            self.post_rx(self.parked[self.parked_len])?;
            posted += 1;
        }
        Ok(posted)
    }

    /// Receive buffers currently kept back (refilling off).
    pub fn parked(&self) -> usize {
        self.parked_len
    }

    /// Takes back every transmit buffer the device has finished with.
    pub fn reap_tx(&mut self) -> Result<(), Fail> {
        while let Some(token) = self.raw.poll_transmit() {
            let Some(&buf) = self.tx_of_token.get(usize::from(token)) else {
                fail!("the device returned transmit token {token}, beyond the ring");
            };
            let len = usize::from(self.tx_len[usize::from(buf)]);
            // SAFETY: the buffer and length submitted with this token.
            let done = unsafe {
                self.raw
                    .transmit_complete(token, &tx_buf(usize::from(buf))[..len])
            };
            if let Err(e) = done {
                fail!("completing transmit buffer {buf} (token {token}): {e}");
            }
            self.tx_free[self.tx_free_len] = buf;
            self.tx_free_len += 1;
        }
        Ok(())
    }

    /// Sends one frame of `len` bytes that `fill` writes (Ethernet header
    /// first). Waits for a free transmit buffer if all are in flight.
    pub fn send(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) -> Result<(), Fail> {
        ensure!(
            (ETH_HLEN..=MAX_FRAME).contains(&len),
            "frame of {len} bytes"
        );
        self.reap_tx()?;
        if self.tx_free_len == 0 {
            let deadline = self.clock.deadline(TX_TIMEOUT_MS);
            while self.tx_free_len == 0 {
                if deadline.passed() {
                    fail!(
                        "all {QUEUE_SIZE} transmit buffers still in the device after \
                         {TX_TIMEOUT_MS} ms (device status {:#x})",
                        self.dev.read(reg::STATUS)
                    );
                }
                core::hint::spin_loop();
                self.reap_tx()?;
            }
        }
        self.tx_free_len -= 1;
        let buf = self.tx_free[self.tx_free_len];
        // SAFETY: a free buffer: not in the device, no other reference.
        let bytes = unsafe { tx_buf(usize::from(buf)) };
        let hdr = match self.raw.fill_buffer_header(bytes) {
            Ok(h) => h,
            Err(e) => fail!("virtio-net header: {e}"),
        };
        fill(&mut bytes[hdr..hdr + len]);
        self.tx_len[usize::from(buf)] = (hdr + len) as u16;
        // SAFETY: the buffer stays untouched until reap_tx takes it back
        // with transmit_complete.
        let token = match unsafe { self.raw.transmit_begin(&bytes[..hdr + len]) } {
            Ok(t) => t,
            Err(e) => fail!("submitting a {len}-byte frame: {e}"),
        };
        self.tx_of_token[usize::from(token)] = buf;
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += len as u64;
        Ok(())
    }

    /// Stops both queues the way virtio-drivers' clean-up does (QueueReady
    /// 0, read back, virtio 1.2 4.2.2.2) but with a time limit; the device
    /// is then reset by Drop.
    pub fn close(mut self) -> Result<(), Fail> {
        for queue in [0, 1] {
            self.dev.write(reg::QUEUE_SEL, queue);
            self.dev.write(reg::QUEUE_READY, 0);
            let deadline = self.clock.deadline(1_000);
            while self.dev.read(reg::QUEUE_READY) != 0 {
                if deadline.passed() {
                    fail!(
                        "NIC {}: QueueReady of queue {queue} still reads 1 a second after the \
                         driver wrote 0 (virtio 1.2, 4.2.2.2; device status {:#x})",
                        self.index,
                        self.dev.read(reg::STATUS)
                    );
                }
                core::hint::spin_loop();
            }
        }
        self.closed = true;
        Ok(())
    }
}

impl Drop for Nic {
    /// Resets the device unless [`Nic::close`] stopped its queues (so it
    /// lets go of our buffers and virtio-drivers' clean-up, which waits
    /// for QueueReady 0, ends), lets virtio-drivers clean up, resets the
    /// device and gives the buffer pools back.
    fn drop(&mut self) {
        if !self.closed {
            self.dev.write(reg::STATUS, 0);
        }
        // SAFETY: the only place `raw` is dropped, and it is not used after.
        unsafe { ManuallyDrop::drop(&mut self.raw) };
        self.dev.write(reg::STATUS, 0);
        POOLS_TAKEN.store(false, Ordering::Release);
    }
}

// ---- checksums ------------------------------------------------------------

/// Adds `data` (big-endian 16-bit words, an odd last byte padded with
/// zero) to a ones' complement sum. Only the last piece of a sum may
/// have an odd length.
pub fn csum_add(mut sum: u64, data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let v = u64::from_be_bytes(w.try_into().unwrap());
        sum += (v >> 48) + (v >> 32 & 0xffff) + (v >> 16 & 0xffff) + (v & 0xffff);
    }
    let mut pairs = words.remainder().chunks_exact(2);
    for p in &mut pairs {
        sum += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [b] = pairs.remainder() {
        sum += u64::from(*b) << 8;
    }
    sum
}

/// Folds a sum into the 16-bit internet checksum (its complement).
pub fn csum_fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The ones' complement sum of the IPv4 pseudo-header for a UDP segment.
fn pseudo_header(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> u64 {
    let sum = csum_add(csum_add(0, &src), &dst);
    sum + u64::from(proto) + len as u64
}

// ---- the IPv4 end of the link ---------------------------------------------

/// A received IPv4 packet for us: where its payload is in the frame.
#[derive(Clone, Copy, Debug)]
pub struct Ipv4 {
    pub src: [u8; 4],
    pub proto: u8,
    /// Payload offset and length in the frame.
    pub start: usize,
    pub len: usize,
}

/// A received UDP datagram: ports and where its payload is in the frame.
#[derive(Clone, Copy, Debug)]
pub struct Udp {
    pub src: [u8; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub start: usize,
    pub len: usize,
}

/// What the link saw besides the frames it handed out.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkStats {
    /// ARP requests for our address that we answered.
    pub arp_answered: u64,
    /// Frames neither ARP nor IPv4 for us (IPv6 chatter, ...).
    pub ignored: u64,
    /// IPv4 or UDP headers with a bad checksum or length.
    pub bad: u64,
}

/// Our end of an IPv4 link over a [`Nic`].
pub struct Link {
    pub nic: Nic,
    pub ip: [u8; 4],
    pub host_ip: [u8; 4],
    /// The host's MAC, once resolved.
    pub host_mac: Option<[u8; 6]>,
    ip_id: u16,
    pub stats: LinkStats,
}

/// `agent.net_ip=` (default 10.0.2.2) and `agent.net_host=` (10.0.2.1).
fn addresses(ctx: &Context) -> Result<([u8; 4], [u8; 4]), Fail> {
    let get = |key: &str, default: [u8; 4]| match cmdline::get(ctx.cmdline, key) {
        None => Ok(default),
        Some(text) => parse_ip(text).ok_or(text),
    };
    let ip = match get("agent.net_ip", [10, 0, 2, 2]) {
        Ok(ip) => ip,
        Err(t) => fail!("agent.net_ip={t} is not an IPv4 address"),
    };
    let host = match get("agent.net_host", [10, 0, 2, 1]) {
        Ok(ip) => ip,
        Err(t) => fail!("agent.net_host={t} is not an IPv4 address"),
    };
    Ok((ip, host))
}

impl Link {
    /// Opens the check's NIC with the addresses from the command line.
    pub fn open(ctx: &Context) -> Result<Link, Fail> {
        let (ip, host_ip) = addresses(ctx)?;
        let nic = Nic::open(ctx)?;
        Ok(Link {
            nic,
            ip,
            host_ip,
            host_mac: None,
            ip_id: 1,
            stats: LinkStats::default(),
        })
    }

    /// The next IPv4 packet for us, if one has arrived. ARP is handled on
    /// the way (requests for our address answered, the host's replies
    /// recorded); anything else is counted and dropped. The caller must
    /// release the frame (`self.nic.release(rx)`).
    pub fn poll(&mut self) -> Result<Option<(Rx, Ipv4)>, Fail> {
        self.nic.reap_tx()?;
        while let Some(rx) = self.nic.recv()? {
            let frame = self.nic.frame(&rx);
            if frame.len() < ETH_HLEN {
                self.stats.bad += 1;
                self.nic.release(rx)?;
                continue;
            }
            let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
            if ethertype == ETHERTYPE_ARP {
                let arp = parse_arp(frame);
                self.nic.release(rx)?;
                if let Some(arp) = arp {
                    self.handle_arp(arp)?;
                } else {
                    self.stats.ignored += 1;
                }
                continue;
            }
            if ethertype == ETHERTYPE_IPV4 {
                match parse_ipv4(frame, self.ip) {
                    Some(Ok(ip)) => return Ok(Some((rx, ip))),
                    Some(Err(())) => self.stats.bad += 1,
                    None => self.stats.ignored += 1,
                }
            } else {
                self.stats.ignored += 1;
            }
            self.nic.release(rx)?;
        }
        Ok(None)
    }

    fn handle_arp(&mut self, arp: Arp) -> Result<(), Fail> {
        if arp.op == 1 && arp.target_ip == self.ip {
            self.stats.arp_answered += 1;
            self.send_arp(2, arp.sender_mac, arp.sender_mac, arp.sender_ip)?;
        }
        if arp.op == 2 && arp.sender_ip == self.host_ip && arp.target_ip == self.ip {
            self.host_mac = Some(arp.sender_mac);
        }
        Ok(())
    }

    /// Sends an ARP request (op 1) or reply (op 2).
    fn send_arp(
        &mut self,
        op: u16,
        eth_dst: [u8; 6],
        target_mac: [u8; 6],
        target_ip: [u8; 4],
    ) -> Result<(), Fail> {
        let (mac, ip) = (self.nic.mac, self.ip);
        self.nic.send(ETH_HLEN + 28, |f| {
            f[..6].copy_from_slice(&eth_dst);
            f[6..12].copy_from_slice(&mac);
            f[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
            let a = &mut f[ETH_HLEN..];
            // Ethernet (1), IPv4, 6-byte and 4-byte addresses, op.
            a[..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, op as u8]);
            a[8..14].copy_from_slice(&mac);
            a[14..18].copy_from_slice(&ip);
            a[18..24].copy_from_slice(&target_mac);
            a[24..28].copy_from_slice(&target_ip);
        })
    }

    /// Resolves the host's MAC with ARP: a request every 500 ms until a
    /// reply comes or `timeout_ms` pass. Returns the time it took (TSC
    /// ticks) and the number of requests sent.
    pub fn resolve(&mut self, timeout_ms: u64) -> Result<(u64, u32), Fail> {
        let t0 = time::now();
        let deadline = self.nic.clock.deadline(timeout_ms);
        let mut requests = 0;
        self.host_mac = None;
        while self.host_mac.is_none() {
            if deadline.passed() {
                fail!(
                    "no ARP reply from {} within {timeout_ms} ms ({requests} requests sent, \
                     {} frames received, {} ignored)",
                    Ip(self.host_ip),
                    self.nic.stats.rx_frames,
                    self.stats.ignored
                );
            }
            self.send_arp(1, BROADCAST, [0; 6], self.host_ip)?;
            requests += 1;
            let next = self.nic.clock.deadline(500);
            while self.host_mac.is_none() && !next.passed() && !deadline.passed() {
                // Anything but ARP is of no interest yet.
                if let Some((rx, _)) = self.poll()? {
                    self.stats.ignored += 1;
                    self.nic.release(rx)?;
                }
                core::hint::spin_loop();
            }
        }
        Ok((time::now() - t0, requests))
    }

    /// The host's MAC; fails if it has not been resolved.
    fn host_mac(&self) -> Result<[u8; 6], Fail> {
        match self.host_mac {
            Some(m) => Ok(m),
            None => fail!("the host's MAC is not resolved"),
        }
    }

    /// Sends an IPv4 packet to the host with a payload of `len` bytes that
    /// `fill` writes.
    pub fn send_ipv4(
        &mut self,
        proto: u8,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), Fail> {
        let dst_mac = self.host_mac()?;
        let (mac, src, dst) = (self.nic.mac, self.ip, self.host_ip);
        let id = self.ip_id;
        self.ip_id = self.ip_id.wrapping_add(1);
        ensure!(
            len <= MAX_FRAME - ETH_HLEN - IP_HLEN,
            "IPv4 payload of {len} bytes"
        );
        self.nic.send(ETH_HLEN + IP_HLEN + len, |f| {
            f[..6].copy_from_slice(&dst_mac);
            f[6..12].copy_from_slice(&mac);
            f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
            let ip = &mut f[ETH_HLEN..ETH_HLEN + IP_HLEN];
            ip[0] = 0x45; // version 4, 5 words of header
            ip[1] = 0;
            ip[2..4].copy_from_slice(&((IP_HLEN + len) as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&id.to_be_bytes());
            ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // don't fragment
            ip[8] = 64; // TTL
            ip[9] = proto;
            ip[10..12].copy_from_slice(&[0, 0]);
            ip[12..16].copy_from_slice(&src);
            ip[16..20].copy_from_slice(&dst);
            let sum = csum_fold(csum_add(0, ip));
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            fill(&mut f[ETH_HLEN + IP_HLEN..]);
        })
    }

    /// Sends a UDP datagram to the host: `len` payload bytes that `fill`
    /// writes; the checksum is computed here.
    pub fn send_udp(
        &mut self,
        src_port: u16,
        dst_port: u16,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), Fail> {
        let (src, dst) = (self.ip, self.host_ip);
        self.send_ipv4(PROTO_UDP, UDP_HLEN + len, |u| {
            u[0..2].copy_from_slice(&src_port.to_be_bytes());
            u[2..4].copy_from_slice(&dst_port.to_be_bytes());
            u[4..6].copy_from_slice(&((UDP_HLEN + len) as u16).to_be_bytes());
            u[6..8].copy_from_slice(&[0, 0]);
            fill(&mut u[UDP_HLEN..]);
            let sum = csum_add(pseudo_header(src, dst, PROTO_UDP, u.len()), u);
            // A computed 0 is sent as 0xffff (0 means "no checksum").
            let sum = match csum_fold(sum) {
                0 => 0xffff,
                s => s,
            };
            u[6..8].copy_from_slice(&sum.to_be_bytes());
        })
    }

    /// Waits until `deadline` for a packet `pick` accepts (it returns
    /// Some); every packet is released after `pick` saw it (it reads the
    /// frame with `link.nic.frame(rx)`). None at the deadline.
    pub fn wait_for<T>(
        &mut self,
        deadline: Deadline,
        mut pick: impl FnMut(&mut Link, &Rx, &Ipv4) -> Result<Option<T>, Fail>,
    ) -> Result<Option<T>, Fail> {
        loop {
            while let Some((rx, ip)) = self.poll()? {
                let got = pick(self, &rx, &ip);
                self.nic.release(rx)?;
                if let Some(v) = got? {
                    return Ok(Some(v));
                }
            }
            if deadline.passed() {
                return Ok(None);
            }
            core::hint::spin_loop();
        }
    }
}

/// The UDP datagram in an IPv4 packet for `us`, with its length and
/// checksum checked; None if it is not valid UDP.
pub fn parse_udp(frame: &[u8], ip: &Ipv4, us: [u8; 4]) -> Option<Udp> {
    let u = frame.get(ip.start..ip.start + ip.len)?;
    let ok = ip.proto == PROTO_UDP
        && u.len() >= UDP_HLEN
        && usize::from(u16::from_be_bytes([u[4], u[5]])) == u.len()
        && (u[6..8] == [0, 0]
            || csum_fold(csum_add(pseudo_header(ip.src, us, PROTO_UDP, u.len()), u)) == 0);
    ok.then(|| Udp {
        src: ip.src,
        src_port: u16::from_be_bytes([u[0], u[1]]),
        dst_port: u16::from_be_bytes([u[2], u[3]]),
        start: ip.start + UDP_HLEN,
        len: u.len() - UDP_HLEN,
    })
}

/// An ARP packet's fields that matter.
struct Arp {
    op: u16,
    sender_mac: [u8; 6],
    sender_ip: [u8; 4],
    target_ip: [u8; 4],
}

/// Parses an Ethernet/IPv4 ARP packet.
fn parse_arp(frame: &[u8]) -> Option<Arp> {
    let a = frame.get(ETH_HLEN..ETH_HLEN + 28)?;
    if a[..6] != [0, 1, 8, 0, 6, 4] {
        return None;
    }
    Some(Arp {
        op: u16::from_be_bytes([a[6], a[7]]),
        sender_mac: a[8..14].try_into().unwrap(),
        sender_ip: a[14..18].try_into().unwrap(),
        target_ip: a[24..28].try_into().unwrap(),
    })
}

/// An IPv4 packet for `us`: None if it is not addressed to us, Err if its
/// header is broken (bad checksum, lengths, a fragment).
fn parse_ipv4(frame: &[u8], us: [u8; 4]) -> Option<Result<Ipv4, ()>> {
    let ip = frame.get(ETH_HLEN..)?;
    if ip.len() < IP_HLEN || ip[16..20] != us {
        return None;
    }
    let hlen = usize::from(ip[0] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    if ip[0] >> 4 != 4
        || hlen < IP_HLEN
        || total < hlen
        || total > ip.len()
        || fragment
        || csum_fold(csum_add(0, &ip[..hlen])) != 0
    {
        return Some(Err(()));
    }
    Some(Ok(Ipv4 {
        src: ip[12..16].try_into().unwrap(),
        proto: ip[9],
        start: ETH_HLEN + hlen,
        len: total - hlen,
    }))
}
