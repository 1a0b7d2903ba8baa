"""Golden cases for adapters: recorded provider exchanges, no sockets.

Each ``tests/golden/<adapter>/<case>.yaml`` holds a client request, the
upstream calls the adapter must make (checked field by field) with the
answers the provider gave, and what the client must get: a JSON body, SSE
events, or an error. The case runs through the real ``proxy.upstream``
driver (the relay's multi-call logic) over an in-memory transport, with the
provider's body cut into chunks three ways (whole, 4 KiB, 7 bytes): the
client bytes must not depend on where the chunks break.

Placeholders in strings: ``$B64`` is the base64 of ``IMAGE`` and ``$IMAGE``
(as a whole ``body``) is ``IMAGE`` itself, for providers that answer with files.

Edits (``operation: edit``): ``files`` lists the input images, each a real
PNG/JPEG/WebP made here (``{field: image|mask, format: png, width: W, height: H}``);
``json: true`` sends the edit as a JSON body whose images are those files as
``data:`` URLs. ``$FILE0``... stand for a file's bytes (a multipart part, decoded
as latin-1) and ``$FILE0_B64`` for its base64.
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import yaml
from multidict import CIMultiDict

from pixelgate.adapters import REGISTRY
from pixelgate.core.errors import GatewayError
from pixelgate.core.image_headers import read_head
from pixelgate.core.request import ImageEditRequest, convert_edit_form, decode_edit, decode_request
from pixelgate.core.translator import Edit, Generation, ProviderSettings, UpstreamRequest
from pixelgate.core.upload import InputImage, StreamedBody
from pixelgate.proxy.bodies import read_all
from pixelgate.proxy.config import Timeouts
from pixelgate.proxy.exchange import Exchange, Outcome
from pixelgate.proxy.upstream import Upstream

GOLDEN = Path(__file__).parent / "golden"
IMAGE = bytes(range(256)) * 97 + b"\x89PNG tail"  # not a multiple of 3: padding is exercised
B64 = base64.b64encode(IMAGE).decode()
CREATED = 1700000000
CHUNKINGS = (None, 4096, 7)


def cases() -> list[Path]:
    return sorted(GOLDEN.glob("*/*.yaml"))


def edit_image(index: int, fmt: str, width: int, height: int) -> bytes:
    """A real image, different per index (the input of an edit case)."""
    from PIL import Image

    out = io.BytesIO()
    mode = "RGBA" if fmt == "png" else "RGB"
    Image.new(mode, (width, height), (40 * index % 256, 90, 160, 255)[: len(mode)]).save(out, fmt.upper())
    return out.getvalue()


def _fill(node: Any, files: Sequence[bytes] = ()) -> Any:
    if isinstance(node, str):
        for i in reversed(range(len(files))):
            node = node.replace(f"$FILE{i}_B64", base64.b64encode(files[i]).decode())
            node = node.replace(f"$FILE{i}", files[i].decode("latin-1"))
        return node.replace("$B64", B64)
    if isinstance(node, dict):
        return {k: _fill(v, files) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v, files) for v in node]
    return node


class _Response:
    def __init__(self, status: int, headers: Mapping[str, str], body: bytes, chunk: int | None) -> None:
        self.status = status
        self.headers = CIMultiDict(headers)
        step = chunk or max(len(body), 1)
        self._chunks = [body[i : i + step] for i in range(0, len(body), step)]

    async def read(self) -> bytes:
        return self._chunks.pop(0) if self._chunks else b""


def _multipart_fields(request: UpstreamRequest) -> dict[str, str]:
    from email.parser import BytesParser
    from email.policy import HTTP

    content_type = request.headers.get("Content-Type", "")
    assert isinstance(request.body, bytes)
    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + request.body)
    fields: dict[str, str] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        content = part.get_content()
        value = content.decode("latin-1") if isinstance(content, bytes) else content
        # Repeated names (image[]) become name, name#1, name#2, ...
        key, n = name, 1
        while key in fields:
            key, n = f"{name}#{n}", n + 1
        fields[key] = value
    return fields


def check_call(expect: Mapping[str, Any], request: UpstreamRequest) -> None:
    where = f"call to {request.url}"
    if "method" in expect:
        assert request.method == expect["method"], where
    if "url" in expect:
        assert request.url == expect["url"], where
    sent = CIMultiDict(request.headers)
    for name, value in expect.get("headers", {}).items():
        if value is None:
            assert name not in sent, f"{where}: header {name} must not be sent"
        else:
            assert sent.get(name) == value, f"{where}: header {name}: {sent.get(name)!r} != {value!r}"
    if "json" in expect:
        assert json.loads(request.body) == expect["json"], where
    if "multipart" in expect:
        assert _multipart_fields(request) == expect["multipart"], where
    if "delay" in expect:
        assert request.delay == expect["delay"], where
    if expect.get("guarded"):
        assert request.guard is not None, f"{where}: a provider-supplied URL must carry a guard"


class RecordedTransport:
    def __init__(self, calls: list[dict[str, Any]], chunk: int | None) -> None:
        self._calls = list(calls)
        self._chunk = chunk
        self.made = 0

    @asynccontextmanager
    async def open(self, request: UpstreamRequest, provider: str, timeouts: Timeouts) -> AsyncIterator[_Response]:
        assert self._calls, f"unexpected extra call to {request.url}"
        if isinstance(request.body, StreamedBody):
            # What the transport would send, read from the spooled files.
            data = await read_all(request.body)
            assert len(data) == request.body.length, "a streamed body's declared length must be its length"
            request = msgspec.structs.replace(request, body=data)
        call = self._calls.pop(0)
        self.made += 1
        check_call(call.get("expect", {}), request)
        respond = call["respond"]
        body = respond.get("body", "")
        raw = IMAGE if body == "$IMAGE" else body.encode() if isinstance(body, str) else json.dumps(body).encode()
        yield _Response(respond.get("status", 200), respond.get("headers", {}), raw, self._chunk)

    def left(self) -> int:
        return len(self._calls)


def _events(data: bytes) -> list[dict[str, Any]]:
    out = []
    for block in data.split(b"\n\n"):
        if not block.strip():
            continue
        event: dict[str, Any] = {}
        for line in block.split(b"\n"):
            name, _, value = line.partition(b": ")
            if name == b"event":
                event["event"] = value.decode()
            elif name == b"data":
                event["data"] = json.loads(value)
        out.append(event)
    return out


def _edit(spec: dict[str, Any], files: list[bytes], spool: Path) -> tuple[ImageEditRequest, tuple[InputImage, ...], InputImage | None, tuple[tuple[str, str], ...], bytes | None]:
    images: list[InputImage] = []
    mask = None
    for i, (entry, data) in enumerate(zip(spec.get("files", []), files, strict=True)):
        path = spool / f"{i:02d}"
        path.write_bytes(data)
        head = read_head(data, complete=True)
        image = InputImage(str(path), len(data), head.format, head.width, head.height, entry.get("filename", f"in{i}.{head.format}"), alpha=head.alpha)
        if entry["field"] == "mask":
            mask = image
        else:
            images.append(image)
    text = {k: v if isinstance(v, str) else json.dumps(v) for k, v in spec["request"].items()}
    if spec.get("json"):
        refs = [{"image_url": f"data:{i.media_type};base64," + base64.b64encode(Path(i.path).read_bytes()).decode()} for i in images]
        doc = {**spec["request"], "images": refs}
        if mask is not None:
            doc["mask"] = {"image_url": "data:image/png;base64," + base64.b64encode(Path(mask.path).read_bytes()).decode()}
        body = json.dumps(doc).encode()
        return decode_edit(body), tuple(images), mask, (), body
    return convert_edit_form(text), tuple(images), mask, tuple(text.items()), None


async def run_case(path: Path, chunk: int | None, tmp: Path | None = None) -> tuple[bytes, dict[str, str]]:
    raw = yaml.safe_load(path.read_text())
    files = [edit_image(i, f.get("format", "png"), f.get("width", 64), f.get("height", 64)) for i, f in enumerate(raw.get("files", []))]
    spec = _fill(raw, files)
    adapter_cls = REGISTRY[spec["adapter"]]
    provider = spec.get("provider", {})
    options = msgspec.convert(provider.get("options", {}), adapter_cls.Options)
    settings = ProviderSettings(
        "golden", provider.get("base_url"), provider.get("api_key", "test-key"), provider.get("headers", {}), options
    )
    adapter = adapter_cls(settings, clock=lambda: CREATED)
    upstream_model = spec.get("upstream_model", "upstream-model")
    expected_error = spec.get("error")
    try:
        if spec.get("operation", "generation") == "edit":
            spool = Path(tempfile.mkdtemp(prefix="golden-", dir=tmp))
            req, images, mask, fields, json_body = _edit(spec, files, spool)
            translator = adapter.edit(Edit(req, images, mask, fields, json_body, upstream_model, "req-golden"))
        else:
            body = json.dumps(spec["request"]).encode()
            translator = adapter.generation(Generation(decode_request(body), body, upstream_model, "req-golden"))
        transport = RecordedTransport(spec.get("calls", []), chunk)
        upstream = Upstream(Exchange("golden", translator, transport, Timeouts(), {}), Outcome())
        out = bytearray()
        try:
            await upstream.start()
            while True:
                data, end = await upstream.read()
                out += data
                if end:
                    break
        finally:
            await upstream.close(None)
    except GatewayError as err:
        assert expected_error is not None, f"unexpected error: {err.status} {err.code} {err.message}"
        assert err.status == expected_error["status"], (err.status, err.message)
        for field in ("type", "code", "param"):
            if field in expected_error:
                assert getattr(err, field) == expected_error[field], (field, getattr(err, field), err.message)
        if "message" in expected_error:
            assert expected_error["message"] in err.message, err.message
        for name, value in expected_error.get("headers", {}).items():
            assert err.headers.get(name) == value, (name, err.headers)
        return b"", {}
    assert expected_error is None, f"expected an error, got {bytes(out[:200])!r}"
    assert transport.left() == 0, "the adapter made fewer calls than recorded"
    client = spec["client"]
    if "json" in client:
        assert json.loads(out) == client["json"]
    if "events" in client:
        assert _events(bytes(out)) == client["events"]
    for name, value in client.get("headers", {}).items():
        assert upstream.client_headers.get(name) == value, (name, upstream.client_headers)
    if "usage" in spec:
        usage = upstream.usage
        assert (msgspec.to_builtins(usage) if usage else None) == spec["usage"]
    return bytes(out), dict(upstream.client_headers)
