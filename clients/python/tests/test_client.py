"""The blocking Client against a real control plane and subworker."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import time
import uuid

import pytest
import zmq

import fastworker_client as fw

from conftest import KEYED


def wait_status(client, task_id, statuses, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        rec = client.status(task_id)
        if rec is not None and rec.status in statuses:
            return rec
        assert time.monotonic() < deadline, "status never became %s: %r" % (statuses, rec)
        time.sleep(0.02)


def test_call_add(client):
    assert client.call("add", 5, 3) == 8
    assert client.call("echo", {"a": [1, 2.5, None, "x\u00e9"]}) == {"a": [1, 2.5, None, "x\u00e9"]}
    assert client.protocol_version == 2


def test_tasks_lists_what_the_cluster_serves(client):
    tasks = {t.name: t for t in client.tasks()}
    assert {"add", "echo", "sleep_ms", "fail"} <= set(tasks)
    assert tasks["add"].doc == "Adds two integers."
    assert "x: i64" in tasks["add"].signature and "y: i64" in tasks["add"].signature
    assert "sw1" in tasks["add"].workers


def test_submit_handle(client):
    h = client.submit("sleep_ms", 300)
    assert uuid.UUID(h.id)
    rec = wait_status(client, h.id, ("running",))
    assert rec.name == "sleep_ms" and rec.worker_id == "sw1"
    assert h.result(timeout=10) == 300
    assert h.status().status == "success"
    assert client.result(h.id) == 300
    assert h.cancel() == fw.CancelResult("already_finished", "success")


def test_submit_with_own_task_id_is_idempotent(client):
    tid = str(uuid.uuid4())
    h = client.submit("add", 2, 2, task_id=tid)
    assert h.id == tid and h.result(timeout=10) == 4
    again = client.submit("add", 2, 2, task_id=tid)  # the same task: not run twice
    assert again.result(timeout=10) == 4
    assert client.status(tid).attempts == 1
    with pytest.raises(fw.Rejected) as e:
        client.submit("echo", 1, task_id=tid)  # the id belongs to another task
    assert e.value.kind == "rejected" and "already in use" in e.value.message


def test_failing_task_raises_with_kind_and_message(client):
    with pytest.raises(fw.TaskFailed) as e:
        client.call("fail", "boom", wait_timeout=10)
    assert (e.value.kind, e.value.message, e.value.status) == ("failed", "boom", "failure")
    assert client.status(e.value.task_id).error == fw.TaskError("failed", "boom")
    with pytest.raises(fw.TaskFailed) as e:
        client.call("panic", "oops", wait_timeout=10)
    assert e.value.kind == "panicked" and "oops" in e.value.message
    with pytest.raises(fw.TaskFailed) as e:
        client.call("add", 5, wait_timeout=10)
    assert e.value.kind == "bad_arguments"


def test_retries_then_failure(client):
    h = client.submit("fail", "again", max_retries=2, retry_delay=0.05, retry_backoff=1.0,
                      retry_backoff_max=0.1, retry_jitter=False)
    with pytest.raises(fw.TaskFailed):
        h.result(timeout=10)
    assert h.status().attempts == 3


def test_timeout_option(client):
    with pytest.raises(fw.TaskFailed) as e:
        client.call("sleep_ms", 3000, timeout=0.2, wait_timeout=10)
    assert e.value.kind == "timed_out"


def test_unknown_task(client):
    with pytest.raises(fw.UnknownTask) as e:
        client.submit("no_such_task", 1)
    assert e.value.kind == "unknown_task"
    assert "no_such_task" in e.value.message and "add" in e.value.message
    assert isinstance(e.value, fw.Rejected)


def test_priorities(client):
    # fill the subworker's 4 slots, then queue one task of each priority
    blockers = [client.submit("sleep_ms", 600) for _ in range(4)]
    for b in blockers:
        wait_status(client, b.id, ("running",))
    order = ["low", "normal", "high", "critical"]
    handles = {p: client.submit("sleep_ms", 10, priority=p) for p in order}
    assert client.status(handles["low"].id).status == "queued"
    started = {p: h.record(timeout=20).started_ms for p, h in handles.items()}
    assert started["critical"] <= started["high"] <= started["normal"] <= started["low"]
    assert [b.result(timeout=10) for b in blockers] == [600] * 4
    with pytest.raises(ValueError):
        client.submit("add", 1, 1, priority="urgent")
    assert client.call("add", 1, 1, priority=fw.Priority.HIGH) == 2


def test_countdown_and_eta(client):
    h = client.submit("add", 1, 2, countdown=0.6)
    assert h.status().status == "scheduled"
    rec = h.record(timeout=10)
    assert rec.result == 3 and rec.started_ms - rec.submitted_ms >= 550
    eta = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=0.5)
    h = client.submit("add", 2, 2, eta=eta)
    assert h.status().status == "scheduled"
    rec = h.record(timeout=10)
    assert rec.result == 4 and rec.started_ms >= int(eta.timestamp() * 1000) - 50


def test_cancel_scheduled_and_running(client):
    h = client.submit("add", 1, 1, countdown=30)
    assert h.status().status == "scheduled"
    assert h.cancel() == fw.CancelResult("cancelled", None)
    with pytest.raises(fw.TaskCancelled) as e:
        h.result(timeout=5)
    assert e.value.kind == "cancelled" and e.value.status == "cancelled"
    r = client.submit("sleep_ms", 5000)
    wait_status(client, r.id, ("running",))
    assert client.cancel(r.id).outcome == "signalled"
    with pytest.raises(fw.TaskCancelled) as e:
        r.result(timeout=5)
    assert e.value.message == "cancelled while sleeping"
    assert client.cancel(str(uuid.uuid4())).outcome == "not_found"


def test_status_and_result_by_id(client):
    assert client.status(str(uuid.uuid4())) is None
    with pytest.raises(fw.TaskNotFound):
        client.result(str(uuid.uuid4()), wait=False)
    h = client.submit("sleep_ms", 400)
    with pytest.raises(fw.NotReady):
        client.result(h.id, wait=False)
    assert client.result(h.id, wait=True, timeout=10) == 400
    with pytest.raises(fw.Timeout):
        client.submit("sleep_ms", 2000).result(timeout=0.2)


def test_submit_batch_all_or_none(client):
    hs = client.submit_batch([("add", (1, 2)), ("add", (3, 4), {"priority": "high"}),
                              ("echo", ["x"])])
    assert [h.result(timeout=10) for h in hs] == [3, 7, "x"]
    good_id = str(uuid.uuid4())
    with pytest.raises(fw.UnknownTask):
        client.submit_batch([("add", (1, 1), {"task_id": good_id}), ("nope", ())])
    assert client.status(good_id) is None  # nothing of the batch was accepted
    dup = str(uuid.uuid4())
    with pytest.raises(fw.Rejected) as e:
        client.submit_batch([("add", (1, 1), {"task_id": dup}), ("add", (1, 1), {"task_id": dup})])
    assert "already in use" in e.value.message
    assert client.status(dup) is None


def test_map_in_order_with_window(client):
    pulled = []

    def args():
        for i in range(60):
            pulled.append(i)
            yield (i, 1000)

    out = []
    for k, v in enumerate(client.map("add", args(), window=7)):
        assert len(pulled) <= k + 1 + 7, "more than the window in flight"
        out.append(v)
    assert out == [i + 1000 for i in range(60)]
    # completion order differs from submission order; results come in input order
    ms = [120, 10, 80, 5, 40, 1, 60, 2]
    assert list(client.map("sleep_ms", [(m,) for m in ms], window=8)) == ms


def test_map_failures(client):
    with pytest.raises(fw.TaskFailed) as e:
        list(client.map("add", [(1, 1), (2,), (3, 3)]))
    assert e.value.kind == "bad_arguments"
    out = list(client.map("add", [(1, 1), (2,), (3, 3)], return_exceptions=True))
    assert out[0] == 2 and out[2] == 6 and isinstance(out[1], fw.TaskFailed)
    with pytest.raises(fw.UnknownTask):
        list(client.map("nope", [(1,)]))
    assert list(client.map("add", [])) == []


def test_events(client):
    events = client.events()
    assert any(e.kind == "worker.registered" and e.subject == "sw1" for e in events)
    assert all(isinstance(e.at_ms, int) for e in events)


def test_callback(cluster, client):
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    try:
        port = router.bind_to_random_port("tcp://127.0.0.1")
        h = client.submit("add", 20, 22, callback_address="tcp://127.0.0.1:%d" % port,
                          callback_data="cb")
        assert router.poll(10000), "no callback"
        body = json.loads(router.recv_multipart()[1])
        assert (body["task_id"], body["status"], body["result"], body["callback_data"]) == (
            h.id, "success", 42, "cb")
    finally:
        router.close(0)


def test_discovery(cluster):
    with fw.Client(discovery_address=cluster.discovery,
                   auth_key=cluster.key if cluster.key else False) as c:
        assert c.address == cluster.address
        assert c.call("add", 2, 2) == 4
    a = fw.discover(cluster.discovery, auth_key=cluster.key if cluster.key else False)
    assert a["base_address"] == cluster.address


def test_key_from_environment(cluster, monkeypatch):
    monkeypatch.delenv("FASTWORKER_AUTH_KEY_FILE", raising=False)
    if cluster.key:
        monkeypatch.setenv("FASTWORKER_AUTH_KEY", cluster.key)
    else:
        monkeypatch.delenv("FASTWORKER_AUTH_KEY", raising=False)
    with fw.Client(cluster.address) as c:
        assert c.call("add", 1, 1) == 2


def test_wrong_key_refused_clearly(cluster):
    wrong = os.urandom(32).hex()
    if KEYED:
        with pytest.raises(fw.AuthRefused) as e:
            fw.Client(cluster.address, auth_key=wrong, connect_timeout=5)
        assert "wrong cluster key" in str(e.value)
        with pytest.raises(fw.Refused) as e:
            fw.Client(cluster.address, auth_key=False, connect_timeout=5)
        assert "cluster key" in str(e.value)
    else:
        with pytest.raises(fw.AuthRefused) as e:
            fw.Client(cluster.address, auth_key=wrong, connect_timeout=5)
        assert "no cluster key" in str(e.value)
    assert isinstance(e.value, fw.ConnectionError)


def test_nobody_there():
    with pytest.raises(fw.ConnectionError):
        fw.Client("tcp://127.0.0.1:1", auth_key=False, connect_timeout=0.5)


def test_reconnect_after_control_plane_restart(fresh_cluster):
    c = fresh_cluster()
    with c.client(reconnect_timeout=30) as client:
        assert client.call("add", 1, 2) == 3
        h = client.submit("sleep_ms", 1500)
        wait_status(client, h.id, ("running",))
        c.restart_control_plane(sig=signal.SIGKILL)
        # the task was lost with the old control plane: the client submits it again
        # (same id) once it has reconnected, and its result comes
        assert h.result(timeout=40) == 1500
        assert client.call("add", 5, 3, wait_timeout=20) == 8
        assert client.reconnects >= 1
        assert list(client.map("add", [(i, i) for i in range(100)])) == [2 * i for i in range(100)]


def test_dead_letters_and_replay(fresh_cluster):
    c = fresh_cluster(["--max-deliveries", "1"], {"victim": 1})
    with c.client() as client:
        h = client.submit("sleep_ms", 1500)
        wait_status(client, h.id, ("running",))
        victim = [p for p in c.procs if "victim" in p.args][0]
        victim.stop(signal.SIGKILL)
        with pytest.raises(fw.TaskFailed) as e:
            h.result(timeout=20)
        assert e.value.kind == "worker_lost"
        assert h.id in [r.task_id for r in client.dead_letters()]
        c.start_subworker("rescuer", 1)
        c.wait_served("rescuer")
        again = client.replay(h.id)
        assert again.id == h.id and again.result(timeout=20) == 1500
        with pytest.raises(fw.Rejected):
            client.replay(h.id)


def test_message_too_large(fresh_cluster):
    c = fresh_cluster(["--max-message-size", "64KiB", "--max-payload-size", "32KiB"])
    with c.client() as client:
        assert client.limits["max-message-size"] == 64 * 1024
        with pytest.raises(fw.MessageTooLarge):
            client.submit("echo", "x" * (70 * 1024))
        with pytest.raises(fw.Rejected) as e:
            client.submit("echo", "x" * (40 * 1024))
        assert "--max-payload-size" in e.value.message
        assert client.call("add", 1, 1) == 2


def test_threads_share_a_client(client):
    import threading
    out = {}

    def work(i):
        out[i] = client.call("sleep_ms", 50 + i, wait_timeout=20)
    ts = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert out == {i: 50 + i for i in range(8)}
