"""HTTP handlers: decode, route, hand the attempts to dispatch, observe."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from pixelgate.core.errors import InvalidRequest, ModelNotFound, PayloadTooLarge, StorageUnavailable
from pixelgate.core.record import RequestRecord
from pixelgate.core.request import ImageRequest, convert_edit_form, decode_edit, decode_request, with_user
from pixelgate.core.translator import Translator
from pixelgate.metrics import exposition
from pixelgate.proxy.access.limits import Ticket, quota_headers
from pixelgate.proxy.access.middleware import response_headers
from pixelgate.proxy.accounting import record_request
from pixelgate.proxy.app_keys import (
    ACCESS,
    BREAKERS,
    CLIENT,
    CONFIG,
    METRICS,
    REGISTRY,
    RELAY_SETTINGS,
    REQUEST_ID,
    ROUTER,
    STATE,
    STORAGE,
)
from pixelgate.proxy.attempts import Observer, edit_translator, exchanges, finish_record, generation_translator, note_error
from pixelgate.proxy.dispatch import dispatch
from pixelgate.proxy.idempotency import flow as idempotency
from pixelgate.proxy.idempotency.keys import RequestIdentity
from pixelgate.proxy.jobs import api as jobs_api
from pixelgate.proxy.jobs.inputs import check_json_edit, keep_inputs
from pixelgate.proxy.jobs.model import JobInput
from pixelgate.proxy.relay import RelaySettings
from pixelgate.proxy.routing import Route
from pixelgate.proxy.storage.rehost import StoringResponse, settle, storing
from pixelgate.proxy.uploads import Spool, json_images, read_form

__all__ = ["edits", "generations", "healthz", "metrics", "model", "models", "providers", "readyz"]

_GENERATIONS = "images.generations"
_EDITS = "images.edits"


def _too_large(request: web.Request) -> PayloadTooLarge:
    server = request.app[CONFIG].server
    limit = server.body_limit(request.path)
    setting = "server.endpoint_max_body_bytes" if limit != server.max_body_bytes else "server.max_body_bytes"
    return PayloadTooLarge(f"Request body is larger than this gateway's limit of {limit} bytes ({setting}).")


async def _read_body(request: web.Request) -> bytes:
    limit = request.app[CONFIG].server.body_limit(request.path)
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(request)
    if limit != request.client_max_size:
        # A chunked body has no Content-Length: stop reading it at this endpoint's limit.
        request = request.clone(client_max_size=limit)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(request) from None


async def generations(request: web.Request) -> web.StreamResponse:
    return await _in_flight(request, _serve(request, _GENERATIONS, "generation", _read_generation))


async def edits(request: web.Request) -> web.StreamResponse:
    return await _in_flight(request, _serve(request, _EDITS, "edit", _read_edit))


async def _in_flight(request: web.Request, work: Awaitable[web.StreamResponse]) -> web.StreamResponse:
    state = request.app[STATE]
    task = asyncio.current_task()
    assert task is not None
    # Counted in flight so that shutdown can wait for it (see server._drain).
    state.enter(task)
    try:
        return await work
    finally:
        state.leave(task)


@dataclass(slots=True)
class _Admitted:
    """A request that passed every check before the first attempt."""

    request: ImageRequest
    # Loop time the body was read: the gateway's own time runs from here.
    body_read_at: float
    routes: list[Route]
    ticket: Ticket | None
    # The operation: this request's translator for one route's adapter.
    translator: Callable[[Route], Translator]
    # Its images go into storage, the client gets URLs (proxy.storage.rehost).
    stores: bool = False


@dataclass(slots=True)
class _Read:
    """A request read and decoded, not yet routed nor counted against its key's limits."""

    request: ImageRequest
    # What makes a retry the same request (for an Idempotency-Key).
    identity: RequestIdentity
    # The rest of its admission: route it, take its quota.
    admit: Callable[[], Awaitable[_Admitted]]
    # Asked to run as an async job (proxy.jobs): what the job keeps of it (made
    # once the request passed its checks: an edit's files go into storage).
    job: Callable[[], Awaitable[JobInput]] | None = None


_R = TypeVar("_R", bound=ImageRequest)

# Reads and checks one operation's request; the ExitStack holds what must
# outlive it until the response is done (an edit's spool).
Read = Callable[[web.Request, RequestRecord, ExitStack], Awaitable[_Read]]


async def _route_and_admit(request: web.Request, req: _R) -> tuple[_R, list[Route], Ticket | None]:
    """Check the model (the configured default if it names none), route it, and take its quota.

    The quota comes last, so a request refused for any other reason takes none.
    """
    default = request.app[CONFIG].routing.default_model
    if default is not None and not isinstance(req.model, str):
        req = msgspec.structs.replace(req, model=default)
    app = request.app
    access = app[ACCESS]
    client = request.get(CLIENT)
    access.check_model(client, req)
    routes = app[ROUTER].routes(req.model, req.provider)
    ticket = await access.admit(client, req)
    if ticket is not None:
        response_headers(request).update(quota_headers(ticket.requests, ticket.images))
    return req, routes, ticket


def _user(request: web.Request) -> str | None:
    """The gateway key's name, when the config sends it upstream as ``user``."""
    client = request.get(CLIENT)
    return client.name if client is not None and request.app[ACCESS].config.set_user else None


def _stores(request: web.Request, req: ImageRequest) -> bool:
    """Whether the answer's images go into storage: ``url`` asked for (not streamed) and a store configured."""
    return req.response_format == "url" and not req.streaming and STORAGE in request.app


async def _read_generation(request: web.Request, record: RequestRecord, stack: ExitStack) -> _Read:
    body = await _read_body(request)
    body_read_at = asyncio.get_running_loop().time()
    decoded = decode_request(body)
    record.stream = decoded.streaming

    async def admit() -> _Admitted:
        req, routes, ticket = await _route_and_admit(request, decoded)
        sent = body
        if (user := _user(request)) is not None:
            sent = with_user(body, user)
            req = msgspec.structs.replace(req, user=user)
        stores = _stores(request, req)
        translator = generation_translator(req, sent, record.request_id, stores=stores)
        return _Admitted(req, body_read_at, routes, ticket, translator, stores)

    async def job() -> JobInput:
        return JobInput("generation", body)

    wanted = job if jobs_api.wants_async(request) else None
    return _Read(decoded, RequestIdentity(request.method, request.path, body=body), admit, wanted)


async def _read_edit(request: web.Request, record: RequestRecord, stack: ExitStack) -> _Read:
    server = request.app[CONFIG].server
    spool = Spool(server.upload_dir)
    stack.callback(spool.close)
    json_body: bytes | None = None
    identity = RequestIdentity(request.method, request.path)
    if request.content_type == "multipart/form-data":
        limit, too_large = server.body_limit(request.path), _too_large(request)
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        form = await read_form(request, spool, limit, too_large)
        fields = form.fields
        decoded = convert_edit_form(dict(fields))
        images, mask = tuple(form.images), form.mask
        files = [("image", image.filename, image.path) for image in images]
        if mask is not None:
            files.append(("mask", mask.filename, mask.path))
        identity = RequestIdentity(request.method, request.path, fields=tuple(fields), files=tuple(files))
    elif request.content_type == "application/json":
        json_body = await _read_body(request)
        decoded = decode_edit(json_body)
        images, mask = json_images(decoded, spool)
        fields = []
        identity = RequestIdentity(request.method, request.path, body=json_body)
    elif request.content_type == "application/x-www-form-urlencoded":
        # A form without files (what clients send when no file was attached).
        raise InvalidRequest("An edit needs at least one `image` file.", param="image", code="missing_required_parameter")
    else:
        raise InvalidRequest(
            "An edit is multipart/form-data (image files) or application/json (image URLs); "
            f"this request is {request.content_type or 'without a Content-Type'}.",
            code="unsupported_media_type",
            status=415,
        )
    job: Callable[[], Awaitable[JobInput]] | None = None
    if jobs_api.wants_async(request):
        if json_body is not None:
            check_json_edit(json_body)
            kept_body = json_body

            async def job() -> JobInput:
                return JobInput("edit", body=kept_body)
        else:
            text_fields = tuple(fields)

            async def job() -> JobInput:
                files = await keep_inputs(request.app[STORAGE], images, mask)
                return JobInput("edit", fields=text_fields, files=files)
    body_read_at = asyncio.get_running_loop().time()
    record.stream = decoded.streaming

    async def admit() -> _Admitted:
        req, routes, ticket = await _route_and_admit(request, decoded)
        text, sent = tuple(fields), json_body
        if (user := _user(request)) is not None:
            req = msgspec.structs.replace(req, user=user)
            text = (*((k, v) for k, v in fields if k != "user"), ("user", user))
            if sent is not None:
                sent = with_user(sent, user)
        stores = _stores(request, req)
        translator = edit_translator(req, images, mask, text, sent, record.request_id, stores=stores)
        return _Admitted(req, body_read_at, routes, ticket, translator, stores)

    return _Read(decoded, identity, admit, job)


async def _serve(request: web.Request, endpoint: str, operation: str, read: Read) -> web.StreamResponse:
    app = request.app
    metrics = app[METRICS]
    loop = asyncio.get_running_loop()
    started = loop.time()
    client = request.get(CLIENT)
    record = RequestRecord(request_id=request[REQUEST_ID], endpoint=endpoint, stream=False, operation=operation)
    record.key = client.name if client is not None else None
    record.prices = metrics.prices
    observer = Observer(metrics, record)
    got: _Read | None = None
    admitted: _Admitted | None = None
    stack = ExitStack()
    # With an Idempotency-Key, the run may be handed to a task of its own
    # (proxy.idempotency), which then ends the request: record, spool, log.
    handed_off = False

    async def run(settings: RelaySettings) -> web.StreamResponse:
        nonlocal admitted
        assert got is not None
        stored: list[StoringResponse] = []
        if got.job is not None:
            try:
                return await jobs_api.submit(request, got.request, got.job, record, settings.response)
            except BaseException as exc:
                note_error(record, exc)
                raise
        try:
            admitted = await got.admit()
            if admitted.stores:
                storage, base_url = app[STORAGE], f"{request.scheme}://{request.host}"

                async def url(object_id: str) -> str:
                    return await storage.url(object_id, base_url)

                settings = dataclasses.replace(settings, response=storing(storage, url, settings.response, stored))
            response, _, outcome = await dispatch(
                request, admitted.routes, exchanges(admitted.translator, record.request_id), settings, app[CONFIG].routing, observer
            )
        except BaseException as exc:
            note_error(record, exc)
            if isinstance(exc, StorageUnavailable):
                metrics.stored("image", None)
            raise
        finally:
            await settle(stored, metrics)
        record.status, record.error_type = outcome.status, outcome.error_type
        if isinstance(response, StoringResponse) and response.inner is not None:
            return response.inner
        return response

    async def end() -> None:
        stack.close()
        finish_record(record, observer.outcome, started, loop.time(), admitted.body_read_at if admitted else None, metrics)
        if admitted is not None and admitted.ticket is not None:
            # Images actually returned, the stream slot, the cost: after the last byte.
            await app[ACCESS].settle(admitted.ticket, record.images, record.cost_usd)
        record_request(app, record, admitted.request.prompt if admitted is not None else None)

    async def run_then_end(settings: RelaySettings) -> web.StreamResponse:
        try:
            return await run(settings)
        finally:
            await end()

    def hand_off(settings: RelaySettings) -> Coroutine[Any, Any, web.StreamResponse]:
        nonlocal handed_off
        handed_off = True
        return run_then_end(settings)

    try:
        key = idempotency.request_key(request)
        got = await read(request, record, stack)
        if key is None:
            return await run(app[RELAY_SETTINGS])
        record.idempotency_key = key.log_id
        record.model = got.request.model if isinstance(got.request.model, str) else None
        return await idempotency.serve(request, key, got.identity, record, hand_off)
    except BaseException as exc:
        if not handed_off:
            note_error(record, exc)
        raise
    finally:
        if not handed_off:
            await end()


def _known_models(app: web.Application) -> list[str]:
    """The models this gateway names: configured ones, and for a ``"*"`` route
    the names the config knows otherwise (priced, the default)."""
    config = app[CONFIG]
    names = list(app[ROUTER].public_models)
    for name in (*config.prices, config.routing.default_model):
        if name is not None and name not in names:
            names.append(name)
    return names


def _model_object(name: str) -> dict[str, object]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "pixelgate"}


async def models(request: web.Request) -> web.Response:
    client = request.get(CLIENT)
    names = [n for n in _known_models(request.app) if client is None or client.may_use(n)]
    return web.json_response({"object": "list", "data": [_model_object(name) for name in names]})


async def model(request: web.Request) -> web.Response:
    """``GET /v1/models/{id}`` (the SDKs' ``models.retrieve``): any model this gateway routes."""
    name = request.match_info["model"]
    client = request.get(CLIENT)
    routable = name in _known_models(request.app) or request.app[ROUTER].routes_any(name)
    if not routable or (client is not None and not client.may_use(name)):
        raise ModelNotFound(f"The model `{name[:256]}` does not exist or is not served by this gateway.", param="model")
    return web.json_response(_model_object(name))


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
    body = exposition(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
