"""Every Prometheus metric the gateway exports, defined in one place.

Metrics are built against a registry the application injects, so each app (and
each test) owns its own. Labels are bounded: ``provider`` and ``model`` take
configured names only (anything else folds into ``other``), ``status`` is an
HTTP status, ``error_type`` comes from ``ERROR_TYPES``. Never a prompt, a user,
a key or a request id.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["ERROR_TYPES", "OTHER", "Metrics"]

OTHER = "other"

ERROR_TYPES = frozenset(
    {
        "connect",
        "timeout",
        "status_4xx",
        "status_5xx",
        "rate_limited",
        "protocol",
        "moderation",
        "client_disconnect",
        "invalid_request",
        "internal",
    }
)

# 10 ms to 10 min: a cached or tiny image to a high-quality generation with partials.
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600)


class Metrics:
    def __init__(self, registry: CollectorRegistry, models: Iterable[str], providers: Iterable[str]) -> None:
        self._models = frozenset(models)
        self._providers = frozenset(providers)
        self.requests = Counter(
            "pixelgate_requests",
            "Requests answered, by provider, public model, endpoint, stream mode and HTTP status.",
            ["provider", "model", "endpoint", "stream", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "pixelgate_request_duration_seconds",
            "Time from request received to last byte sent.",
            ["provider", "model", "endpoint", "stream"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.images = Counter(
            "pixelgate_images",
            "Images returned to clients; kind is final or partial.",
            ["provider", "model", "kind"],
            registry=registry,
        )
        self.errors = Counter(
            "pixelgate_errors",
            "Requests that failed, by where the failure came from.",
            ["provider", "model", "error_type"],
            registry=registry,
        )

    def model_label(self, name: str | None) -> str:
        return name if name in self._models else OTHER

    def provider_label(self, name: str | None) -> str:
        return name if name in self._providers else OTHER

    def observe(
        self,
        *,
        provider: str | None,
        model: str | None,
        endpoint: str,
        stream: bool,
        status: int,
        seconds: float,
        images: int,
        partials: int,
        error_type: str | None,
    ) -> None:
        p, m, s = self.provider_label(provider), self.model_label(model), "true" if stream else "false"
        self.requests.labels(p, m, endpoint, s, str(status)).inc()
        self.duration.labels(p, m, endpoint, s).observe(seconds)
        if images:
            self.images.labels(p, m, "final").inc(images)
        if partials:
            self.images.labels(p, m, "partial").inc(partials)
        if error_type is not None:
            self.errors.labels(p, m, error_type if error_type in ERROR_TYPES else "internal").inc()
