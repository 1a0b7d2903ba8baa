"""Capability tables: the README's copy is the generated one, and the tables decide the policy."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from pixelgate.adapters import REGISTRY
from pixelgate.adapters.capabilities import Capabilities, markdown
from pixelgate.core.errors import InvalidRequest
from pixelgate.core.request import decode_request
from pixelgate.core.translator import Generation, ProviderSettings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_table_is_the_generated_one() -> None:
    text = README.read_text()
    found = re.search(r"<!-- capabilities:begin -->\n(.*?)<!-- capabilities:end -->", text, re.S)
    assert found, "README.md has no capabilities section"
    generated = markdown((name, cls.capabilities_for(cls.Options())) for name, cls in sorted(REGISTRY.items()))
    assert found.group(1) == generated, "run `python -m pixelgate.adapters` and paste its table into README.md"


def test_every_adapter_declares_a_table() -> None:
    for name, cls in REGISTRY.items():
        assert isinstance(cls.capabilities_for(cls.Options()), Capabilities), name


def _body(**fields: object) -> bytes:
    return msgspec.json.encode({"prompt": "a cat", **fields})


@pytest.mark.parametrize(
    ("param", "value"),
    [("n", 9), ("quality", "high"), ("style", "vivid"), ("background", "transparent"), ("moderation", "low"), ("output_compression", 50)],
)
def test_a_table_that_refuses_a_value_refuses_it_in_generation(param: str, value: object) -> None:
    """The policy comes from the table: where a table says no, `generation` answers 400 naming it."""
    body = _body(**{param: value})
    request = decode_request(body)
    refused: set[str] = set()
    for name, cls in REGISTRY.items():
        table = cls.capabilities_for(cls.Options())
        if not any(p == param for p, _ in table.problems(request)):
            continue
        refused.add(name)
        adapter = cls(ProviderSettings(name, None, "key", {}, cls.Options()))
        with pytest.raises(InvalidRequest) as info:
            adapter.generation(Generation(request, body, "model", "rid"))
        assert info.value.param == param, (name, info.value.message)
        assert info.value.code == "unsupported_parameter"
    assert refused, f"no adapter's table refuses {param}={value!r}"


def test_drop_policy_lists_what_the_table_refused() -> None:
    cls = REGISTRY["together"]
    options = msgspec.convert({"unsupported": "drop"}, cls.Options)
    adapter = cls(ProviderSettings("together", None, "key", {}, options))
    body = _body(quality="high", background="transparent")
    translator = adapter.generation(Generation(decode_request(body), body, "model", "rid"))
    assert translator.request().headers == {"x-pixelgate-dropped-params": "quality,background"}
