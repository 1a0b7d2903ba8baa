"""The aiohttp application: routes, middleware, and the resources it owns.

Everything long-lived (the upstream ``ClientSession``, the providers, the
router) is opened in ``cleanup_ctx`` and kept under typed ``AppKey``s, so two
apps in one process (tests) share nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypedDict

import aiohttp
import msgspec
from aiohttp import web
from prometheus_client import CollectorRegistry

from pixelgate.adapters import REGISTRY as ADAPTERS
from pixelgate.core.errors import GatewayError, InvalidRequest, render_error
from pixelgate.metrics import Metrics
from pixelgate.proxy import handlers
from pixelgate.proxy.access.control import AccessControl
from pixelgate.proxy.access.middleware import access_middleware, add_response_headers, limit_backend
from pixelgate.proxy.accounting import ledger_context, reseed_budgets
from pixelgate.proxy.admin import api as admin_api
from pixelgate.proxy.admin.auth import AdminAuth
from pixelgate.proxy.admin.poller import key_poller
from pixelgate.proxy.app_keys import (
    ACCESS,
    ADMIN,
    BREAKERS,
    CONFIG,
    METRICS,
    REGISTRY,
    RELAY_SETTINGS,
    RELOADER,
    REQUEST_ID,
    ROUTER,
    STATE,
    STORAGE,
)
from pixelgate.proxy.breaker import Breaker
from pixelgate.proxy.config import WILDCARD, Config
from pixelgate.proxy.demo.engine import DemoEngine
from pixelgate.proxy.gc_tuning import tune_gc
from pixelgate.proxy.header_values import safe_headers
from pixelgate.proxy.idempotency.flow import idempotency_store
from pixelgate.proxy.jobs import api as jobs_api
from pixelgate.proxy.jobs.app import jobs_context
from pixelgate.proxy.loop import new_event_loop
from pixelgate.proxy.relay import RelaySettings
from pixelgate.proxy.reload import Reloader
from pixelgate.proxy.routing import Provider, Router
from pixelgate.proxy.state import GatewayState
from pixelgate.proxy.storage.app import open_storage, storage_context
from pixelgate.proxy.storage.serve import serve_file
from pixelgate.proxy.transport import DemoTransport, HttpTransport, SchemeTransport
from pixelgate.proxy.upstream import CANCEL_TIMEOUT, Cancels

__all__ = ["create_app", "run", "runner_options", "serve"]

log = logging.getLogger("pixelgate")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Upstream reads of up to 256 KiB: few, large chunks for multi-MB bodies
# (aiohttp 3.12 defaults to 64 KiB).
_READ_BUFSIZE = 256 * 1024


def _error_response(err: GatewayError) -> web.Response:
    status, headers, body = render_error(err)
    return web.Response(status=status, headers=safe_headers(headers), body=body)


def _from_http_exception(exc: web.HTTPException) -> GatewayError:
    if exc.status == 404:
        return InvalidRequest("Unknown endpoint. This gateway serves POST /v1/images/generations and POST /v1/images/edits.", code="unknown_url", status=404)
    if exc.status == 405:
        return InvalidRequest("Method not allowed for this endpoint.", code="method_not_allowed", status=405)
    return InvalidRequest(exc.reason, status=exc.status)


def new_request_id() -> str:
    """``req_``, the time in milliseconds (12 hex digits), 64 random bits (16 hex digits).

    Time first, as in UUIDv7: the ledger's unique index on request ids then
    grows at its end instead of taking each batch of rows into random pages
    (a page written per row, with random ids). The random part comes
    from ``random`` (seeded from the OS at start, reseeded in a forked child),
    not ``secrets``: an id must be unique, not unguessable, and a system call
    per request buys nothing."""
    return f"req_{int(time.time() * 1000):012x}{random.getrandbits(64):016x}"


@web.middleware
async def _request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id, and render every error as the OpenAI envelope."""
    rid = new_request_id()
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
    providers: dict[str, Provider] = {}
    for name, p in config.providers.items():
        adapter_cls = ADAPTERS[p.adapter]
        # Already checked when the config was loaded.
        options = msgspec.convert(p.options, adapter_cls.Options)
        adapter = adapter_cls(p.settings(name, options))
        providers[name] = Provider(name, adapter, transport, p.timeouts)
    app[ROUTER] = Router(config, providers, app[BREAKERS])
    app[STATE].ready = True
    try:
        yield
    finally:
        app[STATE].ready = False
        await session.close()


async def _drain(app: web.Application) -> None:
    """Shutdown, once the listener is closed: let in-flight work finish, then end it.

    Requests still running after ``server.shutdown_timeout`` are cancelled
    with ``state.closing`` set, which makes the relay end a stream with an
    error event (not a silent cut) and answer others with a 503.
    """
    state = app[STATE]
    state.ready = False
    grace = app[CONFIG].server.shutdown_timeout
    if state.inflight:
        log.info("draining %d in-flight request(s), up to %g s", len(state.inflight), grace)
        try:
            async with asyncio.timeout(grace):
                await state.idle.wait()
        except TimeoutError:
            pass
    if state.inflight:
        log.warning("grace period over: ending %d request(s)", len(state.inflight))
        state.closing = True
        tasks = list(state.inflight)
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=5)
    if state.background:
        # Cancel calls the ended requests started: each is bounded by CANCEL_TIMEOUT.
        await asyncio.wait(list(state.background), timeout=CANCEL_TIMEOUT + 1)


def create_app(
    config: Config, registry: CollectorRegistry | None = None, load: Callable[[], Config] | None = None
) -> web.Application:
    """The gateway app; ``load`` reads the config again from where ``config`` came from (reload)."""
    # Each endpoint's own limit is enforced when its body is read (handlers._read_body).
    max_body = max([config.server.max_body_bytes, *config.server.endpoint_max_body_bytes.values()])
    app = web.Application(client_max_size=max_body, middlewares=[_request_context, access_middleware])
    registry = registry if registry is not None else CollectorRegistry()
    app[CONFIG] = config
    app[REGISTRY] = registry
    app[METRICS] = Metrics(
        registry, models=[m for m in config.models if m != WILDCARD], providers=config.providers, prices=config.prices
    )
    app[STATE] = GatewayState()
    # With the admin API on, keys come from the database too: no keys is not open mode.
    app[ACCESS] = AccessControl(config.access, app[METRICS], managed=bool(config.admin.keys))
    app[RELAY_SETTINGS] = RelaySettings(
        max_event_bytes=config.server.max_event_bytes,
        keepalive_interval=config.server.keepalive_interval,
        write_timeout=config.server.write_timeout,
        state=app[STATE],
        cancels=Cancels(app[STATE].spawn, app[METRICS].provider_cancel),
    )
    app[BREAKERS] = {
        (model, i): Breaker(config.routing.breaker)
        for model, entry in config.models.items()
        for i in range(len(entry.deployments))
    }
    # Before the upstreams: it is closed after them, once no request can settle.
    app.cleanup_ctx.append(limit_backend)
    # The usage ledger: after the limits (it seeds their budgets), closed after every request.
    app.cleanup_ctx.append(ledger_context)
    # Gateway keys from the ledger database (admin API, CLI): loaded, then polled (proxy.admin.poller).
    app.cleanup_ctx.append(key_poller)
    # Idempotency keys' store: also closed after the upstreams, once no request records.
    app.cleanup_ctx.append(idempotency_store)
    app.cleanup_ctx.append(_upstreams)
    app.on_response_prepare.append(add_response_headers)
    app.on_shutdown.append(_drain)
    app.router.add_post("/v1/images/generations", handlers.generations)
    app.router.add_post("/v1/images/edits", handlers.edits)
    app.router.add_get("/v1/models", handlers.models)
    app.router.add_get("/v1/models/{model:.+}", handlers.model)
    app.router.add_get("/v1/providers", handlers.providers)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", handlers.metrics)
    # A gateway key's own usage (authenticated like every /v1/* request).
    app.router.add_get("/v1/usage", admin_api.own_usage)
    if config.admin.keys:
        # The admin API (proxy.admin.api): admin keys only, checked by each handler.
        app[ADMIN] = AdminAuth(config.admin)
        app.router.add_post("/admin/keys", admin_api.create_key)
        app.router.add_get("/admin/keys", admin_api.list_keys)
        app.router.add_get("/admin/keys/{name}", admin_api.get_key)
        app.router.add_patch("/admin/keys/{name}", admin_api.update_key)
        app.router.add_post("/admin/keys/{name}/revoke", admin_api.revoke_key)
        app.router.add_post("/admin/keys/{name}/rotate", admin_api.rotate_key)
        app.router.add_get("/admin/usage", admin_api.usage)
        app.router.add_get("/admin/audit", admin_api.audit)
        app.router.add_post("/admin/reload", admin_api.reload_config)
    if config.storage is not None:
        # Stored images (proxy.storage): the store and its sweeper live with the app;
        # gateway-served URLs are outside /v1/ (the signature is the credential).
        app[STORAGE] = open_storage(config.storage)
        app.cleanup_ctx.append(storage_context)
        if config.storage.gateway_urls:
            app.router.add_get("/files/{object_id}", serve_file)
    if config.jobs is not None and config.jobs.enabled:
        # After the store: jobs stop before it closes.
        app.cleanup_ctx.append(jobs_context)
        app.router.add_post("/v1/async/images/generations", handlers.generations)
        app.router.add_post("/v1/async/images/edits", handlers.edits)
        app.router.add_get("/v1/images/jobs", jobs_api.list_jobs)
        app.router.add_get("/v1/images/jobs/{job_id}", jobs_api.get_job)
        app.router.add_delete("/v1/images/jobs/{job_id}", jobs_api.cancel_job)
    if config.server.playground:
        app.router.add_get("/", _playground)
        # Plain files, no build step; the browser client is an ES module.
        app.router.add_static("/static/", STATIC, append_version=False)
    if load is not None:
        app[RELOADER] = Reloader(app, load, after=reseed_budgets)
    return app


STATIC = Path(__file__).parent / "static"


class RunnerOptions(TypedDict):
    max_line_size: int
    max_field_size: int
    max_headers: int


def runner_options(config: Config) -> RunnerOptions:
    """Request-head limits for ``web.AppRunner`` (aiohttp refuses larger heads
    before any handler runs)."""
    server = config.server
    return RunnerOptions(
        max_line_size=server.max_header_bytes, max_field_size=server.max_header_bytes, max_headers=server.max_headers
    )


async def _playground(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def serve(config: Config, reuse_port: bool = False, load: Callable[[], Config] | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then shut down gracefully.

    On the signal ``/readyz`` fails at once; the gateway keeps accepting for
    ``server.drain_delay`` (so load balancers stop sending first), then closes
    the listener, drains in-flight requests (see ``_drain``) and exits.
    """
    server = config.server
    app = create_app(config, load=load)
    access = config.access
    if reuse_port and access.backend == "memory" and any((k.limits or access.default_limits).enforced for k in access.keys):
        log.warning("access: limits are kept per worker with the in-process backend; use access.backend: redis with --workers")
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        # A client that goes away cancels its handler at once, which closes
        # the upstream request instead of waiting for the next write to fail.
        handler_cancellation=True,
        # _drain enforces the grace period; this only bounds the last flush.
        shutdown_timeout=server.shutdown_timeout + 10,
        **runner_options(config),
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if RELOADER in app:
        reloader = app[RELOADER]

        async def reload() -> None:
            await reloader.reload()

        # SIGHUP re-reads the config (the supervisor forwards it to every worker).
        loop.add_signal_handler(signal.SIGHUP, lambda: app[STATE].spawn(reload()))
    try:
        site = web.TCPSite(runner, server.host, server.port, reuse_port=reuse_port or None)
        await site.start()
        tune_gc()
        log.info("Pixelgate listening on http://%s:%d/v1 (pid %d)", server.host, server.port, os.getpid())
        if server.playground and not reuse_port:
            log.info("Playground: open http://%s:%d/ in a browser", server.host, server.port)
        await stop.wait()
        log.info("shutting down")
        app[STATE].ready = False
        if server.drain_delay:
            await asyncio.sleep(server.drain_delay)
    finally:
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


def _raise_fd_limit() -> None:
    """Each open stream holds two sockets (client and upstream); a soft limit
    of 1024 would cap the gateway near 500 streams. Raise it to the hard limit."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d: %s", soft, exc)


def run(config: Config, reuse_port: bool = False, load: Callable[[], Config] | None = None) -> None:
    """``serve`` on uvloop when it is installed."""
    _raise_fd_limit()
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(serve(config, reuse_port, load))
