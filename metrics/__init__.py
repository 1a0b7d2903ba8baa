"""Every Prometheus metric the gateway exports, defined in one place.

Metrics are built against a registry the application injects, so each app (and
each test) owns its own. Labels are bounded: ``provider`` and ``model`` take
configured names only (anything else folds into ``other``), ``status`` is an
HTTP status, ``error_type`` comes from ``ERROR_TYPES``. Never a prompt, a user,
a key or a request id.
"""

from __future__ import annotations

from collections.abc import Iterable

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from proxy.dispatch import Attempt

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
        "slow_client",
        "circuit_open",
        "shutdown",
        "invalid_request",
        "internal",
    }
)

# Circuit breaker states as gauge values.
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}

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

        self.attempts = Counter(
            "pixelgate_upstream_attempts",
            "Upstream attempts by result: ok, or the error type that ended the attempt.",
            ["provider", "model", "result"],
            registry=registry,
        )
        self.retries = Counter(
            "pixelgate_retries",
            "Attempts that retried the same deployment after a failure.",
            ["provider", "model"],
            registry=registry,
        )
        self.fallbacks = Counter(
            "pixelgate_fallbacks",
            "Attempts that failed over to another deployment; provider is the one failed over to.",
            ["provider", "model"],
            registry=registry,
        )
        self.breaker = Gauge(
            "pixelgate_breaker_state",
            "Circuit breaker state per deployment: 0 closed, 1 half-open, 2 open.",
            ["provider", "model"],
            registry=registry,
            multiprocess_mode="max",
        )

    def observe_attempt(self, attempt: Attempt, previous: Attempt | None) -> None:
        route = attempt.route
        p, m = self.provider_label(route.provider.name), self.model_label(route.public_model)
        kind = attempt.kind if attempt.kind == "ok" or attempt.kind in ERROR_TYPES else "internal"
        self.attempts.labels(p, m, kind).inc()
        if previous is not None and previous.kind != "ok":
            if previous.route.breaker is route.breaker:
                self.retries.labels(p, m).inc()
            else:
                self.fallbacks.labels(p, m).inc()
        self.breaker_state(route.provider.name, route.public_model, route.breaker.state.value)

    def breaker_state(self, provider: str, model: str, state: str) -> None:
        self.breaker.labels(self.provider_label(provider), self.model_label(model)).set(BREAKER_STATES[state])

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
