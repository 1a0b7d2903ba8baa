"""The five scenarios: what load each applies, and what each reports.

Every scenario sends the same body direct to the demo upstream and through
the gateway (which forwards the ``demo`` knobs untouched), so the only
difference between the two measurements is the gateway hop. ``created: 0``
makes answers byte-identical, which the bench checks (size and sha256).

Durations are chosen so that each scenario, direct + gateway, ends within
about 20 s, and the whole run within about 2 minutes on 2 cores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.report import Row, Target
from bench.stats import RssInfo, Summary

__all__ = ["SCENARIOS", "Scenario"]

RowsFn = Callable[["Scenario", Summary, Summary, RssInfo], list[Row]]


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    demo: dict[str, Any]
    concurrency: int
    # The measured phase ends at whichever comes first.
    requests: int
    duration: float
    warmup: int
    rows: RowsFn
    stream: bool = False
    partial_images: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"model": "bench", "prompt": "a pixelgate benchmark", "size": "1024x1024"}
        if self.stream:
            body |= {"stream": True, "partial_images": self.partial_images}
        body["demo"] = {"created": 0, **self.demo}
        return body

    @property
    def expect_events(self) -> int | None:
        """Each stream carries the partial images, then one completed event."""
        return self.partial_images + 1 if self.stream else None

    def params(self) -> dict[str, Any]:
        return {
            "body": self.body(),
            "concurrency": self.concurrency,
            "max_requests": self.requests,
            "max_duration_s": self.duration,
            "warmup_requests": self.warmup,
        }


def _mib(kib: int) -> float:
    return kib / 1024


def _rss_rows(sc: Scenario, rss: RssInfo, target: Target | None) -> list[Row]:
    note = "" if rss.peak_reset else "lifetime peak (clear_refs failed)"
    return [
        Row(sc.name, "gateway RSS before", "MiB", None, _mib(rss.baseline_kib), compare="gateway"),
        Row(sc.name, "gateway peak RSS", "MiB", None, _mib(rss.peak_kib), compare="gateway", target=target, note=note),
    ]


def _small_c1(sc: Scenario, d: Summary, g: Summary, rss: RssInfo) -> list[Row]:
    return [
        Row(sc.name, "p50 latency", "ms", d.latency_ms["p50"], g.latency_ms["p50"],
            target=Target("added", 0.25, at_most=True, unit="ms")),
        Row(sc.name, "p99 latency", "ms", d.latency_ms["p99"], g.latency_ms["p99"], compare="added"),
        Row(sc.name, "throughput", "req/s", d.rps, g.rps, compare="ratio"),
    ]


def _small_c32(sc: Scenario, d: Summary, g: Summary, rss: RssInfo) -> list[Row]:
    return [
        Row(sc.name, "throughput", "req/s", d.rps, g.rps, target=Target("ratio", 0.5, at_most=False)),
        Row(sc.name, "p50 latency", "ms", d.latency_ms["p50"], g.latency_ms["p50"], compare="added"),
        Row(sc.name, "p99 latency", "ms", d.latency_ms["p99"], g.latency_ms["p99"], compare="added"),
    ]


def _big_c4(sc: Scenario, d: Summary, g: Summary, rss: RssInfo) -> list[Row]:
    return [
        Row(sc.name, "throughput", "req/s", d.rps, g.rps, target=Target("ratio", 0.8, at_most=False)),
        Row(sc.name, "throughput", "MB/s", d.mb_per_s, g.mb_per_s, compare="ratio"),
        Row(sc.name, "p50 latency", "ms", d.latency_ms["p50"], g.latency_ms["p50"], compare="added"),
        *_rss_rows(sc, rss, Target("gateway", 64, at_most=True, unit="MiB")),
        Row(sc.name, "body size (sha256 equal)", "MB", d.sample_size / 1e6, g.sample_size / 1e6,
            compare="gateway", note="identical"),
    ]


def _stream_c4(sc: Scenario, d: Summary, g: Summary, rss: RssInfo) -> list[Row]:
    return [
        Row(sc.name, "throughput", "streams/s", d.rps, g.rps, target=Target("ratio", 0.95, at_most=False)),
        Row(sc.name, "throughput", "MB/s", d.mb_per_s, g.mb_per_s, target=Target("ratio", 0.95, at_most=False)),
        Row(sc.name, "p50 time to first event", "ms", d.ttfe_ms["p50"], g.ttfe_ms["p50"], compare="added"),
        *_rss_rows(sc, rss, None),
    ]


def _stream_ttfe(sc: Scenario, d: Summary, g: Summary, rss: RssInfo) -> list[Row]:
    return [
        Row(sc.name, "p50 time to first event", "ms", d.ttfe_ms["p50"], g.ttfe_ms["p50"],
            target=Target("added", 1.0, at_most=True, unit="ms")),
        Row(sc.name, "p90 time to first event", "ms", d.ttfe_ms["p90"], g.ttfe_ms["p90"], compare="added"),
        Row(sc.name, "p50 whole stream", "ms", d.latency_ms["p50"], g.latency_ms["p50"], compare="added"),
    ]


SMALL = {"image_bytes": 1024}

SCENARIOS: list[Scenario] = [
    Scenario(
        "small_c1",
        "1 KB image, JSON body, 1 connection: the gateway's added latency",
        SMALL, concurrency=1, requests=2000, duration=10.0, warmup=300, rows=_small_c1,
    ),
    Scenario(
        "small_c32",
        "1 KB image, JSON body, 32 connections: request-rate ceiling",
        SMALL, concurrency=32, requests=1_000_000, duration=8.0, warmup=640, rows=_small_c32,
    ),
    Scenario(
        "big_c4",
        "20 MB b64_json body, 4 connections: bulk throughput and memory",
        {"image_bytes": 20_000_000}, concurrency=4, requests=5000, duration=8.0, warmup=8, rows=_big_c4,
    ),
    Scenario(
        "stream_2mb_c4",
        "SSE, 3 partials + completed of ~2 MB each, 4 connections: stream throughput",
        {"image_bytes": 2_000_000}, concurrency=4, requests=5000, duration=8.0, warmup=8,
        rows=_stream_c4, stream=True, partial_images=3,
    ),
    Scenario(
        "stream_ttfe",
        "the same stream, 100 ms between events, 1 connection: time to first event",
        {"image_bytes": 2_000_000, "interval_ms": 100}, concurrency=1, requests=30, duration=15.0, warmup=1,
        rows=_stream_ttfe, stream=True, partial_images=3,
    ),
]
