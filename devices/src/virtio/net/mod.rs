//! virtio-net (virtio 1.x, section 5.1) over a tap device.
//!
//! Two queues: receive (0) and transmit (1). Every frame either way starts
//! with the 12-byte `virtio_net_hdr_v1` (checksum and segmentation offload
//! information), which the tap understands as is (`IFF_VNET_HDR`), so
//! offloads pass straight between the guest and the host kernel.
//!
//! - Transmit: each chain's readable buffers are written to the tap with one
//!   `writev` straight from guest memory. When the tap is full (EAGAIN) the
//!   chain stays in the ring, transmission pauses and the device asks the
//!   event loop to watch the tap for writability ([`Interest::writable`]).
//! - Receive: a frame is read from the tap into a bounce buffer and copied
//!   into one receive chain, or several with `VIRTIO_NET_F_MRG_RXBUF`. When
//!   the guest has posted no buffers the frame waits in the device, the
//!   device stops watching the tap ([`Interest::readable`] false) until the
//!   guest notifies the receive queue, and further frames queue in the
//!   kernel, which drops and counts them when its queue overflows (the tap's
//!   `tx_dropped`, reported in [`VirtioDevice::stats`]).
//!
//! Chains the guest gets wrong (buffers outside RAM, the wrong direction,
//! loops, oversized frames) are returned unused and counted; nothing the
//! guest writes can make the device panic or spin.

mod chain;
mod mac;
mod tap;

use std::io;
use std::os::fd::RawFd;

use virtio_bindings::virtio_net as vnet;
use virtio_queue::QueueT;
use vm_memory::VolatileSlice;

pub use mac::MacAddr;
pub use tap::Tap;

use super::{device_type, features, needs_interrupt, Interest, Memory, Queue, VirtioDevice};
use chain::{RxChain, TxFrame};

/// Size of the virtio-net header on every frame (`virtio_net_hdr_v1`, which
/// VERSION_1 devices always use, `num_buffers` included).
pub const VNET_HDR_LEN: usize = 12;

/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_OFFSET: usize = 10;

/// Receive queue index.
pub const RX_QUEUE: usize = 0;
/// Transmit queue index.
pub const TX_QUEUE: usize = 1;

/// Maximum size of each queue.
pub const QUEUE_SIZE: u16 = 256;

/// The largest frame either way, header excluded: a 64 KiB segmentation
/// offload packet plus its Ethernet and VLAN headers.
pub const MAX_FRAME_LEN: usize = 65_550;

/// Smallest frame accepted from the guest: an Ethernet header.
const MIN_FRAME_LEN: usize = 14;

/// Receive bounce buffer: one byte more than any frame we accept, so a
/// truncated read is recognisable.
const RX_BUFFER_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN + 1;

/// Frames handled per call before yielding to the event loop (which calls
/// again while the tap stays readable).
const RX_BUDGET: usize = 256;
/// Most transmit chains one call sends before it yields to the event loop
/// (and asks to be run again): a guest that keeps its transmit queue full
/// cannot keep the loop from everything else.
pub const TX_CHAINS_PER_CALL: usize = 256;

/// Errors opening a network backend or parsing its options.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The MAC address is not six pairs of hex digits.
    #[error(
        "bad MAC address `{0}`: write six hex bytes separated by colons, e.g. 52:54:00:12:34:56"
    )]
    ParseMac(String),
    /// The MAC address is a multicast or broadcast address.
    #[error("MAC address {0} is multicast: a NIC needs a unicast one (even first byte, e.g. 52:54:00:12:34:56)")]
    MulticastMac(String),
    /// The MAC address is all zeros.
    #[error("MAC address 00:00:00:00:00:00 is not a valid NIC address")]
    ZeroMac,
    /// The tap name is not a valid interface name.
    #[error(
        "bad tap name `{0}`: an interface name has 1 to 15 characters and no '/', ':' or spaces"
    )]
    TapName(String),
    /// No interface of that name exists.
    #[error("tap `{name}` does not exist: create it first, e.g. `ip tuntap add {name} mode tap user $(id -un) && ip link set {name} up`")]
    TapMissing {
        /// The interface name.
        name: String,
    },
    /// The interface exists but is not a usable tap.
    #[error("interface `{name}` is not a tap ({what}): give kiln a tap made with `ip tuntap add NAME mode tap`")]
    NotTap {
        /// The interface name.
        name: String,
        /// What it is instead.
        what: String,
    },
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open /dev/net/tun: {source}{}", tun_hint(.source))]
    OpenTunDevice {
        /// The error.
        #[source]
        source: io::Error,
    },
    /// TUNSETIFF refused: the tap belongs to another user or group.
    #[error("tap `{name}` belongs to another user or group: recreate it with `ip tuntap add {name} mode tap user $(id -un)` or run kiln as its owner")]
    TapPermission {
        /// The interface name.
        name: String,
    },
    /// TUNSETIFF refused: another process has the tap open.
    #[error("tap `{name}` is in use by another process (another VM?): stop it or use another tap")]
    TapBusy {
        /// The interface name.
        name: String,
    },
    /// TUNSETIFF or TUNGETIFF failed otherwise.
    #[error("cannot attach to tap `{name}`: {source}")]
    AttachTap {
        /// The interface name.
        name: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// TUNSETVNETHDRSZ failed.
    #[error("cannot set the virtio-net header size on tap `{name}`: {source}")]
    SetVnetHdrSize {
        /// The interface name.
        name: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// TUNSETOFFLOAD failed.
    #[error("cannot set offloads on tap `{name}`: {source}")]
    SetOffload {
        /// The interface name.
        name: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// What to do about a failed open of `/dev/net/tun`.
fn tun_hint(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => {
            " (load the tun module: `modprobe tun`)"
        }
        Some(libc::EACCES) | Some(libc::EPERM) => {
            " (kiln needs read and write access to it: run as root, or make it mode 0666 as most distributions do)"
        }
        _ => "",
    }
}

/// Where frames go and come from: a [`Tap`], or a datagram socket in tests.
/// Each `recv`/`send` is one whole frame, virtio-net header first.
pub trait Backend: Send {
    /// The file descriptor the event loop watches.
    fn fd(&self) -> RawFd;
    /// Reads one frame into `buf`; `WouldBlock` when there is none.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame gathered from guest memory; `WouldBlock` when full.
    fn send(&mut self, frame: &[VolatileSlice<'_>]) -> io::Result<usize>;
    /// Sets which offloads (TUN_F_*) the guest accepts on received frames.
    fn set_offload(&mut self, flags: u32) -> io::Result<()>;
    /// The offloads (TUN_F_*) the backend supports.
    fn offloads(&self) -> u32;
    /// Frames the host dropped towards the guest since the backend was
    /// opened, when it can tell.
    fn kernel_drops(&self) -> Option<u64> {
        None
    }
}

/// Counters, printed when the VM stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes delivered to the guest, headers excluded.
    pub rx_bytes: u64,
    /// Frames read from the tap but not delivered (no receive buffer of the
    /// guest could ever hold them, or the read was short or truncated).
    pub rx_dropped: u64,
    /// Receive chains returned unused because they were malformed.
    pub rx_bad_chains: u64,
    /// Times receiving paused because the guest had no buffers.
    pub rx_stalls: u64,
    /// Frames sent to the tap.
    pub tx_frames: u64,
    /// Bytes sent to the tap, headers excluded.
    pub tx_bytes: u64,
    /// Frames the tap refused with an error (e.g. the tap is down).
    pub tx_dropped: u64,
    /// Transmit chains returned unsent because they were malformed.
    pub tx_bad_chains: u64,
    /// Times the tap was full and transmission waited for it.
    pub tx_retries: u64,
}

/// The frame waiting in the receive bounce buffer, if any.
struct Rx {
    buf: Vec<u8>,
    /// Length of the frame in `buf` (header included); 0 for none.
    pending: usize,
    /// Receive chains taken from the ring but not used yet (waiting for
    /// more, with MRG_RXBUF, or left by a dropped frame).
    held: std::collections::VecDeque<RxChain>,
}

/// What became of the pending frame.
enum Placement {
    /// Delivered to the guest.
    Delivered,
    /// Dropped: it can never fit the guest's buffers.
    Dropped,
    /// Waiting for the guest to post buffers.
    NoBuffers,
}

/// A virtio-net device on a tap (or another [`Backend`]).
pub struct Net<B: Backend = Tap> {
    name: String,
    backend: B,
    mac: MacAddr,
    avail_features: u64,
    acked_features: u64,
    active: bool,
    /// The backend failed for good: stop watching it.
    broken: bool,
    tx_blocked: bool,
    /// The last process_tx stopped at its budget with chains left.
    tx_rerun: bool,
    /// Chains per process_tx call ([`TX_CHAINS_PER_CALL`]; tests lower it).
    tx_budget: usize,
    tx_error_logged: bool,
    rx: Rx,
    stats: NetStats,
}

impl Net<Tap> {
    /// A NIC on the existing tap `tap_name`, with `mac` or, when None, a
    /// MAC generated from the tap name.
    pub fn new(tap_name: &str, mac: Option<MacAddr>) -> Result<Net<Tap>, NetError> {
        let tap = Tap::open(tap_name)?;
        let mac = mac.unwrap_or_else(|| MacAddr::from_tap_name(tap_name));
        Ok(Net::with_backend(
            format!("virtio-net {tap_name}"),
            tap,
            mac,
        ))
    }
}

impl<B: Backend> Net<B> {
    /// A NIC on any backend; `name` is used in logs.
    pub fn with_backend(name: String, backend: B, mac: MacAddr) -> Net<B> {
        let avail_features = offered_features(backend.offloads());
        Net {
            name,
            backend,
            mac,
            avail_features,
            acked_features: 0,
            active: false,
            broken: false,
            tx_blocked: false,
            tx_rerun: false,
            tx_budget: TX_CHAINS_PER_CALL,
            tx_error_logged: false,
            rx: Rx {
                buf: vec![0; RX_BUFFER_LEN],
                pending: 0,
                held: Default::default(),
            },
            stats: NetStats::default(),
        }
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// The counters so far.
    pub fn net_stats(&self) -> NetStats {
        self.stats
    }

    fn has(&self, feature: u32) -> bool {
        self.acked_features & (1 << feature) != 0
    }

    /// Keeps the queues' event-index mode in step with what was negotiated
    /// (cheap, and correct whatever the transport did).
    fn sync_event_idx(&self, queues: &mut [Queue]) {
        let on = self.acked_features & features::RING_EVENT_IDX != 0;
        for queue in queues.iter_mut() {
            queue.set_event_idx(on);
        }
    }

    /// Sends every available transmit chain; stops at a full tap, or after
    /// [`TX_CHAINS_PER_CALL`] chains (then asks to be run again).
    fn process_tx(&mut self, queue: &mut Queue, mem: &Memory) -> bool {
        let mut used = false;
        let mut budget = self.tx_budget;
        self.tx_rerun = false;
        loop {
            // Errors here mean rings outside RAM: nothing to do but stop.
            let _ = queue.disable_notification(mem);
            let mut popped = false;
            while let Some(desc_chain) = queue.pop_descriptor_chain(mem) {
                if budget == 0 {
                    // Notifications stay off; the event loop calls again.
                    queue.set_next_avail(queue.next_avail().wrapping_sub(1));
                    self.tx_rerun = true;
                    return used && needs_interrupt(queue, mem);
                }
                budget -= 1;
                popped = true;
                let head = desc_chain.head_index();
                match TxFrame::parse(desc_chain, mem) {
                    Err(err) => {
                        self.stats.tx_bad_chains += 1;
                        log::debug!("{}: transmit chain {head} dropped: {err}", self.name);
                    }
                    Ok(frame) => match self.backend.send(&frame.slices) {
                        Ok(_) => {
                            self.stats.tx_frames += 1;
                            self.stats.tx_bytes += (frame.len - VNET_HDR_LEN) as u64;
                        }
                        Err(err)
                            if matches!(
                                err.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                            ) =>
                        {
                            // Leave the chain in the ring and wait for the
                            // tap to drain (EPOLLOUT, process_backend).
                            queue.set_next_avail(queue.next_avail().wrapping_sub(1));
                            self.tx_blocked = true;
                            self.stats.tx_retries += 1;
                            return used && needs_interrupt(queue, mem);
                        }
                        Err(err) => {
                            self.stats.tx_dropped += 1;
                            if !self.tx_error_logged {
                                self.tx_error_logged = true;
                                let hint = if err.raw_os_error() == Some(libc::EIO) {
                                    " (is the tap up? `ip link set TAP up`)"
                                } else {
                                    ""
                                };
                                log::warn!(
                                    "{}: the tap refused a frame: {err}{hint}; \
                                     further refusals are only counted",
                                    self.name
                                );
                            }
                        }
                    },
                }
                used |= add_used(queue, mem, head, 0);
            }
            // With the notification back on, anything added meanwhile must
            // be picked up now; a ring that yields nothing ends the loop.
            match queue.enable_notification(mem) {
                Ok(true) if popped => continue,
                _ => break,
            }
        }
        used && needs_interrupt(queue, mem)
    }

    /// Moves frames from the tap to the guest until the tap is empty, the
    /// guest has no buffers, or the budget is spent.
    fn process_rx(&mut self, queue: &mut Queue, mem: &Memory) -> bool {
        let mut used = false;
        for _ in 0..RX_BUDGET {
            if self.rx.pending == 0 {
                match self.backend.recv(&mut self.rx.buf) {
                    Ok(len) if !(VNET_HDR_LEN..RX_BUFFER_LEN).contains(&len) => {
                        self.stats.rx_dropped += 1;
                        continue;
                    }
                    Ok(len) => self.rx.pending = len,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(err) => {
                        log::error!(
                            "{}: reading the tap failed ({err}); the guest receives nothing more",
                            self.name
                        );
                        self.broken = true;
                        break;
                    }
                }
            }
            match self.place_frame(queue, mem, &mut used) {
                Placement::Delivered | Placement::Dropped => self.rx.pending = 0,
                Placement::NoBuffers => {
                    self.stats.rx_stalls += 1;
                    break;
                }
            }
        }
        used && needs_interrupt(queue, mem)
    }

    /// Takes receive chains from the ring until the pending frame fits (or
    /// none are left), then copies it in. Sets `used` when chains were
    /// returned to the guest.
    fn place_frame(&mut self, queue: &mut Queue, mem: &Memory, used: &mut bool) -> Placement {
        let len = self.rx.pending;
        let mergeable = self.has(vnet::VIRTIO_NET_F_MRG_RXBUF);
        loop {
            let capacity: usize = if mergeable {
                self.rx.held.iter().map(|c| c.capacity).sum()
            } else {
                self.rx.held.front().map_or(0, |c| c.capacity)
            };
            if capacity >= len {
                break;
            }
            if !mergeable && !self.rx.held.is_empty() {
                // One chain must hold the frame, and this one cannot: drop
                // the frame, keep the chain for the next one.
                self.stats.rx_dropped += 1;
                return Placement::Dropped;
            }
            if mergeable {
                let held_descs: usize = self.rx.held.iter().map(|c| c.descriptors).sum();
                if held_descs >= usize::from(queue.size()) {
                    // All the ring's buffers together are too small.
                    self.stats.rx_dropped += 1;
                    return Placement::Dropped;
                }
            }
            let desc_chain = match queue.pop_descriptor_chain(mem) {
                Some(desc_chain) => desc_chain,
                None => {
                    // Ask to be notified of new buffers, and take any that
                    // came just before that.
                    if !queue.enable_notification(mem).unwrap_or(false) {
                        return Placement::NoBuffers;
                    }
                    match queue.pop_descriptor_chain(mem) {
                        Some(desc_chain) => desc_chain,
                        None => return Placement::NoBuffers,
                    }
                }
            };
            let head = desc_chain.head_index();
            match RxChain::parse(desc_chain, mem) {
                Ok(chain) => self.rx.held.push_back(chain),
                Err(err) => {
                    self.stats.rx_bad_chains += 1;
                    log::debug!("{}: receive chain {head} dropped: {err}", self.name);
                    *used |= add_used(queue, mem, head, 0);
                }
            }
        }

        // How many chains the frame spans, for the header's num_buffers.
        let mut count = 0usize;
        let mut covered = 0usize;
        for chain in &self.rx.held {
            count += 1;
            covered += chain.capacity;
            if covered >= len {
                break;
            }
        }
        // count <= QUEUE_SIZE, so it fits in u16.
        let num_buffers = u16::try_from(count).unwrap_or(u16::MAX).to_le_bytes();
        self.rx.buf[NUM_BUFFERS_OFFSET..VNET_HDR_LEN].copy_from_slice(&num_buffers);
        if !self.has(vnet::VIRTIO_NET_F_GUEST_CSUM) {
            // The tap may mark frames DATA_VALID; a driver that did not
            // take checksum offload must see flags 0 (virtio 1.2, 5.1.6.4.1).
            self.rx.buf[0] = 0;
        }

        let mut offset = 0;
        let mut complete = true;
        for chain in self.rx.held.drain(..count) {
            let end = (offset + chain.capacity).min(len);
            let written = if chain.write(mem, &self.rx.buf[offset..end]) {
                end - offset
            } else {
                complete = false;
                0
            };
            offset = end;
            // written <= MAX_FRAME_LEN + header, so it fits in u32.
            *used |= add_used(queue, mem, chain.head, written as u32);
        }
        if complete {
            self.stats.rx_frames += 1;
            self.stats.rx_bytes += (len - VNET_HDR_LEN) as u64;
            Placement::Delivered
        } else {
            self.stats.rx_dropped += 1;
            Placement::Dropped
        }
    }
}

/// Puts a chain in the used ring; true when it went in.
fn add_used(queue: &mut Queue, mem: &Memory, head: u16, len: u32) -> bool {
    queue.add_used(mem, head, len).is_ok()
}

/// The features offered for a backend supporting `offloads` (TUN_F_*).
fn offered_features(offloads: u32) -> u64 {
    let bit = |b: u32| 1u64 << b;
    let mut offered = features::VERSION_1
        | features::RING_EVENT_IDX
        | bit(vnet::VIRTIO_NET_F_MAC)
        | bit(vnet::VIRTIO_NET_F_STATUS)
        | bit(vnet::VIRTIO_NET_F_MRG_RXBUF);
    if offloads & libc::TUN_F_CSUM != 0 {
        offered |= bit(vnet::VIRTIO_NET_F_CSUM) | bit(vnet::VIRTIO_NET_F_GUEST_CSUM);
        if offloads & libc::TUN_F_TSO4 != 0 {
            offered |= bit(vnet::VIRTIO_NET_F_HOST_TSO4) | bit(vnet::VIRTIO_NET_F_GUEST_TSO4);
        }
        if offloads & libc::TUN_F_TSO6 != 0 {
            offered |= bit(vnet::VIRTIO_NET_F_HOST_TSO6) | bit(vnet::VIRTIO_NET_F_GUEST_TSO6);
        }
        if offloads & libc::TUN_F_UFO != 0 {
            offered |= bit(vnet::VIRTIO_NET_F_HOST_UFO) | bit(vnet::VIRTIO_NET_F_GUEST_UFO);
        }
    }
    offered
}

/// The tap offloads (TUN_F_*) matching the guest's acked receive features:
/// what the guest can take from the host.
fn tap_offloads(acked: u64) -> u32 {
    let has = |b: u32| acked & (1u64 << b) != 0;
    if !has(vnet::VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if has(vnet::VIRTIO_NET_F_GUEST_TSO4) {
        flags |= libc::TUN_F_TSO4;
    }
    if has(vnet::VIRTIO_NET_F_GUEST_TSO6) {
        flags |= libc::TUN_F_TSO6;
    }
    if has(vnet::VIRTIO_NET_F_GUEST_UFO) {
        flags |= libc::TUN_F_UFO;
    }
    flags
}

impl<B: Backend> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn features(&self) -> u64 {
        self.avail_features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    /// `struct virtio_net_config`: mac, status (link up), and
    /// max_virtqueue_pairs (1); the rest reads as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&self.mac.bytes());
        config[6..8].copy_from_slice(&(vnet::VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| config.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, acked: u64) -> Result<(), String> {
        let acked = acked & self.avail_features;
        if acked & features::VERSION_1 == 0 {
            return Err(format!(
                "{}: the driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are not supported)",
                self.name
            ));
        }
        self.backend
            .set_offload(tap_offloads(acked))
            .map_err(|err| format!("{}: cannot set the tap's offloads: {err}", self.name))?;
        self.acked_features = acked;
        self.active = true;
        self.broken = false;
        self.tx_blocked = false;
        self.rx.pending = 0;
        self.rx.held.clear();
        Ok(())
    }

    fn reset(&mut self) {
        self.active = false;
        self.acked_features = 0;
        self.tx_blocked = false;
        self.rx.pending = 0;
        self.rx.held.clear();
        if let Err(err) = self.backend.set_offload(0) {
            log::warn!("{}: cannot clear the tap's offloads: {err}", self.name);
        }
    }

    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &Memory) -> bool {
        if !self.active || queues.len() <= TX_QUEUE {
            return false;
        }
        self.sync_event_idx(queues);
        match index {
            // New receive buffers: deliver what waits, then read on.
            RX_QUEUE if !self.broken => self.process_rx(&mut queues[RX_QUEUE], mem),
            // While the tap is full, the event loop calls process_backend
            // when it drains; trying now would only fail again.
            TX_QUEUE if !self.tx_blocked => {
                let mut interrupt = self.process_tx(&mut queues[TX_QUEUE], mem);
                // What was just sent often has its answer waiting already
                // (the host kernel answers an ARP request or a ping inside
                // the write): deliver it now, with one interrupt for both,
                // instead of after another round of the event loop.
                if !self.broken && self.rx.pending == 0 {
                    interrupt |= self.process_rx(&mut queues[RX_QUEUE], mem);
                }
                interrupt
            }
            _ => false,
        }
    }

    fn rerun(&self, index: usize) -> bool {
        index == TX_QUEUE && self.tx_rerun
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.backend.fd())
    }

    fn backend_interest(&self) -> Interest {
        if !self.active || self.broken {
            return Interest::NONE;
        }
        Interest {
            readable: self.rx.pending == 0,
            writable: self.tx_blocked,
        }
    }

    fn process_backend(&mut self, queues: &mut [Queue], mem: &Memory) -> bool {
        if !self.active || self.broken || queues.len() <= TX_QUEUE {
            return false;
        }
        self.sync_event_idx(queues);
        let mut interrupt = false;
        if self.tx_blocked {
            self.tx_blocked = false;
            interrupt |= self.process_tx(&mut queues[TX_QUEUE], mem);
        }
        if self.rx.pending == 0 {
            interrupt |= self.process_rx(&mut queues[RX_QUEUE], mem);
        }
        interrupt
    }

    fn stats(&self) -> Option<String> {
        let s = &self.stats;
        let mut text = format!(
            "rx {} frames {} bytes, {} dropped, {} bad chains, {} stalls (no guest buffers); \
             tx {} frames {} bytes, {} dropped, {} bad chains, {} retries (tap full)",
            s.rx_frames,
            s.rx_bytes,
            s.rx_dropped,
            s.rx_bad_chains,
            s.rx_stalls,
            s.tx_frames,
            s.tx_bytes,
            s.tx_dropped,
            s.tx_bad_chains,
            s.tx_retries,
        );
        if let Some(drops) = self.backend.kernel_drops() {
            text.push_str(&format!(
                "; {drops} frames dropped by the host kernel before kiln read them"
            ));
        }
        Some(text)
    }
}

#[cfg(test)]
mod tap_tests;
#[cfg(test)]
pub(crate) mod tests;
