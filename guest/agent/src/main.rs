//! kiln-agent: the guest side of `kiln run -- CMD`.
//!
//! Started as PID 1 (`rdinit=/sbin/kiln-agent` for kiln's initramfs,
//! `init=` on a disk root), it mounts what a program expects, connects to
//! the host over vsock (CID 2, port 1024), takes the sandbox's clock,
//! entropy and names, runs the one command the host sends, streams its
//! output and exit status (kiln-proto), then syncs and resets the
//! machine. When the connection breaks before a command came (a copy of
//! this guest restored from a snapshot), it connects again. Run as any other process (not PID 1) it does the
//! same but leaves mounts and the machine alone, which is how an image
//! with its own init can start it.

mod command;
mod pty;
mod session;
mod sys;
mod workers;

use std::time::Duration;

use kiln_proto::AGENT_PORT;

/// The host's vsock CID.
const HOST_CID: u32 = 2;
/// How long to keep trying to reach the host.
const CONNECT_WITHIN: Duration = Duration::from_secs(10);
/// After the exit status, how long to wait for the host's next request
/// or for it to stop the VM.
const GOODBYE_WAIT: Duration = Duration::from_secs(5);

fn main() {
    let pid1 = std::process::id() == 1;
    sys::keep_freed_memory();
    if pid1 {
        sys::mount_basics();
        let _ = std::fs::write("/proc/sys/kernel/hostname", "kiln");
    }
    let opts = session::Options {
        reap_all: pid1,
        watch_oom: pid1,
        goodbye: GOODBYE_WAIT,
        apply_setup: pid1,
        ..Default::default()
    };
    // The session's threads, made before HELLO: a sandbox restored from
    // a template snapshot (taken at HELLO) has them already.
    workers::start(workers::SESSION_THREADS);
    let result = loop {
        let served = sys::vsock_connect(HOST_CID, AGENT_PORT, CONNECT_WITHIN)
            // Returns once the host has closed the connection (it stops
            // the VM once it has the status and its files) or gone quiet,
            // so nothing is lost in flight.
            .and_then(|conn| session::serve(conn, &opts).map(drop));
        match served {
            // The connection broke before a command came: this guest was
            // snapshotted while waiting and has been restored (vsock
            // connections do not survive that). Say HELLO to the new host.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => continue,
            other => break other,
        }
    };
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
