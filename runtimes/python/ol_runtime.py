"""In-sandbox Python runtime of ol: loads one lambda and serves its calls.

The worker starts it as

    <python> -I -S ol_runtime.py --fd N --code DIR --name NAME [--packages P1:P2]

where fd N is one end of a connected unix SOCK_STREAM socket. The runtime
loads the lambda found in DIR, sends a ``ready`` frame (or a ``load_error``
frame and exits 1), then answers request frames one at a time until the
worker closes its end (exit 0). The frame format and messages are those of
docs/protocol.md.

A lambda is one of (docs/architecture.md section 1.4):
- ``f(event)``: event is the JSON-decoded body (else the UTF-8 text, else
  the raw bytes; None when empty); the result is JSON-encoded;
- ``handler(conn, event)``: the seed-002 form, called with conn=None;
- a WSGI (PEP 3333) or ASGI 3 (http + lifespan) ``app``.

Everything is importable: a zygote can ``import ol_runtime`` and, in a
forked child, call ``setup_stdio()``, ``load_lambda(code_dir)`` and
``serve(sock, handler)``. Importing it has no side effects: it only
defines things (and builds the frame meta JSON codec).
"""

from __future__ import annotations

import io
import os
import struct
import sys

# What the runtime needs on a call's path comes from modules loaded with
# the interpreter or from C modules: `json` (with `re`, `enum`,
# `functools`, `collections`), `socket`, `importlib.util` and `typing`
# cost ~15 ms to import on this project's VMs, and a zygote imports them
# only after its first fork (for the lambdas that use them), so that the
# first call after `ol worker up` waits for none of them. Errors and
# rarer paths import them when they need them.
import _frozen_importlib as _bootstrap  # ModuleSpec
import _frozen_importlib_external as _bootstrap_external  # SourceFileLoader, cache_from_source
import _socket

try:
    import _json
except ImportError:  # an interpreter without the C accelerator
    _json = None

TYPE_CHECKING = False  # typing costs milliseconds at start-up; only checkers need it
if TYPE_CHECKING:
    from collections.abc import Callable
    from socket import socket as Socket
    from types import ModuleType
    from typing import Any

FRAME_HEADER = struct.Struct(">II")
MAX_META_LEN = 1 << 20
MAX_BODY_LEN = 1 << 30
# The most bytes (meta and body) one response may hold: the lambda's
# limits.max_response_mb, set by the worker. The worker refuses (and kills
# the sandbox of) a bigger response; checking here first turns a result
# that is too big into an ordinary error and keeps the sandbox.
MAX_RESPONSE_ENV = "OL_MAX_RESPONSE_BYTES"
DEFAULT_ENTRY_FILES = ("f.py", "app.py", "lambda_func.py")
TRACEBACK_FRAMES = 5
# Responses up to this size are sent with one sendall of one buffer; bigger
# bodies are sent after the header rather than copied into it.
_COALESCE_LIMIT = 1 << 16

ASGI_VERSION = {"version": "3.0", "spec_version": "2.3"}

# One call: (request meta as raw JSON bytes, request body) -> (response meta
# as JSON bytes, response body). Meta stays raw so f(event) never parses it.
if TYPE_CHECKING:
    Call = Callable[[bytes, bytes], tuple[bytes, bytes]]

_JSON_RESPONSE_META = b'{"status":200,"headers":[["content-type","application/json"]]}'
_RUNTIME_FILES = frozenset({__file__, os.path.abspath(__file__)})
_ASYNCIO_DIR = os.path.join(os.path.dirname(os.__file__), "asyncio") + os.sep


class LoadError(Exception):
    """The lambda could not be loaded; ``summary`` is one line."""

    def __init__(self, summary: str, traceback: str = "") -> None:
        super().__init__(summary)
        self.summary = " ".join(summary.split())
        self.traceback = traceback


class ProtocolError(Exception):
    """The worker sent something that is not a valid frame."""


class Handler:
    """A loaded lambda: how to call it and how to shut it down."""

    __slots__ = ("kind", "call", "_shutdown", "max_response")

    def __init__(self, kind: str, call: Call, shutdown: Callable[[], None] | None = None) -> None:
        self.kind = kind  # "f", "handler", "wsgi" or "asgi"
        self.call = call
        self._shutdown = shutdown
        # Most bytes (meta and body) of one response; load_lambda sets it.
        self.max_response = MAX_META_LEN + MAX_BODY_LEN

    def close(self) -> None:
        """Release what loading acquired (ASGI: lifespan shutdown, event loop)."""
        shutdown, self._shutdown = self._shutdown, None
        if shutdown is not None:
            shutdown()


# --------------------------------------------------------------- frames --


def _unserializable(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


class _ScanContext:
    """What the C scanner reads of a ``json.JSONDecoder()`` (its defaults),
    without importing ``json``."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__


def json_scanner() -> Callable[[str, int], tuple[Any, int]]:
    """``scan(text, start) -> (value, end)``: the C JSON scanner, no whitespace skipping."""
    if _json is None:
        import json.scanner

        return json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]  # typeshed is wrong
    c_scan = _json.make_scanner(_ScanContext())

    def scan(text: str, start: int) -> tuple[Any, int]:
        try:
            return c_scan(text, start)
        except SystemError:
            # The C scanner reports a syntax error with json.decoder's
            # JSONDecodeError, which it takes from sys.modules: without
            # it, a bare SystemError. The first such error imports it.
            import json.decoder  # noqa: F401

            return c_scan(text, start)

    return scan


def _compact_encoder() -> Callable[[object, int], Any]:
    if _json is None:
        import json

        encode = json.JSONEncoder(separators=(",", ":"), default=_unserializable).encode
        return lambda value, _level: (encode(value),)
    encoder: Callable[[object, int], Any] = _json.make_encoder(
        None, _unserializable, _json.encode_basestring_ascii, None, ":", ",", False, False, True
    )
    return encoder


def json_dumps() -> Callable[[object], str]:
    """``json.dumps`` with its defaults (``", "`` and ``": "``, ASCII only,
    circular references refused), without importing ``json``."""
    if _json is None:
        import json

        return json.dumps
    make_encoder = _json.make_encoder
    encode_str = _json.encode_basestring_ascii

    def dumps(value: object) -> str:
        chunks = make_encoder({}, _unserializable, encode_str, None, ": ", ", ", False, False, True)(value, 0)
        return "".join(chunks)

    return dumps


# json.loads/dumps set up a decoder/encoder in Python on every call (~3 us
# each); meta needs neither whitespace handling nor cycle checks, so one C
# scanner and one C encoder, built once, serve every frame.
_scan_json = json_scanner()
_encode_compact = _compact_encoder()


def parse_meta(raw: bytes) -> Any:
    """A frame's JSON meta (compact, as the worker writes it) as Python values."""
    try:
        return _scan_json(raw.decode(), 0)[0]
    except StopIteration:  # not compact JSON: let json.loads parse it or say why
        import json

        return json.loads(raw)


def encode_meta(meta: object) -> bytes:
    """A frame's meta as compact JSON bytes."""
    return "".join(_encode_compact(meta, 0)).encode()


def send_frame(sock: Socket, meta: dict[str, Any], body: bytes = b"") -> None:
    """Send one frame (used for the ready / load_error frames)."""
    raw = encode_meta(meta)
    sock.sendall(FRAME_HEADER.pack(len(raw), len(body)) + raw + body)


def serve(sock: Socket, handler: Handler) -> None:
    """Answer request frames on ``sock`` with ``handler`` until EOF.

    Returns on a clean EOF (or when the worker hangs up); raises
    ProtocolError on a malformed or truncated frame. Exceptions raised by
    the lambda, BaseExceptions included, become 500 frames.
    """
    # A buffered reader straight on the descriptor: sockets' makefile
    # needs the `socket` module.
    read = io.open(sock.fileno(), "rb", buffering=65536, closefd=False).read
    sendall = sock.sendall
    unpack = FRAME_HEADER.unpack
    pack = FRAME_HEADER.pack
    call = handler.call
    max_response = handler.max_response
    coalesce_limit = _COALESCE_LIMIT
    header_len = FRAME_HEADER.size
    while True:
        try:
            header = read(header_len)
            if len(header) != header_len:
                if header:
                    raise ProtocolError("truncated frame header")
                return
            meta_len, body_len = unpack(header)
            if meta_len > MAX_META_LEN or body_len > MAX_BODY_LEN:
                raise ProtocolError(f"frame too large (meta {meta_len} B, body {body_len} B)")
            meta = read(meta_len)
            body = read(body_len) if body_len else b""
        except ConnectionError:
            return
        if len(meta) != meta_len or len(body) != body_len:
            raise ProtocolError("truncated frame")
        try:
            out_meta, out_body = call(meta, body)
        except BaseException as exc:  # noqa: BLE001 - user code must not end the runtime
            out_meta, out_body = error_meta(exc), b""
        size = len(out_meta) + len(out_body)
        if size > max_response:
            out_meta, out_body = too_large_meta(size, max_response), b""
        try:
            if len(out_body) <= coalesce_limit:
                sendall(pack(len(out_meta), len(out_body)) + out_meta + out_body)
            else:
                sendall(pack(len(out_meta), len(out_body)) + out_meta)
                sendall(out_body)
        except ConnectionError:
            return


def error_meta(exc: BaseException) -> bytes:
    """The 500 response meta describing ``exc``."""
    meta = {"status": 500, "error": exception_summary(exc), "traceback": short_traceback(exc)}
    return encode_meta(meta)


def too_large_meta(size: int, limit: int) -> bytes:
    """The 500 response meta for a result of ``size`` bytes over ``limit``."""
    error = (
        f"ResponseTooLarge: the response of {size} bytes is over this lambda's limit of "
        f"{limit} bytes ({limit / (1 << 20):g} MiB, limits.max_response_mb)"
    )
    return encode_meta({"status": 500, "error": error, "traceback": ""})


def max_response_from_env() -> int:
    """The response limit the worker set in the environment (else the
    protocol's own maximum)."""
    most = MAX_META_LEN + MAX_BODY_LEN
    try:
        limit = int(os.environ.get(MAX_RESPONSE_ENV, most))
    except ValueError:
        return most
    return limit if 0 < limit < most else most


def exception_summary(exc: BaseException) -> str:
    """``"ExcType: message"`` (just ``"ExcType"`` when the message is empty)."""
    name, message = _describe(exc)
    return f"{name}: {message}" if message else name


def _describe(exc: BaseException) -> tuple[str, str]:
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the error
        message = "<unprintable>"
    return type(exc).__name__, _valid_utf8(message)


def short_traceback(exc: BaseException, limit: int = TRACEBACK_FRAMES) -> str:
    """The last ``limit`` frames of ``exc``, without runtime or asyncio frames."""
    import traceback  # only errors pay for it

    try:
        frames = [
            frame
            for frame in traceback.extract_tb(exc.__traceback__)
            if frame.filename not in _RUNTIME_FILES
            and not frame.filename.startswith(("<frozen ", _ASYNCIO_DIR))
        ][-limit:]
        cwd = os.getcwd() + os.sep
        lines = []
        for frame in frames:
            filename = frame.filename
            if filename.startswith(cwd):
                filename = filename[len(cwd) :]
            lines.append(f'  File "{filename}", line {frame.lineno}, in {frame.name}')
            if frame.line:
                lines.append(f"    {frame.line.strip()}")
        if isinstance(exc, SyntaxError):  # where in the source, with its caret
            source_lines = traceback.format_exception_only(type(exc), exc)[:-1]
            lines.extend(line.replace(f'"{cwd}', '"', 1) for line in source_lines)
        return _valid_utf8("\n".join(line.rstrip("\n") for line in lines))
    except Exception:  # noqa: BLE001 - never fail while reporting a failure
        return ""


def _valid_utf8(text: str) -> str:
    # Lone surrogates would become JSON escapes that strict parsers reject.
    return text.encode("utf-8", "replace").decode("utf-8")


# -------------------------------------------------------------- loading --


def setup_stdio() -> None:
    """Line-buffer stdout/stderr so prints reach the worker's log files."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True)


def add_package_paths(paths: list[str]) -> None:
    """Put the lambda's installed packages on sys.path, in order, ahead of
    everything but its code (a zygote may have put some there already)."""
    for path in reversed(paths):
        if path not in sys.path:
            sys.path.insert(0, path)


def load_lambda(code_dir: str, packages: list[str] | None = None) -> Handler:
    """Import the lambda in ``code_dir`` and return its Handler.

    Puts ``code_dir`` first on sys.path, then the ``packages`` dirs, and
    makes ``code_dir`` the working directory. Raises LoadError with a
    one-line summary when nothing callable is found.
    """
    # Read before user code runs: importing it may change the environment.
    max_response = max_response_from_env()
    code_dir = os.path.abspath(code_dir)
    try:
        os.chdir(code_dir)
    except OSError as exc:
        raise LoadError(f"cannot enter code directory {code_dir}: {exc.strerror}") from None
    add_package_paths(packages or [])
    sys.path.insert(0, code_dir)
    entry_file = _find_entry_file(code_dir)
    module = _import_entry_file(code_dir, entry_file)
    try:
        handler = _pick_entry(module, entry_file)
        handler.max_response = max_response
        return handler
    except LoadError:
        raise
    except BaseException as exc:  # noqa: BLE001 - e.g. a module __getattr__ or an ASGI loop failing
        raise LoadError(f"cannot load {entry_file}: {exception_summary(exc)}", short_traceback(exc)) from None


def _find_entry_file(code_dir: str) -> str:
    named = os.environ.get("OL_ENTRY_FILE")
    if named:
        if not os.path.isfile(os.path.join(code_dir, named)):
            raise LoadError(f"entry file {named} (OL_ENTRY_FILE) not found in {code_dir}")
        return named
    for candidate in DEFAULT_ENTRY_FILES:
        if os.path.isfile(os.path.join(code_dir, candidate)):
            return candidate
    raise LoadError(f"no entry file ({', '.join(DEFAULT_ENTRY_FILES)}) found in {code_dir}")


def _import_entry_file(code_dir: str, entry_file: str) -> ModuleType:
    path = os.path.join(code_dir, entry_file)
    name = os.path.splitext(os.path.basename(entry_file))[0]
    # The module importlib.util.spec_from_file_location, module_from_spec and
    # SourceFileLoader.exec_module would make (test_ol_runtime holds the two
    # equal), without running their Python code: a forked sandbox copies
    # every page of code it runs that its zygote did not (~100 KiB of an
    # idle sandbox's memory). Unlike exec_module, the entry file is always
    # compiled from its source, never from a __pycache__ next to it.
    loader = _bootstrap_external.SourceFileLoader(name, path)
    spec = _bootstrap.ModuleSpec(name, loader, origin=path)
    spec.has_location = True
    spec.cached = _bootstrap_external.cache_from_source(path)
    module = type(sys)(name)
    module.__loader__ = loader
    module.__package__ = spec.parent
    module.__spec__ = spec
    module.__file__ = path
    module.__cached__ = spec.cached
    sys.modules[name] = module  # as a real import would; pickle and dataclasses need it
    try:
        with io.open_code(path) as source:
            code = compile(source.read(), path, "exec", dont_inherit=True)
        exec(code, module.__dict__)
    except BaseException as exc:  # noqa: BLE001 - SystemExit at import is a load error too
        sys.modules.pop(name, None)
        exc_name, message = _describe(exc)
        where = f"{exc_name} in {entry_file}"
        raise LoadError(f"{where}: {message}" if message else where, short_traceback(exc)) from None
    return module


def _pick_entry(module: ModuleType, entry_file: str) -> Handler:
    for variable, make in (("OL_ASGI_ENTRY", asgi_handler), ("OL_WSGI_ENTRY", wsgi_handler)):
        attribute = os.environ.get(variable)
        if attribute:
            return make(_named_attribute(module, attribute, variable, entry_file))
    f = getattr(module, "f", None)
    if callable(f):
        return event_handler(f, with_conn=False)
    handler = getattr(module, "handler", None)
    if callable(handler):
        return event_handler(handler, with_conn=True)
    app = getattr(module, "app", None)
    if callable(app):
        return asgi_handler(app) if _is_asgi(app) else wsgi_handler(app)
    raise LoadError(f"no f(event), handler(conn, event) or app found in {entry_file}")


def _named_attribute(module: ModuleType, attribute: str, variable: str, entry_file: str) -> Any:
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise LoadError(f"{variable}={attribute}: no attribute {attribute!r} in {entry_file}") from None
    if not callable(target):
        raise LoadError(f"{variable}={attribute}: {attribute!r} in {entry_file} is not callable")
    return target


def _is_asgi(app: Any) -> bool:
    import inspect

    return (
        inspect.iscoroutinefunction(app)
        or inspect.iscoroutinefunction(getattr(type(app), "__call__", None))
        or inspect.iscoroutinefunction(getattr(app, "__call__", None))
    )


# ------------------------------------------------------ f(event) lambdas --


def event_decoder() -> Callable[[bytes], Any]:
    """The ``body -> event`` function of f(event) lambdas.

    None for an empty body; else ``json.loads(body)`` if it parses; else the
    body as UTF-8 text; else the raw bytes. Same result as trying
    ``json.loads(body)``, but plain UTF-8 bodies go straight to the C
    scanner: json.loads spends most of its time in Python-level encoding
    detection and whitespace regexes, and a non-JSON body would pay for a
    JSONDecodeError with line/column bookkeeping.
    """
    scan = json_scanner()
    # Bodies json.loads would read as UTF-16/32 or with a BOM: NUL in the
    # first two bytes, or a first byte that can start a BOM.
    not_plain_utf8_start = frozenset({0x00, 0xEF, 0xFE, 0xFF})

    def decode(body: bytes) -> Any:
        if not body:
            return None
        if body[0] in not_plain_utf8_start or body[1:2] == b"\x00":
            import json  # only such bodies need it

            try:
                return json.loads(body)
            except (ValueError, RecursionError):
                pass
        else:
            try:
                text = body.decode()
            except UnicodeDecodeError:
                return body
            json_text = text.strip(" \t\n\r")
            try:
                event, end = scan(json_text, 0)
            except (StopIteration, ValueError, RecursionError):
                return text
            return event if end == len(json_text) else text
        try:
            return body.decode()
        except UnicodeDecodeError:
            return body

    return decode


class Context:
    """What ``f(event, ctx)`` learns of its call besides the body.

    ``method`` (upper case), ``path`` (what follows ``/run/NAME``, ``/`` when
    nothing does), ``query`` (the query string's parameters, the first value
    of each), ``query_string`` (raw, without ``?``), ``headers`` (names lower
    case; a repeated header's values joined by ``", "``) and ``request_id``
    (the worker's ``X-Request-Id`` for the call, tagged on its log lines).
    ``trigger`` is the queue message a queue-triggered call delivers (a dict:
    ``kind``, ``name``, ``stream``, ``subject``, ``partition``, ``sequence``,
    ``key``, ``headers`` as ``[name, value]`` pairs, ``delivered``,
    ``attempt``, and for Kafka ``topic`` and ``offset``; docs/triggers.md),
    ``None`` for HTTP and cron calls.
    """

    __slots__ = ("method", "path", "query", "query_string", "headers", "request_id", "trigger")

    def __init__(
        self,
        method: str,
        path: str,
        query_string: str,
        headers: dict[str, str],
        request_id: str,
        trigger: dict[str, Any] | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        self.query = _first_values(query_string)
        self.headers = headers
        self.request_id = request_id
        self.trigger = trigger

    def __repr__(self) -> str:
        return f"Context(method={self.method!r}, path={self.path!r}, request_id={self.request_id!r})"


def _first_values(query_string: str) -> dict[str, str]:
    if not query_string:
        return {}
    from urllib.parse import parse_qsl

    query: dict[str, str] = {}
    for name, value in parse_qsl(query_string, keep_blank_values=True):
        query.setdefault(name, value)
    return query


def context_of(raw_meta: bytes) -> Context:
    """The :class:`Context` of a request frame's meta."""
    meta = parse_meta(raw_meta)
    headers: dict[str, str] = {}
    for name, value in meta.get("headers") or ():
        previous = headers.get(name)
        headers[name] = value if previous is None else f"{previous}, {value}"
    return Context(
        meta.get("method") or "GET",
        meta.get("path") or "/",
        meta.get("query") or "",
        headers,
        meta.get("request_id") or "",
        trigger if isinstance(trigger := meta.get("trigger"), dict) else None,
    )


def takes_context(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` can be called with two positional arguments
    (``f(event, ctx)``); decided once, when the lambda loads."""
    code = getattr(fn, "__code__", None)
    if code is not None and type(fn).__name__ == "function":
        # Plain functions (nearly every f): no need to import inspect.
        return code.co_argcount >= 2 or bool(code.co_flags & 0x04)  # CO_VARARGS
    import inspect

    try:
        inspect.signature(fn).bind(None, None)
    except (TypeError, ValueError):
        return False
    return True


def not_json_error(fn_name: str, result: object, exc: Exception) -> TypeError:
    """The error for a return value JSON cannot encode, naming what it is
    (``f returned a set, which JSON cannot encode``)."""
    found: list[str] = []

    def record(value: object) -> object:
        found.append(type(value).__name__)
        raise TypeError

    import json  # only errors need it

    try:
        json.dumps(result, default=record)
    except (TypeError, ValueError, RecursionError):
        pass
    outer = _a(type(result).__name__)
    if isinstance(exc, ValueError):  # e.g. a circular reference
        return TypeError(f"{fn_name} returned {outer} JSON cannot encode: {exc}")
    if not found or not isinstance(result, (dict, list, tuple)):
        return TypeError(f"{fn_name} returned {outer}, which JSON cannot encode")
    return TypeError(f"{fn_name} returned {outer} holding {_a(found[0])}, which JSON cannot encode")


def _a(noun: str) -> str:
    return f"an {noun}" if noun[:1].lower() in "aeiou" else f"a {noun}"


def event_handler(fn: Callable[..., Any], with_conn: bool) -> Handler:
    """``f(event)`` or ``f(event, ctx)``, or seed-002 ``handler(conn, event)``
    called with conn=None."""
    decode = event_decoder()
    dumps = json_dumps()
    response_meta = _JSON_RESPONSE_META
    name = "handler" if with_conn else "f"

    def encode(result: object) -> bytes:
        try:
            return dumps(result).encode()
        except (TypeError, ValueError) as exc:
            raise not_json_error(name, result, exc) from None

    if with_conn:

        def call(_meta: bytes, body: bytes) -> tuple[bytes, bytes]:
            return response_meta, encode(fn(None, decode(body)))

    elif takes_context(fn):

        def call(meta: bytes, body: bytes) -> tuple[bytes, bytes]:
            return response_meta, encode(fn(decode(body), context_of(meta)))

    else:

        def call(_meta: bytes, body: bytes) -> tuple[bytes, bytes]:
            return response_meta, encode(fn(decode(body)))

    return Handler(name, call)


# ------------------------------------------------------------------ WSGI --


def _latin1_str(value: str) -> str:
    # PEP 3333 wants bytes-as-latin-1 strings; the worker's strings are
    # UTF-8 text, so non-ASCII ones are re-read byte by byte.
    return value if value.isascii() else value.encode("utf-8", "surrogateescape").decode("latin-1")


def wsgi_handler(app: Callable[..., Any]) -> Handler:
    """A PEP 3333 application; the whole response is buffered."""
    from io import BytesIO
    from urllib.parse import unquote_to_bytes

    parse = parse_meta
    encode = encode_meta
    base_environ: dict[str, Any] = {
        "SCRIPT_NAME": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,  # wsgi.input ends at the body's end
    }

    def call(raw_meta: bytes, body: bytes) -> tuple[bytes, bytes]:
        meta = parse(raw_meta)
        path = meta.get("path") or "/"
        environ = base_environ.copy()
        environ["REQUEST_METHOD"] = meta.get("method") or "GET"
        environ["PATH_INFO"] = (
            unquote_to_bytes(path).decode("latin-1") if "%" in path or not path.isascii() else path
        )
        environ["QUERY_STRING"] = _latin1_str(meta.get("query") or "")
        environ["CONTENT_TYPE"] = ""
        environ["CONTENT_LENGTH"] = str(len(body)) if body else ""
        environ["wsgi.input"] = BytesIO(body)
        environ["wsgi.errors"] = sys.stderr
        for name, raw_value in meta.get("headers") or ():
            value = _latin1_str(raw_value)
            if name == "content-type":
                environ["CONTENT_TYPE"] = value
            elif name == "content-length":
                environ["CONTENT_LENGTH"] = str(len(body))  # the body is all there is
            else:
                key = "HTTP_" + name.upper().replace("-", "_")
                previous = environ.get(key)
                if previous is None:
                    environ[key] = value
                else:
                    environ[key] = previous + ("; " if key == "HTTP_COOKIE" else ",") + value

        status: str | None = None
        headers: list[tuple[str, str]] = []
        headers_sent = False
        chunks: list[bytes] = []

        def write(data: bytes) -> None:
            nonlocal headers_sent
            if status is None:
                raise AssertionError("write() called before start_response()")
            if data:
                headers_sent = True
                chunks.append(data)

        def start_response(
            new_status: str, new_headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], None]:
            nonlocal status, headers
            if exc_info is not None:
                try:
                    if headers_sent:
                        raise exc_info[1].with_traceback(exc_info[2])
                finally:
                    exc_info = None
            elif status is not None:
                raise AssertionError("start_response() called twice without exc_info")
            status, headers = new_status, new_headers
            return write

        result = app(environ, start_response)
        try:
            for chunk in result:
                if chunk:
                    if status is None:
                        raise AssertionError("WSGI app yielded body before start_response()")
                    headers_sent = True
                    chunks.append(chunk)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if status is None:
            raise RuntimeError("WSGI app returned without calling start_response()")
        if type(status) is not str:
            raise TypeError(f"WSGI status must be str, got {status!r}")
        out_headers = []
        for header in headers:
            name, value = header
            if type(name) is not str or type(value) is not str:
                raise TypeError(f"WSGI header name and value must be str, got {header!r}")
            out_headers.append(header)
        code = int(status.split(None, 1)[0])
        return encode({"status": code, "headers": out_headers}), b"".join(chunks)

    return Handler("wsgi", call)


# ------------------------------------------------------------------ ASGI --


def _header_str(value: bytes) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value.decode("latin-1")


def asgi_handler(app: Callable[..., Any]) -> Handler:
    """An ASGI 3 application, run on one event loop that lives as long as the runtime.

    The lifespan protocol is tried first (as uvicorn's "auto" mode: an app
    that raises on the lifespan scope simply does not use it). The whole
    response is buffered.
    """
    import asyncio
    from urllib.parse import unquote

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    state, shutdown = _lifespan_startup(loop, app)
    run = loop.run_until_complete
    parse = parse_meta
    encode = encode_meta
    server = ("localhost", 80)

    def call(raw_meta: bytes, body: bytes) -> tuple[bytes, bytes]:
        meta = parse(raw_meta)
        path = meta.get("path") or "/"
        scope = {
            "type": "http",
            "asgi": ASGI_VERSION.copy(),
            "http_version": "1.1",
            "method": meta.get("method") or "GET",
            "scheme": "http",
            "path": unquote(path),
            "raw_path": path.encode(),
            "query_string": (meta.get("query") or "").encode(),
            "root_path": "",
            "headers": [(name.encode(), value.encode()) for name, value in meta.get("headers") or ()],
            "client": None,
            "server": server,
            "state": state.copy(),
        }
        status: int | None = None
        headers: Any = ()
        chunks: list[bytes] = []
        body_given = False
        complete = False
        disconnect: asyncio.Future[None] | None = None

        async def receive() -> dict[str, Any]:
            nonlocal body_given, disconnect
            if not body_given:
                body_given = True
                return {"type": "http.request", "body": body, "more_body": False}
            if not complete:
                # As a real server: the client "leaves" once the response is done.
                if disconnect is None:
                    disconnect = loop.create_future()
                await disconnect
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, headers, complete
            kind = message["type"]
            if kind == "http.response.start":
                if status is not None:
                    raise RuntimeError("ASGI app sent 'http.response.start' twice")
                status = int(message["status"])
                headers = message.get("headers") or ()
            elif kind == "http.response.body":
                if status is None:
                    raise RuntimeError("ASGI app sent 'http.response.body' before 'http.response.start'")
                if complete:
                    raise RuntimeError("ASGI app sent 'http.response.body' after the response was complete")
                data = message.get("body", b"")
                if data:
                    chunks.append(data)
                if not message.get("more_body", False):
                    complete = True
                    if disconnect is not None and not disconnect.done():
                        disconnect.set_result(None)
            else:
                raise RuntimeError(f"unexpected ASGI message type {kind!r}")

        try:
            run(app(scope, receive, send))
        except BaseException as exc:  # noqa: BLE001 - after a complete response, only log
            if not complete:
                raise
            _log_exception("ASGI app raised after its response was complete", exc)
        finally:
            if disconnect is not None and not disconnect.done():
                disconnect.set_result(None)
        if status is None:
            raise RuntimeError("ASGI app returned without sending 'http.response.start'")
        if not complete:
            raise RuntimeError("ASGI app returned without completing the response")
        out_headers = [[_header_str(name), _header_str(value)] for name, value in headers]
        return encode({"status": status, "headers": out_headers}), b"".join(chunks)

    return Handler("asgi", call, shutdown)


def _lifespan_startup(loop: Any, app: Callable[..., Any]) -> tuple[dict[str, Any], Callable[[], None]]:
    """Run the ASGI lifespan startup; return the lifespan state and a shutdown function."""
    import asyncio

    state: dict[str, Any] = {}
    startup_sent = False
    started = loop.create_future()  # result: None, or the failure message
    stop = loop.create_future()
    stopped = loop.create_future()

    async def receive() -> dict[str, Any]:
        nonlocal startup_sent
        if not startup_sent:
            startup_sent = True
            return {"type": "lifespan.startup"}
        await stop
        return {"type": "lifespan.shutdown"}

    async def send(message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind in ("lifespan.startup.complete", "lifespan.startup.failed"):
            if not started.done():
                started.set_result(message.get("message", "") if kind.endswith("failed") else None)
        elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            if not stopped.done():
                stopped.set_result(None)

    def close_loop() -> None:
        try:
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            loop.run_until_complete(loop.shutdown_asyncgens())
        except BaseException as exc:  # noqa: BLE001 - best effort at exit
            _log_exception("closing the event loop failed", exc)
        finally:
            loop.close()

    scope = {"type": "lifespan", "asgi": ASGI_VERSION.copy(), "state": state}
    task = loop.create_task(app(scope, receive, send))
    try:
        loop.run_until_complete(asyncio.wait([task, started], return_when=asyncio.FIRST_COMPLETED))
    except BaseException:  # noqa: BLE001 - SystemExit etc. from the task: lifespan unsupported
        pass
    if started.done() and started.result() is not None:
        reason = started.result()
        raise LoadError("ASGI lifespan startup failed" + (f": {reason}" if reason else ""))
    if not started.done():
        # uvicorn's "auto": an app that rejects the lifespan scope does not use it.
        if task.done() and not task.cancelled() and task.exception() is not None:
            print(
                f"ol_runtime: ASGI lifespan unsupported ({exception_summary(task.exception())})",
                file=sys.stderr,
            )
        task.cancel()
        return {}, close_loop

    def shutdown() -> None:
        try:
            if not task.done():
                stop.set_result(None)
                loop.run_until_complete(
                    asyncio.wait([task, stopped], timeout=5, return_when=asyncio.FIRST_COMPLETED)
                )
        except BaseException as exc:  # noqa: BLE001 - best effort at exit
            _log_exception("ASGI lifespan shutdown failed", exc)
        finally:
            close_loop()

    return state, shutdown


def _log_exception(what: str, exc: BaseException) -> None:
    print(f"ol_runtime: {what}: {exception_summary(exc)}\n{short_traceback(exc)}", file=sys.stderr)


# ------------------------------------------------------------------ main --


def _parse_args(argv: list[str]) -> dict[str, str]:
    args: dict[str, str] = {}
    rest = list(argv)
    while rest:
        option = rest.pop(0)
        name, equals, value = option.partition("=")
        if name not in ("--fd", "--code", "--name", "--packages"):
            raise ValueError(f"unknown argument {option!r}")
        if not equals:
            if not rest:
                raise ValueError(f"{name} needs a value")
            value = rest.pop(0)
        args[name[2:]] = value
    for required in ("fd", "code"):
        if required not in args:
            raise ValueError(f"--{required} is required")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``--fd N --code DIR --name NAME [--packages P1:P2]``;
    returns the exit status."""
    try:
        args = _parse_args(sys.argv[1:] if argv is None else argv)
        sock = _socket.socket(fileno=int(args["fd"]))
    except (ValueError, OSError) as exc:
        print(f"usage: ol_runtime.py --fd N --code DIR --name NAME ({exc})", file=sys.stderr)
        return 2
    os.set_inheritable(sock.fileno(), False)  # a subprocess holding it would hide the worker's EOF
    setup_stdio()
    try:
        packages = [p for p in args.get("packages", "").split(os.pathsep) if p]
        handler = load_lambda(args["code"], packages)
    except LoadError as exc:
        try:
            send_frame(sock, {"type": "load_error", "error": exc.summary, "traceback": exc.traceback})
        except OSError:
            pass
        return 1
    try:
        send_frame(sock, {"type": "ready", "pid": os.getpid()})
        serve(sock, handler)
    except ProtocolError as exc:
        print(f"ol_runtime[{args.get('name', '?')}]: protocol error: {exc}", file=sys.stderr)
        return 1
    except ConnectionError:
        pass
    finally:
        handler.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
