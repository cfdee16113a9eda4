//! How threads agree that the VM is over: the first stop reason wins, the
//! stop flag tells every vCPU loop to leave, and the exit eventfd wakes the
//! event loop on the main thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest reset the machine (i8042 `reboot=k`, or a reset event).
    Reset,
    /// The guest powered off: through the ACPI sleep-control register (S5),
    /// or, without ACPI, by halting every vCPU with interrupts disabled.
    PowerOff,
    /// The user pressed Ctrl-A x on the console.
    ConsoleQuit,
    /// kiln received SIGINT, SIGTERM, SIGHUP or SIGQUIT.
    Signal(i32),
    /// A vCPU hit something kiln cannot handle: one line for the user.
    Fatal(String),
    /// kiln's own side is done with the VM (a sandbox's command ended, or
    /// its time ran out); the exit code is the sandbox's.
    Finished,
    /// The guest kernel panicked: it said so through pvpanic, or it reset
    /// right after printing its panic line.
    GuestPanic,
}

/// Exit code when the guest kernel panicked (in every mode).
pub const EXIT_GUEST_PANIC: i32 = 123;

impl StopReason {
    /// The process exit code for this reason.
    pub fn exit_code(&self) -> i32 {
        match self {
            StopReason::Reset
            | StopReason::PowerOff
            | StopReason::ConsoleQuit
            | StopReason::Finished => 0,
            StopReason::Signal(sig) => 128 + sig,
            StopReason::Fatal(_) => 1,
            StopReason::GuestPanic => EXIT_GUEST_PANIC,
        }
    }
}

/// Shared between the vCPU threads and the main thread.
pub struct VmControl {
    stop: AtomicBool,
    /// vCPU threads leave their run loops (to be paused) while set.
    pause: AtomicBool,
    reason: Mutex<Option<StopReason>>,
    /// Written once a stop is requested.
    pub exit_evt: EventFd,
    /// Per vCPU: parked with interrupts off (cannot run again by itself).
    parked: Vec<AtomicBool>,
    /// Where signals to kiln go instead of stopping the VM (a sandbox's
    /// command), and how many went there.
    forward: Mutex<Option<(Sender<i32>, u32)>>,
}

/// The signal that stops the VM even while signals are forwarded: the
/// third one (a command that ignores two Ctrl-C's cannot hold kiln).
pub const FORWARDED_SIGNALS_MAX: u32 = 2;

impl VmControl {
    /// Control block for `cpus` vCPUs.
    pub fn new(cpus: usize) -> std::io::Result<Self> {
        Ok(VmControl {
            stop: AtomicBool::new(false),
            pause: AtomicBool::new(false),
            reason: Mutex::new(None),
            exit_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            parked: (0..cpus).map(|_| AtomicBool::new(false)).collect(),
            forward: Mutex::new(None),
        })
    }

    /// From now on, signals to kiln go to `to` instead of stopping the VM
    /// (up to [`FORWARDED_SIGNALS_MAX`]).
    pub fn forward_signals_to(&self, to: Sender<i32>) {
        *self.forward.lock().expect("forward lock") = Some((to, 0));
    }

    /// Signals stop the VM again.
    pub fn stop_forwarding(&self) {
        *self.forward.lock().expect("forward lock") = None;
    }

    /// Forwards `sig` if a forwarder is set and has not had its share;
    /// returns whether it did (else the caller stops the VM).
    pub fn forward_signal(&self, sig: i32) -> bool {
        let mut fwd = self.forward.lock().expect("forward lock");
        match fwd.as_mut() {
            Some((to, count)) if *count < FORWARDED_SIGNALS_MAX => {
                *count += 1;
                to.send(sig).is_ok()
            }
            _ => false,
        }
    }

    /// Asks the VM to stop; the first reason given is the one reported.
    pub fn request_stop(&self, reason: StopReason) {
        {
            let mut r = self.reason.lock().expect("stop reason lock");
            if r.is_none() {
                *r = Some(reason);
            }
        }
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.exit_evt.write(1);
    }

    /// Whether a stop was requested.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Asks the vCPU threads to leave their run loops (true) or lets
    /// restarted ones run (false).
    pub fn set_pause(&self, pause: bool) {
        self.pause.store(pause, Ordering::SeqCst);
    }

    /// Whether the vCPUs should leave their run loops to be paused.
    pub fn pausing(&self) -> bool {
        self.pause.load(Ordering::SeqCst)
    }

    /// The reason for the stop, if any.
    pub fn reason(&self) -> Option<StopReason> {
        self.reason.lock().expect("stop reason lock").clone()
    }

    /// Records whether vCPU `id` is parked, and returns true when all are.
    pub fn set_parked(&self, id: usize, parked: bool) -> bool {
        self.parked[id].store(parked, Ordering::SeqCst);
        parked && self.parked.iter().all(|p| p.load(Ordering::SeqCst))
    }
}

/// The i8042 reset line: a guest reset stops the VM.
pub struct ResetLine(pub std::sync::Arc<VmControl>);

impl devices::Interrupt for ResetLine {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.request_stop(StopReason::Reset);
        Ok(())
    }
}

/// The pvpanic line: a guest kernel panic stops the VM.
pub struct PanicLine(pub std::sync::Arc<VmControl>);

impl devices::Interrupt for PanicLine {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.request_stop(StopReason::GuestPanic);
        Ok(())
    }
}

/// The ACPI sleep-control register's S5 line: a guest power-off stops the VM.
pub struct PowerOffLine(pub std::sync::Arc<VmControl>);

impl devices::Interrupt for PowerOffLine {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.request_stop(StopReason::PowerOff);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let c = VmControl::new(1).unwrap();
        assert!(!c.stopping());
        c.request_stop(StopReason::Reset);
        c.request_stop(StopReason::Fatal("x".into()));
        assert!(c.stopping());
        assert_eq!(c.reason(), Some(StopReason::Reset));
        assert_eq!(c.exit_evt.read().unwrap(), 2);
    }

    #[test]
    fn exit_codes() {
        assert_eq!(StopReason::Reset.exit_code(), 0);
        assert_eq!(StopReason::PowerOff.exit_code(), 0);
        assert_eq!(StopReason::Signal(libc::SIGINT).exit_code(), 130);
        assert_eq!(StopReason::Signal(libc::SIGTERM).exit_code(), 143);
        assert_eq!(StopReason::Fatal(String::new()).exit_code(), 1);
        assert_eq!(StopReason::GuestPanic.exit_code(), 123);
    }

    #[test]
    fn signals_are_forwarded_twice_then_stop() {
        let c = VmControl::new(1).unwrap();
        assert!(!c.forward_signal(2), "nothing to forward to");
        let (tx, rx) = std::sync::mpsc::channel();
        c.forward_signals_to(tx);
        assert!(c.forward_signal(2));
        assert!(c.forward_signal(15));
        assert!(!c.forward_signal(2), "the third one stops the VM");
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), [2, 15]);
    }

    #[test]
    fn all_parked_only_when_every_cpu_is() {
        let c = VmControl::new(2).unwrap();
        assert!(!c.set_parked(0, true));
        assert!(c.set_parked(1, true));
        assert!(!c.set_parked(0, false));
    }
}
