"""The hook ``proxy.handlers`` calls for a request with an ``Idempotency-Key``, and the store's lifetime.

``serve`` claims the key with the request's fingerprint, then:

- it owns the key: the rest of the request (routes, limits, dispatch, the
  access log) runs as a task of its own, writing into the record, so a client
  that goes away (a load balancer's cut at 100 s) stops nothing; the task is
  counted in flight like a handler, so shutdown drains it. The client gets the
  response from the owner's local spool as it is written;
- another request with the key runs or ran: this one waits for its head (up
  to ``routing.deadline``; then a retryable 409) and replays the record with
  ``Idempotent-Replayed: true``, following it as it grows; if that request
  released the key, this one claims it again (and may run it);
- the key was used for another request, or its result cannot be replayed: 409.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from aiohttp import web

from pixelgate.core.errors import GatewayError, GatewayShuttingDown
from pixelgate.core.record import RequestRecord
from pixelgate.metrics import Metrics
from pixelgate.proxy.app_keys import CLIENT, CONFIG, IDEMPOTENCY, METRICS, RELAY_SETTINGS, STATE
from pixelgate.proxy.idempotency import errors
from pixelgate.proxy.idempotency.keys import IdempotencyKey, RequestIdentity, fingerprint, parse_key
from pixelgate.proxy.idempotency.memory import MemoryStore
from pixelgate.proxy.idempotency.recorder import SHUTDOWN_TAIL, RecordingResponse, produce, replay
from pixelgate.proxy.idempotency.spool import SpoolReader
from pixelgate.proxy.idempotency.store import Busy, Claim, Follow, Head, Own, Owner, Refused, Store, StoreUnavailable
from pixelgate.proxy.relay import RelaySettings
from pixelgate.proxy.state import GatewayState

__all__ = ["Start", "idempotency_store", "request_key", "serve"]

# Runs the rest of an owned request with these relay settings (handed over by proxy.handlers).
Start = Callable[[RelaySettings], Coroutine[Any, Any, web.StreamResponse]]

# A claim that met a moment's inconsistency is tried again after this long.
_BUSY_WAIT = 0.05


def request_key(request: web.Request) -> IdempotencyKey | None:
    """The request's key, ``None`` without one (or with idempotency off); a 400 if it is malformed."""
    if not request.app[CONFIG].idempotency.enabled:
        return None
    client = request.get(CLIENT)
    return parse_key(request.headers, client.name if client is not None else None)


async def serve(
    request: web.Request, key: IdempotencyKey, identity: RequestIdentity, record: RequestRecord, start: Start
) -> web.StreamResponse:
    """Answer a request with an ``Idempotency-Key``: run it once, or replay it.

    ``start`` is called when this request owns the key; from then on the run
    (and ``record``) belong to the task it returns.
    """
    app = request.app
    store, metrics = app[IDEMPOTENCY], app[METRICS]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + app[CONFIG].routing.deadline
    digest = await asyncio.to_thread(fingerprint, identity) if identity.files else fingerprint(identity)
    while True:
        try:
            claim = await _claim(store, key, digest)
        except StoreUnavailable:
            raise errors.unavailable() from None
        if isinstance(claim, Own):
            return await _own(request, claim.owner, start, record)
        if isinstance(claim, Refused):
            raise _refused(metrics, store, claim.reason)
        if isinstance(claim, Busy):
            if loop.time() + _BUSY_WAIT >= deadline:
                raise _refused(metrics, store, "in_progress")
            await asyncio.sleep(_BUSY_WAIT)
            continue
        source = claim.source
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    head = await source.head()
            except TimeoutError:
                raise _refused(metrics, store, "in_progress") from None
            except StoreUnavailable:
                raise errors.unavailable() from None
            except asyncio.CancelledError:
                if not _shutdown(app[STATE]):
                    raise
                raise _shutting_down() from None
            if head is None:
                if source.ending is None:
                    continue  # released: claim it again
                raise _refused(metrics, store, "incomplete")
            metrics.idempotent_replay(record.endpoint, "in_progress" if claim.live else "completed")
            record.replayed = True
            record.status = head.status
            return await replay(request, source, head, app[RELAY_SETTINGS], replayed=True, record=record)
        finally:
            source.close()


async def _claim(store: Store, key: IdempotencyKey, digest: str) -> Claim:
    """``store.claim``; a claim that succeeds after this request was cancelled is released, not left held."""
    task = asyncio.ensure_future(store.claim(key.scope, key.digest, digest))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_release_unused)
        raise


def _release_unused(task: asyncio.Future[Claim]) -> None:
    if task.cancelled() or task.exception() is not None:
        return
    claim = task.result()
    if isinstance(claim, Own):
        _background(claim.owner.release())
    elif isinstance(claim, Follow):
        claim.source.close()


def _background(work: Coroutine[Any, Any, None]) -> None:
    # Its first step is scheduled (held by the loop); the store tracks the calls it makes.
    task = asyncio.ensure_future(work)
    task.add_done_callback(_retrieved)


def _retrieved(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _refused(metrics: Metrics, store: Store, reason: str) -> GatewayError:
    metrics.idempotency_conflict(reason)
    if reason == "mismatch":
        return errors.key_reused()
    if reason == "too_large":
        return errors.too_large(store.max_response_bytes)
    if reason == "in_progress":
        return errors.in_progress()
    return errors.incomplete()


async def _own(request: web.Request, owner: Owner, start: Start, record: RequestRecord) -> web.StreamResponse:
    app = request.app
    settings = app[RELAY_SETTINGS]
    reader = owner.local.reader()
    try:
        recording = dataclasses.replace(settings, response=functools.partial(RecordingResponse, owner))
        task = asyncio.create_task(produce(owner, start(recording), record))
        _track(app[STATE], task)
        try:
            head = await _head_or_end(reader, owner, task)
        except asyncio.CancelledError:
            if not _shutdown(app[STATE]):
                raise
            # The run, cancelled too, ends with the relay's 503 (or its stream's error event) any moment now.
            try:
                async with asyncio.timeout(SHUTDOWN_TAIL):
                    head = await _head_or_end(reader, owner, task)
            except TimeoutError:
                raise _shutting_down() from None
        if head is None:
            # The key was released and no response recorded: the request's own error is the answer.
            await asyncio.wait((task,))
            if task.cancelled():
                raise _shutting_down()
            exc = task.exception()
            raise exc if exc is not None else RuntimeError("an owned request ended without a response")
        return await replay(request, reader, head, settings, replayed=False)
    finally:
        reader.close()


async def _head_or_end(reader: SpoolReader, owner: Owner, task: asyncio.Task[None]) -> Head | None:
    """The recorded head, or None if the run ended (or released the key) without one."""
    waiting = asyncio.ensure_future(reader.head())
    try:
        await asyncio.wait((waiting, task), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not waiting.done():
            waiting.cancel()
    if waiting.done() and not waiting.cancelled() and (head := waiting.result()) is not None:
        return head
    return owner.local.head


def _shutting_down() -> GatewayShuttingDown:
    return GatewayShuttingDown("The gateway is shutting down; retry the request.")


def _shutdown(state: GatewayState) -> bool:
    """For a cancellation: True (and the cancel taken back) if shutdown's grace period is over, as the relay does."""
    if not state.closing:
        return False
    if (task := asyncio.current_task()) is not None:
        task.uncancel()
    return True


def _track(state: GatewayState, task: asyncio.Task[None]) -> None:
    """In flight like a handler (shutdown drains it); its outcome is the record's, never lost in a log."""
    state.enter(task)

    def done(t: asyncio.Task[None]) -> None:
        state.leave(t)
        _retrieved(t)  # the owner's client, if still there, raised it already

    task.add_done_callback(done)


async def idempotency_store(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: the store (and its spool directory) opened and closed with the app."""
    config = app[CONFIG]
    idem = config.idempotency
    if not idem.enabled:
        yield
        return
    root = tempfile.mkdtemp(prefix="pixelgate-idempotency-", dir=idem.spool_dir)
    store: Store
    if idem.backend == "redis":
        # Imported only when used, like the access limits' backend.
        from pixelgate.proxy.idempotency.redis_store import RedisStore

        store = RedisStore(config.access.redis, idem, root)
    else:
        store = MemoryStore(idem, root)
    app[IDEMPOTENCY] = store
    await store.start()
    try:
        yield
    finally:
        await store.close()
        shutil.rmtree(root, ignore_errors=True)
