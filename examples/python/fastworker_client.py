#!/usr/bin/env python3
"""A small fastworker client in Python, written from docs/PROTOCOL.md.

Needs pyzmq (``pip install pyzmq``); everything else is the standard library.

Library use::

    import fastworker_client as fw
    fw.submit("tcp://127.0.0.1:5555", "add", [5, 3])            # -> 8
    task_id = fw.submit(addr, "sleep_ms", [2000], wait=False)   # -> "6f1c...-..."
    fw.status(addr, task_id)                                     # -> dict or None
    fw.cancel(addr, task_id)                                     # -> {"outcome": "signalled", ...}
    fw.discover("tcp://127.0.0.1:5550")                          # -> dict

Or keep one connection open with ``Client(address)``.

With a cluster key (a control plane started with ``--auth-key-file``), pass it::

    key = fw.load_key("/etc/fastworker/cluster.key")  # or fw.load_key(): from the env
    fw.submit(addr, "add", [5, 3], key=key)
    with fw.Client(addr, key=key) as c: ...

``key`` may be a loaded ``ClusterKey`` or the key text itself (64 hex digits).
``load_key()`` without a path reads ``FASTWORKER_AUTH_KEY_FILE`` (a file) or else
``FASTWORKER_AUTH_KEY`` (the key text), like the Rust binary. Only the standard library
(``hmac``, ``hashlib``, ``os``) is used for the handshake and the seals.

``Subworker(address, worker_id, tasks, key=...)`` is a minimal subworker: it registers,
keeps the secret of its ``Registered`` and answers each ``Assign`` with its lease.

Command line::

    python3 fastworker_client.py --control-plane-address tcp://127.0.0.1:5555 add 5 3
    python3 fastworker_client.py --discovery-address tcp://127.0.0.1:5550 echo '{"a":[1]}'
    python3 fastworker_client.py --control-plane-address ... --non-blocking sleep_ms 2000
    python3 fastworker_client.py --control-plane-address ... --status TASK_ID
    python3 fastworker_client.py --control-plane-address ... --cancel TASK_ID
    python3 fastworker_client.py --auth-key-file cluster.key --control-plane-address ... add 5 3
"""

import argparse
import hashlib
import hmac
import json
import os
import struct
import sys
import time
import uuid

import zmq

PROTOCOL_VERSION = 1
MAGIC = b"FW"

# --- enums (index = position) -------------------------------------------------

PEER_KINDS = ["client", "subworker", "control_plane"]
CODECS = ["json", "bincode"]
PRIORITIES = ["critical", "high", "normal", "low"]
TASK_STATUSES = ["pending", "scheduled", "queued", "assigned", "running",
                 "success", "failure", "retrying", "cancelled"]
FINAL_STATUSES = ("success", "failure", "cancelled")
ERROR_KINDS = ["failed", "panicked", "bad_arguments", "encode_failed", "cancelled",
               "timed_out", "unknown_task", "worker_lost", "rejected", "internal"]
CANCEL_OUTCOMES = ["cancelled", "signalled", "already_finished", "not_found"]

# ToControlPlane variant indexes
HELLO, SUBMIT, SUBMIT_BATCH, STATUS, CANCEL, REGISTER, HEARTBEAT, OUTCOME, \
    TASKS_CHANGED, DRAINING, UNREGISTER, PING, DISCOVER, PLUGIN_EVENT, DEAD_LETTERS, \
    REPLAY, RESTARTING, EVENTS = range(18)

# FromControlPlane variant indexes
FROM_NAMES = ["welcome", "refused", "accepted", "rejected", "result", "status_reply",
              "cancel_reply", "assign", "cancel_task", "heartbeat_ack", "pong", "announce",
              "dead_letter_list", "event_list", "registered"]

LEASE_LEN = 16    # LeaseToken: 16 raw bytes (a fixed array: no length prefix)
SECRET_LEN = 32   # WorkerSecret: 32 raw bytes (likewise)

# The limits a control plane announces in Welcome.features (these are its defaults).
DEFAULT_MAX_PAYLOAD_SIZE = 64 * 1024 * 1024
DEFAULT_MAX_MESSAGE_SIZE = 80 * 1024 * 1024


# --- errors -------------------------------------------------------------------

class FastworkerError(Exception):
    """Base class of everything this module raises."""


class ProtocolError(FastworkerError):
    """A message could not be read, or an unexpected one arrived."""


class Refused(FastworkerError):
    """The control plane refused the connection (Refused{reason})."""


class AuthRefused(Refused):
    """The cluster-key handshake failed: the server sent a Refuse frame (wrong key, or a
    server without a key), or could not prove it knows our key."""


class MessageTooLarge(FastworkerError):
    """A request was not sent: its frames add up to more than the server's
    max-message-size (the server would disconnect us)."""

    def __init__(self, size, limit):
        super().__init__("the request is %d bytes, over the server's max-message-size of %d "
                         "bytes: not sent" % (size, limit))
        self.size, self.limit = size, limit


class Timeout(FastworkerError):
    """No answer in time."""


class Rejected(FastworkerError):
    """The control plane refused a request (Rejected{request_id, error})."""

    def __init__(self, kind, message, request_id=0):
        super().__init__("%s: %s" % (kind, message))
        self.kind, self.message, self.request_id = kind, message, request_id


class TaskFailed(FastworkerError):
    """The task ended without success (status failure or cancelled)."""

    def __init__(self, task_id, status, kind, message, record=None):
        super().__init__("task %s ended %s: %s: %s" % (task_id, status, kind, message))
        self.task_id, self.status, self.kind, self.message = task_id, status, kind, message
        self.record = record


# --- primitive encoding (PROTOCOL.md §3) ---------------------------------------

class Writer:
    def __init__(self):
        self.parts = []

    def u8(self, v):
        self.parts.append(struct.pack("<B", v))

    def u32(self, v):
        self.parts.append(struct.pack("<I", v))

    def u64(self, v):
        self.parts.append(struct.pack("<Q", v))

    def i64(self, v):
        self.parts.append(struct.pack("<q", v))

    def f64(self, v):
        self.parts.append(struct.pack("<d", v))

    def bool(self, v):
        self.u8(1 if v else 0)

    def string(self, s):
        b = s.encode("utf-8")
        self.u64(len(b))
        self.parts.append(b)

    def uuid(self, u):
        if not isinstance(u, uuid.UUID):
            u = uuid.UUID(str(u))
        self.u64(16)
        self.parts.append(u.bytes)

    def option(self, v, write):
        if v is None:
            self.u8(0)
        else:
            self.u8(1)
            write(v)

    def vec(self, items, write):
        self.u64(len(items))
        for item in items:
            write(item)

    def getvalue(self):
        return b"".join(self.parts)


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n):
        if self.pos + n > len(self.data):
            raise ProtocolError("truncated message")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def u8(self):
        return self.take(1)[0]

    def u32(self):
        return struct.unpack("<I", self.take(4))[0]

    def u64(self):
        return struct.unpack("<Q", self.take(8))[0]

    def i64(self):
        return struct.unpack("<q", self.take(8))[0]

    def f64(self):
        return struct.unpack("<d", self.take(8))[0]

    def bool(self):
        b = self.u8()
        if b > 1:
            raise ProtocolError("bad bool %d" % b)
        return b == 1

    def string(self):
        return self.take(self.u64()).decode("utf-8")

    def uuid(self):
        n = self.u64()
        if n != 16:
            raise ProtocolError("a task id has %d bytes, not 16" % n)
        return str(uuid.UUID(bytes=bytes(self.take(16))))

    def option(self, read):
        tag = self.u8()
        if tag == 0:
            return None
        if tag == 1:
            return read()
        raise ProtocolError("bad option tag %d" % tag)

    def vec(self, read):
        return [read() for _ in range(self.u64())]

    def enum(self, names):
        i = self.u32()
        if i >= len(names):
            raise ProtocolError("unknown variant %d" % i)
        return names[i]

    def end(self):
        if self.pos != len(self.data):
            raise ProtocolError("%d trailing bytes" % (len(self.data) - self.pos))


# --- shared types (PROTOCOL.md §4) ---------------------------------------------

def new_task(name, payload, codec="json", priority="normal", task_id=None,
             not_before_ms=0, timeout_secs=None, retry=None):
    """A task envelope as a dict; payload is bytes (the encoded arguments)."""
    return {
        "id": str(task_id or uuid.uuid4()),
        "name": name,
        "codec": codec,
        "priority": priority,
        "attempt": 1,
        "delivery_count": 0,
        "not_before_ms": not_before_ms,
        "deadline_ms": 0,
        "timeout_secs": timeout_secs,
        "retry": dict(retry or {}),
        "callback": None,
        "trace": None,
        "countdown_ms": 0,
        "payload": payload,
    }


def write_envelope(w, t):
    w.uuid(t["id"])
    w.string(t["name"])
    w.u32(CODECS.index(t.get("codec", "json")))
    w.u32(PRIORITIES.index(t.get("priority", "normal")))
    w.u32(t.get("attempt", 1))
    w.u32(t.get("delivery_count", 0))
    w.u64(t.get("not_before_ms", 0))
    w.u64(t.get("deadline_ms", 0))
    w.option(t.get("timeout_secs"), w.f64)
    retry = t.get("retry") or {}
    w.option(retry.get("max_retries"), w.u32)
    w.option(retry.get("delay_secs"), w.f64)
    w.option(retry.get("backoff"), w.f64)
    w.option(retry.get("backoff_max_secs"), w.f64)
    w.option(retry.get("jitter"), w.bool)
    w.option(t.get("callback"), lambda c: (w.string(c["address"]), w.string(c["data"])))
    w.option(t.get("trace"), lambda c: (w.string(c["traceparent"]), w.string(c["tracestate"])))
    w.u64(t.get("countdown_ms", 0))
    # payload: a frame of its own


def read_envelope(r):
    t = {"id": r.uuid(), "name": r.string(), "codec": r.enum(CODECS),
         "priority": r.enum(PRIORITIES), "attempt": r.u32(), "delivery_count": r.u32(),
         "not_before_ms": r.u64(), "deadline_ms": r.u64(), "timeout_secs": r.option(r.f64)}
    t["retry"] = {"max_retries": r.option(r.u32), "delay_secs": r.option(r.f64),
                  "backoff": r.option(r.f64), "backoff_max_secs": r.option(r.f64),
                  "jitter": r.option(r.bool)}
    t["callback"] = r.option(lambda: {"address": r.string(), "data": r.string()})
    t["trace"] = r.option(lambda: {"traceparent": r.string(), "tracestate": r.string()})
    t["countdown_ms"] = r.u64()
    return t


def read_error(r):
    return {"kind": r.enum(ERROR_KINDS), "message": r.string()}


def write_error(w, e):
    w.u32(ERROR_KINDS.index(e["kind"]))
    w.string(e["message"])


def read_record(r):
    return {"task_id": r.uuid(), "name": r.string(), "status": r.enum(TASK_STATUSES),
            "codec": r.enum(CODECS), "error": r.option(lambda: read_error(r)),
            "worker_id": r.option(r.string), "attempts": r.u32(),
            "delivery_count": r.u32(), "submitted_ms": r.u64(),
            "started_ms": r.option(r.u64), "completed_ms": r.option(r.u64)}


def write_task_spec(w, s):
    w.string(s["name"])
    w.u32(s.get("max_retries", 0))
    w.f64(s.get("retry_delay_secs", 60.0))
    w.f64(s.get("retry_backoff", 2.0))
    w.f64(s.get("retry_backoff_max_secs", 3600.0))
    w.option(s.get("timeout_secs"), w.f64)
    w.option(s.get("periodic"), lambda p: (
        w.option(p.get("interval_secs"), w.f64),
        w.option(p.get("cron"), w.string),
        w.option(p.get("repeat_count"), w.u64),
        w.option(p.get("repeat_until_unix"), w.i64)))
    w.u32(PRIORITIES.index(s.get("priority", "normal")))


# --- messages (PROTOCOL.md §5, §6) ----------------------------------------------

def _header(variant):
    w = Writer()
    w.parts.append(MAGIC + bytes([PROTOCOL_VERSION]))
    w.u32(variant)
    return w


def encode_hello(peer_id, peer_kind="client", features=()):
    w = _header(HELLO)
    w.u8(PROTOCOL_VERSION)
    w.u32(PEER_KINDS.index(peer_kind))
    w.string(peer_id)
    w.vec(list(features), w.string)
    return [w.getvalue()]


def encode_submit(request_id, task, wait):
    w = _header(SUBMIT)
    w.u64(request_id)
    write_envelope(w, task)
    w.bool(wait)
    return [w.getvalue(), task["payload"]]


def encode_submit_batch(request_id, tasks, wait):
    w = _header(SUBMIT_BATCH)
    w.u64(request_id)
    w.vec(tasks, lambda t: write_envelope(w, t))
    w.bool(wait)
    return [w.getvalue()] + [t["payload"] for t in tasks]


def encode_status(request_id, task_id, wait=False):
    w = _header(STATUS)
    w.u64(request_id)
    w.uuid(task_id)
    w.bool(wait)
    return [w.getvalue()]


def encode_cancel(request_id, task_id):
    w = _header(CANCEL)
    w.u64(request_id)
    w.uuid(task_id)
    return [w.getvalue()]


def _fixed_bytes(value, n, what):
    """bytes of exactly n (a lease, a secret); hex text is accepted too."""
    if isinstance(value, str):
        value = bytes.fromhex(value)
    value = bytes(value)
    if len(value) != n:
        raise TypeError("%s must be %d bytes, got %d" % (what, n, len(value)))
    return value


def encode_register(worker_id, tasks, concurrency=1, address=None, pid=None,
                    secret=None, running=()):
    """Register(Registration). secret: the 32 bytes of the last Registered under this
    worker id (None the first time). running: claims of tasks still running from
    before a reconnect, each (task_id, lease) or {"task_id", "lease"}."""
    w = _header(REGISTER)
    w.string(worker_id)
    w.vec(list(tasks), lambda s: write_task_spec(w, s))
    w.u32(concurrency)
    w.option(address, w.string)
    w.u32(os.getpid() if pid is None else pid)  # informational only
    w.option(secret, lambda v: w.parts.append(_fixed_bytes(v, SECRET_LEN, "a worker secret")))

    def claim(c):
        task_id, lease = (c["task_id"], c["lease"]) if isinstance(c, dict) else c
        w.uuid(task_id)
        w.parts.append(_fixed_bytes(lease, LEASE_LEN, "a lease"))
    w.vec(list(running), claim)
    return [w.getvalue()]


def encode_heartbeat(running, free_slots):
    w = _header(HEARTBEAT)
    w.u32(running)
    w.u32(free_slots)
    return [w.getvalue()]


def encode_outcome(task_id, delivery_count, lease, error=None, value=b"",
                   started_ms=0, completed_ms=0):
    """Outcome(TaskOutcome). lease: the 16 bytes of the Assign it answers (an outcome
    with another lease is ignored). error None = Success (value is the encoded
    result); else {kind, message} and an empty value frame."""
    w = _header(OUTCOME)
    w.uuid(task_id)
    w.u32(delivery_count)
    w.parts.append(_fixed_bytes(lease, LEASE_LEN, "a lease"))
    if error is None:
        w.u32(0)
    else:
        w.u32(1)
        write_error(w, error)
    w.u64(started_ms)
    w.u64(completed_ms)
    return [w.getvalue(), value if error is None else b""]


def encode_dead_letters(request_id):
    w = _header(DEAD_LETTERS)
    w.u64(request_id)
    return [w.getvalue()]


def encode_replay(request_id, task_id):
    w = _header(REPLAY)
    w.u64(request_id)
    w.uuid(task_id)
    return [w.getvalue()]


def encode_events(request_id):
    w = _header(EVENTS)
    w.u64(request_id)
    return [w.getvalue()]


def encode_unit(variant):
    """Draining, Unregister, Discover, Restarting."""
    return [_header(variant).getvalue()]


def encode_ping(nonce):
    w = _header(PING)
    w.u64(nonce)
    return [w.getvalue()]


def decode(frames):
    """A FromControlPlane message (list of frames) as a dict with a "type" key."""
    if not frames or len(frames[0]) < 3 or frames[0][:2] != MAGIC:
        raise ProtocolError("not a fastworker message (bad magic)")
    if frames[0][2] != PROTOCOL_VERSION:
        raise ProtocolError("protocol version %d is not supported" % frames[0][2])
    r = Reader(frames[0][3:])
    index = r.u32()
    if index >= len(FROM_NAMES):
        # A variant added after this client was written: skip the whole message.
        return {"type": "unknown", "variant": index}
    kind = FROM_NAMES[index]
    msg = {"type": kind}
    payload_slot = None  # (dict, key) receiving the single payload frame, if any
    if kind == "welcome":
        msg.update(protocol_version=r.u8(), control_plane_id=r.string(),
                   features=r.vec(r.string))
    elif kind == "refused":
        msg["reason"] = r.string()
    elif kind == "accepted":
        msg.update(request_id=r.u64(), task_ids=r.vec(r.uuid))
    elif kind == "rejected":
        msg.update(request_id=r.u64(), error=read_error(r))
    elif kind == "result":
        msg["record"] = read_record(r)
        payload_slot = (msg["record"], "value")
    elif kind == "status_reply":
        msg["request_id"] = r.u64()
        msg["record"] = r.option(lambda: read_record(r))
        if msg["record"] is not None:
            payload_slot = (msg["record"], "value")
    elif kind == "cancel_reply":
        msg["request_id"] = r.u64()
        outcome = r.enum(CANCEL_OUTCOMES)
        msg["outcome"] = outcome
        msg["status"] = r.enum(TASK_STATUSES) if outcome == "already_finished" else None
    elif kind == "assign":
        msg["task"] = read_envelope(r)
        msg["lease"] = bytes(r.take(LEASE_LEN))  # send it back in the Outcome
        msg["epoch"] = r.u64()  # the control plane's epoch (refuse older ones)
        payload_slot = (msg["task"], "payload")
    elif kind == "cancel_task":
        msg["task_id"] = r.uuid()
    elif kind == "pong":
        msg["nonce"] = r.u64()
    elif kind == "announce":
        msg.update(control_plane_id=r.string(), base_address=r.string(),
                   subworker_address=r.option(r.string), protocol_version=r.u8())
    elif kind == "dead_letter_list":
        msg["request_id"] = r.u64()
        msg["records"] = r.vec(lambda: read_record(r))
        for record in msg["records"]:  # values are not sent
            record["value"], record["result"] = b"", None
    elif kind == "event_list":
        msg["request_id"] = r.u64()
        msg["events"] = r.vec(lambda: {"at_ms": r.u64(), "kind": r.string(),
                                       "subject": r.string(), "message": r.string()})
    elif kind == "registered":
        msg["secret"] = bytes(r.take(SECRET_LEN))  # show it when registering again
    r.end()
    expected = 1 if payload_slot else 0
    if len(frames) - 1 != expected:
        raise ProtocolError("message has %d payload frames, its header lists %d"
                            % (len(frames) - 1, expected))
    if payload_slot:
        payload_slot[0][payload_slot[1]] = bytes(frames[1])
    if "record" in msg and msg["record"] is not None:
        _add_result(msg["record"])
    return msg


def _add_result(record):
    """Adds "result": the value decoded from JSON (None when empty or not JSON)."""
    value = record.get("value", b"")
    record["result"] = None
    if value and record["codec"] == "json":
        record["result"] = json.loads(value.decode("utf-8"))


# --- cluster key (PROTOCOL.md "Authentication (cluster key)") -----------------------

AUTH_MAGIC = b"FK"
AUTH_VERSION = 1
HS_CLIENT_HELLO, HS_CHALLENGE, HS_CLIENT_PROOF, HS_ACCEPT, HS_REFUSE = 1, 2, 3, 4, 5
KEY_LEN = 32                 # a key, a nonce, a proof, a tag
SEAL_LEN = 8 + KEY_LEN       # the seal frame: sequence number + tag
LABEL_CLIENT_PROOF = b"fastworker/1 client proof"
LABEL_SERVER_PROOF = b"fastworker/1 server proof"
INFO_CLIENT_TO_SERVER = b"fastworker/1 client to server"
INFO_SERVER_TO_CLIENT = b"fastworker/1 server to client"


class ClusterKey:
    """One cluster key, or two during a rotation: the first is the one this client
    proves with; a server proof made with either is accepted."""

    def __init__(self, keys):
        keys = [bytes(k) for k in keys]
        if not 1 <= len(keys) <= 2 or any(len(k) != KEY_LEN for k in keys):
            raise ValueError("a cluster key is one or two keys of 32 bytes")
        self.keys = keys

    def __repr__(self):
        return "ClusterKey(%d key(s), not shown)" % len(self.keys)

    @classmethod
    def parse(cls, text):
        """64 hex digits per key, one per line or comma-separated; blank lines and `#`
        comments are ignored; one or two keys."""
        keys = []
        for line in text.splitlines():
            line = line.split("#", 1)[0]
            for word in (w.strip() for w in line.split(",")):
                if not word:
                    continue
                try:
                    if len(word) != 2 * KEY_LEN:
                        raise ValueError
                    keys.append(bytes.fromhex(word))
                except ValueError:
                    raise ValueError(
                        "a cluster key is 64 hex digits (32 bytes); found %d characters "
                        "that are not one (make one with `fastworker keygen FILE`)"
                        % len(word)) from None
        if not keys:
            raise ValueError("no cluster key found (make one with `fastworker keygen FILE`)")
        if len(keys) > 2:
            raise ValueError("%d cluster keys given; at most two (the current one and, "
                             "during a rotation, the next)" % len(keys))
        return cls(keys)

    @classmethod
    def load(cls, path):
        """Reads a key file (as written by `fastworker keygen FILE`)."""
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            return cls.parse(text)
        except ValueError as e:
            raise ValueError("%s: %s" % (path, e)) from None


def load_key(path=None, environ=None):
    """The cluster key from `path`; without one, from the file named by
    FASTWORKER_AUTH_KEY_FILE, else from the key text in FASTWORKER_AUTH_KEY; None
    when none is set."""
    env = os.environ if environ is None else environ
    path = path or env.get("FASTWORKER_AUTH_KEY_FILE") or None
    if path:
        return ClusterKey.load(path)
    text = env.get("FASTWORKER_AUTH_KEY", "")
    if text.strip():
        try:
            return ClusterKey.parse(text)
        except ValueError as e:
            raise ValueError("FASTWORKER_AUTH_KEY: %s" % e) from None
    return None


def as_key(key):
    """None, a ClusterKey, key text (str), or 32 raw bytes -> None or a ClusterKey."""
    if key is None or isinstance(key, ClusterKey):
        return key
    if isinstance(key, (bytes, bytearray)) and len(key) == KEY_LEN:
        return ClusterKey([key])
    if isinstance(key, (bytes, bytearray)):
        key = key.decode("utf-8")
    return ClusterKey.parse(key)


def _hmac(key, *parts):
    m = hmac.new(key, digestmod=hashlib.sha256)
    for p in parts:
        m.update(p)
    return m.digest()


def hkdf_sha256(salt, ikm, info, length=KEY_LEN):
    """HKDF-SHA256 (RFC 5869)."""
    prk = _hmac(salt, ikm)
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = _hmac(prk, block, info, bytes([i]))
        out += block
        i += 1
    return out[:length]


def handshake_frame(kind, body):
    return AUTH_MAGIC + bytes([AUTH_VERSION, kind]) + body


def parse_handshake(frames):
    """(kind, body) of a message that is one handshake frame, else None."""
    if len(frames) != 1:
        return None
    f = bytes(frames[0])
    if len(f) < 4 or f[:3] != AUTH_MAGIC + bytes([AUTH_VERSION]):
        return None
    kind, body = f[3], f[4:]
    if kind in (HS_CLIENT_HELLO, HS_CHALLENGE, HS_CLIENT_PROOF, HS_ACCEPT):
        return (kind, body) if len(body) == KEY_LEN else None
    if kind == HS_REFUSE and len(body) <= 4096:
        return kind, body
    return None


def seal_tag(session_key, seq, frames):
    """HMAC-SHA256(key, seq u64 LE || frame count u32 LE || per frame: len u64 LE || bytes)."""
    m = hmac.new(session_key, digestmod=hashlib.sha256)
    m.update(struct.pack("<Q", seq))
    m.update(struct.pack("<I", len(frames)))
    for f in frames:
        m.update(struct.pack("<Q", len(f)))
        m.update(f)
    return m.digest()


class Session:
    """Both directions of an authenticated connection, client side."""

    def __init__(self, key, cn, sn):
        salt = cn + sn
        self.send_key = hkdf_sha256(salt, key, INFO_CLIENT_TO_SERVER)
        self.recv_key = hkdf_sha256(salt, key, INFO_SERVER_TO_CLIENT)
        self.next_seq, self.last_seq = 1, 0

    def seal(self, frames):
        """frames + the seal frame."""
        seq = self.next_seq
        self.next_seq += 1
        frames = [bytes(f) for f in frames]
        return frames + [struct.pack("<Q", seq) + seal_tag(self.send_key, seq, frames)]

    def open(self, frames):
        """frames without their seal; raises ProtocolError for a missing or wrong seal
        or a replayed (not strictly increasing) sequence number."""
        if len(frames) < 2 or len(frames[-1]) != SEAL_LEN:
            raise ProtocolError("a message without a valid seal")
        seal, frames = bytes(frames[-1]), [bytes(f) for f in frames[:-1]]
        seq = struct.unpack("<Q", seal[:8])[0]
        if not hmac.compare_digest(seal_tag(self.recv_key, seq, frames), seal[8:]):
            raise ProtocolError("a message whose seal does not match")
        if seq <= self.last_seq:
            raise ProtocolError("a replayed message (sequence %d, last %d)"
                                % (seq, self.last_seq))
        self.last_seq = seq
        return frames


class Connection:
    """A DEALER connected to one endpoint (control plane, discovery, a subworker's
    status endpoint). With a key, it runs the cluster-key handshake right after
    connecting, then seals everything it sends and checks and strips the seal of
    everything it receives. It sends nothing whose frames add up to more than
    `max_message_size` (raises MessageTooLarge)."""

    def __init__(self, address, key=None, timeout=10.0, context=None,
                 max_message_size=DEFAULT_MAX_MESSAGE_SIZE):
        self.address, self.timeout = address, timeout
        self.key = as_key(key)
        self.max_message_size = max_message_size
        self.session = None
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
        try:
            self.socket.connect(address)
            if self.key is not None:
                self.session = self._authenticate(time.monotonic() + timeout)
        except BaseException:
            self.close()
            raise

    def _raw_recv(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not self.socket.poll(int(remaining * 1000) + 1):
            raise Timeout("no answer from %s in time" % self.address)
        return self.socket.recv_multipart()

    def _authenticate(self, deadline):
        cn = os.urandom(KEY_LEN)
        self.socket.send_multipart([handshake_frame(HS_CLIENT_HELLO, cn)])

        def answer(expected, what):
            frames = self._raw_recv(deadline)
            hs = parse_handshake(frames)
            if hs is not None and hs[0] == HS_REFUSE:
                raise AuthRefused("%s refused the connection: %s"
                                  % (self.address, hs[1].decode("utf-8", "replace")))
            if hs is None or hs[0] != expected:
                try:
                    msg = decode(frames)
                except ProtocolError:
                    msg = None
                if msg is not None and msg["type"] == "refused":
                    raise AuthRefused("%s refused the connection: %s"
                                      % (self.address, msg["reason"]))
                raise ProtocolError("%s did not take part in the cluster-key handshake (%s)"
                                    % (self.address, what))
            return hs[1]

        sn = answer(HS_CHALLENGE, "no challenge")
        proof = _hmac(self.key.keys[0], LABEL_CLIENT_PROOF, cn, sn)
        self.socket.send_multipart([handshake_frame(HS_CLIENT_PROOF, proof)])
        server_proof = answer(HS_ACCEPT, "no answer to the proof")
        for k in self.key.keys:
            if hmac.compare_digest(_hmac(k, LABEL_SERVER_PROOF, cn, sn), server_proof):
                return Session(k, cn, sn)
        raise AuthRefused("%s could not prove it knows the cluster key: not talking to it"
                          % self.address)

    def send(self, frames):
        """Sends one message (sealed, with a key); refuses locally one over the limit."""
        frames = [bytes(f) for f in frames]
        size = sum(len(f) for f in frames) + (SEAL_LEN if self.session else 0)
        if size > self.max_message_size:
            raise MessageTooLarge(size, self.max_message_size)
        if self.session is not None:
            frames = self.session.seal(frames)
        self.socket.send_multipart(frames)

    def recv_frames(self, timeout=None, deadline=None):
        """The next message's frames (checked and unsealed, with a key)."""
        if deadline is None:
            deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        frames = self._raw_recv(deadline)
        if self.session is not None:
            frames = self.session.open(frames)
        return frames

    def recv(self, timeout=None, deadline=None):
        """The next message, decoded (see decode)."""
        return decode(self.recv_frames(timeout, deadline))

    def close(self):
        self.socket.close(0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _limits(features):
    """{"max-payload-size": N, "max-message-size": N} from Welcome.features."""
    out = {"max-payload-size": DEFAULT_MAX_PAYLOAD_SIZE,
           "max-message-size": DEFAULT_MAX_MESSAGE_SIZE}
    for f in features:
        name, _, value = f.partition("=")
        if name in out and value.isdigit():
            out[name] = int(value)
    return out


# --- the client -----------------------------------------------------------------

class Client:
    """One connection to a control plane, after Hello/Welcome (and, with a key, the
    cluster-key handshake before them)."""

    def __init__(self, address, timeout=10.0, peer_id=None, context=None, key=None):
        self.address, self.timeout = address, timeout
        self.conn = Connection(address, key=key, timeout=timeout, context=context)
        self.socket = self.conn.socket
        self.next_request = 1
        self.results = {}   # task id -> record, Results that arrived while waiting for else
        try:
            self.conn.send(encode_hello(peer_id or "py-client-%d" % os.getpid()))
            welcome = self._wait(lambda m: m["type"] in ("welcome", "refused"), timeout)
        except BaseException:
            self.close()
            raise
        if welcome["type"] == "refused":
            self.close()
            raise Refused(welcome["reason"])
        self.control_plane_id = welcome["control_plane_id"]
        self.features = welcome["features"]
        self.limits = _limits(self.features)
        # Never send what the control plane's guard would disconnect us for.
        self.conn.max_message_size = self.limits["max-message-size"]

    def close(self):
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, frames):
        """Sends one message (sealed with a key; MessageTooLarge if over the limit)."""
        self.conn.send(frames)

    # Receiving: every wait is bounded by a deadline.
    def _recv(self, deadline):
        return self.conn.recv(deadline=deadline)

    def _wait(self, accept, timeout):
        deadline = time.monotonic() + timeout
        while True:
            msg = self._recv(deadline)
            if accept(msg):
                return msg
            self._stash(msg)

    def _stash(self, msg):
        if msg["type"] == "result":
            self.results[msg["record"]["task_id"]] = msg["record"]
        # Anything else (late replies, unknown variants) is ignored.

    def _request(self, encode, timeout=None):
        request_id = self.next_request
        self.next_request += 1
        self.conn.send(encode(request_id))
        # Rejected{0, ...} answers a request that could not be read: this one.
        msg = self._wait(lambda m: m.get("request_id") in (request_id, 0)
                         and m["type"] != "result", timeout or self.timeout)
        if msg["type"] == "rejected":
            raise Rejected(msg["error"]["kind"], msg["error"]["message"], msg["request_id"])
        return msg

    def submit_task(self, task, wait=True):
        """Submits an envelope (see new_task); returns its id. With wait, the Result
        will be pushed: collect it with wait_result."""
        msg = self._request(lambda rid: encode_submit(rid, task, wait))
        if msg["type"] != "accepted":
            raise ProtocolError("unexpected answer %r" % msg)
        return msg["task_ids"][0]

    def submit_batch(self, tasks, wait=True):
        """All or none; returns the ids in submission order."""
        msg = self._request(lambda rid: encode_submit_batch(rid, tasks, wait))
        if msg["type"] != "accepted":
            raise ProtocolError("unexpected answer %r" % msg)
        return msg["task_ids"]

    def wait_result(self, task_id, timeout=None):
        """The final record pushed for a task submitted with wait=True."""
        task_id = str(task_id)
        if task_id in self.results:
            return self.results.pop(task_id)
        msg = self._wait(lambda m: m["type"] == "result"
                         and m["record"]["task_id"] == task_id, timeout or self.timeout)
        return msg["record"]

    def submit(self, task_name, args, priority="normal", wait=True, timeout=None,
               task_id=None):
        """Runs task_name with args (JSON-encodable list). With wait, returns the
        result value or raises TaskFailed; without, returns the task id."""
        payload = json.dumps(list(args), separators=(",", ":")).encode("utf-8")
        task = new_task(task_name, payload, priority=priority, task_id=task_id)
        task_id = self.submit_task(task, wait)
        if not wait:
            return task_id
        record = self.wait_result(task_id, timeout or self.timeout)
        if record["status"] != "success":
            err = record["error"] or {"kind": "internal", "message": "no error recorded"}
            raise TaskFailed(task_id, record["status"], err["kind"], err["message"], record)
        return record["result"]

    def status(self, task_id, wait=False, timeout=None):
        """The task's record as a dict (with "result" decoded), or None if unknown."""
        msg = self._request(lambda rid: encode_status(rid, task_id, wait), timeout)
        if msg["type"] != "status_reply":
            raise ProtocolError("unexpected answer %r" % msg)
        return msg["record"]

    def cancel(self, task_id):
        """{"outcome": cancelled|signalled|already_finished|not_found, "status": ...}"""
        msg = self._request(lambda rid: encode_cancel(rid, task_id))
        if msg["type"] != "cancel_reply":
            raise ProtocolError("unexpected answer %r" % msg)
        return {"outcome": msg["outcome"], "status": msg["status"]}

    def dead_letters(self):
        """The dead-lettered tasks' records (without values), oldest first."""
        msg = self._request(encode_dead_letters)
        if msg["type"] != "dead_letter_list":
            raise ProtocolError("unexpected answer %r" % msg)
        return msg["records"]

    def replay(self, task_id):
        """Queues a dead-lettered task again (same id); raises Rejected otherwise."""
        msg = self._request(lambda rid: encode_replay(rid, task_id))
        if msg["type"] != "accepted":
            raise ProtocolError("unexpected answer %r" % msg)
        return msg["task_ids"][0]

    def events(self):
        """The control plane's recent events (dicts at_ms, kind, subject, message)."""
        msg = self._request(encode_events)
        if msg["type"] != "event_list":
            raise ProtocolError("unexpected answer %r" % msg)
        return msg["events"]

    def ping(self, nonce=42):
        self.conn.send(encode_ping(nonce))
        return self._wait(lambda m: m["type"] == "pong" and m["nonce"] == nonce,
                          self.timeout)["nonce"]


class Subworker:
    """A minimal subworker: Hello + Register, then whatever the caller does with the
    Assigns. Keeps the secret of its Registered (show it to register again under the
    same worker id) and the lease of every Assign (an Outcome must carry it)."""

    def __init__(self, address, worker_id, tasks, concurrency=1, key=None, secret=None,
                 running=(), status_address=None, timeout=10.0, context=None):
        self.worker_id, self.timeout = worker_id, timeout
        self.conn = Connection(address, key=key, timeout=timeout, context=context)
        self.leases = {}    # task id -> lease of its latest Assign
        self.pending = []   # messages that arrived while registering
        try:
            self.conn.send(encode_hello(worker_id, peer_kind="subworker"))
            self.conn.send(encode_register(worker_id, tasks, concurrency, status_address,
                                           secret=secret, running=running))
            deadline = time.monotonic() + timeout
            welcome = self._until(("welcome", "refused"), deadline)
            if welcome["type"] == "welcome":
                self.features = welcome["features"]
                self.limits = _limits(self.features)
                self.conn.max_message_size = self.limits["max-message-size"]
                answer = self._until(("registered", "refused", "rejected"), deadline)
            else:
                answer = welcome
            if answer["type"] == "refused":
                raise Refused(answer["reason"])
            if answer["type"] == "rejected":
                raise Rejected(answer["error"]["kind"], answer["error"]["message"])
            self.secret = answer["secret"]
        except BaseException:
            self.close()
            raise

    def _until(self, kinds, deadline):
        while True:
            msg = self.conn.recv(deadline=deadline)
            if msg["type"] in kinds:
                return msg
            self.pending.append(msg)

    def send(self, frames):
        self.conn.send(frames)

    def recv(self, timeout=None):
        """The next message (Assign, CancelTask, HeartbeatAck, ...); an Assign's lease
        is remembered for its outcome."""
        msg = self.pending.pop(0) if self.pending else self.conn.recv(timeout)
        if msg["type"] == "assign":
            self.leases[msg["task"]["id"]] = msg["lease"]
        return msg

    def recv_type(self, kind, timeout=None):
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            msg = self.recv(max(0.001, deadline - time.monotonic()))
            if msg["type"] == kind:
                return msg

    def send_outcome(self, task, value=b"", error=None, lease=None, started_ms=None,
                     completed_ms=None):
        """Reports an attempt of `task` (the envelope of an Assign) under its lease."""
        now = int(time.time() * 1000)
        self.conn.send(encode_outcome(
            task["id"], task["delivery_count"],
            self.leases[task["id"]] if lease is None else lease, error=error, value=value,
            started_ms=now if started_ms is None else started_ms,
            completed_ms=now if completed_ms is None else completed_ms))

    def heartbeat(self, running=0, free_slots=1):
        self.conn.send(encode_heartbeat(running, free_slots))

    def unregister(self):
        self.conn.send(encode_unit(UNREGISTER))

    def close(self):
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --- module-level helpers ---------------------------------------------------------

def submit(address, task_name, args, priority="normal", wait=True, timeout=10, key=None):
    """Connects, submits, returns the result value (wait) or the task id (no wait).
    Raises Rejected (e.g. kind unknown_task) or TaskFailed (kind failed, ...)."""
    with Client(address, timeout=timeout, key=key) as c:
        return c.submit(task_name, args, priority=priority, wait=wait, timeout=timeout)


def status(address, task_id, wait=False, timeout=10, key=None):
    """The task's record as a dict, or None if the control plane does not know it."""
    with Client(address, timeout=timeout, key=key) as c:
        return c.status(task_id, wait=wait, timeout=timeout)


def cancel(address, task_id, timeout=10, key=None):
    """{"outcome": "cancelled" | "signalled" | "already_finished" | "not_found",
    "status": the final status for already_finished, else None}"""
    with Client(address, timeout=timeout, key=key) as c:
        return c.cancel(task_id)


def discover(discovery_address, timeout=5, context=None, key=None):
    """Asks the discovery endpoint where the control plane is: a dict with
    control_plane_id, base_address, subworker_address, protocol_version."""
    with Connection(discovery_address, key=key, timeout=timeout, context=context) as conn:
        conn.send(encode_unit(DISCOVER))
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = conn.recv(deadline=deadline)
            except Timeout:
                raise Timeout("no announcement from %s" % discovery_address) from None
            if msg["type"] == "announce":
                del msg["type"]
                return msg
            if msg["type"] == "refused":
                raise Refused(msg["reason"])
            if msg["type"] == "rejected":
                raise Rejected(msg["error"]["kind"], msg["error"]["message"])


# --- command line ------------------------------------------------------------------

def parse_arg(word):
    """Like `fastworker submit --args`: bool, int, float, JSON array/object/string/null,
    else the word as a string."""
    if word.lower() in ("true", "false"):
        return word.lower() == "true"
    try:
        return int(word)
    except ValueError:
        pass
    try:
        f = float(word)
        if f == f and f not in (float("inf"), float("-inf")):
            return f
    except ValueError:
        pass
    if word[:1] in ("[", "{", '"') or word == "null":
        try:
            return json.loads(word)
        except ValueError:
            pass
    return word


def main(argv=None):
    p = argparse.ArgumentParser(description="Submit a fastworker task (JSON codec).")
    p.add_argument("--control-plane-address", help="e.g. tcp://127.0.0.1:5555")
    p.add_argument("--discovery-address", default="tcp://127.0.0.1:5550",
                   help="used when --control-plane-address is not given")
    p.add_argument("--priority", default="normal", choices=PRIORITIES)
    p.add_argument("--non-blocking", action="store_true",
                   help="print the task id and return without waiting")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait")
    p.add_argument("--status", metavar="TASK_ID", help="print a task's record")
    p.add_argument("--cancel", metavar="TASK_ID", help="cancel a task")
    p.add_argument("--json", action="store_true", help="print the whole record as JSON")
    p.add_argument("--auth-key-file", metavar="FILE",
                   help="the cluster key file (default: $FASTWORKER_AUTH_KEY_FILE, else the "
                        "key text in $FASTWORKER_AUTH_KEY, else no key)")
    p.add_argument("task_name", nargs="?")
    p.add_argument("args", nargs="*")
    a = p.parse_args(argv)
    address = a.control_plane_address
    try:
        key = load_key(a.auth_key_file)
    except (OSError, ValueError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    try:
        if not address:
            address = discover(a.discovery_address, timeout=a.timeout,
                               key=key)["base_address"]
        if a.status:
            record = status(address, a.status, timeout=a.timeout, key=key)
            if record is not None:
                record = dict(record, value=record["value"].hex())
            print(json.dumps(record))
            return 0 if record is not None else 1
        if a.cancel:
            print(json.dumps(cancel(address, a.cancel, timeout=a.timeout, key=key)))
            return 0
        if not a.task_name:
            p.error("a task name is needed")
        args = [parse_arg(w) for w in a.args]
        with Client(address, timeout=a.timeout, key=key) as c:
            if a.non_blocking:
                print(c.submit(a.task_name, args, priority=a.priority, wait=False))
                return 0
            payload = json.dumps(args, separators=(",", ":")).encode("utf-8")
            task_id = c.submit_task(new_task(a.task_name, payload, priority=a.priority))
            record = c.wait_result(task_id, a.timeout)
        if a.json:
            print(json.dumps(dict(record, value=record["value"].hex())))
        elif record["status"] == "success":
            print(json.dumps(record["result"]))
        if record["status"] != "success":
            err = record["error"] or {"kind": "internal", "message": "no error recorded"}
            print("task %s ended %s: %s: %s" % (task_id, record["status"], err["kind"],
                                               err["message"]), file=sys.stderr)
            return 1
        return 0
    except FastworkerError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
