"""The example app asgi-fleet deploys by default: a FastAPI service.

/healthz reports the release this worker runs (asgi-fleet writes the release
id to REVISION in the release directory, which is the worker's cwd), so a
health check can tell old code from new.
"""

import hashlib
import os
import socket
from pathlib import Path

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from pydantic import BaseModel

RELEASE = Path("REVISION").read_text().strip() if Path("REVISION").exists() else "unknown"

app = FastAPI(title="asgi-fleet example")


@app.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok", "release": RELEASE, "pid": os.getpid()}


@app.get("/")
async def index() -> dict:
    return {"hello": "world", "release": RELEASE}


@app.get("/secret-fingerprint")
async def secret_fingerprint() -> dict:
    """Shows the app can read its API_TOKEN secret, without showing it."""
    token = os.environ.get("API_TOKEN")
    return {"api_token_sha256": hashlib.sha256(token.encode()).hexdigest() if token else None}


@app.websocket("/ws/echo")
async def echo(websocket: WebSocket) -> None:
    """Echoes each text message, prefixed with the release and host that answered it."""
    await websocket.accept()
    host = socket.gethostname()
    try:
        while True:
            await websocket.send_text(f"{RELEASE} {host} {await websocket.receive_text()}")
    except WebSocketDisconnect:
        pass


class Item(BaseModel):
    name: str
    quantity: int = 1


@app.post("/items")
async def create_item(item: Item) -> dict:
    return {"received": item.model_dump(), "release": RELEASE}
