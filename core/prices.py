"""What a model costs, from the configured price table."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from pixelgate.core.usage import Usage, token_counts

__all__ = ["Price", "cost_usd"]

USDPerMillion = Annotated[float, Meta(ge=0)]


class Price(msgspec.Struct, forbid_unknown_fields=True):
    """What a model costs: USD per million tokens by direction and modality,
    and/or a flat USD price per image (for providers that bill per image)."""

    input_text: USDPerMillion = 0.0
    input_image: USDPerMillion = 0.0
    output_text: USDPerMillion = 0.0
    output_image: USDPerMillion = 0.0
    per_image: Annotated[float, Meta(ge=0)] = 0.0


def cost_usd(price: Price | None, usage: Usage | None, images: int) -> float | None:
    """USD for one request, or None when the model has no price (never a guess)."""
    if price is None:
        return None
    cost = images * price.per_image
    if usage is not None:
        tokens = token_counts(usage)
        cost += (
            tokens["input", "text"] * price.input_text
            + tokens["input", "image"] * price.input_image
            + tokens["output", "text"] * price.output_text
            + tokens["output", "image"] * price.output_image
        ) / 1_000_000
    return cost
