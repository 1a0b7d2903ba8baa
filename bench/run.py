"""``python -m bench.run`` (``make bench``): the gateway's overhead, measured.

Starts the demo upstream, a gateway in front of it, and a floor proxy (a bare
aiohttp pass-through, ``bench.floor_proxy``) in front of it too, then runs
each scenario three times with the same load (``bench.loadgen`` in a process
of its own): direct to the upstream, through the gateway, through the floor.
Targets are judged on gateway vs direct, as they are defined; the floor shows
how much of a miss any aiohttp proxy would share on this machine (floor vs
direct) and how much is the gateway's own (gateway vs floor).
``url_s3_c4`` (``response_format: "url"`` into a real S3 server, SeaweedFS,
started for it and stopped after it) runs through a gateway of its own only:
neither direct nor the floor can store. Prints a table
(and its Markdown form, for the README: one table vs direct, one vs the
floor) and writes ``bench/results/latest.json`` and ``latest.md``.

Missing a target is a measurement, not a failure: the exit code is 0. It is
1 if a scenario could not be measured (non-200 answers, bodies that differ
between direct and gateway or floor, a server that died), 130 on Ctrl-C. Every child
process is stopped on the way out, whatever the way out.

Options: ``--only NAME[,NAME]`` runs a subset; ``--scale X`` multiplies every
duration and request count (e.g. 0.3 for a quick smoke run).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime
import importlib.util
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path
from typing import Any, NoReturn

import msgspec

from bench.loadgen import LoadResult, LoadSpec
from bench.procfs import reset_peak_rss, rss_kib
from bench.report import LEGEND, VS_DIRECT, VS_FLOOR, Row, markdown_table, text_table, write_json
from bench.scenarios import SCENARIOS, Measured, Scenario
from bench.seaweed import running_seaweed
from bench.servers import HOST, ROOT, BenchError, ManagedProcess, Servers, child_preexec, running_servers, running_storage_gateway
from bench.stats import RssInfo, Summary, summarize

RESULTS = ROOT / "bench" / "results"

# Beyond its measured phase a load run spends time on connecting, one
# captured request and warm-up; it is killed (an error) past this margin.
_SETUP_MARGIN_S = 30.0


def machine_info() -> dict[str, Any]:
    """What the numbers depend on: cores, CPU, Python, event loop, aiohttp build."""
    import aiohttp

    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown"
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvloop": importlib.util.find_spec("uvloop") is not None,
        "aiohttp": aiohttp.__version__,
        "aiohttp_c_extensions": importlib.util.find_spec("aiohttp._http_parser") is not None,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "git": _git_revision(),
    }


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=5)


def _git_revision() -> str | None:
    """The commit measured, ``+dirty`` when tracked files differ from it."""
    try:
        rev = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def header(info: dict[str, Any]) -> str:
    return (
        f"nproc {info['nproc']} ({info['cpu']}), Linux {info['kernel']}, Python {info['python']}, "
        f"uvloop {'yes' if info['uvloop'] else 'no'}, aiohttp {info['aiohttp']}"
        f"{'' if info['aiohttp_c_extensions'] else ' (pure Python)'}, "
        f"load avg {info['loadavg_at_start'][0]}, commit {info['git'] or '?'}"
    )


def _load(spec: LoadSpec) -> Summary:
    """One load generator run, in its own process, killed if it overstays."""
    limit = spec.hard_timeout + _SETUP_MARGIN_S
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.loadgen", msgspec.json.encode(spec).decode()],
            cwd=ROOT,
            capture_output=True,
            timeout=limit,
            preexec_fn=child_preexec,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"load generator did not finish within {limit:g} s") from None
    if proc.returncode != 0:
        raise BenchError(f"load generator exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-1500:]}")
    result = msgspec.json.decode(proc.stdout, type=LoadResult)
    return summarize(result)


_BOUNDARY = "pixelgate-bench-boundary"


def upload_body(sc: Scenario, scratch: Path) -> Path:
    """The edit scenario's multipart body, written once: its images are a real
    PNG header (what the gateway sniffs) followed by filler bytes."""
    assert sc.upload is not None
    path = scratch / f"{sc.name}.multipart"
    if path.exists():
        return path
    count, size = sc.upload
    ihdr = b"IHDR" + (1024).to_bytes(4, "big") * 2 + bytes([8, 6, 0, 0, 0])
    head = b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + ihdr + zlib.crc32(ihdr).to_bytes(4, "big")
    dash = f"--{_BOUNDARY}\r\n".encode()
    with path.open("wb") as f:
        for name, value in (("model", "bench-edit"), ("prompt", "a pixelgate benchmark")):
            f.write(dash + f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        filler = bytes(range(256)) * (size // 256 + 1)
        for i in range(count):
            f.write(dash + f'Content-Disposition: form-data; name="image[]"; filename="in{i}.png"\r\n'
                    "Content-Type: image/png\r\n\r\n".encode())
            f.write(head + filler[: size - len(head)] + b"\r\n")
        f.write(f"--{_BOUNDARY}--\r\n".encode())
    return path


def _spec(sc: Scenario, port: int, watch: dict[str, int], scale: float, scratch: Path | None = None) -> LoadSpec:
    duration = sc.duration * scale
    upload = {} if sc.upload is None or scratch is None else {
        "body_file": str(upload_body(sc, scratch)),
        "content_type": f"multipart/form-data; boundary={_BOUNDARY}",
        "path": sc.path,
    }
    return LoadSpec(
        host=HOST,
        port=port,
        body=msgspec.json.encode(sc.body()).decode(),
        **upload,
        concurrency=sc.concurrency,
        requests=max(1, int(sc.requests * scale)),
        duration=duration,
        warmup=max(sc.concurrency, int(sc.warmup * scale)),
        expect_events=sc.expect_events,
        expect_url=sc.storage,
        hard_timeout=duration + 15.0,
        watch_pids=watch,
    )


def _check(side: str, summary: Summary) -> None:
    if summary.errors or not summary.requests:
        raise BenchError(f"{side}: {summary.errors} failed of {summary.requests} requests; first: {summary.first_error}")


def _through(
    sc: Scenario, servers: Servers, scale: float, name: str, pid: int, port: int,
    check: ManagedProcess | None = None, watch: dict[str, int] | None = None,
) -> tuple[Summary, RssInfo]:
    """One run through a proxy; its RSS peak is reset first, so it covers this run only."""
    baseline = rss_kib(pid)["VmRSS"]
    reset = reset_peak_rss(pid)
    upstream = servers.edits.pid if sc.upload else servers.upstream.pid
    summary = _load(_spec(sc, port, {name: pid, "upstream": upstream, **(watch or {})}, scale, servers.scratch))
    servers.check_alive()
    if check is not None and not check.alive():
        raise BenchError(f"{check.name} (pid {check.pid}) has exited:\n{check.log_tail()}")
    peak = rss_kib(pid)["VmHWM"]
    _check(name, summary)
    return summary, RssInfo(baseline_kib=baseline, peak_kib=peak, peak_reset=reset)


def _same_answer(direct: Summary, name: str, other: Summary) -> None:
    if (direct.sample_size, direct.sample_sha256) != (other.sample_size, other.sample_sha256):
        raise BenchError(
            f"answers differ: direct {direct.sample_size} B sha256 {direct.sample_sha256[:16]}…, "
            f"{name} {other.sample_size} B sha256 {other.sample_sha256[:16]}…"
        )


def measure(sc: Scenario, servers: Servers, scale: float) -> Measured:
    """Direct, through the gateway, then through the floor, one after the other.

    Sequential, never concurrent: on 2 cores the three runs would compete for
    CPU. The idle proxy's event loop sleeps, so it takes nothing from the run.
    """
    port, pid = (servers.edits_port, servers.edits.pid) if sc.upload else (servers.upstream_port, servers.upstream.pid)
    direct = _load(_spec(sc, port, {"upstream": pid}, scale, servers.scratch))
    _check("direct", direct)
    servers.check_alive()
    gateway, gateway_rss = _through(sc, servers, scale, "gateway", servers.gateway.pid, servers.gateway_port)
    _same_answer(direct, "gateway", gateway)
    floor, floor_rss = _through(sc, servers, scale, "floor", servers.floor.pid, servers.floor_port)
    _same_answer(direct, "floor", floor)
    return Measured(direct, gateway, floor, gateway_rss, floor_rss)


def _post_json(url: str, body: dict[str, Any], timeout: float = 30.0) -> Any:
    req = urllib.request.Request(url, data=msgspec.json.encode(body), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return msgspec.json.decode(resp.read())


def _check_stored(sc: Scenario, servers: Servers, gateway: ManagedProcess) -> int:
    """One answer's URL fetched from S3: the very image the upstream sends as base64, decoded.

    ``created: 0`` and the demo's cached payload make the upstream's image the
    same on every request, so one direct request says what must be stored.
    """
    answer = _post_json(f"http://{HOST}:{gateway.port}{sc.path}", sc.body())
    try:
        url = answer["data"][0]["url"]
    except (KeyError, IndexError, TypeError):
        raise BenchError(f"sampled answer has no URL: {str(answer)[:200]}") from None
    with urllib.request.urlopen(url, timeout=30.0) as resp:
        stored = resp.read()
    direct_body = {k: v for k, v in sc.body().items() if k != "response_format"}
    expected = base64.b64decode(_post_json(f"http://{HOST}:{servers.upstream_port}{sc.path}", direct_body)["data"][0]["b64_json"])
    if stored != expected:
        raise BenchError(f"the stored image ({len(stored)} B) is not the upstream's ({len(expected)} B decoded)")
    return len(stored)


def measure_storage(sc: Scenario, servers: Servers, scale: float) -> Measured:
    """Through a gateway of its own that stores in SeaweedFS; both started here, stopped at the end.

    One answer's URL is then fetched back (``_check_stored``): its size is ``Measured.stored_bytes``.
    """
    logs = RESULTS / "logs"
    with (
        tempfile.TemporaryDirectory(prefix="seaweed-", dir=servers.scratch) as root,
        running_seaweed(Path(root), logs / "seaweed.log") as s3,
    ):
        storage: dict[str, object] = {
            "backend": "s3",
            "s3": {"bucket": s3.bucket, "prefix": "bench/", "endpoint": s3.endpoint, "region": s3.region,
                   "access_key_id": s3.access_key_id, "secret_access_key": s3.secret_access_key, "urls": "presigned"},
        }
        with running_storage_gateway(servers, storage, logs) as gateway:
            summary, rss = _through(sc, servers, scale, "gateway", gateway.pid, gateway.port,
                                    check=gateway, watch={"s3": s3.pid})
            stored = _check_stored(sc, servers, gateway)
    return Measured(None, summary, None, rss, None, stored_bytes=stored)


def run_scenario(sc: Scenario, servers: Servers, scale: float) -> dict[str, Any]:
    started = time.monotonic()
    out: dict[str, Any] = {"name": sc.name, "description": sc.description, "params": sc.params()}
    try:
        servers.check_alive()
        m = measure_storage(sc, servers, scale) if sc.storage else measure(sc, servers, scale)
    except BenchError as exc:
        out |= {"error": str(exc), "rows": [Row(sc.name, "", "", None, None, error=str(exc))]}
    else:
        out |= {
            "error": None,
            "direct": _asdict(m.direct),
            "gateway": dataclasses.asdict(m.gateway),
            "floor": _asdict(m.floor),
            "gateway_rss": dataclasses.asdict(m.gateway_rss),
            "floor_rss": _asdict(m.floor_rss),
            "rows": sc.rows(sc, m),
        }
    out["seconds"] = round(time.monotonic() - started, 1)
    return out


def _asdict(value: Summary | RssInfo | None) -> dict[str, Any] | None:
    return None if value is None else dataclasses.asdict(value)


# Above this share of the cores taken by other processes during a run, its
# numbers are flagged: on 2 cores, 10 % elsewhere is 20 % of one core gone.
_CONTENTION_PCT = 10.0
# ... and only if that is at least this many CPU seconds (10 ticks): see _contended.
_MIN_OTHER_S = 0.1
_SIDES = ("direct", "gateway", "floor")


def _cpu_table(results: list[dict[str, Any]]) -> str:
    """CPU microseconds per request of each process, to see where the time goes.

    ``other`` is the share of all cores that anything else used meanwhile
    (another program, kernel threads, the hypervisor), ``irq`` the share in
    interrupts (mostly the loopback traffic itself).
    """
    lines = [
        "CPU per request (us) of each process; other/irq: share of all cores used meanwhile by other processes / interrupts",
        f"  {'scenario':<14} {'side':<8} {'proxy':>8} {'upstream':>8} {'loadgen':>8} {'other':>6} {'irq':>6}",
    ]
    for res in results:
        if res["error"]:
            continue
        for i, side in enumerate(side for side in _SIDES if res[side] is not None):
            cpu, other, irq = (res[side][k] for k in ("cpu_us_per_request", "other_cpu_pct", "irq_cpu_pct"))
            proxy = f"{cpu.get(side, 0):8.0f}" if side != "direct" else f"{'-':>8}"
            lines.append(
                f"  {res['name'] if i == 0 else '':<14} {side:<8} {proxy} {cpu.get('upstream', 0):8.0f}"
                f" {cpu.get('loadgen', 0):8.0f} {_pct(other):>6} {_pct(irq):>6}"
                + (f"  (SeaweedFS {cpu['s3']:.0f})" if "s3" in cpu else "")
            )
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f}%"


def _contended(side: dict[str, Any]) -> bool:
    """Others took over ``_CONTENTION_PCT`` of the cores, and enough CPU time to be sure of it.

    CPU times come in 10 ms ticks, read for up to five processes: on a phase
    of a fraction of a second the share alone could be rounding.
    """
    pct = side["other_cpu_pct"]
    if pct is None or pct <= _CONTENTION_PCT:
        return False
    seconds = pct / 100 * side["elapsed_s"] * (os.cpu_count() or 1)
    return seconds >= _MIN_OTHER_S


def _contention(results: list[dict[str, Any]]) -> str | None:
    """A warning naming the runs taken while other processes used the CPUs, or None."""
    hit = [
        f"{res['name']}/{side} {res[side]['other_cpu_pct']:.0f}%"
        for res in results
        if not res["error"]
        for side in _SIDES
        if res[side] is not None and _contended(res[side])
    ]
    if not hit:
        return None
    return (
        f"Warning: other processes used more than {_CONTENTION_PCT:g}% of the cores during "
        f"{', '.join(hit)}; those numbers were taken under contention."
    )


def _markdown(info: dict[str, Any], elapsed: float, rows: list[Row], warning: str | None) -> str:
    """Two tables, so each stays readable: the targets vs direct, then the floor."""
    return (
        f"_{header(info)}; bench took {elapsed} s._\n\n"
        + (f"**{warning}**\n\n" if warning else "")
        + f"{markdown_table(rows, VS_DIRECT)}\n\n"
        "Against the floor: a bare aiohttp pass-through proxy (`bench/floor_proxy.py`) in front of the same "
        "upstream, measured in the same run. Ratios (x) for throughput, differences for latency; "
        "the RSS rows compare the two proxies.\n\n"
        f"{markdown_table(rows, VS_FLOOR)}\n"
    )


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description="Benchmark the gateway against its upstream.")
    parser.add_argument("--only", help="comma-separated scenario names (default: all)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply durations and request counts (default 1)")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json", help="JSON results file")
    args = parser.parse_args(argv)
    names = {s.name for s in SCENARIOS}
    if args.only:
        unknown = set(args.only.split(",")) - names
        if unknown:
            parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; known: {', '.join(s.name for s in SCENARIOS)}")
    if not 0 < args.scale <= 10:
        parser.error("--scale must be in (0, 10]")
    return args


def _terminate(signum: int, frame: object) -> NoReturn:
    # SIGTERM/SIGHUP take the Ctrl-C path, so every `finally` stops its children.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    selected = [s for s in SCENARIOS if not args.only or s.name in args.only.split(",")]
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    info = machine_info()
    print(f"Pixelgate bench: {header(info)}", flush=True)
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    try:
        with running_servers(RESULTS / "logs") as servers:
            print(f"upstream pid {servers.upstream.pid} :{servers.upstream_port}, "
                  f"gateway pid {servers.gateway.pid} :{servers.gateway_port}, "
                  f"floor pid {servers.floor.pid} :{servers.floor_port}", flush=True)
            for i, sc in enumerate(selected, 1):
                print(f"[{i}/{len(selected)}] {sc.name}: {sc.description} ...", end=" ", flush=True)
                res = run_scenario(sc, servers, args.scale)
                print("ERROR" if res["error"] else "done", f"({res['seconds']} s)", flush=True)
                if res["error"]:
                    print(f"    {res['error']}", flush=True)
                results.append(res)
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"\nbench: {exc}", file=sys.stderr)
        return 1
    rows: list[Row] = [row for res in results for row in res["rows"]]
    elapsed = round(time.monotonic() - started, 1)
    print()
    print(text_table(rows))
    print(LEGEND)
    print()
    print(_cpu_table(results))
    warning = _contention(results)
    if warning:
        print(warning)
    print()
    markdown = _markdown(info, elapsed, rows, warning)
    print(f"Markdown (also in {os.path.relpath(args.output.with_suffix('.md'))}):")
    print()
    print(markdown, end="")
    failed = [res["name"] for res in results if res["error"]]
    write_json(
        args.output,
        {
            "machine": info,
            "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "seconds": elapsed,
            "scale": args.scale,
            "ok": not failed,
            "contention_warning": warning,
            "scenarios": [{**res, "rows": [r.as_json() for r in res["rows"]]} for res in results],
        },
    )
    args.output.with_suffix(".md").write_text(markdown)
    print(f"\nresults: {os.path.relpath(args.output)}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
