"""The exceptions this package raises. Everything derives from :class:`FastworkerError`."""

from __future__ import annotations

import builtins
from typing import Any, Optional


class FastworkerError(Exception):
    """Base class of every error this package raises."""


class ProtocolError(FastworkerError):
    """A message could not be read, or an unexpected one arrived."""


class ConnectionError(FastworkerError, builtins.ConnectionError):  # noqa: A001
    """The control plane could not be reached (or stopped answering) in time."""


class Refused(ConnectionError):
    """The control plane (or discovery endpoint) refused the connection:
    ``Refused{reason}``, e.g. a cluster key is required, or no protocol version in common."""


class AuthRefused(Refused):
    """The cluster-key handshake failed: the server does not know our key (wrong key),
    has no key at all, or could not prove that it knows ours."""


class Timeout(FastworkerError, builtins.TimeoutError):
    """No answer (or no result) within the time allowed."""


class MessageTooLarge(FastworkerError):
    """A request was not sent: its frames add up to more than the control plane's
    ``max-message-size`` (its guard would disconnect us)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            "the request is %d bytes, over the server's max-message-size of %d bytes: not sent"
            % (size, limit)
        )
        self.size = size
        self.limit = limit


class Rejected(FastworkerError):
    """The control plane refused a request (``Rejected{request_id, error}``); nothing
    of it was accepted. ``kind`` is the error kind (``rejected``, ``unknown_task``...)."""

    def __init__(self, kind: str, message: str, request_id: int = 0) -> None:
        super().__init__("%s: %s" % (kind, message))
        self.kind = kind
        self.message = message
        self.request_id = request_id


class UnknownTask(Rejected):
    """No loaded plugin serves that task name (kind ``unknown_task``)."""


class TaskNotFound(FastworkerError, LookupError):
    """The control plane does not know that task id (never submitted, or expired from
    its result cache)."""

    def __init__(self, task_id: str) -> None:
        super().__init__("no task %s is known to the control plane" % task_id)
        self.task_id = task_id


class NotReady(FastworkerError):
    """``result(task_id, wait=False)`` on a task that is not final yet."""

    def __init__(self, task_id: str, status: str) -> None:
        super().__init__("task %s is not finished (status %s)" % (task_id, status))
        self.task_id = task_id
        self.status = status


class TaskFailed(FastworkerError):
    """The task ended without success. ``kind`` is its error kind (``failed``,
    ``panicked``, ``bad_arguments``, ``timed_out``, ``cancelled``, ``worker_lost``...),
    ``message`` the task's message, ``status`` ``failure`` or ``cancelled``."""

    def __init__(
        self,
        kind: str,
        message: str,
        task_id: str,
        status: str = "failure",
        record: Optional[Any] = None,
    ) -> None:
        super().__init__("task %s ended %s: %s: %s" % (task_id, status, kind, message))
        self.kind = kind
        self.message = message
        self.task_id = task_id
        self.status = status
        self.record = record


class TaskCancelled(TaskFailed):
    """The task was cancelled (status ``cancelled``, kind ``cancelled``)."""


def rejected(kind: str, message: str, request_id: int = 0) -> Rejected:
    """The exception for a ``Rejected`` answer of this kind."""
    if kind == "unknown_task":
        return UnknownTask(kind, message, request_id)
    return Rejected(kind, message, request_id)


def task_failed(record: Any) -> TaskFailed:
    """The exception for a final record that is not a success."""
    err = record.error
    kind = err.kind if err is not None else "internal"
    message = err.message if err is not None else "no error recorded"
    cls = TaskCancelled if record.status == "cancelled" else TaskFailed
    return cls(kind, message, record.task_id, record.status, record)
