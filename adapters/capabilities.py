"""What each provider can honour of an OpenAI request, as data.

Every adapter declares one ``Capabilities`` table (or one per options, where
its options change what it can do). The unsupported-parameter policy reads
the table (``Capabilities.problems``), and so does the README's per-provider
table (``markdown``; a test keeps the README in step). The words a client
reads when a parameter is refused are in the table too, in ``why``: they name
the provider's own way to get the same thing, where there is one.

``python -m pixelgate.adapters`` prints the README table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import msgspec

from pixelgate.adapters.params import aspect_ratio, parse_size
from pixelgate.core.request import ImageEditRequest, ImageRequest

__all__ = ["Capabilities", "markdown"]

# The parameters a table speaks for, in the order problems are named by default.
PARAMS = (
    "n",
    "size",
    "quality",
    "style",
    "background",
    "response_format",
    "output_format",
    "output_compression",
    "moderation",
)


# The values OpenAI documents today, per parameter the gateway may judge. A
# translating adapter refuses any other (its provider cannot know it either);
# a pass-through table (``judges="upstream"``) lets the upstream judge.
KNOWN: Mapping[str, frozenset[str]] = {
    "quality": frozenset({"auto", "low", "medium", "high", "xhigh", "max", "standard", "hd"}),
    "style": frozenset({"vivid", "natural"}),
    "background": frozenset({"auto", "opaque", "transparent"}),
    "moderation": frozenset({"auto", "low"}),
    "output_format": frozenset({"png", "jpeg", "webp"}),
    "input_fidelity": frozenset({"high", "low"}),
}


class Capabilities(msgspec.Struct, frozen=True, kw_only=True):
    # The provider as messages and tables name it.
    provider: str
    # gateway: values outside KNOWN are refused; upstream: an OpenAI-compatible
    # upstream judges every value itself (new OpenAI values pass).
    judges: Literal["gateway", "upstream"] = "gateway"
    # Most images per request; None: as many as asked.
    max_n: int | None = None
    # The aspect ratios a size must match (within 2 %, or exactly); None: any pixel size.
    aspect_ratios: tuple[str, ...] | None = None
    exact_ratios: bool = False
    # Quality values honoured besides `auto`; None: any value passes through.
    qualities: tuple[str, ...] | None = ()
    style: bool = False
    transparent: bool = False
    # response_format: url (as the provider's own URLs).
    urls: bool = False
    # output_format values it can return; None: any value passes through.
    formats: tuple[str, ...] | None = ("png",)
    # Which formats output_compression applies to: all, jpeg only, or none.
    compression: Literal["any", "jpeg", "none"] = "none"
    moderation_low: bool = False
    # native: the provider streams (partial images pass through); emulated:
    # one completed event per image as its bytes arrive, keep-alives before.
    streaming: Literal["native", "emulated"] = "emulated"
    # Edits: whether it can, how many input images, a mask, input_fidelity.
    edits: bool = False
    max_edit_images: int = 1
    mask: bool = False
    input_fidelity: bool = False
    # Per parameter: why it cannot be honoured, in the words of the 400.
    why: Mapping[str, str] = {}
    # The order problems are named in: the first is the one a 400 names, and
    # the dropped-parameters header lists them so (an adapter's own checks
    # take their place here too; any other parameter comes last).
    order: tuple[str, ...] = PARAMS

    def edit_problems(self, req: ImageEditRequest, images: int, mask: bool) -> list[tuple[str, str]]:
        """``problems`` for an edit, and what is particular to edits: the
        number of input images, the mask, ``input_fidelity``."""
        found = self.problems(req)
        if images > self.max_edit_images:
            why = self.why.get("image") or (
                f"{self.provider} edits one image at a time" if self.max_edit_images == 1
                else f"{self.provider} takes at most {self.max_edit_images} input images"
            )
            found.insert(0, ("image", why))
        if mask and not self.mask:
            found.append(("mask", self.why.get("mask") or f"{self.provider} takes no mask"))
        fidelity = req.input_fidelity
        if self.judges == "gateway" and isinstance(fidelity, str) and fidelity not in KNOWN["input_fidelity"]:
            found.append(("input_fidelity", f"{fidelity[:64]!r} is not a value of `input_fidelity` (high, low)"))
        elif not self.input_fidelity and fidelity == "high":
            found.append(("input_fidelity", self.why.get("input_fidelity") or f"{self.provider} has no input fidelity setting"))
        return found

    def problems(self, req: ImageRequest) -> list[tuple[str, str]]:
        """``(param, why)`` for each parameter of ``req`` the provider cannot honour.

        Values that ask for nothing in particular (absent, null, ``auto``)
        never count.
        """
        found = []
        for p in self.order:
            if p not in PARAMS:
                continue
            if (unknown := self._unknown(p, req)) is not None:
                found.append((p, unknown))
            elif self._refuses(p, req):
                found.append((p, self.why.get(p) or self._default_why(p)))
        return found

    def _unknown(self, param: str, req: ImageRequest) -> str | None:
        """Why a value OpenAI does not document is refused, if this table judges values."""
        if self.judges == "upstream" or param not in KNOWN:
            return None
        value = getattr(req, param, None)
        if not isinstance(value, str) or value in KNOWN[param]:
            return None
        return f"{value[:64]!r} is not a value of `{param}` that {self.provider} takes ({', '.join(sorted(KNOWN[param]))})"

    def in_order(self, problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Problems from the table and an adapter's own checks, in ``order``."""
        rank = {param: i for i, param in enumerate(self.order)}
        return sorted(problems, key=lambda problem: rank.get(problem[0], len(rank)))

    def _refuses(self, param: str, req: ImageRequest) -> bool:
        match param:
            case "n":
                return self.max_n is not None and isinstance(req.n, int) and req.n > self.max_n
            case "size":
                size = parse_size(req.size)
                if self.aspect_ratios is None or size is None:
                    return False
                tolerance = 0.0 if self.exact_ratios else 0.02
                return aspect_ratio(*size, self.aspect_ratios, tolerance) is None
            case "quality":
                return self.qualities is not None and _given(req.quality) and req.quality not in ("auto", *self.qualities)
            case "style":
                return not self.style and _given(getattr(req, "style", None))
            case "background":
                return not self.transparent and req.background == "transparent"
            case "response_format":
                return not self.urls and req.response_format == "url"
            case "output_format":
                return self.formats is not None and _given(req.output_format) and req.output_format not in self.formats
            case "output_compression":
                if not _given(req.output_compression) or self.compression == "any":
                    return False
                return self.compression == "none" or req.output_format != "jpeg"
            case "moderation":
                return not self.moderation_low and req.moderation == "low"
        raise AssertionError(param)

    def _default_why(self, param: str) -> str:
        p = self.provider
        match param:
            case "n":
                return f"{p} makes one image per request" if self.max_n == 1 else f"{p} makes at most {self.max_n} images per call"
            case "size":
                return f"{p}'s aspect ratios are {', '.join(self.aspect_ratios or ())}"
            case "quality":
                return f"{p} has no quality setting"
            case "style":
                return f"{p} has no style setting"
            case "background":
                return f"{p} cannot make transparent backgrounds"
            case "response_format":
                return f"{p} returns image bytes, not URLs"
            case "output_format":
                return f"{p} returns {' or '.join(self.formats or ())}"
            case "output_compression":
                return f"{p} compresses jpeg only" if self.compression == "jpeg" else f"{p} has no compression setting"
        return f"{p} cannot honour `{param}`"


def _given(value: object) -> bool:
    return value is not msgspec.UNSET and value is not None


def _cell(values: tuple[str, ...] | None, everything: str = "any (passed through)") -> str:
    if values is None:
        return everything
    return ", ".join(values) if values else "—"


def _edits(c: Capabilities) -> str:
    if not c.edits:
        return "—"
    return f"≤ {c.max_edit_images}" + (", mask" if c.mask else "")


def markdown(tables: Iterable[tuple[str, Capabilities]]) -> str:
    """The README's table: one row per adapter (its default options)."""
    rows = [
        "| adapter | n | size | quality | style | transparent | `url` | output_format | compression | moderation `low` | streaming | edits: images, mask |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    yes = {True: "yes", False: "—"}
    for name, c in tables:
        n = "any" if c.max_n is None else f"≤ {c.max_n}"
        size = "any WxH" if c.aspect_ratios is None else "ratios " + " ".join(c.aspect_ratios)
        compression = {"any": "yes", "jpeg": "jpeg only", "none": "—"}[c.compression]
        rows.append(
            f"| `{name}` | {n} | {size} | {_cell(c.qualities)} | {yes[c.style]} | {yes[c.transparent]} | {yes[c.urls]} "
            f"| {_cell(c.formats)} | {compression} | {yes[c.moderation_low]} | {c.streaming} | {_edits(c)} |"
        )
    return "\n".join(rows) + "\n"
