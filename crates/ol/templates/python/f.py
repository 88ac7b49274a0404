"""The lambda: ol calls f(event, ctx) for each request to /run/NAME.

event is the JSON-decoded request body (None when empty, a str when the
body is not JSON); ctx has method, path, query, query_string, headers and
request_id. The return value is sent back as JSON.
"""


def f(event, ctx):
    name = (event or {}).get("name") if isinstance(event, dict) else None
    name = name or ctx.query.get("name", "world")
    print(f"greeting {name}")  # goes to `ol logs NAME`
    return {"greeting": f"Hello, {name}!", "method": ctx.method}
