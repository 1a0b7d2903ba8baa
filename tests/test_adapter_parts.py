"""The pure pieces adapters are built from: the JSON tap, the streaming
base64 encoder, the client-shape writer and the URL guard."""

from __future__ import annotations

import base64
import json
import random

import pytest

from pixelgate.adapters.b64 import Base64Encoder
from pixelgate.adapters.images_out import ImageMeta, ImagesWriter
from pixelgate.adapters.jsontap import Close, JsonTap, Open
from pixelgate.core.errors import UpstreamProtocolError
from pixelgate.core.translator import Guard
from pixelgate.proxy.guard import check_url, host_allowed

DOC = {
    "candidates": [
        {"content": {"parts": [
            {"text": 'a "quoted" \\ text, {not: structure} [,:]'},
            {"inlineData": {"mimeType": "image/png", "data": "AAAA" * 5000 + "a\\/b=="}},
        ]}, "finishReason": "STOP"},
        {"content": {"parts": [{"inlineData": {"data": "QkJC", "mimeType": "image/jpeg"}}]}},
    ],
    "usageMetadata": {"promptTokenCount": 7, "esc\\\"aped": [1, 2.5e3, True, None]},
}


def _select(path):
    return len(path) >= 2 and path[-1] == "data" and path[-2] == "inlineData"


def _run_tap(raw: bytes, cuts: list[int]) -> tuple[list, bytes]:
    tap = JsonTap(_select)
    pieces = []
    for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True):
        pieces += tap.feed(raw[a:b])
    return pieces, tap.finish()


def _strings(pieces: list) -> list[tuple[tuple, bytes]]:
    out, current, path = [], bytearray(), None
    for piece in pieces:
        if isinstance(piece, Open):
            current, path = bytearray(), piece.path
        elif isinstance(piece, Close):
            assert piece.path == path
            out.append((path, bytes(current)))
        else:
            current += piece
    return out


@pytest.mark.parametrize("seed", range(30))
def test_tap_is_independent_of_chunk_boundaries(seed: int) -> None:
    raw = json.dumps(DOC, indent=seed % 3 or None).encode()
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(raw)), min(len(raw) - 1, rng.choice([1, 5, 50, 400]))))
    pieces, skeleton = _run_tap(raw, cuts)
    strings = _strings(pieces)
    assert [s[0] for s in strings] == [
        ("candidates", 0, "content", "parts", 1, "inlineData", "data"),
        ("candidates", 1, "content", "parts", 0, "inlineData", "data"),
    ]
    # The tapped bytes are the JSON string's contents, escapes as sent.
    assert strings[0][1] == json.dumps("AAAA" * 5000 + "a\\/b==")[1:-1].encode()
    assert strings[1][1] == b"QkJC"
    # The skeleton is the document with the tapped strings emptied.
    expected = json.loads(raw)
    expected["candidates"][0]["content"]["parts"][1]["inlineData"]["data"] = ""
    expected["candidates"][1]["content"]["parts"][0]["inlineData"]["data"] = ""
    assert json.loads(skeleton) == expected


def test_tap_refuses_a_truncated_document() -> None:
    tap = JsonTap(_select)
    tap.feed(b'{"candidates":[{"content":{"parts":[{"inlineData":{"data":"AAA')
    with pytest.raises(UpstreamProtocolError, match="ended before"):
        tap.finish()


def test_tap_bounds_the_skeleton() -> None:
    tap = JsonTap(_select, limit=1000)
    with pytest.raises(UpstreamProtocolError, match="besides its images"):
        tap.feed(b'{"text":"' + b"x" * 2000 + b'"}')


@pytest.mark.parametrize("seed", range(20))
def test_base64_encoder_matches_whole_encoding(seed: int) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(rng.randrange(0, 5000))
    encoder, out, pos = Base64Encoder(), bytearray(), 0
    while pos < len(data):
        step = rng.randrange(1, 700)
        out += encoder.feed(data[pos : pos + step])
        pos += step
    out += encoder.finish()
    assert bytes(out) == base64.b64encode(data)


def _meta() -> ImageMeta:
    return ImageMeta(created=5, size="1024x1024", output_format="jpeg")


def test_writer_body_with_two_images_parses_as_openai_json() -> None:
    w = ImagesWriter(False, _meta())
    raw = w.open() + b"QUFB" + w.close() + w.open() + b"QkJC" + w.close() + w.finish(None)
    assert json.loads(raw) == {"created": 5, "data": [{"b64_json": "QUFB"}, {"b64_json": "QkJC"}],
                               "background": "opaque", "output_format": "jpeg", "quality": "auto", "size": "1024x1024"}


def test_writer_events_put_type_first_and_usage_on_the_last() -> None:
    from pixelgate.core.usage import Usage

    w = ImagesWriter(True, _meta(), usage_last=True)
    raw = w.open() + b"QUFB" + w.close() + w.open() + b"QkJC" + w.close() + w.finish(Usage(input_tokens=3, output_tokens=9))
    events = [e for e in raw.split(b"\n\n") if e]
    assert all(e.startswith(b'event: image_generation.completed\ndata: {"type":"image_generation.completed"') for e in events)
    first, last = (json.loads(e.split(b"data: ", 1)[1]) for e in events)
    assert first["usage"]["total_tokens"] == 0 and last["usage"]["total_tokens"] == 12
    assert last["b64_json"] == "QkJC" and last["output_format"] == "jpeg"


def test_writer_refuses_an_answer_without_images() -> None:
    with pytest.raises(UpstreamProtocolError, match="no image"):
        ImagesWriter(False, _meta()).finish(None)


@pytest.mark.parametrize(("url", "ok"), [
    ("https://delivery-eu1.bfl.ai/x.png?sig=1", True),
    ("https://bfl.ai.evil.example/x.png", False),
    ("https://evilbfl.ai/x.png", False),
    ("http://delivery-eu1.bfl.ai/x.png", False),
    ("http://127.0.0.1:9/x.png", False),  # loopback over http only if allowed as a host
    ("https://user:pw@delivery-eu1.bfl.ai/x.png", False),
    ("file:///etc/passwd", False),
    ("https://169.254.169.254/latest/meta-data", False),
])
def test_guard(url: str, ok: bool) -> None:
    guard = Guard(hosts=("*.bfl.ai",))
    if ok:
        check_url(url, guard, "p")
    else:
        with pytest.raises(UpstreamProtocolError):
            check_url(url, guard, "p")


def test_guard_allows_http_only_on_an_allowed_loopback_host() -> None:
    check_url("http://127.0.0.1:9/x.png", Guard(hosts=("127.0.0.1",)), "p")
    assert host_allowed("A.B.bfl.ai.", ("*.bfl.ai",)) and not host_allowed("bfl.ai", ("*.bfl.ai",))
