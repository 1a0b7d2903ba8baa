"""Usage and image counts read off passing bytes, at any chunking."""

from __future__ import annotations

import json

from pixelgate.proxy.meter import BodyMeter, KeyScanner, add_usage, inspect_event

USAGE = {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12, "input_tokens_details": {"text_tokens": 5, "image_tokens": 0}}
BODY = (
    b'{"created":1,"data":[{"b64_json":"' + b"A" * 300 + b'"},{"b64_json":"QUFB"}],'
    b'"size":"1024x1024","usage": ' + json.dumps(USAGE).encode() + b"}"
)


def test_body_meter_at_every_split() -> None:
    for i in range(len(BODY) + 1):
        for j in {i, min(len(BODY), i + 3), min(len(BODY), i + 40)}:
            meter = BodyMeter()
            for piece in (BODY[:i], BODY[i:j], BODY[j:]):
                meter.feed(piece)
            usage = meter.usage()
            assert meter.images == 2, (i, j)
            assert usage is not None and usage.total_tokens == 12 and usage.input_tokens_details.text_tokens == 5, (i, j)
            assert meter.bytes == len(BODY)


def test_prompt_text_does_not_count_as_images() -> None:
    body = b'{"data":[{"url":"https://x","revised_prompt":"say \\"b64_json\\" and \\"usage\\""}]}'
    meter = BodyMeter()
    meter.feed(body)
    assert meter.images == 1 and meter.usage() is None


def test_completed_event_usage_at_every_split() -> None:
    event = b'event: image_generation.completed\ndata: {"type":"image_generation.completed","b64_json":"' + b"B" * 100 + b'","usage":' + json.dumps(USAGE).encode() + b"}\n\n"
    for i in range(1, len(event)):
        info = inspect_event([(event, 0, i), (event, i, len(event))])
        assert info.kind == "completed" and info.usage is not None and info.usage.output_tokens == 7, i
        assert info.size == len(event)


def test_event_kinds() -> None:
    def kind(raw: bytes) -> str:
        return inspect_event([(raw, 0, len(raw))]).kind

    assert kind(b'event: image_generation.partial_image\ndata: {}\n\n') == "partial"
    assert kind(b'event: image_edit.completed\ndata: {}\n\n') == "completed"
    assert kind(b'data: {"type":"image_generation.partial_image","b64_json":"x"}\n\n') == "partial"
    assert kind(b'data: {"error":{"message":"x"}}\n\n') == "error"
    assert kind(b"event: error\ndata: {}\n\n") == "error"
    assert kind(b"data: [DONE]\n\n") == "done"
    assert kind(b": keep-alive\n\n") == "comment"
    moderated = b'event: error\ndata: {"type":"error","error":{"code":"moderation_blocked"}}\n\n'
    assert inspect_event([(moderated, 0, len(moderated))]).moderation


def test_usage_sums_over_images() -> None:
    raw = b'event: image_generation.completed\ndata: {"usage":{"input_tokens":5,"output_tokens":10,"total_tokens":15}}\n\n'
    first = inspect_event([(raw, 0, len(raw))])
    assert first.usage is not None
    total = add_usage(None, first.usage)
    total = add_usage(total, first.usage)
    assert (total.input_tokens, total.output_tokens, total.total_tokens) == (10, 20, 30)
    assert first.usage.output_tokens == 10  # the event's own usage is not mutated


def test_scanner_knows_when_it_is_inside_the_b64_value() -> None:
    event = b'data: {"type":"image_generation.partial_image","b64_json":"QUFBQUFB","size":"1024x1024"}\n\n'
    # From just past the value's opening quote to its closing quote included.
    inside = event.index(b"QUFB")
    after = event.index(b'","size"') + 1
    for cut in range(len(event) + 1):
        scanner = KeyScanner()
        scanner.feed(event[:cut])
        scanner.finish()
        assert scanner.in_b64_value == (inside <= cut < after), cut


def test_keys_are_matched_with_their_colon_only() -> None:
    scanner = KeyScanner(b"url")
    scanner.feed(b'{"revised_prompt":"url","note":"say \\"url\\": fine","data":[{"url":"https://x"}]}')
    scanner.finish()
    assert scanner.counts == {b"url": 1}


def test_whole_small_body_in_one_decode() -> None:
    meter = BodyMeter()
    meter.whole(BODY)
    usage = meter.usage()
    assert meter.images == 2 and usage is not None and usage.total_tokens == 12 and meter.bytes == len(BODY)


def test_whole_body_with_odd_fields_is_valid_but_unmetered() -> None:
    meter = BodyMeter()
    meter.whole(b'{"created": 1, "data": "not a list", "usage": {"input_tokens": "many"}}')
    assert meter.images == 0 and meter.usage() is None
