"""``pixelgate keys create|list|revoke|rotate`` and ``pixelgate usage``: on the ledger database directly.

The database is the one the gateway's config names (``--config``, else
``$PIXELGATE_CONFIG``, else the zero config: ``ledger.url``, or the embedded
SQLite file in ``$PIXELGATE_DATA_DIR``), so the running gateways pick the
changes up within ``admin.key_poll_interval`` (``proxy.admin.poller``). Each
change is audited with the actor ``cli``. A new or rotated key's secret is
printed this once, on stdout; it is stored nowhere.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from pixelgate.core.errors import GatewayError
from pixelgate.proxy.access.config import Limits
from pixelgate.proxy.access.keys import parse_hash
from pixelgate.proxy.accounting import ledger_url
from pixelgate.proxy.admin.keys import CreateKey, KeyAdmin, key_view, validation_error
from pixelgate.proxy.admin.usage import parse_query, report, to_csv
from pixelgate.proxy.config import Config, ConfigError, load_config, zero_config
from pixelgate.proxy.ledger import LedgerStore, LedgerUnavailable

__all__ = ["add_commands", "run"]

ACTOR = "cli"


def add_commands(keys_sub: Any, sub: Any) -> None:
    """The key commands under ``pixelgate keys`` (``keys_sub``) and ``pixelgate usage`` (``sub``)."""
    def with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--config", help="the gateway's YAML config, for its ledger (default: $PIXELGATE_CONFIG, else zero-config)")
        return parser

    create = with_config(keys_sub.add_parser("create", help="create a gateway key in the ledger database; prints its secret once"))
    create.add_argument("name")
    create.add_argument("--models", action="append", help="model globs it may use, comma-separated or repeated (default: all)")
    create.add_argument("--budget-usd", type=float, help="spend limit per budget period (USD)")
    create.add_argument("--budget-period", choices=("day", "month"), default="day")
    create.add_argument("--requests-per-minute", type=int)
    create.add_argument("--images-per-minute", type=int)
    with_config(keys_sub.add_parser("list", help="the gateway keys (config and database); never a secret or hash")).add_argument(
        "--format", choices=("table", "json"), default="table")
    with_config(keys_sub.add_parser("revoke", help="revoke a database key")).add_argument("name")
    with_config(keys_sub.add_parser("rotate", help="give a database key a new secret (printed once); the old one stops working")).add_argument("name")
    usage = with_config(sub.add_parser("usage", help="usage from the ledger, totals or grouped"))
    usage.add_argument("--by", default="", help="comma-separated: key, model, provider, operation, day")
    usage.add_argument("--since", help="unix seconds or a duration before now (7d, 24h, 30m); default: all")
    usage.add_argument("--until", help="unix seconds or a duration before now; default: now")
    usage.add_argument("--key", help="only this key's usage")
    usage.add_argument("--format", choices=("table", "json", "csv"), default="table")


def _load(args: argparse.Namespace) -> Config:
    path = args.config or os.environ.get("PIXELGATE_CONFIG")
    return load_config(path) if path else zero_config()


def run(args: argparse.Namespace) -> int:
    try:
        config = _load(args)
    except ConfigError as exc:
        print(f"pixelgate: config error: {exc}", file=sys.stderr)
        return 2
    if not config.ledger.enabled:
        print("pixelgate: the ledger is disabled in this config (ledger.enabled: false): no keys or usage are kept", file=sys.stderr)
        return 2
    command = args.keys_command if args.command == "keys" else "usage"
    action: Callable[[Config, LedgerStore, argparse.Namespace], Awaitable[int]] = _COMMANDS[command]

    async def go() -> int:
        store = LedgerStore(ledger_url(config))
        try:
            return await action(config, store, args)
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except GatewayError as exc:
        print(f"pixelgate: {exc.message}", file=sys.stderr)
        return 1
    except LedgerUnavailable as exc:
        print(f"pixelgate: {exc}", file=sys.stderr)
        return 1


def _admin(config: Config, store: LedgerStore) -> KeyAdmin:
    names = {k.name for k in config.access.keys}
    return KeyAdmin(store, ACTOR, is_config_key=names.__contains__)


def _print_key(view: dict[str, Any], secret: str | None = None) -> None:
    if secret is not None:
        print(f"key:  {secret}")
        print("      (shown this once: give it to the client; only its hash is stored)")
    for field in ("name", "id", "models", "limits", "cors_origins", "revoked"):
        value = view[field]
        print(f"{field}: {json.dumps(value) if not isinstance(value, str) else value}")


async def _create(config: Config, store: LedgerStore, args: argparse.Namespace) -> int:
    models = [m.strip() for group in args.models for m in group.split(",") if m.strip()] if args.models else None
    limits = None
    if any(v is not None for v in (args.budget_usd, args.requests_per_minute, args.images_per_minute)):
        limits = Limits(requests_per_minute=args.requests_per_minute, images_per_minute=args.images_per_minute,
                        budget_usd=args.budget_usd, budget_period=args.budget_period)
    try:
        spec = msgspec.convert({"name": args.name, "models": models, "limits": None if limits is None else msgspec.to_builtins(limits)},
                               CreateKey)
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from None
    key, secret = await _admin(config, store).create(spec)
    _print_key(key_view(key), secret)
    return 0


async def _list(config: Config, store: LedgerStore, args: argparse.Namespace) -> int:
    names = {k.name for k in config.access.keys}
    rows: list[dict[str, Any]] = [
        {"name": k.name, "id": parse_hash(k.hash).key_id, "source": "config", "models": k.models, "limits": None, "revoked": k.revoked}
        for k in config.access.keys
    ]
    rows += [key_view(k) for k in await store.list_keys() if k.name not in names]
    rows.sort(key=lambda row: row["name"])
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    table = [("NAME", "ID", "SOURCE", "STATE", "MODELS", "LIMITS")]
    for row in rows:
        limits = ", ".join(f"{k}={v}" for k, v in (row["limits"] or {}).items())
        table.append((row["name"], row["id"] or "-", row["source"], "revoked" if row["revoked"] else "active",
                      ",".join(row["models"]) if row["models"] else "*", limits or "default"))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    return 0


async def _revoke(config: Config, store: LedgerStore, args: argparse.Namespace) -> int:
    key = await _admin(config, store).revoke(args.name)
    print(f"revoked: {key.name} (id {key.id}); the gateways refuse it within admin.key_poll_interval")
    return 0


async def _rotate(config: Config, store: LedgerStore, args: argparse.Namespace) -> int:
    key, secret = await _admin(config, store).rotate(args.name)
    _print_key(key_view(key), secret)
    return 0


async def _usage(config: Config, store: LedgerStore, args: argparse.Namespace) -> int:
    params = {name: value for name, value in (("since", args.since), ("until", args.until), ("by", args.by), ("key", args.key))
              if value}
    query = parse_query(params)
    answer = await report(store, query)
    if args.format == "json":
        print(json.dumps(answer, indent=2))
    elif args.format == "csv":
        sys.stdout.write(to_csv(answer))
    else:
        lines = [line.split(",") for line in to_csv(answer).splitlines()]
        widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
        for line in lines:
            print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    return 0


_COMMANDS: dict[str, Callable[[Config, LedgerStore, argparse.Namespace], Awaitable[int]]] = {
    "create": _create, "list": _list, "revoke": _revoke, "rotate": _rotate, "usage": _usage,
}
