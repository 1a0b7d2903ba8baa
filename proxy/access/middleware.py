"""Wiring access control into the aiohttp app: middleware, response headers, backend lifetime.

- ``access_middleware``: for ``/v1/*`` only (health, readiness, metrics and the
  playground's static files stay open), answers CORS preflights, then
  authenticates the key and checks the browser origin against it.
- ``add_response_headers`` (``on_response_prepare``): headers decided before a
  response exists (CORS, ``x-ratelimit-*``) are added to every response of the
  request as it is prepared, streamed ones included.
- ``limit_backend`` (``cleanup_ctx``): the limit backend (Redis client) opened
  and closed with the app.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from pixelgate.core.errors import GatewayError
from pixelgate.core.record import RequestRecord
from pixelgate.proxy.accounting import record_request
from pixelgate.proxy.app_keys import ACCESS, CLIENT, METRICS, REQUEST_ID, RESPONSE_HEADERS

__all__ = ["access_middleware", "add_response_headers", "limit_backend", "response_headers"]

log = logging.getLogger("pixelgate.access_control")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Refusals of generation requests get an access-log line like any other.
_LOGGED = {
    "/v1/images/generations": "images.generations",
    "/v1/async/images/generations": "images.generations",
    "/v1/images/edits": "images.edits",
    "/v1/async/images/edits": "images.edits",
}


def response_headers(request: web.Request) -> dict[str, str]:
    """Headers every response to ``request`` will carry (filled before it exists)."""
    headers = request.get(RESPONSE_HEADERS)
    if headers is None:
        headers = request[RESPONSE_HEADERS] = {}
    return headers


async def add_response_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    if extra := request.get(RESPONSE_HEADERS):
        response.headers.update(extra)


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/v1/"):
        return await handler(request)
    control = request.app[ACCESS]
    cors = control.cors
    origin = request.headers.get("Origin")
    cross = origin if origin is not None and cors.enabled and cors.cross_origin(origin, request.host) else None
    if cross is not None:
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            if not cors.preflight_allowed(cross):
                raise control.origin_refused()
            requested = request.headers.get("Access-Control-Request-Headers")
            return web.Response(status=204, headers=cors.preflight_headers(cross, requested))
        if cors.preflight_allowed(cross):
            # Also on errors, so a page can read why it was refused.
            response_headers(request).update(cors.response_headers(cross))
    loop = asyncio.get_running_loop()
    started = loop.time()
    if request.match_info.http_exception is not None:
        # No such endpoint or method: 404/405 (the endpoints are no secret).
        return await handler(request)
    try:
        client = control.authenticate(request.headers)
        if cross is not None and not cors.allowed(cross, client.origins if client is not None else None):
            raise control.origin_refused()
    except GatewayError as err:
        if (endpoint := _LOGGED.get(request.path)) is not None and request.method == "POST":
            record = RequestRecord(
                request_id=request[REQUEST_ID], endpoint=endpoint, stream=False, status=err.status,
                operation="edit" if endpoint == "images.edits" else "generation",
                error_type=err.error_type, duration_s=loop.time() - started,
            )
            request.app[METRICS].observe_request(record)
            record_request(request.app, record, None)
        raise
    if client is not None:
        request[CLIENT] = client
    return await handler(request)


async def limit_backend(app: web.Application) -> AsyncIterator[None]:
    control = app[ACCESS]
    config = control.config
    if control.open:
        log.warning(
            "access: no gateway keys configured (access.keys): open mode, anyone who can reach the gateway "
            "may use it; no per-key limits apply"
        )
    if config.backend == "redis":
        # Imported only when used: an in-process deployment needs no Redis client.
        from pixelgate.proxy.access.redis_backend import RedisBackend

        control.backend = RedisBackend(config.redis)
    await control.backend.start()
    try:
        yield
    finally:
        await control.backend.close()
