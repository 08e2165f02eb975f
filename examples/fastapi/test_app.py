"""The FastAPI example with FastAPI's TestClient, against a real control plane and
subworker (the fixtures of clients/python/tests: run from the repository root with
`pytest examples/fastapi`)."""

from __future__ import annotations

import os
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "clients", "python", "tests"))

from conftest import cluster  # noqa: E402,F401  (the fixture)
from fastapi.testclient import TestClient  # noqa: E402


@pytest.fixture
def http(cluster, monkeypatch):  # noqa: F811
    monkeypatch.setenv("FASTWORKER_CONTROL_PLANE_ADDRESS", cluster.address)
    monkeypatch.delenv("FASTWORKER_AUTH_KEY_FILE", raising=False)
    if cluster.key:
        monkeypatch.setenv("FASTWORKER_AUTH_KEY", cluster.key)
    else:
        monkeypatch.delenv("FASTWORKER_AUTH_KEY", raising=False)
    import app as app_module
    with TestClient(app_module.app) as client:  # runs the lifespan: one AsyncClient
        yield client, app_module.app


def test_add(http):
    client, app = http
    r = client.get("/add", params={"x": 5, "y": 3})
    assert r.status_code == 200 and r.json() == {"result": 8}
    first = app.state.fastworker
    assert client.get("/add", params={"x": 40, "y": 2}).json() == {"result": 42}
    assert app.state.fastworker is first  # one client for the app's lifetime


def test_task_errors(http):
    client, _ = http
    r = client.post("/tasks/echo", json=[{"a": [1, None]}])
    assert r.status_code == 200 and r.json()["result"] == {"a": [1, None]}
    r = client.post("/tasks/fail", json=["boom"])
    assert r.status_code == 422
    assert r.json()["detail"]["kind"] == "failed" and r.json()["detail"]["message"] == "boom"
    r = client.post("/tasks/no_such_task", json=[])
    assert r.status_code == 404 and "no_such_task" in r.json()["detail"]


def test_submit_then_status(http):
    client, _ = http
    task_id = client.post("/submit/sleep_ms", json=[100]).json()["task_id"]
    deadline = time.monotonic() + 10
    while True:
        body = client.get("/tasks/%s" % task_id).json()
        if body["status"] == "success":
            break
        assert time.monotonic() < deadline, body
        time.sleep(0.02)
    assert body["result"] == 100
    assert client.get("/tasks/00000000-0000-0000-0000-000000000000").status_code == 404
