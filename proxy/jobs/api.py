"""The jobs API: submit (``Prefer: respond-async``), read, cancel and list a key's jobs.

- ``POST /v1/images/generations`` with ``Prefer: respond-async`` (RFC 7240), or
  ``POST /v1/async/images/generations``: checked like a synchronous request
  (body, model, permissions), then ``202 Accepted`` at once with the job,
  ``Location: /v1/images/jobs/{id}`` and ``Preference-Applied: respond-async``;
- ``GET /v1/images/jobs/{id}``: the job; once completed with its ``result``,
  the OpenAI ImagesResponse body (URLs signed now, or the base64 as stored,
  streamed from the store), once failed with the ``error`` the synchronous
  path would have answered;
- ``DELETE /v1/images/jobs/{id}``: cancel (the provider's job too, where the
  provider can); the job as it stands;
- ``GET /v1/images/jobs?limit=&before=``: the key's jobs, newest first.

A job belongs to the key that submitted it: any other key gets the same 404
as for an id that does not exist.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from pixelgate.core.errors import InvalidRequest, StorageUnavailable
from pixelgate.core.record import RequestRecord
from pixelgate.core.request import ImageRequest
from pixelgate.proxy.app_keys import ACCESS, CLIENT, CONFIG, JOBS, ROUTER, STORAGE
from pixelgate.proxy.detached import start
from pixelgate.proxy.jobs.errors import JobNotFound
from pixelgate.proxy.jobs.inputs import drop_inputs
from pixelgate.proxy.jobs.model import Job, JobInput, JobStatus, new_job_id
from pixelgate.proxy.jobs.result import signed_result
from pixelgate.proxy.jobs.runner import JobRunner
from pixelgate.proxy.jobs.store import JobStoreUnavailable
from pixelgate.proxy.jobs.webhooks import check_webhook_url
from pixelgate.proxy.storage.base import StorageError

__all__ = ["WEBHOOK_HEADER", "cancel_job", "get_job", "list_jobs", "render", "submit", "wants_async"]

# A job's completion webhook, per submission.
WEBHOOK_HEADER = "Pixelgate-Webhook-Url"
_ASYNC_PREFIX = "/v1/async/"
_CHUNK = 256 * 1024


def wants_async(request: web.Request) -> bool:
    """``Prefer: respond-async`` (any of the header's preferences), or the ``/v1/async/`` path; jobs must be on."""
    if JOBS not in request.app:
        return False
    if request.path.startswith(_ASYNC_PREFIX):
        return True
    for value in request.headers.getall("Prefer", ()):
        for preference in value.split(","):
            if preference.split(";", 1)[0].split("=", 1)[0].strip().lower() == "respond-async":
                return True
    return False


class _View(msgspec.Struct, omit_defaults=True):
    """A job as its key reads it (never its input, owner or provider checkpoint)."""

    id: str
    object: str
    status: str
    operation: str
    model: str | None
    created_at: int
    started_at: int | None = None
    finished_at: int | None = None
    partial_images: int = 0
    cancel_requested: bool = False
    # failed: the `error` object of the OpenAI envelope the synchronous path would have answered.
    error: msgspec.Raw | None = None
    error_status: int | None = None


def _view(job: Job) -> _View:
    error = None
    if job.error is not None:
        error = msgspec.Raw(msgspec.json.encode(msgspec.json.decode(job.error)["error"]))
    return _View(
        id=job.id, object="image.job", status=job.status.value, operation=job.operation, model=job.model, created_at=int(job.created_at),
        started_at=_seconds(job.started_at), finished_at=_seconds(job.finished_at),
        partial_images=job.partial_images, cancel_requested=job.cancel_requested and not job.final,
        error=error, error_status=job.error_status,
    )


def _seconds(t: float | None) -> int | None:
    return int(t) if t is not None else None


async def render(job: Job) -> bytes:
    """The job without its result (what a webhook carries: it fetches the result with its key)."""
    return msgspec.json.encode(_view(job))


def _location(job: Job) -> str:
    return f"/v1/images/jobs/{job.id}"


async def submit(
    request: web.Request, req: ImageRequest, keep: Callable[[], Awaitable[JobInput]], record: RequestRecord,
    make: Callable[..., web.StreamResponse],
) -> web.StreamResponse:
    """Check the request as a synchronous one would be before its first attempt, queue it, answer 202."""
    app = request.app
    runner, client = app[JOBS], request.get(CLIENT)
    if req.streaming:
        raise InvalidRequest("A job cannot stream; submit it without `stream` and read the job instead.", param="stream")
    default = app[CONFIG].routing.default_model
    model = req.model if isinstance(req.model, str) else default
    if model is None:
        raise InvalidRequest("A job needs a `model` (this gateway has no default one).", param="model",
                             code="missing_required_parameter")
    req = msgspec.structs.replace(req, model=model)
    app[ACCESS].check_model(client, req)
    app[ROUTER].routes(req.model, req.provider)
    webhook = request.headers.get(WEBHOOK_HEADER) or (client.webhook_url if client is not None else None)
    if webhook is not None:
        hooks = runner.config.webhooks
        if hooks is None:
            raise InvalidRequest(f"This gateway sends no webhooks (jobs.webhooks is not configured); drop {WEBHOOK_HEADER}.",
                                 param="webhook_url", code="webhooks_not_configured")
        check_webhook_url(webhook, hooks)
    job_input = await keep()
    job = Job(
        id=new_job_id(), key=client.name if client is not None else None, status=JobStatus.QUEUED,
        operation=job_input.operation, model=model, created_at=runner.now(), input=job_input,
        request_id=record.request_id, webhook_url=webhook, idempotency_key=record.idempotency_key,
    )
    try:
        await runner.submit(job)
    except BaseException as exc:
        await drop_inputs(app[STORAGE], job_input.files)
        if isinstance(exc, JobStoreUnavailable):
            raise _unavailable(exc) from None
        raise
    record.job_id, record.status = job.id, 202
    body = msgspec.json.encode(_view(job))
    headers = {"Location": _location(job), "Preference-Applied": "respond-async", "Content-Type": "application/json",
               "x-request-id": record.request_id}
    response = make(status=202, headers=headers)
    response.content_length = len(body)
    await start(response, request)
    await response.write(body)
    await response.write_eof()
    return response


def _unavailable(exc: JobStoreUnavailable) -> StorageUnavailable:
    return StorageUnavailable(f"The job store is unavailable; try again. ({exc})", code="jobs_unavailable")


async def _owned(request: web.Request) -> tuple[JobRunner, Job]:
    """The job of the path, if it is this key's (else the 404 of a job that does not exist)."""
    runner, client = request.app[JOBS], request.get(CLIENT)
    job_id = request.match_info["job_id"]
    try:
        job = await runner.store.get(job_id) if job_id.isascii() and len(job_id) < 64 else None
    except JobStoreUnavailable as exc:
        raise _unavailable(exc) from None
    if job is None or job.key != (client.name if client is not None else None):
        raise JobNotFound(f"No job {job_id[:64]!r} (it does not exist, expired, or belongs to another key).",
                          param="job_id")
    return runner, job


async def get_job(request: web.Request) -> web.StreamResponse:
    _, job = await _owned(request)
    view = msgspec.json.encode(_view(job))
    if job.status is not JobStatus.COMPLETED or job.result is None:
        return web.Response(body=view, content_type="application/json")
    storage = request.app[STORAGE]
    base_url = f"{request.scheme}://{request.host}"
    try:
        opened = await storage.open(job.result) if not storage.expired(job.result) else None
        if opened is None:
            gone = b'{"message":"The result of this job has expired.","type":"invalid_request_error","param":null,"code":"result_expired"}'
            return web.Response(body=view[:-1] + b',"result":null,"error":' + gone + b"}", content_type="application/json")
        if job.result_urls:
            # A small body (URLs only): read whole, each image's URL signed now.
            body = b"".join([chunk async for chunk in _chunks(opened.path, opened.chunks)])

            async def url(object_id: str) -> str:
                return await storage.url(object_id, base_url)

            result = await signed_result(body, url)
            return web.Response(body=view[:-1] + b',"result":' + result + b"}", content_type="application/json")
    except StorageError as exc:
        raise StorageUnavailable(f"The image store is unavailable; try again. ({exc})") from None
    # Base64 images: streamed from the store into the job's JSON, never whole in memory.
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = len(view) - 1 + len(b',"result":') + opened.size + 1
    await response.prepare(request)
    await response.write(view[:-1] + b',"result":')
    try:
        async for chunk in _chunks(opened.path, opened.chunks):
            await response.write(chunk)
    except StorageError:
        # Too late for a status: the body ends short of its length, which every client sees.
        response.force_close()
        return response
    await response.write(b"}")
    await response.write_eof()
    return response


async def _chunks(path: Path | None, chunks: AsyncIterator[bytes] | None) -> AsyncIterator[bytes]:
    if chunks is not None:
        async for chunk in chunks:
            yield chunk
        return
    assert path is not None
    with path.open("rb") as f:
        while data := await asyncio.to_thread(f.read, _CHUNK):
            yield data


async def cancel_job(request: web.Request) -> web.Response:
    runner, job = await _owned(request)
    try:
        cancelled = await runner.cancel(job.id)
    except JobStoreUnavailable as exc:
        raise _unavailable(exc) from None
    return web.Response(body=msgspec.json.encode(_view(cancelled or job)), content_type="application/json")


async def list_jobs(request: web.Request) -> web.Response:
    runner, client = request.app[JOBS], request.get(CLIENT)
    limit_cap = runner.config.list_limit
    try:
        limit = int(request.query.get("limit", "20"))
        before = float(request.query["before"]) if "before" in request.query else None
    except ValueError:
        raise InvalidRequest("`limit` is a whole number and `before` a Unix time.", param="limit") from None
    if not 1 <= limit <= limit_cap:
        raise InvalidRequest(f"`limit` is between 1 and {limit_cap}.", param="limit")
    try:
        jobs = await runner.store.list(client.name if client is not None else None, limit + 1, before)
    except JobStoreUnavailable as exc:
        raise _unavailable(exc) from None
    data: list[Any] = [_view(job) for job in jobs[:limit]]
    return web.Response(
        body=msgspec.json.encode({"object": "list", "data": data, "has_more": len(jobs) > limit}),
        content_type="application/json",
    )

