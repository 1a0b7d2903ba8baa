"""Turning one load generator run into the numbers the report uses."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from bench.loadgen import LoadResult

__all__ = ["RssInfo", "Summary", "percentile", "summarize"]


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class RssInfo:
    """The gateway's memory around one scenario, in KiB."""

    baseline_kib: int
    peak_kib: int
    # False when clear_refs could not reset the high-water mark: then the
    # peak is the process's lifetime peak, an upper bound.
    peak_reset: bool


@dataclass(frozen=True)
class Summary:
    """One side (direct or gateway) of one scenario."""

    requests: int
    errors: int
    first_error: str | None
    elapsed_s: float
    rps: float
    mb_per_s: float
    latency_ms: dict[str, float | None]
    ttfe_ms: dict[str, float | None]
    sample_size: int
    sample_sha256: str
    sample_events: int
    loadgen_uvloop: bool
    # CPU microseconds per measured request, per process (loadgen included).
    cpu_us_per_request: dict[str, float] = field(default_factory=dict)
    # Share (%) of all cores' time during the measured phase used by anything
    # but the processes measured (other programs, kernel threads, steal): on a
    # shared 2-core machine, the sign that a number was taken under contention.
    other_cpu_pct: float | None = None
    # Share (%) spent in interrupts: mostly the loopback traffic itself.
    irq_cpu_pct: float | None = None


def _quantiles(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    out: dict[str, float | None] = {f"p{q:g}": percentile(ordered, q) for q in (50, 90, 99)}
    out["max"] = ordered[-1] if ordered else None
    out["mean"] = sum(ordered) / len(ordered) if ordered else None
    return out


def summarize(result: LoadResult) -> Summary:
    elapsed = result.elapsed_s or float("nan")
    n = result.requests
    cpu = {name: seconds * 1e6 / n for name, seconds in result.cpu_s.items()} if n else {}
    capacity = result.elapsed_s * (os.cpu_count() or 1)
    other = irq = None
    if capacity > 0 and result.machine_cpu_s:
        ours = sum(result.cpu_s.values())
        other = max(0.0, result.machine_cpu_s["busy"] - ours) * 100 / capacity
        irq = result.machine_cpu_s["irq"] * 100 / capacity
    return Summary(
        requests=n,
        errors=result.errors,
        first_error=result.first_error,
        elapsed_s=result.elapsed_s,
        rps=n / elapsed,
        mb_per_s=result.bytes / elapsed / 1e6,
        latency_ms=_quantiles(result.latencies_ms),
        ttfe_ms=_quantiles(result.ttfe_ms),
        sample_size=result.sample_size,
        sample_sha256=result.sample_sha256,
        sample_events=result.sample_events,
        loadgen_uvloop=result.uvloop,
        cpu_us_per_request=cpu,
        other_cpu_pct=other,
        irq_cpu_pct=irq,
    )
