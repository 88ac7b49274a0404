"""Zygote of ol: a Python process with the runtime (and later packages)
already imported that forks new lambda sandboxes (docs/architecture.md
sections 3.4, 3.13, 7).

The worker starts it through the sandbox init, confined: root only of a
user namespace of its own whose root is an unprivileged host uid, with a
few capabilities there, no_new_privs and the zygote seccomp filter. It runs

    <python> -I -S ol_zygote.py --fd N --jail LIB [--seccomp FILE]

(the worker has Python import it and call ``main`` instead, so that its
byte-compiled copy is used: a script is compiled at every start) and
speaks the frame protocol of docs/protocol.md on fd N. LIB is the jail's
shared library (crates/jail): every step of entering a sandbox is one
call into it, the same Rust code the sandbox init runs, so no syscall
number or kernel constant lives here. FILE is the seccomp filter lambdas
get. Before anything else the zygote asks the jail to check that it is
confined as a zygote must be (it imports packages later: none may run with
host privilege).

After a ``ready`` frame the zygote answers ``prefork`` requests, whose
SCM_RIGHTS descriptors are the new runtime's socket, a detached tmpfs for
its /tmp and one join file per cgroup hierarchy (v1 ``tasks``, v2
``cgroup.procs``). The zygote has the jail fork a *blank* straight into new
namespaces (one ``clone``: the blank is pid 1 of its pid namespace and this
zygote's child, which it reaps; a zygote whose imports started threads
forks with libc's fork instead, whose child unshares and forks pid 1).
Running only the jail's code, the blank joins the cgroups, takes a cgroup
namespace rooted there, starts a session, attaches /tmp, and sends the
worker its pid namespace, a socket of its network namespace and a pidfd of
itself on its socket (the worker brings its loopback up, makes its proc,
and learns through the pidfd how the blank ended). Back in Python it does
ahead what every lambda's start does, then waits on its socket for an
``assign`` frame with the lambda (descriptors: detached mounts of its
code, of its /host tmpfs and of its proc, and its stdout and stderr log
pipes). The jail attaches them, keeps only the socket and stdio, makes
it the sandbox user with no capability, sets no_new_privs and installs
the lambda filter; then it loads the lambda, says ``ready`` and serves
it. Blanks are made ahead of time, so the expensive part (namespaces,
cgroups, the fork) is off the critical path of a cold start. The zygote
answers ``{"type": "forked", "id": ..., "pid": ...}``.

A ``zygote`` request (the import cache, docs/architecture.md section 3.4) forks a
child zygote instead: descriptors are its control socket, its stdout and
stderr, a tmpfs for its /tmp, then its cgroup join files; the meta names
the package dirs to put on sys.path and the modules to import. The jail
forks it into namespaces of its own like a blank, where pid 1 only reaps
(so sandboxes forked from the child zygote outlive it) and forks the
child zygote, with the privileges and filter of this zygote; it sends the
worker its namespaces and waits for its proc. Then the child imports the
modules, says ``ready`` (or ``error``) on its own socket and serves
``prefork`` and ``zygote`` requests there like this one.
"""

from __future__ import annotations

import _ctypes
import _signal
import _socket
import gc
import os
import select
import struct
import sys

TYPE_CHECKING = False  # typing costs milliseconds at start-up; only checkers need it
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

    Socket = _socket.socket

_RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__))
if _RUNTIME_DIR not in sys.path:  # the worker's start program put it there
    sys.path.insert(0, _RUNTIME_DIR)

import ol_runtime  # noqa: E402  (needs the path above)

# Paths inside a sandbox (crates/sandbox/src/sock/rootfs.rs `inside`).
HANDLER_DIR = "/handler"
# The stand-in lambda warm-ups load (crates/sandbox/src/runtime.rs
# `STAND_IN_DIR`), installed with this file.
STAND_IN_DIR = os.path.join(_RUNTIME_DIR, "warm-up")
STAND_IN_FILE = "f.py"

BLANK_FDS = 2  # runtime socket, /tmp; then one cgroup join file per hierarchy
ZYGOTE_FDS = 4  # control socket, stdout, stderr, /tmp; then cgroup join files
ASSIGN_FDS = 5  # code, /host and proc mounts, stdout, stderr
MAX_FDS = 16
CHILD_FAILED = 125
ERROR_LEN = 512
FD_SIZE = struct.calcsize("i")  # a descriptor in SCM_RIGHTS data

# Modules many lambdas import (and the runtime's rarer paths), imported by
# a zygote only once it has forked its first child: neither the runtime
# nor the zygote needs them to serve a call, and at start they cost ~15 ms
# (json with re, enum, functools and collections; socket with selectors)
# that the first call after `ol worker up` would wait for.
PRELOADED = (
    "json",
    "socket",
    "signal",
    "collections.abc",
    "importlib.machinery",
    "importlib.util",
    "types",
)

_warmed = False  # whether this zygote (or the one it was forked from) warmed up


class _Int(_ctypes._SimpleCData):
    _type_ = "i"


class _Size(_ctypes._SimpleCData):
    _type_ = "L"  # size_t: as wide as unsigned long on Linux (ctypes' c_size_t)


class _Char(_ctypes._SimpleCData):
    _type_ = "c"


class _CharP(_ctypes._SimpleCData):
    _type_ = "z"


class _Library:
    """A shared library (None: this process) whose functions are called
    with ``flags``: what ctypes.CDLL and ctypes.PyDLL do, on ``_ctypes``
    itself. Importing ctypes cost ~2.5 ms of the root zygote's start, on
    the first call's path; nothing else here needs it."""

    def __init__(self, path: str | None, flags: int) -> None:
        self._handle = _ctypes.dlopen(path, _ctypes.RTLD_LOCAL)

        class Function(_ctypes.CFuncPtr):
            _flags_ = flags
            _restype_ = _Int

        self._function = Function

    def function(self, name: str, argtypes: list[type], restype: type | None = _Int):  # noqa: ANN201
        fn = self._function((name, self))
        fn.argtypes, fn.restype = argtypes, restype
        return fn


class Jail:
    """The jail's shared library: each method is one native call that
    enters a stage of a child's sandbox, or raises OSError naming the step
    that failed. Descriptors passed are taken over by the jail (closed when
    no longer needed), except the socket, which the caller keeps."""

    def __init__(self, path: str) -> None:
        # Forking keeps the GIL, as os.fork does: PYTHONAPI functions.
        forks = _Library(path, _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_PYTHONAPI)
        lib = _Library(path, _ctypes.FUNCFLAG_CDECL)
        api = _Library(None, _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_PYTHONAPI)
        c_int, c_size, c_buf = _Int, _Size, _CharP
        fds = _ctypes.POINTER(_Int)
        self._fork_blank = forks.function("ol_jail_fork_blank", [c_int, c_int, fds, c_size, c_buf, c_size])
        self._fork_zygote = forks.function(
            "ol_jail_fork_zygote", [c_int, c_int, c_int, c_int, fds, c_size, c_buf, c_size]
        )
        self._before_fork = api.function("PyOS_BeforeFork", [], None)
        self._after_fork_child = api.function("PyOS_AfterFork_Child", [], None)
        self._after_fork_parent = api.function("PyOS_AfterFork_Parent", [], None)
        self._assign = lib.function(
            "ol_jail_assign", [c_int, c_int, c_int, c_int, c_int, c_int, c_buf, c_size, c_buf, c_size]
        )
        self._check_zygote = lib.function("ol_jail_check_zygote", [c_int, c_buf, c_size])

    @staticmethod
    def _call(fn, *args) -> None:  # noqa: ANN001 - a foreign function
        err = (_Char * ERROR_LEN)()
        if fn(*args, err, ERROR_LEN) != 0:
            raise OSError(f"jail: {err.value.decode(errors='replace')}")

    @staticmethod
    def _ints(values: list[int]):  # noqa: ANN205 - a foreign array
        return (_Int * max(len(values), 1))(*values)

    def check_zygote(self, seccomp: bool) -> None:
        self._call(self._check_zygote, int(seccomp))

    def _fork(self, fn, *args) -> int:  # noqa: ANN001 - a foreign function
        """Calls one of the jail's forks like os.fork: 0 in the child, the
        child's pid here. The jail forks the child straight into its new
        namespaces and enters its sandbox itself, so no Python runs in it
        before it returns."""
        err = (_Char * ERROR_LEN)()
        self._before_fork()
        pid = fn(*args, err, ERROR_LEN)
        if pid == 0:
            self._after_fork_child()
            return 0
        self._after_fork_parent()
        if pid < 0:
            raise OSError(f"jail: {err.value.decode(errors='replace')}")
        return pid

    def fork_blank(self, conn: int, tmp: int, cgroups: list[int]) -> int:
        """Forks a blank sandbox: 0 in it (its pid 1: the jail has joined its
        cgroups, handed the worker its namespaces and closed every other
        descriptor), its pid here."""
        return self._fork(self._fork_blank, conn, tmp, self._ints(cgroups), len(cgroups))

    def fork_zygote(self, conn: int, logs: list[int], tmp: int, cgroups: list[int]) -> int:
        """Forks a child zygote: 0 in it (under a pid 1 that only reaps, with
        its namespaces handed to the worker and its proc attached), the pid
        of that pid 1 here."""
        stdout, stderr = logs
        return self._fork(self._fork_zygote, conn, stdout, stderr, tmp, self._ints(cgroups), len(cgroups))

    def assign(self, conn: int, mounts: list[int], logs: list[int], seccomp: bytes) -> None:
        code, host, proc = mounts
        stdout, stderr = logs
        self._call(self._assign, conn, code, host, proc, stdout, stderr, seccomp, len(seccomp))

    def rehearse_assign(self, seccomp: bytes) -> None:
        """Calls ``assign`` without descriptors, which the jail refuses
        before it does anything. A forked child's first foreign call copies
        the pages of ctypes' machinery it touches (~0.16 ms in a harness
        that forks like a zygote): a blank pays that here, not when its
        lambda arrives."""
        try:
            self.assign(-1, [-1, -1, -1], [-1, -1], seccomp)
        except OSError:
            return
        raise RuntimeError("the jail took an assignment without descriptors")


def fork_blank(jail: Jail, fds: list[int], warm: bool, seccomp: bytes, sock: Socket) -> int:
    """Forks a blank; returns its pid here. In the blank: does ahead
    everything that does not depend on the lambda, then waits for its lambda
    and serves it; never returns there."""
    conn, tmp = fds[:BLANK_FDS]
    pid = jail.fork_blank(conn, tmp, fds[BLANK_FDS:])
    if pid != 0:
        return pid

    def serve(blank: Socket) -> int:
        if warm:
            warm_up(jail, seccomp)
        else:
            # Wanted at once: only what warm_up does that the lambda needs.
            os.environ.clear()
            ol_runtime.setup_stdio()
        run_assigned(jail, blank, seccomp)
        return 0

    run_child(sock, conn, serve)


def run_child(sock: Socket, conn: int, body: Callable[[Socket], int]) -> NoReturn:
    """In a child the jail has just forked and entered (every descriptor
    but ``conn`` and stdio closed): runs ``body`` with ``conn`` as its
    socket and exits with what it returns (``CHILD_FAILED``, after the
    traceback, when it raises)."""
    status = CHILD_FAILED
    try:
        _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, {_signal.SIGCHLD})
        sock.detach()  # the jail closed it, with every other descriptor
        own = _socket.socket(fileno=conn)
        os.set_inheritable(conn, False)
        status = body(own)
    except BaseException:  # noqa: BLE001 - report anything, then die
        import traceback  # only a failing child pays for it (~2 ms at start)

        traceback.print_exc()
        sys.stderr.flush()
    finally:
        os._exit(status)


def warm_up(jail: Jail | None = None, seccomp: bytes = b"") -> None:
    """Does, in a blank, before its lambda is known, what every lambda's
    start does: clears the environment (and sets and removes a variable),
    line-buffers stdio, loads and serves the stand-in lambda
    (serve_stand_in) and, given the jail, rehearses the call that hands
    it its lambda (Jail.rehearse_assign). Each step touches
    interpreter pages shared with the zygote, and the first touch of each
    copies it: here, off the critical path of a cold start (measured: ~0.8
    ms less per start for the load)."""
    os.environ.clear()
    # Its lambda's environment comes with it (run_assigned): setting a
    # variable the same way now copies the pages that path touches ahead
    # (in a harness that forks like a zygote, it then took ~50 µs instead
    # of ~170).
    os.environ.update({"OL_WARM_UP": "1"})
    del os.environ["OL_WARM_UP"]
    ol_runtime.setup_stdio()
    serve_stand_in()
    if jail is not None:
        jail.rehearse_assign(seccomp)


def warm_zygote() -> None:
    """Serves the stand-in lambda once in the zygote itself (once: a child
    zygote inherits it), after its first fork, so that what a lambda's
    first load does once per process is done here, in pages every later
    child shares, instead of in each child: the compiler's AST types, the
    first specializations of the runtime's code, the first allocations of
    each size. Measured with a 3.11 zygote: a child's load and first call
    1.0 ms instead of 2.2, and ~0.5 MiB fewer private pages per sandbox.
    After its first fork, not before: the first call's blank does not wait
    for it. It also imports PRELOADED then."""
    global _warmed
    if _warmed:
        return
    _warmed = True
    try:
        for module in PRELOADED:
            __import__(module)
        serve_stand_in()
    except Exception as exc:  # noqa: BLE001 - only a saving: serve on without it
        print(f"ol_zygote: warm-up failed: {ol_runtime.exception_summary(exc)}", file=sys.stderr)
    gc.freeze()  # what it left lives on, shared, like the imports


def serve_stand_in() -> None:
    """Loads the stand-in lambda the worker installs next to this file
    (read-only, like a lambda's code) and serves it one request through
    the runtime's own loop, then forgets it: the path, the module, the
    working directory. Nothing when it is missing."""
    if not os.path.isfile(os.path.join(STAND_IN_DIR, STAND_IN_FILE)):
        return
    try:
        handler = ol_runtime.load_lambda(STAND_IN_DIR)
        try:
            serve_one(handler)
        finally:
            handler.close()
    finally:
        if STAND_IN_DIR in sys.path:
            sys.path.remove(STAND_IN_DIR)
        sys.modules.pop(os.path.splitext(STAND_IN_FILE)[0], None)
        os.chdir("/")


def serve_one(handler: ol_runtime.Handler) -> None:
    """Serves ``handler`` one request through the runtime's own loop, over
    a socket pair, as the worker's first call to the lambda will."""
    ours, theirs = _socket.socketpair()
    try:
        meta, body = b"{}", b'{"warm": [1, 2.5, "up", null, true]}'
        theirs.sendall(ol_runtime.FRAME_HEADER.pack(len(meta), len(body)) + meta + body)
        theirs.shutdown(_socket.SHUT_WR)
        ol_runtime.serve(ours, handler)
        theirs.recv(1 << 16)
    finally:
        ours.close()
        theirs.close()


def run_assigned(jail: Jail, sock: Socket, seccomp: bytes) -> None:
    """In a blank: waits for its lambda, becomes its sandbox and serves it.
    Never returns."""
    meta, fds = recv_request(sock)
    if meta is None:
        os._exit(0)  # the worker dropped the blank
    if meta.get("type") != "assign" or len(fds) != ASSIGN_FDS:
        raise ValueError(f"bad assignment {meta!r} with {len(fds)} fds")
    jail.assign(sock.fileno(), fds[:3], fds[3:], seccomp)
    os.chdir(HANDLER_DIR)
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


def recv_fds(sock: Socket, size: int, most: int) -> tuple[bytes, list[int]]:
    """Up to ``size`` bytes and up to ``most`` descriptors sent with them
    (socket.recv_fds, without the ``socket`` module)."""
    data, ancillary, _flags, _addr = sock.recvmsg(size, _socket.CMSG_LEN(most * FD_SIZE))
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            count = len(payload) // FD_SIZE
            fds.extend(struct.unpack(f"{count}i", payload[: count * FD_SIZE]))
    return data, fds


def recv_request(sock: Socket) -> tuple[dict | None, list[int]]:
    """One frame and the descriptors sent with it; (None, []) on EOF."""
    data, fds = recv_fds(sock, 1 << 16, MAX_FDS)
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
    return ol_runtime.parse_meta(data[8 : 8 + meta_len]), fds


def reap(_signum: int = 0, _frame: object = None) -> None:
    """Collects every exited child (pid 1 of each blank and child zygote:
    the worker reads how each ended through its pidfd)."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def become_zygote(jail: Jail, meta: dict, sock: Socket, seccomp: bytes) -> int:
    """In a new child zygote (the jail has entered its namespaces): imports
    the node's packages and serves fork requests on its own socket.
    Returns the exit status."""
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
    return serve_forks(jail, sock, seccomp)


def fork_child(jail: Jail, meta: dict, fds: list[int], seccomp: bytes, sock: Socket) -> int:
    """Forks a blank (``prefork``) or a child zygote (``zygote``); returns
    its pid in the parent. The child starts with no signal wake-up pipe
    (``reaping_wait``): the jail closes the zygote's descriptors in it, and
    a signal must never write to a number it opens again."""
    zygote = os.getpid()
    wake = _signal.set_wakeup_fd(-1)
    try:
        return _fork_child(jail, meta, fds, seccomp, sock)
    finally:
        if os.getpid() == zygote:
            _signal.set_wakeup_fd(wake, warn_on_full_buffer=False)


def _fork_child(jail: Jail, meta: dict, fds: list[int], seccomp: bytes, sock: Socket) -> int:
    if meta.get("type") != "zygote":
        return fork_blank(jail, fds, bool(meta.get("warm", True)), seccomp, sock)
    conn, stdout, stderr, tmp = fds[:ZYGOTE_FDS]
    pid = jail.fork_zygote(conn, [stdout, stderr], tmp, fds[ZYGOTE_FDS:])
    if pid != 0:
        return pid
    run_child(sock, conn, lambda child: become_zygote(jail, meta, child, seccomp))


def reaping_wait(sock: Socket) -> Callable[[], None]:
    """A wait until ``sock`` has a request, during which exited children
    are reaped (``reap``: the worker learns how a sandbox ended only then).
    A SIGCHLD that lands after Python's last check for signals but before
    a blocking read starts interrupts nothing: its handler would run only
    after the next request, which may be minutes away. So the signal
    module also writes each signal to a pipe this wait polls with the
    socket, and the handler runs as the poll returns."""
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    _signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)

    def wait() -> None:
        while True:
            events = dict(poller.poll())
            if wake_r in events:
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    pass
            if sock.fileno() in events:
                return

    return wait


def serve_forks(jail: Jail, sock: Socket, seccomp: bytes) -> int:
    _signal.signal(_signal.SIGCHLD, reap)
    wait = reaping_wait(sock)
    ol_runtime.send_frame(sock, {"type": "ready", "pid": os.getpid()})
    while True:
        wait()
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
        pid = fork_child(jail, meta, fds, seccomp, sock)
        for fd in fds:
            os.close(fd)
        ol_runtime.send_frame(sock, {"type": "forked", "id": meta.get("id"), "pid": pid})
        warm_zygote()


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    opts = dict(zip(args[::2], args[1::2]))
    try:
        sock = _socket.socket(fileno=int(opts["--fd"]))
        jail = Jail(opts["--jail"])
    except (KeyError, ValueError, OSError) as exc:
        print(f"usage: ol_zygote.py --fd N --jail LIB [--seccomp FILE] ({exc})", file=sys.stderr)
        return 2
    os.set_inheritable(sock.fileno(), False)
    seccomp = b""
    if "--seccomp" in opts:
        with open(opts["--seccomp"], "rb") as f:
            seccomp = f.read()
    try:
        jail.check_zygote(bool(seccomp))
    except OSError as exc:
        ol_runtime.send_frame(sock, {"type": "error", "error": f"refusing to run unconfined: {exc}"})
        return 1
    ol_runtime.setup_stdio()
    # What sandboxes import from (/handler, /packages, the runtime) is
    # read-only: no import tries to write bytecode there (a stat and a
    # failing mkdir each).
    sys.dont_write_bytecode = True
    # Everything imported so far lives on, shared, in every child: keep the
    # collector from walking (and so copying) those pages after each fork.
    gc.freeze()
    return serve_forks(jail, sock, seccomp)


if __name__ == "__main__":
    sys.exit(main())
