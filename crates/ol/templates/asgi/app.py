"""The lambda: an ASGI 3 app (http; lifespan optional); ol passes status, headers and body through."""

import json


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    message = await receive()
    body = message.get("body", b"")
    answer = {"method": scope["method"], "path": scope["path"], "received": len(body)}
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(answer).encode()})
