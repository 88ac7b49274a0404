"""The lambda: a WSGI (PEP 3333) app; ol passes status, headers and body through."""

import json


def app(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    answer = {"method": environ["REQUEST_METHOD"], "path": environ["PATH_INFO"], "received": len(body)}
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(answer).encode()]
