"""Usage reports from the ledger: the query (time range, grouping, key) and its JSON or CSV form.

``since`` and ``until`` are unix seconds or relative to now (``30m``, ``24h``,
``7d``, ``90s``): ``since=7d`` is seven days ago. Defaults: since the
beginning, until now. ``by`` is a comma-separated list of ``key``, ``model``,
``provider``, ``operation``, ``day`` (``day``: a UTC time series). The JSON
answer carries the totals and one entry per group; the CSV one a header and
one row per group (the totals alone without ``by``). Costs are the ledger's
exact integer micro-dollars (``cost_micro_usd``, null when nothing in the
group was priced) and, for reading, ``cost_usd``.
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Mapping
from typing import Any

from pixelgate.core.errors import InvalidRequest
from pixelgate.proxy.ledger import GROUPS, Group, LedgerStore

__all__ = ["UsageQuery", "parse_query", "parse_time", "report", "to_csv"]

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_METRICS = ("requests", "errors", "images", "partials", "input_text_tokens", "input_image_tokens",
            "output_text_tokens", "output_image_tokens", "cost_micro_usd", "cost_usd", "unpriced")


def parse_time(value: str, param: str, now: float) -> float:
    """Unix seconds, or ``<n><s|m|h|d|w>`` before ``now``. Raises InvalidRequest naming ``param``."""
    text = value.strip()
    if m := _RELATIVE.match(text):
        return now - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        at = float(text)
    except ValueError:
        raise InvalidRequest(
            f"Invalid `{param}`: expected unix seconds or a duration before now like `7d`, `24h`, `30m`.",
            param=param, code="invalid_value",
        ) from None
    if not 0 <= at < 1e11:
        raise InvalidRequest(f"Invalid `{param}`: out of range.", param=param, code="invalid_value")
    return at


class UsageQuery:
    __slots__ = ("by", "fmt", "key", "since", "until")

    def __init__(self, since: float, until: float, by: list[Group], key: str | None, fmt: str) -> None:
        self.since, self.until, self.by, self.key, self.fmt = since, until, by, key, fmt


def parse_query(params: Mapping[str, str], *, now: float | None = None) -> UsageQuery:
    now = time.time() if now is None else now
    since = parse_time(params["since"], "since", now) if params.get("since") else 0.0
    # Rows are stamped when their request ends: "until now" includes the last second.
    until = parse_time(params["until"], "until", now) if params.get("until") else now + 1.0
    if until < since:
        raise InvalidRequest("`until` is before `since`.", param="until", code="invalid_value")
    by: list[Group] = []
    for part in (params.get("by") or "").split(","):
        name = part.strip()
        if not name:
            continue
        group = next((g for g in GROUPS if g == name), None)
        if group is None:
            raise InvalidRequest(f"Invalid `by`: {name!r}; group by any of {', '.join(GROUPS)}.", param="by", code="invalid_value")
        if group not in by:
            by.append(group)
    fmt = params.get("format") or "json"
    if fmt not in ("json", "csv"):
        raise InvalidRequest("Invalid `format`: json or csv.", param="format", code="invalid_value")
    key = params.get("key") or None
    return UsageQuery(since, until, by, key, fmt)


def _with_usd(row: dict[str, Any]) -> dict[str, Any]:
    micro = row.get("cost_micro_usd")
    return {**row, "cost_usd": None if micro is None else micro / 1_000_000}


async def report(store: LedgerStore, query: UsageQuery) -> dict[str, Any]:
    """The JSON answer: the totals over the range, and each group's (with ``by``)."""
    totals = (await store.usage(query.since, query.until, [], key=query.key))[0]
    groups = await store.usage(query.since, query.until, query.by, key=query.key) if query.by else []
    return {
        "object": "usage", "since": query.since, "until": query.until, "by": query.by, "key": query.key,
        "totals": _with_usd(totals), "data": [_with_usd(row) for row in groups],
    }


def to_csv(answer: dict[str, Any]) -> str:
    by: list[str] = answer["by"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*by, *_METRICS])
    rows = answer["data"] if by else [answer["totals"]]
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row[c] for c in (*by, *_METRICS)])
    return out.getvalue()
