"""The scenarios: what load each applies, and what each reports.

Every scenario sends the same body direct to the demo upstream, through the
gateway (which forwards the ``demo`` knobs untouched) and through the floor
proxy (which forwards the body as-is), so the only difference between the
measurements is the hop. ``created: 0`` makes answers byte-identical, which
the bench checks (size and sha256) on all three.

``url_s3_c4`` is the exception: ``response_format: "url"`` with the images
stored in a real S3 server (SeaweedFS, ``bench.seaweed``), which neither
direct nor the floor can do. It runs through a gateway of its own (with a
``storage`` section) only, and reports that gateway's memory and throughput.

Durations are chosen so that each scenario, direct + gateway + floor, ends
within about 35 s, and the whole run within about 3 minutes on 2 cores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.report import Row, Target
from bench.stats import RssInfo, Summary

__all__ = ["SCENARIOS", "Measured", "Scenario"]


@dataclass(frozen=True)
class Measured:
    """One scenario's three runs under the same load, and both proxies' memory.

    A gateway-only scenario (``Scenario.storage``) has no direct or floor run.
    """

    direct: Summary | None
    gateway: Summary
    floor: Summary | None
    gateway_rss: RssInfo
    floor_rss: RssInfo | None
    # url_s3_c4: the size of one stored image, fetched back from its URL (equal to the upstream's, decoded).
    stored_bytes: int = 0


RowsFn = Callable[["Scenario", Measured], list[Row]]


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
    # An edit: (images, bytes each) uploaded as multipart to /v1/images/edits.
    upload: tuple[int, int] | None = None
    # response_format url, stored in S3 (SeaweedFS) with presigned URLs: gateway only.
    storage: bool = False

    @property
    def path(self) -> str:
        return "/v1/images/edits" if self.upload else "/v1/images/generations"

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"model": "bench", "prompt": "a pixelgate benchmark", "size": "1024x1024"}
        if self.storage:
            body["response_format"] = "url"
        if self.stream:
            body |= {"stream": True, "partial_images": self.partial_images}
        body["demo"] = {"created": 0, **self.demo}
        return body

    @property
    def expect_events(self) -> int | None:
        """Each stream carries the partial images, then one completed event."""
        return self.partial_images + 1 if self.stream else None

    @property
    def upload_bytes(self) -> int:
        return self.upload[0] * self.upload[1] if self.upload else 0

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


def _row(sc: Scenario, m: Measured, metric: str, unit: str, pick: Callable[[Summary], float | None], **kw: Any) -> Row:
    """A row whose three columns are the same number taken from each run."""
    return Row(sc.name, metric, unit, _or_none(pick, m.direct), pick(m.gateway), floor=_or_none(pick, m.floor), **kw)


def _or_none(pick: Callable[[Summary], float | None], s: Summary | None) -> float | None:
    return None if s is None else pick(s)


def _latency(q: str) -> Callable[[Summary], float | None]:
    return lambda s: s.latency_ms[q]


def _ttfe(q: str) -> Callable[[Summary], float | None]:
    return lambda s: s.ttfe_ms[q]


def _rps(s: Summary) -> float:
    return s.rps


def _mbps(s: Summary) -> float:
    return s.mb_per_s


def _rss_rows(sc: Scenario, m: Measured, target: Target | None) -> list[Row]:
    """The proxies' own memory (direct has no proxy): the gateway's, and the floor's for scale."""
    g, f = m.gateway_rss, m.floor_rss
    assert f is not None
    note = "" if g.peak_reset and f.peak_reset else "lifetime peak (clear_refs failed)"
    return [
        Row(sc.name, "RSS before", "MiB", None, _mib(g.baseline_kib), compare="gateway",
            floor=_mib(f.baseline_kib)),
        Row(sc.name, "peak RSS", "MiB", None, _mib(g.peak_kib), compare="gateway", target=target, note=note,
            floor=_mib(f.peak_kib)),
    ]


def _small_c1(sc: Scenario, m: Measured) -> list[Row]:
    return [
        _row(sc, m, "p50 latency", "ms", _latency("p50"), target=Target("added", 0.25, at_most=True, unit="ms")),
        _row(sc, m, "p99 latency", "ms", _latency("p99"), compare="added"),
        _row(sc, m, "throughput", "req/s", _rps, compare="ratio"),
    ]


def _small_c32(sc: Scenario, m: Measured) -> list[Row]:
    return [
        _row(sc, m, "throughput", "req/s", _rps, target=Target("ratio", 0.5, at_most=False)),
        _row(sc, m, "p50 latency", "ms", _latency("p50"), compare="added"),
        _row(sc, m, "p99 latency", "ms", _latency("p99"), compare="added"),
    ]


def _big_c4(sc: Scenario, m: Measured) -> list[Row]:
    return [
        _row(sc, m, "throughput", "req/s", _rps, target=Target("ratio", 0.8, at_most=False)),
        _row(sc, m, "throughput", "MB/s", _mbps, compare="ratio"),
        _row(sc, m, "p50 latency", "ms", _latency("p50"), compare="added"),
        *_rss_rows(sc, m, Target("gateway", 64, at_most=True, unit="MiB")),
        _row(sc, m, "body size (sha256 equal)", "MB", lambda s: s.sample_size / 1e6, compare="gateway", note="identical"),
    ]


def _stream_c4(sc: Scenario, m: Measured) -> list[Row]:
    return [
        _row(sc, m, "throughput", "streams/s", _rps, target=Target("ratio", 0.95, at_most=False)),
        _row(sc, m, "throughput", "MB/s", _mbps, target=Target("ratio", 0.95, at_most=False)),
        _row(sc, m, "p50 time to first event", "ms", _ttfe("p50"), compare="added"),
        *_rss_rows(sc, m, None),
    ]


def _edit_c4(sc: Scenario, m: Measured) -> list[Row]:
    g, f = m.gateway_rss, m.floor_rss
    assert f is not None
    growth = _mib(max(0, g.peak_kib - g.baseline_kib))
    return [
        _row(sc, m, "throughput", "req/s", _rps, target=Target("ratio", 0.8, at_most=False, against="floor")),
        _row(sc, m, "upload", "MB/s", lambda s: s.requests * sc.upload_bytes / 1e6 / s.elapsed_s if s.elapsed_s else None,
             compare="ratio"),
        _row(sc, m, "p50 latency", "ms", _latency("p50"), compare="added"),
        *_rss_rows(sc, m, None),
        Row(sc.name, "RSS growth over idle", "MiB", None, growth, compare="gateway",
            target=Target("gateway", 64, at_most=True, unit="MiB"), floor=_mib(max(0, f.peak_kib - f.baseline_kib))),
    ]


def _url_s3_c4(sc: Scenario, m: Measured) -> list[Row]:
    """Gateway only (direct and the floor cannot store): its throughput, and its memory over idle."""
    g = m.gateway_rss
    note = "" if g.peak_reset else "lifetime peak (clear_refs failed)"
    return [
        Row(sc.name, "throughput", "req/s", None, m.gateway.rps, compare="gateway", note="gateway only"),
        Row(sc.name, "p50 latency", "ms", None, m.gateway.latency_ms["p50"], compare="gateway"),
        Row(sc.name, "RSS before", "MiB", None, _mib(g.baseline_kib), compare="gateway"),
        Row(sc.name, "peak RSS growth over idle", "MiB", None, _mib(max(0, g.peak_kib - g.baseline_kib)),
            compare="gateway", target=Target("gateway", 64, at_most=True, unit="MiB"), note=note),
        Row(sc.name, "stored image, fetched via URL (= upstream's)", "MB", None, m.stored_bytes / 1e6, compare="gateway"),
    ]


def _stream_ttfe(sc: Scenario, m: Measured) -> list[Row]:
    return [
        _row(sc, m, "p50 time to first event", "ms", _ttfe("p50"), target=Target("added", 1.0, at_most=True, unit="ms")),
        _row(sc, m, "p90 time to first event", "ms", _ttfe("p90"), compare="added"),
        _row(sc, m, "p50 whole stream", "ms", _latency("p50"), compare="added"),
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
        "edit_c4",
        "edits, 16 input images of 4 MB each (multipart), 4 connections: uploads streamed through",
        {}, concurrency=4, requests=400, duration=10.0, warmup=4, rows=_edit_c4, upload=(16, 4_000_000),
    ),
    Scenario(
        "url_s3_c4",
        "20 MB images (26.7 MB of b64_json) as response_format url: decoded into S3 (SeaweedFS, multipart), "
        "presigned URLs, 4 connections",
        {"image_bytes": 26_700_000}, concurrency=4, requests=80, duration=8.0, warmup=4, rows=_url_s3_c4, storage=True,
    ),
    Scenario(
        "stream_ttfe",
        "the same stream, 100 ms between events, 1 connection: time to first event",
        {"image_bytes": 2_000_000, "interval_ms": 100}, concurrency=1, requests=30, duration=15.0, warmup=1,
        rows=_stream_ttfe, stream=True, partial_images=3,
    ),
]
