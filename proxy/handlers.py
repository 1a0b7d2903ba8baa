"""HTTP handlers: decode, route, hand the exchange to the relay, observe."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.app_keys import CONFIG, METRICS, REGISTRY, RELAY_SETTINGS, REQUEST_ID, ROUTER, STATE
from proxy.errors import GatewayError, PayloadTooLarge
from proxy.relay import Exchange, Outcome, relay
from proxy.schema import decode_request

__all__ = ["generations", "healthz", "metrics", "models", "readyz"]

_ENDPOINT = "images.generations"


async def _read_body(request: web.Request) -> bytes:
    limit = request.app[CONFIG].server.max_body_bytes
    too_large = PayloadTooLarge(
        f"Request body is larger than this gateway's limit of {limit} bytes (server.max_body_bytes)."
    )
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None


async def generations(request: web.Request) -> web.StreamResponse:
    app = request.app
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcome = Outcome()
    provider = model = None
    stream = False
    try:
        body = await _read_body(request)
        req = decode_request(body)
        stream = req.streaming
        routes = app[ROUTER].routes(req.model, req.provider)
        # One deployment per request for now; failover walks this list.
        route = routes[0]
        provider, model = route.provider.name, route.public_model
        rid = request[REQUEST_ID]
        translator = route.provider.adapter.translator(req, body, route.upstream_model, rid)
        exchange = Exchange(
            provider=provider,
            translator=translator,
            upstream=translator.request(),
            transport=route.provider.transport,
            timeouts=route.provider.timeouts,
            headers={
                "x-request-id": rid,
                "x-pixelgate-provider": provider,
                "x-pixelgate-upstream-model": route.upstream_model,
            },
        )
        return await relay(request, exchange, app[RELAY_SETTINGS], outcome)
    except GatewayError as err:
        outcome.status = outcome.status or err.status
        outcome.error_type = outcome.error_type or err.error_type
        if provider is not None:
            err.headers.setdefault("x-pixelgate-provider", provider)
        raise
    finally:
        app[METRICS].observe(
            provider=provider,
            model=model,
            endpoint=_ENDPOINT,
            stream=stream,
            status=outcome.status or 500,
            seconds=loop.time() - started,
            images=outcome.images,
            partials=outcome.partials,
            error_type=outcome.error_type,
        )


async def models(request: web.Request) -> web.Response:
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "pixelgate"} for name in request.app[ROUTER].public_models]
    return web.json_response({"object": "list", "data": data})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if request.app[STATE].ready:
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "not ready"}, status=503)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
