//! virtio-vsock (virtio 1.2, section 5.10): stream sockets between the
//! guest and host programs, with the host side on Unix sockets in
//! Firecracker's "hybrid vsock" convention ([`muxer`]).
//!
//! Three queues: receive (0, packets to the guest), transmit (1, packets
//! from the guest) and event (2, unused until a snapshot restore needs
//! TRANSPORT_RESET). Packets are read from and written to descriptor
//! chains by the rust-vmm `virtio-vsock` crate; [`conn`] keeps each
//! connection's state and credit, [`muxer`] the sockets.
//!
//! Only stream sockets are offered (no SEQPACKET): a guest packet of
//! another type is answered with RST, a packet to or from the wrong CID is
//! dropped, and a chain the crate cannot parse is returned unused and
//! counted. Nothing a guest sends can make the device panic or spin.

mod conn;
pub mod muxer;
pub mod proto;

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use virtio_queue::QueueT;
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};

use super::{device_type, features, needs_interrupt, Interest, Memory, Queue, VirtioDevice};
use muxer::Muxer;
use proto::Packet;

/// Receive queue index.
pub const RX_QUEUE: usize = 0;
/// Transmit queue index.
pub const TX_QUEUE: usize = 1;
/// Event queue index.
pub const EVENT_QUEUE: usize = 2;
/// Maximum size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Largest payload of one packet either way (Linux's
/// VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub const MAX_PKT_DATA: u32 = 64 * 1024;
/// The CID a guest gets when none is given (Firecracker's examples use 3).
pub const DEFAULT_CID: u64 = 3;
/// Packets handled per queue per call before yielding to the event loop.
const BUDGET: usize = 256;

/// Errors setting up the device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The socket path is in use by a live listener.
    #[error("vsock socket {0} is in use by another process (another VM?): stop it or choose another path")]
    InUse(PathBuf),
    /// The socket path exists and is not a socket.
    #[error("vsock socket path {0} exists and is not a socket: remove it or choose another path")]
    NotASocket(PathBuf),
    /// The socket path is too long for a Unix socket address.
    #[error("vsock socket path {path} is too long: with the `_<port>` suffix of guest connections it must fit a Unix socket address; use a path of at most {max} bytes")]
    PathTooLong {
        /// The path.
        path: PathBuf,
        /// The longest usable path.
        max: usize,
    },
    /// bind(2) failed.
    #[error("cannot create the vsock socket {path}: {source}; check that its directory exists and is writable")]
    Bind {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An fd or the epoll set could not be set up.
    #[error("vsock: cannot {0}: {1}")]
    Setup(&'static str, std::io::Error),
    /// The CID is reserved.
    #[error("vsock CID {0} is reserved (0-2 and 0xffffffff are not guest CIDs): use 3 or above")]
    BadCid(u64),
}

/// Counters, printed when the VM stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VsockStats {
    /// Packets delivered to the guest.
    pub rx_packets: u64,
    /// Payload bytes delivered to the guest.
    pub rx_bytes: u64,
    /// Packets taken from the guest.
    pub tx_packets: u64,
    /// Payload bytes taken from the guest.
    pub tx_bytes: u64,
    /// Guest packets dropped (wrong CID).
    pub tx_dropped: u64,
    /// Chains returned unused because they were malformed.
    pub bad_chains: u64,
    /// Connections the host opened.
    pub host_connections: u64,
    /// Connections the guest opened.
    pub guest_connections: u64,
    /// Connections refused either way.
    pub refused: u64,
    /// Connections reset after a deadline passed.
    pub timeouts: u64,
}

/// A virtio-vsock device on a Unix socket.
pub struct Vsock {
    name: String,
    cid: u64,
    muxer: Muxer,
    acked: u64,
    active: bool,
    rerun: [bool; 2],
}

impl Vsock {
    /// A device for a guest with CID `cid`, its host side at `path`.
    pub fn new(cid: u64, path: &Path) -> Result<Vsock, VsockError> {
        if cid <= proto::HOST_CID || cid >= u64::from(u32::MAX) {
            return Err(VsockError::BadCid(cid));
        }
        let muxer = Muxer::new(cid, path)?;
        Ok(Vsock {
            name: format!("virtio-vsock {}", path.display()),
            cid,
            muxer,
            acked: 0,
            active: false,
            rerun: [false; 2],
        })
    }

    /// The counters so far.
    pub fn vsock_stats(&self) -> VsockStats {
        self.muxer.stats
    }

    fn sync_event_idx(&self, queues: &mut [Queue]) {
        let on = self.acked & features::RING_EVENT_IDX != 0;
        for q in queues.iter_mut() {
            q.set_event_idx(on);
        }
    }

    /// Takes the guest's packets to the muxer.
    fn process_tx(&mut self, queue: &mut Queue, mem: &Memory) -> bool {
        let mut used = false;
        self.rerun[TX_QUEUE] = false;
        let mut budget = BUDGET;
        loop {
            let _ = queue.disable_notification(mem);
            let mut popped = false;
            while let Some(mut chain) = queue.pop_descriptor_chain(mem) {
                if budget == 0 {
                    queue.set_next_avail(queue.next_avail().wrapping_sub(1));
                    self.rerun[TX_QUEUE] = true;
                    return used && needs_interrupt(queue, mem);
                }
                budget -= 1;
                popped = true;
                let head = chain.head_index();
                match VsockPacket::from_tx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                    Ok(pkt) => {
                        let hdr = Packet::read(&pkt);
                        self.muxer.stats.tx_packets += 1;
                        if hdr.op == proto::op::RW {
                            self.muxer.stats.tx_bytes += u64::from(hdr.len);
                        }
                        self.muxer.send(&hdr, pkt.data_slice());
                    }
                    Err(e) => {
                        self.muxer.stats.bad_chains += 1;
                        log::debug!("{}: transmit chain {head} dropped: {e}", self.name);
                    }
                }
                used |= queue.add_used(mem, head, 0).is_ok();
            }
            match queue.enable_notification(mem) {
                Ok(true) if popped => continue,
                _ => break,
            }
        }
        used && needs_interrupt(queue, mem)
    }

    /// Hands the guest what the muxer has for it, while it has buffers.
    fn process_rx(&mut self, queue: &mut Queue, mem: &Memory) -> bool {
        let mut used = false;
        self.rerun[RX_QUEUE] = false;
        for _ in 0..BUDGET {
            if !self.muxer.has_rx() {
                return used && needs_interrupt(queue, mem);
            }
            let Some(mut chain) = queue.pop_descriptor_chain(mem) else {
                // No buffers: the guest's next RX notification brings us back.
                return used && needs_interrupt(queue, mem);
            };
            let head = chain.head_index();
            let len = match VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                // A receive buffer must have room for data: one without
                // would sit at the head of the ring and hold up the rest.
                Ok(pkt) if pkt.data_slice().is_none_or(|d| d.is_empty()) => {
                    self.muxer.stats.bad_chains += 1;
                    log::debug!("{}: receive chain {head} has no room for data", self.name);
                    0
                }
                Ok(mut pkt) => {
                    let mut hdr = Packet::default();
                    if self.muxer.recv(&mut hdr, pkt.data_slice()) {
                        hdr.write(&mut pkt);
                        self.muxer.stats.rx_packets += 1;
                        if hdr.op == proto::op::RW {
                            self.muxer.stats.rx_bytes += u64::from(hdr.len);
                        }
                        PKT_HEADER_SIZE as u32 + hdr.len
                    } else {
                        // Nothing after all (a socket had no data yet):
                        // give the buffer back untouched.
                        queue.set_next_avail(queue.next_avail().wrapping_sub(1));
                        return used && needs_interrupt(queue, mem);
                    }
                }
                Err(e) => {
                    self.muxer.stats.bad_chains += 1;
                    log::debug!("{}: receive chain {head} dropped: {e}", self.name);
                    0
                }
            };
            used |= queue.add_used(mem, head, len).is_ok();
        }
        self.rerun[RX_QUEUE] = self.muxer.has_rx();
        used && needs_interrupt(queue, mem)
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn features(&self) -> u64 {
        features::VERSION_1 | features::RING_EVENT_IDX
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    /// `struct virtio_vsock_config`: the guest's CID (le64).
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.cid.to_le_bytes();
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
        let acked = acked & self.features();
        if acked & features::VERSION_1 == 0 {
            return Err(format!(
                "{}: the driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are not supported)",
                self.name
            ));
        }
        self.acked = acked;
        self.active = true;
        self.muxer.activate();
        Ok(())
    }

    fn reset(&mut self) {
        self.active = false;
        self.acked = 0;
        self.rerun = [false; 2];
        self.muxer.reset();
    }

    /// After a restore the host side of every connection is gone: tell the
    /// guest with VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on the event queue, so
    /// it resets its sockets (listeners stay and are reachable again), as
    /// Firecracker does.
    fn restored(&mut self, queues: &mut [Queue], mem: &Memory) -> bool {
        let Some(queue) = queues.get_mut(EVENT_QUEUE) else {
            return false;
        };
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            log::warn!(
                "{}: the guest left no event buffer: it is not told that its connections were reset",
                self.name
            );
            return false;
        };
        let head = chain.head_index();
        let written = match chain.writer(mem) {
            Ok(mut w) => {
                use std::io::Write;
                w.write_all(&proto::EVENT_TRANSPORT_RESET.to_le_bytes())
                    .map(|()| 4)
                    .unwrap_or(0)
            }
            Err(_) => 0,
        };
        if written == 0 {
            self.muxer.stats.bad_chains += 1;
        }
        queue.add_used(mem, head, written).is_ok() && needs_interrupt(queue, mem)
    }

    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &Memory) -> bool {
        if !self.active || queues.len() <= TX_QUEUE {
            return false;
        }
        self.sync_event_idx(queues);
        let mut interrupt = false;
        if index == TX_QUEUE {
            interrupt |= self.process_tx(&mut queues[TX_QUEUE], mem);
        }
        // Whatever the guest sent may have produced answers; and new
        // receive buffers let waiting packets go.
        if index == TX_QUEUE || index == RX_QUEUE {
            interrupt |= self.process_rx(&mut queues[RX_QUEUE], mem);
        }
        interrupt
    }

    fn rerun(&self, index: usize) -> bool {
        self.rerun.get(index).copied().unwrap_or(false)
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.muxer.fd())
    }

    fn backend_interest(&self) -> Interest {
        if self.active {
            Interest::READABLE
        } else {
            Interest::NONE
        }
    }

    fn process_backend(&mut self, queues: &mut [Queue], mem: &Memory) -> bool {
        if !self.active || queues.len() <= TX_QUEUE {
            return false;
        }
        self.sync_event_idx(queues);
        self.muxer.process_events();
        self.process_rx(&mut queues[RX_QUEUE], mem)
    }

    fn stats(&self) -> Option<String> {
        let s = &self.muxer.stats;
        Some(format!(
            "rx {} packets {} bytes; tx {} packets {} bytes, {} dropped; {} bad chains; \
             connections: {} from the host, {} from the guest, {} refused, {} timed out",
            s.rx_packets,
            s.rx_bytes,
            s.tx_packets,
            s.tx_bytes,
            s.tx_dropped,
            s.bad_chains,
            s.host_connections,
            s.guest_connections,
            s.refused,
            s.timeouts
        ))
    }
}

#[cfg(test)]
mod tests;
