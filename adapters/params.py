"""Request parameters a provider cannot honour, and the sizes it can.

Each adapter lists what it cannot do with the client's request; the
provider's ``unsupported`` option decides what happens: ``reject`` (the
default) answers 400 naming the parameter, ``drop`` leaves it out and says so
in the ``x-pixelgate-dropped-params`` response header. Values that ask for
nothing in particular (``auto``, the provider's own default) are never
counted as unsupported.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import msgspec

from pixelgate.core.errors import InvalidRequest
from pixelgate.core.request import GATEWAY_ONLY_FIELDS, ImageGenerationRequest

__all__ = ["DROPPED_HEADER", "Policy", "aspect_ratio", "native_fields", "parse_size", "reported_size", "settle"]

Policy = Literal["reject", "drop"]
DROPPED_HEADER = "x-pixelgate-dropped-params"


def settle(provider: str, problems: Iterable[tuple[str, str]], policy: Policy) -> dict[str, str]:
    """Apply the policy to ``(param, why)`` pairs; the response headers to add."""
    dropped = []
    for param, why in problems:
        if policy == "reject":
            raise InvalidRequest(
                f"Provider {provider!r} cannot honour `{param}`: {why}. Leave it out, or ask the gateway operator "
                "to set this provider's options.unsupported to drop.",
                param=param,
                code="unsupported_parameter",
            )
        dropped.append(param)
    return {DROPPED_HEADER: ",".join(dropped)} if dropped else {}


def parse_size(size: object) -> tuple[int, int] | None:
    """``"1536x1024"`` as (width, height); None for ``auto``, absent or null."""
    if not isinstance(size, str) or size == "auto":
        return None
    w, _, h = size.partition("x")
    return int(w), int(h)


def reported_size(size: object) -> str:
    """The ``size`` reported beside the images: the one asked for, else ``auto``."""
    return size if isinstance(size, str) else "auto"


def aspect_ratio(width: int, height: int, allowed: Sequence[str], tolerance: float = 0.02) -> str | None:
    """The allowed ``"W:H"`` ratio nearest ``width/height``, if within ``tolerance`` (0: exactly)."""
    if tolerance == 0:
        # Exact, in integers: no float rounding decides it.
        for ratio in allowed:
            a, _, b = ratio.partition(":")
            if a.isdigit() and b.isdigit() and width * int(b) == height * int(a):
                return ratio
        return None
    want = width / height
    best, error = None, tolerance
    for ratio in allowed:
        a, _, b = ratio.partition(":")
        err = abs(float(a) / float(b) - want) / want
        if err <= error:
            best, error = ratio, err
    return best


_KNOWN = frozenset(ImageGenerationRequest.__struct_fields__) | GATEWAY_ONLY_FIELDS
_raw_map = msgspec.json.Decoder(dict[str, msgspec.Raw])


def native_fields(body: bytes) -> dict[str, msgspec.Raw]:
    """The client's fields outside the OpenAI schema (``seed``, ``steps``, …).

    Adapters with a flat request body pass them to the provider unchanged, so
    a client can use a provider's own options through the gateway.
    """
    return {k: v for k, v in _raw_map.decode(body).items() if k not in _KNOWN}
