//! The virtio-vsock checks, through virtio-drivers' socket driver
//! (`VirtIOSocket` + `VsockConnectionManager`, which need a heap: see
//! `heap` in main.rs). The other end is the host test
//! (tests/agent_vsock.rs) on kiln's Unix sockets.
//!
//! - `vsock-echo`: connects to the host (CID 2) on `agent.vsock_port`
//!   (default 5000), sends `agent.vsock_bytes` (default 1 MiB) of a
//!   seeded stream while taking back what the host echoes, checks every
//!   byte, then shuts the connection down and waits for the RST;
//! - `vsock-listen`: listens on `agent.vsock_port` (default 5001) for the
//!   host's `CONNECT`, echoes `agent.vsock_bytes` back to it, and waits
//!   for the host to close;
//! - `vsock-refused`: connects to `agent.vsock_port` (default 5999), where
//!   nobody listens, and must be refused (RST) within 2 s.
//!
//! The stream: byte `i` is byte `i % 8` of the little-endian
//! `splitmix64(agent.seed ^ (i / 8))`.

use alloc::vec;
use core::ptr::NonNull;

use virtio_drivers::device::socket::{
    DisconnectReason, SocketError, VirtIOSocket, VsockAddr, VsockConnectionManager, VsockEventType,
    VMADDR_CID_HOST,
};
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::Error;

use crate::blk::{seed, splitmix64};
use crate::checks::{CheckResult, Fail};
use crate::netcheck::option;
use crate::tests::Context;
use crate::time::Clock;
use crate::virtio::{discover, reg};
use crate::{ensure, fail, println};

/// virtio device ID of a socket device.
pub const DEVICE_ID_VSOCK: u32 = 19;
/// Size of each receive buffer (header included).
const RX_BUFFER: usize = 4096;
/// Bytes the driver buffers per connection (its `buf_alloc`).
const CONN_BUFFER: u32 = 64 * 1024;
/// Bytes per packet sent.
const CHUNK: usize = 16 * 1024;
/// The agent's own port for connections it opens.
const LOCAL_PORT: u32 = 40_000;

type Manager = VsockConnectionManager<crate::hal::AgentHal, MmioTransport<'static>, RX_BUFFER>;

/// Byte `i` of the stream.
pub fn stream_byte(seed: u64, i: u64) -> u8 {
    splitmix64(seed ^ (i / 8)).to_le_bytes()[(i % 8) as usize]
}

/// Opens the first vsock device; resets it when dropped.
struct Socket {
    mgr: Option<Manager>,
    base: usize,
    cid: u64,
}

impl Socket {
    fn open(ctx: &Context) -> Result<Socket, Fail> {
        let devices = discover(ctx.cmdline);
        let Some(dev) = devices.nth(DEVICE_ID_VSOCK, 0) else {
            fail!(
                "no virtio-vsock device ({} virtio-mmio devices found)",
                devices.all().len()
            );
        };
        let Some(header) = NonNull::new(dev.base as *mut VirtIOHeader) else {
            fail!("virtio window at address 0");
        };
        // SAFETY: a virtio-mmio window of `size` bytes, identity mapped,
        // valid for the whole run; only this Socket drives it while it lives.
        let transport = match unsafe { MmioTransport::new(header, dev.size) } {
            Ok(t) => t,
            Err(e) => fail!("vsock at {:#x}: transport: {e}", dev.base),
        };
        let driver = match VirtIOSocket::new(transport) {
            Ok(d) => d,
            Err(e) => fail!("vsock at {:#x}: virtio-drivers: {e}", dev.base),
        };
        let cid = driver.guest_cid();
        Ok(Socket {
            mgr: Some(VsockConnectionManager::new_with_capacity(
                driver,
                CONN_BUFFER,
            )),
            base: dev.base,
            cid,
        })
    }

    fn mgr(&mut self) -> &mut Manager {
        self.mgr.as_mut().expect("open until dropped")
    }
}

impl Drop for Socket {
    /// Resets the device first, so virtio-drivers' clean-up (which waits
    /// for QueueReady to read 0) cannot spin, then lets it clean up.
    fn drop(&mut self) {
        let dev = crate::virtio::Device {
            base: self.base,
            ..Default::default()
        };
        dev.write(reg::STATUS, 0);
        drop(self.mgr.take());
    }
}

/// What a connection's run moved.
#[derive(Default)]
struct Flow {
    sent: u64,
    received: u64,
    first_rx: Option<u64>,
    last_rx: u64,
}

/// Takes what arrived on (`peer`, `port`): checks it against the stream
/// and returns the credit to the peer. With `echo`, sends it straight back.
fn drain(
    mgr: &mut Manager,
    peer: VsockAddr,
    port: u32,
    seed: u64,
    flow: &mut Flow,
    echo: bool,
) -> CheckResult {
    let mut buf = vec![0u8; CONN_BUFFER as usize];
    loop {
        let n = match mgr.recv(peer, port, &mut buf) {
            Ok(n) => n,
            Err(e) => fail!("recv: {e}"),
        };
        if n == 0 {
            return Ok(());
        }
        for (k, &b) in buf[..n].iter().enumerate() {
            let i = flow.received + k as u64;
            let want = stream_byte(seed, i);
            ensure!(
                b == want,
                "byte {i}: got {b:#04x}, the stream has {want:#04x}"
            );
        }
        flow.received += n as u64;
        let now = crate::time::now();
        flow.first_rx.get_or_insert(now);
        flow.last_rx = now;
        if let Err(e) = mgr.update_credit(peer, port) {
            fail!("credit update: {e}");
        }
        if echo {
            send_all(mgr, peer, port, &buf[..n], seed, flow, false)?;
        }
    }
}

/// Sends `data`, waiting for credit as needed (and draining meanwhile,
/// unless this is the echo path, which must not recurse).
fn send_all(
    mgr: &mut Manager,
    peer: VsockAddr,
    port: u32,
    data: &[u8],
    seed: u64,
    flow: &mut Flow,
    drain_meanwhile: bool,
) -> CheckResult {
    for chunk in data.chunks(CHUNK) {
        loop {
            match mgr.send(peer, port, chunk) {
                Ok(()) => break,
                Err(Error::SocketDeviceError(SocketError::InsufficientBufferSpaceInPeer)) => {
                    poll_once(mgr)?;
                    if drain_meanwhile {
                        drain(mgr, peer, port, seed, flow, false)?;
                    }
                }
                Err(e) => fail!("send: {e}"),
            }
        }
        flow.sent += chunk.len() as u64;
    }
    Ok(())
}

/// Handles one event if there is one; an unexpected disconnect fails.
fn poll_once(mgr: &mut Manager) -> Result<Option<VsockEventType>, Fail> {
    match mgr.poll() {
        Ok(Some(ev)) => match ev.event_type {
            VsockEventType::Disconnected { reason } => {
                fail!("the host side disconnected ({reason:?})")
            }
            other => Ok(Some(other)),
        },
        Ok(None) => Ok(None),
        Err(e) => fail!("poll: {e}"),
    }
}

/// Waits up to `ms` for a Connected event (or a disconnect, returned as
/// false).
fn wait_connected(mgr: &mut Manager, clock: &Clock, ms: u64) -> Result<bool, Fail> {
    let deadline = clock.deadline(ms);
    loop {
        match mgr.poll() {
            Ok(Some(ev)) => match ev.event_type {
                VsockEventType::Connected => return Ok(true),
                VsockEventType::Disconnected { .. } => return Ok(false),
                _ => {}
            },
            Ok(None) => {}
            Err(e) => fail!("poll: {e}"),
        }
        ensure!(
            !deadline.passed(),
            "no answer to the connection request in {ms} ms"
        );
        core::hint::spin_loop();
    }
}

/// `vsock-echo`.
pub fn vsock_echo(ctx: &Context) -> CheckResult {
    let port = option(ctx, "agent.vsock_port", 5000, 1..=u64::from(u32::MAX))? as u32;
    let bytes = option(ctx, "agent.vsock_bytes", 1 << 20, 1..=1 << 30)?;
    let seed = seed(ctx);
    let clock = Clock::new(ctx.cmdline);
    let mut sock = Socket::open(ctx)?;
    let cid = sock.cid;
    let mgr = sock.mgr();
    let host = VsockAddr {
        cid: VMADDR_CID_HOST,
        port,
    };
    if let Err(e) = mgr.connect(host, LOCAL_PORT) {
        fail!("connect: {e}");
    }
    ensure!(
        wait_connected(mgr, &clock, 5_000)?,
        "the host refused a connection to port {port}"
    );
    let start = crate::time::now();
    let mut flow = Flow::default();
    let mut chunk = vec![0u8; CHUNK];
    while flow.sent < bytes {
        let n = (bytes - flow.sent).min(CHUNK as u64) as usize;
        for (k, b) in chunk[..n].iter_mut().enumerate() {
            *b = stream_byte(seed, flow.sent + k as u64);
        }
        send_all(mgr, host, LOCAL_PORT, &chunk[..n], seed, &mut flow, true)?;
        while poll_once(mgr)?.is_some() {}
        drain(mgr, host, LOCAL_PORT, seed, &mut flow, false)?;
    }
    let sent_at = crate::time::now();
    let deadline = clock.deadline(30_000);
    while flow.received < bytes {
        poll_once(mgr)?;
        drain(mgr, host, LOCAL_PORT, seed, &mut flow, false)?;
        ensure!(
            !deadline.passed(),
            "only {} of {bytes} bytes came back within 30 s",
            flow.received
        );
    }
    ensure!(
        flow.received == bytes,
        "got {} bytes back, sent {bytes}",
        flow.received
    );
    // Close: SHUTDOWN both ways; kiln answers with RST.
    if let Err(e) = mgr.shutdown(host, LOCAL_PORT) {
        fail!("shutdown: {e}");
    }
    let deadline = clock.deadline(5_000);
    let reason = loop {
        match mgr.poll() {
            Ok(Some(ev)) => {
                if let VsockEventType::Disconnected { reason } = ev.event_type {
                    break reason;
                }
            }
            Ok(None) => {}
            Err(e) => fail!("poll after shutdown: {e}"),
        }
        ensure!(!deadline.passed(), "no RST within 5 s of our SHUTDOWN");
    };
    ensure!(
        reason == DisconnectReason::Reset,
        "closed with {reason:?}, expected the device's RST"
    );
    let end = flow.last_rx.max(sent_at);
    println!(
        "AGENT: vsock-echo cid={cid} port={port} bytes={bytes} seed={seed:#x} \
         tx_ms={} rx_ms={} mib_s_x100={}",
        clock.micros(sent_at - start) / 1000,
        clock.micros(end - start) / 1000,
        clock.mib_per_s_x100(2 * bytes, end - start)
    );
    Ok(())
}

/// `vsock-listen`.
pub fn vsock_listen(ctx: &Context) -> CheckResult {
    let port = option(ctx, "agent.vsock_port", 5001, 1..=u64::from(u32::MAX))? as u32;
    let bytes = option(ctx, "agent.vsock_bytes", 1 << 20, 1..=1 << 30)?;
    let seed = seed(ctx);
    let clock = Clock::new(ctx.cmdline);
    let mut sock = Socket::open(ctx)?;
    let mgr = sock.mgr();
    mgr.listen(port);
    println!("AGENT: vsock-listen listening port={port}");
    let deadline = clock.deadline(30_000);
    let peer = loop {
        match mgr.poll() {
            Ok(Some(ev)) if ev.event_type == VsockEventType::ConnectionRequest => {
                break ev.source;
            }
            Ok(_) => {}
            Err(e) => fail!("poll: {e}"),
        }
        ensure!(
            !deadline.passed(),
            "no connection from the host within 30 s"
        );
    };
    ensure!(
        peer.cid == VMADDR_CID_HOST,
        "connection from CID {}, not the host",
        peer.cid
    );
    let mut flow = Flow::default();
    let deadline = clock.deadline(60_000);
    while flow.received < bytes {
        poll_once(mgr)?;
        drain(mgr, peer, port, seed, &mut flow, true)?;
        ensure!(
            !deadline.passed(),
            "only {} of {bytes} bytes came within 60 s",
            flow.received
        );
    }
    // The host closes once it has its bytes back.
    let deadline = clock.deadline(10_000);
    loop {
        match mgr.poll() {
            Ok(Some(ev)) => {
                if let VsockEventType::Disconnected { .. } = ev.event_type {
                    break;
                }
            }
            Ok(None) => {}
            Err(e) => fail!("poll: {e}"),
        }
        ensure!(!deadline.passed(), "the host did not close within 10 s");
    }
    println!(
        "AGENT: vsock-listen port={port} host_port={} bytes={} echoed={}",
        peer.port, flow.received, flow.sent
    );
    Ok(())
}

/// `vsock-refused`.
pub fn vsock_refused(ctx: &Context) -> CheckResult {
    let port = option(ctx, "agent.vsock_port", 5999, 1..=u64::from(u32::MAX))? as u32;
    let clock = Clock::new(ctx.cmdline);
    let mut sock = Socket::open(ctx)?;
    let mgr = sock.mgr();
    let host = VsockAddr {
        cid: VMADDR_CID_HOST,
        port,
    };
    if let Err(e) = mgr.connect(host, LOCAL_PORT + 1) {
        fail!("connect: {e}");
    }
    ensure!(
        !wait_connected(mgr, &clock, 2_000)?,
        "port {port} accepted a connection, but nobody listens there"
    );
    println!("AGENT: vsock-refused port={port}");
    Ok(())
}
