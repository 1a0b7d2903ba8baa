"""The ``jobs`` section of the config: async image jobs (``Prefer: respond-async``).

Decoded by ``proxy.config`` like ``storage``; ``check_jobs`` raises
``ValueError("lease: ...")`` and ``proxy.config`` prefixes ``jobs.``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from pixelgate.proxy.jobs.webhooks import WebhookConfig, check_webhook_config

__all__ = ["JobsConfig", "check_jobs"]

Seconds = Annotated[float, Meta(gt=0)]


class JobsConfig(msgspec.Struct, forbid_unknown_fields=True):
    # Off: `Prefer: respond-async` is ignored (answered synchronously, as RFC 7240 allows).
    enabled: bool = True
    # sqlite: one file on local disk (every worker of this host shares it); redis:
    # every replica (the access.redis server).
    backend: Literal["sqlite", "redis"] = "sqlite"
    path: str = "./data/jobs.sqlite3"
    # Jobs of one key not yet final (queued or in progress); a submission past it is a 429.
    max_active_per_key: Annotated[int, Meta(ge=1)] = 16
    # Jobs one process runs at once; the rest wait queued for a free slot here or elsewhere.
    concurrency: Annotated[int, Meta(ge=1, le=10_000)] = 32
    # A running job's claim: renewed every third of it; a process that dies stops
    # renewing, and after it another process takes the job over.
    lease: Annotated[float, Meta(ge=0.3)] = 30.0
    # How often a process looks for queued jobs and for jobs whose process died.
    poll_interval: Seconds = 2.0
    # Final jobs (and their results) are kept this long, then removed.
    retention: Seconds = 24 * 3600.0
    # Most jobs a listing returns.
    list_limit: Annotated[int, Meta(ge=1, le=1000)] = 100
    # Completion webhooks (a job's `Pixelgate-Webhook-Url` header); off unless configured.
    webhooks: WebhookConfig | None = None


def check_jobs(jobs: JobsConfig, has_storage: bool) -> None:
    if not jobs.enabled:
        return
    if not has_storage:
        raise ValueError(
            "enabled: jobs keep their results in the image store: configure `storage` (or set jobs.enabled: false)"
        )
    if jobs.webhooks is not None:
        try:
            check_webhook_config(jobs.webhooks)
        except ValueError as exc:
            raise ValueError(f"webhooks.{exc}") from None
