//! seccomp: each kiln thread that handles guest-controlled data first
//! narrows the system calls it may make to an allow-list of its own
//! (built with the `seccompiler` crate), so a guest that took over the
//! thread could do little more than the thread already does.
//!
//! `--seccomp on` (the default): a call outside the list stops kiln with
//! one line naming the thread and the call, exit code 159 (128 + SIGSYS, as
//! a shell reports a process killed by SIGSYS; `kiln run -- CMD` exits with
//! its code for kiln's own errors, 125, instead). `--seccomp log`: the call
//! goes through and the host kernel logs it (audit, `dmesg`), for finding
//! what a list misses. `--seccomp off`: no filters.
//!
//! Which threads have a list so far: the disk threads (`kiln-diskN`), the
//! vCPU threads (`vcpuN`) and the API thread (`api`, with the threads of
//! its HTTP server). The lists are in lists.rs; the
//! measurements the lists come from, and the plan for the other threads,
//! are in docs/design/seccomp-inventory.md.

mod lists;

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// The exit code after a forbidden system call: 128 + SIGSYS (a sandbox
/// sets its own code for kiln's errors instead: [`set_exit_code`]).
pub const EXIT_SECCOMP: i32 = 128 + libc::SIGSYS;

static EXIT_CODE: AtomicI32 = AtomicI32::new(EXIT_SECCOMP);

/// The exit code kiln stops with after a forbidden call.
pub fn set_exit_code(code: i32) {
    EXIT_CODE.store(code, Ordering::Relaxed);
}

/// What `--seccomp` asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// No filters.
    Off,
    /// Filters that let every call through and have the kernel log the
    /// ones outside the lists.
    Log,
    /// Filters that stop kiln at the first call outside the lists.
    #[default]
    On,
}

/// A kind of thread with an allow-list of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// A disk's I/O thread (event_loop::IoThread): reads and writes the
    /// image for the guest's requests.
    Disk,
    /// A vCPU thread (vcpu::Vcpu::run): runs the guest and the device
    /// models its exits reach.
    Vcpu,
    /// The API thread (api::ApiServer) and its HTTP server's threads.
    Api,
}

impl ThreadKind {
    fn label(self) -> &'static str {
        match self {
            ThreadKind::Disk => "disk I/O",
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::Api => "API",
        }
    }

    /// Its name for `KILN_SECCOMP_SELFTEST`.
    fn selftest_name(self) -> &'static str {
        match self {
            ThreadKind::Disk => "disk",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Api => "api",
        }
    }
}

/// Errors installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter could not be built (a bug in a list).
    #[error("cannot build the seccomp filter for the {0} thread: {1}")]
    Build(&'static str, seccompiler::BackendError),
    /// The kernel refused it.
    #[error("cannot install the seccomp filter for the {0} thread: {1}; run with --seccomp off on a host without seccomp")]
    Install(&'static str, seccompiler::Error),
}

static MODE: OnceLock<Mode> = OnceLock::new();

/// Sets the mode for the whole process (once, before any thread starts);
/// with `on`, installs the handler that reports a forbidden call.
pub fn set_mode(mode: Mode) {
    if MODE.set(mode).is_ok() && mode == Mode::On {
        install_sigsys_handler();
    }
}

/// Caps glibc's malloc arenas at 8, its own default threshold. Without a
/// cap, glibc counts the CPUs (opening /sys/devices/system/cpu/online)
/// the first time a thread needs a ninth arena, which can be a thread
/// whose filter has no openat (measured: the tenth thread of a
/// two-vCPU VM did it; the HTTP server's threads start under the API
/// thread's filter).
fn fix_malloc_arenas() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: mallopt only sets a malloc parameter.
    ONCE.call_once(|| unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 8);
    });
}

fn mode() -> Mode {
    MODE.get().copied().unwrap_or_default()
}

thread_local! {
    /// The kind of the current thread's filter, for the SIGSYS report.
    static KIND: std::cell::Cell<Option<ThreadKind>> = const { std::cell::Cell::new(None) };
}

/// Narrows the current thread's system calls to `kind`'s list (nothing
/// with `--seccomp off`). Call it before the thread touches guest data.
/// Then, for tests of a real kiln, [`selftest`].
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    let mismatch = match mode() {
        Mode::Off => return Ok(()),
        Mode::Log => SeccompAction::Log,
        Mode::On => SeccompAction::Trap,
    };
    let programs = filters(kind, mismatch)?;
    fix_malloc_arenas();
    KIND.with(|k| k.set(Some(kind)));
    for program in &programs {
        seccompiler::apply_filter(program).map_err(|e| SeccompError::Install(kind.label(), e))?;
    }
    selftest(kind);
    Ok(())
}

/// The BPF programs for `kind`, in the order they go in: its list
/// allowed, anything else `mismatch`. A list that allows clone3 (a
/// thread that starts threads) gets a filter refusing clone3 with ENOSYS
/// first: clone3 passes its flags in memory, where seccomp cannot look,
/// so glibc then starts threads with clone(2), whose flags the list
/// checks. The kernel applies the stricter answer of the two filters.
fn filters(kind: ThreadKind, mismatch: SeccompAction) -> Result<Vec<BpfProgram>, SeccompError> {
    let build = |e| SeccompError::Build(kind.label(), e);
    let rules = lists::rules(kind).map_err(build)?;
    let starts_threads = rules.contains_key(&libc::SYS_clone3);
    let list = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .and_then(BpfProgram::try_from)
        .map_err(build)?;
    if !starts_threads {
        return Ok(vec![list]);
    }
    let no_clone3 = SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )
    .and_then(BpfProgram::try_from)
    .map_err(build)?;
    Ok(vec![no_clone3, list])
}

/// Names the system calls the lists mention, and a few a taken-over
/// thread would try first; others are reported by number.
fn syscall_name(nr: i64) -> Option<&'static str> {
    const NAMES: &[(i64, &str)] = &[
        (libc::SYS_read, "read"),
        (libc::SYS_write, "write"),
        (libc::SYS_open, "open"),
        (libc::SYS_openat, "openat"),
        (libc::SYS_close, "close"),
        (libc::SYS_ioctl, "ioctl"),
        (libc::SYS_socket, "socket"),
        (libc::SYS_connect, "connect"),
        (libc::SYS_bind, "bind"),
        (libc::SYS_listen, "listen"),
        (libc::SYS_accept4, "accept4"),
        (libc::SYS_sendto, "sendto"),
        (libc::SYS_recvfrom, "recvfrom"),
        (libc::SYS_clone, "clone"),
        (libc::SYS_clone3, "clone3"),
        (libc::SYS_fork, "fork"),
        (libc::SYS_vfork, "vfork"),
        (libc::SYS_execve, "execve"),
        (libc::SYS_execveat, "execveat"),
        (libc::SYS_kill, "kill"),
        (libc::SYS_tgkill, "tgkill"),
        (libc::SYS_ptrace, "ptrace"),
        (libc::SYS_prctl, "prctl"),
        (libc::SYS_mount, "mount"),
        (libc::SYS_unlink, "unlink"),
        (libc::SYS_unlinkat, "unlinkat"),
        (libc::SYS_rename, "rename"),
        (libc::SYS_renameat2, "renameat2"),
        (libc::SYS_mkdir, "mkdir"),
        (libc::SYS_mkdirat, "mkdirat"),
        (libc::SYS_getppid, "getppid"),
        (libc::SYS_newfstatat, "newfstatat"),
        (libc::SYS_statx, "statx"),
        (libc::SYS_fstat, "fstat"),
        (libc::SYS_lseek, "lseek"),
        (libc::SYS_epoll_ctl, "epoll_ctl"),
        (libc::SYS_readv, "readv"),
        (libc::SYS_writev, "writev"),
        (libc::SYS_sched_getaffinity, "sched_getaffinity"),
    ];
    NAMES.iter().find(|&&(n, _)| n == nr).map(|&(_, name)| name)
}

fn install_sigsys_handler() {
    // SAFETY: a zeroed sigaction is a valid starting point; the handler
    // has the SA_SIGINFO signature and only calls async-signal-safe code.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_sigsys as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut());
    }
}

/// Writes `s` into `buf` at `*at`.
fn put(buf: &mut [u8], at: &mut usize, s: &[u8]) {
    let n = s.len().min(buf.len() - *at);
    buf[*at..*at + n].copy_from_slice(&s[..n]);
    *at += n;
}

/// Writes `v` in base `radix` (10 or 16).
fn put_number(buf: &mut [u8], at: &mut usize, mut v: u64, radix: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(v % radix) as usize];
        v /= radix;
        if v == 0 {
            break;
        }
    }
    put(buf, at, &digits[i..]);
}

/// The report of a forbidden call (for ioctl, with its request): one
/// line, no allocation.
fn report(buf: &mut [u8], kind: Option<ThreadKind>, nr: i64, request: Option<u64>) -> usize {
    let mut at = 0;
    put(buf, &mut at, b"kiln: error: seccomp: the ");
    put(
        buf,
        &mut at,
        kind.map_or("unfiltered", ThreadKind::label).as_bytes(),
    );
    put(buf, &mut at, b" thread made the system call ");
    let name = syscall_name(nr);
    if let Some(name) = name {
        put(buf, &mut at, name.as_bytes());
        put(buf, &mut at, b" (");
    }
    put_number(buf, &mut at, nr.unsigned_abs(), 10);
    if name.is_some() {
        put(buf, &mut at, b")");
    }
    if let Some(request) = request {
        put(buf, &mut at, b" with request 0x");
        put_number(buf, &mut at, request & 0xffff_ffff, 16);
        if let Some(name) = lists::ioctl_name(request) {
            put(buf, &mut at, b" (");
            put(buf, &mut at, name.as_bytes());
            put(buf, &mut at, b")");
        }
    }
    put(
        buf,
        &mut at,
        b", which its allow-list forbids; kiln stops (a kiln bug or a guest exploiting one: please report it; --seccomp log finds such calls without stopping)\n",
    );
    at
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // siginfo's _sigsys member: the call's number is the int at byte 24
    // (after si_signo, si_errno, si_code, padding and _call_addr).
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS.
    let nr = unsafe { *(info as *const i32).add(6) } as i64;
    // An ioctl's request is its second argument, in RSI when trapped.
    let request = (nr == libc::SYS_ioctl && !ctx.is_null()).then(|| {
        // SAFETY: with SA_SIGINFO the third argument is the thread's
        // ucontext_t, whose registers are those of the trapped call.
        unsafe {
            (*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs[libc::REG_RSI as usize] as u64
        }
    });
    let kind = KIND.with(|k| k.get());
    let mut buf = [0u8; 400];
    let n = report(&mut buf, kind, nr, request);
    // SAFETY: write(2) and _exit(2) are async-signal-safe and allowed by
    // every list.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), n);
        libc::_exit(EXIT_CODE.load(Ordering::Relaxed));
    }
}

/// For tests of a real kiln: with `KILN_SECCOMP_SELFTEST` naming this
/// thread's kind (`disk`, `vcpu`, `api`), the thread makes a call outside
/// its list right after installing its filter (getppid, which no list
/// has).
fn selftest(kind: ThreadKind) {
    let wanted = std::env::var("KILN_SECCOMP_SELFTEST").ok();
    if wanted.as_deref() == Some(kind.selftest_name()) {
        // SAFETY: getppid has no arguments and no effect.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_list_builds_into_a_program() {
        for kind in [ThreadKind::Disk, ThreadKind::Vcpu, ThreadKind::Api] {
            for mismatch in [SeccompAction::Trap, SeccompAction::Log] {
                let programs = filters(kind, mismatch).unwrap();
                assert!(!programs.is_empty() && programs.iter().all(|p| !p.is_empty()));
                // Only the thread that starts threads refuses clone3 first.
                assert_eq!(programs.len(), if kind == ThreadKind::Api { 2 } else { 1 });
            }
        }
    }

    #[test]
    fn the_report_names_the_thread_and_the_call() {
        let mut buf = [0u8; 400];
        let n = report(&mut buf, Some(ThreadKind::Disk), libc::SYS_socket, None);
        let line = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(
            line.starts_with(
                "kiln: error: seccomp: the disk I/O thread made the system call socket (41), which"
            ),
            "{line}"
        );
        assert!(line.ends_with(")\n"));
        let n = report(&mut buf, None, 999, None);
        let line = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(
            line.contains("the unfiltered thread made the system call 999, "),
            "{line}"
        );
        let n = report(
            &mut buf,
            Some(ThreadKind::Vcpu),
            libc::SYS_ioctl,
            Some(0x8400ae8e),
        );
        let line = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(
            line.contains(
                "the vCPU thread made the system call ioctl (16) with request 0x8400ae8e (KVM_GET_LAPIC), which"
            ),
            "{line}"
        );
    }

    /// Runs `calls` in a child process under `kind`'s filter (the filter
    /// stays with the child) and returns its exit status and what it wrote
    /// on stderr. `calls` must only make raw system calls.
    fn in_filtered_child(kind: ThreadKind, calls: fn(libc::c_int)) -> (i32, String) {
        // Built before the fork: the child of a threaded process must not
        // allocate.
        let programs = filters(kind, SeccompAction::Trap).unwrap();
        let (r, w) = {
            let mut fds = [0; 2];
            // SAFETY: pipe(2) fills the two-int array.
            assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
            (fds[0], fds[1])
        };
        // SAFETY: the child only makes raw system calls (no allocation,
        // no locks) before it exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: raw calls on our own fds and memory in the child.
            unsafe {
                libc::dup2(w, 2);
                install_sigsys_handler();
                KIND.with(|k| k.set(Some(kind)));
                for program in &programs {
                    if seccompiler::apply_filter(program).is_err() {
                        libc::_exit(3);
                    }
                }
                calls(r);
                libc::_exit(4);
            }
        }
        let mut status = 0;
        // SAFETY: closing our copy of the write end; waitpid on our child.
        unsafe {
            libc::close(w);
            libc::waitpid(pid, &mut status, 0);
        }
        let mut out = vec![0u8; 1024];
        // SAFETY: reading into our own buffer from our pipe.
        let n = unsafe { libc::read(r, out.as_mut_ptr().cast(), out.len()) };
        // SAFETY: closing our fd.
        unsafe { libc::close(r) };
        let out = String::from_utf8_lossy(&out[..n.max(0) as usize]).into_owned();
        assert!(libc::WIFEXITED(status), "status {status:#x}: {out}");
        (libc::WEXITSTATUS(status), out)
    }

    /// The disk list lets the thread's own calls through and stops
    /// anything else with the report and exit code 159.
    #[test]
    fn a_disk_thread_is_stopped_at_a_forbidden_call() {
        let (code, out) = in_filtered_child(ThreadKind::Disk, |fd| {
            let mut b = 0u8;
            // SAFETY: an allowed read of nothing, then a forbidden call.
            unsafe {
                libc::syscall(libc::SYS_pread64, fd, &mut b as *mut u8, 0usize, 0i64);
                libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0);
            }
        });
        assert_eq!(code, EXIT_SECCOMP, "{out}");
        assert!(
            out.contains("disk I/O thread made the system call socket (41)"),
            "{out}"
        );
    }

    /// The vCPU list lets its own ioctls through (here on a file that is
    /// not a vCPU, so they fail with ENOTTY) and stops any other request
    /// with a report that names it.
    #[test]
    fn a_vcpu_thread_may_make_only_its_own_ioctls() {
        let (code, out) = in_filtered_child(ThreadKind::Vcpu, |fd| {
            // SAFETY: ioctls on a pipe change nothing; the second is
            // forbidden.
            unsafe {
                if libc::ioctl(fd, 0xae80) != -1 {
                    libc::_exit(5);
                }
                libc::ioctl(fd, 0x8400ae8e, std::ptr::null_mut::<u8>());
            }
        });
        assert_eq!(code, EXIT_SECCOMP, "{out}");
        assert!(
            out.contains(
                "vCPU thread made the system call ioctl (16) with request 0x8400ae8e (KVM_GET_LAPIC)"
            ),
            "{out}"
        );
    }

    /// The API list refuses clone3 with ENOSYS (so glibc uses clone), and
    /// clone with anything but a thread's flags (a fork) stops kiln.
    #[test]
    fn the_api_thread_may_start_threads_but_not_processes() {
        let (code, out) = in_filtered_child(ThreadKind::Api, |_| {
            // SAFETY: clone3 is refused before it reads its (null)
            // argument; the clone below is a fork the filter stops.
            unsafe {
                let r = libc::syscall(libc::SYS_clone3, std::ptr::null_mut::<u8>(), 0usize);
                if r != -1 || *libc::__errno_location() != libc::ENOSYS {
                    libc::_exit(5);
                }
                libc::syscall(
                    libc::SYS_clone,
                    libc::SIGCHLD as u64,
                    0u64,
                    0u64,
                    0u64,
                    0u64,
                );
            }
        });
        assert_eq!(code, EXIT_SECCOMP, "{out}");
        assert!(
            out.contains("the API thread made the system call clone (56)"),
            "{out}"
        );
    }
}
