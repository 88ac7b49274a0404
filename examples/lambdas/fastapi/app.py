"""A FastAPI (ASGI) app."""

from fastapi import FastAPI, Request

app = FastAPI()


@app.post("/")
async def root(request: Request):
    # The body is JSON whatever the Content-Type (curl -d sends a form type).
    return {"got": await request.json(), "framework": "fastapi"}


@app.get("/hello/{name}")
async def hello(name: str):
    return {"hello": name}
