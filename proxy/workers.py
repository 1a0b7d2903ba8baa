"""``pixelgate serve --workers N``: N worker processes sharing one port.

The supervisor (this module) binds nothing itself: each worker is a full
``pixelgate serve`` process listening with SO_REUSEPORT, so the kernel spreads
connections across them. Metrics use prometheus-client's multiprocess mode:
``PROMETHEUS_MULTIPROC_DIR`` is set for the workers before they import
prometheus-client (it picks its storage at import time), and ``/metrics`` on any
worker reports the totals of all of them.

A worker that dies is restarted (with a short backoff if it keeps dying);
SIGTERM/SIGINT go to every worker, which drain gracefully (see
``proxy.server.serve``); the supervisor exits 0 once they are gone.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["supervise"]

log = logging.getLogger("pixelgate.workers")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Each worker's slot (0..N-1), the same for the worker that replaces it: what is
# its own on disk (the usage ledger's spool) outlives it and is picked up again.
WORKER_ENV = "PIXELGATE_WORKER"


def _metrics_dir() -> Path:
    """A fresh directory for the workers' metric files (wiped: stale files would count)."""
    if configured := os.environ.get(MULTIPROC_ENV):
        path = Path(configured)
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path
    return Path(tempfile.mkdtemp(prefix="pixelgate-metrics-"))


def supervise(worker_args: list[str], workers: int, grace: float) -> int:
    """Run ``workers`` copies of ``pixelgate serve WORKER_ARGS`` until signalled."""
    metrics_dir = _metrics_dir()
    os.environ[MULTIPROC_ENV] = str(metrics_dir)
    # Imported only now: prometheus-client reads the variable at import time.
    from prometheus_client import multiprocess

    command = [sys.executable, "-m", "pixelgate", "serve", *worker_args, "--reuse-port"]
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def reload(signum: int, frame: object) -> None:
        # Each worker re-reads the config itself (see proxy.reload).
        for proc in procs.values():
            proc.send_signal(signal.SIGHUP)

    signal.signal(signal.SIGHUP, reload)
    procs: dict[int, subprocess.Popen[bytes]] = {}
    slots: dict[int, int] = {}
    deaths: list[float] = []

    def start(slot: int) -> None:
        proc = subprocess.Popen(command, env={**os.environ, WORKER_ENV: str(slot)})
        procs[proc.pid], slots[proc.pid] = proc, slot
        log.info("worker %d started", proc.pid)

    for slot in range(workers):
        start(slot)
    try:
        while not stopping:
            time.sleep(0.2)
            for pid, proc in list(procs.items()):
                if proc.poll() is None:
                    continue
                del procs[pid]
                slot = slots.pop(pid)
                multiprocess.mark_process_dead(pid)
                if stopping:
                    break
                log.warning("worker %d exited with %s; restarting it", pid, proc.returncode)
                now = time.monotonic()
                deaths[:] = [t for t in deaths if now - t < 10] + [now]
                if len(deaths) > 3 * workers:
                    # Crash-looping (bad config, port taken): slow down, keep trying.
                    time.sleep(1)
                start(slot)
        log.info("stopping %d worker(s)", len(procs))
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace + 15
        for proc in procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return 0
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
