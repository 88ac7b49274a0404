"""HTTP/1.1 stand-in for ol_runtime.py, for crates/sandbox/benches/framing.rs only.

It serves one ``f(event)`` lambda over a connected unix socket, as the frame
runtime does, but speaks HTTP/1.1 keep-alive instead of length-prefixed
frames, so the benchmark can compare the two framings with everything else
equal. Started exactly like the real runtime:

    <python> -I -S http_runtime.py --fd N --code DIR --name NAME

``OL_BENCH_HTTP_SERVER`` picks the server:

- ``raw`` (default): a hand-written loop over a buffered reader: request
  line, headers up to the blank line, a Content-Length body; the fastest
  HTTP a Python runtime can offer with the stdlib (docs/benchmarks.md, "Floors");
- ``http.server``: a stock ``http.server.BaseHTTPRequestHandler`` with
  ``protocol_version = "HTTP/1.1"``, as a typical Python HTTP runtime uses.

Both load the lambda and run each call through ol_runtime.py's own code
(``load_lambda`` and the handler's ``call``: body -> event decoding, f,
JSON encoding), so the lambda-side work is the frame runtime's, byte for
byte, and only the framing differs. Only ``f(event)`` (and
``handler(conn, event)``) lambdas are supported: every answer is 200
application/json, or 500 when the lambda raised. Stdlib only; not for
production (no chunked bodies, no request size limits).
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable

# ol_runtime.py sits one directory up; -I leaves the script's directory off
# sys.path, so it is added by hand.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ol_runtime  # noqa: E402

CONTENT_TYPE_JSON = "application/json"
MAX_LINE = 65536
_NO_META = b"{}"  # f(event) handlers ignore the request meta

# One call: request body -> (HTTP status, response body).
Call = Callable[[bytes], tuple[int, bytes]]


def make_call(code_dir: str) -> Call:
    """Body bytes -> (status, response body bytes), through ol_runtime's handler."""
    handler = ol_runtime.load_lambda(code_dir)
    if handler.kind not in ("f", "handler"):
        raise SystemExit(f"http_runtime: only f(event) lambdas are supported, not {handler.kind}")
    lambda_call = handler.call
    error_meta = ol_runtime.error_meta

    def call(body: bytes) -> tuple[int, bytes]:
        try:
            return 200, lambda_call(_NO_META, body)[1]
        except BaseException as exc:  # noqa: BLE001 - user code must not end the runtime
            return 500, error_meta(exc)

    return call


# ------------------------------------------------------------ raw loop --

_REASONS = {200: b"OK", 400: b"Bad Request", 500: b"Internal Server Error", 501: b"Not Implemented"}


def serve_raw(sock: socket.socket, call: Call) -> None:
    """HTTP/1.1 keep-alive on ``sock`` until EOF, parsed by hand."""
    rfile = sock.makefile("rb", buffering=65536)
    readline = rfile.readline
    read = rfile.read
    sendall = sock.sendall
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    while True:
        try:
            line = readline(MAX_LINE)
            if not line:
                return  # the worker closed its end
            if line in (b"\r\n", b"\n"):
                continue  # RFC 9112 section 2.2: ignore a blank line before a request
            if len(line.split()) != 3:
                sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                return
            length = 0
            close = False
            while True:
                header = readline(MAX_LINE)
                if header in (b"\r\n", b"\n", b""):
                    break
                name, _, value = header.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection":
                    close = value.strip().lower() == b"close"
                elif name == b"transfer-encoding":
                    sendall(b"HTTP/1.1 501 Not Implemented\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    return
            body = read(length) if length else b""
            if len(body) != length:
                return  # truncated request: the worker is gone
            status, out = call(body)
            sendall(head % (status, _REASONS[status], len(out)) + out)
            if close:
                return
        except (ConnectionError, ValueError):
            return


# --------------------------------------------------------- http.server --


def serve_http_server(sock: socket.socket, call: Call) -> None:
    """HTTP/1.1 keep-alive on ``sock`` until EOF, through http.server."""
    from http.server import BaseHTTPRequestHandler

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            status, out = call(body)
            self.send_response(status)
            self.send_header("content-type", CONTENT_TYPE_JSON)
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature of the base class
            pass

    class Server:
        """The little of socketserver.BaseServer a handler looks at."""

        server_name = "localhost"
        server_port = 0

    # The handler serves the connection from its constructor until EOF.
    Handler(sock, ("ol-worker", 0), Server())


def main(argv: list[str]) -> int:
    args: dict[str, str] = {}
    rest = list(argv)
    while rest:
        option = rest.pop(0)
        if option not in ("--fd", "--code", "--name") or not rest:
            print(f"usage: http_runtime.py --fd N --code DIR --name NAME (bad {option!r})", file=sys.stderr)
            return 2
        args[option[2:]] = rest.pop(0)
    sock = socket.socket(fileno=int(args["fd"]))
    sock.set_inheritable(False)
    call = make_call(args["code"])
    server = os.environ.get("OL_BENCH_HTTP_SERVER", "raw")
    try:
        if server == "raw":
            serve_raw(sock, call)
        elif server == "http.server":
            serve_http_server(sock, call)
        else:
            print(f"http_runtime: unknown OL_BENCH_HTTP_SERVER={server!r}", file=sys.stderr)
            return 2
    except ConnectionError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
