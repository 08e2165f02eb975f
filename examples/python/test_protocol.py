#!/usr/bin/env python3
"""End-to-end check of docs/PROTOCOL.md with the Python client, against a real control
plane. No pytest: exit 0 when every check passes, 1 otherwise.

    python3 examples/python/test_protocol.py target/debug/fastworker target/debug/libmytasks.so

It starts `fastworker control-plane` itself, on free ports, from a temporary directory
holding the plugin as plugins/mytasks.so, and stops it when done. Every wait is bounded.
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
sys.path.insert(0, HERE)

import zmq  # noqa: E402

import fastworker_client as fw  # noqa: E402

SNAPSHOTS = os.path.join(HERE, "..", "..", "host", "src", "protocol", "snapshots")
WAIT = 5.0  # seconds, for any single answer


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Raw:
    """A bare DEALER for sending hand-made frames."""

    def __init__(self, address):
        self.s = zmq.Context.instance().socket(zmq.DEALER)
        self.s.setsockopt(zmq.LINGER, 0)
        self.s.setsockopt(zmq.SNDTIMEO, int(WAIT * 1000))
        self.s.connect(address)

    def send(self, frames):
        self.s.send_multipart(frames)

    def recv(self, timeout=WAIT):
        if not self.s.poll(int(timeout * 1000)):
            raise AssertionError("no message within %.1f s" % timeout)
        return fw.decode(self.s.recv_multipart())

    def recv_type(self, kind, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if msg["type"] == kind:
                return msg

    def close(self):
        self.s.close(0)


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


class Checks:
    def __init__(self, binary, base, discovery, sub):
        self.binary, self.base, self.discovery, self.sub = binary, base, discovery, sub

    # --- encodings ---------------------------------------------------------------
    def check_snapshots(self):
        if not os.path.isdir(SNAPSHOTS):
            print("    (snapshots not found at %s; skipped)" % SNAPSHOTS)
            return

        def lines(name):
            with open(os.path.join(SNAPSHOTS, name + ".hex")) as f:
                return f.read().split("\n")[:-1]

        tid = "01010101-0101-0101-0101-010101010101"
        task = fw.new_task("add", b"[5,3]", task_id=tid)
        hx = lambda frames: [f.hex() for f in frames]  # noqa: E731
        eq(hx(fw.encode_hello("cli")), lines("hello"), "hello")
        eq(hx(fw.encode_submit(7, task, True)), lines("submit"), "submit")
        eq(hx(fw.encode_status(8, tid, False)), lines("status"), "status")
        eq(hx(fw.encode_outcome(tid, 1, {"kind": "failed", "message": "boom"},
                                started_ms=1, completed_ms=2)),
           lines("outcome_failure"), "outcome_failure")
        frames = lambda n: [bytes.fromhex(x) for x in lines(n)]  # noqa: E731
        eq(fw.decode(frames("accepted")),
           {"type": "accepted", "request_id": 7, "task_ids": [tid]}, "accepted")
        rec = fw.decode(frames("result"))["record"]
        eq((rec["status"], rec["worker_id"], rec["result"], rec["completed_ms"]),
           ("success", "sw1", 8, 1700000000002), "result")
        t = fw.decode(frames("assign"))["task"]
        eq((t["id"], t["name"], t["payload"], t["priority"]), (tid, "add", b"[5,3]", "normal"),
           "assign")

    # --- client basics --------------------------------------------------------------
    def check_add(self):
        eq(fw.submit(self.base, "add", [5, 3]), 8, "add(5, 3)")

    def check_cli_add(self):
        out = subprocess.run(
            [sys.executable, os.path.join(HERE, "fastworker_client.py"),
             "--control-plane-address", self.base, "add", "5", "3"],
            capture_output=True, text=True, timeout=30)
        eq((out.returncode, out.stdout), (0, "8\n"), "CLI add 5 3 (stderr: %s)" % out.stderr)

    def check_cli_discovery(self):
        out = subprocess.run(
            [sys.executable, os.path.join(HERE, "fastworker_client.py"),
             "--discovery-address", self.discovery, "add", "-2", "10"],
            capture_output=True, text=True, timeout=30)
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
        with fw.Client(self.base) as c:
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
        with fw.Client(self.base) as c:
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
        with fw.Client(self.base) as c:
            tid = c.submit("sleep_ms", [300], wait=False)
            rec = c.status(tid, wait=True, timeout=WAIT)
            eq((rec["status"], rec["result"], rec["value"]), ("success", 300, b"300"),
               "status wait")

    def check_batch(self):
        with fw.Client(self.base) as c:
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
            # an id already used
            try:
                c.submit("add", [1, 1], task_id=ids[0])
                raise AssertionError("reused id accepted")
            except fw.Rejected as e:
                eq(e.kind, "rejected", "reused id kind")

    def check_callback(self):
        router = zmq.Context.instance().socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        try:
            port = router.bind_to_random_port("tcp://127.0.0.1")
            task = fw.new_task("add", b"[20,22]")
            task["callback"] = {"address": "tcp://127.0.0.1:%d" % port, "data": "cb-data"}
            with fw.Client(self.base) as c:
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
               "subworker_address": self.sub, "protocol_version": 1}, "announcement")
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
            r.send([b"FW\x02" + fw.encode_hello("x")[0][3:]])
            eq(r.recv(), {"type": "refused", "reason":
                          "protocol version 2 is not supported (this peer speaks 1)"},
               "other header version")
            hello = bytearray(fw.encode_hello("x")[0])
            hello[7] = 2  # Hello.protocol_version
            eq(r.recv() if r.send([bytes(hello)]) is None else None,
               {"type": "refused", "reason":
                "protocol version 2 is not supported (this control plane speaks 1)"},
               "other Hello version")
            r.send([fw.encode_hello("x")[0] + b"\x00"])
            m = r.recv()
            eq((m["type"], m["request_id"]), ("rejected", 0), "trailing byte")
            check(m["error"]["message"].startswith("malformed message"), m["error"]["message"])
            r.send(fw.encode_hello("x"))
            eq(r.recv()["type"], "welcome", "welcome")
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
        c = fw.Client(self.base)
        try:
            sw.send(fw.encode_hello("py-sw", peer_kind="subworker"))
            sw.send(fw.encode_register("py-sw", [{"name": "py_upper"}], concurrency=1))
            w = sw.recv()
            eq((w["type"], w["control_plane_id"]), ("welcome", "control-plane"), "welcome")
            eq(sw.recv()["type"], "heartbeat_ack", "register acknowledged")
            sw.send(fw.encode_heartbeat(0, 1))
            eq(sw.recv()["type"], "heartbeat_ack", "heartbeat acknowledged")

            # success
            tid = c.submit_task(fw.new_task("py_upper", b'["abc"]'), wait=True)
            task = sw.recv_type("assign")["task"]
            eq((task["id"], task["name"], task["payload"], task["attempt"],
                task["delivery_count"]), (tid, "py_upper", b'["abc"]', 1, 1), "assign")
            args = json.loads(task["payload"])
            now = int(time.time() * 1000)
            sw.send(fw.encode_outcome(tid, task["delivery_count"],
                                      value=json.dumps(args[0].upper()).encode(),
                                      started_ms=now, completed_ms=now + 1))
            rec = c.wait_result(tid, WAIT)
            eq((rec["status"], rec["result"], rec["worker_id"], rec["started_ms"]),
               ("success", "ABC", "py-sw", now), "result via subworker")

            # failure
            tid = c.submit_task(fw.new_task("py_upper", b'["x"]'), wait=True)
            task = sw.recv_type("assign")["task"]
            sw.send(fw.encode_outcome(tid, task["delivery_count"] + 5,
                                      error={"kind": "failed", "message": "stale"}))
            sw.send(fw.encode_outcome(tid, task["delivery_count"],
                                      error={"kind": "failed", "message": "nope"}))
            rec = c.wait_result(tid, WAIT)
            eq((rec["status"], rec["error"]), ("failure", {"kind": "failed", "message": "nope"}),
               "failure via subworker (stale outcome ignored)")

            # cancel of a task running on the subworker
            tid = c.submit_task(fw.new_task("py_upper", b'["y"]'), wait=True)
            task = sw.recv_type("assign")["task"]
            eq(c.cancel(tid)["outcome"], "signalled", "cancel on subworker")
            eq(sw.recv_type("cancel_task")["task_id"], tid, "CancelTask")
            sw.send(fw.encode_outcome(tid, task["delivery_count"],
                                      error={"kind": "failed", "message": "stopped"}))
            rec = c.wait_result(tid, WAIT)
            eq((rec["status"], rec["error"]),
               ("cancelled", {"kind": "cancelled", "message": "cancelled (stopped)"}),
               "cancelled via subworker")

            # draining: accepted (still known) but not assigned
            sw.send(fw.encode_unit(fw.DRAINING))
            tid = c.submit("py_upper", ["z"], wait=False)
            time.sleep(0.3)
            eq(c.status(tid)["status"], "queued", "no assignment while draining")
            # unregister: the name is no longer known
            sw.send(fw.encode_unit(fw.UNREGISTER))
            time.sleep(0.2)
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
        def connect_worker():
            sw = Raw(self.sub)
            sw.send(fw.encode_hello("py-dl", peer_kind="subworker"))
            sw.send(fw.encode_register("py-dl", [{"name": "py_dl"}], concurrency=1))
            eq(sw.recv()["type"], "welcome", "welcome")
            eq(sw.recv()["type"], "heartbeat_ack", "registered")
            return sw

        c = fw.Client(self.base)
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
            task = sw.recv_type("assign")["task"]
            eq((task["id"], task["attempt"], task["delivery_count"], task["payload"]),
               (tid, 1, 1, b"[7]"), "replayed assignment")
            sw.send(fw.encode_outcome(tid, 1, value=b"49"))
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


def _pe_fields():
    w = fw.Writer()
    w.string("reloaded")
    w.string("py")
    w.string("/tmp/py.so")
    w.option(None, w.string)
    w.option("2", w.string)
    w.string("py reloaded")
    return w.parts


def wait_ready(address, proc, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the control plane exited with %s" % proc.returncode)
        r = Raw(address)
        try:
            r.send(fw.encode_ping(1))
            if r.recv(timeout=0.5)["type"] == "pong":
                return
        except AssertionError:
            pass
        finally:
            r.close()
    raise RuntimeError("the control plane did not answer within %.0f s" % timeout)


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
    ports = set()
    while len(ports) < 3:
        ports.add(free_port())
    base_port, disc_port, sub_port = sorted(ports)
    base = "tcp://127.0.0.1:%d" % base_port
    discovery = "tcp://127.0.0.1:%d" % disc_port
    sub = "tcp://127.0.0.1:%d" % sub_port
    log_path = os.path.join(tmp, "control-plane.log")
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [binary, "control-plane", "--task-modules", "mytasks", "--no-gui",
         "--base-address", base, "--discovery-address", discovery,
         "--subworker-port", str(sub_port)],
        cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
    passed = failed = 0
    try:
        wait_ready(base, proc)
        checks = Checks(binary, base, discovery, sub)
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
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        log.close()
        if failed:
            with open(log_path) as f:
                print("--- control plane log (last 40 lines) ---")
                print("".join(f.readlines()[-40:]))
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
