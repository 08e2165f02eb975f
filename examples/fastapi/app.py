"""An example FastAPI app: one AsyncClient for the app's lifetime (lifespan), tasks
submitted from request handlers.

    pip install ./clients/python fastapi uvicorn
    FASTWORKER_CONTROL_PLANE_ADDRESS=tcp://127.0.0.1:5555 uvicorn app:app

The client finds the control plane by FASTWORKER_CONTROL_PLANE_ADDRESS (else by
discovery at FASTWORKER_DISCOVERY_ADDRESS, default tcp://127.0.0.1:5550) and takes the
cluster key from FASTWORKER_AUTH_KEY / FASTWORKER_AUTH_KEY_FILE when the cluster has one.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Dict, List

from fastapi import FastAPI, HTTPException, Request

from fastworker_client import AsyncClient, TaskFailed, TaskNotFound, Timeout, UnknownTask


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with AsyncClient() as client:
        app.state.fastworker = client
        yield


app = FastAPI(lifespan=lifespan)


def fw(request: Request) -> AsyncClient:
    return request.app.state.fastworker


@app.get("/add")
async def add(request: Request, x: int, y: int) -> Dict[str, Any]:
    """Runs the `add` task and returns its value."""
    return {"result": await fw(request).call("add", x, y, wait_timeout=10)}


@app.post("/tasks/{name}")
async def run_task(request: Request, name: str, args: List[Any]) -> Dict[str, Any]:
    """Runs any task with a JSON array of arguments; failures become HTTP errors."""
    try:
        handle = await fw(request).submit(name, *args)
        return {"task_id": handle.id, "result": await handle.result(timeout=10)}
    except UnknownTask as e:
        raise HTTPException(404, e.message) from None
    except TaskFailed as e:
        raise HTTPException(422, {"kind": e.kind, "message": e.message,
                                  "task_id": e.task_id}) from None
    except Timeout as e:
        raise HTTPException(504, str(e)) from None


@app.post("/submit/{name}")
async def submit(request: Request, name: str, args: List[Any]) -> Dict[str, str]:
    """Submits without waiting; poll GET /tasks/{id}."""
    handle = await fw(request).submit(name, *args)
    return {"task_id": handle.id}


@app.get("/tasks/{task_id}")
async def task_status(request: Request, task_id: str) -> Dict[str, Any]:
    record = await fw(request).status(task_id)
    if record is None:
        raise HTTPException(404, "no such task")
    return {"status": record.status, "result": record.result,
            "error": None if record.error is None else record.error.message}
