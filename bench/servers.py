"""Starting and stopping the processes under test: demo upstream, gateway, floor.

The floor (``bench.floor_proxy``) is a bare aiohttp pass-through proxy in
front of the same upstream: what any aiohttp proxy costs on this machine,
measured in the same run, so the gateway's own overhead can be told apart.

Every child is started in a session of its own, so a Ctrl-C at the terminal
reaches only the orchestrator, which then stops the children in order (the
``finally`` of ``running_servers``). Each child also asks the kernel for
SIGKILL should the orchestrator die without cleaning up (``PR_SET_PDEATHSIG``),
so not even a ``kill -9`` of the bench leaves servers bound to ports.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BenchError", "ManagedProcess", "Servers", "child_preexec", "running_servers", "running_storage_gateway"]

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1


class BenchError(Exception):
    """A scenario or a server failed: the bench exits non-zero."""


def child_preexec() -> None:
    """In the child, before exec: die with the parent (Linux); leave Ctrl-C to the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    """A port free right now (another process could take it before we bind it)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class ManagedProcess:
    """A server child with its output in a log file, stopped by ``stop()``."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        # The port it serves on, when the starter records it.
        self.port = 0
        with log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=child_preexec,
            )

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM (a graceful aiohttp shutdown), SIGKILL if it lingers."""
        if not self.alive():
            return
        self._proc.terminate()
        try:
            self._proc.wait(grace)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def wait_ready(self, url: str, timeout: float = 20.0) -> None:
        """Poll ``url`` until it answers 200; fail early if the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise BenchError(f"{self.name} exited during start-up:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise BenchError(f"{self.name} not ready at {url} after {timeout:g} s:\n{self.log_tail()}")


@dataclass(frozen=True)
class Servers:
    upstream: ManagedProcess
    upstream_port: int
    gateway: ManagedProcess
    gateway_port: int
    floor: ManagedProcess
    floor_port: int
    # The edits scenario's upstream (bench.edit_upstream), behind both proxies too.
    edits: ManagedProcess
    edits_port: int
    # Where scenario inputs (upload bodies) are written.
    scratch: Path

    def check_alive(self) -> None:
        for proc in (self.upstream, self.gateway, self.floor, self.edits):
            if not proc.alive():
                raise BenchError(f"{proc.name} (pid {proc.pid}) has exited:\n{proc.log_tail()}")


def _pixelgate() -> list[str]:
    """The venv's ``pixelgate`` script, or ``python -m pixelgate`` (the same CLI) without it."""
    script = Path(sys.executable).with_name("pixelgate")
    if script.exists() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "pixelgate"]


_CONFIG = """\
server: {{host: {host}, port: 0, keepalive_interval: 15}}
providers:
  up: {{adapter: openai, base_url: "http://{host}:{port}/v1"}}
  edits: {{adapter: openai, base_url: "http://{host}:{edits_port}/v1"}}
models:
  bench: [{{provider: up}}]
  bench-edit: [{{provider: edits}}]
"""


def _start(name: str, argv: list[str], ready_path: str, port: int, logs: Path) -> ManagedProcess:
    proc = ManagedProcess(name, argv, logs / f"{name}.log")
    try:
        proc.wait_ready(f"http://{HOST}:{port}{ready_path}")
    except BaseException:
        proc.stop()
        raise
    return proc


@contextlib.contextmanager
def running_servers(logs: Path) -> Iterator[Servers]:
    """The demo upstream, and a gateway and a floor proxy in front of it; all stopped on exit."""
    logs.mkdir(parents=True, exist_ok=True)
    started: list[ManagedProcess] = []
    with tempfile.TemporaryDirectory(prefix="pixelgate-bench-") as tmp:
        try:
            up_port = free_port()
            upstream = _start(
                "upstream",
                [*_pixelgate(), "demo-upstream", "--host", HOST, "--port", str(up_port)],
                "/v1/models",
                up_port,
                logs,
            )
            started.append(upstream)
            edits_port = free_port()
            edits = _start(
                "edits",
                [sys.executable, "-m", "bench.edit_upstream", "--host", HOST, "--port", str(edits_port)],
                "/v1/models",
                edits_port,
                logs,
            )
            started.append(edits)
            config = Path(tmp) / "gateway.yaml"
            # The usage ledger (on by default) keeps its SQLite file in the run's scratch
            # directory; BENCH_LEDGER=off measures the gateway without it.
            os.environ["PIXELGATE_DATA_DIR"] = str(Path(tmp) / "data")
            ledger = "" if os.environ.get("BENCH_LEDGER", "on") != "off" else "ledger: {enabled: false}\n"
            config.write_text(_CONFIG.format(host=HOST, port=up_port, edits_port=edits_port) + ledger)
            gw_port = free_port()
            gateway = _start(
                "gateway",
                [*_pixelgate(), "serve", "--config", str(config), "--host", HOST, "--port", str(gw_port)],
                "/healthz",
                gw_port,
                logs,
            )
            started.append(gateway)
            floor_port = free_port()
            floor = _start(
                "floor",
                [sys.executable, "-m", "bench.floor_proxy", "--host", HOST, "--port", str(floor_port),
                 "--upstream", f"http://{HOST}:{up_port}", "--edits-upstream", f"http://{HOST}:{edits_port}"],
                "/healthz",
                floor_port,
                logs,
            )
            started.append(floor)
            yield Servers(upstream, up_port, gateway, gw_port, floor, floor_port, edits, edits_port, Path(tmp))
        finally:
            for proc in reversed(started):
                proc.stop()




@contextlib.contextmanager
def running_storage_gateway(servers: Servers, storage: dict[str, object], logs: Path) -> Iterator[ManagedProcess]:
    """A second gateway, like the first plus a ``storage`` section (``url_s3_c4``); stopped on exit.

    A process of its own, so the first gateway's config (and memory) stay as
    the other scenarios measure them, and this one's idle RSS is a fresh start.
    """
    config = servers.scratch / "gateway-storage.yaml"
    # YAML is a superset of JSON: the section (with its keys) written as JSON needs no quoting rules.
    config.write_text(
        _CONFIG.format(host=HOST, port=servers.upstream_port, edits_port=servers.edits_port)
        + f"storage: {json.dumps(storage)}\n"
    )
    port = free_port()
    proc = _start(
        "gateway-storage",
        [*_pixelgate(), "serve", "--config", str(config), "--host", HOST, "--port", str(port)],
        "/healthz",
        port,
        logs,
    )
    proc.port = port
    try:
        yield proc
    finally:
        proc.stop()
