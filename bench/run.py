"""``python -m bench.run`` (``make bench``): the gateway's overhead, measured.

Starts the demo upstream and a gateway in front of it, then runs each
scenario twice with the same load (``bench.loadgen`` in a process of its own):
direct to the upstream, then through the gateway. Prints a table (and its
Markdown form, for the README) and writes ``bench/results/latest.json``.

Missing a target is a measurement, not a failure: the exit code is 0. It is
1 if a scenario could not be measured (non-200 answers, bodies that differ
between direct and gateway, a server that died), 130 on Ctrl-C. Every child
process is stopped on the way out, whatever the way out.

Options: ``--only NAME[,NAME]`` runs a subset; ``--scale X`` multiplies every
duration and request count (e.g. 0.3 for a quick smoke run).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import msgspec

from bench.loadgen import LoadResult, LoadSpec
from bench.procfs import reset_peak_rss, rss_kib
from bench.report import Row, markdown_table, text_table, write_json
from bench.scenarios import SCENARIOS, Scenario
from bench.servers import HOST, ROOT, BenchError, Servers, child_preexec, running_servers
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


def _spec(sc: Scenario, port: int, watch: dict[str, int], scale: float) -> LoadSpec:
    duration = sc.duration * scale
    return LoadSpec(
        host=HOST,
        port=port,
        body=msgspec.json.encode(sc.body()).decode(),
        concurrency=sc.concurrency,
        requests=max(1, int(sc.requests * scale)),
        duration=duration,
        warmup=max(sc.concurrency, int(sc.warmup * scale)),
        expect_events=sc.expect_events,
        hard_timeout=duration + 15.0,
        watch_pids=watch,
    )


def _check(side: str, summary: Summary) -> None:
    if summary.errors or not summary.requests:
        raise BenchError(f"{side}: {summary.errors} failed of {summary.requests} requests; first: {summary.first_error}")


def measure(sc: Scenario, servers: Servers, scale: float) -> tuple[Summary, Summary, RssInfo]:
    """Direct, then through the gateway; the gateway's RSS peak covers its run."""
    up, gw = servers.upstream.pid, servers.gateway.pid
    direct = _load(_spec(sc, servers.upstream_port, {"upstream": up}, scale))
    _check("direct", direct)
    servers.check_alive()
    baseline = rss_kib(gw)["VmRSS"]
    reset = reset_peak_rss(gw)
    gateway = _load(_spec(sc, servers.gateway_port, {"gateway": gw, "upstream": up}, scale))
    servers.check_alive()
    peak = rss_kib(gw)["VmHWM"]
    _check("gateway", gateway)
    if (direct.sample_size, direct.sample_sha256) != (gateway.sample_size, gateway.sample_sha256):
        raise BenchError(
            f"answers differ: direct {direct.sample_size} B sha256 {direct.sample_sha256[:16]}…, "
            f"gateway {gateway.sample_size} B sha256 {gateway.sample_sha256[:16]}…"
        )
    return direct, gateway, RssInfo(baseline_kib=baseline, peak_kib=peak, peak_reset=reset)


def run_scenario(sc: Scenario, servers: Servers, scale: float) -> dict[str, Any]:
    started = time.monotonic()
    out: dict[str, Any] = {"name": sc.name, "description": sc.description, "params": sc.params()}
    try:
        servers.check_alive()
        direct, gateway, rss = measure(sc, servers, scale)
    except BenchError as exc:
        out |= {"error": str(exc), "rows": [Row(sc.name, "", "", None, None, error=str(exc))]}
    else:
        out |= {
            "error": None,
            "direct": dataclasses.asdict(direct),
            "gateway": dataclasses.asdict(gateway),
            "gateway_rss": dataclasses.asdict(rss),
            "rows": sc.rows(sc, direct, gateway, rss),
        }
    out["seconds"] = round(time.monotonic() - started, 1)
    return out


def _cpu_table(results: list[dict[str, Any]]) -> str:
    """CPU microseconds per request of each process, to see where the time goes."""
    lines = ["CPU per request (us): direct = upstream + loadgen; via gateway = gateway + upstream + loadgen"]
    for res in results:
        if res["error"]:
            continue
        d, g = res["direct"]["cpu_us_per_request"], res["gateway"]["cpu_us_per_request"]
        lines.append(
            f"  {res['name']:<14} direct: upstream {d.get('upstream', 0):8.0f}  loadgen {d.get('loadgen', 0):7.0f}"
            f"   | gateway: gateway {g.get('gateway', 0):8.0f}  upstream {g.get('upstream', 0):8.0f}"
            f"  loadgen {g.get('loadgen', 0):7.0f}"
        )
    return "\n".join(lines)


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
                  f"gateway pid {servers.gateway.pid} :{servers.gateway_port}", flush=True)
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
    print()
    print(_cpu_table(results))
    print()
    markdown = f"_{header(info)}; bench took {elapsed} s._\n\n{markdown_table(rows)}\n"
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
            "scenarios": [{**res, "rows": [r.as_json() for r in res["rows"]]} for res in results],
        },
    )
    args.output.with_suffix(".md").write_text(markdown)
    print(f"\nresults: {os.path.relpath(args.output)}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
