//! End-to-end tests of the jail, each written as the attack it stops (root
//! only): a lambda, or a package it requires, tries a path out of its
//! sandbox that was once open, and reports what it got; the test asserts
//! the path is shut. docs/security.md lists them with the layer that stops
//! each. (The basic escapes — host files, other processes, the host
//! network, capabilities, mounts — are in sock_e2e.rs; the package
//! installer's in package_attacks_e2e.rs.)

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Backend, TestWorker, add_lambda, eventually, init_dir, ol_bin};

/// The installer's download cache shared by test runs (uv itself lands
/// there once).
const CACHE: &str = "package_cache_dir=/var/tmp/ol-test-uv-cache";

/// A package that, imported by an import-cache zygote, tries what a
/// poisoned release would: host privileges, mounts, devices, user and
/// network namespaces, ptrace, other processes. It records what it got in
/// `REPORT`, which lambdas forked from that zygote inherit.
const HOSTILE_PACKAGE: &str = r#"
import ctypes, errno, fcntl, os, socket, stat, struct

_libc = ctypes.CDLL(None, use_errno=True)
IMPORTED_BY = os.getpid()


def _errno(fn):
    try:
        if fn() < 0:
            return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
        return "allowed"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def _clone(flags):
    pid = _libc.syscall(56, flags | 17, 0, 0, 0, 0)
    if pid == 0:
        os._exit(0)
    return pid


def _in_child(fn):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(w, fn().encode())
        finally:
            os._exit(0)
    os.close(w)
    out = os.read(r, 100).decode()
    os.waitpid(pid, 0)
    return out


def _loopback_up_in_a_new_network():
    got = _errno(lambda: _libc.unshare(0x40000000))
    if got != "allowed":
        return "unshare: " + got
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    return _errno(lambda: fcntl.ioctl(s.fileno(), 0x8914, struct.pack("16sH14x", b"lo", 1)) and 0)


def _status(field):
    return open("/proc/self/status").read().split(field + ":")[1].split()[0]


REPORT = {
    "uid_map": open("/proc/self/uid_map").read().split(),
    "caps": _status("CapEff"),
    "no_new_privs": _status("NoNewPrivs"),
    "seccomp": _status("Seccomp"),
    "mount_tmpfs": _errno(lambda: _libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)),
    "mknod_block_device": _errno(lambda: os.mknod("/tmp/disk", 0o600 | stat.S_IFBLK, os.makedev(254, 0)) or 0),
    "mount_block_device": _errno(lambda: _libc.mount(b"/dev/vda", b"/tmp", b"ext4", 1, None)),
    "unshare_user": _errno(lambda: _libc.unshare(0x10000000)),
    "clone_user_net": _errno(lambda: _clone(0x10000000 | 0x40000000)),
    "loopback_up_in_a_new_network": _in_child(_loopback_up_in_a_new_network),
    "ptrace_pid_1": _errno(lambda: _libc.ptrace(16, 1, None, None)),
    "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
}
"#;

#[test]
#[ignore = "needs root"]
fn a_package_imported_by_a_zygote_has_no_host_privilege() {
    let index = tempfile::tempdir().expect("tempdir");
    common::write_wheel_files(
        index.path(),
        "olprobe",
        "1.0",
        &[("olprobe/__init__.py", HOSTILE_PACKAGE)],
    );
    let tree = r#"import_cache_tree={"packages": [], "children": [{"packages": ["olprobe"], "children": []}]}"#;
    let w = TestWorker::start(
        Backend::Sock,
        &[(
            "probe",
            &[
                (
                    "f.py",
                    "import os, olprobe\ndef f(event):\n    return dict(olprobe.REPORT, inherited=olprobe.IMPORTED_BY != os.getpid())\n",
                ),
                ("requirements.txt", "olprobe==1.0\n"),
            ],
        )],
        &[
            CACHE,
            &format!("pip_index_url={}", index.path().display()),
            tree,
        ],
    );
    let a = w.run("probe", "{}");
    assert_eq!(a.status, 200, "{}", a.body);
    let r = a.json();
    assert_eq!(r["inherited"], true, "imported by the zygote: {r}");
    assert_eq!(w.stats()["zygote_hits"], 1);
    // Root of its own user namespace only: host root is not mapped at all,
    // its root is the unprivileged host uid 65533.
    let map: Vec<&str> = r["uid_map"]
        .as_array()
        .expect("uid_map")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(map, ["0", "65533", "1", "65534", "65534", "1"], "{r}");
    // CAP_SETGID, CAP_SETUID, CAP_SETPCAP, CAP_SYS_ADMIN (there) and no
    // other; no_new_privs; a seccomp filter.
    assert_eq!(r["caps"], "00000000002001c0", "{r}");
    assert_eq!(r["no_new_privs"], "1", "{r}");
    assert_eq!(r["seccomp"], "2", "{r}");
    for attempt in [
        "mount_tmpfs",
        "mknod_block_device",
        "mount_block_device",
        "unshare_user",
        "clone_user_net",
        "loopback_up_in_a_new_network",
        "ptrace_pid_1",
    ] {
        assert_eq!(r[attempt], "EPERM", "{attempt}: {r}");
    }
    // Its own pid namespace: a reaping pid 1 and itself, no other sandbox.
    assert_eq!(r["pids"], serde_json::json!([1, 2]), "{r}");
}

#[test]
#[ignore = "needs root"]
fn descriptors_left_open_by_whoever_starts_the_worker_never_reach_a_lambda() {
    let outside = tempfile::tempdir().expect("tempdir");
    let secret = outside.path().join("secret");
    fs::write(&secret, "root-only secret\n").expect("secret");
    fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let host_log = outside.path().join("host.log");
    fs::write(&host_log, "").expect("host log");
    let lambda = r#"
import os
def f(event):
    found = {}
    for fd in range(1024):
        try:
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
    for fd, target in found.items():
        if target.startswith("/") and target != "/dev/null":
            try:
                os.write(fd, b"appended by a lambda\n")
            except OSError:
                pass
    return sorted(v.split(":")[0] for v in found.values())
"#;
    for overrides in [&[][..], &["features.import_cache="][..]] {
        let dir = init_dir(&[], &[("fds", &[("f.py", lambda)])]);
        let mut up = format!(
            "exec 7<'{}' 8>>'{}'; exec '{}' worker up -d -p '{}' -o worker_port=0 -o {}",
            secret.display(),
            host_log.display(),
            ol_bin(),
            dir.path().display(),
            Backend::Sock.option()
        );
        for o in overrides {
            up.push_str(&format!(" -o '{o}'"));
        }
        let out = Command::new("sh").args(["-c", &up]).output().expect("sh");
        assert!(out.status.success(), "{}", common::stderr(&out));
        let w = TestWorker::adopt(Backend::Sock, dir);
        let a = w.run("fds", "{}");
        assert_eq!(a.status, 200, "{}", a.body);
        // stdin, its two log pipes, its runtime socket: nothing else.
        assert_eq!(
            a.json(),
            serde_json::json!(["/dev/null", "pipe", "pipe", "socket"]),
            "{overrides:?}"
        );
        drop(w);
    }
    assert_eq!(fs::read_to_string(&host_log).expect("host log"), "");
}

#[test]
#[ignore = "needs root"]
fn the_terminal_of_a_foreground_worker_is_out_of_every_sandbox_reach() {
    let lambda = r#"
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def tiocsti(fd):
    if libc.ioctl(fd, 0x5412, ctypes.c_char_p(b"x")) < 0:
        return errno.errorcode.get(ctypes.get_errno())
    return "allowed"
def f(event):
    try:
        open("/dev/tty", "rb")
        tty = "opened"
    except OSError as e:
        tty = errno.errorcode.get(e.errno)
    return {
        "dev_tty": tty,
        "ttys": [os.isatty(fd) for fd in (0, 1, 2)],
        "tiocsti": [tiocsti(fd) for fd in (0, 1, 2)],
        "session": os.getsid(0),
    }
"#;
    for overrides in ["", " -o features.import_cache="] {
        let dir = init_dir(&[], &[("tty", &[("f.py", lambda)])]);
        // `script` runs the worker in the foreground on a terminal of its
        // own (a pty), as an operator's shell would.
        let up = format!(
            "'{}' worker up -p '{}' -o worker_port=0 -o {}{overrides}",
            ol_bin(),
            dir.path().display(),
            Backend::Sock.option()
        );
        let mut script = Command::new("script")
            .args(["-qfec", &up, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("script");
        let mut w = TestWorker::adopt(Backend::Sock, dir);
        let a = w.run("tty", "{}");
        // The foreground worker stops, then `script` ends; then nothing of
        // the worker may be left.
        let out = common::ol(w.path(), &["worker", "down"]);
        assert!(out.status.success(), "{}", common::stderr(&out));
        let _ = script.wait();
        w.down();
        assert_eq!(a.status, 200, "{}", a.body);
        let r = a.json();
        assert_eq!(r["dev_tty"], "ENOENT", "{r}");
        assert_eq!(r["ttys"], serde_json::json!([false, false, false]), "{r}");
        assert_eq!(
            r["tiocsti"],
            serde_json::json!(["EPERM", "EPERM", "EPERM"]),
            "{r}"
        );
        // A session of its own, led by the sandbox's pid 1.
        assert_eq!(r["session"], 1, "{r}");
    }
}

/// The log files of the sandboxes of `lambda` (newest and rotated).
fn logs_of(w: &TestWorker, lambda: &str) -> Vec<PathBuf> {
    scratch_dirs(w, lambda)
        .into_iter()
        .flat_map(|d| ["stdout", "stdout.1"].map(|f| d.join(f)))
        .filter(|p| p.is_file())
        .collect()
}

fn scratch_dirs(w: &TestWorker, lambda: &str) -> Vec<PathBuf> {
    fs::read_dir(w.path().join("worker/scratch"))
        .expect("scratch")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{lambda}-")))
        })
        .collect()
}

#[test]
#[ignore = "needs root"]
fn scratch_space_and_output_are_bounded_and_go_with_their_sandbox() {
    let fill = r#"
import errno, os, sys
def fill(path):
    written = 0
    try:
        with open(path, "wb") as f:
            while written < (1 << 30):
                f.write(b"x" * (1 << 20))
                written += 1 << 20
        return ["no limit", written]
    except OSError as e:
        return [errno.errorcode.get(e.errno), written]
    finally:
        os.remove(path)
def f(event):
    got = {"host": fill("/host/big"), "tmp": fill("/tmp/big")}
    for i in range(100000):
        print(f"line {i:06}")
    print("THE END")
    sys.stdout.flush()
    return got
"#;
    let crash = "import os\ndef f(event):\n    print('bye', flush=True)\n    os._exit(3)\n";
    for overrides in [&[][..], &["features.import_cache="][..]] {
        let mut all = vec!["limits.disk_mb=8", "limits.log_kb=64"];
        all.extend(overrides);
        let w = TestWorker::start(
            Backend::Sock,
            &[("fill", &[("f.py", fill)]), ("crash", &[("f.py", crash)])],
            &all,
        );
        let a = w.run("fill", "{}");
        assert_eq!(a.status, 200, "{}", a.body);
        let r = a.json();
        for place in ["host", "tmp"] {
            assert_eq!(r[place][0], "ENOSPC", "{place}: {r}");
            assert!(r[place][1].as_u64().expect("bytes") <= 8 << 20, "{r}");
        }
        // ~1.2 MB printed; 64 KiB kept, the newest.
        let ended = || {
            logs_of(&w, "fill")
                .iter()
                .any(|p| fs::read_to_string(p).is_ok_and(|t| t.contains("THE END")))
        };
        assert!(
            eventually(Duration::from_secs(10), ended),
            "the newest output is kept"
        );
        let kept: u64 = logs_of(&w, "fill")
            .iter()
            .map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum();
        assert!(kept <= 64 * 1024, "{kept} bytes of logs kept");
        let all_kept: String = logs_of(&w, "fill")
            .iter()
            .filter_map(|p| fs::read_to_string(p).ok())
            .collect();
        assert!(
            !all_kept.contains("line 000000"),
            "the oldest output is dropped"
        );
        // A sandbox that dies takes its scratch dir (and logs) with it.
        let a = w.run("crash", "{}");
        assert_eq!(a.status, 502, "{}", a.body);
        assert!(
            eventually(Duration::from_secs(10), || scratch_dirs(&w, "crash")
                .is_empty()),
            "{:?}",
            scratch_dirs(&w, "crash")
        );
    }
}

/// Pid of the live root zygote: in a `zygote-*` cgroup, pid 2 of the pid
/// namespace of its sandbox init (not a child it is forking, which passes
/// through its cgroup, nor an import-cache zygote, a level deeper).
fn root_zygote_pid(w: &TestWorker) -> u32 {
    let worker = Path::new("/sys/fs/cgroup/pids").join(ol_sandbox::sock::worker_id(&w.state_dir()));
    fs::read_dir(&worker)
        .expect("worker cgroup")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("zygote-"))
        .flat_map(|e| {
            fs::read_to_string(e.path().join("cgroup.procs"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .find(|pid| common::ns_pids(*pid).get(1..) == Some(&[2][..]))
        .expect("the root zygote")
}

#[test]
#[ignore = "needs root"]
fn a_killed_zygote_is_noticed_at_once() {
    let hello = "def f(event):\n    return 'hi'\n";
    let w = TestWorker::start(Backend::Sock, &[("hello", &[("f.py", hello)])], &[]);
    assert_eq!(w.run("hello", "{}").status, 200);
    let zygote = root_zygote_pid(&w);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(zygote as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the zygote");
    // New lambdas start at once: the first take the blanks the dead zygote
    // made ahead (they live on, each in its own namespaces), the next fork
    // from a new zygote; no fork request waits for an answer from the dead
    // one.
    for n in 0..5 {
        let name = format!("new-{n}");
        add_lambda(w.path(), &name, &[("f.py", hello)]);
        let a = w.run(&name, "{}");
        assert_eq!((a.status, a.body.as_str()), (200, "\"hi\""));
    }
    assert_ne!(root_zygote_pid(&w), zygote);
    let log = fs::read_to_string(w.path().join("logs/worker.log")).expect("worker log");
    // A request in flight when it died fails at once (connection reset);
    // none ran into its timeout (EAGAIN on the socket).
    assert!(!log.contains("temporarily unavailable"), "{log}");
    assert_eq!(log.matches("zygote ready").count(), 2, "{log}");
}
