"""The event framer: whole events, unchanged bytes, wherever the chunks split."""

from __future__ import annotations

import pytest

from pixelgate.proxy.sse import EventFramer, EventTooLarge, span_views

LF = b'event: image_generation.partial_image\ndata: {"type":"image_generation.partial_image","b64_json":"QUFB"}\n\n: keep-alive\n\nevent: image_generation.completed\ndata: {"b64_json":"QkJC"}\n\n'
STREAMS = {
    "lf": LF,
    "crlf": LF.replace(b"\n", b"\r\n"),
    "cr": LF.replace(b"\n", b"\r"),
    "multi-data-lines": b"data: a\ndata: b\n\ndata: c\n\n",
    "leading-blank-lines": b"\n\ndata: a\n\n",
}


def _frame(chunks: list[bytes]) -> tuple[list[bytes], bool]:
    framer = EventFramer(1 << 20)
    events = []
    for chunk in chunks:
        for spans in framer.feed(chunk):
            events.append(b"".join(bytes(v) for v in span_views(spans)))
    return events, framer.pending


def _content(events: list[bytes]) -> list[bytes]:
    """Events without their line-end bytes, dropping terminator-only pieces."""
    return [e.strip(b"\r\n") for e in events if e.strip(b"\r\n")]


@pytest.mark.parametrize("name", STREAMS)
def test_every_split_point_gives_the_same_events(name: str) -> None:
    data = STREAMS[name]
    whole, pending = _frame([data])
    assert b"".join(whole) == data and not pending
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1, 7 if len(data) > 60 else 1):
            events, pending = _frame([data[:i], data[i:j], data[j:]])
            assert b"".join(events) == data, (i, j)
            assert _content(events) == _content(whole), (i, j)
            assert not pending, (i, j)


def test_byte_at_a_time() -> None:
    data = STREAMS["crlf"]
    events, pending = _frame([data[i : i + 1] for i in range(len(data))])
    assert b"".join(events) == data and not pending
    assert len(_content(events)) == 3


def test_events_come_out_as_soon_as_whole() -> None:
    framer = EventFramer(1 << 20)
    assert [*framer.feed(b"data: a\n")] == []
    assert framer.pending
    out = [*framer.feed(b"\ndata: b")]
    assert [b"".join(bytes(v) for v in span_views(s)) for s in out] == [b"data: a\n\n"]
    assert framer.pending


def test_multi_megabyte_data_line_is_not_copied() -> None:
    big = b"data: " + b"A" * 5_000_000 + b"\n\n"
    chunks = [big[i : i + 262_144] for i in range(0, len(big), 262_144)]
    framer = EventFramer(8 << 20)
    events = [spans for c in chunks for spans in framer.feed(c)]
    assert len(events) == 1
    # The spans are views of the chunks as received, not a joined copy.
    assert [buf for buf, _, _ in events[0]] == chunks
    assert all(a is b for (a, _, _), b in zip(events[0], chunks, strict=False))


def test_max_event_size() -> None:
    framer = EventFramer(64 * 1024)
    with pytest.raises(EventTooLarge):
        for _ in framer.feed(b"data: " + b"A" * 70_000):
            pass
