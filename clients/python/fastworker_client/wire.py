"""The wire protocol of docs/PROTOCOL.md, byte for byte: frames, version 1 (bincode)
and version 2 (JSON) headers, the cluster-key handshake and seals, and a bare
connection. The high-level :class:`fastworker_client.Client` is built on this; use this
module directly to speak the protocol by hand (the protocol self-check does).

Messages received are decoded into dicts with a ``"type"`` key (``"welcome"``,
``"accepted"``, ``"result"``...), with enum values in lower case (``"success"``,
``"normal"``, ``"json"``), whichever version they were written in.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
import time
import uuid
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import zmq

from .errors import (
    AuthRefused,
    FastworkerError,
    MessageTooLarge,
    ProtocolError,
    Refused,
    Rejected,
    TaskFailed,
    Timeout,
    rejected,
)

Frames = List[bytes]

PROTOCOL_VERSION = 1  # the version a Hello is written in (the oldest this package speaks)
MIN_PROTOCOL_VERSION = 1
MAX_PROTOCOL_VERSION = 2  # the newest: JSON headers, Tasks / TaskList
PROTOCOL_MAX_FEATURE = "protocol-max="
RESULTS_BATCH_FEATURE = "results-batch"
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
    REPLAY, RESTARTING, EVENTS, TASKS = range(19)

# FromControlPlane variant indexes
FROM_NAMES = ["welcome", "refused", "accepted", "rejected", "result", "status_reply",
              "cancel_reply", "assign", "cancel_task", "heartbeat_ack", "pong", "announce",
              "dead_letter_list", "event_list", "registered", "task_list"]

LEASE_LEN = 16    # LeaseToken: 16 raw bytes (a fixed array: no length prefix)
SECRET_LEN = 32   # WorkerSecret: 32 raw bytes (likewise)

# The limits a control plane announces in Welcome.features (these are its defaults).
DEFAULT_MAX_PAYLOAD_SIZE = 64 * 1024 * 1024
DEFAULT_MAX_MESSAGE_SIZE = 80 * 1024 * 1024



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


def decode(frames: Sequence[bytes]) -> Dict[str, Any]:
    """A FromControlPlane message (list of frames, without the seal) as a dict with a
    "type" key, in whichever version (1 or 2) its header is written."""
    if not frames or len(frames[0]) < 3 or frames[0][:2] != MAGIC:
        raise ProtocolError("not a fastworker message (bad magic)")
    if frames[0][2] == 2:
        return decode_v2(frames)
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


_PACK_SEQ_COUNT = struct.Struct("<QI").pack
_PACK_U64 = struct.Struct("<Q").pack
_UNPACK_U64 = struct.Struct("<Q").unpack_from


def seal_tag(session_key, seq, frames):
    """HMAC-SHA256(key, seq u64 LE || frame count u32 LE || per frame: len u64 LE || bytes)."""
    parts = [_PACK_SEQ_COUNT(seq, len(frames))]
    for f in frames:
        parts.append(_PACK_U64(len(f)))
        parts.append(f)
    return hmac.digest(session_key, b"".join(parts), "sha256")


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
        seal = frames[-1]
        frames = [f if type(f) is bytes else bytes(f) for f in frames[:-1]]
        seq = _UNPACK_U64(seal)[0]
        if not hmac.compare_digest(seal_tag(self.recv_key, seq, frames), bytes(seal[8:])):
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



# --- version 2: JSON headers (PROTOCOL.md §0.2) ------------------------------------

V2_PREFIX = MAGIC + b"\x02"

_PASCAL = {
    "critical": "Critical", "high": "High", "normal": "Normal", "low": "Low",
    "json": "Json", "bincode": "Bincode",
    "client": "Client", "subworker": "Subworker", "control_plane": "ControlPlane",
}
_LOWER_STATUS = {
    "Pending": "pending", "Scheduled": "scheduled", "Queued": "queued",
    "Assigned": "assigned", "Running": "running", "Success": "success",
    "Failure": "failure", "Retrying": "retrying", "Cancelled": "cancelled",
}
_LOWER_ENUM = {"Json": "json", "Bincode": "bincode", "Critical": "critical", "High": "high",
               "Normal": "normal", "Low": "low"}
_CANCEL_OUTCOME = {"Cancelled": "cancelled", "Signalled": "signalled",
                   "NotFound": "not_found"}


def _dumps(value: Any) -> bytes:
    """JSON as serde_json writes it: compact, UTF-8, fields in the order given."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode_v2(variant: str, body: Any = None, payloads: Sequence[bytes] = ()) -> Frames:
    """A version-2 message: the header ``FW 0x02 {"Variant": body}`` (or ``"Variant"``
    for a variant without fields), then the payload frames."""
    header = V2_PREFIX + _dumps(variant if body is None else {variant: body})
    return [header] + [bytes(p) for p in payloads]


def envelope_v2(t: Mapping[str, Any]) -> Dict[str, Any]:
    """A task envelope (as made by new_task) as the JSON object of version 2."""
    retry = t.get("retry") or {}
    return {
        "id": str(t["id"]),
        "name": t["name"],
        "codec": _PASCAL[t.get("codec", "json")],
        "priority": _PASCAL[t.get("priority", "normal")],
        "attempt": t.get("attempt", 1),
        "delivery_count": t.get("delivery_count", 0),
        "not_before_ms": t.get("not_before_ms", 0),
        "deadline_ms": t.get("deadline_ms", 0),
        "timeout_secs": _float_or_none(t.get("timeout_secs")),
        "retry": {
            "max_retries": retry.get("max_retries"),
            "delay_secs": _float_or_none(retry.get("delay_secs")),
            "backoff": _float_or_none(retry.get("backoff")),
            "backoff_max_secs": _float_or_none(retry.get("backoff_max_secs")),
            "jitter": retry.get("jitter"),
        },
        "callback": (None if t.get("callback") is None else
                     {"address": t["callback"]["address"], "data": t["callback"]["data"]}),
        "trace": (None if t.get("trace") is None else
                  {"traceparent": t["trace"]["traceparent"],
                   "tracestate": t["trace"]["tracestate"]}),
        "countdown_ms": t.get("countdown_ms", 0),
    }


def _float_or_none(v: Any) -> Optional[float]:
    return None if v is None else float(v)


def encode_hello_v2(peer_id: str, peer_kind: str = "client",
                    features: Sequence[str] = ()) -> Frames:
    """A Hello in version 2 (a Hello is normally written in version 1, see §0.1)."""
    return encode_v2("Hello", {"protocol_version": PROTOCOL_VERSION,
                               "peer_kind": _PASCAL[peer_kind], "peer_id": peer_id,
                               "features": list(features)})


def encode_submit_v2(request_id: int, task: Mapping[str, Any], wait: bool) -> Frames:
    return encode_v2("Submit", {"request_id": request_id, "task": envelope_v2(task),
                                "wait": bool(wait)}, [task["payload"]])


def encode_submit_batch_v2(request_id: int, tasks: Sequence[Mapping[str, Any]],
                           wait: bool) -> Frames:
    return encode_v2("SubmitBatch", {"request_id": request_id,
                                     "tasks": [envelope_v2(t) for t in tasks],
                                     "wait": bool(wait)}, [t["payload"] for t in tasks])


def encode_status_v2(request_id: int, task_id: str, wait: bool = False) -> Frames:
    return encode_v2("Status", {"request_id": request_id, "task_id": str(task_id),
                                "wait": bool(wait)})


def encode_cancel_v2(request_id: int, task_id: str) -> Frames:
    return encode_v2("Cancel", {"request_id": request_id, "task_id": str(task_id)})


def encode_replay_v2(request_id: int, task_id: str) -> Frames:
    return encode_v2("Replay", {"request_id": request_id, "task_id": str(task_id)})


def encode_dead_letters_v2(request_id: int) -> Frames:
    return encode_v2("DeadLetters", {"request_id": request_id})


def encode_events_v2(request_id: int) -> Frames:
    return encode_v2("Events", {"request_id": request_id})


def encode_tasks_v2(request_id: int) -> Frames:
    """``Tasks{request_id}``: what the cluster serves (version 2 only)."""
    return encode_v2("Tasks", {"request_id": request_id})


def encode_ping_v2(nonce: int) -> Frames:
    return encode_v2("Ping", {"nonce": nonce})


def encode_unit_v2(variant: str) -> Frames:
    """Discover, Draining, Unregister, Restarting."""
    return encode_v2(variant)


def _record_v2(r: Dict[str, Any]) -> Dict[str, Any]:
    r["status"] = _LOWER_STATUS.get(r["status"], r["status"])
    r["codec"] = _LOWER_ENUM.get(r["codec"], r["codec"])
    return r


def _spec_v2(s: Dict[str, Any]) -> Dict[str, Any]:
    s["priority"] = _LOWER_ENUM.get(s.get("priority"), s.get("priority"))
    s.setdefault("doc", "")
    s.setdefault("signature", "")
    return s


# Messages with payload frames: how many, and where each goes.
_V2_PAYLOAD_COUNT = {"result": 1, "assign": 1}


def decode_v2(frames: Sequence[bytes]) -> Dict[str, Any]:
    """A version-2 FromControlPlane message as the same dict decode() makes of version 1."""
    header = frames[0]
    try:
        body = json.loads(bytes(header[3:]))
    except ValueError as e:
        raise ProtocolError("malformed message: %s" % e) from None
    if isinstance(body, str):
        variant, fields = body, None
    elif isinstance(body, dict) and len(body) == 1:
        (variant, fields), = body.items()
    else:
        raise ProtocolError("malformed message: not an enum variant")
    msg: Dict[str, Any] = {}
    payload_slot: Optional[Tuple[Dict[str, Any], str]] = None
    if variant == "Welcome":
        msg["type"] = "welcome"
        msg.update(fields)
    elif variant == "Refused":
        msg.update(type="refused", reason=fields["reason"])
    elif variant == "Accepted":
        msg.update(type="accepted", request_id=fields["request_id"],
                   task_ids=list(fields["task_ids"]))
    elif variant == "Rejected":
        msg.update(type="rejected", request_id=fields["request_id"],
                   error={"kind": fields["error"]["kind"],
                          "message": fields["error"]["message"]})
    elif variant == "Result":
        msg.update(type="result", record=_record_v2(fields))
        payload_slot = (msg["record"], "value")
    elif variant == "StatusReply":
        msg.update(type="status_reply", request_id=fields["request_id"])
        record = fields.get("record")
        msg["record"] = None if record is None else _record_v2(record)
        if record is not None:
            payload_slot = (msg["record"], "value")
    elif variant == "CancelReply":
        outcome = fields["outcome"]
        msg.update(type="cancel_reply", request_id=fields["request_id"])
        if isinstance(outcome, dict) and "AlreadyFinished" in outcome:
            msg.update(outcome="already_finished",
                       status=_LOWER_STATUS.get(outcome["AlreadyFinished"]))
        else:
            msg.update(outcome=_CANCEL_OUTCOME.get(outcome, str(outcome)), status=None)
    elif variant == "Assign":
        task = fields["task"]
        task["codec"] = _LOWER_ENUM.get(task["codec"], task["codec"])
        task["priority"] = _LOWER_ENUM.get(task["priority"], task["priority"])
        msg.update(type="assign", task=task, lease=bytes(fields["lease"]),
                   epoch=fields["epoch"])
        payload_slot = (task, "payload")
    elif variant == "CancelTask":
        msg.update(type="cancel_task", task_id=fields["task_id"])
    elif variant == "HeartbeatAck":
        msg["type"] = "heartbeat_ack"
    elif variant == "Pong":
        msg.update(type="pong", nonce=fields["nonce"])
    elif variant == "Announce":
        msg["type"] = "announce"
        msg.update(fields)
    elif variant == "DeadLetterList":
        msg.update(type="dead_letter_list", request_id=fields["request_id"],
                   records=[_record_v2(r) for r in fields["records"]])
        for record in msg["records"]:  # values are not sent
            record["value"], record["result"] = b"", None
    elif variant == "EventList":
        msg.update(type="event_list", request_id=fields["request_id"],
                   events=list(fields["events"]))
    elif variant == "Registered":
        msg.update(type="registered", secret=bytes(fields["secret"]))
    elif variant == "TaskList":
        msg.update(type="task_list", request_id=fields["request_id"],
                   tasks=[{"spec": _spec_v2(t["spec"]), "workers": list(t["workers"])}
                          for t in fields["tasks"]])
    else:
        # A variant added after this package was written: skip the whole message.
        return {"type": "unknown", "variant": variant}
    expected = 1 if payload_slot else 0
    if len(frames) - 1 != expected:
        raise ProtocolError("message has %d payload frames, its header lists %d"
                            % (len(frames) - 1, expected))
    if payload_slot:
        payload_slot[0][payload_slot[1]] = bytes(frames[1])
    if msg.get("record") is not None:
        _add_result(msg["record"])
    return msg


def negotiated_version(welcome: Mapping[str, Any]) -> int:
    """The version a Welcome agreed on (the version its header, and later everything,
    is written in)."""
    v = int(welcome.get("protocol_version", 1))
    if not MIN_PROTOCOL_VERSION <= v <= MAX_PROTOCOL_VERSION:
        raise ProtocolError("the control plane welcomed us in protocol version %d" % v)
    return v


def hello_features() -> List[str]:
    """The features of our Hello: the newest version we speak (§0.1), and that we read
    Results (several results in one message)."""
    return [PROTOCOL_MAX_FEATURE + str(MAX_PROTOCOL_VERSION), RESULTS_BATCH_FEATURE]


def limits(features: Iterable[str]) -> Dict[str, int]:
    """{"max-payload-size": N, "max-message-size": N} from Welcome.features."""
    return _limits(features)


# --- a bare version-1 client (PROTOCOL.md §7 by hand; the protocol self-check uses it) ---

class RawClient:
    """One connection to a control plane speaking version 1 only (a Hello without
    ``protocol-max``), after Hello/Welcome (and, with a key, the cluster-key handshake
    before them). The high-level client is fastworker_client.Client."""

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
            raise TaskFailed(err["kind"], err["message"], task_id, record["status"], record)
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



def submit(address, task_name, args, priority="normal", wait=True, timeout=10, key=None):
    """Connects, submits, returns the result value (wait) or the task id (no wait).
    Raises Rejected (e.g. kind unknown_task) or TaskFailed (kind failed, ...)."""
    with RawClient(address, timeout=timeout, key=key) as c:
        return c.submit(task_name, args, priority=priority, wait=wait, timeout=timeout)


def status(address, task_id, wait=False, timeout=10, key=None):
    """The task's record as a dict, or None if the control plane does not know it."""
    with RawClient(address, timeout=timeout, key=key) as c:
        return c.status(task_id, wait=wait, timeout=timeout)


def cancel(address, task_id, timeout=10, key=None):
    """{"outcome": "cancelled" | "signalled" | "already_finished" | "not_found",
    "status": the final status for already_finished, else None}"""
    with RawClient(address, timeout=timeout, key=key) as c:
        return c.cancel(task_id)


