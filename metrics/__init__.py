"""Every Prometheus metric the gateway exports, defined in one place.

Metrics are built against a registry the application injects, so each app (and
each test) owns its own; with several workers, prometheus-client's multiprocess
mode sums them (``metrics.multiprocess``). Labels are bounded: ``provider`` and
``model`` take configured names only (anything else folds into ``other``),
``status`` is an HTTP status, ``error_type`` comes from ``ERROR_TYPES``, the
rest from fixed sets. Never a prompt, a user, a key or a request id.

Observations happen after the bytes have moved (``observe_request`` at the
end of a request, ``observe_attempt`` after each attempt): never on the relay's
hot path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.metrics import MetricWrapperBase

from adapters.openai_wire import Usage

if TYPE_CHECKING:
    from proxy.config import Price
    from proxy.dispatch import Attempt

__all__ = ["AUTH_FAILURES", "ERROR_TYPES", "LIMITS", "OTHER", "Metrics", "RequestRecord", "cost_usd", "exposition", "token_counts"]

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
        # Access control (proxy.access): refused before any upstream attempt.
        "unauthorized",
        "over_limit",
        "limits_unavailable",
    }
)

# Why access control refused a request (pixelgate_auth_failures_total).
AUTH_FAILURES = frozenset({"missing", "malformed", "invalid", "revoked", "model_not_allowed", "origin_not_allowed"})
# Which per-key limit refused it (pixelgate_limit_rejections_total).
LIMITS = frozenset({"requests_per_minute", "images_per_minute", "concurrent_streams", "budget"})

# Circuit breaker states as gauge values.
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}

# 10 ms to 10 min: a tiny image to a high-quality generation with partials.
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600)
# 10 us to 100 ms: the gateway's own time should be well under a millisecond.
OVERHEAD_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1)


def exposition(registry: CollectorRegistry) -> bytes:
    """The /metrics body: this process's registry, or with several workers
    (``PROMETHEUS_MULTIPROC_DIR`` set, see proxy.workers) the sum of all."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined)
        return generate_latest(combined)
    return generate_latest(registry)


@dataclass(slots=True)
class RequestRecord:
    """One generation request, as the access log and the metrics see it."""

    request_id: str
    endpoint: str
    stream: bool
    status: int = 500
    provider: str | None = None
    model: str | None = None
    upstream_model: str | None = None
    error_type: str | None = None
    attempts: int = 0
    duration_s: float = 0.0
    upstream_headers_s: float | None = None
    first_partial_s: float | None = None
    completed_s: float | None = None
    overhead_request_s: float | None = None
    overhead_response_s: float | None = None
    usage: Usage | None = None
    images: int = 0
    partials: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    keepalives: int = 0
    cost_usd: float | None = None
    # The gateway key's configured name (never the key itself).
    key: str | None = None


def token_counts(usage: Usage) -> dict[tuple[str, str], int]:
    """Tokens by (direction, modality). Without details, input is text and
    output is image: what image models bill for."""
    inp, out = usage.input_tokens_details, usage.output_tokens_details
    in_text, in_image = (inp.text_tokens, inp.image_tokens) if inp else (usage.input_tokens, 0)
    out_text, out_image = (out.text_tokens, out.image_tokens) if out else (0, usage.output_tokens)
    return {("input", "text"): in_text, ("input", "image"): in_image, ("output", "text"): out_text, ("output", "image"): out_image}


def cost_usd(price: Price | None, usage: Usage | None, images: int) -> float | None:
    """USD for one request, or None when the model has no price (never a guess)."""
    if price is None:
        return None
    cost = images * price.per_image
    if usage is not None:
        tokens = token_counts(usage)
        cost += (
            tokens["input", "text"] * price.input_text
            + tokens["input", "image"] * price.input_image
            + tokens["output", "text"] * price.output_text
            + tokens["output", "image"] * price.output_image
        ) / 1_000_000
    return cost


class Metrics:
    def __init__(
        self,
        registry: CollectorRegistry,
        models: Iterable[str],
        providers: Iterable[str],
        prices: Mapping[str, Price] | None = None,
    ) -> None:
        self._models = frozenset(models)
        self._providers = frozenset(providers)
        self._prices = dict(prices or {})
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        pm = ["provider", "model"]

        def counter(name: str, doc: str, labels: list[str]) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def histogram(name: str, doc: str, labels: list[str], buckets: tuple[float, ...] = DURATION_BUCKETS) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=registry)

        self.requests = counter(
            "pixelgate_requests", "Requests answered, by provider, public model, endpoint, stream mode and HTTP status.",
            ["provider", "model", "endpoint", "stream", "status"],
        )
        self.duration = histogram(
            "pixelgate_request_duration_seconds", "Time from request received to last byte sent.",
            ["provider", "model", "endpoint", "stream"],
        )
        self.upstream_headers = histogram(
            "pixelgate_upstream_headers_seconds", "Time from sending an attempt upstream to the upstream's response headers.", pm
        )
        self.first_partial = histogram(
            "pixelgate_first_partial_seconds", "Time from request received to the first partial image sent to the client.", pm
        )
        self.completed = histogram(
            "pixelgate_completed_seconds", "Time from request received to the first completed image sent to the client.", pm
        )
        self.overhead = histogram(
            "pixelgate_gateway_overhead_seconds",
            "Time the gateway itself adds: request = body read to upstream request sent (first attempt); "
            "response = upstream bytes read to the same bytes written to the client (first chunk).",
            ["direction"],
            OVERHEAD_BUCKETS,
        )
        self.tokens = counter(
            "pixelgate_tokens", "Tokens reported by upstreams, by direction (input, output) and modality (text, image).",
            [*pm, "direction", "modality"],
        )
        self.images = counter("pixelgate_images", "Images returned to clients; kind is final or partial.", [*pm, "kind"])
        self.bytes = counter(
            "pixelgate_bytes", "Bytes relayed: request = sent upstream (all attempts), response = sent to the client.",
            [*pm, "direction"],
        )
        self.cost = counter("pixelgate_cost_usd", "Cost in USD from the configured price table.", pm)
        self.priced = Gauge(
            "pixelgate_model_priced", "1 if the model has a price in the config, 0 if its cost is not counted.",
            ["model"], registry=registry, multiprocess_mode="max",
        )
        self.inflight = Gauge(
            "pixelgate_inflight_requests", "Upstream attempts in flight.", ["provider"],
            registry=registry, multiprocess_mode="livesum",
        )
        self.errors = counter("pixelgate_errors", "Requests that failed, by where the failure came from.", [*pm, "error_type"])
        self.keepalives = counter("pixelgate_keepalives", "Keep-alive comments sent while an upstream was silent.", ["provider"])
        self.attempts = counter(
            "pixelgate_upstream_attempts", "Upstream attempts by result: ok, or the error type that ended the attempt.",
            [*pm, "result"],
        )
        self.retries = counter("pixelgate_retries", "Attempts that retried the same deployment after a failure.", pm)
        self.fallbacks = counter(
            "pixelgate_fallbacks", "Attempts that failed over to another deployment; provider is the one failed over to.", pm
        )
        self.breaker = Gauge(
            "pixelgate_breaker_state", "Circuit breaker state per deployment: 0 closed, 1 half-open, 2 open.", pm,
            registry=registry, multiprocess_mode="max",
        )
        self.auth_failures = counter(
            "pixelgate_auth_failures",
            "Requests refused by access control: missing, malformed, invalid or revoked key, model or origin not allowed.",
            ["reason"],
        )
        # `key` is a key's configured name: a bounded set, and never key material.
        self.limit_rejections = counter(
            "pixelgate_limit_rejections", "Requests refused by a per-key limit, by key name and limit.", ["key", "limit"]
        )
        self.limit_backend_errors = counter(
            "pixelgate_limit_backend_errors",
            "Limit backend (Redis) failures by operation (admit, settle) and what the gateway did: rejected "
            "(fail closed, 503), admitted (fail open), skipped (a correction, release or charge was lost).",
            ["operation", "action"],
        )
        for model in self._models:
            self.priced.labels(model).set(1 if model in self._prices else 0)

    def _child(self, metric: MetricWrapperBase, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: labels() validates and locks on
        every call, and a request touches a dozen children. Bounded, like the
        label values themselves."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def model_label(self, name: str | None) -> str:
        return name if name in self._models else OTHER

    def provider_label(self, name: str | None) -> str:
        return name if name in self._providers else OTHER

    def price(self, model: str | None) -> Price | None:
        return self._prices.get(model) if model is not None else None

    def attempt_started(self, provider: str) -> None:
        self._child(self.inflight, self.provider_label(provider)).inc()

    def observe_attempt(self, attempt: Attempt, previous: Attempt | None, headers_after: float | None, bytes_sent: int) -> None:
        route = attempt.route
        p, m = self.provider_label(route.provider.name), self.model_label(route.public_model)
        if attempt.kind != "circuit_open":
            self._child(self.inflight, p).dec()
            self._child(self.bytes, p, m, "request").inc(bytes_sent)
        kind = attempt.kind if attempt.kind == "ok" or attempt.kind in ERROR_TYPES else "internal"
        self._child(self.attempts, p, m, kind).inc()
        if headers_after is not None:
            self._child(self.upstream_headers, p, m).observe(headers_after)
        if previous is not None and previous.kind != "ok":
            if previous.route.breaker is route.breaker:
                self._child(self.retries, p, m).inc()
            else:
                self._child(self.fallbacks, p, m).inc()
        self.breaker_state(route.provider.name, route.public_model, route.breaker.state.value)

    def breaker_state(self, provider: str, model: str, state: str) -> None:
        self._child(self.breaker, self.provider_label(provider), self.model_label(model)).set(BREAKER_STATES[state])

    def auth_failure(self, reason: str) -> None:
        self._child(self.auth_failures, reason if reason in AUTH_FAILURES else OTHER).inc()

    def limit_rejected(self, key: str, limit: str) -> None:
        self._child(self.limit_rejections, key, limit if limit in LIMITS else OTHER).inc()

    def limit_backend_error(self, operation: str, action: str) -> None:
        self._child(self.limit_backend_errors, operation, action).inc()

    def observe_request(self, r: RequestRecord) -> None:
        p, m, s = self.provider_label(r.provider), self.model_label(r.model), "true" if r.stream else "false"
        self._child(self.requests, p, m, r.endpoint, s, str(r.status)).inc()
        self._child(self.duration, p, m, r.endpoint, s).observe(r.duration_s)
        if r.first_partial_s is not None:
            self._child(self.first_partial, p, m).observe(r.first_partial_s)
        if r.completed_s is not None:
            self._child(self.completed, p, m).observe(r.completed_s)
        if r.overhead_request_s is not None:
            self._child(self.overhead, "request").observe(r.overhead_request_s)
        if r.overhead_response_s is not None:
            self._child(self.overhead, "response").observe(r.overhead_response_s)
        if r.images:
            self._child(self.images, p, m, "final").inc(r.images)
        if r.partials:
            self._child(self.images, p, m, "partial").inc(r.partials)
        if r.bytes_out:
            self._child(self.bytes, p, m, "response").inc(r.bytes_out)
        if r.keepalives:
            self._child(self.keepalives, p).inc(r.keepalives)
        if r.usage is not None:
            for (direction, modality), n in token_counts(r.usage).items():
                if n:
                    self._child(self.tokens, p, m, direction, modality).inc(n)
        if r.cost_usd:
            self._child(self.cost, p, m).inc(r.cost_usd)
        if r.error_type is not None:
            self._child(self.errors, p, m, r.error_type if r.error_type in ERROR_TYPES else "internal").inc()
