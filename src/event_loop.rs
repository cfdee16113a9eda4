//! The main thread's event loop (event-manager over epoll): console input
//! from stdin to the UART, SIGINT/SIGTERM/SIGHUP/SIGQUIT, the network and
//! vsock devices, and the exit eventfd that vCPUs and devices write when
//! the VM is over. Disks get a thread each ([`IoThread`]): their pread,
//! pwrite and fdatasync may take milliseconds, and nothing else should
//! wait for them.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use devices::serial::Serial;
use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};

use crate::console::EscapeParser;
use crate::control::{StopReason, VmControl};

/// Errors of the event loop.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    /// epoll setup or wait failed.
    #[error("event loop: {0:?}")]
    Manager(event_manager::Error),
    /// Signal setup failed.
    #[error("cannot set up signal handling: {0}")]
    Signals(std::io::Error),
    /// A device thread could not be started.
    #[error("cannot start the thread {name}: {error}")]
    Thread {
        /// The thread's name.
        name: String,
        /// Why.
        error: std::io::Error,
    },
    /// A device thread could not narrow its system calls.
    #[error("{0}")]
    Seccomp(crate::seccomp::SeccompError),
}

/// A subscriber shared with the event manager.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Blocks SIGINT, SIGTERM, SIGHUP and SIGQUIT in the calling thread (and
/// every thread it starts afterwards) so they arrive only through the
/// signalfd: each stops the VM cleanly (terminal restored, exit 128+N)
/// instead of killing kiln by its default action.
pub fn block_stop_signals() -> Result<(), EventLoopError> {
    let set = stop_sigset();
    // SAFETY: `set` is a valid, initialised sigset.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(EventLoopError::Signals(std::io::Error::from_raw_os_error(
            r,
        )));
    }
    Ok(())
}

fn stop_sigset() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set before sigaddset uses it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::sigaddset(&mut set, libc::SIGQUIT);
        set
    }
}

/// stdin -> serial, with the Ctrl-A escape.
pub struct ConsoleInput {
    serial: Arc<Mutex<Serial>>,
    control: Arc<VmControl>,
    parser: EscapeParser,
}

impl ConsoleInput {
    /// Feeds stdin to `serial`.
    pub fn new(serial: Arc<Mutex<Serial>>, control: Arc<VmControl>) -> Self {
        ConsoleInput {
            serial,
            control,
            parser: EscapeParser::default(),
        }
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 512];
        // SAFETY: reading into a local buffer of the given length.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                return;
            }
            // EOF or error: stop watching stdin, keep the VM running.
            let _ = ops.remove(events);
            return;
        }
        let input = self.parser.feed(&buf[..n as usize]);
        if !input.to_guest.is_empty() {
            self.serial
                .lock()
                .expect("serial lock")
                .queue_input(&input.to_guest);
        }
        if input.quit {
            self.control.request_stop(StopReason::ConsoleQuit);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(0, EventSet::IN)) {
            log::debug!("console input disabled (stdin cannot be polled): {e:?}");
        }
    }
}

/// SIGINT/SIGTERM/SIGHUP/SIGQUIT through a signalfd: they stop the VM,
/// unless a sandbox forwards them to its command.
pub struct StopSignals {
    fd: OwnedFd,
    control: Arc<VmControl>,
}

impl StopSignals {
    /// Creates the signalfd (the signals must already be blocked).
    pub fn new(control: Arc<VmControl>) -> Result<Self, EventLoopError> {
        let set = stop_sigset();
        // SAFETY: `set` is valid; -1 asks for a new fd.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(EventLoopError::Signals(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a new descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(StopSignals { fd, control })
    }
}

impl MutEventSubscriber for StopSignals {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // SAFETY: zero is a valid signalfd_siginfo.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reading one siginfo into a local of that size.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        if n as usize == size {
            let sig = info.ssi_signo as i32;
            if self.control.forward_signal(sig) {
                log::info!("received signal {sig}, passed on to the command");
                return;
            }
            log::info!("received signal {sig}, stopping the VM");
            self.control.request_stop(StopReason::Signal(sig));
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        ops.add(Events::new_raw(self.fd.as_raw_fd(), EventSet::IN))
            .expect("signalfd registers once");
    }
}

/// Drains the exit eventfd; the loop itself checks the stop flag.
pub struct ExitWatch(pub Arc<VmControl>);

impl MutEventSubscriber for ExitWatch {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.exit_evt.read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        let fd: RawFd = self.0.exit_evt.as_raw_fd();
        ops.add(Events::new_raw(fd, EventSet::IN))
            .expect("exit eventfd registers once");
    }
}

/// Drains an eventfd that only wakes the loop (its owner looks at what
/// woke it after every turn: API requests, say).
pub struct Wake(pub Arc<vmm_sys_util::eventfd::EventFd>);

impl MutEventSubscriber for Wake {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(self.0.as_raw_fd(), EventSet::IN)) {
            log::error!("cannot watch the API's eventfd: {e:?}");
        }
    }
}

/// The event loop with its subscribers.
pub struct EventLoop {
    manager: EventManager<Subscriber>,
    control: Arc<VmControl>,
}

impl EventLoop {
    /// An event loop that ends when `control` says stop.
    pub fn new(control: Arc<VmControl>) -> Result<Self, EventLoopError> {
        let mut manager = EventManager::new().map_err(EventLoopError::Manager)?;
        let exit_watch: Subscriber = Arc::new(Mutex::new(ExitWatch(control.clone())));
        let signals: Subscriber = Arc::new(Mutex::new(StopSignals::new(control.clone())?));
        manager.add_subscriber(exit_watch);
        manager.add_subscriber(signals);
        Ok(EventLoop { manager, control })
    }

    /// Adds a subscriber (console input, device queues).
    pub fn add(&mut self, s: Subscriber) {
        self.manager.add_subscriber(s);
    }

    /// Waits for events once and serves them.
    pub fn run_once(&mut self) -> Result<(), EventLoopError> {
        if !self.control.stopping() {
            self.manager.run().map_err(EventLoopError::Manager)?;
        }
        Ok(())
    }
}

/// A device's own event loop on a thread of its own (a disk: see the
/// module documentation). It serves its subscribers until [`IoThread::stop`]
/// (or drop).
pub struct IoThread {
    stop: Arc<vmm_sys_util::eventfd::EventFd>,
    handle: Option<JoinHandle<()>>,
}

/// Ends an [`IoThread`]'s loop when its eventfd is written.
struct StopWatch {
    evt: Arc<vmm_sys_util::eventfd::EventFd>,
    stopped: Arc<AtomicBool>,
}

impl MutEventSubscriber for StopWatch {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        self.stopped.store(true, Ordering::SeqCst);
    }

    fn init(&mut self, ops: &mut EventOps) {
        ops.add(Events::new_raw(self.evt.as_raw_fd(), EventSet::IN))
            .expect("the stop eventfd registers once");
    }
}

impl IoThread {
    /// Starts thread `name` serving `subscribers`; the thread narrows its
    /// system calls to `kind`'s seccomp list before it serves anything.
    pub fn spawn(
        name: &str,
        kind: crate::seccomp::ThreadKind,
        subscribers: Vec<Subscriber>,
    ) -> Result<IoThread, EventLoopError> {
        let failed = |error| EventLoopError::Thread {
            name: name.to_string(),
            error,
        };
        let mut manager = EventManager::<Subscriber>::new().map_err(EventLoopError::Manager)?;
        let stop =
            Arc::new(vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).map_err(failed)?);
        let stopped = Arc::new(AtomicBool::new(false));
        manager.add_subscriber(Arc::new(Mutex::new(StopWatch {
            evt: stop.clone(),
            stopped: stopped.clone(),
        })));
        for s in subscribers {
            manager.add_subscriber(s);
        }
        let thread_name = name.to_string();
        let (filtered_tx, filtered) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let installed = crate::seccomp::install(kind);
                let ok = installed.is_ok();
                let _ = filtered_tx.send(installed);
                if !ok {
                    return;
                }
                while !stopped.load(Ordering::SeqCst) {
                    if let Err(e) = manager.run() {
                        log::error!("{thread_name}: its event loop failed: {e:?}");
                        break;
                    }
                }
            })
            .map_err(failed)?;
        match filtered.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = handle.join();
                return Err(EventLoopError::Seccomp(e));
            }
            Err(_) => {
                let _ = handle.join();
                return Err(failed(std::io::Error::other("it ended at its start")));
            }
        }
        Ok(IoThread {
            stop,
            handle: Some(handle),
        })
    }

    /// Ends the loop after the events at hand and waits for the thread.
    pub fn stop(mut self) {
        self.end();
    }

    fn end(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = self.stop.write(1);
            let _ = h.join();
        }
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        self.end();
    }
}
