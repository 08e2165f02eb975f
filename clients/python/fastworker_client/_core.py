"""What the blocking and the asyncio clients share: options, records, the request and
task tables, encoding for the agreed protocol version, dispatching what arrives, and
what to send again after a reconnect. No I/O here."""

from __future__ import annotations

import datetime as _dt
import enum
import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from . import wire
from .errors import FastworkerError, ProtocolError, rejected, task_failed

Frames = List[bytes]



_DECODE = json.JSONDecoder().raw_decode
# One encoder for every payload: json.dumps with options builds a new one each call.
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

class Priority(str, enum.Enum):
    """Task priority, most urgent first."""

    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


PriorityLike = Union[Priority, str]
FINAL_STATUSES = ("success", "failure", "cancelled")


@dataclass(frozen=True)
class TaskError:
    """Why a task failed: its error kind (``failed``, ``panicked``, ``bad_arguments``,
    ``timed_out``, ``cancelled``, ``worker_lost``...) and message."""

    kind: str
    message: str


@dataclass
class TaskRecord:
    """What the control plane knows about a task."""

    task_id: str
    name: str
    status: str
    codec: str = "json"
    error: Optional[TaskError] = None
    worker_id: Optional[str] = None
    attempts: int = 0
    delivery_count: int = 0
    submitted_ms: int = 0
    started_ms: Optional[int] = None
    completed_ms: Optional[int] = None
    value: bytes = b""

    @property
    def is_final(self) -> bool:
        """Success, failure and cancelled are final."""
        return self.status in FINAL_STATUSES

    @property
    def result(self) -> Any:
        """The value, decoded from JSON (None unless the status is success)."""
        if self.status != "success" or not self.value:
            return None
        if self.codec != "json":
            return self.value
        if self.value.isdigit():  # a non-negative integer, the commonest result
            return int(self.value)
        return json.loads(self.value)

    @classmethod
    def from_wire(cls, r: Dict[str, Any]) -> "TaskRecord":
        err = r.get("error")
        return cls(r["task_id"], r["name"], r["status"], r.get("codec", "json"),
                   None if err is None else TaskError(err["kind"], err["message"]),
                   r.get("worker_id"), r.get("attempts", 0), r.get("delivery_count", 0),
                   r.get("submitted_ms", 0), r.get("started_ms"), r.get("completed_ms"),
                   r.get("value", b""))


@dataclass(frozen=True)
class ServedTask:
    """A task the cluster serves, with its plugin's defaults and the workers serving it."""

    name: str
    doc: str
    signature: str
    workers: List[str]
    max_retries: int = 0
    retry_delay_secs: float = 60.0
    retry_backoff: float = 2.0
    retry_backoff_max_secs: float = 3600.0
    timeout_secs: Optional[float] = None
    periodic: Optional[Dict[str, Any]] = None
    priority: str = "normal"


@dataclass(frozen=True)
class Event:
    """Something that happened in the cluster (``worker.registered``, ``plugin.reloaded``...)."""

    at_ms: int
    kind: str
    subject: str
    message: str


@dataclass(frozen=True)
class CancelResult:
    """How a cancel ended: ``outcome`` is ``cancelled`` (it had not started),
    ``signalled`` (it is running; its worker was told to stop), ``already_finished``
    (``status`` says how) or ``not_found``."""

    outcome: str
    status: Optional[str] = None


class TaskState:
    """One task this client submitted and waits for."""

    __slots__ = ("id", "name", "task", "env_json", "payload", "record", "accepted",
                 "exc", "done", "waiter", "last_check")

    def __init__(self, task_id: str, name: str, task: Dict[str, Any], env_json: Optional[str],
                 payload: bytes) -> None:
        self.id = task_id
        self.name = name
        self.task = task          # the envelope fields (for version 1), without the payload
        self.env_json = env_json  # the envelope as version-2 JSON
        self.payload = payload
        self.record: Optional[TaskRecord] = None
        self.accepted = False
        self.exc: Optional[BaseException] = None
        self.done = False
        self.waiter: Any = None   # an asyncio future, for the asyncio client
        self.last_check = 0.0


class Request:
    """A request waiting for its answer."""

    __slots__ = ("rid", "kind", "build", "states", "reply", "exc", "done", "waiter", "resent",
                 "due")

    def __init__(self, rid: int, kind: str, build: Callable[[int, int], Frames],
                 states: Sequence[TaskState] = ()) -> None:
        self.rid = rid
        self.kind = kind
        self.build = build          # (version, request id) -> frames
        self.states = list(states)
        self.reply: Optional[Dict[str, Any]] = None
        self.exc: Optional[BaseException] = None
        self.done = False
        self.waiter: Any = None
        self.resent = False
        self.due = 0.0


# --- options -------------------------------------------------------------------------

_PRIORITIES = ("critical", "high", "normal", "low")


def _priority(p: Optional[PriorityLike]) -> str:
    if p is None:
        return "normal"
    value = p.value if isinstance(p, Priority) else str(p).lower()
    if value not in _PRIORITIES:
        raise ValueError("priority must be one of %s, not %r" % (", ".join(_PRIORITIES), p))
    return value


def _eta_ms(eta: Union[None, float, int, _dt.datetime]) -> int:
    if eta is None:
        return 0
    if isinstance(eta, _dt.datetime):
        if eta.tzinfo is None:
            eta = eta.astimezone()  # a naive datetime is local time
        return int(eta.timestamp() * 1000)
    return int(float(eta) * 1000)


def task_fields(
    name: str,
    *,
    priority: Optional[PriorityLike] = None,
    countdown: Optional[float] = None,
    eta: Union[None, float, int, _dt.datetime] = None,
    max_retries: Optional[int] = None,
    retry_delay: Optional[float] = None,
    retry_backoff: Optional[float] = None,
    retry_backoff_max: Optional[float] = None,
    retry_jitter: Optional[bool] = None,
    timeout: Optional[float] = None,
    callback_address: Optional[str] = None,
    callback_data: Optional[str] = None,
) -> Dict[str, Any]:
    """The envelope fields (PROTOCOL.md §4.2 TaskEnvelope) for these options."""
    if not isinstance(name, str) or not name:
        raise ValueError("a task name is a non-empty string")
    if countdown is not None and countdown < 0:
        raise ValueError("countdown must not be negative")
    if callback_address is None and callback_data is not None:
        raise ValueError("callback_data needs a callback_address")
    return {
        "name": name,
        "codec": "json",
        "priority": _priority(priority),
        "attempt": 1,
        "delivery_count": 0,
        "not_before_ms": _eta_ms(eta),
        "deadline_ms": 0,
        "timeout_secs": None if timeout is None else float(timeout),
        "retry": {
            "max_retries": None if max_retries is None else int(max_retries),
            "delay_secs": None if retry_delay is None else float(retry_delay),
            "backoff": None if retry_backoff is None else float(retry_backoff),
            "backoff_max_secs": None if retry_backoff_max is None else float(retry_backoff_max),
            "jitter": None if retry_jitter is None else bool(retry_jitter),
        },
        "callback": (None if callback_address is None else
                     {"address": callback_address, "data": callback_data or ""}),
        "trace": None,
        "countdown_ms": 0 if countdown is None else int(round(countdown * 1000)),
    }


SUBMIT_OPTIONS = ("priority", "countdown", "eta", "max_retries", "retry_delay",
                  "retry_backoff", "retry_backoff_max", "retry_jitter", "timeout",
                  "callback_address", "callback_data")

_ID_MARK = "@@task-id@@"


def envelope_suffix(fields: Dict[str, Any]) -> str:
    """The version-2 JSON of an envelope after its id: ``'{"id":"' + id + suffix``."""
    text = wire._dumps(wire.envelope_v2(dict(fields, id=_ID_MARK))).decode("utf-8")
    head = '{"id":"' + _ID_MARK + '"'
    assert text.startswith(head)
    return '"' + text[len(head):]


def encode_args(args: Sequence[Any]) -> bytes:
    """The JSON payload: an array of the arguments (PROTOCOL.md §12)."""
    return _ENCODE(list(args)).encode("utf-8")


class IdMaker:
    """Fresh task ids: a random UUID-shaped prefix per client and a counter (cheap, and
    unique: 64 random bits per client)."""

    def __init__(self) -> None:
        h = uuid.uuid4().hex
        self.prefix = "%s-%s-4%s-8%s-" % (h[:8], h[8:12], h[13:16], h[17:20])
        self.base = int.from_bytes(os.urandom(6), "big") & 0x0000FFFFFFFFFFFF
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return "%s%012x" % (self.prefix, (self.base + self.n) & 0xFFFFFFFFFFFF)


def normalize_id(task_id: Any) -> str:
    return str(uuid.UUID(str(task_id)))


def _record(r: Dict[str, Any], value: bytes) -> "TaskRecord":
    """A TaskRecord from a version-2 record object and its value frame."""
    err = r["error"]
    return TaskRecord(r["task_id"], r["name"], wire._LOWER_STATUS.get(r["status"], r["status"]),
                      "json" if r["codec"] == "Json" else "bincode",
                      None if err is None else TaskError(err["kind"], err["message"]),
                      r["worker_id"], r["attempts"], r["delivery_count"],
                      r["submitted_ms"], r["started_ms"], r["completed_ms"], value)


def map_value(state: "TaskState", return_exceptions: bool) -> Any:
    """What ``map`` yields for a finished task: its value; for a task that failed, its
    exception, raised (or returned, with ``return_exceptions``)."""
    if state.exc is not None:
        exc: BaseException = state.exc
    else:
        record = state.record
        assert record is not None
        if record.status == "success":
            return record.result
        exc = task_failed(record)
    if return_exceptions:
        return exc
    raise exc


class CoreView:
    """What the blocking and the asyncio clients read from their ``_core``."""

    _core: "Core"

    @property
    def protocol_version(self) -> int:
        """The protocol version agreed with the control plane (2 for a current one)."""
        return self._core.version

    @property
    def limits(self) -> Dict[str, int]:
        """The control plane's limits from its Welcome (message and payload bytes)."""
        return dict(self._core.limits)

    @property
    def control_plane_id(self) -> str:
        return self._core.control_plane_id

    @property
    def reconnects(self) -> int:
        """How many times this client connected again."""
        return self._core.reconnects


class HandleBase:
    """What the blocking and the asyncio task handles share: the task's state, its id
    and name, and whether its final record has arrived."""

    def __init__(self, client: Any, state: "TaskState", pushed: bool = True) -> None:
        self._client = client
        self._state = state
        self._pushed = pushed

    @property
    def id(self) -> str:
        return self._state.id

    @property
    def name(self) -> str:
        return self._state.name

    def __repr__(self) -> str:
        return "%s(%r, id=%r)" % (type(self).__name__, self._state.name, self._state.id)

    def done(self) -> bool:
        """Whether its final record has arrived (without waiting)."""
        return self._state.done


# --- the shared state machine ----------------------------------------------------------

class Core:
    """Requests and tasks in flight on one logical connection (across reconnects)."""

    def __init__(self, reconnect_grace: float = 15.0) -> None:
        self.version = 1
        self.limits = {"max-payload-size": wire.DEFAULT_MAX_PAYLOAD_SIZE,
                       "max-message-size": wire.DEFAULT_MAX_MESSAGE_SIZE}
        self.control_plane_id = ""
        self.features: List[str] = []
        self.next_rid = 1
        self.requests: Dict[int, Request] = {}
        self.tasks: Dict[str, TaskState] = {}
        self.deferred: List[Request] = []
        self.new_id = IdMaker()
        self.reconnect_grace = reconnect_grace
        self.grace_until = 0.0
        self.reconnects = 0
        self.on_request_done: Optional[Callable[[Request], None]] = None
        self.on_task_done: Optional[Callable[[TaskState], None]] = None

    # -- building requests ---------------------------------------------------------------
    def rid(self) -> int:
        r = self.next_rid
        self.next_rid += 1
        return r

    def request(self, kind: str, build: Callable[[int, int], Frames],
                states: Sequence[TaskState] = ()) -> Request:
        req = Request(self.rid(), kind, build, states)
        self.requests[req.rid] = req
        return req

    def new_state(self, fields: Dict[str, Any], args: Sequence[Any],
                  task_id: Optional[str] = None, suffix: Optional[str] = None) -> TaskState:
        tid = normalize_id(task_id) if task_id is not None else self.new_id()
        if suffix is None:
            suffix = envelope_suffix(fields)
        return TaskState(tid, fields["name"], fields, '{"id":"' + tid + suffix,
                         encode_args(args))

    def submit_request(self, states: Sequence[TaskState], batch: bool) -> Request:
        """A Submit (one task) or SubmitBatch, with wait: every result is pushed."""
        states = list(states)
        for s in states:
            self.tasks[s.id] = s

        if batch or len(states) != 1:
            def build(version: int, rid: int) -> Frames:
                if version >= 2:
                    header = ('{"SubmitBatch":{"request_id":%d,"tasks":[%s],"wait":true}}'
                              % (rid, ",".join(s.env_json for s in states)))
                    return [wire.V2_PREFIX + header.encode("utf-8")] + [s.payload for s in states]
                return wire.encode_submit_batch(rid, [_v1_task(s) for s in states], True)
            return self.request("batch", build, states)

        s = states[0]

        def build_one(version: int, rid: int) -> Frames:
            if version >= 2:
                header = '{"Submit":{"request_id":%d,"task":%s,"wait":true}}' % (rid, s.env_json)
                return [wire.V2_PREFIX + header.encode("utf-8"), s.payload]
            return wire.encode_submit(rid, _v1_task(s), True)
        return self.request("submit", build_one, states)

    def simple_request(self, kind: str, task_id: Optional[str] = None,
                       wait: bool = False) -> Request:
        def build(version: int, rid: int) -> Frames:
            if version >= 2:
                if kind == "status":
                    return wire.encode_status_v2(rid, task_id or "", wait)
                if kind == "cancel":
                    return wire.encode_cancel_v2(rid, task_id or "")
                if kind == "replay":
                    return wire.encode_replay_v2(rid, task_id or "")
                if kind == "dead_letters":
                    return wire.encode_dead_letters_v2(rid)
                if kind == "events":
                    return wire.encode_events_v2(rid)
                if kind == "tasks":
                    return wire.encode_tasks_v2(rid)
            else:
                if kind == "status":
                    return wire.encode_status(rid, task_id, wait)
                if kind == "cancel":
                    return wire.encode_cancel(rid, task_id)
                if kind == "replay":
                    return wire.encode_replay(rid, task_id)
                if kind == "dead_letters":
                    return wire.encode_dead_letters(rid)
                if kind == "events":
                    return wire.encode_events(rid)
                if kind == "tasks":
                    raise FastworkerError(
                        "the control plane speaks protocol version 1 only: it cannot list "
                        "the tasks it serves (Tasks needs version 2)")
            raise ValueError(kind)
        return self.request(kind, build)

    def frames_of(self, req: Request) -> Frames:
        return req.build(self.version, req.rid)

    # -- what arrives ------------------------------------------------------------------------
    def welcome(self, msg: Dict[str, Any]) -> None:
        self.version = wire.negotiated_version(msg)
        self.control_plane_id = msg.get("control_plane_id", "")
        self.features = list(msg.get("features", []))
        self.limits = wire.limits(self.features)

    def result_header(self, header: bytes, value: bytes) -> bool:
        """The fast path for a version-2 Result: True when handled."""
        if not header.startswith(b'FW\x02{"Result":'):
            return False
        # raw_decode on text skips json.loads' encoding detection: this runs once
        # for every result.
        self.finish_task(_record(_DECODE(header[13:-1].decode("utf-8"))[0], value))
        return True

    def results_frames(self, frames: Sequence[bytes]) -> bool:
        """A version-2 Results (several final records, each value in a frame of its
        own): True when handled."""
        header = frames[0]
        if not header.startswith(b'FW\x02{"Results":'):
            return False
        records = _DECODE(header[14:-1].decode("utf-8"))[0]["records"]
        if len(records) != len(frames) - 1:
            raise ProtocolError("a Results message with %d records and %d value frames"
                                % (len(records), len(frames) - 1))
        for r, value in zip(records, frames[1:]):
            self.finish_task(_record(r, value))
        return True

    def dispatch(self, msg: Dict[str, Any]) -> None:
        t = msg["type"]
        if t == "result":
            self.finish_task(TaskRecord.from_wire(msg["record"]))
            return
        rid = msg.get("request_id")
        if rid is None:
            return  # pong, announce, unknown variants...
        req = self.requests.get(rid)
        if req is None and rid == 0 and t == "rejected" and self.requests:
            req = self.requests[min(self.requests)]  # the request that could not be read
        if req is None:
            return  # a late answer
        if t == "rejected":
            err = msg["error"]
            if (err["kind"] == "unknown_task" and req.kind in ("submit", "batch")
                    and time.monotonic() < self.grace_until):
                # Just after a reconnect, the subworkers may not have registered again
                # with a restarted control plane yet: send it again a little later.
                del self.requests[req.rid]
                req.due = time.monotonic() + 0.2
                self.deferred.append(req)
                return
            exc = rejected(err["kind"], err["message"], rid)
            if req.kind in ("submit", "batch"):
                for s in req.states:
                    self.fail_task(s, exc)  # nothing of it was accepted (all or none)
            self.complete(req, None, exc)
            return
        if req.kind in ("submit", "batch") and t == "accepted":
            for s in req.states:
                s.accepted = True
        self.complete(req, msg, None)

    def complete(self, req: Request, reply: Optional[Dict[str, Any]],
                 exc: Optional[BaseException]) -> None:
        self.requests.pop(req.rid, None)
        req.reply, req.exc, req.done = reply, exc, True
        if self.on_request_done is not None:
            self.on_request_done(req)

    def finish_task(self, record: TaskRecord) -> None:
        s = self.tasks.pop(record.task_id, None)
        if s is None or s.done:
            return
        s.record, s.done = record, True
        s.payload = b""
        if self.on_task_done is not None:
            self.on_task_done(s)

    def fail_task(self, s: TaskState, exc: BaseException) -> None:
        self.tasks.pop(s.id, None)
        if s.done:
            return
        s.exc, s.done = exc, True
        if self.on_task_done is not None:
            self.on_task_done(s)

    # -- reconnecting ----------------------------------------------------------------------
    def after_reconnect(self) -> List[Frames]:
        """Everything to send again on a new connection (after its Hello): requests
        without an answer, and a Submit for each task whose result has not come (the
        control plane treats a resent id as the same task)."""
        self.reconnects += 1
        self.grace_until = time.monotonic() + self.reconnect_grace
        out: List[Frames] = []
        pending_states = set()
        for req in list(self.deferred):
            self.deferred.remove(req)
            self.requests[req.rid] = req
        for rid in sorted(self.requests):
            req = self.requests[rid]
            req.resent = True
            pending_states.update(s.id for s in req.states)
            out.append(self.frames_of(req))
        for s in list(self.tasks.values()):
            if s.id in pending_states or s.done:
                continue
            req = self.submit_request([s], batch=False)
            req.kind = "submit"
            req.resent = True
            out.append(self.frames_of(req))
        return out

    def due_deferred(self) -> List[Frames]:
        """Deferred resubmissions whose time has come."""
        if not self.deferred:
            return []
        now = time.monotonic()
        out = []
        for req in list(self.deferred):
            if req.due <= now:
                self.deferred.remove(req)
                self.requests[req.rid] = req
                out.append(self.frames_of(req))
        return out

    def fail_all(self, exc: BaseException) -> None:
        for req in list(self.requests.values()) + list(self.deferred):
            self.complete(req, None, exc)
        self.deferred.clear()
        for s in list(self.tasks.values()):
            self.fail_task(s, exc)


def _v1_task(s: TaskState) -> Dict[str, Any]:
    t = dict(s.task)
    t["id"] = s.id
    t["payload"] = s.payload
    return t


def parse_reply(req: Request) -> Any:
    """The value of a finished request (raises its error)."""
    if req.exc is not None:
        raise req.exc
    msg = req.reply
    assert msg is not None
    t = msg["type"]
    kind = req.kind
    expected = {"submit": "accepted", "batch": "accepted", "replay": "accepted",
                "status": "status_reply", "cancel": "cancel_reply",
                "dead_letters": "dead_letter_list", "events": "event_list",
                "tasks": "task_list"}[kind]
    if t != expected:
        raise ProtocolError("unexpected answer to %s: %r" % (kind, msg))
    if kind in ("submit", "batch", "replay"):
        return msg["task_ids"]
    if kind == "status":
        return None if msg["record"] is None else TaskRecord.from_wire(msg["record"])
    if kind == "cancel":
        return CancelResult(msg["outcome"], msg["status"])
    if kind == "dead_letters":
        return [TaskRecord.from_wire(r) for r in msg["records"]]
    if kind == "events":
        return [Event(e["at_ms"], e["kind"], e["subject"], e["message"]) for e in msg["events"]]
    if kind == "tasks":
        out = []
        for t in msg["tasks"]:
            s = t["spec"]
            out.append(ServedTask(s["name"], s.get("doc", ""), s.get("signature", ""),
                                  list(t["workers"]), s["max_retries"], s["retry_delay_secs"],
                                  s["retry_backoff"], s["retry_backoff_max_secs"],
                                  s.get("timeout_secs"), s.get("periodic"),
                                  s.get("priority", "normal")))
        return out
    raise ValueError(kind)


def resolve_key(auth_key: Any, auth_key_file: Optional[str]) -> Optional[wire.ClusterKey]:
    """The cluster key: ``auth_key`` (text, 32 bytes or a ClusterKey), else the file,
    else FASTWORKER_AUTH_KEY_FILE / FASTWORKER_AUTH_KEY; ``auth_key=False`` means none."""
    if auth_key is False:
        return None
    if auth_key is not None:
        return wire.as_key(auth_key)
    return wire.load_key(auth_key_file)


def hello_frames(peer_id: str) -> Frames:
    return wire.encode_hello(peer_id, features=wire.hello_features())


def check_size(frames: Sequence[bytes], limit: int, sealed: bool) -> None:
    size = sum(len(f) for f in frames) + (wire.SEAL_LEN if sealed else 0)
    if size > limit:
        from .errors import MessageTooLarge
        raise MessageTooLarge(size, limit)
