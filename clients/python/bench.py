#!/usr/bin/env python3
"""Throughput of fastworker-client's map from one Python process, through a control
plane and one subworker started with --concurrency 64, without and with a cluster key.
Every result is checked.

    python clients/python/bench.py [--tasks 200000] [--window 1000] [--bin target/release/fastworker]
        [--plugin target/release/libmytasks.so] [--profile]
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "tests"))

from conftest import READY, Proc  # noqa: E402

import fastworker_client as fw  # noqa: E402


def run(binary: str, plugin: str, n: int, window: int, keyed: bool, profile: bool,
        concurrency: int) -> float:
    with tempfile.TemporaryDirectory(prefix="fw-bench-") as tmp:
        key_args, key = [], False
        if keyed:
            key_file = os.path.join(tmp, "cluster.key")
            subprocess.run([binary, "keygen", key_file], check=True, capture_output=True,
                           timeout=30)
            key_args = ["--auth-key-file", key_file]
            key = open(key_file).read()
        cp = Proc([binary, "control-plane", "--base-address", "tcp://127.0.0.1:0",
                   "--discovery-address", "tcp://127.0.0.1:0", "--subworker-port", "0",
                   "--no-gui", "--log-level", "WARNING"] + key_args,
                  os.path.join(tmp, "cp.log"))
        sw = None
        try:
            address = cp.wait_for(READY).group(1)
            sw = Proc([binary, "subworker", "--worker-id", "bench", "--control-plane-address",
                       address, "--task-modules", plugin, "--concurrency", str(concurrency),
                       "--no-watch", "--log-level", "WARNING"] + key_args,
                      os.path.join(tmp, "sw.log"))
            with fw.Client(address, auth_key=key, timeout=30) as c:
                deadline = time.monotonic() + 30
                while not any(t.name == "add" for t in c.tasks()):
                    assert time.monotonic() < deadline, "the subworker did not register"
                    time.sleep(0.05)
                list(c.map("add", [(i, i) for i in range(2000)], window=window))  # warm up
                args = [(i, 7) for i in range(n)]
                if profile:
                    import cProfile
                    import pstats
                    pr = cProfile.Profile()
                    pr.enable()
                t0 = time.perf_counter()
                cpu0 = time.process_time()
                ok = 0
                for i, v in enumerate(c.map("add", args, window=window, timeout=60)):
                    if v != i + 7:
                        raise AssertionError("task %d: expected %d, got %r" % (i, i + 7, v))
                    ok += 1
                dt = time.perf_counter() - t0
                cpu = time.process_time() - cpu0
                if profile:
                    pr.disable()
                    pstats.Stats(pr).sort_stats("tottime").print_stats(15)
            assert ok == n
            rate = n / dt
            print("%-8s %8d tasks in %6.2f s: %8.0f tasks/s (client CPU %.1f us/task)"
                  % ("key" if keyed else "no key", n, dt, rate, cpu / n * 1e6), flush=True)
            return rate
        finally:
            if sw is not None:
                sw.stop(signal.SIGTERM)
            cp.stop(signal.SIGTERM)


def main() -> int:
    repo = os.path.abspath(os.path.join(HERE, "..", ".."))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", default=os.path.join(repo, "target", "release", "fastworker"))
    p.add_argument("--plugin", default=os.path.join(repo, "target", "release", "libmytasks.so"))
    p.add_argument("--tasks", type=int, default=200000)
    p.add_argument("--window", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--only", choices=["key", "nokey"])
    a = p.parse_args()
    for path in (a.bin, a.plugin):
        if not os.path.isfile(path):
            print("no such file: %s (cargo build --release)" % path, file=sys.stderr)
            return 2
    print("python %s, pyzmq %s, %d cores, %s" % (platform.python_version(),
                                                 __import__("zmq").__version__,
                                                 os.cpu_count() or 0, a.bin))
    for keyed in (False, True):
        if a.only and a.only != ("key" if keyed else "nokey"):
            continue
        run(a.bin, a.plugin, a.tasks, a.window, keyed, a.profile, a.concurrency)
    return 0


if __name__ == "__main__":
    sys.exit(main())
