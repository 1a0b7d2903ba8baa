"""One run of one job: the request rebuilt from its record, dispatched like a synchronous one, its answer stored.

Nothing of the submitting connection is left when a job runs (it may run on
another process, after a restart), so the run rebuilds what the handler had:
the key (by name, so a key revoked since is refused), the request decoded
again from the stored body, its routes, its quota. From there it is the
synchronous path: ``dispatch`` with its retries, failover and breakers, the
same observer, metrics and access-log line; only the response is a
``ResultResponse`` in storage instead of a socket.

A job at a submit/poll provider reports the provider's job handle through
the exchange's ``checkpoint`` callback; the runner persists it, and a run that
finds one (its first process died) resumes polling there instead of
submitting again (``Resumable`` adapters). A job that was in progress without
one cannot be resumed and is never sent again: it fails, retryably.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from pixelgate.core.errors import AuthenticationFailed, GatewayError, StorageUnavailable
from pixelgate.core.record import RequestRecord
from pixelgate.core.request import (
    ImageEditRequest,
    ImageGenerationRequest,
    ImageRequest,
    convert_edit_form,
    decode_edit,
    decode_request,
    with_field,
    with_user,
)
from pixelgate.core.translator import Resumable, Resume, Translator
from pixelgate.core.usage import Usage
from pixelgate.proxy.accounting import record_request
from pixelgate.proxy.app_keys import ACCESS, CONFIG, METRICS, RELAY_SETTINGS, ROUTER, STORAGE
from pixelgate.proxy.attempts import Observer, edit_translator, exchanges, finish_record, generation_translator, note_error
from pixelgate.proxy.dispatch import dispatch
from pixelgate.proxy.jobs.errors import JobInterrupted
from pixelgate.proxy.jobs.events import StreamResultResponse
from pixelgate.proxy.jobs.inputs import restore_inputs
from pixelgate.proxy.jobs.model import Job
from pixelgate.proxy.jobs.result import ResultResponse, object_ref
from pixelgate.proxy.routing import Route
from pixelgate.proxy.storage.rehost import StoringResponse, settle, storing
from pixelgate.proxy.uploads import Spool, json_images
from pixelgate.proxy.upstream import Cancels

__all__ = ["Checkpoint", "Ran", "run_job"]

# Called with the route and the adapter's checkpoint whenever it changes.
Checkpoint = Callable[[Route, bytes | None], None]


@dataclass(frozen=True, slots=True)
class Ran:
    """How a run ended: completed with a stored result, or failed with the error the client reads."""

    result: str | None = None
    # Whether the result's images are stored apart (object references in place of URLs).
    result_urls: bool = False
    error: GatewayError | None = None
    usage: Usage | None = None
    images: int = 0


_R = TypeVar("_R", bound=ImageRequest)


def _defaulted(app: web.Application, req: _R) -> _R:
    default = app[CONFIG].routing.default_model
    if default is not None and not isinstance(req.model, str):
        req = msgspec.structs.replace(req, model=default)
    return req


def _streams(req: ImageRequest) -> bool:
    """A job that asks for partial images runs as a stream (see proxy.jobs.events)."""
    return isinstance(req.partial_images, int) and req.partial_images > 0


async def _operation(
    app: web.Application, job: Job, user: str | None, spool: Spool
) -> tuple[ImageGenerationRequest | ImageEditRequest, Callable[[Route], Translator]]:
    """The job's request, as the handler would have decoded it (``stream: true`` when it
    asks for partial images), and its translator per route."""
    inputs, rid = job.input, job.request_id
    if job.operation == "generation":
        req = _defaulted(app, decode_request(inputs.body))
        body = inputs.body
        if user is not None:
            body, req = with_user(body, user), msgspec.structs.replace(req, user=user)
        if _streams(req):
            # Events carry base64: for `url` the images are stored from them, and the
            # provider is asked for what it can stream (see upstream_format).
            req, body = msgspec.structs.replace(req, stream=True), with_field(body, "stream", True)
            return req, generation_translator(req, body, rid, stores=req.response_format == "url", always=True)
        urls = req.response_format == "url"
        return req, generation_translator(req, body, rid, stores=urls, always=True)
    if inputs.body:
        edit = _defaulted(app, decode_edit(inputs.body))
        images, mask = json_images(edit, spool)
        fields: tuple[tuple[str, str], ...] = ()
        json_body: bytes | None = inputs.body
    else:
        fields = inputs.fields
        edit = _defaulted(app, convert_edit_form(dict(fields)))
        images, mask = await restore_inputs(app[STORAGE], inputs.files, spool)
        json_body = None
    if user is not None:
        edit = msgspec.structs.replace(edit, user=user)
        fields = (*((k, v) for k, v in fields if k != "user"), ("user", user)) if fields else ()
        json_body = with_user(json_body, user) if json_body is not None else None
    if _streams(edit):
        edit = msgspec.structs.replace(edit, stream=True)
        fields = (*((k, v) for k, v in fields if k != "stream"), ("stream", "true")) if fields else ()
        json_body = with_field(json_body, "stream", True) if json_body is not None else None
        urls = edit.response_format == "url"
        return edit, edit_translator(edit, images, mask, fields, json_body, rid, stores=urls, always=True)
    urls = edit.response_format == "url"
    return edit, edit_translator(edit, images, mask, fields, json_body, rid, stores=urls, always=True)


async def run_job(
    app: web.Application, job: Job, checkpoint: Checkpoint, cancels: Cancels, on_partial: Callable[[int], None],
    *, resume: bool,
) -> Ran:
    """Run ``job`` (claimed by the caller) to its end; never raises a GatewayError (it is the failure).
    ``on_partial`` hears the count of partial images so far (a streamed job).

    ``resume``: it was in progress on a process that stopped; it polls its
    provider job again, or fails (see ``_resumed``).
    """
    metrics, access = app[METRICS], app[ACCESS]
    loop = asyncio.get_running_loop()
    started = loop.time()
    record = RequestRecord(request_id=job.request_id, endpoint="images.jobs", stream=False, operation=job.operation)
    record.key, record.job_id, record.idempotency_key = job.key, job.id, job.idempotency_key
    record.prices = metrics.prices
    observer = Observer(metrics, record)
    ticket = None
    stored: list[StoringResponse] = []
    results: list[ResultResponse | StreamResultResponse] = []
    prompt = None
    urls = False
    spool = Spool(app[CONFIG].server.upload_dir)
    try:
        client = access.client_named(job.key) if job.key is not None else None
        if job.key is not None and client is None:
            raise AuthenticationFailed("The API key that submitted this job was revoked before it ran.", code="invalid_api_key")
        user = client.name if client is not None and access.config.set_user else None
        req, translator = await _operation(app, job, user, spool)
        prompt = req.prompt
        record.model = req.model if isinstance(req.model, str) else None
        access.check_model(client, req)
        routes = app[ROUTER].routes(req.model, req.provider)
        urls = req.response_format == "url"
        if resume:
            routes, translator = _resumed(job, routes, req)
        ticket = await access.admit(client, req)
        storage = app[STORAGE]

        streams = req.streaming

        def result(**kwargs: Any) -> web.StreamResponse:
            made = StreamResultResponse(storage, urls, on_partial, **kwargs) if streams else ResultResponse(storage, **kwargs)
            results.append(made)
            return made

        settings = dataclasses.replace(app[RELAY_SETTINGS], response=result, cancels=cancels)
        if urls and not streams:
            settings = dataclasses.replace(settings, response=storing(storage, object_ref, result, stored))
        response, _, outcome = await dispatch(
            None, routes, exchanges(translator, job.request_id, checkpoint), settings, app[CONFIG].routing, observer
        )
        final = response.inner if isinstance(response, StoringResponse) else response
        if isinstance(final, StreamResultResponse) and final.error is not None:
            raise final.error
        if not isinstance(final, ResultResponse | StreamResultResponse) or final.object_id is None:
            raise JobInterrupted("The provider's answer broke off before it was whole.")
        metrics.stored("result", final.size)
        record.status, record.error_type = outcome.status, outcome.error_type
        return Ran(result=final.object_id, result_urls=urls, usage=outcome.usage, images=outcome.images)
    except GatewayError as exc:
        note_error(record, exc)
        if isinstance(exc, StorageUnavailable):
            metrics.stored("result" if urls is False else "image", None)
        return Ran(error=exc)
    except BaseException as exc:
        note_error(record, exc)
        raise
    finally:
        spool.close()
        await settle(stored, metrics)
        for r in results:
            if r.object_id is None:
                await r.discard()
        finish_record(record, observer.outcome, started, loop.time(), None, metrics)
        if ticket is not None:
            await access.settle(ticket, record.images, record.cost_usd)
        record_request(app, record, prompt)


def _resumed(job: Job, routes: list[Route], req: ImageGenerationRequest | ImageEditRequest) -> tuple[list[Route], Callable[[Route], Translator]]:
    """The route a job was running at and a translator that polls its provider job again.

    Raises ``JobInterrupted`` when there is none to poll: the job was in
    progress at a provider that answers on one connection, which died with
    the process. Sending it again could make (and bill) the image twice.
    """
    if job.checkpoint is None or job.provider is None:
        raise JobInterrupted(
            "The gateway process running this job stopped while the provider was working on it; "
            "the job was not sent again (that could make and bill the image twice). Submit it again."
        )
    checkpoint = job.checkpoint
    route = next((r for r in routes if r.provider.name == job.provider), None)
    adapter = route.provider.adapter if route is not None else None
    if route is None or adapter is None or not hasattr(adapter, "resume"):
        raise JobInterrupted(f"The provider {job.provider!r} of this job is no longer configured to resume it.")

    def translator(r: Route) -> Translator:
        resumed = r.provider.adapter.resume(Resume(req, r.upstream_model, job.request_id, checkpoint))
        assert isinstance(resumed, Resumable)
        return resumed

    return [route], translator
