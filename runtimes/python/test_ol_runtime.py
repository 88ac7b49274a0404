"""Tests of ol_runtime.py: each test runs the runtime as a real subprocess on
one end of a socketpair and speaks the frame protocol of docs/protocol.md.

Run from anywhere with
    python3 -m unittest discover -s runtimes/python -p 'test_*.py'
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import unittest
from types import ModuleType
from typing import Any

RUNTIME = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ol_runtime.py")
FRAME_HEADER = struct.Struct(">II")
TIMEOUT = 30.0
JSON_HEADERS = [["content-type", "application/json"]]


def import_runtime() -> ModuleType:
    """ol_runtime imported in this process, by path (for in-process unit tests)."""
    spec = importlib.util.spec_from_file_location("ol_runtime_under_test", RUNTIME)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class RuntimeProcess:
    """One runtime subprocess, its lambda directory and the worker's end of its socket."""

    def __init__(
        self, test: unittest.TestCase, files: dict[str, str | bytes], env: dict[str, str] | None = None
    ):
        scratch = tempfile.TemporaryDirectory()
        test.addCleanup(scratch.cleanup)
        self.code_dir = os.path.join(scratch.name, "code")
        os.mkdir(self.code_dir)
        for name, content in files.items():
            path = os.path.join(self.code_dir, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            data = textwrap.dedent(content).encode() if isinstance(content, str) else content
            with open(path, "wb") as file:
                file.write(data)
        self.log_path = os.path.join(scratch.name, "runtime.log")
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("OL_")}
        child_env.update(env or {})
        self.sock, runtime_end = socket.socketpair()
        self.sock.settimeout(TIMEOUT)
        with runtime_end, open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    "-S",
                    RUNTIME,
                    "--fd",
                    str(runtime_end.fileno()),
                    "--code",
                    self.code_dir,
                    "--name",
                    "test",
                ],
                pass_fds=(runtime_end.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env,
            )
        self.rfile = self.sock.makefile("rb")
        test.addCleanup(self.stop)

    def stop(self) -> None:
        """Close the worker's end and make sure the process is gone."""
        self.rfile.close()
        self.sock.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as file:
            return file.read()

    def send_frame(self, meta: dict[str, Any], body: bytes = b"") -> None:
        raw = json.dumps(meta).encode()
        self.sock.sendall(FRAME_HEADER.pack(len(raw), len(body)) + raw + body)

    def _read_exact(self, size: int) -> bytes:
        data = self.rfile.read(size)
        if len(data) != size:
            raise AssertionError(f"runtime closed the socket (exit {self.proc.poll()}); log:\n{self.log()}")
        return data

    def recv_frame(self) -> tuple[dict[str, Any], bytes]:
        meta_len, body_len = FRAME_HEADER.unpack(self._read_exact(8))
        return json.loads(self._read_exact(meta_len)), self._read_exact(body_len)

    def call(
        self,
        body: bytes = b"",
        method: str = "POST",
        path: str = "/",
        query: str = "",
        headers: list[list[str]] | None = None,
        request_id: str = "0123456789abcdef",
        trigger: Any = None,
    ) -> tuple[dict[str, Any], bytes]:
        meta = {"method": method, "path": path, "query": query, "headers": headers or [], "request_id": request_id}
        if trigger is not None:
            meta["trigger"] = trigger
        self.send_frame(meta, body)
        return self.recv_frame()

    def close_and_wait(self) -> int:
        """Send EOF and return the exit status."""
        self.rfile.close()
        self.sock.close()
        return self.proc.wait(TIMEOUT)


class RuntimeTestCase(unittest.TestCase):
    def start(self, files: dict[str, str | bytes], env: dict[str, str] | None = None) -> RuntimeProcess:
        """A runtime that has sent its ready frame."""
        runtime = RuntimeProcess(self, files, env)
        self.assertEqual(runtime.recv_frame(), ({"type": "ready", "pid": runtime.proc.pid}, b""))
        return runtime

    def assert_load_error(
        self,
        files: dict[str, str | bytes],
        error: str,
        env: dict[str, str] | None = None,
        traceback_has: str = "",
    ) -> None:
        runtime = RuntimeProcess(self, files, env)
        meta, body = runtime.recv_frame()
        self.assertEqual(sorted(meta), ["error", "traceback", "type"])
        self.assertEqual(meta["type"], "load_error")
        if error.startswith("^"):
            self.assertRegex(meta["error"], error)
        else:
            self.assertEqual(meta["error"], error.format(code_dir=runtime.code_dir))
        self.assertIn(traceback_has, meta["traceback"])
        self.assertEqual(body, b"")
        self.assertEqual(runtime.proc.wait(TIMEOUT), 1)

    def assert_json_response(self, response: tuple[dict[str, Any], bytes], value: Any) -> None:
        self.assertEqual(response, ({"status": 200, "headers": JSON_HEADERS}, json.dumps(value).encode()))

    def assert_error_response(
        self, response: tuple[dict[str, Any], bytes], error: str, traceback: str | None = None
    ) -> None:
        meta, body = response
        self.assertEqual((meta["status"], meta["error"], body), (500, error, b""))
        self.assertEqual(sorted(meta), ["error", "status", "traceback"])
        if traceback is not None:
            self.assertEqual(meta["traceback"], traceback)


ECHO_EVENT = """
    def f(event):
        return {"event": event, "type": type(event).__name__}
"""


class EventLambdaTests(RuntimeTestCase):
    def test_json_body_is_decoded_and_result_encoded(self) -> None:
        runtime = self.start({"f.py": ECHO_EVENT})
        event = {"a": [1, 2.5, None, True], "b": "é"}
        self.assert_json_response(runtime.call(json.dumps(event).encode()), {"event": event, "type": "dict"})

    def test_string_result_is_json_encoded(self) -> None:
        runtime = self.start({"f.py": "def f(event):\n    return 'hello'\n"})
        self.assertEqual(runtime.call(b'{"x": 1}'), ({"status": 200, "headers": JSON_HEADERS}, b'"hello"'))

    def test_non_json_body_is_passed_as_str(self) -> None:
        runtime = self.start({"f.py": ECHO_EVENT})
        self.assert_json_response(runtime.call(b"hello world"), {"event": "hello world", "type": "str"})
        self.assert_json_response(runtime.call(b"[1, 2"), {"event": "[1, 2", "type": "str"})

    def test_empty_body_is_none(self) -> None:
        runtime = self.start({"f.py": ECHO_EVENT})
        self.assert_json_response(runtime.call(b""), {"event": None, "type": "NoneType"})

    def test_non_utf8_body_is_passed_as_bytes(self) -> None:
        runtime = self.start({"f.py": "def f(event):\n    return [type(event).__name__, event.hex()]\n"})
        self.assert_json_response(runtime.call(b"\xff\x00\x80"), ["bytes", "ff0080"])
        self.assert_json_response(runtime.call(b"a\x80"), ["bytes", "6180"])

    def test_f_with_two_parameters_gets_the_request_context(self) -> None:
        source = """
            def f(event, ctx):
                return {
                    "event": event,
                    "method": ctx.method,
                    "path": ctx.path,
                    "query": ctx.query,
                    "query_string": ctx.query_string,
                    "headers": ctx.headers,
                    "request_id": ctx.request_id,
                }
        """
        runtime = self.start({"f.py": source})
        response = runtime.call(
            b"",
            method="GET",
            path="/a/b",
            query="y=1&y=2&z=%C3%A9&empty=",
            headers=[["accept", "text/plain"], ["x-many", "1"], ["x-many", "2"]],
            request_id="abc-1",
        )
        self.assert_json_response(
            response,
            {
                "event": None,
                "method": "GET",
                "path": "/a/b",
                "query": {"y": "1", "z": "é", "empty": ""},
                "query_string": "y=1&y=2&z=%C3%A9&empty=",
                "headers": {"accept": "text/plain", "x-many": "1, 2"},
                "request_id": "abc-1",
            },
        )

    def test_a_queue_message_is_ctx_trigger_and_http_calls_have_none(self) -> None:
        runtime = self.start({"f.py": "def f(event, ctx):\n    return [event, ctx.trigger]\n"})
        message = {
            "kind": "nats",
            "name": "nats[0]",
            "stream": "S",
            "subject": "s.a",
            "partition": None,
            "sequence": 9,
            "key": None,
            "headers": [["id", "1"]],
            "delivered": 1,
            "attempt": 2,
        }
        self.assert_json_response(runtime.call(b'"m"', trigger=message), ["m", message])
        self.assert_json_response(runtime.call(b'"h"'), ["h", None])
        # A meta whose trigger is not an object (only a broken worker would
        # send one) reads as no trigger rather than failing the call.
        self.assert_json_response(runtime.call(b'"x"', trigger="nats"), ["x", None])

    def test_context_is_given_only_to_callables_taking_two_arguments(self) -> None:
        cases = {
            "def f(event):\n    return event\n": "one",
            "def f(event, ctx=None):\n    return ctx.request_id\n": "rid",
            "def f(*args):\n    return len(args)\n": 2,
            "import functools\ndef g(prefix, event):\n    return prefix + event\nf = functools.partial(g, 'p-')\n": "p-one",
            "class F:\n    def __call__(self, event, ctx):\n        return ctx.method\nf = F()\n": "POST",
        }
        for source, expected in cases.items():
            with self.subTest(source=source):
                runtime = self.start({"f.py": source})
                self.assert_json_response(runtime.call(b'"one"', request_id="rid"), expected)

    def test_seed_002_handler_gets_conn_none(self) -> None:
        source = """
            def handler(conn, event):
                return {"conn": conn, "event": event}
        """
        runtime = self.start({"lambda_func.py": source})
        self.assert_json_response(runtime.call(b'{"n": 1}'), {"conn": None, "event": {"n": 1}})

    def test_code_dir_is_cwd_and_first_on_sys_path(self) -> None:
        source = """
            import os, sys, helper
            def f(event):
                with open("data.txt") as file:
                    return [helper.NAME, file.read(), os.getcwd() == sys.path[0]]
        """
        runtime = self.start({"f.py": source, "helper.py": "NAME = 'helper'\n", "data.txt": "data"})
        self.assert_json_response(runtime.call(), ["helper", "data", True])

    def test_prints_reach_the_log_line_by_line(self) -> None:
        source = """
            import sys
            def f(event):
                print("out:", event)
                print("err:", event, file=sys.stderr)
                return 1
        """
        runtime = self.start({"f.py": source})
        self.assert_json_response(runtime.call(b'"x"'), 1)
        self.assertEqual(runtime.log(), "out: x\nerr: x\n")

    def test_entry_file_env_picks_another_file(self) -> None:
        runtime = self.start(
            {
                "f.py": "def f(event):\n    return 'f.py'\n",
                "other.py": "def f(event):\n    return 'other.py'\n",
            },
            env={"OL_ENTRY_FILE": "other.py"},
        )
        self.assert_json_response(runtime.call(), "other.py")

    def test_default_entry_file_order(self) -> None:
        runtime = self.start(
            {
                "app.py": "def f(event):\n    return 'app.py'\n",
                "lambda_func.py": "def handler(conn, event):\n    return 'lambda_func.py'\n",
            }
        )
        self.assert_json_response(runtime.call(), "app.py")

    def test_event_decoding_matches_json_loads(self) -> None:
        decode = import_runtime().event_decoder()

        def reference(body: bytes) -> Any:
            if not body:
                return None
            try:
                return json.loads(body)
            except (ValueError, RecursionError):
                try:
                    return body.decode()
                except UnicodeDecodeError:
                    return body

        bodies = [
            b"",
            b" ",
            b"0",
            b"-1.5e3",
            b"NaN",
            b"Infinity",
            b"null",
            b"true",
            b'"s"',
            b'[1, {"a": []}]',
            b' \t\n{"a": 1} \r\n',
            b"1 2",
            b"[1,",
            b'"unterminated',
            b"{'a': 1}",
            b"hello",
            b"\x00",
            b"\x00{}",
            b"{}\x00",
            '{"é": "€"}'.encode(),
            '{"é": 1}'.encode("utf-16"),
            b"[1]".decode().encode("utf-16-le"),
            '["x"]'.encode("utf-32"),
            b"\xef\xbb\xbf[1]",
            b"\xef\xbb\xbf",
            b"\xff\xfe",
            b"\xed\xa0\x80",
            b'"\\ud800"',
            b"[" * 100_000,
            b"[" * 50 + b"]" * 50,
            bytes(range(256)),
            "\u00a0[1]".encode(),
        ]
        for body in bodies:
            with self.subTest(body=body[:20]):
                self.assertEqual(repr(decode(body)), repr(reference(body)))


class ErrorTests(RuntimeTestCase):
    RAISING = """
        import sys
        def f(event):
            if event == "zero":
                return 1 / 0
            if event == "object":
                return object()
            if event == "exit":
                sys.exit(3)
            if event == "bare-exit":
                raise SystemExit
            if event == "interrupt":
                raise KeyboardInterrupt
            return "ok"
    """

    def test_user_exception_is_a_500_and_serving_continues(self) -> None:
        runtime = self.start({"f.py": self.RAISING})
        self.assert_error_response(
            runtime.call(b'"zero"'),
            "ZeroDivisionError: division by zero",
            '  File "f.py", line 5, in f\n    return 1 / 0',
        )
        self.assert_json_response(runtime.call(b'"again"'), "ok")

    def test_unserializable_result_is_a_500(self) -> None:
        runtime = self.start({"f.py": self.RAISING})
        self.assert_error_response(runtime.call(b'"object"'), "TypeError: f returned an object, which JSON cannot encode", "")
        self.assert_json_response(runtime.call(), "ok")

    def test_a_result_json_cannot_encode_is_named(self) -> None:
        source = """
            import datetime
            def f(event):
                if event == "set":
                    return {1, 2}
                if event == "bytes":
                    return b"x"
                if event == "nested":
                    return {"when": datetime.date(2026, 1, 2)}
                loop = []
                loop.append(loop)
                return loop
        """
        runtime = self.start({"f.py": source})
        self.assert_error_response(runtime.call(b'"set"'), "TypeError: f returned a set, which JSON cannot encode")
        self.assert_error_response(runtime.call(b'"bytes"'), "TypeError: f returned a bytes, which JSON cannot encode")
        self.assert_error_response(
            runtime.call(b'"nested"'), "TypeError: f returned a dict holding a date, which JSON cannot encode"
        )
        meta, _ = runtime.call(b'"loop"')
        self.assertEqual(meta["error"], "TypeError: f returned a list JSON cannot encode: Circular reference detected")

    def test_base_exceptions_are_500s_and_do_not_stop_the_runtime(self) -> None:
        runtime = self.start({"f.py": self.RAISING})
        for event, error in (
            ("exit", "SystemExit: 3"),
            ("bare-exit", "SystemExit"),
            ("interrupt", "KeyboardInterrupt"),
        ):
            with self.subTest(event=event):
                self.assert_error_response(runtime.call(json.dumps(event).encode()), error)
                self.assert_json_response(runtime.call(), "ok")
        self.assertIsNone(runtime.proc.poll())

    def test_result_over_the_response_limit_is_a_500_and_serving_continues(self) -> None:
        source = """
            def f(event):
                return "x" * event
        """
        meta_len = len(b'{"status":200,"headers":[["content-type","application/json"]]}')
        limit = 1000
        runtime = self.start({"f.py": source}, env={"OL_MAX_RESPONSE_BYTES": str(limit)})
        # Exactly at the limit (meta, quotes and body) passes.
        at_limit = limit - meta_len - 2
        self.assert_json_response(runtime.call(str(at_limit).encode()), "x" * at_limit)
        meta, body = runtime.call(str(at_limit + 1).encode())
        self.assertEqual((meta["status"], body), (500, b""))
        self.assertEqual(
            meta["error"],
            f"ResponseTooLarge: the response of {limit + 1} bytes is over this lambda's limit of "
            f"{limit} bytes ({limit / (1 << 20):g} MiB, limits.max_response_mb)",
        )
        self.assert_json_response(runtime.call(b"3"), "xxx")

    def test_response_limit_is_read_before_user_code_runs(self) -> None:
        source = """
            import os
            os.environ["OL_MAX_RESPONSE_BYTES"] = str(1 << 30)
            def f(event):
                return "x" * 200
        """
        runtime = self.start({"f.py": source}, env={"OL_MAX_RESPONSE_BYTES": "100"})
        meta, _ = runtime.call()
        self.assertEqual(meta["status"], 500)
        self.assertIn("ResponseTooLarge", meta["error"])

    def test_bad_response_limit_falls_back_to_the_protocol_maximum(self) -> None:
        runtime_module = import_runtime()
        most = runtime_module.MAX_META_LEN + runtime_module.MAX_BODY_LEN
        for raw in ("", "lots", "-1", "0", str(most * 2)):
            with self.subTest(raw=raw):
                os.environ["OL_MAX_RESPONSE_BYTES"] = raw
                try:
                    self.assertEqual(runtime_module.max_response_from_env(), most)
                finally:
                    del os.environ["OL_MAX_RESPONSE_BYTES"]

    def test_traceback_keeps_the_last_five_user_frames(self) -> None:
        source = """
            def down(n):
                if n == 0:
                    raise ValueError("bottom")
                return down(n - 1)
            def f(event):
                return down(10)
        """
        runtime = self.start({"f.py": source})
        meta, _ = runtime.call()
        self.assertEqual(meta["error"], "ValueError: bottom")
        frame = '  File "f.py", line 5, in down\n    return down(n - 1)\n'
        self.assertEqual(
            meta["traceback"], frame * 4 + '  File "f.py", line 4, in down\n    raise ValueError("bottom")'
        )


class LoadErrorTests(RuntimeTestCase):
    def test_no_entry_file(self) -> None:
        self.assert_load_error(
            {"README": "x"}, "no entry file (f.py, app.py, lambda_func.py) found in {code_dir}"
        )

    def test_missing_named_entry_file(self) -> None:
        self.assert_load_error(
            {"f.py": ECHO_EVENT},
            "entry file main.py (OL_ENTRY_FILE) not found in {code_dir}",
            env={"OL_ENTRY_FILE": "main.py"},
        )

    def test_import_error(self) -> None:
        self.assert_load_error(
            {"f.py": "import no_such_module_xyz\n"},
            "ModuleNotFoundError in f.py: No module named 'no_such_module_xyz'",
            traceback_has='File "f.py", line 1, in <module>',
        )

    def test_exception_at_import(self) -> None:
        self.assert_load_error(
            {"f.py": "x = 1\nraise RuntimeError('bad\\nconfig')\n"},
            "RuntimeError in f.py: bad config",
            traceback_has="raise RuntimeError('bad\\nconfig')",
        )

    def test_system_exit_at_import(self) -> None:
        self.assert_load_error({"f.py": "import sys\nsys.exit(0)\n"}, "SystemExit in f.py: 0")

    def test_syntax_error(self) -> None:
        self.assert_load_error(
            {"f.py": "def f(:\n    pass\n"},
            r"^SyntaxError in f\.py: .+ \(f\.py, line 1\)$",
            traceback_has="def f(:",
        )

    def test_nothing_to_call(self) -> None:
        self.assert_load_error(
            {"f.py": "x = 1\nf = 'not callable'\n"}, "no f(event), handler(conn, event) or app found in f.py"
        )

    def test_missing_named_attribute(self) -> None:
        for variable in ("OL_WSGI_ENTRY", "OL_ASGI_ENTRY"):
            with self.subTest(variable=variable):
                self.assert_load_error(
                    {"app.py": "app = None\n"},
                    f"{variable}=application: no attribute 'application' in app.py",
                    env={variable: "application"},
                )


class LifecycleTests(RuntimeTestCase):
    def test_eof_exits_zero(self) -> None:
        runtime = self.start({"f.py": ECHO_EVENT})
        self.assertEqual(runtime.close_and_wait(), 0)

    def test_eof_after_calls_exits_zero(self) -> None:
        runtime = self.start({"f.py": ECHO_EVENT})
        for n in range(3):
            self.assert_json_response(runtime.call(str(n).encode()), {"event": n, "type": "int"})
        self.assertEqual(runtime.close_and_wait(), 0)

    def test_truncated_frame_exits_one(self) -> None:
        runtime = self.start({"f.py": ECHO_EVENT})
        runtime.sock.sendall(FRAME_HEADER.pack(10, 0) + b"{}")
        self.assertEqual(runtime.close_and_wait(), 1)
        self.assertIn("truncated frame", runtime.log())

    def test_oversized_meta_exits_one(self) -> None:
        runtime = self.start({"f.py": ECHO_EVENT})
        runtime.sock.sendall(FRAME_HEADER.pack((1 << 20) + 1, 0))
        self.assertEqual(runtime.proc.wait(TIMEOUT), 1)
        self.assertIn("frame too large", runtime.log())

    def test_import_has_no_side_effects(self) -> None:
        cwd, path = os.getcwd(), list(sys.path)
        module = import_runtime()
        self.assertEqual((os.getcwd(), sys.path), (cwd, path))
        for name in ("load_lambda", "serve", "setup_stdio", "main"):
            self.assertTrue(callable(getattr(module, name)), name)


class EntryImportTests(unittest.TestCase):
    runtime = import_runtime()

    def test_the_entry_module_is_the_one_importlib_makes(self) -> None:
        source = '"""Doc."""\nimport sys\nNAME = __name__\ndef f(event):\n    return sys.modules[__name__] is not None\n'
        for entry in ("f.py", "sub/app.py", "a.b.py"):
            with self.subTest(entry=entry), tempfile.TemporaryDirectory() as code_dir:
                path = os.path.join(code_dir, entry)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as file:
                    file.write(source)
                name = os.path.splitext(os.path.basename(entry))[0]
                try:
                    ours = self.runtime._import_entry_file(code_dir, entry)
                    self.assertIs(sys.modules[name], ours)
                finally:
                    sys.modules.pop(name, None)
                spec = importlib.util.spec_from_file_location(name, path)
                assert spec is not None and spec.loader is not None
                theirs = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(theirs)
                self.assertEqual(self.described(ours), self.described(theirs))
                self.assertIs(ours.__spec__.loader, ours.__loader__)
                self.assertEqual(ours.f.__code__.co_filename, path)

    @staticmethod
    def described(module: ModuleType) -> dict[str, Any]:
        spec, loader = module.__spec__, module.__loader__
        described: dict[str, Any] = {
            key: value for key, value in vars(module).items() if key not in ("__spec__", "__loader__", "f", "sys")
        }
        described["keys"] = list(vars(module))
        described["spec"] = {
            key: getattr(spec, key)
            for key in ("name", "origin", "cached", "has_location", "parent", "submodule_search_locations", "loader_state")
        }
        described["loader"] = (type(loader), loader.name, loader.path)
        described["__builtins__"] = module.__builtins__ is vars(module)["__builtins__"]
        return described


class MetaCodecTests(unittest.TestCase):
    runtime = import_runtime()

    def test_encode_meta_is_compact_json(self) -> None:
        meta = {
            "status": 200,
            "headers": [("a", "é\u2028"), ["b", '"\\']],
            "error": "\ud83d\ude00",
            "n": None,
        }
        self.assertEqual(self.runtime.encode_meta(meta), json.dumps(meta, separators=(",", ":")).encode())

    def test_encode_meta_rejects_non_json(self) -> None:
        with self.assertRaisesRegex(TypeError, "^Object of type bytes is not JSON serializable$"):
            self.runtime.encode_meta({"headers": [[b"a", "b"]]})

    def test_parse_meta(self) -> None:
        meta = {"method": "GET", "path": "/é", "query": "", "headers": [["a", "b"], ["a", "c"]]}
        for raw in (json.dumps(meta, separators=(",", ":")).encode(), b" \n" + json.dumps(meta).encode()):
            with self.subTest(raw=raw):
                self.assertEqual(self.runtime.parse_meta(raw), meta)
        with self.assertRaises(ValueError):
            self.runtime.parse_meta(b"not json")


WSGI_ECHO = """
    import json
    def app(environ, start_response):
        body = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"] or 0))
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("X-Len", str(len(body)))])
        return [body]
"""


class WsgiTests(RuntimeTestCase):
    def test_status_headers_and_body(self) -> None:
        source = """
            def app(environ, start_response):
                start_response("418 I'M A TEAPOT", [("A", "B")])
                return [b"hi\\n"]
        """
        runtime = self.start({"app.py": source})
        self.assertEqual(runtime.call(method="GET"), ({"status": 418, "headers": [["A", "B"]]}, b"hi\n"))

    def test_post_body_echo(self) -> None:
        runtime = self.start({"app.py": WSGI_ECHO})
        self.assertEqual(
            runtime.call(b"posted body", headers=[["content-type", "text/plain"]]),
            (
                {"status": 200, "headers": [["Content-Type", "application/octet-stream"], ["X-Len", "11"]]},
                b"posted body",
            ),
        )

    def test_binary_body_round_trip(self) -> None:
        runtime = self.start({"app.py": WSGI_ECHO})
        body = bytes(range(256)) * 4
        self.assertEqual(runtime.call(body)[1], body)

    def test_large_body_round_trip(self) -> None:
        runtime = self.start({"app.py": WSGI_ECHO})
        body = bytes(range(256)) * (8 * 1024 * 1024 // 256)
        meta, echoed = runtime.call(body)
        self.assertEqual(meta["headers"][1], ["X-Len", str(8 * 1024 * 1024)])
        self.assertTrue(echoed == body, "8 MiB body differs")

    def test_environ(self) -> None:
        source = """
            import json, sys
            def app(environ, start_response):
                seen = {k: v for k, v in environ.items() if isinstance(v, (str, bool, tuple))}
                seen["input"] = environ["wsgi.input"].read().decode()
                seen["errors_is_stderr"] = environ["wsgi.errors"] is sys.stderr
                start_response("200 OK", [])
                return [json.dumps(seen, sort_keys=True).encode()]
        """
        runtime = self.start({"app.py": source})
        headers = [
            ["content-type", "text/plain"],
            ["content-length", "3"],
            ["host", "example.com"],
            ["x-tag", "1"],
            ["x-tag", "2"],
            ["cookie", "a=1"],
            ["cookie", "b=2"],
            ["x-utf8", "é"],
        ]
        _, body = runtime.call(
            b"abc", method="PUT", path="/a%20b/%C3%A9", query="x=1&y=%C3%A9", headers=headers
        )
        self.assertEqual(
            json.loads(body),
            {
                "REQUEST_METHOD": "PUT",
                "SCRIPT_NAME": "",
                "PATH_INFO": "/a b/\u00c3\u00a9",
                "QUERY_STRING": "x=1&y=%C3%A9",
                "CONTENT_TYPE": "text/plain",
                "CONTENT_LENGTH": "3",
                "SERVER_NAME": "localhost",
                "SERVER_PORT": "80",
                "SERVER_PROTOCOL": "HTTP/1.1",
                "HTTP_HOST": "example.com",
                "HTTP_X_TAG": "1,2",
                "HTTP_COOKIE": "a=1; b=2",
                "HTTP_X_UTF8": "\u00c3\u00a9",
                "wsgi.version": [1, 0],
                "wsgi.url_scheme": "http",
                "wsgi.multithread": False,
                "wsgi.multiprocess": True,
                "wsgi.run_once": False,
                "wsgi.input_terminated": True,
                "input": "abc",
                "errors_is_stderr": True,
            },
        )

    def test_query_and_path_echo_without_body(self) -> None:
        source = """
            def app(environ, start_response):
                start_response("200 OK", [("Content-Type", "text/plain")])
                line = "{PATH_INFO}?{QUERY_STRING} [{CONTENT_LENGTH}]".format(**environ)
                return [line.encode()]
        """
        runtime = self.start({"app.py": source})
        self.assertEqual(runtime.call(method="GET", path="/x/y", query="a=1&b=2")[1], b"/x/y?a=1&b=2 []")
        self.assertEqual(runtime.call(method="GET", path="", query="")[1], b"/? []")

    def test_write_callable_generator_and_close(self) -> None:
        source = """
            closed = []
            class Body:
                def __iter__(self):
                    yield b"b"
                    yield b""
                    yield b"c"
                def close(self):
                    closed.append(True)
            def app(environ, start_response):
                write = start_response("200 OK", [("X-Closed", str(len(closed)))])
                write(b"a")
                return Body()
        """
        runtime = self.start({"app.py": source})
        self.assertEqual(runtime.call(), ({"status": 200, "headers": [["X-Closed", "0"]]}, b"abc"))
        self.assertEqual(runtime.call(), ({"status": 200, "headers": [["X-Closed", "1"]]}, b"abc"))

    def test_start_response_with_exc_info_replaces_headers(self) -> None:
        source = """
            import sys
            def app(environ, start_response):
                start_response("200 OK", [("X", "first")])
                try:
                    raise ValueError("late")
                except ValueError:
                    start_response("503 Service Unavailable", [("X", "second")], sys.exc_info())
                return [b"sorry"]
        """
        runtime = self.start({"app.py": source})
        self.assertEqual(runtime.call(), ({"status": 503, "headers": [["X", "second"]]}, b"sorry"))

    def test_app_errors_are_500s(self) -> None:
        source = """
            def app(environ, start_response):
                if environ["PATH_INFO"] == "/raise":
                    raise LookupError("nope")
                if environ["PATH_INFO"] == "/no-start":
                    return [b"x"]
                start_response("200 OK", [("X", 1)])
                return []
        """
        runtime = self.start({"app.py": source})
        self.assert_error_response(runtime.call(path="/raise"), "LookupError: nope")
        self.assert_error_response(
            runtime.call(path="/no-start"), "AssertionError: WSGI app yielded body before start_response()"
        )
        self.assert_error_response(
            runtime.call(path="/"), "TypeError: WSGI header name and value must be str, got ('X', 1)"
        )

    def test_wsgi_entry_env_picks_file_and_attribute(self) -> None:
        source = """
            def application(environ, start_response):
                start_response("200 OK", [])
                return [b"server.application"]
        """
        runtime = self.start(
            {"app.py": "app = None\n", "server.py": source},
            env={"OL_ENTRY_FILE": "server.py", "OL_WSGI_ENTRY": "application"},
        )
        self.assertEqual(runtime.call(), ({"status": 200, "headers": []}, b"server.application"))


ASGI_APP = """
    import asyncio, json

    class App:
        def __init__(self):
            self.events = []

        async def __call__(self, scope, receive, send):
            if scope["type"] == "lifespan":
                while True:
                    message = await receive()
                    self.events.append(message["type"])
                    if message["type"] == "lifespan.startup":
                        scope["state"]["greeting"] = "hi"
                        await send({"type": "lifespan.startup.complete"})
                    else:
                        with open("shutdown.txt", "w") as file:
                            file.write(",".join(self.events))
                        await send({"type": "lifespan.shutdown.complete"})
                        return
            body = b""
            while True:
                message = await receive()
                body += message["body"]
                if not message["more_body"]:
                    break
            waiting = asyncio.ensure_future(receive())
            await asyncio.sleep(0)
            early = waiting.done()
            seen = {k: v.decode() if isinstance(v, bytes) else v for k, v in scope.items() if k != "headers"}
            seen["headers"] = [[name.decode(), value.decode()] for name, value in scope["headers"]]
            seen["body"] = body.decode()
            seen["events"] = self.events
            seen["disconnect_before_response"] = early
            seen["loop"] = id(asyncio.get_running_loop())
            await send({"type": "http.response.start", "status": 201,
                        "headers": [(b"content-type", b"application/json"), (b"x-a", b"1")]})
            await send({"type": "http.response.body", "body": json.dumps(seen).encode(), "more_body": True})
            await send({"type": "http.response.body", "body": b"\\n", "more_body": False})
            assert (await waiting) == {"type": "http.disconnect"}
            assert (await receive()) == {"type": "http.disconnect"}

    app = App()
"""


class AsgiTests(RuntimeTestCase):
    def test_scope_body_lifespan_and_response(self) -> None:
        runtime = self.start({"app.py": ASGI_APP})
        meta, body = runtime.call(
            b"posted",
            method="PUT",
            path="/a%20b/c",
            query="x=1",
            headers=[["content-type", "text/plain"], ["x-tag", "1"], ["x-tag", "2"]],
        )
        self.assertEqual(
            meta, {"status": 201, "headers": [["content-type", "application/json"], ["x-a", "1"]]}
        )
        self.assertTrue(body.endswith(b"\n"))
        seen = json.loads(body)
        loop = seen.pop("loop")
        self.assertEqual(
            seen,
            {
                "type": "http",
                "asgi": {"version": "3.0", "spec_version": "2.3"},
                "http_version": "1.1",
                "method": "PUT",
                "scheme": "http",
                "path": "/a b/c",
                "raw_path": "/a%20b/c",
                "query_string": "x=1",
                "root_path": "",
                "headers": [["content-type", "text/plain"], ["x-tag", "1"], ["x-tag", "2"]],
                "client": None,
                "server": ["localhost", 80],
                "state": {"greeting": "hi"},
                "body": "posted",
                "events": ["lifespan.startup"],
                "disconnect_before_response": False,
            },
        )
        self.assertEqual(json.loads(runtime.call()[1])["loop"], loop, "one event loop for every call")

    def test_lifespan_shutdown_on_eof(self) -> None:
        runtime = self.start({"app.py": ASGI_APP})
        self.assertEqual(runtime.close_and_wait(), 0)
        with open(os.path.join(runtime.code_dir, "shutdown.txt")) as file:
            self.assertEqual(file.read(), "lifespan.startup,lifespan.shutdown")

    def test_app_rejecting_lifespan_still_serves(self) -> None:
        source = """
            async def app(scope, receive, send):
                assert scope["type"] == "http", "no lifespan here"
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": scope["path"].encode()})
        """
        runtime = self.start({"app.py": source})
        self.assertEqual(runtime.call(path="/p"), ({"status": 200, "headers": []}, b"/p"))
        self.assertIn("ASGI lifespan unsupported (AssertionError: no lifespan here)", runtime.log())

    def test_lifespan_startup_failure_is_a_load_error(self) -> None:
        source = """
            async def app(scope, receive, send):
                await receive()
                await send({"type": "lifespan.startup.failed", "message": "db down"})
        """
        self.assert_load_error({"app.py": source}, "ASGI lifespan startup failed: db down")

    def test_asgi_entry_env_picks_file_and_attribute(self) -> None:
        source = """
            async def api(scope, receive, send):
                if scope["type"] != "http":
                    return
                await send({"type": "http.response.start", "status": 202, "headers": [[b"X", b"y"]]})
                await send({"type": "http.response.body", "body": b"main.api"})
        """
        runtime = self.start(
            {"main.py": source},
            env={"OL_ENTRY_FILE": "main.py", "OL_ASGI_ENTRY": "api"},
        )
        self.assertEqual(runtime.call(), ({"status": 202, "headers": [["X", "y"]]}, b"main.api"))

    def test_app_errors_are_500s_and_serving_continues(self) -> None:
        source = """
            import sys
            async def app(scope, receive, send):
                if scope["type"] != "http":
                    return
                path = scope["path"]
                if path == "/raise":
                    return 1 / 0
                if path == "/exit":
                    sys.exit(2)
                if path == "/silent":
                    return
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"ok"})
                if path == "/late":
                    raise ValueError("after the response")
        """
        runtime = self.start({"app.py": source})
        self.assert_error_response(
            runtime.call(path="/raise"),
            "ZeroDivisionError: division by zero",
            '  File "app.py", line 8, in app\n    return 1 / 0',
        )
        self.assert_error_response(runtime.call(path="/exit"), "SystemExit: 2")
        self.assert_error_response(
            runtime.call(path="/silent"),
            "RuntimeError: ASGI app returned without sending 'http.response.start'",
        )
        self.assertEqual(runtime.call(path="/late"), ({"status": 200, "headers": []}, b"ok"))
        self.assertEqual(runtime.call(path="/"), ({"status": 200, "headers": []}, b"ok"))
        self.assertIn("ValueError: after the response", runtime.log())


if __name__ == "__main__":
    unittest.main()
