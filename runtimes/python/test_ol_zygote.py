"""Tests of ol_zygote.py's warm-ups, in this process (no jail: they load
and serve the stand-in lambda, which needs none).

Run from anywhere with
    python3 -m unittest discover -s runtimes/python -p 'test_*.py'
"""

from __future__ import annotations

import contextlib
import io
import os
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


if __name__ == "__main__":
    unittest.main()
