"""The example app with two async mistakes, for the async doctor's tests.

Not what the example deploys: deploy it with `--data app_module=doctor_demo:app`.
"""

from __future__ import annotations

import asyncio
import gc
import time

from app import app


@app.get("/blocking")
async def blocking() -> dict:
    time.sleep(0.02)  # a synchronous call inside async def: the worker's other connections wait
    return {"slept": 0.02}


async def _wait_forever() -> None:
    await asyncio.get_running_loop().create_future()  # nothing will ever set it


@app.get("/fire-and-forget")
async def fire_and_forget() -> dict:
    gc.collect()  # collect the tasks that earlier requests dropped, now rather than later
    asyncio.ensure_future(_wait_forever())  # no reference kept: collected while pending
    return {"started": "a task nobody keeps"}
