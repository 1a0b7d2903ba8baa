"""Every Prometheus metric the gateway exports, defined in one place.

Metrics are built against a registry the application injects, so each app (and
each test) owns its own; with several workers, prometheus-client's multiprocess
mode sums them (``metrics.multiprocess``). Labels are bounded: ``provider`` and
``model`` take configured names only (anything else folds into ``other``),
``status`` is an HTTP status, ``operation`` is generation or edit,
``error_type`` comes from ``ERROR_TYPES``, the
rest from fixed sets. Never a prompt, a user, a key or a request id.

Observations happen after the bytes have moved (``observe_request`` at the
end of a request, ``observe_attempt`` after each attempt): never on the relay's
hot path.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.metrics import MetricWrapperBase

from pixelgate.core.prices import Price
from pixelgate.core.record import AttemptRecord, RequestRecord
from pixelgate.core.usage import token_counts

__all__ = ["AUTH_FAILURES", "ERROR_TYPES", "LIMITS", "OTHER", "Metrics", "exposition"]

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
        # The image store failed (proxy.storage).
        "storage_unavailable",
        # An async job whose process stopped mid-generation (proxy.jobs).
        "interrupted",
    }
)

# Why access control refused a request (pixelgate_auth_failures_total).
AUTH_FAILURES = frozenset({"missing", "malformed", "invalid", "revoked", "model_not_allowed", "origin_not_allowed"})
# Which per-key limit refused it (pixelgate_limit_rejections_total).
LIMITS = frozenset({"requests_per_minute", "images_per_minute", "concurrent_streams", "budget"})

# What a request did (pixelgate_images, _tokens, _cost_usd).
OPERATIONS = frozenset({"generation", "edit"})

# How a cancel call for an abandoned provider job went (pixelgate_provider_cancels_total).
CANCEL_RESULTS = frozenset({"ok", "error"})

# Why a request with an Idempotency-Key got a 409 (pixelgate_idempotency_conflicts_total):
# the key was used for another request, the first still ran at the deadline,
# or its result is not replayable (too large, never finished).
IDEMPOTENCY_CONFLICTS = frozenset({"mismatch", "in_progress", "too_large", "incomplete"})
# Whether the replayed request was still running or done (pixelgate_idempotent_replays_total).
REPLAY_STATES = frozenset({"in_progress", "completed"})

# What happened to an async job (pixelgate_job_events_total): submitted, started,
# resumed (polling again after its process died), and its end.
JOB_EVENTS = frozenset({"submitted", "started", "resumed", "completed", "failed", "cancelled"})
# Final job states (pixelgate_job_duration_seconds).
JOB_ENDS = frozenset({"completed", "failed", "cancelled"})
# Completion webhook outcomes (pixelgate_webhook_deliveries_total).
WEBHOOK_RESULTS = frozenset({"delivered", "retried", "failed"})
# What the image store was doing (pixelgate_storage_*): an image of a url answer, a job's result.
STORAGE_KINDS = frozenset({"image", "result"})

# What happened to usage-ledger rows (pixelgate_ledger_rows_total): written to the
# database, spooled (it was unreachable), replayed from the spool, overflow (the queue was full: spooled).
# rejected (the database refused the row: kept in <spool>.rejected), corrupt (a torn
# spool line skipped at replay), lost (the spool itself could not be written at exit).
LEDGER_EVENTS = frozenset({"written", "spooled", "replayed", "overflow", "rejected", "corrupt", "lost"})

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
        # Usage by operation (generation, edit): an edit's input images are input image tokens.
        pmo = [*pm, "operation"]
        self.tokens = counter(
            "pixelgate_tokens", "Tokens reported by upstreams, by operation, direction (input, output) and modality (text, image).",
            [*pmo, "direction", "modality"],
        )
        self.images = counter("pixelgate_images", "Images returned to clients; kind is final or partial.", [*pmo, "kind"])
        self.bytes = counter(
            "pixelgate_bytes", "Bytes relayed: request = sent upstream (all attempts), response = sent to the client.",
            [*pm, "direction"],
        )
        self.cost = counter("pixelgate_cost_usd", "Cost in USD from the configured price table, by operation.", pmo)
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
        self.provider_cancels = counter(
            "pixelgate_provider_cancels",
            "Cancel calls sent to providers for jobs abandoned while running (client gone, timeout, shutdown), "
            "by result: ok, or error (refused, failed or timed out).",
            ["provider", "result"],
        )
        self.idempotent_replays = counter(
            "pixelgate_idempotent_replays",
            "Responses replayed to a retry with the same Idempotency-Key (no provider called), by endpoint and "
            "whether the first request was still running (in_progress, followed as it went) or done (completed).",
            ["endpoint", "state"],
        )
        self.ledger = counter(
            "pixelgate_ledger_rows",
            "Usage-ledger rows by event: written (to the database), spooled (it was unreachable), replayed "
            "(from the spool, once it was back), overflow (the queue was full; spooled).",
            ["event"],
        )
        self.job_events = counter(
            "pixelgate_job_events",
            "Async jobs by event: submitted, started, resumed (after its process died), completed, failed, cancelled.",
            ["event"],
        )
        self.job_duration = histogram(
            "pixelgate_job_duration_seconds", "Async jobs from submission to their end, by final state.", ["state"]
        )
        self.jobs_running = Gauge(
            "pixelgate_jobs_running", "Async jobs running on this gateway.", [], registry=registry,
            multiprocess_mode="livesum",
        )
        self.jobs_queued = Gauge(
            "pixelgate_jobs_queued", "Async jobs waiting for a free slot (queue depth), as the job store counts them.",
            [], registry=registry, multiprocess_mode="max",
        )
        self.webhooks = counter(
            "pixelgate_webhook_deliveries",
            "Job completion webhooks by result: delivered, retried (an attempt failed, another follows), failed.",
            ["result"],
        )
        self.storage_writes = counter(
            "pixelgate_storage_writes", "Objects written to the image store, by kind and result (ok, error).",
            ["kind", "result"],
        )
        self.storage_bytes = counter("pixelgate_storage_bytes", "Bytes written to the image store, by kind.", ["kind"])
        self.idempotency_conflicts = counter(
            "pixelgate_idempotency_conflicts",
            "Requests with an Idempotency-Key answered 409, by reason: mismatch (the key was used for another "
            "request), in_progress (the first was still running at the deadline), too_large, incomplete.",
            ["reason"],
        )
        self.config_version = Gauge(
            "pixelgate_config_info", "1 for the configuration this process runs, by its version (a hash of its text).",
            ["version"], registry=registry, multiprocess_mode="max",
        )
        self.config_reloads = counter(
            "pixelgate_config_reloads", "Configuration reloads (SIGHUP, POST /admin/reload), by result: ok, or error "
            "(refused: the running configuration is kept).", ["result"],
        )
        self.config_reloaded_at = Gauge(
            "pixelgate_config_last_reload_timestamp_seconds", "When the configuration was last (re)loaded, by result.",
            ["result"], registry=registry, multiprocess_mode="max",
        )
        for model in self._models:
            self.priced.labels(model).set(1 if model in self._prices else 0)

    def reconfigure(self, models: Iterable[str], providers: Iterable[str], prices: Mapping[str, Price]) -> None:
        """A reloaded configuration's label sets and prices (labels stay bounded by the config)."""
        self._models, self._providers, self._prices = frozenset(models), frozenset(providers), dict(prices)
        for model in self._models:
            self.priced.labels(model).set(1 if model in self._prices else 0)

    def config_loaded(self, version: str, previous: str | None, result: str) -> None:
        """The configuration in use (``version``) after a load or reload that ended with ``result``."""
        if result in ("ok", "error"):
            self._child(self.config_reloads, result).inc()
            self._child(self.config_reloaded_at, result).set_to_current_time()
        if previous is not None and previous != version:
            self.config_version.remove(previous)
        self.config_version.labels(version).set(1)

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

    @property
    def prices(self) -> Mapping[str, Price]:
        """The price table (a reload replaces it, never changes it: a reference keeps its prices)."""
        return self._prices

    def price(self, model: str | None) -> Price | None:
        return self._prices.get(model) if model is not None else None

    def attempt_started(self, provider: str) -> None:
        self._child(self.inflight, self.provider_label(provider)).inc()

    def observe_attempt(self, a: AttemptRecord) -> None:
        p, m = self.provider_label(a.provider), self.model_label(a.model)
        if a.sent:
            self._child(self.inflight, p).dec()
            self._child(self.bytes, p, m, "request").inc(a.bytes_sent)
        kind = a.kind if a.kind == "ok" or a.kind in ERROR_TYPES else "internal"
        self._child(self.attempts, p, m, kind).inc()
        if a.upstream_headers_s is not None:
            self._child(self.upstream_headers, p, m).observe(a.upstream_headers_s)
        if a.follows == "retry":
            self._child(self.retries, p, m).inc()
        elif a.follows == "fallback":
            self._child(self.fallbacks, p, m).inc()
        self.breaker_state(a.provider, a.model, a.breaker_state)

    def breaker_state(self, provider: str, model: str, state: str) -> None:
        self._child(self.breaker, self.provider_label(provider), self.model_label(model)).set(BREAKER_STATES[state])

    def auth_failure(self, reason: str) -> None:
        self._child(self.auth_failures, reason if reason in AUTH_FAILURES else OTHER).inc()

    def limit_rejected(self, key: str, limit: str) -> None:
        self._child(self.limit_rejections, key, limit if limit in LIMITS else OTHER).inc()

    def limit_backend_error(self, operation: str, action: str) -> None:
        self._child(self.limit_backend_errors, operation, action).inc()

    def provider_cancel(self, provider: str, result: str) -> None:
        """A cancel call for an abandoned provider job ended (see proxy.upstream)."""
        self._child(self.provider_cancels, self.provider_label(provider), result if result in CANCEL_RESULTS else OTHER).inc()

    def idempotent_replay(self, endpoint: str, state: str) -> None:
        self._child(self.idempotent_replays, endpoint, state if state in REPLAY_STATES else OTHER).inc()

    def ledger_rows(self, event: str, rows: int) -> None:
        self._child(self.ledger, event if event in LEDGER_EVENTS else OTHER).inc(rows)

    def job_event(self, event: str) -> None:
        self._child(self.job_events, event if event in JOB_EVENTS else OTHER).inc()

    def job_ended(self, state: str, seconds: float) -> None:
        self._child(self.job_duration, state if state in JOB_ENDS else OTHER).observe(seconds)

    def jobs_state(self, running: int, queued: int | None) -> None:
        self.jobs_running.set(running)
        if queued is not None:
            self.jobs_queued.set(queued)

    def webhook(self, result: str) -> None:
        self._child(self.webhooks, result if result in WEBHOOK_RESULTS else OTHER).inc()

    def stored(self, kind: str, size: int | None) -> None:
        """An object written (``size``), or a write that failed (None)."""
        k = kind if kind in STORAGE_KINDS else OTHER
        self._child(self.storage_writes, k, "ok" if size is not None else "error").inc()
        if size:
            self._child(self.storage_bytes, k).inc(size)

    def idempotency_conflict(self, reason: str) -> None:
        self._child(self.idempotency_conflicts, reason if reason in IDEMPOTENCY_CONFLICTS else OTHER).inc()

    def observe_request(self, r: RequestRecord) -> None:
        p, m, s = self.provider_label(r.provider), self.model_label(r.model), "true" if r.stream else "false"
        o = r.operation if r.operation in OPERATIONS else OTHER
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
            self._child(self.images, p, m, o, "final").inc(r.images)
        if r.partials:
            self._child(self.images, p, m, o, "partial").inc(r.partials)
        if r.bytes_out:
            self._child(self.bytes, p, m, "response").inc(r.bytes_out)
        if r.keepalives:
            self._child(self.keepalives, p).inc(r.keepalives)
        if r.usage is not None:
            for (direction, modality), n in token_counts(r.usage).items():
                if n:
                    self._child(self.tokens, p, m, o, direction, modality).inc(n)
        if r.cost_usd:
            self._child(self.cost, p, m, o).inc(r.cost_usd)
        if r.error_type is not None:
            self._child(self.errors, p, m, r.error_type if r.error_type in ERROR_TYPES else "internal").inc()
