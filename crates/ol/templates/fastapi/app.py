"""The lambda: a FastAPI app (ASGI). ol installs requirements.txt on the first call."""

from fastapi import FastAPI

app = FastAPI()


@app.get("/")
def greet(name: str = "world"):
    return {"greeting": f"Hello, {name}!"}


@app.post("/")
def greet_body(body: dict):
    return {"greeting": f"Hello, {body.get('name', 'world')}!"}
