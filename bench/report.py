"""Result rows, targets, and the three renderings: text table, Markdown, JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["Row", "Target", "markdown_table", "text_table", "write_json"]

Compare = Literal["added", "ratio", "gateway"]


@dataclass(frozen=True)
class Target:
    """A goal for one row: on the gateway's added cost, its ratio to direct, or its own value."""

    compare: Compare
    limit: float
    at_most: bool  # True: value <= limit passes; False: value >= limit passes
    unit: str = ""

    def describe(self) -> str:
        sign = "<=" if self.at_most else ">="
        if self.compare == "ratio":
            return f"{sign} {self.limit:.2f}x"
        plus = "+" if self.compare == "added" else ""
        return f"{sign} {plus}{self.limit:g} {self.unit}".rstrip()

    def met(self, value: float) -> bool:
        return value <= self.limit if self.at_most else value >= self.limit


@dataclass(frozen=True)
class Row:
    """One line of the table: a metric, direct and through the gateway."""

    scenario: str
    metric: str
    unit: str
    direct: float | None
    gateway: float | None
    compare: Compare | None = None
    target: Target | None = None
    note: str = ""
    error: str | None = None

    @property
    def compared(self) -> float | None:
        """The gateway's added cost, its ratio to direct, or its own value."""
        d, g, how = self.direct, self.gateway, self.compare or (self.target.compare if self.target else None)
        if g is None or how is None:
            return None
        if how == "gateway":
            return g
        if d is None:
            return None
        if how == "added":
            return g - d
        return g / d if d else None

    @property
    def verdict(self) -> str:
        if self.error is not None:
            return "ERROR"
        if self.target is None:
            return "info"
        value = self.compared
        if value is None:
            return "ERROR"
        return "PASS" if self.target.met(value) else "MISS"

    def cells(self) -> list[str]:
        """scenario, metric, direct, gateway, ratio/added, target, result."""
        if self.error is not None:
            reason = self.error.splitlines()[0] if self.error else "error"
            reason = reason if len(reason) <= 72 else reason[:71] + "…"
            return [self.scenario, reason, "-", "-", "-", "-", "ERROR"]
        how = self.compare or (self.target.compare if self.target else None)
        value = self.compared
        if value is None or how == "gateway":
            shown = self.note or "-"
        elif how == "ratio":
            shown = f"{value:.2f}x"
        else:
            shown = f"{value:+.{_digits(value)}f} {self.unit}".rstrip()
        metric = f"{self.metric} ({self.unit})" if self.unit else self.metric
        return [
            self.scenario,
            metric,
            _fmt(self.direct),
            _fmt(self.gateway),
            shown,
            self.target.describe() if self.target else "",
            self.verdict,
        ]

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["compared"] = self.compared
        out["verdict"] = self.verdict
        out["target"] = self.target.describe() if self.target else None
        return out


_HEADER = ["scenario", "metric", "direct", "gateway", "ratio/added", "target", "result"]


def _digits(value: float) -> int:
    """Enough decimals for the value to read well: 0.123, 12.3, 1234."""
    size = abs(value)
    return 3 if size < 10 else 1 if size < 1000 else 0


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.{_digits(value)}f}"


def text_table(rows: list[Row]) -> str:
    """A fixed-width table; rows of a scenario after the first leave its name blank."""
    lines = [_HEADER]
    previous = None
    for row in rows:
        cells = row.cells()
        if cells[0] == previous:
            cells[0] = ""
        else:
            previous = cells[0]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(_HEADER))]
    right = {2, 3, 4}
    out = []
    for k, line in enumerate(lines):
        padded = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True)))
        out.append("  ".join(padded).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def markdown_table(rows: list[Row]) -> str:
    out = ["| " + " | ".join(_HEADER) + " |", "|" + "|".join(["---", "---", "--:", "--:", "--:", "---", "---"]) + "|"]
    for row in rows:
        cells = [c.replace("|", "\\|") for c in row.cells()]
        cells[0] = f"`{cells[0]}`"
        if cells[6] in ("PASS", "MISS", "ERROR"):
            cells[6] = f"**{cells[6]}**"
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    tmp.replace(path)


def _jsonable(value: object) -> object:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)  # type: ignore[call-overload]
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
