"""A Ray cluster of one-CPU nodes on this machine, for the cluster tests and ``bench/cluster_speed.py``: real
``ray start`` processes (head and workers) on 127.0.0.1, ended with their whole process groups."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([str(RAY), "start", "--block", "--num-cpus=1", "--node-ip-address=127.0.0.1",
                                 "--disable-usage-stats", *args], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _end(proc: subprocess.Popen) -> None:
    """End one `ray start --block` and every process of its group (its raylet, workers, store)."""
    for signum, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                proc.wait(5)
                return
            time.sleep(0.2)


def _nodes_up(address: str, want: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        out = subprocess.run([str(RAY), "status", f"--address={address}"], capture_output=True, text=True).stdout
        if out.count("node_") >= want:
            return
        time.sleep(1)
    raise RuntimeError(f"the Ray cluster at {address} did not come up with {want} node(s):\n{out}")


@contextlib.contextmanager
def local_ray_cluster(nodes: int, timeout: float = 180) -> Iterator[str]:
    """``nodes`` one-CPU Ray nodes on this machine; yields the head's address (``127.0.0.1:PORT``)."""
    temp = Path(tempfile.mkdtemp(prefix="ray_"))  # short: Ray's socket paths must stay under 108 characters
    port = free_port()
    address = f"127.0.0.1:{port}"
    procs = [_start(["--head", f"--port={port}", f"--temp-dir={temp}", "--include-dashboard=false",
                     f"--ray-client-server-port={free_port()}"], temp / "head.log")]
    try:
        _nodes_up(address, 1, timeout)
        for i in range(nodes - 1):
            procs.append(_start([f"--address={address}"], temp / f"node{i}.log"))
        _nodes_up(address, nodes, timeout)
        yield address
    finally:
        for proc in reversed(procs):
            _end(proc)
        shutil.rmtree(temp, ignore_errors=True)
