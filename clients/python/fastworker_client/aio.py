"""The asyncio client (``zmq.asyncio``)."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import deque
from typing import Any, AsyncIterator, Deque, Iterable, List, Optional, Sequence

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from . import wire
from ._core import (CancelResult, Core, CoreView, Event, HandleBase, Request, ServedTask,
                    TaskRecord, TaskState, check_size, envelope_suffix, hello_frames, map_value,
                    normalize_id, parse_reply, resolve_key, task_fields)
from .client import HEARTBEAT, BatchItem, resolve_address
from .errors import (AuthRefused, ConnectionError, FastworkerError, NotReady, ProtocolError,
                     Refused, TaskNotFound, Timeout, task_failed)


class AsyncTaskHandle(HandleBase):
    """A submitted task: ``.id``, ``await .result(timeout=)``, ``await .status()``,
    ``await .cancel()``."""

    async def result(self, timeout: Optional[float] = None) -> Any:
        """Waits (at most ``timeout`` seconds) for the value; raises TaskFailed
        (TaskCancelled) or Timeout."""
        record = await self.record(timeout)
        if record.status != "success":
            raise task_failed(record)
        return record.result

    async def record(self, timeout: Optional[float] = None) -> TaskRecord:
        c = self._client
        if not self._pushed:
            return await c._final_record(self.id, timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        await c._wait_task(self._state, deadline)
        if self._state.exc is not None:
            raise self._state.exc
        assert self._state.record is not None
        return self._state.record

    async def status(self) -> Optional[TaskRecord]:
        if self._state.record is not None:
            return self._state.record
        return await self._client.status(self.id)

    async def cancel(self) -> CancelResult:
        return await self._client.cancel(self.id)


class AsyncClient(CoreView):
    """The asyncio twin of :class:`fastworker_client.Client`: the same arguments, the
    same methods as coroutines (``map`` is an async generator). Use it as
    ``async with AsyncClient(...) as client:`` (or ``await client.connect()`` /
    ``await client.close()``). One instance serves any number of concurrent tasks of
    its event loop."""

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
        context: Optional[zmq.asyncio.Context] = None,
    ) -> None:
        self.control_plane_address, self.discovery_address = resolve_address(
            control_plane_address, discovery_address)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.reconnect_timeout = reconnect_timeout
        self.peer_id = peer_id or "py-async-client-%d" % os.getpid()
        self._key = resolve_key(auth_key, auth_key_file)
        self._context = context or zmq.asyncio.Context.instance()
        self._core = Core()
        self._core.on_request_done = self._request_done
        self._core.on_task_done = self._task_done
        self._sock: Optional[zmq.asyncio.Socket] = None
        self._raw: Optional[zmq.Socket] = None
        self._monitor: Optional[zmq.asyncio.Socket] = None
        self._session: Optional[wire.Session] = None
        self._reader: Optional[asyncio.Task] = None
        self._connected = asyncio.Event() if _has_loop() else None
        self._closed = False
        self._fatal: Optional[BaseException] = None
        self.address: Optional[str] = None

    # -- callbacks of the core -------------------------------------------------------------
    @staticmethod
    def _request_done(req: Request) -> None:
        if req.waiter is not None and not req.waiter.done():
            req.waiter.set_result(None)

    @staticmethod
    def _task_done(state: TaskState) -> None:
        if state.waiter is not None and not state.waiter.done():
            state.waiter.set_result(None)

    # -- connection ------------------------------------------------------------------------
    async def connect(self) -> "AsyncClient":
        """Connects (discovery, key handshake, Hello/Welcome); raises Refused,
        AuthRefused or ConnectionError."""
        if self._connected is None:
            self._connected = asyncio.Event()
        await self._connect(time.monotonic() + self.connect_timeout, first=True)
        self._reader = asyncio.ensure_future(self._read_loop())
        return self

    async def __aenter__(self) -> "AsyncClient":
        return await self.connect()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
            self._reader = None
        self._drop()
        self._core.fail_all(ConnectionError("the client is closed"))

    def _drop(self) -> None:
        if self._sock is not None:
            try:
                self._sock.disable_monitor()
            except zmq.ZMQError:
                pass
            if self._monitor is not None:
                self._monitor.close(0)
            self._sock.close(0)
        self._sock = self._monitor = self._session = self._raw = None
        if self._connected is not None:
            self._connected.clear()

    async def _recv(self, sock: zmq.asyncio.Socket, deadline: float) -> List[bytes]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout("no answer in time")
        try:
            return await asyncio.wait_for(sock.recv_multipart(), remaining)
        except asyncio.TimeoutError:
            raise Timeout("no answer from %s in time" % self.address) from None

    async def _handshake(self, sock: zmq.asyncio.Socket, address: str,
                         deadline: float) -> Optional[wire.Session]:
        key = self._key
        if key is None:
            return None
        cn = os.urandom(wire.KEY_LEN)
        await sock.send_multipart([wire.handshake_frame(wire.HS_CLIENT_HELLO, cn)])

        async def answer(expected: int, what: str) -> bytes:
            frames = await self._recv(sock, deadline)
            hs = wire.parse_handshake(frames)
            if hs is not None and hs[0] == wire.HS_REFUSE:
                raise AuthRefused("%s refused the connection: %s"
                                  % (address, hs[1].decode("utf-8", "replace")))
            if hs is None or hs[0] != expected:
                try:
                    msg = wire.decode(frames)
                except ProtocolError:
                    msg = None
                if msg is not None and msg["type"] == "refused":
                    raise AuthRefused("%s refused the connection: %s" % (address, msg["reason"]))
                raise ProtocolError("%s did not take part in the cluster-key handshake (%s)"
                                    % (address, what))
            return hs[1]

        sn = await answer(wire.HS_CHALLENGE, "no challenge")
        proof = wire._hmac(key.keys[0], wire.LABEL_CLIENT_PROOF, cn, sn)
        await sock.send_multipart([wire.handshake_frame(wire.HS_CLIENT_PROOF, proof)])
        server_proof = await answer(wire.HS_ACCEPT, "no answer to the proof")
        for k in key.keys:
            if wire.hmac.compare_digest(wire._hmac(k, wire.LABEL_SERVER_PROOF, cn, sn),
                                        server_proof):
                return wire.Session(k, cn, sn)
        raise AuthRefused("%s could not prove it knows the cluster key: not talking to it"
                          % address)

    async def _discover(self, deadline: float) -> str:
        assert self.discovery_address is not None
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(self.discovery_address)
            session = await self._handshake(sock, self.discovery_address, deadline)
            frames = wire.encode_unit(wire.DISCOVER)
            await sock.send_multipart(session.seal(frames) if session else frames)
            while True:
                frames = await self._recv(sock, deadline)
                if session is not None:
                    frames = session.open(frames)
                msg = wire.decode(frames)
                if msg["type"] == "announce":
                    return msg["base_address"]
                if msg["type"] == "refused":
                    raise Refused("%s refused: %s" % (self.discovery_address, msg["reason"]))
        finally:
            sock.close(0)

    async def _connect_once(self, deadline: float) -> None:
        address = self.control_plane_address or await self._discover(deadline)
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        monitor = None
        try:
            sock.connect(address)
            monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            session = await self._handshake(sock, address, deadline)
            hello = hello_frames(self.peer_id)
            await sock.send_multipart(session.seal(hello) if session else hello)
            while True:
                frames = await self._recv(sock, deadline)
                if session is not None:
                    frames = session.open(frames)
                msg = wire.decode(frames)
                if msg["type"] == "refused":
                    raise Refused("%s refused the connection: %s" % (address, msg["reason"]))
                if msg["type"] == "welcome":
                    break
            self._core.welcome(msg)
        except BaseException:
            if monitor is not None:
                sock.disable_monitor()
                monitor.close(0)
            sock.close(0)
            raise
        self._sock, self._monitor, self._session, self.address = sock, monitor, session, address
        # The same socket, used without futures where nothing has to wait.
        self._raw = zmq.Socket.shadow(sock.underlying)

    async def _connect(self, deadline: float, first: bool = False) -> None:
        delay = 0.05
        last: Optional[BaseException] = None
        while True:
            try:
                await self._connect_once(
                    min(deadline, time.monotonic() + max(1.0, min(5.0, self.timeout))))
                break
            except (Refused, AuthRefused):
                raise
            except (Timeout, ProtocolError, zmq.ZMQError) as e:
                last = e
            if time.monotonic() + delay >= deadline:
                where = self.control_plane_address or "discovery at %s" % self.discovery_address
                raise ConnectionError("could not connect to the control plane (%s): %s"
                                      % (where, last))
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 2)
        if not first:
            for frames in self._core.after_reconnect():
                self._send_frames(frames)
        assert self._connected is not None
        self._connected.set()

    async def _reconnect(self) -> None:
        self._drop()
        try:
            await self._connect(time.monotonic() + self.reconnect_timeout)
        except FastworkerError as e:
            err = e if isinstance(e, ConnectionError) else ConnectionError(str(e))
            self._fatal = err
            self._core.fail_all(err)
            raise

    async def _read_loop(self) -> None:
        last_recv = time.monotonic()
        ping_sent = 0.0
        while not self._closed:
            sock, monitor = self._sock, self._monitor
            assert sock is not None and monitor is not None
            poller = zmq.asyncio.Poller()
            poller.register(sock, zmq.POLLIN)
            poller.register(monitor, zmq.POLLIN)
            reconnect = False
            try:
                events = dict(await poller.poll(250))
                if monitor in events:
                    ev = parse_monitor_message(await monitor.recv_multipart())
                    if ev["event"] == zmq.EVENT_DISCONNECTED:
                        reconnect = True
                if not reconnect and sock in events:
                    raw = self._raw
                    assert raw is not None
                    for _ in range(100000):
                        try:
                            frames = raw.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        if self._handle(frames):
                            ping_sent = 0.0
                    last_recv = time.monotonic()
                for frames in self._core.due_deferred():
                    self._send_frames(frames)
                now = time.monotonic()
                busy = self._core.requests or self._core.tasks
                if busy and now - last_recv > HEARTBEAT:
                    if ping_sent == 0.0:
                        ping_sent = now
                        self._send_frames(wire.encode_ping_v2(1) if self._core.version >= 2
                                          else wire.encode_ping(1))
                    elif now - ping_sent > HEARTBEAT:
                        reconnect = True
                elif not busy:
                    last_recv = now
            except ProtocolError:
                reconnect = True
            if reconnect:
                try:
                    await self._reconnect()
                except FastworkerError:
                    return
                last_recv, ping_sent = time.monotonic(), 0.0

    def _handle(self, frames: List[bytes]) -> bool:
        """Dispatches one message; True for a Pong."""
        if self._session is not None:
            frames = self._session.open(frames)
        if len(frames) == 2 and self._core.result_header(frames[0], frames[1]):
            return False
        if len(frames) > 2 and self._core.results_frames(frames):
            return False
        msg = wire.decode(frames)
        t = msg["type"]
        if t == "pong":
            return True
        if t == "refused":
            raise ProtocolError("the control plane refused us: %s" % msg["reason"])
        self._core.dispatch(msg)
        return False

    def _send_frames(self, frames: List[bytes]) -> None:
        assert self._sock is not None
        if self._session is not None:
            frames = self._session.seal(frames)
        assert self._raw is not None
        self._raw.send_multipart(frames)

    async def _send(self, req: Request) -> None:
        if self._closed:
            raise ConnectionError("the client is closed")
        if self._fatal is not None:
            raise self._fatal
        if self._reader is None:
            raise ConnectionError("not connected: use `async with AsyncClient(...)` or "
                                  "`await client.connect()`")
        assert self._connected is not None
        if not self._connected.is_set():
            try:
                await asyncio.wait_for(self._connected.wait(), self.reconnect_timeout)
            except asyncio.TimeoutError:
                raise ConnectionError("not connected to the control plane") from None
        try:
            frames = self._core.frames_of(req)
            check_size(frames, self._core.limits["max-message-size"], self._key is not None)
        except BaseException:
            self._forget(req)
            raise
        self._send_frames(frames)

    def _forget(self, req: Request) -> None:
        self._core.requests.pop(req.rid, None)
        for s in req.states:
            if not s.accepted:
                self._core.tasks.pop(s.id, None)

    async def _await(self, waiter: "asyncio.Future[None]", timeout: Optional[float]) -> bool:
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def _call(self, req: Request, timeout: Optional[float] = None) -> Any:
        req.waiter = asyncio.get_running_loop().create_future()
        await self._send(req)
        t = self.timeout if timeout is None else timeout
        if not req.done and not await self._await(req.waiter, t):
            self._forget(req)
            raise Timeout("no answer from the control plane within %.1f s" % t)
        return parse_reply(req)

    async def _wait_task(self, state: TaskState, deadline: Optional[float]) -> None:
        check_every = 2.0
        while not state.done:
            if state.waiter is None:
                state.waiter = asyncio.get_running_loop().create_future()
            now = time.monotonic()
            step = check_every if deadline is None else min(check_every, deadline - now)
            if step > 0 and await self._await(state.waiter, step):
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout("task %s did not finish in time" % state.id)
            check_every = min(30.0, check_every * 2)
            record = await self.status(state.id)
            if record is not None and record.is_final:
                self._core.finish_task(record)
                if not state.done:
                    state.record, state.done = record, True

    # -- the API ---------------------------------------------------------------------------
    async def submit(self, name: str, *args: Any, task_id: Optional[str] = None,
                     **options: Any) -> AsyncTaskHandle:
        """Like Client.submit."""
        state = self._core.new_state(task_fields(name, **options), args, task_id)
        await self._call(self._core.submit_request([state], batch=False))
        return AsyncTaskHandle(self, state)

    async def call(self, name: str, *args: Any, wait_timeout: Optional[float] = None,
                   **options: Any) -> Any:
        """Submits and waits for the value."""
        handle = await self.submit(name, *args, **options)
        return await handle.result(timeout=wait_timeout)

    async def submit_batch(self, tasks: Iterable[BatchItem], **options: Any) -> List[AsyncTaskHandle]:
        """Like Client.submit_batch: all or none."""
        states = []
        for item in tasks:
            opts = dict(options)
            if len(item) > 2:
                opts.update(item[2])  # type: ignore[misc]
            task_id = opts.pop("task_id", None)
            states.append(self._core.new_state(task_fields(item[0], **opts), item[1], task_id))
        if not states:
            raise ValueError("an empty batch")
        await self._call(self._core.submit_request(states, batch=True))
        return [AsyncTaskHandle(self, s) for s in states]

    async def map(self, name: str, iterable: Iterable[Sequence[Any]], window: int = 1000,
                  chunk: Optional[int] = None, timeout: Optional[float] = None,
                  return_exceptions: bool = False, **options: Any) -> AsyncIterator[Any]:
        """Like Client.map, as an async generator: ``async for v in client.map(...)``."""
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
        loop = asyncio.get_running_loop()
        while True:
            while not exhausted and window - len(pending) >= first:
                room = min(chunk, window - len(pending))
                batch = [core.new_state(fields, args, None, suffix)
                         for args in itertools.islice(it, room)]
                if not batch:
                    exhausted = True
                    break
                await self._send(core.submit_request(batch, batch=len(batch) > 1))
                pending.extend(batch)
                if len(batch) < room:
                    exhausted = True
            if not pending:
                return
            head = pending[0]
            if not head.done:
                head.waiter = loop.create_future()
                if not await self._await(head.waiter, timeout):
                    raise Timeout("task %s did not finish within %.1f s" % (head.id, timeout or 0))
            while pending and pending[0].done:
                yield map_value(pending.popleft(), return_exceptions)
                if not exhausted and window - len(pending) >= first:
                    break

    async def status(self, task_id: str) -> Optional[TaskRecord]:
        return await self._call(self._core.simple_request("status", normalize_id(task_id)))

    async def result(self, task_id: str, wait: bool = True,
                     timeout: Optional[float] = None) -> Any:
        """Like Client.result."""
        task_id = normalize_id(task_id)
        state = self._core.tasks.get(task_id)
        if state is not None and wait:
            return await AsyncTaskHandle(self, state).result(timeout)
        record = await self._final_record(task_id, timeout) if wait else await self.status(task_id)
        if record is None:
            raise TaskNotFound(task_id)
        if not record.is_final:
            raise NotReady(task_id, record.status)
        if record.status != "success":
            raise task_failed(record)
        return record.result

    async def _final_record(self, task_id: str, timeout: Optional[float]) -> TaskRecord:
        req = self._core.simple_request("status", task_id, wait=True)
        req.waiter = asyncio.get_running_loop().create_future()
        await self._send(req)
        if not req.done and not await self._await(req.waiter, timeout):
            self._forget(req)
            raise Timeout("task %s did not finish in time" % task_id)
        record = parse_reply(req)
        if record is None:
            raise TaskNotFound(task_id)
        return record

    async def cancel(self, task_id: str) -> CancelResult:
        return await self._call(self._core.simple_request("cancel", normalize_id(task_id)))

    async def dead_letters(self) -> List[TaskRecord]:
        return await self._call(self._core.simple_request("dead_letters"))

    async def replay(self, task_id: str) -> AsyncTaskHandle:
        task_id = normalize_id(task_id)
        await self._call(self._core.simple_request("replay", task_id))
        return AsyncTaskHandle(self, TaskState(task_id, "", {}, None, b""), pushed=False)

    async def events(self) -> List[Event]:
        return await self._call(self._core.simple_request("events"))

    async def tasks(self) -> List[ServedTask]:
        return await self._call(self._core.simple_request("tasks"))


def _has_loop() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False
