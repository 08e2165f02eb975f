"""A Python client for fastworker, the brokerless distributed task host.

    from fastworker_client import Client

    with Client("tcp://127.0.0.1:5555") as client:
        assert client.call("add", 5, 3) == 8

``AsyncClient`` is the same for asyncio. See the README for everything else.
"""

from ._core import CancelResult, Event, Priority, ServedTask, TaskError, TaskRecord
from .aio import AsyncClient, AsyncTaskHandle
from .client import Client, TaskHandle, discover
from .errors import (AuthRefused, ConnectionError, FastworkerError, MessageTooLarge, NotReady,
                     ProtocolError, Refused, Rejected, TaskCancelled, TaskFailed, TaskNotFound,
                     Timeout, UnknownTask)
from .wire import ClusterKey, load_key

__version__ = "0.1.0"

__all__ = [
    "AsyncClient", "AsyncTaskHandle", "AuthRefused", "CancelResult", "Client", "ClusterKey",
    "ConnectionError", "Event", "FastworkerError", "MessageTooLarge", "NotReady", "Priority",
    "ProtocolError", "Refused", "Rejected", "ServedTask", "TaskCancelled", "TaskError",
    "TaskFailed", "TaskHandle", "TaskNotFound", "TaskRecord", "Timeout", "UnknownTask",
    "discover", "load_key", "__version__",
]
