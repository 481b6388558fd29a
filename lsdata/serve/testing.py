"""Local helpers for the serving tests and ``benchmarks/serve_load.py``: a free port, a throw-away redis-server."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(directory: str | Path) -> tuple[subprocess.Popen, str] | None:
    """A redis-server on a free 127.0.0.1 port with its files in ``directory``, no persistence; None when
    redis-server is not installed. The caller stops it (``proc.terminate()``)."""
    exe = shutil.which("redis-server")
    if exe is None:
        return None
    import redis

    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = redis.Redis(port=port)
    for _ in range(200):
        try:
            r.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with status {proc.returncode}") from None
            time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0"


def start_server(run: str | Path, store: str, *args: str, workers: int = 1, timeout: float = 180.0,
                 cwd: str | Path | None = None) -> tuple[subprocess.Popen, str, set[int]]:
    """``lsdata serve start RUN --store STORE ARGS`` on a free 127.0.0.1 port in its own process group; returns
    once every worker answered ``/health`` on a fresh connection (or ``timeout`` passed): (process, url, the
    worker pids seen). Raises RuntimeError with the server's output if it exits first."""
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "lsdata.cli", "serve", "start", str(run), "--store", store, "--port", str(port),
           "--workers", str(workers), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    url, pids, deadline = f"http://127.0.0.1:{port}", set(), time.time() + timeout
    while len(pids) < workers and time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}: {proc.stdout.read().decode()}")
        try:  # a fresh connection each time, so the kernel can hand it to another worker
            pids.add(httpx.get(f"{url}/health", headers={"connection": "close"}, timeout=30).json()["pid"])
        except httpx.TransportError:
            time.sleep(0.2)
    return proc, url, pids


def stop_server(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM the server's process group, SIGKILL after ``grace`` seconds."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
