//! The seccomp allow-list every lambda runs under (DESIGN.md §3.2).
//!
//! Compiled to BPF once per worker ([`compile`]) and handed to each new
//! sandbox as bytes ([`to_bytes`] / [`from_bytes`]): FLOORS.md measures a
//! per-sandbox libseccomp compile at ~1.2 ms against ~87 µs to install a
//! ready program. A syscall not on the list fails with `EPERM` rather than
//! killing the process, so a lambda gets an error it can report.

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

/// Syscalls a Python lambda may make. Left out on purpose, among others:
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
    libc::SYS_clone3,
    libc::SYS_close_range,
    libc::SYS_faccessat2,
    libc::SYS_epoll_pwait2,
    libc::SYS_futex_waitv,
];

/// `seccomp_data` offsets and BPF opcodes (linux/filter.h, linux/seccomp.h).
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JGT_K: u16 = 0x25;
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

fn ins(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Compiles the allow-list for the machine's architecture into a balanced
/// binary search over the syscall numbers: every syscall is decided in
/// about 2·log2(n) instructions. (A linear chain, as libseccomp and
/// seccompiler emit, costs ~1 ms to install because the kernel emulates the
/// filter for every syscall number to build its action cache.)
pub fn compile() -> Result<BpfProgram, SeccompError> {
    #[cfg(target_arch = "x86_64")]
    {
        let mut nrs: Vec<u32> = ALLOWED.iter().map(|&n| n as u32).collect();
        nrs.sort_unstable();
        nrs.dedup();
        Ok(compile_tree(AUDIT_ARCH, &nrs, libc::EPERM as u32))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Err(SeccompError::UnsupportedArch)
    }
}

/// The filter for `arch` allowing exactly the sorted `allowed` numbers;
/// any other syscall fails with `errno`, any other architecture is killed.
fn compile_tree(arch: u32, allowed: &[u32], errno: u32) -> BpfProgram {
    let mut prog = vec![
        ins(LD_W_ABS, 0, 0, DATA_ARCH),
        ins(JEQ_K, 1, 0, arch),
        ins(RET_K, 0, 0, RET_KILL_PROCESS),
        ins(LD_W_ABS, 0, 0, DATA_NR),
        ins(JGE_K, 0, 1, X32_SYSCALL_BIT),
        ins(RET_K, 0, 0, RET_ERRNO | errno),
    ];
    emit_tree(&ranges(allowed), errno, &mut prog);
    prog
}

/// Sorted numbers as inclusive ranges of consecutive ones: syscall tables
/// allow long runs, and a run costs the same two compares as one number.
fn ranges(sorted: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &n in sorted {
        match out.last_mut() {
            Some((_, hi)) if *hi + 1 == n => *hi = n,
            _ => out.push((n, n)),
        }
    }
    out
}

fn emit_tree(ranges: &[(u32, u32)], errno: u32, out: &mut BpfProgram) {
    if ranges.len() <= LEAF {
        for &(lo, hi) in ranges {
            // lo <= nr <= hi: allow; else on to the next range.
            out.push(ins(JGE_K, 0, 2, lo));
            out.push(ins(JGT_K, 1, 0, hi));
            out.push(ins(RET_K, 0, 0, RET_ALLOW));
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
    if bytes.len() % 8 != 0 {
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
            libc::SYS_clone3,
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
        ] {
            assert!(!ALLOWED.contains(&denied), "{denied} must be denied");
        }
        let mut sorted = ALLOWED.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ALLOWED.len(), "no duplicates");
    }

    /// A classic-BPF interpreter for the instructions `compile_tree` emits.
    fn run(prog: &[sock_filter], arch: u32, nr: u32) -> u32 {
        let (mut pc, mut acc, mut steps) = (0usize, 0u32, 0);
        loop {
            steps += 1;
            assert!(steps < 100, "path too long for nr {nr}");
            let i = &prog[pc];
            match i.code {
                LD_W_ABS => acc = if i.k == DATA_ARCH { arch } else { nr },
                JEQ_K => pc += if acc == i.k { i.jt } else { i.jf } as usize,
                JGE_K => pc += if acc >= i.k { i.jt } else { i.jf } as usize,
                JGT_K => pc += if acc > i.k { i.jt } else { i.jf } as usize,
                JA => pc += i.k as usize,
                RET_K => return i.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
            pc += 1;
        }
    }

    #[test]
    fn consecutive_numbers_merge_into_ranges() {
        assert_eq!(ranges(&[1, 2, 3, 5, 7, 8]), vec![(1, 3), (5, 5), (7, 8)]);
        assert_eq!(ranges(&[]), Vec::<(u32, u32)>::new());
    }

    #[test]
    fn tree_allows_exactly_the_list_in_few_steps() {
        let allowed: Vec<u32> = (0..300)
            .filter(|n| n % 3 != 1)
            .chain([1000, 0x4000_0001])
            .collect();
        let prog = compile_tree(0xc000_003e, &allowed, 1);
        for nr in 0..1100 {
            let want = if allowed.contains(&nr) {
                RET_ALLOW
            } else {
                RET_ERRNO | 1
            };
            assert_eq!(run(&prog, 0xc000_003e, nr), want, "nr {nr}");
        }
        assert_eq!(
            run(&prog, 0xc000_003e, 0x4000_0001),
            RET_ERRNO | 1,
            "x32 is refused"
        );
        assert_eq!(run(&prog, 0x4000_0028, 0), RET_KILL_PROCESS, "other arch");
    }

    #[test]
    fn compiles_and_round_trips_through_bytes() {
        let prog = compile().expect("compile");
        assert!(
            prog.len() < 4 * ALLOWED.len(),
            "{} instructions",
            prog.len()
        );
        for &nr in ALLOWED {
            assert_eq!(run(&prog, AUDIT_ARCH, nr as u32), RET_ALLOW);
        }
        assert_eq!(
            run(&prog, AUDIT_ARCH, libc::SYS_mount as u32),
            RET_ERRNO | libc::EPERM as u32
        );
        let bytes = to_bytes(&prog);
        assert_eq!(bytes.len(), prog.len() * 8);
        assert_eq!(from_bytes(&bytes).expect("decode"), prog);
        assert!(matches!(
            from_bytes(&bytes[..7]),
            Err(SeccompError::BadLength(7))
        ));
    }
}
