"""``python -m fastworker_client``: submit a task, or show / cancel one.

    python -m fastworker_client --control-plane-address tcp://127.0.0.1:5555 add 5 3
    python -m fastworker_client --discovery-address tcp://127.0.0.1:5550 echo '{"a":[1]}'
    python -m fastworker_client --control-plane-address ... --non-blocking sleep_ms 2000
    python -m fastworker_client --control-plane-address ... --status TASK_ID
    python -m fastworker_client --control-plane-address ... --cancel TASK_ID
    python -m fastworker_client --auth-key-file cluster.key --control-plane-address ... add 5 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any, List, Optional

from .client import Client
from .errors import FastworkerError, TaskFailed


def parse_arg(word: str) -> Any:
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


def _record_json(record: Any) -> str:
    d = dataclasses.asdict(record)
    d["value"] = record.value.hex()
    d["result"] = record.result if record.status == "success" else None
    return json.dumps(d)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastworker_client",
                                description="Submit a fastworker task (JSON codec).")
    p.add_argument("--control-plane-address", help="e.g. tcp://127.0.0.1:5555")
    p.add_argument("--discovery-address", help="used when --control-plane-address is not "
                   "given (default: $FASTWORKER_DISCOVERY_ADDRESS or tcp://127.0.0.1:5550)")
    p.add_argument("--priority", default="normal", choices=["critical", "high", "normal", "low"])
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
    try:
        with Client(a.control_plane_address, discovery_address=a.discovery_address,
                    auth_key_file=a.auth_key_file, timeout=a.timeout,
                    connect_timeout=a.timeout) as c:
            if a.status:
                record = c.status(a.status)
                print(_record_json(record) if record is not None else "null")
                return 0 if record is not None else 1
            if a.cancel:
                r = c.cancel(a.cancel)
                print(json.dumps({"outcome": r.outcome, "status": r.status}))
                return 0
            if not a.task_name:
                p.error("a task name is needed")
            handle = c.submit(a.task_name, *[parse_arg(w) for w in a.args], priority=a.priority)
            if a.non_blocking:
                print(handle.id)
                return 0
            record = handle.record(timeout=a.timeout)
        if a.json:
            print(_record_json(record))
        elif record.status == "success":
            print(json.dumps(record.result))
        if record.status != "success":
            err = record.error
            print("task %s ended %s: %s: %s" % (record.task_id, record.status,
                                               err.kind if err else "internal",
                                               err.message if err else "no error recorded"),
                  file=sys.stderr)
            return 1
        return 0
    except (FastworkerError, OSError, ValueError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
