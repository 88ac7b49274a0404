"""Zygote of ol: a Python process with the runtime (and later packages)
already imported that forks new lambda sandboxes (DESIGN.md sections 3.4, 7).

The worker starts it inside a privileged sandbox (its own mount namespace,
root, no seccomp) as

    <python> -I -S ol_zygote.py --fd N [--seccomp FILE]

and speaks the frame protocol of docs/protocol.md on fd N. After a
``ready`` frame the zygote answers ``prefork`` requests, which carry as
SCM_RIGHTS descriptors the new runtime's socket, the write end of its exit
pipe and one ``cgroup.procs`` file per cgroup hierarchy. The zygote forks a
*blank*: the child joins the cgroups, unshares mount, pid, ipc, uts and
network namespaces and forks again. That middle process waits and writes
the runtime's raw wait status to the exit pipe; the grandchild, pid 1 of
the new pid namespace, mounts a private /tmp and /proc, then waits on its
socket for an ``assign`` frame with the lambda (descriptors: a detached
read-only mount of its code, a detached writable mount of its scratch dir,
its stdout and stderr). It mounts them at /handler and /host, drops every
privilege, installs the seccomp filter, loads the lambda, says ``ready`` and
serves it. Blanks are made ahead of time, so the expensive part (above all
the cgroup migration, which waits for an RCU grace period) is off the
critical path of a cold start. The zygote answers ``{"type": "forked",
"id": ..., "pid": ...}``.

A ``zygote`` request (the import cache, DESIGN.md section 3.4) forks a
child zygote instead: descriptors are its control socket, the write end of
its exit pipe, its stdout and stderr, then its ``cgroup.procs`` files; the
meta names the package dirs to put on sys.path and the modules to import.
The child stays in this zygote's namespaces and privileges, imports the
modules, says ``ready`` (or ``error``) on its own socket and serves
``prefork`` and ``zygote`` requests there like this one. The parent writes
its raw wait status to the exit pipe when it reaps it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import gc
import json
import os
import signal
import socket
import struct
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ol_runtime  # noqa: E402  (needs the path above)

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
SANDBOX_NAMESPACES = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWNET

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
AT_FDCWD = -100
MOVE_MOUNT_F_EMPTY_PATH = 0x4
SYS_MOVE_MOUNT = 429  # the same on every architecture (new syscall table)

PR_SET_PDEATHSIG = 1
PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFF_RUNNING = 0x40

# Paths inside a sandbox (crates/sandbox/src/sock/rootfs.rs `inside`).
HANDLER_DIR = "/handler"
HOST_DIR = "/host"

BLANK_FDS = 2  # runtime socket, exit pipe; then one cgroup.procs per hierarchy
ZYGOTE_FDS = 4  # control socket, exit pipe, stdout, stderr; then cgroup.procs files
ASSIGN_FDS = 4  # code mount, scratch mount, stdout, stderr
MAX_FDS = 16
CHILD_FAILED = 125

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.syscall.restype = ctypes.c_long


class SockFprog(ctypes.Structure):
    """struct sock_fprog for PR_SET_SECCOMP."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def mount(source: bytes | None, target: bytes, fstype: bytes | None, flags: int, data: bytes | None = None) -> None:
    _check(_libc.mount(source, target, fstype, flags, data), f"mount {target.decode()}")


def move_mount(fd: int, target: str) -> None:
    ret = _libc.syscall(
        ctypes.c_long(SYS_MOVE_MOUNT),
        ctypes.c_int(fd),
        ctypes.c_char_p(b""),
        ctypes.c_int(AT_FDCWD),
        ctypes.c_char_p(target.encode()),
        ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH),
    )
    _check(int(ret), f"move_mount onto {target}")


def prctl(option: int, arg2: int = 0) -> None:
    _check(_libc.prctl(option, arg2, 0, 0, 0), f"prctl({option})")


def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP | IFF_RUNNING))


def drop_bounding_set() -> None:
    """Empties the capability bounding set. It only limits what an exec
    could gain, so a blank does it ahead of time and keeps, until its
    lambda arrives, the capabilities it holds now (to mount)."""
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            if ctypes.get_errno() == errno.EINVAL:
                break
            _check(-1, "drop capability")


def drop_privileges(uid: int, gid: int, seccomp: bytes | None) -> None:
    """Becomes uid/gid with no capabilities (the uid change clears them;
    the bounding set is already empty) and installs the seccomp filter."""
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    # The uid change cleared the parent-death signal: set it now, so the
    # sandbox dies with its middle process (the worker's handle).
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    if seccomp:
        buf = ctypes.create_string_buffer(seccomp, len(seccomp))
        prog = SockFprog(len(seccomp) // 8, ctypes.cast(buf, ctypes.c_void_p))
        _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0), "seccomp")


def prepare_blank(fds: list[int], warm: bool = True) -> socket.socket:
    """In the forked child: everything that does not depend on the lambda.

    Joins the cgroups, unshares the namespaces, forks pid 1 of the new pid
    namespace (this process stays as the middle one and reports its exit),
    gives it a private /tmp and /proc, a host name and loopback. Returns
    the runtime's socket, in the grandchild only.
    """
    conn, exit_w = fds[:BLANK_FDS]
    for fd in fds[BLANK_FDS:]:
        os.write(fd, b"0")
        os.close(fd)
    unshare(SANDBOX_NAMESPACES)
    runtime = os.fork()
    if runtime:
        # The middle process: report how the runtime ended, then go.
        os.close(conn)
        try:
            _, status = os.waitpid(runtime, 0)
        except ChildProcessError:
            status = -1
        try:
            os.write(exit_w, b"%d\n" % status)
        finally:
            os._exit(0)
    os.close(exit_w)
    mount(None, b"/", None, MS_REC | MS_PRIVATE)
    mount(b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV, b"size=64m,mode=1777")
    mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    socket.sethostname("ol-sandbox")
    loopback_up()
    sock = socket.socket(fileno=conn)
    sock.set_inheritable(False)
    drop_bounding_set()
    if warm:
        warm_up()
    else:
        # Wanted at once: only what warm_up does that the lambda needs.
        os.environ.clear()
        ol_runtime.setup_stdio()
    return sock


def warm_up() -> None:
    """Does, before the lambda is known, what every lambda's start does:
    clears the environment, line-buffers stdio, loads a stand-in lambda
    from the private /tmp. Each touches interpreter pages shared with the
    zygote, and the first touch of each copies it: here, off the critical
    path of a cold start (measured: ~0.8 ms less per start)."""
    os.environ.clear()
    ol_runtime.setup_stdio()
    stand_in = "/tmp/.ol-warm-up"
    entry = os.path.join(stand_in, "f.py")
    writes_bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # like /handler, which is read-only
    try:
        os.mkdir(stand_in)
        with open(entry, "w") as f:
            f.write("def f(event):\n    return event\n")
        ol_runtime.load_lambda(stand_in).close()
        del sys.path[0]
    finally:
        sys.dont_write_bytecode = writes_bytecode
        sys.modules.pop("f", None)
        os.chdir("/")
        if os.path.exists(entry):
            os.unlink(entry)
        if os.path.isdir(stand_in):
            os.rmdir(stand_in)


def run_assigned(sock: socket.socket, seccomp: bytes | None) -> None:
    """In a blank: waits for its lambda, becomes its sandbox and serves it.
    Never returns."""
    meta, fds = recv_request(sock)
    if meta is None:
        os._exit(0)  # the worker dropped the blank
    if meta.get("type") != "assign" or len(fds) != ASSIGN_FDS:
        raise ValueError(f"bad assignment {meta!r} with {len(fds)} fds")
    code_mnt, host_mnt, stdout, stderr = fds
    os.dup2(stdout, 1)
    os.dup2(stderr, 2)
    os.close(stdout)
    os.close(stderr)
    move_mount(code_mnt, HANDLER_DIR)
    move_mount(host_mnt, HOST_DIR)
    os.close(code_mnt)
    os.close(host_mnt)
    os.chdir(HANDLER_DIR)
    drop_privileges(int(meta["uid"]), int(meta["gid"]), seccomp)
    os.environ.update(dict(meta.get("env", [])))
    try:
        handler = ol_runtime.load_lambda(HANDLER_DIR, list(meta.get("packages", [])))
    except ol_runtime.LoadError as exc:
        ol_runtime.send_frame(sock, {"type": "load_error", "error": exc.summary, "traceback": exc.traceback})
        os._exit(1)
    ol_runtime.send_frame(sock, {"type": "ready", "pid": os.getpid()})
    try:
        ol_runtime.serve(sock, handler)
    except (ConnectionError, ol_runtime.ProtocolError):
        pass
    finally:
        handler.close()
    os._exit(0)


def recv_request(sock: socket.socket) -> tuple[dict | None, list[int]]:
    """One frame and the descriptors sent with it; (None, []) on EOF."""
    data, fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, MAX_FDS)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    while len(data) < 8:
        more = sock.recv(8 - len(data))
        if not more:
            return None, []
        data += more
    meta_len, body_len = ol_runtime.FRAME_HEADER.unpack_from(data)
    need = 8 + meta_len + body_len
    while len(data) < need:
        more = sock.recv(need - len(data))
        if not more:
            return None, []
        data += more
    return json.loads(data[8 : 8 + meta_len]), fds


# Exit pipes of child zygotes, by pid: written when they are reaped.
_zygote_exits: dict[int, int] = {}


def reap(_signum: int = 0, _frame: object = None) -> None:
    """Collects every exited child (middle processes and child zygotes)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        exit_w = _zygote_exits.pop(pid, None)
        if exit_w is not None:
            try:
                os.write(exit_w, b"%d\n" % status)
            except OSError:
                pass
            os.close(exit_w)


def become_zygote(meta: dict, fds: list[int], seccomp: bytes | None) -> int:
    """In a forked child: joins its cgroups, imports the node's packages and
    serves fork requests on its own socket. Returns the exit status."""
    conn, exit_w, stdout, stderr = fds[:ZYGOTE_FDS]
    os.close(exit_w)  # the parent reports our exit
    for fd in fds[ZYGOTE_FDS:]:
        os.write(fd, b"0")
        os.close(fd)
    os.dup2(stdout, 1)
    os.dup2(stderr, 2)
    os.close(stdout)
    os.close(stderr)
    for fd in list(_zygote_exits.values()):
        os.close(fd)  # our siblings' pipes belong to the parent
    _zygote_exits.clear()
    sock = socket.socket(fileno=conn)
    sock.set_inheritable(False)
    ol_runtime.add_package_paths(list(meta.get("packages", [])))
    for module in meta.get("imports", []):
        try:
            __import__(module)
        except BaseException as exc:  # noqa: BLE001 - any import failure is reported
            ol_runtime.send_frame(
                sock,
                {"type": "error", "error": f"cannot import {module}: {ol_runtime.exception_summary(exc)}"},
            )
            return 1
    gc.freeze()
    return serve_forks(sock, seccomp)


def fork_child(meta: dict, fds: list[int], seccomp: bytes | None, sock: socket.socket) -> int:
    """Forks a blank (``prefork``) or a child zygote (``zygote``); returns
    its pid in the parent."""
    kind = meta.get("type")
    pid = os.fork()
    if pid == 0:
        status = CHILD_FAILED
        try:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            sock.close()
            if kind == "zygote":
                status = become_zygote(meta, fds, seccomp)
            else:
                run_assigned(prepare_blank(fds, bool(meta.get("warm", True))), seccomp)
        except BaseException:  # noqa: BLE001 - report anything, then die
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(status)
    if kind == "zygote":
        _zygote_exits[pid] = os.dup(fds[1])
    return pid


def serve_forks(sock: socket.socket, seccomp: bytes | None) -> int:
    signal.signal(signal.SIGCHLD, reap)
    ol_runtime.send_frame(sock, {"type": "ready", "pid": os.getpid()})
    while True:
        meta, fds = recv_request(sock)
        if meta is None:
            return 0
        kind = meta.get("type")
        need = {"prefork": BLANK_FDS, "zygote": ZYGOTE_FDS}.get(kind)
        if need is None or len(fds) < need:
            for fd in fds:
                os.close(fd)
            ol_runtime.send_frame(sock, {"type": "error", "error": f"bad request {meta!r} with {len(fds)} fds"})
            continue
        # Block SIGCHLD while forking: a child reaped between fork and the
        # bookkeeping of its exit pipe would be reported to no one.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        try:
            pid = fork_child(meta, fds, seccomp, sock)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        for fd in fds:
            os.close(fd)
        ol_runtime.send_frame(sock, {"type": "forked", "id": meta.get("id"), "pid": pid})


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    opts = dict(zip(args[::2], args[1::2]))
    try:
        sock = socket.socket(fileno=int(opts["--fd"]))
    except (KeyError, ValueError, OSError) as exc:
        print(f"usage: ol_zygote.py --fd N [--seccomp FILE] ({exc})", file=sys.stderr)
        return 2
    sock.set_inheritable(False)
    seccomp = None
    if "--seccomp" in opts:
        with open(opts["--seccomp"], "rb") as f:
            seccomp = f.read()
    ol_runtime.setup_stdio()
    # Everything imported so far lives on, shared, in every child: keep the
    # collector from walking (and so copying) those pages after each fork.
    gc.freeze()
    return serve_forks(sock, seccomp)


if __name__ == "__main__":
    sys.exit(main())
