"""Resume at the provider: after a restart, a submitted job is polled again, never submitted twice.

Against the loopback fakes of BFL, fal and Replicate, driven by the real
driver (``proxy.upstream``) over real sockets, as a job runner would: the
first process submits with a checkpoint callback and freezes on a later call
(nothing more reaches the provider, and no cancel is sent: it died), a new
adapter of the same settings resumes from the last checkpoint told, and the
provider sees one submit in all and the same calls as an uninterrupted run;
the client bytes are the same too. Also: what each checkpoint holds (never
the key), that a resumed job is still cancelled when abandoned, that a
restart during the download polls again, and that a tampered checkpoint is
refused before any call goes out.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from pixelgate.adapters.base import AdapterBase
from pixelgate.adapters.bfl import BflAdapter, BflOptions, BflTranslator
from pixelgate.adapters.fal import FalAdapter, FalOptions
from pixelgate.adapters.openai import OpenAIAdapter
from pixelgate.adapters.replicate import ReplicateAdapter, ReplicateOptions
from pixelgate.core.errors import UpstreamProtocolError
from pixelgate.core.request import ImageGenerationRequest, decode_edit, decode_request
from pixelgate.core.translator import (
    Cancellable,
    Generation,
    MultiCallTranslator,
    ProviderSettings,
    Resumable,
    Resume,
    Translator,
    UpstreamRequest,
)
from pixelgate.proxy.config import Timeouts
from pixelgate.proxy.exchange import Exchange, Outcome
from pixelgate.proxy.transport import HttpTransport, Transport, UpstreamResponse
from pixelgate.proxy.upstream import Upstream
from tests.providers.bfl import bfl_app
from tests.providers.common import PNG, PNG_B64
from tests.providers.fal import fal_app
from tests.providers.replicate import replicate_app

KEY = "provider-secret"
# The key of the process that resumes: the checkpoint carries none, its own settings give it.
ROTATED = "rotated-secret"
SUBMITTED_AT, RESUMED_AT = 1_000.0, 2_000.0
SLOW = 1_000_000  # pending polls: never done within a test


@dataclass(frozen=True)
class Case:
    name: str
    adapter: type[AdapterBase[Any]]
    options: dict[str, Any]
    model: str
    # The fake's base URL path, and the path its submit arrives at.
    base: str
    submit: str
    # The fake, given its call log and how many polls say "still working".
    fake: Callable[[list[dict], int], web.Application]
    # Where the fake records the key header, and how the adapter spells it.
    key_field: str
    key_format: str
    n: int
    # The job's cancel call, for providers that have one.
    cancel: tuple[str, str] | None = None

    def key(self, key: str) -> str:
        return self.key_format.format(key)


BFL = Case(
    "bfl", BflAdapter, {}, "flux-pro-1.1", "/v1", "/v1/flux-pro-1.1",
    lambda seen, polls: bfl_app(seen, pending_polls=polls), "key", "{}", 1,
)
FAL = Case(
    "fal", FalAdapter, {}, "fal-ai/flux/dev", "", "/fal-ai/flux/dev",
    lambda seen, polls: fal_app(seen, queued_polls=polls), "key", "Key {}", 2,
    cancel=("PUT", "/fal-ai/flux/requests/req-1/cancel"),
)
REPLICATE = Case(
    # wait 0: async mode, the create call names the prediction at once.
    "replicate", ReplicateAdapter, {"wait": 0}, "black-forest-labs/flux-schnell", "",
    "/v1/models/black-forest-labs/flux-schnell/predictions",
    lambda seen, polls: replicate_app(seen, pending_polls=polls), "auth", "Bearer {}", 2,
    cancel=("POST", "/v1/predictions/p1/cancel"),
)
CASES = [pytest.param(c, id=c.name) for c in (BFL, FAL, REPLICATE)]
CANCELLABLE = [pytest.param(c, id=c.name) for c in (FAL, REPLICATE)]
# The client's side: b64_json (downloads), url (relayed as given), a stream (downloads, as events).
FORMATS = {"b64_json": {}, "url": {"response_format": "url"}, "stream": {"stream": True}}


def _adapter(case: Case, base_url: str, *, key: str = KEY, at: float = SUBMITTED_AT) -> AdapterBase[Any]:
    options = {"poll_interval": 0.05, "fetch_hosts": ["127.0.0.1"], **case.options}
    options_type = {"bfl": BflOptions, "fal": FalOptions, "replicate": ReplicateOptions}[case.name]
    settings = ProviderSettings(case.name, base_url, key, {}, msgspec.convert(options, options_type))
    return case.adapter(settings, clock=lambda: at)


def _body(case: Case, **fields: Any) -> bytes:
    return json.dumps({"model": "img", "prompt": "a lighthouse", "n": case.n, **fields}).encode()


def _generation(adapter: AdapterBase[Any], case: Case, body: bytes) -> Translator:
    return adapter.generation(Generation(decode_request(body), body, case.model, "req-submit"))


def _resume(adapter: AdapterBase[Any], case: Case, request: ImageGenerationRequest, checkpoint: bytes) -> Translator:
    return adapter.resume(Resume(request, case.model, "req-resume", checkpoint))


class Freezes:
    """A transport that lets ``after`` calls through, then holds the next one
    until it is cancelled (it never reaches the provider: the process froze
    there), and lets any later call through. ``sent``: the calls that went out."""

    def __init__(self, inner: Transport, after: int) -> None:
        self.inner = inner
        self.after = after
        self.sent: list[UpstreamRequest] = []
        self.frozen = asyncio.Event()

    def open(self, request: UpstreamRequest, provider: str, timeouts: Timeouts) -> AbstractAsyncContextManager[UpstreamResponse]:
        if len(self.sent) == self.after and not self.frozen.is_set():
            return self._hold()
        self.sent.append(request)
        return self.inner.open(request, provider, timeouts)

    @asynccontextmanager
    async def _hold(self) -> AsyncIterator[UpstreamResponse]:
        self.frozen.set()
        await asyncio.Event().wait()  # until cancelled
        raise AssertionError("unreachable")
        yield  # an async generator, for asynccontextmanager


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def _run(ex: Exchange) -> bytes:
    """The exchange to its end, as the relay drives it: the client's bytes."""
    upstream = Upstream(ex, Outcome())
    out = bytearray()
    try:
        await upstream.start()
        while True:
            data, end = await upstream.read()
            out += data
            if end:
                break
    except BaseException as exc:
        await upstream.close(exc)
        raise
    await upstream.close(None)
    return bytes(out)


async def _dies(case: Case, server: TestServer, session: aiohttp.ClientSession, body: bytes, *, after: int) -> list[bytes | None]:
    """A first process submits, is told checkpoints, and freezes on call ``after + 1``;
    then it is gone (no close, no cancel call: it died). The checkpoints it was told."""
    told: list[bytes | None] = []
    transport = Freezes(HttpTransport(session), after)
    translator = _generation(_adapter(case, str(server.make_url(case.base))), case, body)
    upstream = Upstream(Exchange(case.name, translator, transport, Timeouts(), {}, checkpoint=told.append), Outcome())
    task = asyncio.create_task(upstream.start())
    await transport.frozen.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return told


def _unported(out: bytes, server: TestServer) -> bytes:
    """The client's bytes without the fake's port (its URLs name it)."""
    return out.replace(f"127.0.0.1:{server.port}".encode(), b"127.0.0.1:PORT")


def _paths(seen: list[dict]) -> list[str]:
    return [s["path"] for s in seen]


def _state(checkpoint: bytes | None) -> dict[str, Any]:
    assert checkpoint is not None
    state = json.loads(checkpoint)
    assert isinstance(state, dict)
    return state


# --------------------------------------------------------------------- a restart mid-job


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("case", CASES)
async def test_a_restarted_job_is_polled_not_submitted_again(aiohttp_server, session, case: Case, fmt: str) -> None:
    body = _body(case, **FORMATS[fmt])
    # What an uninterrupted run sends and answers, on a fake of its own.
    reference_seen: list[dict] = []
    reference = await aiohttp_server(case.fake(reference_seen, 2))
    translator = _generation(_adapter(case, str(reference.make_url(case.base))), case, body)
    expected = await _run(Exchange(case.name, translator, HttpTransport(session), Timeouts(), {}))

    seen: list[dict] = []
    server = await aiohttp_server(case.fake(seen, 2))
    told = await _dies(case, server, session, body, after=2)  # the submit and one poll got through
    assert _paths(seen) == [case.submit, _paths(reference_seen)[1]]
    # Told once, after the submit's answer: the poll that followed changed nothing.
    assert len(told) == 1 and told[0] is not None
    assert KEY.encode() not in told[0]

    # A new process: a new adapter of the same settings (but a new key, and a later clock).
    adapter = _adapter(case, str(server.make_url(case.base)), key=ROTATED, at=RESUMED_AT)
    resumed = _resume(adapter, case, decode_request(body), told[0])
    assert isinstance(resumed, MultiCallTranslator) and isinstance(resumed, Resumable)
    assert resumed.request().call.method == "GET"  # a poll, not a submit
    told_again: list[bytes | None] = []
    out = await _run(Exchange(case.name, resumed, HttpTransport(session), Timeouts(), {}, checkpoint=told_again.append))

    # One submit in all, and the calls of an uninterrupted run; the resumed process began with a poll of the job.
    assert _paths(seen) == _paths(reference_seen)
    assert _paths(seen).count(case.submit) == 1
    assert _paths(seen)[2] == _paths(seen)[1]
    # The key: the first process's to the submit, the new one's to its polls, none to the file host.
    keys = [s[case.key_field] for s in seen]
    api = [k for s, k in zip(seen, keys, strict=True) if not s["path"].startswith(("/delivery", "/files"))]
    assert api == [case.key(KEY)] * 2 + [case.key(ROTATED)] * (len(api) - 2)
    assert all(k is None for s, k in zip(seen, keys, strict=True) if s["path"].startswith(("/delivery", "/files")))
    # The answer is the one the uninterrupted run gave (created included), with the fake's images.
    assert _unported(out, server) == _unported(expected, reference)
    if fmt == "url":
        urls = [d["url"] for d in json.loads(out)["data"]]
        assert len(urls) == case.n and all(u.startswith(f"http://127.0.0.1:{server.port}/") for u in urls)
        assert not any(p.startswith(("/delivery", "/files")) for p in _paths(seen))
    elif fmt == "b64_json":
        answer = json.loads(out)
        assert [d["b64_json"] for d in answer["data"]] == [PNG_B64] * case.n
        assert answer["created"] == int(SUBMITTED_AT)
    else:
        assert out.count(b"event: image_generation.completed") == case.n and PNG_B64.encode() in out
    # Nothing new to tell for BFL; fal and Replicate tell once that the job finished.
    assert all(c is not None and KEY.encode() not in c and ROTATED.encode() not in c for c in told_again)
    assert len(told_again) == (0 if case is BFL else 1)
    assert [s for s in seen if s["path"].endswith("/cancel")] == []


@pytest.mark.parametrize("case", CASES)
async def test_a_restart_during_the_download_polls_again(aiohttp_server, session, case: Case) -> None:
    """The job had finished: the resumed process finds the result at once and downloads it; no second submit."""
    seen: list[dict] = []
    server = await aiohttp_server(case.fake(seen, 1))
    body = _body(case)
    # The calls up to the one that said done (BFL: submit, Pending, Ready; fal: submit, IN_QUEUE,
    # COMPLETED, the result; Replicate: create, succeeded). Then the first download froze.
    done_at = {"bfl": 3, "fal": 4, "replicate": 2}[case.name]
    told = await _dies(case, server, session, body, after=done_at)
    assert told and told[-1] is not None
    before = len(seen)
    resumed = _resume(_adapter(case, str(server.make_url(case.base))), case, decode_request(body), told[-1])
    if isinstance(resumed, Cancellable):
        assert resumed.cancel() is None  # the job is over: nothing to cancel
    out = await _run(Exchange(case.name, resumed, HttpTransport(session), Timeouts(), {}))
    assert [d["b64_json"] for d in json.loads(out)["data"]] == [PNG_B64] * case.n
    assert _paths(seen).count(case.submit) == 1
    resumed_paths = _paths(seen)[before:]
    downloads = [p for p in resumed_paths if p.startswith(("/delivery", "/files"))]
    assert len(downloads) == case.n
    # One call before the downloads: the poll (fal: straight to the result) that found the job done.
    assert resumed_paths[: -case.n] == [_paths(seen)[done_at - 1]]


@pytest.mark.parametrize("case", CANCELLABLE)
async def test_a_resumed_job_is_cancelled_when_abandoned(aiohttp_server, session, case: Case) -> None:
    assert case.cancel is not None
    seen: list[dict] = []
    server = await aiohttp_server(case.fake(seen, SLOW))
    body = _body(case)
    told = await _dies(case, server, session, body, after=2)
    resumed = _resume(_adapter(case, str(server.make_url(case.base)), key=ROTATED), case, decode_request(body), told[-1] or b"")
    assert isinstance(resumed, Cancellable) and resumed.cancel() is not None
    # The resumed process polls twice, then is abandoned (the client left, the total timeout, shutdown).
    transport = Freezes(HttpTransport(session), after=2)
    task = asyncio.create_task(_run(Exchange(case.name, resumed, transport, Timeouts(), {})))
    await transport.frozen.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    cancels = [s for s in seen if s["path"].endswith("/cancel")]
    assert [(s["method"], s["path"], s[case.key_field]) for s in cancels] == [(*case.cancel, case.key(ROTATED))]


# --------------------------------------------------------------------- what a checkpoint is


SUBMITTED = {
    "bfl": {"id": "t1", "polling_url": "https://api.us1.bfl.ai/v1/get_result?id=t1"},
    "fal": {"request_id": "abc", "status_url": "https://queue.fal.run/fal-ai/flux/requests/abc/status",
            "response_url": "https://queue.fal.run/fal-ai/flux/requests/abc",
            "cancel_url": "https://queue.fal.run/fal-ai/flux/requests/abc/cancel"},
    "replicate": {"id": "xyz", "status": "starting",
                  "urls": {"get": "https://api.replicate.com/v1/predictions/xyz",
                           "cancel": "https://api.replicate.com/v1/predictions/xyz/cancel"}},
}
BASE = {"bfl": "https://api.bfl.ai/v1", "fal": "https://queue.fal.run", "replicate": "https://api.replicate.com"}
HOLDS = {
    "bfl": {"kind": "bfl/1", "created": 1000, "polling_url": "https://api.us1.bfl.ai/v1/get_result?id=t1"},
    "fal": {"kind": "fal/1", "created": 1000, "status_url": "https://queue.fal.run/fal-ai/flux/requests/abc/status",
            "response_url": "https://queue.fal.run/fal-ai/flux/requests/abc",
            "cancel_url": "https://queue.fal.run/fal-ai/flux/requests/abc/cancel", "done": False},
    "replicate": {"kind": "replicate/1", "created": 1000, "get": "https://api.replicate.com/v1/predictions/xyz",
                  "cancel": "https://api.replicate.com/v1/predictions/xyz/cancel", "done": False},
}
# The status document that ends the job, and what the checkpoint then says.
FINISHED = {
    "bfl": ({"status": "Ready", "result": {"sample": "https://delivery.bfl.ai/x.png?sig=s"}}, {}),
    "fal": ({"status": "COMPLETED"}, {"done": True}),
    "replicate": ({"id": "xyz", "status": "succeeded", "output": ["https://replicate.delivery/x.png"]},
                  {"done": True, "cancel": None}),
}


def _named(case: Case, **body: Any) -> MultiCallTranslator:
    """A translator whose submit the provider has answered (no sockets)."""
    t = _generation(_adapter(case, BASE[case.name]), case, _body(case, **body))
    assert isinstance(t, MultiCallTranslator) and isinstance(t, Resumable)
    assert t.checkpoint() is None  # submitted, not yet named: nothing to poll
    t.collected(msgspec.json.encode(SUBMITTED[case.name]))
    return t


def _checkpoint(t: Translator) -> bytes:
    assert isinstance(t, Resumable)
    checkpoint = t.checkpoint()
    assert checkpoint is not None
    return checkpoint


@pytest.mark.parametrize("case", CASES)
def test_what_a_checkpoint_holds(case: Case) -> None:
    t = _named(case)
    checkpoint = _checkpoint(t)
    assert _state(checkpoint) == HOLDS[case.name]
    assert b"secret" not in checkpoint and KEY.encode() not in checkpoint
    document, change = FINISHED[case.name]
    t.collected(msgspec.json.encode(document))
    assert _state(_checkpoint(t)) == {**HOLDS[case.name], **change}  # kept through the downloads


@pytest.mark.parametrize("case", CASES)
def test_a_resumed_translator_polls_with_its_own_key_and_guard(case: Case) -> None:
    checkpoint = _checkpoint(_named(case))
    adapter = _adapter(case, BASE[case.name], key=ROTATED)
    fresh = _generation(adapter, case, _body(case))
    resumed = _resume(adapter, case, decode_request(_body(case)), checkpoint)
    opening = resumed.request()
    poll = opening.call
    first_url = next(v for k, v in HOLDS[case.name].items() if k in ("polling_url", "status_url", "get"))
    assert (poll.method, poll.url, poll.body, poll.delay) == ("GET", first_url, b"", 0.0)
    # The poll a fresh translator of this adapter would make: its key, its headers, its API hosts' Guard.
    assert isinstance(fresh, MultiCallTranslator)
    fresh_poll = fresh.collected(msgspec.json.encode(SUBMITTED[case.name]))
    assert isinstance(fresh_poll, UpstreamRequest)
    assert (poll.headers, poll.guard) == (fresh_poll.headers, fresh_poll.guard)
    assert case.key(ROTATED) in poll.headers.values() and poll.guard is not None
    assert opening.waits == fresh.request().waits
    assert _checkpoint(resumed) == checkpoint  # where it starts is what its runner has


def test_bfl_resumed_has_nothing_to_cancel() -> None:
    resumed = _resume(_adapter(BFL, BASE["bfl"]), BFL, decode_request(_body(BFL)), _checkpoint(_named(BFL)))
    assert isinstance(resumed, Cancellable) and resumed.cancel() is None  # BFL has no cancel endpoint


def test_a_resumed_edit_answers_as_an_edit() -> None:
    t = _named(BFL)
    request = decode_edit(json.dumps({"prompt": "at night", "stream": True, "images": [{"file_id": "f"}]}).encode())
    resumed = BflAdapter(ProviderSettings("bfl", BASE["bfl"], KEY, {}, BflOptions())).resume(
        Resume(request, BFL.model, "req-resume", _checkpoint(t))
    )
    assert isinstance(resumed, MultiCallTranslator)
    download = resumed.collected(msgspec.json.encode(FINISHED["bfl"][0]))
    assert isinstance(download, UpstreamRequest) and download.headers == {}  # no key to the file host
    resumed.response(200, {"Content-Type": "image/png"})
    out = (resumed.feed(PNG) or b"") + resumed.finish().data
    assert out.startswith(b"event: image_edit.completed\n")


async def test_the_driver_asks_for_no_checkpoint_when_nobody_listens(aiohttp_server, session, monkeypatch) -> None:
    """Without Exchange.checkpoint the translator is never asked (no cost on the way)."""

    def boom(self: object) -> bytes | None:
        raise AssertionError("asked for a checkpoint nobody listens to")

    monkeypatch.setattr(BflTranslator, "checkpoint", boom)
    seen: list[dict] = []
    server = await aiohttp_server(BFL.fake(seen, 2))
    translator = _generation(_adapter(BFL, str(server.make_url(BFL.base))), BFL, _body(BFL))
    out = await _run(Exchange("bfl", translator, HttpTransport(session), Timeouts(), {}))
    assert [d["b64_json"] for d in json.loads(out)["data"]] == [PNG_B64]


# --------------------------------------------------------------------- checkpoints refused


def _tampered(case: Case, url: str) -> bytes:
    """The job's real checkpoint, with every URL in it moved to ``url``'s host."""
    state = _state(_checkpoint(_named(case)))
    for key, value in state.items():
        if isinstance(value, str) and value.startswith("https://"):
            state[key] = url + "/" + value.split("/", 3)[3]
    return json.dumps(state).encode()


@pytest.mark.parametrize("case", CASES)
async def test_a_checkpoint_naming_another_host_is_refused_before_any_call(aiohttp_server, session, case: Case) -> None:
    """The polls of a resumed translator carry the adapter's Guard: the driver refuses the host before connecting."""
    evil: list[dict] = []

    async def record(request: web.Request) -> web.Response:
        evil.append({"path": request.path, "headers": dict(request.headers)})
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    server = await aiohttp_server(app)
    for host in (f"http://127.0.0.1:{server.port}", "https://evil.example"):
        resumed = _resume(_adapter(case, BASE[case.name]), case, decode_request(_body(case)), _tampered(case, host))
        transport = Freezes(HttpTransport(session), after=1_000)
        with pytest.raises(UpstreamProtocolError, match="not among its allowed hosts"):
            await _run(Exchange(case.name, resumed, transport, Timeouts(), {}))
        assert transport.sent == []  # refused before connecting; no cancel call either
    assert evil == []


def _garbage(case: Case) -> list[bytes]:
    real = _state(_checkpoint(_named(case)))
    url_key = next(k for k in real if isinstance(real[k], str) and real[k].startswith("https://"))
    other = next(c for c in (BFL, FAL, REPLICATE) if c is not case)
    return [
        b"",
        b"not json",
        b"[]",
        b"{}",
        b'{"kind": "' + case.name.encode() + b'/1"}',
        _checkpoint(_named(other)),  # another adapter's
        json.dumps({**real, "kind": f"{case.name}/2"}).encode(),  # another format's
        json.dumps({**real, "api_key": KEY}).encode(),  # a field no adapter writes
        json.dumps({**real, url_key: 5}).encode(),
        json.dumps({**real, url_key: "/relative/path"}).encode(),
        json.dumps({**real, url_key: "ftp://api.bfl.ai/x"}).encode(),
        json.dumps({**real, url_key: "https://user:pw@api.bfl.ai/x"}).encode(),
        json.dumps({**real, url_key: "https://api.bfl.ai/x\nHost: evil"}).encode(),
        json.dumps({**real, "created": -1}).encode(),
        json.dumps({**real, url_key: "https://api.bfl.ai/" + "a" * 9000}).encode(),
    ]


@pytest.mark.parametrize("case", CASES)
def test_a_garbage_checkpoint_is_refused_at_resume(case: Case) -> None:
    adapter = _adapter(case, BASE[case.name])
    request = decode_request(_body(case))
    for checkpoint in _garbage(case):
        with pytest.raises(UpstreamProtocolError, match=f"provider '{case.name}' cannot resume the job: its checkpoint"):
            _resume(adapter, case, request, checkpoint)


def test_an_adapter_that_cannot_resume_says_so() -> None:
    settings = ProviderSettings("openai", "https://api.openai.com/v1", KEY, {}, None)
    adapter = OpenAIAdapter(settings)
    body = b'{"model":"img","prompt":"p"}'
    assert not isinstance(adapter.generation(Generation(decode_request(body), body, "gpt-image-1", "r")), Resumable)
    with pytest.raises(UpstreamProtocolError, match="provider 'openai' cannot resume a job after a restart") as info:
        adapter.resume(Resume(decode_request(body), "gpt-image-1", "r", _checkpoint(_named(BFL))))
    assert info.value.status == 502
