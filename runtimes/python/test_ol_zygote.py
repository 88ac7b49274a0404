"""Tests of ol_zygote.py's warm-ups, in this process (no jail: they load
and serve the stand-in lambda, which needs none).

Run from anywhere with
    python3 -m unittest discover -s runtimes/python -p 'test_*.py'
"""

from __future__ import annotations

import _socket
import contextlib
import io
import os
import struct
import subprocess
import sys
import tempfile
import unittest
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ol_zygote  # noqa: E402  (needs the path above)


class StandInTest(unittest.TestCase):
    def setUp(self) -> None:
        self.cwd = os.getcwd()
        self.path = list(sys.path)
        self.module_f = sys.modules.get("f")
        self.addCleanup(os.chdir, self.cwd)
        self.addCleanup(setattr, ol_zygote, "_warmed", ol_zygote._warmed)

    def assert_nothing_left(self) -> None:
        self.assertEqual(sys.path, self.path)
        self.assertIs(sys.modules.get("f"), self.module_f)
        self.assertEqual(os.getcwd(), "/")

    def test_the_stand_in_is_served_and_forgotten(self) -> None:
        served = []
        real = ol_zygote.serve_one
        with mock.patch.object(ol_zygote, "serve_one", lambda h: served.append(h.kind) or real(h)):
            ol_zygote.serve_stand_in()
        self.assertEqual(served, ["f"])
        self.assert_nothing_left()

    def test_the_zygote_warms_up_once_and_survives_a_broken_stand_in(self) -> None:
        with tempfile.TemporaryDirectory() as broken:
            with open(os.path.join(broken, "f.py"), "w") as f:
                f.write("def f(event:\n")
            ol_zygote._warmed = False
            err = io.StringIO()
            with mock.patch.object(ol_zygote, "STAND_IN_DIR", broken), contextlib.redirect_stderr(err):
                ol_zygote.warm_zygote()
                self.assertIn("warm-up failed", err.getvalue())
                self.assertTrue(ol_zygote._warmed)
                self.assert_nothing_left()
                # Once only: a second call loads nothing.
                with mock.patch.object(ol_zygote.ol_runtime, "load_lambda") as load:
                    ol_zygote.warm_zygote()
                load.assert_not_called()

    def test_a_missing_stand_in_is_skipped(self) -> None:
        with tempfile.TemporaryDirectory() as empty:
            with mock.patch.object(ol_zygote, "STAND_IN_DIR", empty):
                with mock.patch.object(ol_zygote.ol_runtime, "load_lambda") as load:
                    ol_zygote.serve_stand_in()
            load.assert_not_called()


class StartTest(unittest.TestCase):
    def modules_after(self, statements: str) -> tuple[list[str], set[str]]:
        """What a fresh interpreter printed, and its modules, after
        importing the zygote and running ``statements``."""
        here = os.path.dirname(os.path.abspath(__file__))
        program = (
            f"import sys; sys.path.insert(0, {here!r}); import ol_zygote, ol_runtime\n"
            f"{statements}\n"
            "print(' '.join(sorted(sys.modules)))"
        )
        out = subprocess.run(
            [sys.executable, "-I", "-S", "-c", program], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        return out[:-1], set(out[-1].split())

    def test_the_zygote_and_the_runtime_start_and_serve_without_the_slow_imports(self) -> None:
        # The first call after `ol worker up` waits for the zygote's start:
        # these come only after its first fork (PRELOADED).
        printed, loaded = self.modules_after(
            "h = ol_runtime.event_handler(lambda e: e, with_conn=False)\n"
            "print(h.call(b'{}', b'[1, \"x\"]')[1].decode())"
        )
        self.assertEqual(printed, ['[1, "x"]'])
        slow = {"json", "re", "enum", "socket", "selectors", "typing", "importlib.util", "collections"}
        self.assertEqual(loaded & slow, set())

    def test_the_zygotes_warm_up_imports_what_lambdas_use(self) -> None:
        _, loaded = self.modules_after("ol_zygote.warm_zygote()")
        self.assertEqual(set(ol_zygote.PRELOADED) - loaded, set())


class RecvFdsTest(unittest.TestCase):
    def test_descriptors_sent_with_a_frame_are_received(self) -> None:
        a, b = _socket.socketpair()
        r, w = os.pipe()
        try:
            a.sendmsg([b"frame"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, struct.pack("2i", r, w))])
            data, fds = ol_zygote.recv_fds(b, 64, 4)
            self.assertEqual(data, b"frame")
            self.assertEqual(len(fds), 2)
            os.write(fds[1], b"through the copy")
            self.assertEqual(os.read(r, 64), b"through the copy")
            for fd in fds:
                os.close(fd)
        finally:
            a.close()
            b.close()
            os.close(r)
            os.close(w)


if __name__ == "__main__":
    unittest.main()


REAPING_SCRIPT = r"""
import os, sys, time, _signal, _socket
sys.path.insert(0, sys.argv[1])
import ol_zygote

reaped = []

def reap(_signum=0, _frame=None):
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        reaped.append((pid, os.waitstatus_to_exitcode(status), time.monotonic()))

_signal.signal(_signal.SIGCHLD, reap)
ours, theirs = _socket.socketpair()
wait = ol_zygote.reaping_wait(ours)
wake = _signal.set_wakeup_fd(-1)
_signal.set_wakeup_fd(wake, warn_on_full_buffer=False)


class Jail:
    # What the jail's fork does for the zygote: fork, and run the child's
    # part (here: report its wake-up fd and exit 7 after a moment).
    def fork_blank(self, conn, tmp, joins):
        pid = os.fork()
        if pid == 0:
            os.write(conn, str(_signal.set_wakeup_fd(-1)).encode())
            time.sleep(0.2)
            os._exit(7)
        return pid


child_r, child_w = os.pipe()
began = time.monotonic()
pid = ol_zygote.fork_child(Jail(), {"type": "prefork"}, [child_w, -1], b"", ours)
restored = _signal.set_wakeup_fd(-1)
_signal.set_wakeup_fd(restored, warn_on_full_buffer=False)
if os.fork() == 0:  # the worker's next request comes a second later
    time.sleep(1.0)
    theirs.send(b"x")
    os._exit(0)
wait()
print(pid, os.read(child_r, 16).decode(), wake, restored, reaped[0][0], reaped[0][1],
      round(reaped[0][2] - began, 3), round(time.monotonic() - began, 3))
"""


def run_script(test: unittest.TestCase, script: str, env: dict[str, str] | None = None) -> str:
    """What ``script`` prints, run by a new interpreter (with the runtime's
    dir as its argument): signals, the environment and stdio are per
    process."""
    runtime_dir = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run(
        [sys.executable, "-I", "-c", script, runtime_dir],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    test.assertEqual(out.returncode, 0, out.stderr)
    return out.stdout


class ReapingWaitTest(unittest.TestCase):
    def test_children_are_reaped_while_the_zygote_waits_and_start_without_its_wake_up_pipe(self) -> None:
        pid, child_wake, wake, restored, reaped_pid, code, reaped_at, returned_at = run_script(
            self, REAPING_SCRIPT
        ).split()
        self.assertEqual(child_wake, "-1", "the child has no wake-up fd")
        self.assertNotEqual(wake, "-1")
        self.assertEqual(restored, wake, "the zygote's is back after the fork")
        self.assertEqual((reaped_pid, code), (pid, "7"))
        # Reaped as it exited (~0.2 s), not when the request came (~1 s),
        # and the wait ended only with the request.
        self.assertLess(float(reaped_at), 0.8)
        self.assertGreaterEqual(float(returned_at), 0.9)


WARM_UP_SCRIPT = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
import ol_zygote
ol_zygote.STAND_IN_DIR = os.path.join(sys.argv[1], "warm-up")
ol_zygote.warm_up()
print(sorted(os.environ), flush=True)
os.execv("/usr/bin/env", ["env"])  # what the C environment holds
"""


class BlankWarmUpTest(unittest.TestCase):
    def test_a_warmed_up_blank_has_an_empty_environment(self) -> None:
        out = run_script(self, WARM_UP_SCRIPT, env={"HOME": "/root", "KEEP": "x"})
        self.assertEqual(out, "[]\n")


class RehearsedAssignTest(unittest.TestCase):
    @staticmethod
    def jail_whose_assign_returns(rc: int, calls: list) -> ol_zygote.Jail:
        jail = ol_zygote.Jail.__new__(ol_zygote.Jail)

        def assign(*args: object) -> int:
            calls.append(args[:-2])  # without the error buffer and its size
            return rc

        jail._assign = assign
        return jail

    def test_the_rehearsal_hands_over_no_descriptor_and_expects_a_refusal(self) -> None:
        calls: list = []
        self.jail_whose_assign_returns(-1, calls).rehearse_assign(b"filter")
        self.assertEqual(calls, [(-1, -1, -1, -1, -1, -1, b"filter", 6)])
        with self.assertRaisesRegex(RuntimeError, "without descriptors"):
            self.jail_whose_assign_returns(0, []).rehearse_assign(b"")

    def test_a_blank_warm_up_rehearses_with_the_jail_it_is_given(self) -> None:
        calls: list = []
        jail = self.jail_whose_assign_returns(-1, calls)
        with mock.patch.object(ol_zygote, "serve_stand_in"), mock.patch.dict(os.environ, {}, clear=False):
            saved = dict(os.environ)
            try:
                ol_zygote.warm_up(jail, b"f")
            finally:
                os.environ.update(saved)
        self.assertEqual(calls, [(-1, -1, -1, -1, -1, -1, b"f", 1)])
