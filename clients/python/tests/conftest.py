"""Fixtures: real `fastworker` processes (control plane, subworkers) on loopback ports
chosen by the OS, each stopped by its own handle at teardown. Every wait is bounded.

FASTWORKER_BIN and FASTWORKER_PLUGIN name the binary and the plugin (default: the
repository's target/debug). FASTWORKER_TEST_KEY=1 runs every test against a cluster
with a cluster key (made by `fastworker keygen`), FASTWORKER_TEST_KEY=0 (default) without.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
from typing import Dict, List, Optional

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
BIN = os.environ.get("FASTWORKER_BIN", os.path.join(REPO, "target", "debug", "fastworker"))
PLUGIN = os.environ.get("FASTWORKER_PLUGIN",
                        os.path.join(REPO, "target", "debug", "libmytasks.so"))
KEYED = os.environ.get("FASTWORKER_TEST_KEY", "0") == "1"
READY = re.compile(r"ready on (tcp://[0-9.]+:[0-9]+)")
DISCOVERY = re.compile(r"discovery on (tcp://[0-9.]+:[0-9]+)")


def _clean_env() -> Dict[str, str]:
    env = dict(os.environ)
    for var in ("FASTWORKER_AUTH_KEY", "FASTWORKER_AUTH_KEY_FILE",
                "FASTWORKER_CONTROL_PLANE_ADDRESS", "FASTWORKER_DISCOVERY_ADDRESS"):
        env.pop(var, None)
    return env


class Proc:
    """A process and its log file."""

    def __init__(self, args: List[str], log_path: str) -> None:
        self.args = args
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.p = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                  env=_clean_env())

    def text(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def wait_for(self, pattern: "re.Pattern[str]", timeout: float = 30.0) -> "re.Match[str]":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = pattern.search(self.text())
            if m:
                return m
            if self.p.poll() is not None:
                raise RuntimeError("%s exited with %s:\n%s" % (self.args[1], self.p.returncode,
                                                               self.text()[-3000:]))
            time.sleep(0.05)
        raise RuntimeError("%s printed no %r within %.0f s:\n%s"
                           % (self.args[1], pattern.pattern, timeout, self.text()[-3000:]))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=5)
        self.log.close()


class Cluster:
    """A control plane (serving nothing itself) and subworkers running mytasks."""

    def __init__(self, tmp: str, keyed: bool, cp_args: List[str] = ()) -> None:
        self.tmp = tmp
        self.key_file: Optional[str] = None
        self.key: Optional[str] = None
        if keyed:
            self.key_file = os.path.join(tmp, "cluster.key")
            subprocess.run([BIN, "keygen", self.key_file], check=True, timeout=30,
                           capture_output=True)
            with open(self.key_file) as f:
                self.key = f.read()
        self.cp_args = list(cp_args)
        self.procs: List[Proc] = []
        self.cp: Optional[Proc] = None
        self.address = ""
        self.discovery = ""
        self.n = 0

    def _key_args(self) -> List[str]:
        return ["--auth-key-file", self.key_file] if self.key_file else []

    def start_control_plane(self, base: str = "tcp://127.0.0.1:0",
                            discovery: str = "tcp://127.0.0.1:0") -> None:
        self.n += 1
        self.cp = Proc([BIN, "control-plane", "--base-address", base, "--discovery-address",
                        discovery, "--subworker-port", "0", "--no-gui"] + self._key_args() + self.cp_args,
                       os.path.join(self.tmp, "control-plane-%d.log" % self.n))
        self.procs.append(self.cp)
        m = self.cp.wait_for(READY)
        self.address = m.group(1)
        d = DISCOVERY.search(self.cp.text())
        self.discovery = d.group(1) if d else discovery

    def start_subworker(self, worker_id: str, concurrency: int = 4) -> Proc:
        p = Proc([BIN, "subworker", "--worker-id", worker_id, "--control-plane-address",
                  self.address, "--task-modules", PLUGIN, "--concurrency", str(concurrency),
                  "--no-watch", "--heartbeat-interval", "0.2"] + self._key_args(),
                 os.path.join(self.tmp, "%s-%d.log" % (worker_id, len(self.procs))))
        self.procs.append(p)
        return p

    def client(self, **kw):  # type: ignore[no-untyped-def]
        from fastworker_client import Client
        kw.setdefault("auth_key", self.key if self.key else False)
        kw.setdefault("timeout", 10.0)
        return Client(self.address, **kw)

    def wait_served(self, worker_id: str, timeout: float = 30.0) -> None:
        """Until `add` is served by worker_id."""
        deadline = time.monotonic() + timeout
        with self.client() as c:
            while time.monotonic() < deadline:
                if any(t.name == "add" and worker_id in t.workers for t in c.tasks()):
                    return
                time.sleep(0.05)
        raise RuntimeError("subworker %s did not register within %.0f s" % (worker_id, timeout))

    def restart_control_plane(self, wait_for: Optional[str] = None,
                              sig: int = signal.SIGTERM) -> None:
        """Stops the control plane and starts a new one on the same addresses (then,
        given a worker id, waits until that subworker registered with it again)."""
        assert self.cp is not None
        self.cp.stop(sig)
        self.start_control_plane(self.address, self.discovery)
        if wait_for is not None:
            self.wait_served(wait_for)

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


def _start(tmp: str, cp_args: List[str] = (), workers: Dict[str, int] = None) -> Cluster:
    c = Cluster(tmp, KEYED, cp_args)
    try:
        c.start_control_plane()
        for wid, conc in (workers or {"sw1": 4}).items():
            c.start_subworker(wid, conc)
            c.wait_served(wid)
    except BaseException:
        c.stop()
        raise
    return c


@pytest.fixture(scope="session")
def cluster():  # type: ignore[no-untyped-def]
    """One control plane and one subworker (concurrency 4) for the whole session."""
    for path in (BIN, PLUGIN):
        if not os.path.isfile(path):
            pytest.fail("no such file: %s (build with `cargo build --workspace`)" % path)
    with tempfile.TemporaryDirectory(prefix="fw-pytest-") as tmp:
        c = _start(tmp)
        yield c
        c.stop()


@pytest.fixture
def fresh_cluster(tmp_path):  # type: ignore[no-untyped-def]
    """A cluster of its own (for tests that restart or kill processes)."""
    made: List[Cluster] = []

    def make(cp_args: List[str] = (), workers: Dict[str, int] = None) -> Cluster:
        c = _start(str(tmp_path), list(cp_args), workers)
        made.append(c)
        return c
    yield make
    for c in made:
        c.stop()


@pytest.fixture
def client(cluster):  # type: ignore[no-untyped-def]
    with cluster.client() as c:
        yield c
