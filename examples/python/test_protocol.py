#!/usr/bin/env python3
"""End-to-end check of docs/PROTOCOL.md with the Python package fastworker-client
(clients/python: its wire module speaks the protocol by hand, version 1 and 2, and its
Client negotiates version 2), against a real control plane. No pytest: exit 0 when
every check passes, 1 otherwise.

    python3 examples/python/test_protocol.py target/debug/fastworker target/debug/libmytasks.so

It starts two `fastworker control-plane`s itself, on free ports, from a temporary
directory holding the plugin as plugins/mytasks.so: one without a cluster key, and one
with a key made by `fastworker keygen` (and small message limits, 1 MiB / 512 KiB), for
the check_keyed_* checks. It stops both when done. Every wait is bounded.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = os.path.join(HERE, "..", "..", "clients", "python")
sys.path.insert(0, PACKAGE)

import zmq  # noqa: E402

import fastworker_client as fwc  # noqa: E402
import fastworker_client.wire as fw  # noqa: E402

SNAPSHOTS = os.path.join(HERE, "..", "..", "host", "protocol", "src", "snapshots")
CLI = [sys.executable, "-m", "fastworker_client"]
CLI_ENV = dict(os.environ, PYTHONPATH=os.path.abspath(PACKAGE))
WAIT = 5.0  # seconds, for any single answer


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Raw:
    """A bare DEALER for sending hand-made frames (with a key: after the handshake, and
    sealed)."""

    def __init__(self, address, key=None):
        self.c = fw.Connection(address, key=key, timeout=WAIT)
        self.s = self.c.socket

    def send(self, frames):
        self.c.send(frames)

    def recv(self, timeout=WAIT):
        try:
            return self.c.recv(timeout)
        except fw.Timeout:
            raise AssertionError("no message within %.1f s" % timeout) from None

    def recv_type(self, kind, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if msg["type"] == kind:
                return msg

    def close(self):
        self.c.close()


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def eq(actual, expected, what=""):
    if actual != expected:
        raise AssertionError("%s: expected %r, got %r" % (what, expected, actual))


def poll_status(client, task_id, pred, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while True:
        record = client.status(task_id)
        if pred(record):
            return record
        if time.monotonic() > deadline:
            raise AssertionError("status never matched; last: %r" % (record,))
        time.sleep(0.05)


def expect_raise(exc, what, fn, *args, **kwargs):
    """Calls fn; returns the exception of type exc it raised, else fails."""
    try:
        fn(*args, **kwargs)
    except exc as e:
        return e
    raise AssertionError("%s: no %s raised" % (what, exc.__name__))


class Keyed:
    """The control plane started with a cluster key."""

    def __init__(self, base, discovery, sub, key_file):
        self.base, self.discovery, self.sub, self.key_file = base, discovery, sub, key_file
        with open(key_file) as f:
            self.text = f.read()
        self.key = fw.ClusterKey.parse(self.text)
        self.hex = self.key.keys[0].hex()


class Checks:
    def __init__(self, binary, base, discovery, sub, keyed=None):
        self.binary, self.base, self.discovery, self.sub = binary, base, discovery, sub
        self.keyed = keyed

    def _keyed(self):
        if self.keyed is None:
            raise AssertionError("the keyed control plane did not start")
        return self.keyed

    # --- encodings ---------------------------------------------------------------
    def check_snapshots(self):
        if not os.path.isdir(SNAPSHOTS):
            print("    (snapshots not found at %s; skipped)" % SNAPSHOTS)
            return

        def lines(name, version=1):
            with open(os.path.join(SNAPSHOTS, "v%d_%s.hex" % (version, name))) as f:
                return f.read().split("\n")[:-1]

        tid = "01010101-0101-0101-0101-010101010101"
        task = fw.new_task("add", b"[5,3]", task_id=tid)
        hx = lambda frames: [f.hex() for f in frames]  # noqa: E731
        eq(hx(fw.encode_hello("cli")), lines("hello"), "hello")
        eq(hx(fw.encode_submit(7, task, True)), lines("submit"), "submit")
        eq(hx(fw.encode_status(8, tid, False)), lines("status"), "status")
        eq(hx(fw.encode_outcome(tid, 1, b"\x07" * 16, {"kind": "failed", "message": "boom"},
                                started_ms=1, completed_ms=2)),
           lines("outcome_failure"), "outcome_failure")
        frames = lambda n: [bytes.fromhex(x) for x in lines(n)]  # noqa: E731
        eq(fw.decode(frames("accepted")),
           {"type": "accepted", "request_id": 7, "task_ids": [tid]}, "accepted")
        rec = fw.decode(frames("result"))["record"]
        eq((rec["status"], rec["worker_id"], rec["result"], rec["completed_ms"]),
           ("success", "sw1", 8, 1700000000002), "result")
        m = fw.decode(frames("assign"))
        t = m["task"]
        eq((t["id"], t["name"], t["payload"], t["priority"], m["lease"]),
           (tid, "add", b"[5,3]", "normal", b"\x07" * 16), "assign")
        if os.path.exists(os.path.join(SNAPSHOTS, "v1_registered.hex")):
            eq(fw.decode(frames("registered")), {"type": "registered", "secret": b"\x09" * 32},
               "registered")
        # Registration with a secret and a claim, by hand: the layout of PROTOCOL.md
        reg = fw.encode_register("sw", [], concurrency=2, pid=7, secret=b"\x09" * 32,
                                 running=[(tid, b"\x07" * 16)])[0]
        eq(reg.hex(), ("465701" "05000000" "0200000000000000" "7377" "0000000000000000"
                       "02000000" "00" "07000000" "01" + "09" * 32 + "0100000000000000"
                       "1000000000000000" + "01" * 16 + "07" * 16), "registration")

    def check_snapshots_v2(self):
        """Version 2 (JSON headers): what the package sends and reads, byte for byte."""
        def lines(name):
            with open(os.path.join(SNAPSHOTS, "v2_%s.hex" % name)) as f:
                return f.read().split("\n")[:-1]
        tid = "01010101-0101-0101-0101-010101010101"
        task = fw.new_task("add", b"[5,3]", task_id=tid)
        hx = lambda frames: [f.hex() for f in frames]  # noqa: E731
        eq(hx(fw.encode_submit_v2(7, task, True)), lines("submit"), "v2 submit")
        eq(hx(fw.encode_submit_batch_v2(9, [task], False)), lines("submit_batch"), "v2 batch")
        eq(hx(fw.encode_status_v2(8, tid)), lines("status"), "v2 status")
        eq(hx(fw.encode_cancel_v2(10, tid)), lines("cancel"), "v2 cancel")
        eq(hx(fw.encode_dead_letters_v2(11)), lines("dead_letters"), "v2 dead letters")
        eq(hx(fw.encode_replay_v2(12, tid)), lines("replay"), "v2 replay")
        eq(hx(fw.encode_events_v2(13)), lines("events"), "v2 events")
        eq(hx(fw.encode_tasks_v2(14)), lines("tasks"), "v2 tasks")
        eq(hx(fw.encode_ping_v2(5)), lines("ping"), "v2 ping")
        eq(hx(fw.encode_unit_v2("Discover")), lines("discover"), "v2 discover")
        eq(hx(fw.encode_hello_v2("cli")), lines("hello"), "v2 hello")
        frames = lambda n: [bytes.fromhex(x) for x in lines(n)]  # noqa: E731
        eq(fw.decode(frames("accepted")),
           {"type": "accepted", "request_id": 7, "task_ids": [tid]}, "v2 accepted")
        rec = fw.decode(frames("result"))["record"]
        eq((rec["status"], rec["worker_id"], rec["result"], rec["completed_ms"]),
           ("success", "sw1", 8, 1700000000002), "v2 result")
        eq(fw.decode(frames("cancel_reply")), {"type": "cancel_reply", "request_id": 10,
                                               "outcome": "already_finished",
                                               "status": "success"}, "v2 cancel reply")
        t = fw.decode(frames("task_list"))["tasks"][0]
        eq((t["spec"]["name"], t["spec"]["doc"], t["spec"]["signature"], t["workers"]),
           ("add", "Adds two integers.", "add(x: i64, y: i64) -> i64", ["sw1"]), "v2 task list")
        eq(fw.decode(frames("registered"))["secret"], b"\x09" * 32, "v2 registered")
        m = fw.decode(frames("assign"))
        eq((m["task"]["priority"], m["task"]["payload"], m["lease"], m["epoch"]),
           ("normal", b"[5,3]", b"\x07" * 16, 3), "v2 assign")

    def check_client_negotiates_version_2(self):
        """The package's Client sends Hello in version 1 with protocol-max=2 and then
        speaks JSON headers; Tasks (version 2 only) works."""
        with fwc.Client(self.base, auth_key=False) as c:
            eq(c.protocol_version, 2, "agreed version")
            eq(c.call("add", 5, 3), 8, "add over version 2")
            tasks = {t.name: t for t in c.tasks()}
            eq(tasks["add"].doc, "Adds two integers.", "doc of add")
            eq(tasks["add"].workers, ["control-plane"], "workers of add")
        # a version-1 Hello (no protocol-max) is welcomed in version 1
        with fw.RawClient(self.base) as c:
            eq(c.submit("add", [1, 2]), 3, "version-1 client")

    # --- client basics --------------------------------------------------------------
    def check_add(self):
        eq(fw.submit(self.base, "add", [5, 3]), 8, "add(5, 3)")

    def check_cli_add(self):
        out = subprocess.run(
            CLI + ["--control-plane-address", self.base, "add", "5", "3"],
            capture_output=True, text=True, timeout=30, env=CLI_ENV)
        eq((out.returncode, out.stdout), (0, "8\n"), "CLI add 5 3 (stderr: %s)" % out.stderr)

    def check_cli_discovery(self):
        out = subprocess.run(
            CLI + ["--discovery-address", self.discovery, "add", "-2", "10"],
            capture_output=True, text=True, timeout=30, env=CLI_ENV)
        eq((out.returncode, out.stdout), (0, "8\n"), "CLI via discovery (stderr: %s)" % out.stderr)

    def check_echo_nested(self):
        value = {"a": [1, 2.5, {"b": None, "c": "x\u00e9"}], "d": True, "e": [], "f": {}}
        eq(fw.submit(self.base, "echo", [value]), value, "echo")

    def check_fail(self):
        try:
            fw.submit(self.base, "fail", ["boom"])
        except fw.TaskFailed as e:
            eq((e.status, e.kind, e.message), ("failure", "failed", "boom"), "fail")
            eq(e.record["value"], b"", "failure value frame")
        else:
            raise AssertionError("fail did not fail")

    def check_bad_arguments(self):
        try:
            fw.submit(self.base, "add", [5])
        except fw.TaskFailed as e:
            eq((e.status, e.kind), ("failure", "bad_arguments"), "add [5]")
        else:
            raise AssertionError("add [5] succeeded")

    def check_unknown_task(self):
        try:
            fw.submit(self.base, "no_such_task", [1])
        except fw.Rejected as e:
            eq(e.kind, "unknown_task", "kind")
            check("no_such_task" in e.message and "add" in e.message, e.message)
        else:
            raise AssertionError("unknown task accepted")

    def check_status_and_cancel_running(self):
        with fw.RawClient(self.base) as c:
            tid = c.submit("sleep_ms", [2000], wait=False)
            rec = poll_status(c, tid, lambda r: r and r["status"] == "running")
            eq((rec["name"], rec["worker_id"], rec["attempts"], rec["delivery_count"],
                rec["completed_ms"], rec["value"]),
               ("sleep_ms", "control-plane", 1, 1, None, b""), "running record")
            eq(c.cancel(tid), {"outcome": "signalled", "status": None}, "cancel running")
            rec = poll_status(c, tid, lambda r: r["status"] == "cancelled", timeout=3)
            eq(rec["error"], {"kind": "cancelled", "message": "cancelled while sleeping"},
               "cancelled error")
            check(rec["completed_ms"] - rec["started_ms"] < 1500, "stopped early")
            eq(c.cancel(tid), {"outcome": "already_finished", "status": "cancelled"},
               "cancel again")
            unknown = str(uuid.uuid4())
            eq(c.status(unknown), None, "status of unknown id")
            eq(c.cancel(unknown), {"outcome": "not_found", "status": None}, "cancel unknown")
        # the module-level helpers, on their own connections
        eq(fw.status(self.base, tid)["status"], "cancelled", "fw.status")
        eq(fw.cancel(self.base, tid)["outcome"], "already_finished", "fw.cancel")

    def check_cancel_queued_and_result_pushed(self):
        with fw.RawClient(self.base) as c:
            first = c.submit("sleep_ms", [1500], wait=False)
            poll_status(c, first, lambda r: r and r["status"] == "running")
            # concurrency 1: the second one waits in the queue
            task = fw.new_task("sleep_ms", b"[10]")
            second = c.submit_task(task, wait=True)
            eq(c.status(second)["status"], "queued", "second queued")
            eq(c.cancel(second)["outcome"], "cancelled", "cancel queued")
            rec = c.wait_result(second, WAIT)
            eq((rec["status"], rec["error"]),
               ("cancelled", {"kind": "cancelled", "message": "cancelled before it ran"}),
               "pushed result of the cancelled task")
            eq(c.cancel(first)["outcome"], "signalled", "cancel first")

    def check_status_wait(self):
        with fw.RawClient(self.base) as c:
            tid = c.submit("sleep_ms", [300], wait=False)
            rec = c.status(tid, wait=True, timeout=WAIT)
            eq((rec["status"], rec["result"], rec["value"]), ("success", 300, b"300"),
               "status wait")

    def check_batch(self):
        with fw.RawClient(self.base) as c:
            tasks = [fw.new_task("add", b"[1,2]"), fw.new_task("add", b"[3,4]", priority="high")]
            ids = c.submit_batch(tasks, wait=True)
            eq(ids, [t["id"] for t in tasks], "batch ids in order")
            got = sorted(c.wait_result(i, WAIT)["result"] for i in ids)
            eq(got, [3, 7], "batch results")
            # all or none: one unknown name rejects the whole batch
            good, bad = fw.new_task("add", b"[1,1]"), fw.new_task("nope", b"[]")
            try:
                c.submit_batch([good, bad], wait=False)
                raise AssertionError("batch with an unknown task accepted")
            except fw.Rejected as e:
                eq(e.kind, "unknown_task", "batch kind")
            eq(c.status(good["id"]), None, "nothing of a rejected batch was accepted")
            # a repeated id
            dup = fw.new_task("add", b"[1,1]")
            try:
                c.submit_batch([dup, dict(dup)], wait=False)
                raise AssertionError("batch with a repeated id accepted")
            except fw.Rejected as e:
                eq(e.kind, "rejected", "dup kind")
                check("already in use" in e.message, e.message)
            # the same task sent again (same id, same name): the same task, not a second one
            again = c.submit("add", [1, 2], task_id=ids[0], wait=False)
            eq(again, ids[0], "a resent submission is acknowledged with its id")
            rec = c.status(ids[0])
            eq((rec["status"], rec["result"], rec["attempts"]), ("success", 3, 1),
               "a resent submission does not run again")
            # an id already used by another task name
            try:
                c.submit("echo", [1], task_id=ids[0])
                raise AssertionError("reused id accepted for another task")
            except fw.Rejected as e:
                eq(e.kind, "rejected", "reused id kind")
                check("already in use" in e.message, e.message)

    def check_callback(self):
        router = zmq.Context.instance().socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        try:
            port = router.bind_to_random_port("tcp://127.0.0.1")
            task = fw.new_task("add", b"[20,22]")
            task["callback"] = {"address": "tcp://127.0.0.1:%d" % port, "data": "cb-data"}
            with fw.RawClient(self.base) as c:
                c.submit_task(task, wait=False)
            check(router.poll(int(WAIT * 1000)), "no callback within %.0f s" % WAIT)
            frames = router.recv_multipart()
            eq(len(frames), 2, "identity + one JSON frame")
            body = json.loads(frames[1])
            eq((body["task_id"], body["status"], body["result"], body["error"],
                body["callback_data"]), (task["id"], "success", 42, None, "cb-data"),
               "callback body")
            check(isinstance(body["completed_at"], int), "completed_at")
        finally:
            router.close(0)

    # --- discovery -------------------------------------------------------------------
    def check_discover(self):
        a = fw.discover(self.discovery)
        eq(a, {"control_plane_id": "control-plane", "base_address": self.base,
               "subworker_address": self.sub, "protocol_version": 4},  # the newest it speaks
           "announcement")
        eq(fw.submit(a["base_address"], "add", [2, 2]), 4, "submit to the announced address")

    def check_discovery_endpoint(self):
        r = Raw(self.discovery)
        try:
            r.send(fw.encode_unit(fw.DISCOVER))
            eq(r.recv()["type"], "announce", "first announce")
            eq(r.recv(timeout=3.5)["type"], "announce", "periodic announce")
            r.send(fw.encode_ping(99))
            eq(r.recv_type("pong")["nonce"], 99, "pong")
            r.send(fw.encode_hello("x"))
            m = r.recv_type("rejected")
            eq((m["request_id"], m["error"]["kind"]), (0, "rejected"), "hello on discovery")
            r.send([b"XX\x01"])
            check(r.recv_type("refused")["reason"].startswith("not a fastworker message"),
                  "bad magic on discovery is Refused")
        finally:
            r.close()

    # --- errors on the base endpoint -----------------------------------------------------
    def check_errors(self):
        r = Raw(self.base)
        try:
            r.send(fw.encode_ping(7))
            eq(r.recv(), {"type": "pong", "nonce": 7}, "ping without hello")
            r.send(fw.encode_unit(fw.DISCOVER))
            eq(r.recv()["base_address"], self.base, "discover on the base address")
            r.send(fw.encode_status(5, str(uuid.uuid4())))
            eq(r.recv(), {"type": "rejected", "request_id": 5,
                          "error": {"kind": "rejected", "message": "send Hello first"}},
               "before hello")
            r.send([b"XX\x01"])
            m = r.recv()
            eq((m["type"], m["request_id"], m["error"]["message"]),
               ("rejected", 0, "not a fastworker message (bad magic)"), "bad magic")
            r.send([b"FW\x09" + fw.encode_hello("x")[0][3:]])
            eq(r.recv(), {"type": "refused", "reason":
                          "protocol version 9 is not supported (this peer speaks versions 1 to 4;"
                          " version 1 or later is required)"},
               "other header version")
            hello = bytearray(fw.encode_hello("x")[0])
            hello[7] = 9  # Hello.protocol_version, and no protocol-max: speaks 9 only
            eq(r.recv() if r.send([bytes(hello)]) is None else None,
               {"type": "refused", "reason":
                "no protocol version in common: this control plane speaks versions 1 to 4,"
                " the peer 9 to 9"},
               "other Hello version")
            r.send([fw.encode_hello("x")[0] + b"\x00"])
            m = r.recv()
            eq((m["type"], m["request_id"]), ("rejected", 0), "trailing byte")
            check(m["error"]["message"].startswith("malformed message"), m["error"]["message"])
            r.send(fw.encode_hello("x"))
            w = r.recv()
            eq(w["type"], "welcome", "welcome")
            eq(w["features"], ["batch", "wait", "cancel", "max-payload-size=67108864",
                               "max-message-size=83886080"], "welcome features")
            header = fw.encode_submit(9, fw.new_task("add", b"[1,1]"), False)[0]
            r.send([header])
            m = r.recv()
            eq((m["type"], m["request_id"], m["error"]["message"]),
               ("rejected", 0, "message has 0 payload frames, its header lists 1"),
               "missing payload frame")
        finally:
            r.close()

    # --- a subworker written in Python --------------------------------------------------
    def check_subworker(self):
        sw = Raw(self.sub)
        c = fw.RawClient(self.base)
        try:
            sw.send(fw.encode_hello("py-sw", peer_kind="subworker"))
            sw.send(fw.encode_register("py-sw", [{"name": "py_upper"}], concurrency=1))
            w = sw.recv()
            eq((w["type"], w["control_plane_id"]), ("welcome", "control-plane"), "welcome")
            r = sw.recv()
            eq(r["type"], "registered", "register answered with Registered")
            eq(len(r["secret"]), 32, "secret length")
            sw.send(fw.encode_heartbeat(0, 1))
            eq(sw.recv()["type"], "heartbeat_ack", "heartbeat acknowledged")

            # success
            tid = c.submit_task(fw.new_task("py_upper", b'["abc"]'), wait=True)
            m = sw.recv_type("assign")
            task, lease = m["task"], m["lease"]
            eq((task["id"], task["name"], task["payload"], task["attempt"],
                task["delivery_count"], len(lease)), (tid, "py_upper", b'["abc"]', 1, 1, 16),
               "assign")
            args = json.loads(task["payload"])
            now = int(time.time() * 1000)
            sw.send(fw.encode_outcome(tid, task["delivery_count"], lease,
                                      value=json.dumps(args[0].upper()).encode(),
                                      started_ms=now, completed_ms=now + 1))
            rec = c.wait_result(tid, WAIT)
            eq((rec["status"], rec["result"], rec["worker_id"], rec["started_ms"]),
               ("success", "ABC", "py-sw", now), "result via subworker")

            # failure; a stale delivery count and a wrong lease are ignored
            tid = c.submit_task(fw.new_task("py_upper", b'["x"]'), wait=True)
            m = sw.recv_type("assign")
            task, lease = m["task"], m["lease"]
            sw.send(fw.encode_outcome(tid, task["delivery_count"] + 5, lease,
                                      error={"kind": "failed", "message": "stale"}))
            sw.send(fw.encode_outcome(tid, task["delivery_count"], os.urandom(16),
                                      error={"kind": "failed", "message": "forged"}))
            sw.send(fw.encode_outcome(tid, task["delivery_count"], lease,
                                      error={"kind": "failed", "message": "nope"}))
            rec = c.wait_result(tid, WAIT)
            eq((rec["status"], rec["error"]), ("failure", {"kind": "failed", "message": "nope"}),
               "failure via subworker (stale and forged outcomes ignored)")

            # cancel of a task running on the subworker
            tid = c.submit_task(fw.new_task("py_upper", b'["y"]'), wait=True)
            m = sw.recv_type("assign")
            task, lease = m["task"], m["lease"]
            eq(c.cancel(tid)["outcome"], "signalled", "cancel on subworker")
            eq(sw.recv_type("cancel_task")["task_id"], tid, "CancelTask")
            sw.send(fw.encode_outcome(tid, task["delivery_count"], lease,
                                      error={"kind": "failed", "message": "stopped"}))
            rec = c.wait_result(tid, WAIT)
            eq((rec["status"], rec["error"]),
               ("cancelled", {"kind": "cancelled", "message": "cancelled (stopped)"}),
               "cancelled via subworker")

            # draining: accepted (still known) but not assigned. Messages of one
            # connection are handled in order, those of two are not: the Pong says the
            # Draining was handled before the client submits.
            sw.send(fw.encode_unit(fw.DRAINING))
            sw.send(fw.encode_ping(11))
            eq(sw.recv_type("pong")["nonce"], 11, "pong after Draining")
            tid = c.submit("py_upper", ["z"], wait=False)
            time.sleep(0.3)
            eq(c.status(tid)["status"], "queued", "no assignment while draining")
            # unregister: the name is no longer known
            sw.send(fw.encode_unit(fw.UNREGISTER))
            sw.send(fw.encode_ping(12))
            eq(sw.recv_type("pong")["nonce"], 12, "pong after Unregister")
            eq(c.cancel(tid)["outcome"], "cancelled", "cancel the stranded task")
            try:
                c.submit("py_upper", ["z"], wait=False)
                raise AssertionError("task of an unregistered subworker accepted")
            except fw.Rejected as e:
                eq(e.kind, "unknown_task", "after unregister")
        finally:
            c.close()
            sw.close()

    def check_dead_letters_and_replay(self):
        secret = [None]  # the last Registered's, shown when registering again

        def connect_worker():
            sw = Raw(self.sub)
            sw.send(fw.encode_hello("py-dl", peer_kind="subworker"))
            sw.send(fw.encode_register("py-dl", [{"name": "py_dl"}], concurrency=1,
                                       secret=secret[0]))
            eq(sw.recv()["type"], "welcome", "welcome")
            r = sw.recv()
            eq(r["type"], "registered", "registered")
            secret[0] = r["secret"]
            return sw

        c = fw.RawClient(self.base)
        sw = None
        try:
            sw = connect_worker()
            tid = c.submit_task(fw.new_task("py_dl", b"[7]"), wait=True)
            # Lose the worker while it holds the task until the task is dead-lettered
            # (--max-deliveries, default 5).
            record = None
            for delivery in range(1, 12):
                if sw is None:
                    sw = connect_worker()
                task = sw.recv_type("assign")["task"]
                eq(task["delivery_count"], delivery, "delivery count")
                # A PluginEvent is only logged: no answer.
                sw.send([fw._header(fw.PLUGIN_EVENT).getvalue()
                         + b"".join(_pe_fields())])
                sw.close()
                sw = None
                if c.results or c.socket.poll(300):
                    record = c.wait_result(tid, WAIT)
                    break
            check(record is not None, "never dead-lettered")
            eq((record["status"], record["error"]["kind"]), ("failure", "worker_lost"),
               "worker_lost")
            check(record["error"]["message"].startswith("dead-lettered"),
                  record["error"]["message"])
            letters = c.dead_letters()
            eq([(r["task_id"], r["status"]) for r in letters if r["task_id"] == tid],
               [(tid, "failure")], "dead letter listed")
            sw = connect_worker()
            eq(c.replay(tid), tid, "replay accepted")
            m = sw.recv_type("assign")
            task = m["task"]
            eq((task["id"], task["attempt"], task["delivery_count"], task["payload"]),
               (tid, 1, 1, b"[7]"), "replayed assignment")
            sw.send(fw.encode_outcome(tid, 1, m["lease"], value=b"49"))
            rec = poll_status(c, tid, lambda r: r["status"] == "success")
            eq(rec["result"], 49, "replayed result")
            try:
                c.replay(tid)
                raise AssertionError("replay of a non-dead-letter accepted")
            except fw.Rejected as e:
                eq(e.kind, "rejected", "replay again")
            sw.send(fw.encode_unit(fw.UNREGISTER))
        finally:
            c.close()
            if sw is not None:
                sw.close()

    # --- a control plane with a cluster key ------------------------------------------
    def check_keyed_keygen(self):
        k = self._keyed()
        eq(os.stat(k.key_file).st_mode & 0o777, 0o600, "key file mode")
        eq(len(k.key.keys), 1, "one key in a new key file")
        eq(fw.load_key(k.key_file).keys, k.key.keys, "load_key(path)")
        eq(fw.load_key(environ={"FASTWORKER_AUTH_KEY": k.hex}).keys, k.key.keys,
           "load_key from FASTWORKER_AUTH_KEY")
        eq(fw.load_key(environ={"FASTWORKER_AUTH_KEY_FILE": k.key_file}).keys, k.key.keys,
           "load_key from FASTWORKER_AUTH_KEY_FILE")
        eq(fw.load_key(environ={}), None, "no key")
        expect_raise(ValueError, "three keys", fw.ClusterKey.parse, ",".join([k.hex] * 3))
        expect_raise(ValueError, "short key", fw.ClusterKey.parse, k.hex[:-2])

    def check_keyed_client(self):
        k = self._keyed()
        eq(fw.submit(k.base, "add", [5, 3], key=k.key), 8, "keyed add(5, 3)")
        with fw.RawClient(k.base, key=k.text) as c:  # the key text works as well
            eq(c.limits, {"max-payload-size": 512 * 1024, "max-message-size": 1024 * 1024},
               "limits in Welcome.features")
            tid = c.submit("sleep_ms", [2000], wait=False)
            rec = poll_status(c, tid, lambda r: r and r["status"] == "running")
            eq(rec["name"], "sleep_ms", "keyed status")
            eq(c.cancel(tid), {"outcome": "signalled", "status": None}, "keyed cancel")
            poll_status(c, tid, lambda r: r["status"] == "cancelled", timeout=3)
            eq(c.ping(5), 5, "keyed ping")
        # rotation: the first key is the one proven with, either is accepted back
        other = os.urandom(32).hex()
        eq(fw.submit(k.base, "add", [1, 2], key="%s\n%s  # next\n" % (k.hex, other)), 3,
           "two keys, the right one first")
        # the discovery endpoint needs the key too
        a = fw.discover(k.discovery, key=k.key)
        eq((a["base_address"], a["subworker_address"]), (k.base, k.sub), "keyed discovery")
        # the command line, with the key file named in the environment
        env = dict(CLI_ENV, FASTWORKER_AUTH_KEY_FILE=k.key_file)
        env.pop("FASTWORKER_AUTH_KEY", None)
        out = subprocess.run(
            CLI + ["--discovery-address", k.discovery, "add", "5", "3"],
            capture_output=True, text=True, timeout=30, env=env)
        eq((out.returncode, out.stdout), (0, "8\n"), "keyed CLI (stderr: %s)" % out.stderr)

    def check_keyed_refuses_unkeyed(self):
        k = self._keyed()
        e = expect_raise(fw.Refused, "unkeyed client", fw.RawClient, k.base, timeout=WAIT)
        check(not isinstance(e, fw.AuthRefused), "an FW Refused, not a handshake Refuse")
        check("cluster key" in str(e), str(e))
        e = expect_raise(fw.Refused, "unkeyed discovery", fw.discover, k.discovery)
        check("cluster key" in str(e), str(e))
        r = Raw(k.base)
        try:
            r.send(fw.encode_ping(3))
            m = r.recv()
            eq(m["type"], "refused", "unkeyed ping is refused, not answered")
        finally:
            r.close()

    def check_keyed_wrong_key(self):
        k = self._keyed()
        wrong = os.urandom(32).hex()
        e = expect_raise(fw.AuthRefused, "wrong key", fw.RawClient, k.base, key=wrong,
                         timeout=WAIT)
        check("wrong cluster key" in str(e), str(e))
        # the key proven with is the first one: the right key second does not help
        expect_raise(fw.AuthRefused, "wrong key first", fw.RawClient, k.base,
                     key="%s,%s" % (wrong, k.hex), timeout=WAIT)
        expect_raise(fw.AuthRefused, "wrong key, discovery", fw.discover, k.discovery,
                     key=wrong)
        # a keyed client and a control plane without a key: a Refuse frame too
        e = expect_raise(fw.AuthRefused, "key for an unkeyed server", fw.RawClient, self.base,
                         key=k.key, timeout=WAIT)
        check("no cluster key" in str(e), str(e))

    def check_keyed_seal(self):
        k = self._keyed()
        # a replayed message closes the connection
        conn = fw.Connection(k.base, key=k.key, timeout=WAIT)
        try:
            sealed = conn.session.seal(fw.encode_ping(5))
            conn.socket.send_multipart(sealed)
            eq(conn.recv(), {"type": "pong", "nonce": 5}, "sealed ping")
            conn.socket.send_multipart(sealed)
            conn.send(fw.encode_ping(6))
            try:
                m = conn.recv(timeout=1.0)
                raise AssertionError("answered after a replay: %r" % m)
            except (fw.Timeout, fw.ProtocolError):
                pass
        finally:
            conn.close()
        # so does a tampered one
        conn = fw.Connection(k.base, key=k.key, timeout=WAIT)
        try:
            sealed = conn.session.seal(fw.encode_ping(7))
            sealed[-1] = sealed[-1][:-1] + bytes([sealed[-1][-1] ^ 1])
            conn.socket.send_multipart(sealed)
            try:
                m = conn.recv(timeout=1.0)
                raise AssertionError("answered a tampered message: %r" % m)
            except (fw.Timeout, fw.ProtocolError):
                pass
        finally:
            conn.close()

    def check_keyed_subworker(self):
        k = self._keyed()
        sw = fw.Subworker(k.sub, "py-keyed", [{"name": "py_upper"}], key=k.key, timeout=WAIT)
        c = fw.RawClient(k.base, key=k.key)
        try:
            eq(len(sw.secret), 32, "secret")
            sw.heartbeat(0, 1)
            eq(sw.recv_type("heartbeat_ack")["type"], "heartbeat_ack", "sealed heartbeat")
            tid = c.submit_task(fw.new_task("py_upper", b'["abc"]'), wait=True)
            m = sw.recv_type("assign", WAIT)
            task, lease = m["task"], m["lease"]
            eq((task["id"], task["payload"], len(lease)), (tid, b'["abc"]', 16), "assign")
            # an outcome with another lease is ignored: the task stays running
            sw.send_outcome(task, value=b'"FORGED"', lease=os.urandom(16))
            sw.send(fw.encode_ping(77))  # handled in order: after the outcome
            eq(sw.recv_type("pong", WAIT)["nonce"], 77, "pong")
            eq(c.status(tid)["status"], "running", "forged outcome ignored")
            check(tid not in c.results and not c.socket.poll(200), "no result pushed")
            sw.send_outcome(task, value=b'"ABC"')  # with the Assign's lease
            rec = c.wait_result(tid, WAIT)
            eq((rec["status"], rec["result"], rec["worker_id"]), ("success", "ABC", "py-keyed"),
               "result via the keyed subworker")
            # a result over --max-payload-size ends the task as a failure saying so
            tid = c.submit_task(fw.new_task("py_upper", b'["big"]'), wait=True)
            task = sw.recv_type("assign", WAIT)["task"]
            sw.send_outcome(task, value=b'"' + b"x" * (600 * 1024) + b'"')
            rec = c.wait_result(tid, WAIT)
            eq((rec["status"], rec["error"]["kind"], rec["value"]), ("failure", "failed", b""),
               "oversized result")
            check("--max-payload-size" in rec["error"]["message"], rec["error"]["message"])
            sw.unregister()
        finally:
            c.close()
            sw.close()

    def check_keyed_worker_id_takeover(self):
        k = self._keyed()
        owner = fw.Subworker(k.sub, "py-owner", [{"name": "py_owned"}], key=k.key,
                             timeout=WAIT)
        again = None
        try:
            e = expect_raise(fw.Refused, "same id without the secret", fw.Subworker, k.sub,
                             "py-owner", [{"name": "py_owned"}], key=k.key, timeout=WAIT)
            check("in use" in str(e) and "pid" not in str(e).lower(), str(e))
            e = expect_raise(fw.Refused, "same id with a wrong secret", fw.Subworker, k.sub,
                             "py-owner", [{"name": "py_owned"}], key=k.key,
                             secret=os.urandom(32), timeout=WAIT)
            check("pid" not in str(e).lower(), str(e))
            # the holder of the secret may register again (a reconnect)
            again = fw.Subworker(k.sub, "py-owner", [{"name": "py_owned"}], key=k.key,
                                 secret=owner.secret, timeout=WAIT)
            eq(again.secret, owner.secret, "the same secret back")
            again.unregister()
            again.send(fw.encode_ping(1))
            again.recv_type("pong", WAIT)
        finally:
            owner.close()
            if again is not None:
                again.close()

    def check_keyed_message_size(self):
        k = self._keyed()
        with fw.RawClient(k.base, key=k.key) as c:
            big = fw.new_task("echo", b'["' + b"x" * (1024 * 1024) + b'"]')
            e = expect_raise(fw.MessageTooLarge, "over max-message-size", c.submit_task, big)
            eq(e.limit, 1024 * 1024, "the limit named")
            eq(c.status(big["id"]), None, "nothing was sent")
            eq(c.submit("add", [5, 3]), 8, "the connection is still open")
            # under max-message-size, over max-payload-size: Rejected naming the limit
            mid = fw.new_task("echo", b'["' + b"x" * (600 * 1024) + b'"]')
            e = expect_raise(fw.Rejected, "over max-payload-size", c.submit_task, mid, False)
            check("524288" in e.message and "--max-payload-size" in e.message, e.message)
        # a peer that declares more on the wire is disconnected by the guard: no answer
        s = zmq.Context.instance().socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        try:
            s.connect(k.base)
            s.send_multipart([b"FW\x01" + b"\x00" * (2 * 1024 * 1024)])
            check(not s.poll(1000), "an answer to an oversized message")
        finally:
            s.close(0)
        eq(fw.submit(k.base, "add", [2, 3], key=k.key), 5, "still serving")


def _pe_fields():
    w = fw.Writer()
    w.string("reloaded")
    w.string("py")
    w.string("/tmp/py.so")
    w.option(None, w.string)
    w.option("2", w.string)
    w.string("py reloaded")
    return w.parts


def wait_ready(address, proc, timeout=20.0, key=None, log_path=None):
    """Until the control plane answers a Ping and (given its log) has printed its
    "ready" line, which comes once its own subworker registered its tasks."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the control plane exited with %s" % proc.returncode)
        if log_path is not None:
            with open(log_path) as f:
                if "ready on" not in f.read():
                    time.sleep(0.05)
                    continue
        r = None
        try:
            r = Raw(address, key=key)
            r.send(fw.encode_ping(1))
            if r.recv(timeout=0.5)["type"] == "pong":
                return
        except (AssertionError, fw.FastworkerError):
            time.sleep(0.1)
        finally:
            if r is not None:
                r.close()
    raise RuntimeError("the control plane did not answer within %.0f s" % timeout)


def endpoints(taken):
    """Three free local endpoints (base, discovery, subworker), none in `taken`."""
    ports = set()
    while len(ports) < 3:
        port = free_port()
        if port not in taken:
            ports.add(port)
    taken.update(ports)
    base_port, disc_port, sub_port = sorted(ports)
    return ["tcp://127.0.0.1:%d" % p for p in (base_port, disc_port, sub_port)] + [sub_port]


def start_control_plane(binary, tmp, name, base, discovery, sub_port, extra=()):
    log_path = os.path.join(tmp, name + ".log")
    log = open(log_path, "w")
    env = dict(os.environ)
    for var in ("FASTWORKER_AUTH_KEY", "FASTWORKER_AUTH_KEY_FILE"):
        env.pop(var, None)  # only what the command line says
    proc = subprocess.Popen(
        [binary, "control-plane", "--task-modules", "mytasks", "--no-gui",
         "--base-address", base, "--discovery-address", discovery,
         "--subworker-port", str(sub_port)] + list(extra),
        cwd=tmp, stdout=log, stderr=subprocess.STDOUT, env=env)
    return proc, log, log_path


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def main(argv):
    if len(argv) != 3:
        print("usage: %s FASTWORKER_BINARY LIBMYTASKS_SO" % argv[0], file=sys.stderr)
        return 2
    binary, plugin = os.path.abspath(argv[1]), os.path.abspath(argv[2])
    for path in (binary, plugin):
        if not os.path.isfile(path):
            print("no such file: %s (build with `cargo build --workspace`)" % path,
                  file=sys.stderr)
            return 2
    tmp = tempfile.mkdtemp(prefix="fw-protocol-")
    os.mkdir(os.path.join(tmp, "plugins"))
    shutil.copy(plugin, os.path.join(tmp, "plugins", "mytasks.so"))
    taken = set()
    base, discovery, sub, sub_port = endpoints(taken)
    kbase, kdiscovery, ksub, ksub_port = endpoints(taken)
    key_file = os.path.join(tmp, "cluster.key")
    running = []  # (proc, log, log_path), each stopped at the end
    passed = failed = 0
    try:
        proc, log, log_path = start_control_plane(binary, tmp, "control-plane", base,
                                                  discovery, sub_port)
        running.append((proc, log, log_path))
        keyed = None
        try:
            subprocess.run([binary, "keygen", key_file], capture_output=True, timeout=30,
                           check=True)
            kproc, klog, klog_path = start_control_plane(
                binary, tmp, "keyed-control-plane", kbase, kdiscovery, ksub_port,
                ["--auth-key-file", key_file, "--max-message-size", "1MiB",
                 "--max-payload-size", "512KiB"])
            running.append((kproc, klog, klog_path))
            keyed = Keyed(kbase, kdiscovery, ksub, key_file)
        except Exception as e:  # noqa: BLE001
            print("      (the keyed control plane did not start: %s)" % e)
        wait_ready(base, proc, log_path=log_path)
        if keyed is not None:
            try:
                wait_ready(kbase, running[1][0], key=keyed.key, log_path=running[1][2])
            except Exception as e:  # noqa: BLE001
                print("      (the keyed control plane is not ready: %s)" % e)
                keyed = None
        checks = Checks(binary, base, discovery, sub, keyed)
        for name in [n for n in dir(Checks) if n.startswith("check_")]:
            start = time.monotonic()
            try:
                getattr(checks, name)()
                passed += 1
                print("ok    %s (%.2f s)" % (name, time.monotonic() - start))
            except Exception as e:  # noqa: BLE001
                failed += 1
                print("FAIL  %s: %s" % (name, e))
                traceback.print_exc()
    except Exception as e:  # noqa: BLE001
        failed += 1
        print("FAIL  setup: %s" % e)
    finally:
        for proc, log, _ in running:
            stop(proc)
            log.close()
        if failed:
            for _, _, log_path in running:
                with open(log_path) as f:
                    print("--- %s (last 40 lines) ---" % os.path.basename(log_path))
                    print("".join(f.readlines()[-40:]))
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
