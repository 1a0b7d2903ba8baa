"""Token usage as OpenAI reports it, and the counts the gateway bills by."""

from __future__ import annotations

import msgspec

__all__ = ["InputTokensDetails", "OutputTokensDetails", "Usage", "decode_usage", "token_counts"]


class InputTokensDetails(msgspec.Struct):
    text_tokens: int = 0
    image_tokens: int = 0


class OutputTokensDetails(msgspec.Struct):
    text_tokens: int = 0
    image_tokens: int = 0


class Usage(msgspec.Struct, omit_defaults=True):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_tokens_details: InputTokensDetails | None = None
    output_tokens_details: OutputTokensDetails | None = None


_usage_decoder = msgspec.json.Decoder(Usage)


def decode_usage(data: bytes) -> Usage | None:
    try:
        return _usage_decoder.decode(data)
    except msgspec.DecodeError:
        return None


def token_counts(usage: Usage) -> dict[tuple[str, str], int]:
    """Tokens by (direction, modality). Without details, input is text and
    output is image: what image models bill for."""
    inp, out = usage.input_tokens_details, usage.output_tokens_details
    in_text, in_image = (inp.text_tokens, inp.image_tokens) if inp else (usage.input_tokens, 0)
    out_text, out_image = (out.text_tokens, out.image_tokens) if out else (0, usage.output_tokens)
    return {("input", "text"): in_text, ("input", "image"): in_image, ("output", "text"): out_text, ("output", "image"): out_image}
