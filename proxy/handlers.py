"""HTTP handlers: decode, route, hand the attempts to dispatch, observe."""

from __future__ import annotations

import asyncio

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.app_keys import BREAKERS, CONFIG, METRICS, REGISTRY, RELAY_SETTINGS, REQUEST_ID, ROUTER, STATE
from proxy.dispatch import Attempt, dispatch, success_headers
from proxy.errors import GatewayError, PayloadTooLarge
from proxy.relay import Exchange, Outcome
from proxy.routing import Route
from proxy.schema import decode_request

__all__ = ["generations", "healthz", "metrics", "models", "providers", "readyz"]

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
    state = request.app[STATE]
    task = asyncio.current_task()
    assert task is not None
    # Counted in flight so that shutdown can wait for it (see server._drain).
    state.enter(task)
    try:
        return await _generations(request)
    finally:
        state.leave(task)


async def _generations(request: web.Request) -> web.StreamResponse:
    app = request.app
    metrics = app[METRICS]
    loop = asyncio.get_running_loop()
    started = loop.time()
    last: list[tuple[Attempt, Outcome | None]] = []
    stream = False
    status, error_type = 500, None
    try:
        body = await _read_body(request)
        req = decode_request(body)
        stream = req.streaming
        routes = app[ROUTER].routes(req.model, req.provider)
        rid = request[REQUEST_ID]

        def exchange(route: Route, attempts: list[Attempt], seconds_left: float) -> Exchange:
            translator = route.provider.adapter.translator(req, body, route.upstream_model, rid)
            timeouts = route.provider.timeouts
            if seconds_left < max(timeouts.total, timeouts.first_byte):
                # The request's deadline bounds every attempt.
                timeouts = msgspec.structs.replace(
                    timeouts, total=min(timeouts.total, seconds_left), first_byte=min(timeouts.first_byte, seconds_left)
                )
            return Exchange(
                provider=route.provider.name,
                translator=translator,
                upstream=translator.request(),
                transport=route.provider.transport,
                timeouts=timeouts,
                headers={
                    "x-request-id": rid,
                    "x-pixelgate-provider": route.provider.name,
                    "x-pixelgate-upstream-model": route.upstream_model,
                    **success_headers(attempts, route),
                },
            )

        def on_attempt(attempt: Attempt, outcome: Outcome | None) -> None:
            previous = last[-1][0] if last else None
            metrics.observe_attempt(attempt, previous)
            last.append((attempt, outcome))

        response, route, outcome = await dispatch(
            request, routes, exchange, app[RELAY_SETTINGS], app[CONFIG].routing, on_attempt
        )
        status, error_type = outcome.status, outcome.error_type
        return response
    except GatewayError as err:
        status, error_type = err.status, err.error_type
        if last:
            err.headers.setdefault("x-pixelgate-provider", last[-1][0].route.provider.name)
        raise
    except asyncio.CancelledError:
        status, error_type = 499, "client_disconnect"
        raise
    finally:
        attempt, outcome = last[-1] if last else (None, None)
        metrics.observe(
            provider=attempt.route.provider.name if attempt else None,
            model=attempt.route.public_model if attempt else None,
            endpoint=_ENDPOINT,
            stream=stream,
            status=status,
            seconds=loop.time() - started,
            images=outcome.images if outcome else 0,
            partials=outcome.partials if outcome else 0,
            error_type=error_type,
        )


async def models(request: web.Request) -> web.Response:
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "pixelgate"} for name in request.app[ROUTER].public_models]
    return web.json_response({"object": "list", "data": data})


async def providers(request: web.Request) -> web.Response:
    """Each deployment's circuit state, recent error ratio and latency."""
    config = request.app[CONFIG]
    data = []
    for (model, index), breaker in request.app[BREAKERS].items():
        deployment = config.models[model].deployments[index]
        snapshot = msgspec.to_builtins(breaker.snapshot())
        data.append(
            {"model": model, "provider": deployment.provider, "upstream_model": deployment.model or model, **snapshot}
        )
        request.app[METRICS].breaker_state(deployment.provider, model, breaker.state.value)
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
