//! The allow-lists: which system calls (and which ioctl requests) each
//! kind of kiln thread may make once its filter is in. Where each entry
//! comes from (a measured `strace` of the thread, or the code that makes
//! the call) is in docs/design/seccomp-inventory.md.

use std::collections::BTreeMap;

use kvm_bindings::{
    kvm_fpu, kvm_guest_debug, kvm_lapic_state, kvm_mp_state, kvm_msrs, kvm_regs, kvm_sregs,
    kvm_translation, kvm_vcpu_events, kvm_xcrs,
};
use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
use vmm_sys_util::ioctl::{ioctl_expr, _IOC_NONE, _IOC_READ, _IOC_WRITE};

use super::ThreadKind;

/// What every Rust thread needs outside its own work: memory (malloc's
/// arenas), locks, its signal stack and mask, its end, and the report of
/// a forbidden call (write, exit_group).
const EVERY_THREAD: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_getrandom,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_sigaltstack,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_close,
    libc::SYS_write,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// A disk thread: its event loop (epoll, eventfds, the irqfd), the
/// image's reads and writes (plain and vectored), FLUSH, DISCARD and
/// WRITE_ZEROES (inventory 2.3). No ioctls.
const DISK: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_read,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_fallocate,
];

/// A vCPU thread, once its kick timer is set up (inventory 2.2): the
/// device models it runs on an exit (console output, which may wait for
/// the terminal with poll; eventfd and irqfd writes; a virtio device's
/// activation or reset: the vsock's epoll registrations, its timer and
/// the host streams it drops), its kick timer's end, and `ioctl` with
/// the requests of [`VCPU_IOCTLS`] only.
const VCPU: &[i64] = &[
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_epoll_ctl,
    libc::SYS_timerfd_settime,
    libc::SYS_timer_delete,
];

/// The API thread, and the threads of its HTTP server (tiny_http's
/// accept thread and pool, which it starts after its filter is in and
/// which inherit it): connections and requests on the API socket, the
/// server's threads, their start-up (rseq, robust futex list, the
/// affinity glibc reads for a thread's attributes). No files, no
/// ioctls. clone only with a thread's flags, `fcntl` only to duplicate
/// a connection ([`arg_rules`]); clone3, whose flags seccomp cannot see,
/// is refused with ENOSYS before this list (mod.rs), so glibc falls back
/// to clone.
const API: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_accept,
    libc::SYS_getsockname,
    libc::SYS_read,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_writev,
    libc::SYS_shutdown,
    libc::SYS_poll,
    libc::SYS_clone3,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
    libc::SYS_sched_getaffinity,
];

/// The flags glibc's pthread_create passes to clone(2) for a thread
/// (CLONE_VM | FS | FILES | SIGHAND | THREAD | SYSVSEM | SETTLS |
/// PARENT_SETTID | CHILD_CLEARTID); a fork has other flags.
pub const THREAD_CLONE_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM
    | libc::CLONE_SETTLS
    | libc::CLONE_PARENT_SETTID
    | libc::CLONE_CHILD_CLEARTID) as u64;

/// Calls a kind may make only with given values of one argument: the
/// call, the argument's index, the values.
fn arg_rules(kind: ThreadKind) -> Vec<(i64, u8, Vec<u64>)> {
    // Every thread: std checks that an fd it owns is still open
    // (fcntl F_GETFD) before closing it, in builds with debug assertions.
    let getfd = libc::F_GETFD as u64;
    match kind {
        ThreadKind::Disk => vec![(libc::SYS_fcntl, 1, vec![getfd])],
        ThreadKind::Vcpu => vec![
            (libc::SYS_fcntl, 1, vec![getfd]),
            (
                libc::SYS_ioctl,
                1,
                VCPU_IOCTLS.iter().map(|&(r, _)| r).collect(),
            ),
        ],
        ThreadKind::Api => vec![
            (libc::SYS_clone, 0, vec![THREAD_CLONE_FLAGS]),
            (
                libc::SYS_fcntl,
                1,
                vec![getfd, libc::F_DUPFD_CLOEXEC as u64],
            ),
        ],
    }
}

/// A KVM ioctl request number, as <linux/kvm.h>'s _IO/_IOR/_IOW/_IOWR
/// make it (kvm-ioctls keeps its own private).
const fn kvm<T>(dir: u32, nr: u32) -> u64 {
    let size = if dir == _IOC_NONE {
        0
    } else {
        std::mem::size_of::<T>() as u32
    };
    ioctl_expr(dir, 0xAE, nr, size) as u64
}
const R: u32 = _IOC_READ;
const W: u32 = _IOC_WRITE;
const RW: u32 = _IOC_READ | _IOC_WRITE;

/// The ioctl requests a vCPU thread makes, with their names for the
/// report: KVM_RUN; the registers, MSRs, FPU, events and XCRs that the
/// host repairs (src/pvm/) read and write, the address translation they
/// use, the single-step and breakpoint they arm; the halted check of the
/// periodic tick; and TUNSETOFFLOAD, which a network card's activation
/// or reset (a guest's status write) sends to its tap.
const VCPU_IOCTLS: &[(u64, &str)] = &[
    (kvm::<()>(_IOC_NONE, 0x80), "KVM_RUN"),
    (kvm::<kvm_regs>(R, 0x81), "KVM_GET_REGS"),
    (kvm::<kvm_regs>(W, 0x82), "KVM_SET_REGS"),
    (kvm::<kvm_sregs>(R, 0x83), "KVM_GET_SREGS"),
    (kvm::<kvm_sregs>(W, 0x84), "KVM_SET_SREGS"),
    (kvm::<kvm_translation>(RW, 0x85), "KVM_TRANSLATE"),
    (kvm::<kvm_msrs>(RW, 0x88), "KVM_GET_MSRS"),
    (kvm::<kvm_msrs>(W, 0x89), "KVM_SET_MSRS"),
    (kvm::<kvm_fpu>(R, 0x8c), "KVM_GET_FPU"),
    (kvm::<kvm_fpu>(W, 0x8d), "KVM_SET_FPU"),
    (kvm::<kvm_mp_state>(R, 0x98), "KVM_GET_MP_STATE"),
    (kvm::<kvm_guest_debug>(W, 0x9b), "KVM_SET_GUEST_DEBUG"),
    (kvm::<kvm_vcpu_events>(R, 0x9f), "KVM_GET_VCPU_EVENTS"),
    (kvm::<kvm_vcpu_events>(W, 0xa0), "KVM_SET_VCPU_EVENTS"),
    (kvm::<kvm_xcrs>(R, 0xa6), "KVM_GET_XCRS"),
    (libc::TUNSETOFFLOAD, "TUNSETOFFLOAD"),
];

/// Ioctl requests kiln makes somewhere, by name, for the report of a
/// forbidden one.
const OTHER_IOCTLS: &[(u64, &str)] = &[
    (kvm::<kvm_lapic_state>(R, 0x8e), "KVM_GET_LAPIC"),
    (kvm::<kvm_lapic_state>(W, 0x8f), "KVM_SET_LAPIC"),
    (libc::TCGETS, "TCGETS"),
    (libc::TCSETS, "TCSETS"),
    (libc::TIOCGWINSZ, "TIOCGWINSZ"),
    (libc::FIONBIO, "FIONBIO"),
];

/// The name of ioctl request `request`, if kiln knows it.
pub fn ioctl_name(request: u64) -> Option<&'static str> {
    VCPU_IOCTLS
        .iter()
        .chain(OTHER_IOCTLS)
        .find(|&&(r, _)| r == request & 0xffff_ffff)
        .map(|&(_, name)| name)
}

/// Errors building a list's rules.
pub type RuleError = seccompiler::BackendError;

/// `kind`'s rules: every call of its list with any arguments, and the
/// calls of [`arg_rules`] with one of their values (compared as 32 bits:
/// an ioctl request and fcntl's command are ints to the kernel).
pub fn rules(kind: ThreadKind) -> Result<BTreeMap<i64, Vec<SeccompRule>>, RuleError> {
    let own = match kind {
        ThreadKind::Disk => DISK,
        ThreadKind::Vcpu => VCPU,
        ThreadKind::Api => API,
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = EVERY_THREAD
        .iter()
        .chain(own)
        .map(|&nr| (nr, Vec::new()))
        .collect();
    for (nr, arg, values) in arg_rules(kind) {
        let per_value = values
            .iter()
            .map(|&v| {
                SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v)
                    .and_then(|c| SeccompRule::new(vec![c]))
            })
            .collect::<Result<Vec<_>, _>>()?;
        rules.insert(nr, per_value);
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request numbers are the ones <linux/kvm.h> defines on x86_64
    /// (kvm-ioctls keeps its own private).
    #[test]
    fn ioctl_numbers_match_linux() {
        let want: &[(&str, u64)] = &[
            ("KVM_RUN", 0xae80),
            ("KVM_GET_REGS", 0x8090ae81),
            ("KVM_SET_REGS", 0x4090ae82),
            ("KVM_GET_SREGS", 0x8138ae83),
            ("KVM_SET_SREGS", 0x4138ae84),
            ("KVM_TRANSLATE", 0xc018ae85),
            ("KVM_GET_MSRS", 0xc008ae88),
            ("KVM_SET_MSRS", 0x4008ae89),
            ("KVM_GET_FPU", 0x81a0ae8c),
            ("KVM_SET_FPU", 0x41a0ae8d),
            ("KVM_GET_MP_STATE", 0x8004ae98),
            ("KVM_SET_GUEST_DEBUG", 0x4048ae9b),
            ("KVM_GET_VCPU_EVENTS", 0x8040ae9f),
            ("KVM_SET_VCPU_EVENTS", 0x4040aea0),
            ("KVM_GET_XCRS", 0x8188aea6),
            ("TUNSETOFFLOAD", 0x400454d0),
        ];
        assert_eq!(VCPU_IOCTLS.len(), want.len());
        for (&(name, value), &(request, have_name)) in want.iter().zip(VCPU_IOCTLS) {
            assert_eq!((have_name, request), (name, value));
        }
        assert_eq!(ioctl_name(0x8400ae8e), Some("KVM_GET_LAPIC"));
        assert_eq!(ioctl_name(0xffff_ffff_8400_ae8e), Some("KVM_GET_LAPIC"));
        assert_eq!(ioctl_name(0x1234), None);
    }

    #[test]
    fn no_list_opens_files_or_starts_processes() {
        for kind in [ThreadKind::Disk, ThreadKind::Vcpu, ThreadKind::Api] {
            let rules = rules(kind).unwrap();
            for nr in [
                libc::SYS_open,
                libc::SYS_openat,
                libc::SYS_socket,
                libc::SYS_connect,
                libc::SYS_execve,
                libc::SYS_fork,
                libc::SYS_vfork,
                libc::SYS_ptrace,
            ] {
                assert!(!rules.contains_key(&nr), "{kind:?} allows {nr}");
            }
        }
    }

    #[test]
    fn only_the_vcpu_makes_ioctls_and_only_its_own() {
        for kind in [ThreadKind::Disk, ThreadKind::Api] {
            assert!(!rules(kind).unwrap().contains_key(&libc::SYS_ioctl));
        }
        let vcpu = rules(ThreadKind::Vcpu).unwrap();
        assert_eq!(vcpu[&libc::SYS_ioctl].len(), VCPU_IOCTLS.len());
    }
}
