"""The relay against a fake upstream that writes exact bytes: what reaches the
client is what the upstream sent, event by event, and failures are reported."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import time

import aiohttp
import openai
import pytest
from aiohttp import web

from tests.conftest import single_provider_config, v1

BODY = {"model": "gpt-image-1.5", "prompt": "a fox"}


def _event(kind: str, payload: bytes, **fields: object) -> bytes:
    extra = json.dumps(fields, separators=(",", ":"))[1:-1]
    data = b'{"type":"%s","b64_json":"%s"%s}' % (kind.encode(), payload, (b"," + extra.encode()) if extra else b"")
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


COMPLETED_FIELDS = {"created_at": 1, "size": "1024x1024", "quality": "low", "background": "opaque", "output_format": "png"}
USAGE = {"input_tokens": 5, "output_tokens": 272, "total_tokens": 277, "input_tokens_details": {"text_tokens": 5, "image_tokens": 0}}


def sse_upstream(chunks: list[bytes], *, delay: float = 0.0, seen: list | None = None):
    """A handler that writes ``chunks`` as given (boundaries included)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if seen is not None:
            seen.append((dict(request.headers), await request.read()))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for chunk in chunks:
            if delay:
                await asyncio.sleep(delay)
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    return handler


async def _read_events(resp: aiohttp.ClientResponse) -> list[bytes]:
    """Split the client's bytes into events the plain way (the test's own parser)."""
    data = await resp.read()
    return [e + b"\n\n" for e in data.split(b"\n\n") if e]


async def test_stream_events_relayed_byte_for_byte(fake_upstream, gateway) -> None:
    partial = _event("image_generation.partial_image", b"A" * 3_000_000, partial_image_index=0, **COMPLETED_FIELDS)
    completed = _event("image_generation.completed", b"B" * 3_000_000, **COMPLETED_FIELDS, usage=USAGE)
    raw = partial + completed
    # Boundaries everywhere: inside a line, between the two blank-line bytes, one byte at a time.
    cuts = [0, 7, 100, 1_000_000, len(partial) - 1, len(partial), len(partial) + 1, len(raw) - 2, len(raw) - 1, len(raw)]
    chunks = [raw[a:b] for a, b in itertools.pairwise(cuts)]
    up = await fake_upstream(sse_upstream(chunks))
    gw = await gateway(single_provider_config(v1(up)))
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/generations"), json=BODY | {"stream": True}) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "text/event-stream"
            assert resp.headers["Cache-Control"] == "no-cache"
            assert resp.headers["x-request-id"].startswith("req_")
            events = await _read_events(resp)
    assert events == [partial, completed]
    metrics = await _metrics(gw)
    assert 'pixelgate_images_total{kind="partial",model="gpt-image-1.5",operation="generation",provider="up"} 1.0' in metrics
    assert 'pixelgate_images_total{kind="final",model="gpt-image-1.5",operation="generation",provider="up"} 1.0' in metrics


async def _metrics(server) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url("/metrics")) as resp:
            return await resp.text()


async def test_each_event_reaches_client_as_soon_as_it_is_whole(fake_upstream, gateway) -> None:
    """The first event arrives while the upstream is still holding the second."""
    release = asyncio.Event()
    first = _event("image_generation.partial_image", b"A" * 1000, partial_image_index=0)
    second = _event("image_generation.completed", b"B" * 1000, usage=USAGE)

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(first + second[:10])
        await release.wait()
        await resp.write(second[10:])
        await resp.write_eof()
        return resp

    gw = await gateway(single_provider_config(v1(await fake_upstream(handler))))
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/generations"), json=BODY | {"stream": True}) as resp:
            got = b""
            while not got.endswith(b"\n\n"):
                got += await asyncio.wait_for(resp.content.readany(), 5)
            # Exactly the first event: nothing of the half-sent second one.
            assert got == first
            release.set()
            assert await resp.read() == second


async def test_non_stream_body_relayed_byte_for_byte_with_length(fake_upstream, gateway) -> None:
    body = b'{"created":1,"data":[{"b64_json":"' + b"Q" * 5_000_000 + b'"}],"usage":' + json.dumps(USAGE).encode() + b"}"

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json", headers={
            "Set-Cookie": "session=secret", "openai-processing-ms": "1234", "x-request-id": "req_upstream", "Connection": "keep-alive",
            "x-ratelimit-remaining-requests": "99", "Server": "upstream/1.0",
        })

    gw = await gateway(single_provider_config(v1(await fake_upstream(handler))))
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/generations"), json=BODY) as resp:
            assert resp.status == 200
            got = await resp.read()
            headers = resp.headers
    assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
    assert headers["Content-Length"] == str(len(body))
    assert "Set-Cookie" not in headers
    assert headers["openai-processing-ms"] == "1234"
    assert headers["x-ratelimit-remaining-requests"] == "99"
    assert headers["x-upstream-request-id"] == "req_upstream"
    assert headers["x-request-id"].startswith("req_") and headers["x-request-id"] != "req_upstream"
    assert headers["x-pixelgate-provider"] == "up"
    assert "upstream/1.0" not in headers.get("Server", "")
    assert 'pixelgate_images_total{kind="final",model="gpt-image-1.5",operation="generation",provider="up"} 1.0' in await _metrics(gw)


async def test_request_forwarded_with_model_rewritten_and_gateway_fields_stripped(fake_upstream, gateway) -> None:
    seen: list = []
    up = await fake_upstream(sse_upstream([_event("image_generation.completed", b"AA", usage=USAGE)], seen=seen))
    gw = await gateway(single_provider_config(v1(up), upstream_model="gpt-image-2", provider={"api_key": "sk-provider-secret", "headers": {"OpenAI-Organization": "org-1"}}))
    # Unknown fields, odd spacing and unicode must reach the upstream as sent.
    raw = (b'{"model": "gpt-image-1.5", "prompt": "un renard \\u00e9 \xc3\xa9", "stream": true,'
           b' "future_field": {"nested": [1, 2.50, "x"]}, "provider": {"only": ["up"]}}')
    async with aiohttp.ClientSession() as session:
        async with session.post(
            gw.make_url("/v1/images/generations"), data=raw,
            headers={"Content-Type": "application/json", "Authorization": "Bearer sk-client-key", "Cookie": "a=b", "X-Custom": "1"},
        ) as resp:
            assert resp.status == 200
            assert resp.headers["x-pixelgate-upstream-model"] == "gpt-image-2"
            await resp.read()
    headers, body = seen[0]
    sent = json.loads(body)
    assert sent["model"] == "gpt-image-2"
    assert "provider" not in sent
    assert b'"future_field":{"nested": [1, 2.50, "x"]}' in body
    assert b'"prompt":"un renard \\u00e9 \xc3\xa9"' in body
    assert headers["Authorization"] == "Bearer sk-provider-secret"
    assert headers["OpenAI-Organization"] == "org-1"
    assert "Cookie" not in headers and "X-Custom" not in headers
    assert headers["X-Client-Request-Id"].startswith("req_")


async def test_keepalive_comments_while_upstream_is_silent_and_sdk_still_parses(fake_upstream, gateway) -> None:
    completed = _event("image_generation.completed", b"QUFB", **COMPLETED_FIELDS, usage=USAGE)
    partial = _event("image_generation.partial_image", b"QUFB", partial_image_index=0, **COMPLETED_FIELDS)
    up = await fake_upstream(sse_upstream([partial, completed], delay=0.5))
    gw = await gateway(single_provider_config(v1(up), server={"keepalive_interval": 0.1}))
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/generations"), json=BODY | {"stream": True}) as resp:
            events = await _read_events(resp)
    keepalives = [e for e in events if e == b": keep-alive\n\n"]
    assert len(keepalives) >= 4
    assert [e for e in events if e != b": keep-alive\n\n"] == [partial, completed]

    client = openai.AsyncOpenAI(base_url=v1(gw), api_key="unused", max_retries=0)
    stream = await client.images.generate(model="gpt-image-1.5", prompt="a fox", stream=True, partial_images=1)
    assert [e.type async for e in stream] == ["image_generation.partial_image", "image_generation.completed"]
    await client.close()


async def test_keepalive_never_inside_a_half_received_event(fake_upstream, gateway) -> None:
    completed = _event("image_generation.completed", b"Z" * 5000, usage=USAGE)
    chunks = [completed[:2000], completed[2000:4000], completed[4000:]]
    up = await fake_upstream(sse_upstream(chunks, delay=0.3))
    gw = await gateway(single_provider_config(v1(up), server={"keepalive_interval": 0.05}))
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/generations"), json=BODY | {"stream": True}) as resp:
            data = await resp.read()
    # Keep-alives before the first byte of the event, none after it started.
    assert data.endswith(completed)
    assert data[: -len(completed)].replace(b": keep-alive\n\n", b"") == b""
    assert data.count(b": keep-alive\n\n") >= 3


async def test_stream_without_completed_event_ends_with_error_event(fake_upstream, gateway) -> None:
    partial = _event("image_generation.partial_image", b"AAAA", partial_image_index=0)
    gw = await gateway(single_provider_config(v1(await fake_upstream(sse_upstream([partial])))))
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/generations"), json=BODY | {"stream": True}) as resp:
            events = await _read_events(resp)
    assert events[0] == partial
    assert events[1].startswith(b"event: error\ndata: ")
    error = json.loads(events[1].split(b"data: ", 1)[1])
    assert error["type"] == "error"
    assert error["error"]["code"] == "upstream_protocol_error"
    assert "completed" in error["error"]["message"]
    assert len(events) == 2


async def test_stream_cut_mid_event_closes_the_event_as_an_error(fake_upstream, gateway) -> None:
    """A big event goes out as it arrives; if the upstream breaks inside it,
    the half-sent event is closed into one with a top-level "error"."""
    partial = _event("image_generation.partial_image", b"AAAA", partial_image_index=0)
    completed = _event("image_generation.completed", b"B" * 100_000, usage=USAGE)
    gw = await gateway(single_provider_config(v1(await fake_upstream(sse_upstream([partial, completed[:50_000]])))))
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/generations"), json=BODY | {"stream": True}) as resp:
            events = await _read_events(resp)
    assert events[0] == partial
    assert events[1].startswith(completed[:50_000])
    cut = json.loads(events[1].split(b"data: ", 1)[1])
    assert cut["type"] == "image_generation.completed"
    assert cut["error"]["code"] == "upstream_protocol_error" and "middle of an event" in cut["error"]["message"]
    assert events[2].startswith(b"event: error\n") and b"middle of an event" in events[2]
    assert len(events) == 3

    client = openai.AsyncOpenAI(base_url=v1(gw), api_key="unused", max_retries=0)
    stream = await client.images.generate(model="gpt-image-1.5", prompt="a fox", stream=True, partial_images=1)
    seen = []
    with pytest.raises(openai.APIError, match="middle of an event"):
        async for event in stream:
            seen.append(event.type)
    await client.close()
    assert seen == ["image_generation.partial_image"]


async def test_big_event_reaches_client_before_its_end_arrives(fake_upstream, gateway) -> None:
    release = asyncio.Event()
    completed = _event("image_generation.completed", b"C" * 2_000_000, usage=USAGE)

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(completed[:1_000_000])
        await release.wait()
        await resp.write(completed[1_000_000:])
        await resp.write_eof()
        return resp

    gw = await gateway(single_provider_config(v1(await fake_upstream(handler)), server={"keepalive_interval": 0.05}))
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/generations"), json=BODY | {"stream": True}) as resp:
            got = b""
            while len(got) < 1_000_000:
                got += await asyncio.wait_for(resp.content.readany(), 5)
            await asyncio.sleep(0.2)  # silent upstream mid-event: no keep-alive may be inserted
            release.set()
            got += await resp.read()
    assert got == completed


async def test_upstream_error_event_is_relayed_and_ends_the_stream(fake_upstream, gateway) -> None:
    error = b'event: error\ndata: {"type":"error","error":{"type":"image_generation_user_error","code":"moderation_blocked","message":"blocked","param":null}}\n\n'
    trailing = _event("image_generation.completed", b"AA", usage=USAGE)
    gw = await gateway(single_provider_config(v1(await fake_upstream(sse_upstream([error, trailing])))))
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/generations"), json=BODY | {"stream": True}) as resp:
            events = await _read_events(resp)
    assert events == [error]
    assert 'pixelgate_errors_total{error_type="moderation",model="gpt-image-1.5",provider="up"} 1.0' in await _metrics(gw)


async def test_event_over_max_size_ends_with_error(fake_upstream, gateway) -> None:
    small = _event("image_generation.partial_image", b"A" * 10, partial_image_index=0)
    huge = _event("image_generation.completed", b"B" * 200_000, usage=USAGE)
    gw = await gateway(single_provider_config(v1(await fake_upstream(sse_upstream([small, huge]))), server={"max_event_bytes": 65536}))
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/generations"), json=BODY | {"stream": True}) as resp:
            events = await _read_events(resp)
    assert events[0] == small
    assert b"max_event_bytes" in events[1] and events[1].startswith(b"event: error\n")


async def test_done_marker_and_comments_from_upstream_pass_through(fake_upstream, gateway) -> None:
    completed = _event("image_generation.completed", b"AA", usage=USAGE)
    chunks = [b": upstream ping\n\n", completed, b"data: [DONE]\n\n"]
    gw = await gateway(single_provider_config(v1(await fake_upstream(sse_upstream(chunks)))))
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/generations"), json=BODY | {"stream": True}) as resp:
            assert await resp.read() == b"".join(chunks)


async def test_json_answer_to_stream_request_becomes_completed_events(fake_upstream, gateway) -> None:
    """Some "compatible" upstreams ignore stream: the client still gets a stream."""

    async def handler(request: web.Request) -> web.Response:
        body = {"created": 7, "data": [{"b64_json": "QUFB"}, {"b64_json": "QkJC"}], "size": "1024x1024",
                "quality": "low", "background": "opaque", "output_format": "png", "usage": USAGE}
        return web.json_response(body)

    gw = await gateway(single_provider_config(v1(await fake_upstream(handler))))
    client = openai.AsyncOpenAI(base_url=v1(gw), api_key="unused", max_retries=0)
    stream = await client.images.generate(model="gpt-image-1.5", prompt="a fox", stream=True, n=2)
    events = [e async for e in stream]
    await client.close()
    assert [(e.type, e.b64_json, e.created_at, e.size) for e in events] == [
        ("image_generation.completed", "QUFB", 7, "1024x1024"),
        ("image_generation.completed", "QkJC", 7, "1024x1024"),
    ]
    assert events[1].usage.total_tokens == 277


async def test_upstream_error_envelope_relayed_with_status_and_retry_headers(fake_upstream, gateway) -> None:
    envelope = {"error": {"message": "Rate limit exceeded for images per minute.", "type": "requests", "param": None, "code": "rate_limit_exceeded"}}

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(envelope, status=429, headers={"retry-after": "7", "Set-Cookie": "x=y"})

    gw = await gateway(single_provider_config(v1(await fake_upstream(handler))))
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/generations"), json=BODY) as resp:
            assert resp.status == 429
            assert resp.headers["retry-after"] == "7"
            assert "Set-Cookie" not in resp.headers
            assert resp.headers["x-request-id"].startswith("req_")
            assert await resp.json() == envelope


async def test_upstream_auth_failure_becomes_502_without_echoing_the_key(fake_upstream, gateway) -> None:
    async def handler(request: web.Request) -> web.Response:
        key = request.headers["Authorization"].removeprefix("Bearer ")
        return web.json_response({"error": {"message": f"Incorrect API key provided: {key}", "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}, status=401)

    gw = await gateway(single_provider_config(v1(await fake_upstream(handler)), provider={"api_key": "sk-provider-secret-123"}))
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/generations"), json=BODY) as resp:
            assert resp.status == 502
            body = await resp.read()
    assert b"sk-provider-secret-123" not in body
    assert json.loads(body)["error"]["code"] == "upstream_auth_failed"


async def test_non_json_upstream_error_gets_gateway_envelope(fake_upstream, gateway) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=503, text="<html>bad gateway</html>", content_type="text/html")

    gw = await gateway(single_provider_config(v1(await fake_upstream(handler))))
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/generations"), json=BODY) as resp:
            assert resp.status == 503
            error = (await resp.json())["error"]
    assert error["code"] == "upstream_http_503" and set(error) == {"message", "type", "param", "code"}


async def test_unreachable_upstream_is_502(gateway, unused_tcp_port_factory) -> None:
    port = unused_tcp_port_factory()
    gw = await gateway(single_provider_config(f"http://127.0.0.1:{port}/v1"))
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/generations"), json=BODY) as resp:
            assert resp.status == 502
            error = (await resp.json())["error"]
    assert error["code"] == "upstream_unreachable"
    assert str(port) not in error["message"]


async def test_first_byte_timeout_is_504(fake_upstream, gateway) -> None:
    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})

    gw = await gateway(single_provider_config(v1(await fake_upstream(handler)), provider={"timeouts": {"first_byte": 0.2}}))
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/generations"), json=BODY) as resp:
            assert resp.status == 504
            assert (await resp.json())["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - started < 3


async def test_body_cut_short_breaks_the_client_connection(fake_upstream, gateway) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "1000000"})
        await resp.prepare(request)
        await resp.write(b'{"created":1,"data":[{"b64_json":"' + b"A" * 300_000)
        request.transport.abort()
        return resp

    gw = await gateway(single_provider_config(v1(await fake_upstream(handler))))
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/generations"), json=BODY) as resp:
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()


async def test_frames_that_crash_the_sdk_are_not_relayed(fake_upstream, gateway) -> None:
    """Some compatible upstreams send `event: ping` frames or `id:` fields."""
    partial = _event("image_generation.partial_image", b"QUFB", partial_image_index=0, **COMPLETED_FIELDS)
    completed = _event("image_generation.completed", b"QUFB", **COMPLETED_FIELDS, usage=USAGE)
    chunks = [b"event: ping\n\n", b"id: 1\n" + partial, b"retry: 500\n\n", completed]
    gw = await gateway(single_provider_config(v1(await fake_upstream(sse_upstream(chunks)))))
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/generations"), json=BODY | {"stream": True}) as resp:
            assert await resp.read() == partial + completed
    client = openai.AsyncOpenAI(base_url=v1(gw), api_key="unused", max_retries=0)
    stream = await client.images.generate(model="gpt-image-1.5", prompt="a fox", stream=True, partial_images=1)
    assert [e.type async for e in stream] == ["image_generation.partial_image", "image_generation.completed"]
    await client.close()
