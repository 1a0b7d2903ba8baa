"""The load generator: one measurement, in its own process, on uvloop.

Run by ``bench.run`` as ``python -m bench.loadgen SPEC_JSON``; prints one JSON
object (a ``LoadResult``) on stdout. It lives in a process of its own so that
its CPU is not the gateway's or the upstream's, and so the orchestrator can
kill it if it ever hangs.

A measurement is: one captured request (its body's size and sha256, to check
that direct and gateway answers are byte-identical), warm-up requests on the
same keep-alive connections (not recorded), then the measured phase, which
ends after ``requests`` responses or ``duration`` seconds, whichever is first.
Workers start no new request after that; the ones in flight finish and count.
"""

from __future__ import annotations

import asyncio
import hashlib
import resource
import sys
import time
from pathlib import Path

import msgspec

from bench.http1 import Connection, HttpError, Response, build_request
from bench.procfs import cpu_seconds, machine_cpu_seconds

__all__ = ["LoadResult", "LoadSpec", "main"]


class LoadSpec(msgspec.Struct, frozen=True):
    host: str
    port: int
    body: str
    concurrency: int
    requests: int
    duration: float
    warmup: int = 0
    path: str = "/v1/images/generations"
    # A body too large for the command line (an upload) is read from this file instead.
    body_file: str | None = None
    content_type: str = "application/json"
    # SSE event boundaries every answer must have (None: a plain body).
    expect_events: int | None = None
    # Every answer must be JSON whose data[i] carry a "url" and no "b64_json"
    # (response_format url): bodies are kept and parsed, their size may vary.
    expect_url: bool = False
    # The measured phase is cut off (an error) after this many seconds.
    hard_timeout: float = 60.0
    # Processes whose CPU time is read around the measured phase.
    watch_pids: dict[str, int] = {}


class LoadResult(msgspec.Struct):
    requests: int = 0
    errors: int = 0
    first_error: str | None = None
    elapsed_s: float = 0.0
    bytes: int = 0
    latencies_ms: list[float] = []
    ttfe_ms: list[float] = []
    sample_size: int = 0
    sample_sha256: str = ""
    sample_events: int = 0
    uvloop: bool = False
    # CPU seconds during the measured phase: the watched processes and this one.
    cpu_s: dict[str, float] = {}
    # The whole machine's, over the same phase (see procfs.machine_cpu_seconds).
    machine_cpu_s: dict[str, float] = {}


class _Run:
    """Shared state of one phase: how many requests may still start, until when."""

    def __init__(self, spec: LoadSpec, request: bytes, budget: int, deadline: float | None, record: bool) -> None:
        self.spec = spec
        self.request = request
        self.budget = budget
        self.deadline = deadline
        self.record = record
        self.result = LoadResult()

    def may_start(self) -> bool:
        if self.budget <= 0:
            return False
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            return False
        self.budget -= 1
        return True

    def check(self, resp: Response, expected_size: int) -> str | None:
        """Why this response is wrong, or None."""
        if resp.status != 200:
            return f"HTTP {resp.status}"
        if self.spec.expect_url:
            return _url_problem(resp)
        if expected_size and resp.body_bytes != expected_size:
            return f"body of {resp.body_bytes} bytes, expected {expected_size}"
        want = self.spec.expect_events
        if want is not None and resp.events != want:
            return f"{resp.events} SSE events, expected {want}"
        return None


def _url_problem(resp: Response) -> str | None:
    """Why a response_format url answer is wrong, or None."""
    try:
        data = msgspec.json.decode(bytes(resp.body or b""))["data"]
        if not data or any(not str(d.get("url", "")).startswith("http") or "b64_json" in d for d in data):
            return f"no URL in the answer: {bytes(resp.body or b'')[:200]!r}"
    except (msgspec.DecodeError, KeyError, TypeError, AttributeError):
        return f"not a JSON answer with data: {bytes(resp.body or b'')[:200]!r}"
    return None


async def _connect(spec: LoadSpec, conn: Connection | None) -> Connection:
    if conn is None or conn.closed:
        conn = await Connection.open(spec.host, spec.port)
    return conn


async def _worker(run: _Run, conn: Connection, expected_size: int) -> Connection:
    """Send requests back to back on one connection while the phase allows."""
    result = run.result
    while run.may_start():
        conn = await _connect(run.spec, conn)
        started = time.perf_counter()
        try:
            resp = await conn.request(run.request, capture=run.spec.expect_url)
        except HttpError as exc:
            result.errors += 1
            result.first_error = result.first_error or str(exc)
            conn.close()
            continue
        ended = time.perf_counter()
        problem = run.check(resp, expected_size)
        if problem is not None:
            result.errors += 1
            result.first_error = result.first_error or problem
        if not run.record:
            continue
        result.requests += 1
        result.bytes += resp.body_bytes
        result.latencies_ms.append((ended - started) * 1000)
        if resp.first_event_at is not None:
            result.ttfe_ms.append((resp.first_event_at - started) * 1000)
    return conn


async def _phase(run: _Run, conns: list[Connection], expected_size: int) -> list[Connection]:
    return list(await asyncio.gather(*(_worker(run, c, expected_size) for c in conns)))


async def _sample(spec: LoadSpec, conn: Connection, request: bytes) -> Response:
    """One request whose body is kept, for the identity check."""
    resp = await conn.request(request, capture=True)
    if resp.status != 200:
        body = bytes(resp.body or b"")[:300]
        raise HttpError(f"sample request: HTTP {resp.status}: {body!r}")
    return resp


def _cpu(spec: LoadSpec) -> dict[str, float]:
    out = {name: cpu_seconds(pid) for name, pid in spec.watch_pids.items()}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["loadgen"] = usage.ru_utime + usage.ru_stime
    return out


async def measure(spec: LoadSpec, body: bytes) -> LoadResult:
    request = build_request(spec.host, spec.port, spec.path, body, spec.content_type)
    conns = [await Connection.open(spec.host, spec.port) for _ in range(spec.concurrency)]
    try:
        sample = await _sample(spec, conns[0], request)
        expected_size = sample.body_bytes
        if spec.expect_url and (problem := _url_problem(sample)) is not None:
            raise HttpError(f"sample request: {problem}")
        if spec.expect_events is not None and sample.events != spec.expect_events:
            raise HttpError(f"sample request: {sample.events} SSE events, expected {spec.expect_events}")
        warm = _Run(spec, request, spec.warmup, None, record=False)
        conns = await _phase(warm, conns, expected_size)
        cpu_before, machine_before = _cpu(spec), machine_cpu_seconds()
        started = time.perf_counter()
        run = _Run(spec, request, spec.requests, started + spec.duration, record=True)
        async with asyncio.timeout(spec.hard_timeout):
            conns = await _phase(run, conns, expected_size)
        result = run.result
        result.elapsed_s = time.perf_counter() - started
        cpu_after, machine_after = _cpu(spec), machine_cpu_seconds()
        result.cpu_s = {k: round(cpu_after[k] - cpu_before[k], 3) for k in cpu_after}
        result.machine_cpu_s = {k: round(machine_after[k] - machine_before[k], 3) for k in machine_after}
        result.errors += warm.result.errors
        result.first_error = result.first_error or warm.result.first_error
        result.sample_size = expected_size
        result.sample_sha256 = hashlib.sha256(sample.body or b"").hexdigest()
        result.sample_events = sample.events
        return result
    finally:
        for conn in conns:
            conn.close()


def _new_loop() -> tuple[asyncio.AbstractEventLoop, bool]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop(), False
    return uvloop.new_event_loop(), True


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = msgspec.json.decode(argv[0], type=LoadSpec)
    loop, has_uvloop = _new_loop()
    try:
        # Read before the loop runs: an upload body is one file read, once.
        body = Path(spec.body_file).read_bytes() if spec.body_file else spec.body.encode()
        result = loop.run_until_complete(measure(spec, body))
    except (HttpError, OSError, TimeoutError) as exc:
        result = LoadResult(errors=1, first_error=f"{type(exc).__name__}: {exc}")
    finally:
        loop.close()
    result.uvloop = has_uvloop
    sys.stdout.buffer.write(msgspec.json.encode(result) + b"\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
