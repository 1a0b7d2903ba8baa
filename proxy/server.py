"""The aiohttp application: routes, middleware, and the resources it owns.

Everything long-lived (the upstream ``ClientSession``, the providers, the
router) is opened in ``cleanup_ctx`` and kept under typed ``AppKey``s, so two
apps in one process (tests) share nothing.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import msgspec
from aiohttp import web
from prometheus_client import CollectorRegistry

from adapters import REGISTRY as ADAPTERS
from metrics import Metrics
from proxy import handlers
from proxy.app_keys import CONFIG, METRICS, REGISTRY, RELAY_SETTINGS, REQUEST_ID, ROUTER, STATE, GatewayState
from proxy.config import WILDCARD, Config
from proxy.demo.engine import DemoEngine
from proxy.errors import GatewayError, InvalidRequest, render_error
from proxy.loop import new_event_loop
from proxy.relay import RelaySettings
from proxy.routing import Provider, Router
from proxy.transport import DemoTransport, HttpTransport, SchemeTransport

__all__ = ["create_app", "run"]

log = logging.getLogger("pixelgate")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Upstream reads of up to 256 KiB: few, large chunks for multi-MB bodies
# (aiohttp 3.12 defaults to 64 KiB).
_READ_BUFSIZE = 256 * 1024


def _error_response(err: GatewayError) -> web.Response:
    status, headers, body = render_error(err)
    return web.Response(status=status, headers=headers, body=body)


def _from_http_exception(exc: web.HTTPException) -> GatewayError:
    if exc.status == 404:
        return InvalidRequest("Unknown endpoint. This gateway serves POST /v1/images/generations.", code="unknown_url", status=404)
    if exc.status == 405:
        return InvalidRequest("Method not allowed for this endpoint.", code="method_not_allowed", status=405)
    return InvalidRequest(exc.reason, status=exc.status)


@web.middleware
async def _request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id, and render every error as the OpenAI envelope."""
    rid = "req_" + secrets.token_hex(12)
    request[REQUEST_ID] = rid
    try:
        resp = await handler(request)
    except GatewayError as err:
        resp = _error_response(err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        resp = _error_response(_from_http_exception(exc))
    if not resp.prepared:
        resp.headers["x-request-id"] = rid
    return resp


async def _upstreams(app: web.Application) -> AsyncIterator[None]:
    """The shared upstream session and the configured providers."""
    config = app[CONFIG]
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1024, ttl_dns_cache=300, enable_cleanup_closed=True),
        # Per-exchange limits are set by the transport (see Timeouts).
        timeout=aiohttp.ClientTimeout(total=None),
        read_bufsize=_READ_BUFSIZE,
        # Upstream cookies are never kept, let alone sent back or forwarded.
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
    )
    transport = SchemeTransport(HttpTransport(session), DemoTransport(DemoEngine()))
    providers = {}
    for name, p in config.providers.items():
        adapter_cls = ADAPTERS[p.adapter]
        # Already checked when the config was loaded.
        options = msgspec.convert(p.options, adapter_cls.Options)
        adapter = adapter_cls(name=name, base_url=p.base_url, api_key=p.api_key, headers=p.headers, options=options)
        providers[name] = Provider(name, adapter, transport, p.timeouts)
    app[ROUTER] = Router(config, providers)
    app[STATE].ready = True
    try:
        yield
    finally:
        app[STATE].ready = False
        await session.close()


async def _not_ready(app: web.Application) -> None:
    # On SIGTERM: load balancers stop sending before in-flight work drains.
    app[STATE].ready = False


def create_app(config: Config, registry: CollectorRegistry | None = None) -> web.Application:
    app = web.Application(client_max_size=config.server.max_body_bytes, middlewares=[_request_context])
    registry = registry if registry is not None else CollectorRegistry()
    app[CONFIG] = config
    app[REGISTRY] = registry
    app[METRICS] = Metrics(registry, models=[m for m in config.models if m != WILDCARD], providers=config.providers)
    app[RELAY_SETTINGS] = RelaySettings(
        max_event_bytes=config.server.max_event_bytes, keepalive_interval=config.server.keepalive_interval
    )
    app[STATE] = GatewayState()
    app.cleanup_ctx.append(_upstreams)
    app.on_shutdown.append(_not_ready)
    app.router.add_post("/v1/images/generations", handlers.generations)
    app.router.add_get("/v1/models", handlers.models)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", handlers.metrics)
    return app


def run(config: Config) -> None:
    """Serve until SIGINT/SIGTERM, on uvloop when it is installed."""
    server = config.server
    app = create_app(config)
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    web.run_app(
        app,
        host=server.host,
        port=server.port,
        loop=loop,
        access_log=None,
        # A client that goes away cancels its handler at once, which closes
        # the upstream request instead of waiting for the next write to fail.
        handler_cancellation=True,
        shutdown_timeout=server.shutdown_timeout,
        print=lambda msg: log.info("%s", msg),
    )
