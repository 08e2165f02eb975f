"""The blocking client."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import deque
from typing import (Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Sequence,
                    Tuple, Union)

import zmq
from zmq.utils.monitor import recv_monitor_message

from . import wire
from ._core import (CancelResult, Core, CoreView, Event, HandleBase, Request,
                    ServedTask, TaskRecord, TaskState, check_size, envelope_suffix,
                    hello_frames, map_value, normalize_id, parse_reply, resolve_key,
                    task_fields)
from .errors import (AuthRefused, ConnectionError, FastworkerError, NotReady, ProtocolError,
                     Refused, TaskNotFound, Timeout, task_failed)

DEFAULT_DISCOVERY_ADDRESS = "tcp://127.0.0.1:5550"
HEARTBEAT = 5.0  # seconds of silence, while waiting, before a Ping; as long again and we reconnect

BatchItem = Union[Tuple[str, Sequence[Any]], Tuple[str, Sequence[Any], Dict[str, Any]]]


def resolve_address(control_plane_address: Optional[str],
                    discovery_address: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    """(control plane address, discovery address): the arguments, else
    FASTWORKER_CONTROL_PLANE_ADDRESS, else discovery at FASTWORKER_DISCOVERY_ADDRESS or
    tcp://127.0.0.1:5550."""
    if control_plane_address:
        return control_plane_address, None
    if discovery_address:
        return None, discovery_address
    env = os.environ.get("FASTWORKER_CONTROL_PLANE_ADDRESS")
    if env:
        return env, None
    return None, os.environ.get("FASTWORKER_DISCOVERY_ADDRESS") or DEFAULT_DISCOVERY_ADDRESS


def discover(discovery_address: str, *, auth_key: Any = None, auth_key_file: Optional[str] = None,
             timeout: float = 5.0) -> Dict[str, Any]:
    """Asks a discovery endpoint where its control plane is: a dict with
    ``control_plane_id``, ``base_address``, ``subworker_address``, ``protocol_version``."""
    key = resolve_key(auth_key, auth_key_file)
    return wire.discover(discovery_address, timeout=timeout, key=key)


class TaskHandle(HandleBase):
    """A submitted task: ``.id``, ``.result(timeout=)``, ``.status()``, ``.cancel()``."""

    def result(self, timeout: Optional[float] = None) -> Any:
        """Waits (at most ``timeout`` seconds; None: as long as it takes) for the task to
        end; returns its value, or raises TaskFailed (TaskCancelled), or Timeout."""
        record = self.record(timeout)
        if record.status != "success":
            raise task_failed(record)
        return record.result

    def record(self, timeout: Optional[float] = None) -> TaskRecord:
        """Waits like result(); returns the final record whatever the status."""
        c = self._client
        if not self._pushed:
            return c._final_record(self.id, timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        c._wait_task(self._state, deadline)
        if self._state.exc is not None:
            raise self._state.exc
        assert self._state.record is not None
        return self._state.record

    def status(self) -> Optional[TaskRecord]:
        """Its record now (None if the control plane does not know it)."""
        if self._state.record is not None:
            return self._state.record
        return self._client.status(self.id)

    def cancel(self) -> CancelResult:
        return self._client.cancel(self.id)


class Client(CoreView):
    """A blocking client of a fastworker control plane.

    ``Client("tcp://127.0.0.1:5555")`` or ``Client(discovery_address="tcp://...:5550")``;
    the cluster key from ``auth_key`` / ``auth_key_file`` or the environment
    (FASTWORKER_AUTH_KEY, FASTWORKER_AUTH_KEY_FILE). ``timeout`` bounds each request's
    answer; the client reconnects by itself (and sends again what was unanswered) when
    the control plane goes away, for up to ``reconnect_timeout`` seconds.

    One instance may be shared by threads: one of them at a time reads the socket and
    hands each answer to whoever waits for it.
    """

    def __init__(
        self,
        control_plane_address: Optional[str] = None,
        *,
        discovery_address: Optional[str] = None,
        auth_key: Any = None,
        auth_key_file: Optional[str] = None,
        timeout: float = 10.0,
        connect_timeout: float = 10.0,
        reconnect_timeout: float = 30.0,
        peer_id: Optional[str] = None,
        context: Optional[zmq.Context] = None,
    ) -> None:
        self.control_plane_address, self.discovery_address = resolve_address(
            control_plane_address, discovery_address)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.reconnect_timeout = reconnect_timeout
        self.peer_id = peer_id or "py-client-%d" % os.getpid()
        self._key = resolve_key(auth_key, auth_key_file)
        self._context = context or zmq.Context.instance()
        self._core = Core()
        self._io = threading.Lock()
        self._cv = threading.Condition()
        self._conn: Optional[wire.Connection] = None
        self._monitor: Optional[zmq.Socket] = None
        self._poller: Optional[zmq.Poller] = None
        self._last_recv = time.monotonic()
        self._ping_sent = 0.0
        self._closed = False
        self.address: Optional[str] = None
        with self._io:
            self._connect(time.monotonic() + connect_timeout, first=True)

    # -- connection ------------------------------------------------------------------------
    def _connect_once(self, deadline: float) -> None:
        address = self.control_plane_address
        if address is None:
            assert self.discovery_address is not None
            remaining = max(0.05, deadline - time.monotonic())
            address = wire.discover(self.discovery_address, timeout=remaining,
                                    key=self._key, context=self._context)["base_address"]
        remaining = max(0.05, deadline - time.monotonic())
        conn = wire.Connection(address, key=self._key, timeout=remaining, context=self._context)
        try:
            sock = conn.socket
            sock.setsockopt(zmq.RCVHWM, 0)
            sock.setsockopt(zmq.SNDHWM, 0)
            monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            try:
                conn.send(hello_frames(self.peer_id))
                while True:
                    msg = conn.recv(deadline=deadline)
                    if msg["type"] == "refused":
                        raise Refused("%s refused the connection: %s" % (address, msg["reason"]))
                    if msg["type"] == "welcome":
                        break
                self._core.welcome(msg)
                conn.max_message_size = self._core.limits["max-message-size"]
            except BaseException:
                sock.disable_monitor()
                monitor.close(0)
                raise
        except BaseException:
            conn.close()
            raise
        self._conn, self._monitor, self.address = conn, monitor, address
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(monitor, zmq.POLLIN)
        self._last_recv = time.monotonic()
        self._ping_sent = 0.0

    def _connect(self, deadline: float, first: bool = False) -> None:
        """Connects (retrying until deadline); after a reconnect, sends again what is
        unanswered. A refusal (wrong key, Refused) is not retried."""
        delay = 0.05
        last: Optional[BaseException] = None
        while True:
            try:
                self._connect_once(min(deadline, time.monotonic() + max(1.0, min(5.0, self.timeout))))
                break
            except (Refused, AuthRefused):
                raise
            except (Timeout, ProtocolError, zmq.ZMQError) as e:
                last = e
            if time.monotonic() + delay >= deadline:
                where = self.control_plane_address or "discovery at %s" % self.discovery_address
                raise ConnectionError("could not connect to the control plane (%s): %s"
                                      % (where, last))
            time.sleep(delay)
            delay = min(1.0, delay * 2)
        if not first:
            for frames in self._core.after_reconnect():
                self._send_frames(frames)

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.socket.disable_monitor()
            except zmq.ZMQError:
                pass
            if self._monitor is not None:
                self._monitor.close(0)
            self._conn.close()
        self._conn = self._monitor = self._poller = None

    def _reconnect(self) -> None:
        self._drop_connection()
        try:
            self._connect(time.monotonic() + self.reconnect_timeout)
        except FastworkerError as e:
            self._core.fail_all(e if isinstance(e, ConnectionError) else ConnectionError(str(e)))
            raise

    def _ensure_connected(self) -> None:
        if self._closed:
            raise ConnectionError("the client is closed")
        if self._conn is None:
            self._reconnect()

    def close(self) -> None:
        """Closes the connection (results not yet received are not waited for)."""
        with self._io:
            self._closed = True
            self._drop_connection()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- sending and receiving -------------------------------------------------------------
    def _send_frames(self, frames: List[bytes]) -> None:
        assert self._conn is not None
        self._conn.send(frames)

    def _send(self, req: Request) -> None:
        with self._io:
            self._ensure_connected()
            try:
                frames = self._core.frames_of(req)
                check_size(frames, self._core.limits["max-message-size"],
                           self._key is not None)
            except BaseException:
                self._forget(req)
                raise
            self._send_frames(frames)

    def _forget(self, req: Request) -> None:
        self._core.requests.pop(req.rid, None)
        for s in req.states:
            if not s.accepted:
                self._core.tasks.pop(s.id, None)

    def _handle(self, frames: List[bytes]) -> None:
        conn = self._conn
        assert conn is not None
        if conn.session is not None:
            frames = conn.session.open(frames)
        if len(frames) == 2 and self._core.result_header(frames[0], frames[1]):
            return
        if len(frames) > 2 and self._core.results_frames(frames):
            return
        msg = wire.decode(frames)
        t = msg["type"]
        if t == "pong":
            self._ping_sent = 0.0
        elif t == "refused":
            raise ProtocolError("the control plane refused us: %s" % msg["reason"])
        else:
            self._core.dispatch(msg)

    def _pump(self, until: float) -> None:
        """Reads what arrives until `until` (or a little after the first messages);
        holds the I/O lock."""
        if self._conn is None:
            self._reconnect()
        assert self._poller is not None and self._conn is not None
        sock = self._conn.socket
        now = time.monotonic()
        events = dict(self._poller.poll(max(0, int((until - now) * 1000))))
        if self._monitor in events:
            ev = recv_monitor_message(self._monitor)
            if ev["event"] == zmq.EVENT_DISCONNECTED:
                self._reconnect()
                return
        if sock in events:
            # recv and get (RCVMORE) directly: recv_multipart's Python layer cost more
            # than the rest of handling a result.
            recv, more = sock.recv, sock.get
            try:
                for _ in range(100000):
                    try:
                        frames = [recv(zmq.NOBLOCK)]
                    except zmq.Again:
                        break
                    while more(zmq.RCVMORE):
                        frames.append(recv(zmq.NOBLOCK))
                    self._handle(frames)
            except ProtocolError:
                self._reconnect()
                return
            self._last_recv = time.monotonic()
        for frames in self._core.due_deferred():
            self._send_frames(frames)
        self._liveness()

    def _liveness(self) -> None:
        now = time.monotonic()
        if now - self._last_recv < HEARTBEAT:
            return
        if self._ping_sent == 0.0:
            self._ping_sent = now
            self._send_frames(wire.encode_ping_v2(1) if self._core.version >= 2
                              else wire.encode_ping(1))
        elif now - self._ping_sent > HEARTBEAT:
            self._reconnect()

    def _wait(self, done: Callable[[], bool], deadline: Optional[float]) -> bool:
        """Until done() or the deadline; one waiting thread at a time reads the socket."""
        while not done():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            step = now + 0.05 if deadline is None else min(deadline, now + 0.05)
            if self._io.acquire(blocking=False):
                try:
                    if self._closed:
                        raise ConnectionError("the client is closed")
                    self._pump(step)
                finally:
                    self._io.release()
                with self._cv:
                    self._cv.notify_all()
            else:
                with self._cv:
                    self._cv.wait(max(0.0, step - now))
        return True

    def _call(self, req: Request, timeout: Optional[float] = None) -> Any:
        self._send(req)
        t = self.timeout if timeout is None else timeout
        if not self._wait(lambda: req.done, time.monotonic() + t):
            self._forget(req)
            raise Timeout("no answer from the control plane within %.1f s" % t)
        return parse_reply(req)

    def _wait_task(self, state: TaskState, deadline: Optional[float]) -> None:
        """Until the task's Result is pushed; every few seconds without it, asks for
        its status (a Result can be lost in overload, see PROTOCOL.md §14)."""
        check_every = 2.0
        while not state.done:
            now = time.monotonic()
            next_check = now + check_every
            until = next_check if deadline is None else min(deadline, next_check)
            if self._wait(lambda: state.done, until):
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout("task %s did not finish in time" % state.id)
            check_every = min(30.0, check_every * 2)
            record = self.status(state.id)
            if record is not None and record.is_final:
                self._core.finish_task(record)
                if not state.done:  # not registered any more: finish it here
                    state.record, state.done = record, True

    # -- the API ---------------------------------------------------------------------------
    def submit(self, name: str, *args: Any, task_id: Optional[str] = None,
               **options: Any) -> TaskHandle:
        """Submits ``name(*args)``; returns its handle once the control plane accepted it.
        Options: priority, countdown (seconds), eta (datetime or Unix seconds),
        max_retries, retry_delay, retry_backoff, retry_backoff_max, retry_jitter,
        timeout (seconds one attempt may run), callback_address, callback_data.
        Raises UnknownTask / Rejected when refused."""
        state = self._core.new_state(task_fields(name, **options), args, task_id)
        req = self._core.submit_request([state], batch=False)
        self._call(req)
        return TaskHandle(self, state)

    def call(self, name: str, *args: Any, wait_timeout: Optional[float] = None,
             **options: Any) -> Any:
        """Submits and waits for the value: ``client.call("add", 5, 3) == 8``."""
        return self.submit(name, *args, **options).result(timeout=wait_timeout)

    def submit_batch(self, tasks: Iterable[BatchItem], **options: Any) -> List[TaskHandle]:
        """Submits several tasks at once, all or none: each item is ``(name, args)`` or
        ``(name, args, options)``; ``options`` here apply to every one. Returns their
        handles, in order; raises Rejected (nothing accepted) otherwise."""
        states = []
        for item in tasks:
            name, args = item[0], item[1]
            opts = dict(options)
            if len(item) > 2:
                opts.update(item[2])  # type: ignore[misc]
            task_id = opts.pop("task_id", None)
            states.append(self._core.new_state(task_fields(name, **opts), args, task_id))
        if not states:
            raise ValueError("an empty batch")
        req = self._core.submit_request(states, batch=True)
        self._call(req)
        return [TaskHandle(self, s) for s in states]

    def map(self, name: str, iterable: Iterable[Sequence[Any]], window: int = 1000,
            chunk: Optional[int] = None, timeout: Optional[float] = None,
            return_exceptions: bool = False, **options: Any) -> Iterator[Any]:
        """Runs ``name(*args)`` for each args tuple, pipelined: at most ``window`` tasks
        in flight, sent in SubmitBatch chunks; yields the values in input order. A
        failed task raises its TaskFailed when its turn comes (or is yielded, with
        return_exceptions). ``timeout`` bounds the wait for each next value."""
        if window < 1:
            raise ValueError("window must be at least 1")
        chunk = chunk or max(1, min(256, window // 4))
        fields = task_fields(name, **options)
        suffix = envelope_suffix(fields)
        core = self._core
        it = iter(iterable)
        pending: Deque[TaskState] = deque()
        exhausted = False
        first = min(chunk, window)
        while True:
            # Fill the window, a chunk at a time.
            while not exhausted and window - len(pending) >= first:
                room = min(chunk, window - len(pending))
                batch = [core.new_state(fields, args, None, suffix)
                         for args in itertools.islice(it, room)]
                if not batch:
                    exhausted = True
                    break
                self._send(core.submit_request(batch, batch=len(batch) > 1))
                pending.extend(batch)
                if len(batch) < room:
                    exhausted = True
            if not pending:
                return
            head = pending[0]
            if not head.done:
                deadline = None if timeout is None else time.monotonic() + timeout
                if not self._wait(lambda: head.done, deadline):
                    raise Timeout("task %s did not finish within %.1f s" % (head.id, timeout or 0))
            # Hand out every finished one at the head.
            while pending and pending[0].done:
                yield map_value(pending.popleft(), return_exceptions)
                if not exhausted and window - len(pending) >= first:
                    break  # refill first

    def status(self, task_id: str) -> Optional[TaskRecord]:
        """The task's record now, or None when the control plane does not know it."""
        return self._call(self._core.simple_request("status", normalize_id(task_id)))

    def result(self, task_id: str, wait: bool = True, timeout: Optional[float] = None) -> Any:
        """The value of a task (by id). wait: until it is final (at most ``timeout``
        seconds); else NotReady if it is not. Raises TaskFailed, TaskNotFound."""
        task_id = normalize_id(task_id)
        state = self._core.tasks.get(task_id)
        if state is not None and wait:
            return TaskHandle(self, state).result(timeout)
        record = self._final_record(task_id, timeout) if wait else self.status(task_id)
        if record is None:
            raise TaskNotFound(task_id)
        if not record.is_final:
            raise NotReady(task_id, record.status)
        if record.status != "success":
            raise task_failed(record)
        return record.result

    def _final_record(self, task_id: str, timeout: Optional[float]) -> TaskRecord:
        req = self._core.simple_request("status", task_id, wait=True)
        self._send(req)
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._wait(lambda: req.done, deadline):
            self._forget(req)
            raise Timeout("task %s did not finish in time" % task_id)
        record = parse_reply(req)
        if record is None:
            raise TaskNotFound(task_id)
        return record

    def cancel(self, task_id: str) -> CancelResult:
        """Cancels a task: CancelResult(outcome, status)."""
        return self._call(self._core.simple_request("cancel", normalize_id(task_id)))

    def dead_letters(self) -> List[TaskRecord]:
        """The dead-lettered tasks' final records (without values), oldest first."""
        return self._call(self._core.simple_request("dead_letters"))

    def replay(self, task_id: str) -> TaskHandle:
        """Queues a dead letter again (same id); follow it with the handle."""
        task_id = normalize_id(task_id)
        self._call(self._core.simple_request("replay", task_id))
        state = TaskState(task_id, "", {}, None, b"")
        return TaskHandle(self, state, pushed=False)

    def events(self) -> List[Event]:
        """The control plane's recent events, oldest first."""
        return self._call(self._core.simple_request("events"))

    def tasks(self) -> List[ServedTask]:
        """What the cluster serves: each task's name, doc, signature, defaults and workers."""
        return self._call(self._core.simple_request("tasks"))

    def ping(self, timeout: Optional[float] = None) -> float:
        """Round trip to the control plane, in seconds."""
        t0 = time.monotonic()
        self.status("00000000-0000-0000-0000-000000000000")
        return time.monotonic() - t0
