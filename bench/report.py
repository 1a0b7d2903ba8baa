"""Result rows, targets, and the renderings: text table, Markdown tables, JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["LEGEND", "VS_DIRECT", "VS_FLOOR", "WIDE", "Row", "Target", "markdown_table", "text_table", "write_json"]

Compare = Literal["added", "ratio", "gateway"]
# A table's columns: (cell key, header). See VS_DIRECT, VS_FLOOR, WIDE.
Columns = Sequence[tuple[str, str]]


@dataclass(frozen=True)
class Target:
    """A goal for one row: on the gateway's added cost, its ratio to direct, or its own value."""

    compare: Compare
    limit: float
    at_most: bool  # True: value <= limit passes; False: value >= limit passes
    unit: str = ""
    # Judged against direct (most goals), or against the floor proxy (a bare relay).
    against: Literal["direct", "floor"] = "direct"

    def describe(self) -> str:
        sign = "<=" if self.at_most else ">="
        if self.compare == "ratio":
            return f"{sign} {self.limit:.2f}x" + (" of floor" if self.against == "floor" else "")
        plus = "+" if self.compare == "added" else ""
        return f"{sign} {plus}{self.limit:g} {self.unit}".rstrip()

    def met(self, value: float) -> bool:
        return value <= self.limit if self.at_most else value >= self.limit


@dataclass(frozen=True)
class Row:
    """One line of the table: a metric direct, through the floor proxy, through the gateway.

    The target (and so the verdict) is always on gateway vs direct, as the
    goals are defined. The floor column only explains a miss: gateway vs floor
    is what the gateway adds over a bare aiohttp proxy, floor vs direct what
    the extra aiohttp hop costs on this machine before the gateway does anything.
    """

    scenario: str
    metric: str
    unit: str
    direct: float | None
    gateway: float | None
    compare: Compare | None = None
    target: Target | None = None
    note: str = ""
    error: str | None = None
    floor: float | None = None

    @property
    def how(self) -> Compare | None:
        return self.compare or (self.target.compare if self.target else None)

    @property
    def compared(self) -> float | None:
        """The gateway's added cost, its ratio to direct, or its own value."""
        if self.how == "gateway":
            return self.gateway
        return _relative(self.how, self.direct, self.gateway)

    @property
    def vs_floor(self) -> float | None:
        """The gateway's added cost or ratio over the floor; for own values, gateway - floor."""
        return _relative("added" if self.how == "gateway" else self.how, self.floor, self.gateway)

    @property
    def floor_vs_direct(self) -> float | None:
        """The floor's added cost or ratio over direct (None for values only a proxy has)."""
        return None if self.how == "gateway" else _relative(self.how, self.direct, self.floor)

    @property
    def verdict(self) -> str:
        if self.error is not None:
            return "ERROR"
        if self.target is None:
            return "info"
        value = self.vs_floor if self.target.against == "floor" else self.compared
        if value is None:
            return "ERROR"
        return "PASS" if self.target.met(value) else "MISS"

    def _shown(self, value: float | None, how: Compare | None) -> str:
        if self.note and self.how == "gateway":
            return self.note
        if value is None or how is None or how == "gateway":
            return self.note or "-"
        if how == "ratio":
            return f"{value:.2f}x"
        return f"{value:+.{_digits(value)}f} {self.unit}".rstrip()

    def named_cells(self) -> dict[str, str]:
        """Every cell this row can show, by column key (see ``VS_DIRECT`` and the other tables)."""
        if self.error is not None:
            reason = self.error.splitlines()[0] if self.error else "error"
            reason = reason if len(reason) <= 72 else reason[:71] + "…"
            return {"scenario": self.scenario, "metric": reason, "result": "ERROR"}
        how = self.how
        return {
            "scenario": self.scenario,
            "metric": f"{self.metric} ({self.unit})" if self.unit else self.metric,
            "direct": _fmt(self.direct),
            "floor": _fmt(self.floor),
            "gateway": _fmt(self.gateway),
            "vs_direct": self._shown(self.compared, how),
            "vs_floor": self._shown(self.vs_floor, "added" if how == "gateway" else how),
            "floor_vs_direct": self._shown(self.floor_vs_direct, how),
            "target": self.target.describe() if self.target else "",
            "result": self.verdict,
        }

    def cells(self, columns: Columns = ()) -> list[str]:
        """The cells of ``columns`` (default: the vs-direct table), ``-`` where there is none."""
        named = self.named_cells()
        return [named.get(key, "-") for key, _ in (columns or VS_DIRECT)]

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["compared"] = self.compared
        out["vs_floor"] = self.vs_floor
        out["floor_vs_direct"] = self.floor_vs_direct
        out["verdict"] = self.verdict
        out["target"] = self.target.describe() if self.target else None
        return out


def _relative(how: Compare | None, base: float | None, value: float | None) -> float | None:
    """``value - base`` ("added") or ``value / base`` ("ratio"); None without both."""
    if how is None or how == "gateway" or base is None or value is None:
        return None
    if how == "added":
        return value - base
    return value / base if base else None


# The verdict column is always on gateway vs direct.
VS_DIRECT: Columns = [
    ("scenario", "scenario"), ("metric", "metric"), ("direct", "direct"), ("gateway", "gateway"),
    ("vs_direct", "ratio/added"), ("target", "target"), ("result", "result"),
]
VS_FLOOR: Columns = [
    ("scenario", "scenario"), ("metric", "metric"), ("direct", "direct"), ("floor", "floor"),
    ("gateway", "gateway"), ("floor_vs_direct", "floor vs direct"), ("vs_floor", "gateway vs floor"),
]
WIDE: Columns = [
    ("scenario", "scenario"), ("metric", "metric"), ("direct", "direct"), ("floor", "floor"),
    ("gateway", "gateway"), ("vs_direct", "gw vs direct"), ("vs_floor", "gw vs floor"),
    ("floor_vs_direct", "floor vs direct"), ("target", "target (gw vs direct)"), ("result", "result"),
]
_NUMERIC = {"direct", "floor", "gateway", "vs_direct", "vs_floor", "floor_vs_direct"}

LEGEND = (
    "vs = ratio (x) for throughput, difference for latency and time to first event; "
    "floor = a bare aiohttp pass-through proxy (bench/floor_proxy.py) in front of the same upstream; "
    "targets are on gateway vs direct."
)


def _digits(value: float) -> int:
    """Enough decimals for the value to read well: 0.123, 12.3, 1234."""
    size = abs(value)
    return 3 if size < 10 else 1 if size < 1000 else 0


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.{_digits(value)}f}"


def text_table(rows: list[Row], columns: Columns = WIDE) -> str:
    """A fixed-width table; rows of a scenario after the first leave its name blank."""
    header = [label for _, label in columns]
    lines = [header]
    previous = None
    for row in rows:
        cells = row.cells(columns)
        if cells[0] == previous:
            cells[0] = ""
        else:
            previous = cells[0]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = {i for i, (key, _) in enumerate(columns) if key in _NUMERIC}
    out = []
    for k, line in enumerate(lines):
        padded = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True)))
        out.append("  ".join(padded).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def markdown_table(rows: list[Row], columns: Columns = VS_DIRECT) -> str:
    keys = [key for key, _ in columns]
    align = ["--:" if key in _NUMERIC else "---" for key in keys]
    out = ["| " + " | ".join(label for _, label in columns) + " |", "|" + "|".join(align) + "|"]
    for row in rows:
        cells = [c.replace("|", "\\|") for c in row.cells(columns)]
        cells[0] = f"`{cells[0]}`"
        if "result" in keys:
            i = keys.index("result")
            if cells[i] in ("PASS", "MISS", "ERROR"):
                cells[i] = f"**{cells[i]}**"
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
