"""Typed keys for what the application and each request carry (no module state)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry

from pixelgate.metrics import Metrics
from pixelgate.proxy.access.control import AccessControl, Client
from pixelgate.proxy.admin.auth import AdminAuth
from pixelgate.proxy.breaker import Breaker
from pixelgate.proxy.config import Config
from pixelgate.proxy.idempotency.store import Store as IdempotencyStore
from pixelgate.proxy.relay import RelaySettings
from pixelgate.proxy.routing import Router
from pixelgate.proxy.state import GatewayState
from pixelgate.proxy.storage.base import Storage

if TYPE_CHECKING:
    # The runner uses these keys itself (a runtime import would be circular).
    from pixelgate.proxy.jobs.runner import JobRunner  # noqa: F401
    from pixelgate.proxy.ledger import LedgerStore, LedgerWriter  # noqa: F401
    from pixelgate.proxy.reload import Reloader  # noqa: F401

__all__ = ["ACCESS", "ADMIN", "BREAKERS", "CLIENT", "CONFIG", "IDEMPOTENCY", "JOBS", "LEDGER", "LEDGER_STORE", "METRICS", "REGISTRY", "RELAY_SETTINGS", "RELOADER", "REQUEST_ID", "RESPONSE_HEADERS", "ROUTER", "STATE", "STORAGE"]


ACCESS = web.AppKey("access", AccessControl)
# Only when `admin.keys` is configured (proxy.admin): who may call /admin/*.
ADMIN = web.AppKey("admin", AdminAuth)
BREAKERS = web.AppKey("breakers", dict[tuple[str, int], Breaker])
CONFIG = web.AppKey("config", Config)
# Only when `idempotency.enabled` (set up by proxy.idempotency.flow.idempotency_store).
IDEMPOTENCY = web.AppKey[IdempotencyStore]("idempotency")
# Only when `jobs` is configured (proxy.jobs).
JOBS = web.AppKey["JobRunner"]("jobs")
# Only when `ledger.enabled` (proxy.accounting): the writer every request's row goes
# through, and the store the admin API and budgets read.
LEDGER = web.AppKey["LedgerWriter"]("ledger")
LEDGER_STORE = web.AppKey["LedgerStore"]("ledger_store")
METRICS = web.AppKey("metrics", Metrics)
# Only when the app knows where its config came from (``pixelgate serve``): SIGHUP and POST /admin/reload.
RELOADER = web.AppKey["Reloader"]("reloader")
REGISTRY = web.AppKey("registry", CollectorRegistry)
RELAY_SETTINGS = web.AppKey("relay_settings", RelaySettings)
ROUTER = web.AppKey("router", Router)
STATE = web.AppKey("state", GatewayState)
# Only when `storage` is configured (proxy.storage).
STORAGE = web.AppKey("storage", Storage)
REQUEST_ID = web.RequestKey("request_id", str)
# The request's gateway key, once authenticated (absent in open mode).
CLIENT = web.RequestKey("client", Client)
# Headers decided before the response exists (CORS, x-ratelimit-*), added as it is prepared.
RESPONSE_HEADERS = web.RequestKey("response_headers", dict[str, str])
