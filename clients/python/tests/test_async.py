"""The AsyncClient against a real control plane and subworker (asyncio.run per test:
no plugin needed)."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

import pytest

import fastworker_client as fw

from conftest import KEYED


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def aclient(cluster, **kw):
    kw.setdefault("auth_key", cluster.key if cluster.key else False)
    return fw.AsyncClient(cluster.address, **kw)


async def wait_status(c, task_id, statuses, timeout=10.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        rec = await c.status(task_id)
        if rec is not None and rec.status in statuses:
            return rec
        assert loop.time() < deadline, rec
        await asyncio.sleep(0.02)


def test_async_call_submit_status(cluster):
    async def main():
        async with aclient(cluster) as c:
            assert c.protocol_version == 2
            assert await c.call("add", 5, 3) == 8
            h = await c.submit("sleep_ms", 200)
            rec = await wait_status(c, h.id, ("running",))
            assert rec.worker_id == "sw1"
            assert await h.result(timeout=10) == 200
            assert (await h.status()).status == "success"
            assert await c.result(h.id) == 200
            assert await c.status(str(uuid.uuid4())) is None
            with pytest.raises(fw.TaskNotFound):
                await c.result(str(uuid.uuid4()), wait=False)
            names = {t.name for t in await c.tasks()}
            assert {"add", "sleep_ms"} <= names
            assert any(e.kind == "worker.registered" for e in await c.events())
            assert isinstance(await c.dead_letters(), list)
    run(main())


def test_async_concurrent_calls(cluster):
    async def main():
        async with aclient(cluster) as c:
            got = await asyncio.gather(*(c.call("add", i, i) for i in range(50)))
            assert got == [2 * i for i in range(50)]
    run(main())


def test_async_errors(cluster):
    async def main():
        async with aclient(cluster) as c:
            with pytest.raises(fw.TaskFailed) as e:
                await c.call("fail", "boom", wait_timeout=10)
            assert (e.value.kind, e.value.message) == ("failed", "boom")
            with pytest.raises(fw.UnknownTask):
                await c.submit("no_such_task")
            with pytest.raises(fw.Timeout):
                await (await c.submit("sleep_ms", 2000)).result(timeout=0.2)
    run(main())


def test_async_cancel_scheduled_and_priority(cluster):
    async def main():
        async with aclient(cluster) as c:
            h = await c.submit("add", 1, 1, countdown=30, priority="low")
            assert (await h.status()).status == "scheduled"
            assert (await h.cancel()).outcome == "cancelled"
            with pytest.raises(fw.TaskCancelled):
                await h.result(timeout=5)
            r = await c.submit("sleep_ms", 5000, priority=fw.Priority.CRITICAL)
            await wait_status(c, r.id, ("running",))
            assert (await c.cancel(r.id)).outcome == "signalled"
            with pytest.raises(fw.TaskCancelled):
                await r.result(timeout=5)
    run(main())


def test_async_batch_and_map(cluster):
    async def main():
        async with aclient(cluster) as c:
            hs = await c.submit_batch([("add", (1, 2)), ("echo", ("x",))])
            assert [await h.result(timeout=10) for h in hs] == [3, "x"]
            with pytest.raises(fw.UnknownTask):
                await c.submit_batch([("add", (1, 1)), ("nope", ())])
            pulled = []

            def args():
                for i in range(40):
                    pulled.append(i)
                    yield (i, 1)
            out = []
            async for v in c.map("add", args(), window=5):
                assert len(pulled) <= len(out) + 1 + 5
                out.append(v)
            assert out == [i + 1 for i in range(40)]
            ms = [80, 5, 40, 1]
            assert [v async for v in c.map("sleep_ms", [(m,) for m in ms])] == ms
    run(main())


def test_async_wrong_key(cluster):
    async def main():
        wrong = os.urandom(32).hex()
        with pytest.raises(fw.AuthRefused):
            await fw.AsyncClient(cluster.address, auth_key=wrong, connect_timeout=5).connect()
        if KEYED:
            with pytest.raises(fw.Refused):
                await fw.AsyncClient(cluster.address, auth_key=False, connect_timeout=5).connect()
    run(main())


def test_async_discovery(cluster):
    async def main():
        async with fw.AsyncClient(discovery_address=cluster.discovery,
                                  auth_key=cluster.key if cluster.key else False) as c:
            assert c.address == cluster.address
            assert await c.call("add", 3, 3) == 6
    run(main())


def test_async_reconnect_after_restart(fresh_cluster):
    cl = fresh_cluster()

    async def main():
        async with aclient(cl) as c:
            assert await c.call("add", 1, 2) == 3
            h = await c.submit("sleep_ms", 1500)
            await wait_status(c, h.id, ("running",))
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: cl.restart_control_plane(sig=signal.SIGKILL))
            assert await h.result(timeout=40) == 1500
            assert await c.call("add", 5, 3, wait_timeout=20) == 8
            assert c.reconnects >= 1
    run(main())
