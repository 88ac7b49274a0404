//! The seccomp filters of sandboxes (docs/architecture.md §3.2, §3.13).
//!
//! Two profiles, compiled to BPF once per worker ([`compile`]) and handed
//! to each new sandbox as bytes ([`to_bytes`] / [`from_bytes`]): a
//! per-sandbox libseccomp compile costs ~1.2 ms against ~87 µs to install a
//! ready program.
//! - [`Profile::Lambda`]: every lambda (and the package installer). An
//!   allow-list; a syscall not on it fails with `EPERM` rather than
//!   killing the process, so a lambda gets an error it can report. `clone`
//!   with any namespace flag is refused (no user namespace, so no
//!   capabilities anywhere, so no nf_tables and friends), `clone3` answers
//!   `ENOSYS` (its flags are out of a filter's reach; libc then falls back
//!   to `clone`), and the terminal ioctls `TIOCSTI` and `TIOCLINUX` are
//!   refused.
//! - [`Profile::Zygote`]: zygotes, which import packages. The lambda list
//!   plus what making a child sandbox takes: `clone` into new namespaces
//!   and `unshare`, neither of a user namespace (nor `unshare` of a time
//!   namespace), `move_mount` (of mounts the worker made) and
//!   `sethostname`. No `mount`, `umount2`, `open_tree`, `fsopen`,
//!   `pivot_root`, `setns` or `ptrace`. A lambda forked from a zygote runs
//!   under both filters, so the lambda list is what it gets.

use seccompiler::{BpfProgram, sock_filter};

/// Errors building or decoding the filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The bytes are not a whole number of BPF instructions.
    #[error("a seccomp program must be a multiple of 8 bytes, got {0}")]
    BadLength(usize),
    /// No allow-list for this CPU architecture.
    #[error("no seccomp allow-list for this architecture; set features.enable_seccomp to false")]
    UnsupportedArch,
}

/// Syscalls a Python lambda may make (`clone` and `ioctl` with the argument
/// checks of [`lambda_rules`]). Left out on purpose, among others:
/// mount/umount2/pivot_root/chroot, ptrace/process_vm_*, init_module and
/// friends, kexec_*, reboot, swapon/swapoff, syslog, bpf, perf_event_open,
/// keyctl/add_key/request_key, setns/unshare, open_by_handle_at,
/// userfaultfd, iopl/ioperm, acct, quotactl, clock_settime/settimeofday,
/// sethostname, personality, mknod/mknodat.
#[cfg(target_arch = "x86_64")]
const ALLOWED: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_open,
    libc::SYS_close,
    libc::SYS_stat,
    libc::SYS_fstat,
    libc::SYS_lstat,
    libc::SYS_poll,
    libc::SYS_lseek,
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_munmap,
    libc::SYS_brk,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_ioctl,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_access,
    libc::SYS_pipe,
    libc::SYS_select,
    libc::SYS_sched_yield,
    libc::SYS_mremap,
    libc::SYS_msync,
    libc::SYS_mincore,
    libc::SYS_madvise,
    libc::SYS_shmget,
    libc::SYS_shmat,
    libc::SYS_shmctl,
    libc::SYS_dup,
    libc::SYS_dup2,
    libc::SYS_pause,
    libc::SYS_nanosleep,
    libc::SYS_getitimer,
    libc::SYS_alarm,
    libc::SYS_setitimer,
    libc::SYS_getpid,
    libc::SYS_sendfile,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_accept,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_shutdown,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_socketpair,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_clone,
    libc::SYS_fork,
    libc::SYS_vfork,
    libc::SYS_execve,
    libc::SYS_exit,
    libc::SYS_wait4,
    libc::SYS_kill,
    libc::SYS_uname,
    libc::SYS_semget,
    libc::SYS_semop,
    libc::SYS_semctl,
    libc::SYS_shmdt,
    libc::SYS_msgget,
    libc::SYS_msgsnd,
    libc::SYS_msgrcv,
    libc::SYS_msgctl,
    libc::SYS_fcntl,
    libc::SYS_flock,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_truncate,
    libc::SYS_ftruncate,
    libc::SYS_getdents,
    libc::SYS_getcwd,
    libc::SYS_chdir,
    libc::SYS_fchdir,
    libc::SYS_rename,
    libc::SYS_mkdir,
    libc::SYS_rmdir,
    libc::SYS_creat,
    libc::SYS_link,
    libc::SYS_unlink,
    libc::SYS_symlink,
    libc::SYS_readlink,
    libc::SYS_chmod,
    libc::SYS_fchmod,
    libc::SYS_chown,
    libc::SYS_fchown,
    libc::SYS_lchown,
    libc::SYS_umask,
    libc::SYS_gettimeofday,
    libc::SYS_getrlimit,
    libc::SYS_getrusage,
    libc::SYS_sysinfo,
    libc::SYS_times,
    libc::SYS_getuid,
    libc::SYS_getgid,
    libc::SYS_setuid,
    libc::SYS_setgid,
    libc::SYS_geteuid,
    libc::SYS_getegid,
    libc::SYS_setpgid,
    libc::SYS_getppid,
    libc::SYS_getpgrp,
    libc::SYS_setsid,
    libc::SYS_setreuid,
    libc::SYS_setregid,
    libc::SYS_getgroups,
    libc::SYS_setgroups,
    libc::SYS_setresuid,
    libc::SYS_getresuid,
    libc::SYS_setresgid,
    libc::SYS_getresgid,
    libc::SYS_getpgid,
    libc::SYS_setfsuid,
    libc::SYS_setfsgid,
    libc::SYS_getsid,
    libc::SYS_capget,
    libc::SYS_rt_sigpending,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_rt_sigqueueinfo,
    libc::SYS_rt_sigsuspend,
    libc::SYS_sigaltstack,
    libc::SYS_utime,
    libc::SYS_statfs,
    libc::SYS_fstatfs,
    libc::SYS_getpriority,
    libc::SYS_setpriority,
    libc::SYS_sched_setparam,
    libc::SYS_sched_getparam,
    libc::SYS_sched_setscheduler,
    libc::SYS_sched_getscheduler,
    libc::SYS_sched_get_priority_max,
    libc::SYS_sched_get_priority_min,
    libc::SYS_sched_rr_get_interval,
    libc::SYS_mlock,
    libc::SYS_munlock,
    libc::SYS_mlockall,
    libc::SYS_munlockall,
    libc::SYS_prctl,
    libc::SYS_arch_prctl,
    libc::SYS_setrlimit,
    libc::SYS_sync,
    libc::SYS_gettid,
    libc::SYS_readahead,
    libc::SYS_setxattr,
    libc::SYS_lsetxattr,
    libc::SYS_fsetxattr,
    libc::SYS_getxattr,
    libc::SYS_lgetxattr,
    libc::SYS_fgetxattr,
    libc::SYS_listxattr,
    libc::SYS_llistxattr,
    libc::SYS_flistxattr,
    libc::SYS_removexattr,
    libc::SYS_lremovexattr,
    libc::SYS_fremovexattr,
    libc::SYS_tkill,
    libc::SYS_time,
    libc::SYS_futex,
    libc::SYS_sched_setaffinity,
    libc::SYS_sched_getaffinity,
    libc::SYS_io_setup,
    libc::SYS_io_destroy,
    libc::SYS_io_getevents,
    libc::SYS_io_submit,
    libc::SYS_io_cancel,
    libc::SYS_epoll_create,
    libc::SYS_getdents64,
    libc::SYS_set_tid_address,
    libc::SYS_restart_syscall,
    libc::SYS_semtimedop,
    libc::SYS_fadvise64,
    libc::SYS_timer_create,
    libc::SYS_timer_settime,
    libc::SYS_timer_gettime,
    libc::SYS_timer_getoverrun,
    libc::SYS_timer_delete,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep,
    libc::SYS_exit_group,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_ctl,
    libc::SYS_tgkill,
    libc::SYS_utimes,
    libc::SYS_mbind,
    libc::SYS_set_mempolicy,
    libc::SYS_get_mempolicy,
    libc::SYS_mq_open,
    libc::SYS_mq_unlink,
    libc::SYS_mq_timedsend,
    libc::SYS_mq_timedreceive,
    libc::SYS_mq_notify,
    libc::SYS_mq_getsetattr,
    libc::SYS_waitid,
    libc::SYS_ioprio_set,
    libc::SYS_ioprio_get,
    libc::SYS_inotify_init,
    libc::SYS_inotify_add_watch,
    libc::SYS_inotify_rm_watch,
    libc::SYS_migrate_pages,
    libc::SYS_openat,
    libc::SYS_mkdirat,
    libc::SYS_fchownat,
    libc::SYS_futimesat,
    libc::SYS_newfstatat,
    libc::SYS_unlinkat,
    libc::SYS_renameat,
    libc::SYS_linkat,
    libc::SYS_symlinkat,
    libc::SYS_readlinkat,
    libc::SYS_fchmodat,
    libc::SYS_faccessat,
    libc::SYS_pselect6,
    libc::SYS_ppoll,
    libc::SYS_set_robust_list,
    libc::SYS_get_robust_list,
    libc::SYS_splice,
    libc::SYS_tee,
    libc::SYS_sync_file_range,
    libc::SYS_vmsplice,
    libc::SYS_move_pages,
    libc::SYS_utimensat,
    libc::SYS_epoll_pwait,
    libc::SYS_signalfd,
    libc::SYS_timerfd_create,
    libc::SYS_eventfd,
    libc::SYS_fallocate,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_accept4,
    libc::SYS_signalfd4,
    libc::SYS_eventfd2,
    libc::SYS_epoll_create1,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_inotify_init1,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_rt_tgsigqueueinfo,
    libc::SYS_recvmmsg,
    libc::SYS_prlimit64,
    libc::SYS_syncfs,
    libc::SYS_sendmmsg,
    libc::SYS_getcpu,
    libc::SYS_sched_setattr,
    libc::SYS_sched_getattr,
    libc::SYS_renameat2,
    libc::SYS_getrandom,
    libc::SYS_memfd_create,
    libc::SYS_execveat,
    libc::SYS_membarrier,
    libc::SYS_mlock2,
    libc::SYS_copy_file_range,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_pkey_mprotect,
    libc::SYS_pkey_alloc,
    libc::SYS_pkey_free,
    libc::SYS_statx,
    libc::SYS_rseq,
    libc::SYS_pidfd_send_signal,
    libc::SYS_pidfd_open,
    libc::SYS_close_range,
    libc::SYS_faccessat2,
    libc::SYS_epoll_pwait2,
    libc::SYS_futex_waitv,
];

/// `seccomp_data` offsets and BPF opcodes (linux/filter.h, linux/seccomp.h).
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
/// The low 32 bits of syscall argument `i` (little-endian `u64 args[6]`).
const fn data_arg_low(i: u32) -> u32 {
    16 + 8 * i
}
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JGT_K: u16 = 0x25;
const JSET_K: u16 = 0x45;
const JA: u16 = 0x05;
const RET_K: u16 = 0x06;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
/// x32 syscalls on x86_64 carry this bit; none is allowed.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// Leaves of the search tree test at most this many ranges in a row.
const LEAF: usize = 4;

/// `CLONE_NEWUSER` (linux/sched.h): a zygote may make no user namespace
/// (capabilities over new network namespaces, the way into nf_tables).
const CLONE_NEWUSER: u32 = 0x1000_0000;
/// Namespace flags of `clone` (linux/sched.h): a lambda gets none.
const CLONE_NAMESPACES: u32 = 0x0002_0000 // CLONE_NEWNS
    | 0x0200_0000 // CLONE_NEWCGROUP
    | 0x0400_0000 // CLONE_NEWUTS
    | 0x0800_0000 // CLONE_NEWIPC
    | CLONE_NEWUSER
    | 0x2000_0000 // CLONE_NEWPID
    | 0x4000_0000; // CLONE_NEWNET
/// What a zygote may not unshare: a user namespace or a time namespace.
const UNSHARE_FORBIDDEN: u32 = CLONE_NEWUSER | 0x80 /* CLONE_NEWTIME */;
/// Terminal ioctls that push input into a terminal (linux/ioctls.h).
const TIOCSTI: u32 = 0x5412;
const TIOCLINUX: u32 = 0x541c;

/// Which sandboxes a filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Lambdas and the package installer.
    Lambda,
    /// Zygotes.
    Zygote,
}

impl Profile {
    /// File name of its compiled program in the runtime dir.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Lambda => "seccomp-lambda.bpf",
            Self::Zygote => "seccomp-zygote.bpf",
        }
    }
}

/// What the filter does with one syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Allow it.
    Allow,
    /// Fail it with this errno.
    Errno(u32),
    /// `EPERM` when argument `arg` has any bit of `mask` set, else allow.
    DenyBits { arg: u32, mask: u32 },
    /// `EPERM` when argument `arg` (its low 32 bits, all the kernel reads
    /// of an ioctl request) is one of `values`, else allow.
    DenyValues { arg: u32, values: &'static [u32] },
}

/// The lambda profile: the allow-list with its argument checks.
#[cfg(target_arch = "x86_64")]
fn lambda_rules() -> Vec<(u32, Action)> {
    let mut rules: Vec<(u32, Action)> =
        ALLOWED.iter().map(|&n| (n as u32, Action::Allow)).collect();
    set_rule(
        &mut rules,
        libc::SYS_clone,
        Action::DenyBits {
            arg: 0,
            mask: CLONE_NAMESPACES,
        },
    );
    set_rule(
        &mut rules,
        libc::SYS_clone3,
        Action::Errno(libc::ENOSYS as u32),
    );
    set_rule(
        &mut rules,
        libc::SYS_ioctl,
        Action::DenyValues {
            arg: 1,
            values: &[TIOCSTI, TIOCLINUX],
        },
    );
    rules
}

/// The zygote profile: the lambda's, plus making child sandboxes.
#[cfg(target_arch = "x86_64")]
fn zygote_rules() -> Vec<(u32, Action)> {
    let mut rules = lambda_rules();
    set_rule(
        &mut rules,
        libc::SYS_clone,
        Action::DenyBits {
            arg: 0,
            mask: CLONE_NEWUSER,
        },
    );
    set_rule(
        &mut rules,
        libc::SYS_unshare,
        Action::DenyBits {
            arg: 0,
            mask: UNSHARE_FORBIDDEN,
        },
    );
    set_rule(&mut rules, libc::SYS_move_mount, Action::Allow);
    set_rule(&mut rules, libc::SYS_sethostname, Action::Allow);
    rules
}

/// Sets (or replaces) the action of syscall `nr`.
fn set_rule(rules: &mut Vec<(u32, Action)>, nr: i64, action: Action) {
    let nr = nr as u32;
    rules.retain(|(n, _)| *n != nr);
    rules.push((nr, action));
}

fn ins(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Compiles `profile` for the machine's architecture into a balanced
/// binary search over the syscall numbers: every syscall is decided in
/// about 2·log2(n) instructions. (A linear chain, as libseccomp and
/// seccompiler emit, costs ~1 ms to install because the kernel emulates the
/// filter for every syscall number to build its action cache.)
pub fn compile(profile: Profile) -> Result<BpfProgram, SeccompError> {
    #[cfg(target_arch = "x86_64")]
    {
        let rules = match profile {
            Profile::Lambda => lambda_rules(),
            Profile::Zygote => zygote_rules(),
        };
        Ok(compile_tree(AUDIT_ARCH, rules, libc::EPERM as u32))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = profile;
        Err(SeccompError::UnsupportedArch)
    }
}

/// The filter for `arch` applying `rules`; any other syscall fails with
/// `errno`, any other architecture is killed.
fn compile_tree(arch: u32, mut rules: Vec<(u32, Action)>, errno: u32) -> BpfProgram {
    rules.sort_unstable_by_key(|(nr, _)| *nr);
    rules.dedup_by_key(|(nr, _)| *nr);
    let mut prog = vec![
        ins(LD_W_ABS, 0, 0, DATA_ARCH),
        ins(JEQ_K, 1, 0, arch),
        ins(RET_K, 0, 0, RET_KILL_PROCESS),
        ins(LD_W_ABS, 0, 0, DATA_NR),
        ins(JGE_K, 0, 1, X32_SYSCALL_BIT),
        ins(RET_K, 0, 0, RET_ERRNO | errno),
    ];
    emit_tree(&ranges(&rules), errno, &mut prog);
    prog
}

/// Sorted rules as inclusive ranges of consecutive numbers with the same
/// action (only plain allows merge): syscall tables allow long runs, and a
/// run costs the same two compares as one number.
fn ranges(sorted: &[(u32, Action)]) -> Vec<(u32, u32, Action)> {
    let mut out: Vec<(u32, u32, Action)> = Vec::new();
    for &(n, action) in sorted {
        match out.last_mut() {
            Some((_, hi, Action::Allow)) if action == Action::Allow && *hi + 1 == n => *hi = n,
            _ => out.push((n, n, action)),
        }
    }
    out
}

/// The instructions deciding a syscall already known to be in a range with
/// `action`; each path ends in a return.
fn action_body(action: Action) -> Vec<sock_filter> {
    let deny = RET_ERRNO | libc::EPERM as u32;
    match action {
        Action::Allow => vec![ins(RET_K, 0, 0, RET_ALLOW)],
        Action::Errno(e) => vec![ins(RET_K, 0, 0, RET_ERRNO | e)],
        Action::DenyBits { arg, mask } => vec![
            ins(LD_W_ABS, 0, 0, data_arg_low(arg)),
            ins(JSET_K, 0, 1, mask),
            ins(RET_K, 0, 0, deny),
            ins(RET_K, 0, 0, RET_ALLOW),
        ],
        Action::DenyValues { arg, values } => {
            let mut body = vec![ins(LD_W_ABS, 0, 0, data_arg_low(arg))];
            let n = values.len();
            for (i, &v) in values.iter().enumerate() {
                // On a match, jump over the remaining compares and the
                // allow, onto the deny.
                body.push(ins(JEQ_K, (n - i) as u8, 0, v));
            }
            body.push(ins(RET_K, 0, 0, RET_ALLOW));
            body.push(ins(RET_K, 0, 0, deny));
            body
        }
    }
}

fn emit_tree(ranges: &[(u32, u32, Action)], errno: u32, out: &mut BpfProgram) {
    if ranges.len() <= LEAF {
        for &(lo, hi, action) in ranges {
            // lo <= nr <= hi: decide by the action; else on to the next.
            let body = action_body(action);
            let skip = body.len() as u8;
            out.push(ins(JGE_K, 0, skip + 1, lo));
            out.push(ins(JGT_K, skip, 0, hi));
            out.extend(body);
        }
        out.push(ins(RET_K, 0, 0, RET_ERRNO | errno));
        return;
    }
    let mid = ranges.len() / 2;
    // nr >= the middle range's start: take the long jump to the right half;
    // else fall past it into the left half. (Conditional jumps reach only
    // 255 ahead.)
    out.push(ins(JGE_K, 0, 1, ranges[mid].0));
    let jump = out.len();
    out.push(ins(JA, 0, 0, 0));
    emit_tree(&ranges[..mid], errno, out);
    out[jump].k = (out.len() - jump - 1) as u32;
    emit_tree(&ranges[mid..], errno, out);
}

/// The program as bytes (native endian, 8 per instruction), to hand to a
/// sandbox.
pub fn to_bytes(prog: &[sock_filter]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prog.len() * 8);
    for ins in prog {
        out.extend_from_slice(&ins.code.to_ne_bytes());
        out.push(ins.jt);
        out.push(ins.jf);
        out.extend_from_slice(&ins.k.to_ne_bytes());
    }
    out
}

/// The inverse of [`to_bytes`].
pub fn from_bytes(bytes: &[u8]) -> Result<BpfProgram, SeccompError> {
    if !bytes.len().is_multiple_of(8) {
        return Err(SeccompError::BadLength(bytes.len()));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_has_what_python_needs_and_not_what_it_must_not() {
        for needed in [
            libc::SYS_read,
            libc::SYS_openat,
            libc::SYS_mmap,
            libc::SYS_clone,
            libc::SYS_execve,
        ] {
            assert!(ALLOWED.contains(&needed), "{needed}");
        }
        for denied in [
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_ptrace,
            libc::SYS_init_module,
            libc::SYS_finit_module,
            libc::SYS_syslog,
            libc::SYS_bpf,
            libc::SYS_setns,
            libc::SYS_unshare,
            libc::SYS_kexec_load,
            libc::SYS_reboot,
            libc::SYS_chroot,
            libc::SYS_pivot_root,
            libc::SYS_clone3,
            libc::SYS_move_mount,
            libc::SYS_open_tree,
            libc::SYS_fsopen,
            libc::SYS_sethostname,
        ] {
            assert!(!ALLOWED.contains(&denied), "{denied} must be denied");
        }
        let mut sorted = ALLOWED.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ALLOWED.len(), "no duplicates");
    }

    /// A classic-BPF interpreter for the instructions `compile_tree` emits,
    /// for syscall `nr` with arguments `args` (their low 32 bits).
    fn run(prog: &[sock_filter], arch: u32, nr: u32, args: [u32; 6]) -> u32 {
        let (mut pc, mut acc, mut steps) = (0usize, 0u32, 0);
        loop {
            steps += 1;
            assert!(steps < 100, "path too long for nr {nr}");
            let i = &prog[pc];
            match i.code {
                LD_W_ABS => {
                    acc = match i.k {
                        DATA_ARCH => arch,
                        DATA_NR => nr,
                        k => args[((k - 16) / 8) as usize],
                    }
                }
                JEQ_K => pc += if acc == i.k { i.jt } else { i.jf } as usize,
                JGE_K => pc += if acc >= i.k { i.jt } else { i.jf } as usize,
                JGT_K => pc += if acc > i.k { i.jt } else { i.jf } as usize,
                JSET_K => pc += if acc & i.k != 0 { i.jt } else { i.jf } as usize,
                JA => pc += i.k as usize,
                RET_K => return i.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
            pc += 1;
        }
    }

    fn plain(nr: u32) -> u32 {
        run_on(&compile(Profile::Lambda).expect("compile"), nr, [0; 6])
    }

    fn run_on(prog: &[sock_filter], nr: u32, args: [u32; 6]) -> u32 {
        run(prog, AUDIT_ARCH, nr, args)
    }

    #[test]
    fn consecutive_allows_merge_into_ranges_and_rules_stand_alone() {
        let a = Action::Allow;
        let e = Action::Errno(38);
        assert_eq!(
            ranges(&[(1, a), (2, a), (3, a), (5, a), (7, a), (8, e), (9, a)]),
            vec![(1, 3, a), (5, 5, a), (7, 7, a), (8, 8, e), (9, 9, a)]
        );
        assert_eq!(ranges(&[]), Vec::<(u32, u32, Action)>::new());
    }

    #[test]
    fn tree_allows_exactly_the_list_in_few_steps() {
        let allowed: Vec<(u32, Action)> = (0..300)
            .filter(|n| n % 3 != 1)
            .chain([1000, 0x4000_0001])
            .map(|n| (n, Action::Allow))
            .collect();
        let prog = compile_tree(0xc000_003e, allowed.clone(), 1);
        for nr in 0..1100 {
            let want = if allowed.iter().any(|(n, _)| *n == nr) {
                RET_ALLOW
            } else {
                RET_ERRNO | 1
            };
            assert_eq!(run(&prog, 0xc000_003e, nr, [0; 6]), want, "nr {nr}");
        }
        assert_eq!(
            run(&prog, 0xc000_003e, 0x4000_0001, [0; 6]),
            RET_ERRNO | 1,
            "x32 is refused"
        );
        assert_eq!(
            run(&prog, 0x4000_0028, 0, [0; 6]),
            RET_KILL_PROCESS,
            "other arch"
        );
    }

    #[test]
    fn lambdas_get_no_namespaces_no_clone3_and_no_terminal_injection() {
        let prog = compile(Profile::Lambda).expect("compile");
        let eperm = RET_ERRNO | libc::EPERM as u32;
        let clone = libc::SYS_clone as u32;
        // fork() as glibc does it, and a thread.
        assert_eq!(
            run_on(&prog, clone, [0x0120_0011, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
        assert_eq!(
            run_on(&prog, clone, [0x003d_0f00, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
        for flag in [0x1000_0000, 0x4000_0000, 0x2000_0000, 0x0002_0000] {
            assert_eq!(
                run_on(&prog, clone, [flag | 17, 0, 0, 0, 0, 0]),
                eperm,
                "{flag:#x}"
            );
        }
        assert_eq!(
            run_on(&prog, libc::SYS_clone3 as u32, [0; 6]),
            RET_ERRNO | libc::ENOSYS as u32
        );
        let ioctl = libc::SYS_ioctl as u32;
        assert_eq!(run_on(&prog, ioctl, [1, TIOCSTI, 0, 0, 0, 0]), eperm);
        assert_eq!(run_on(&prog, ioctl, [1, TIOCLINUX, 0, 0, 0, 0]), eperm);
        // FIONREAD, TCGETS
        assert_eq!(run_on(&prog, ioctl, [1, 0x541b, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(run_on(&prog, ioctl, [1, 0x5401, 0, 0, 0, 0]), RET_ALLOW);
        for nr in [
            libc::SYS_unshare,
            libc::SYS_move_mount,
            libc::SYS_sethostname,
            libc::SYS_mount,
        ] {
            assert_eq!(plain(nr as u32), eperm, "{nr}");
        }
    }

    #[test]
    fn zygotes_may_make_sandboxes_but_not_user_namespaces_or_mounts() {
        let prog = compile(Profile::Zygote).expect("compile");
        let eperm = RET_ERRNO | libc::EPERM as u32;
        let unshare = libc::SYS_unshare as u32;
        // NEWNS | NEWUTS | NEWIPC | NEWPID | NEWNET | NEWCGROUP
        assert_eq!(
            run_on(&prog, unshare, [0x6e02_0000, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
        assert_eq!(run_on(&prog, unshare, [0x1000_0000, 0, 0, 0, 0, 0]), eperm);
        assert_eq!(run_on(&prog, unshare, [0x0000_0080, 0, 0, 0, 0, 0]), eperm);
        for nr in [libc::SYS_move_mount, libc::SYS_sethostname] {
            assert_eq!(run_on(&prog, nr as u32, [0; 6]), RET_ALLOW, "{nr}");
        }
        for nr in [
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_open_tree,
            libc::SYS_fsopen,
            libc::SYS_fsmount,
            libc::SYS_mount_setattr,
            libc::SYS_pivot_root,
            libc::SYS_setns,
            libc::SYS_ptrace,
        ] {
            assert_eq!(run_on(&prog, nr as u32, [0; 6]), eperm, "{nr}");
        }
        // A sandbox forked into its namespaces (NEWNS | NEWUTS | NEWIPC |
        // NEWPID | NEWNET, SIGCHLD), but still no user namespace through
        // clone, alone or among others.
        let clone = libc::SYS_clone as u32;
        assert_eq!(
            run_on(&prog, clone, [0x6c02_0011, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
        assert_eq!(run_on(&prog, clone, [0x1000_0011, 0, 0, 0, 0, 0]), eperm);
        assert_eq!(run_on(&prog, clone, [0x7c02_0011, 0, 0, 0, 0, 0]), eperm);
    }

    #[test]
    fn compiles_and_round_trips_through_bytes() {
        for profile in [Profile::Lambda, Profile::Zygote] {
            let prog = compile(profile).expect("compile");
            assert!(
                prog.len() < 4 * ALLOWED.len(),
                "{} instructions",
                prog.len()
            );
            for &nr in ALLOWED {
                if ![libc::SYS_clone, libc::SYS_ioctl].contains(&nr) {
                    assert_eq!(run_on(&prog, nr as u32, [0; 6]), RET_ALLOW, "{nr}");
                }
            }
            let bytes = to_bytes(&prog);
            assert_eq!(bytes.len(), prog.len() * 8);
            assert_eq!(from_bytes(&bytes).expect("decode"), prog);
        }
        assert!(matches!(
            from_bytes(&[0; 7]),
            Err(SeccompError::BadLength(7))
        ));
    }
}
