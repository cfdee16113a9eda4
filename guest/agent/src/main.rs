//! kiln-agent: the guest side of `kiln run -- CMD`.
//!
//! Started as PID 1 (`rdinit=/sbin/kiln-agent` for kiln's initramfs,
//! `init=` on a disk root), it mounts what a program expects, connects to
//! the host over vsock (CID 2, port 1024), runs the one command the host
//! sends, streams its output and exit status (kiln-proto), then syncs and
//! resets the machine. Run as any other process (not PID 1) it does the
//! same but leaves mounts and the machine alone, which is how an image
//! with its own init can start it.

mod session;
mod sys;

use std::io::Read;
use std::time::Duration;

use kiln_proto::AGENT_PORT;

/// The host's vsock CID.
const HOST_CID: u32 = 2;
/// How long to keep trying to reach the host.
const CONNECT_WITHIN: Duration = Duration::from_secs(10);
/// How long to wait for the host to take the exit status and stop the VM.
const GOODBYE_WAIT: Duration = Duration::from_secs(5);

fn main() {
    let pid1 = std::process::id() == 1;
    if pid1 {
        sys::mount_basics();
        let _ = std::fs::write("/proc/sys/kernel/hostname", "kiln");
    }
    let result = sys::vsock_connect(HOST_CID, AGENT_PORT, CONNECT_WITHIN).and_then(|conn| {
        let mut waiter = conn.try_clone()?;
        let opts = session::Options {
            reap_all: pid1,
            watch_oom: pid1,
            ..Default::default()
        };
        session::serve(conn, &opts)?;
        // The host stops the VM once it has the status; wait for that (or
        // for it to close the connection) before resetting, so the status
        // is not lost in flight.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while matches!(waiter.read(&mut buf), Ok(n) if n > 0) {}
            let _ = tx.send(());
        });
        let _ = rx.recv_timeout(GOODBYE_WAIT);
        Ok(())
    });
    let code = match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kiln-agent: {e}");
            1
        }
    };
    if pid1 {
        sys::reboot();
    }
    std::process::exit(code);
}
