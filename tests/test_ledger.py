"""The usage ledger: rows and their exact cost, the store and the writer, against a real SQLite
file in tmp_path and a real PostgreSQL (tests/postgres_server.py), nothing mocked.

Outages are real too: PostgreSQL is stopped mid-load and started again; SQLite is "down"
while another connection holds its write lock past the store's busy timeout.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from pixelgate.core.prices import Price
from pixelgate.core.record import RequestRecord
from pixelgate.core.usage import InputTokensDetails, OutputTokensDetails, Usage
from pixelgate.proxy.ledger import (
    UNPRICED,
    Audit,
    GatewayKey,
    KeyChanged,
    LedgerRow,
    LedgerStore,
    LedgerUnavailable,
    LedgerWriter,
    SpoolInUse,
    cost_micro_usd,
    migrate,
    row_from_record,
)
from pixelgate.proxy.ledger.schema import ledger, metadata
from pixelgate.proxy.ledger.spool import Spool
from pixelgate.proxy.sqlite_writer import rows_per_statement
from tests.postgres_server import PostgresProcess
from tests.procs import free_port

# Midnight UTC, 2023-11-15.
DAY1 = 1_700_006_400.0
DAY2 = DAY1 + 86_400
DAY3 = DAY2 + 86_400


def make_row(n: int | str, **fields: Any) -> LedgerRow:
    values: dict[str, Any] = {
        "at": DAY1 + 1, "request_id": f"req_{n}", "key_id": "key_alice", "key_name": "alice", "operation": "generation",
        "endpoint": "/v1/images/generations", "model": "gpt-image-1.5", "provider": "up", "upstream_model": "gpt-image-1.5",
        "status": 200, "error_type": None, "stream": False, "images": 1, "partials": 0, "input_text_tokens": 10,
        "input_image_tokens": 0, "output_text_tokens": 0, "output_image_tokens": 100, "cost_micro_usd": 40_000,
        "price": "gpt-image-1.5", "duration_s": 1.5, "upstream_headers_s": 0.2, "first_partial_s": None, "completed_s": 1.4,
        "bytes_in": 100, "bytes_out": 2_000, "attempts": 1, "job_id": None, "idempotency_key": None, "replayed": False,
        "prompt": None,
    }
    return LedgerRow(**(values | fields))


class Events:
    """on_event, counted."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, event: str, rows: int) -> None:
        self.counts[event] += rows


async def until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        await asyncio.sleep(0.02)


async def counts(url: str) -> tuple[int, int]:
    """Rows in the ledger, and distinct request ids, through a connection of the test's own."""
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(sa.text("SELECT count(*), count(DISTINCT request_id) FROM ledger"))
            total, distinct = result.one()
    finally:
        await engine.dispose()
    return int(total), int(distinct)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: a file in a folder that does not exist yet, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'data' / 'ledger.db'}"
    # conftest's: a database of this test's own in the session's cluster (tests/postgres_server.py).
    database: str = request.getfixturevalue("postgres_database")
    return database


@pytest.fixture
async def store(url: str) -> AsyncIterator[LedgerStore]:
    ledger_store = LedgerStore(url)
    await ledger_store.start()
    yield ledger_store
    await ledger_store.close()


# Rows and their cost.


def record(**fields: Any) -> RequestRecord:
    values: dict[str, Any] = {"request_id": "req_1", "endpoint": "/v1/images/generations", "stream": True, "status": 200,
                              "provider": "up", "model": "gpt-image-1.5", "upstream_model": "gpt-image-1-up", "attempts": 2,
                              "duration_s": 3.25, "upstream_headers_s": 0.5, "first_partial_s": 1.0, "completed_s": 3.0,
                              "images": 1, "partials": 2, "bytes_in": 321, "bytes_out": 654_321, "key": "alice",
                              "idempotency_key": "abc123", "replayed": True, "job_id": "job_1", "operation": "edit"}
    return RequestRecord(**(values | fields))


def cost(price: Price | None, **fields: Any) -> int | None:
    return row_from_record(record(**fields), at=0.0, key_id=None, price=price, price_name="p", prompt=None).cost_micro_usd


def test_row_copies_the_record() -> None:
    usage = Usage(input_tokens=60, output_tokens=1010,
                  input_tokens_details=InputTokensDetails(text_tokens=40, image_tokens=20),
                  output_tokens_details=OutputTokensDetails(text_tokens=10, image_tokens=1000))
    row = row_from_record(record(usage=usage, error_type=None), at=1234.5, key_id="key_1", price=Price(per_image=0.04),
                          price_name="gpt-image-1.5", prompt="a lighthouse")
    assert row == LedgerRow(
        at=1234.5, request_id="req_1", key_id="key_1", key_name="alice", operation="edit", endpoint="/v1/images/generations",
        model="gpt-image-1.5", provider="up", upstream_model="gpt-image-1-up", status=200, error_type=None, stream=True,
        images=1, partials=2, input_text_tokens=40, input_image_tokens=20, output_text_tokens=10, output_image_tokens=1000,
        cost_micro_usd=40_000, price="gpt-image-1.5", duration_s=3.25, upstream_headers_s=0.5, first_partial_s=1.0,
        completed_s=3.0, bytes_in=321, bytes_out=654_321, attempts=2, job_id="job_1", idempotency_key="abc123", replayed=True,
        prompt="a lighthouse",
    )
    # The spool's format: a row survives it exactly.
    assert msgspec.json.decode(msgspec.json.encode(row), type=LedgerRow) == row


@pytest.mark.parametrize(
    ("price", "fields", "micro"),
    [
        # A flat price per image, times images.
        (Price(per_image=0.04), {"images": 3}, 120_000),
        # 0.1 × 3 is 0.30000000000000004 in floats; exactly 300000 micro-dollars here.
        (Price(per_image=0.1), {"images": 3}, 300_000),
        # Without details, input is text and output is image: 1234 × 5 + 4321 × 40 micro-dollars.
        (Price(input_text=5.0, output_image=40.0), {"images": 0, "usage": Usage(input_tokens=1234, output_tokens=4321)}, 179_010),
        # Each direction and modality at its own price, plus the image price.
        (Price(input_text=5, input_image=10, output_text=1, output_image=40, per_image=0.01),
         {"usage": Usage(input_tokens_details=InputTokensDetails(text_tokens=100, image_tokens=50),
                         output_tokens_details=OutputTokensDetails(text_tokens=7, image_tokens=1000))},
         100 * 5 + 50 * 10 + 7 * 1 + 1000 * 40 + 10_000),
        # Half a micro-dollar rounds up (not to even: Python's round(2.5) is 2) ...
        (Price(input_text=2.5), {"images": 0, "usage": Usage(input_tokens=1)}, 3),
        (Price(input_text=0.5), {"images": 0, "usage": Usage(input_tokens=1)}, 1),
        # ... and less than half down.
        (Price(input_text=0.25), {"images": 0, "usage": Usage(input_tokens=1)}, 0),
        (Price(input_text=0.75), {"images": 0, "usage": Usage(input_tokens=3)}, 2),
        # 0.0001245 USD is 124.5 micro-dollars: 125. In floats it is 124.49999999999999 (so 124).
        (Price(per_image=0.0001245), {"images": 1}, 125),
        # Rounded once per row, not per term: 3 × 0.5 + 3 × 0.5 is 3, not 2 + 2.
        (Price(input_text=0.5, output_image=0.5), {"images": 0, "usage": Usage(input_tokens=3, output_tokens=3)}, 3),
        # A priced request that cost nothing is 0 (not unpriced).
        (Price(), {"usage": Usage(input_tokens=10, output_tokens=10)}, 0),
        # A million tokens at a million-token price is that price, exactly.
        (Price(output_image=40.0), {"images": 0, "usage": Usage(output_tokens=1_000_000)}, 40_000_000),
    ],
)
def test_micro_dollars_are_exact(price: Price, fields: dict[str, Any], micro: int) -> None:
    assert cost(price, **fields) == micro


def test_integer_cost_equals_the_exact_fraction() -> None:
    """The integer arithmetic against the definition, in Fractions of the prices as written, on
    prices of up to nine decimals (and tiny, huge and exponent-written ones) and large counts."""
    rng = random.Random(20261203)

    def a_price() -> float:
        shape = rng.random()
        if shape < 0.1:
            return rng.choice([0.0, 1e-9, 2.5e-07, 1e12, 123456789.0, 0.1, 0.3])
        return round(rng.uniform(0, 100), rng.randint(0, 9))

    def half_up(x: Fraction) -> int:
        return math.floor(x + Fraction(1, 2))

    for _ in range(2_000):
        rates = [a_price() for _ in range(5)]
        price = Price(per_image=rates[0], input_text=rates[1], input_image=rates[2], output_text=rates[3], output_image=rates[4])
        images = rng.randint(0, 10)
        tokens = {(d, m): rng.choice([0, 1, rng.randint(0, 10**7)]) for d in ("input", "output") for m in ("text", "image")}
        exact = images * Fraction(Decimal(repr(rates[0]))) * 1_000_000 + sum(
            tokens[key] * Fraction(Decimal(repr(rate)))
            for key, rate in zip([("input", "text"), ("input", "image"), ("output", "text"), ("output", "image")], rates[1:], strict=True)
        )
        assert cost_micro_usd(price, images, tokens) == half_up(exact), (price, images, tokens)


def test_unpriced_is_none_never_zero() -> None:
    row = row_from_record(record(usage=Usage(input_tokens=10, output_tokens=10)), at=0.0, key_id=None, price=None,
                          price_name="gpt-image-1.5", prompt=None)
    assert row.cost_micro_usd is None
    assert row.price == UNPRICED == "unpriced"
    assert row.input_text_tokens == 10 and row.output_image_tokens == 10


def test_price_name_defaults_to_the_public_model() -> None:
    row = row_from_record(record(), at=0.0, key_id=None, price=Price(per_image=0.04), price_name=None, prompt=None)
    assert row.price == "gpt-image-1.5"
    # No usage: every token count is 0.
    assert (row.input_text_tokens, row.input_image_tokens, row.output_text_tokens, row.output_image_tokens) == (0, 0, 0, 0)
    with pytest.raises(ValueError, match="name"):
        row_from_record(record(model=None), at=0.0, key_id=None, price=Price(per_image=0.04), price_name=None, prompt=None)
    with pytest.raises(ValueError, match="finite"):
        cost(Price(per_image=float("inf")))


# The store.


async def test_usage_groups_and_time_ranges(store: LedgerStore) -> None:
    await store.insert([
        make_row(1, at=DAY1 + 10, images=1, cost_micro_usd=40_000),
        make_row(2, at=DAY1 + 20, model="other-model", provider="up2", status=500, error_type="upstream_error", images=0,
                 partials=3, cost_micro_usd=None, price=UNPRICED),
        make_row(3, at=DAY2 + 10, key_name="bob", key_id="key_bob", operation="edit", images=2, cost_micro_usd=80_000,
                 input_image_tokens=500),
        make_row(4, at=DAY2 + 20, key_name=None, key_id=None, status=429, images=0, cost_micro_usd=0),
        # The next day: outside [DAY1, DAY3).
        make_row(5, at=DAY3, cost_micro_usd=1_000),
    ])
    by_key = await store.usage(DAY1, DAY3, ["key"])
    assert [g["key"] for g in by_key] == [None, "alice", "bob"]
    none, alice, bob = by_key
    assert none == {"key": None, "requests": 1, "errors": 1, "images": 0, "partials": 0, "input_text_tokens": 10,
                         "input_image_tokens": 0, "output_text_tokens": 0, "output_image_tokens": 100, "cost_micro_usd": 0,
                         "unpriced": 0}
    assert alice == {"key": "alice", "requests": 2, "errors": 1, "images": 1, "partials": 3, "input_text_tokens": 20,
                     "input_image_tokens": 0, "output_text_tokens": 0, "output_image_tokens": 200, "cost_micro_usd": 40_000,
                     "unpriced": 1}
    assert bob["requests"] == 1 and bob["cost_micro_usd"] == 80_000 and bob["input_image_tokens"] == 500

    by_model_day = await store.usage(DAY1, DAY3, ["model", "day"])
    assert [(g["model"], g["day"], g["requests"]) for g in by_model_day] == [
        ("gpt-image-1.5", "2023-11-15", 1), ("gpt-image-1.5", "2023-11-16", 2), ("other-model", "2023-11-15", 1)]
    # A group with no priced request has no cost (None), not a cost of 0.
    assert by_model_day[2]["cost_micro_usd"] is None and by_model_day[2]["unpriced"] == 1

    by_provider_op = await store.usage(DAY1, DAY3, ["provider", "operation"])
    assert [(g["provider"], g["operation"], g["requests"]) for g in by_provider_op] == [
        ("up", "edit", 1), ("up", "generation", 2), ("up2", "generation", 1)]

    [total] = await store.usage(DAY1, DAY3, [])
    assert (total["requests"], total["errors"], total["images"], total["cost_micro_usd"], total["unpriced"]) == (4, 2, 3, 120_000, 1)

    # One key's own usage.
    assert [(g["day"], g["requests"]) for g in await store.usage(DAY1, DAY3, ["day"], key="alice")] == [("2023-11-15", 2)]
    assert await store.usage(DAY1, DAY3, ["day"], key="nobody") == []

    # since is inclusive, until exclusive.
    [first] = await store.usage(DAY1 + 10, DAY1 + 11, [])
    assert first["requests"] == 1
    [empty] = await store.usage(DAY1, DAY1 + 10, [])
    assert empty == {"requests": 0, "errors": 0, "images": 0, "partials": 0, "input_text_tokens": 0, "input_image_tokens": 0,
                     "output_text_tokens": 0, "output_image_tokens": 0, "cost_micro_usd": None, "unpriced": 0}

    with pytest.raises(ValueError, match="cannot group usage by 'week'"):
        await store.usage(DAY1, DAY3, ["week"])  # type: ignore[list-item]


async def test_spend(store: LedgerStore) -> None:
    await store.insert([
        make_row(1, at=DAY1, cost_micro_usd=40_000),
        make_row(2, at=DAY1 + 100, cost_micro_usd=None, price=UNPRICED),
        make_row(3, at=DAY2, cost_micro_usd=1_234_567_890_123),
        make_row(4, at=DAY2, key_name="bob", cost_micro_usd=5),
    ])
    assert await store.spend("alice", DAY1) == 1_234_567_930_123
    assert await store.spend("alice", DAY1 + 1) == 1_234_567_890_123
    assert await store.spend("bob", 0) == 5
    assert await store.spend("nobody", 0) == 0


async def test_duplicates_are_ignored(store: LedgerStore, url: str) -> None:
    rows = [make_row(n) for n in range(10)]
    await store.insert(rows)
    # Again, and within one batch twice, with other values: the first row stays.
    await store.insert([*rows, make_row(10), make_row(10, cost_micro_usd=1), make_row(3, cost_micro_usd=999)])
    assert await counts(url) == (11, 11)
    [total] = await store.usage(0, DAY3, [])
    assert total["cost_micro_usd"] == 11 * 40_000


async def test_a_batch_larger_than_one_statement_goes_in_whole(store: LedgerStore, url: str) -> None:
    # SQLite takes a batch as multi-row INSERTs of at most rows_per_statement rows each: a
    # batch of several, with a duplicate across two of them, is in whole and once.
    per = rows_per_statement(len(LedgerRow.__struct_fields__))
    n = 2 * per + 7
    rows = [make_row(i, images=i % 5, cost_micro_usd=i) for i in range(n)]
    await store.insert([*rows, make_row(per + 1, cost_micro_usd=10**9)])
    assert await counts(url) == (n, n)
    [total] = await store.usage(0, DAY3, [])
    assert (total["requests"], total["images"], total["cost_micro_usd"]) == (n, sum(i % 5 for i in range(n)), sum(range(n)))
    # Values come back as they went in, types and all (bools, floats, NULLs).
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            got = (await conn.execute(sa.select(ledger.c.request_id, ledger.c.stream, ledger.c.duration_s, ledger.c.first_partial_s)
                                      .where(ledger.c.request_id == f"req_{n - 1}"))).one()
    finally:
        await engine.dispose()
    assert tuple(got) == (f"req_{n - 1}", False, 1.5, None)


async def test_gateway_keys_and_versions(store: LedgerStore) -> None:
    alice = await store.put_key("key_a", "alice", "sha256:aa", models=["gpt-image-1.5"], limits={"rpm": 60, "budget_usd": 5.5},
                                cors_origins=["https://example.com"], webhook_url="https://hooks.example.com/x", now=100.0)
    assert alice.version == 1 and alice.created_at == alice.updated_at == 100.0
    bob = await store.put_key("key_b", "bob", "sha256:bb", now=101.0)
    assert bob.version == 2 and bob.models is None and bob.limits == {} and bob.cors_origins == [] and not bob.revoked
    assert await store.get_key("alice") == alice
    assert await store.get_key("nobody") is None

    revoked = await store.put_key("key_a", "alice", "sha256:aa", models=alice.models, limits=alice.limits,
                                  cors_origins=alice.cors_origins, revoked=True, now=200.0)
    assert (revoked.version, revoked.revoked, revoked.created_at, revoked.updated_at, revoked.webhook_url) == (3, True, 100.0, 200.0, None)
    assert [k.name for k in await store.list_keys()] == ["alice", "bob"]
    assert [(k.name, k.version) for k in await store.keys_since(0)] == [("bob", 2), ("alice", 3)]
    assert [k.name for k in await store.keys_since(2)] == ["alice"]
    assert await store.keys_since(3) == []

    with pytest.raises(ValueError, match="'bob' exists already"):
        await store.put_key("key_c", "bob", "sha256:cc")
    # A rename is a write like any other.
    renamed = await store.put_key("key_b", "robert", "sha256:bb")
    assert renamed.version == 4 and await store.get_key("bob") is None

    # Writers at once each get a version of their own, in commit order.
    written = await asyncio.gather(*(store.put_key(f"key_{n}", f"user{n}", "h") for n in range(20)))
    assert sorted(k.version for k in written) == list(range(5, 25))
    assert [k.version for k in await store.keys_since(4)] == list(range(5, 25))


async def test_a_key_write_is_compare_and_set_and_one_transaction_with_its_audit_entry(store: LedgerStore) -> None:
    alice = await store.put_key("key_a", "alice", "sha256:aa", audit=Audit("admin", "key.create", "alice", {"key_id": "key_a"}))
    assert [(e.action, e.target, e.detail) for e in await store.audit_log()] == [("key.create", "alice", {"key_id": "key_a"})]
    # At the version read: written, with its entry.
    first = await store.put_key("key_a", "alice", "sha256:aa", limits={"rpm": 1}, expected_version=alice.version,
                                audit=Audit("admin", "key.update", "alice"))
    assert first.version == alice.version + 1 and first.limits == {"rpm": 1}
    # At a version that is gone: nothing written, no entry.
    with pytest.raises(KeyChanged):
        await store.put_key("key_a", "alice", "sha256:aa", limits={"rpm": 2}, expected_version=alice.version,
                            audit=Audit("admin", "key.update", "alice", {"lost": True}))
    assert await store.get_key("alice") == first
    assert [e.action for e in await store.audit_log()] == ["key.update", "key.create"]
    # A write that fails (the name is another key's) leaves no entry either.
    await store.put_key("key_b", "bob", "sha256:bb")
    with pytest.raises(ValueError, match="exists already"):
        await store.put_key("key_c", "bob", "sha256:cc", audit=Audit("admin", "key.create", "bob"))
    assert [e.action for e in await store.audit_log()] == ["key.update", "key.create"]
    # Racing compare-and-set writes from one version: exactly one wins.
    outcomes = await asyncio.gather(*(
        store.put_key("key_a", "alice", "sha256:aa", limits={"rpm": n}, expected_version=first.version) for n in range(10)
    ), return_exceptions=True)
    winners = [o for o in outcomes if isinstance(o, GatewayKey)]
    assert len(winners) == 1 and sum(isinstance(o, KeyChanged) for o in outcomes) == 9
    assert await store.get_key("alice") == winners[0]


async def test_audit_log(store: LedgerStore) -> None:
    assert await store.audit_log() == []
    await store.audit("admin", "key.create", "alice", {"models": ["m"], "n": 1}, at=1.0)
    await store.audit("admin", "key.revoke", "alice", None, at=2.0)
    await store.audit("ops", "config.reload", None, {})
    entries = await store.audit_log()
    assert [(e.actor, e.action, e.target) for e in entries] == [("ops", "config.reload", None), ("admin", "key.revoke", "alice"),
                                                                 ("admin", "key.create", "alice")]
    assert entries[2].detail == {"models": ["m"], "n": 1} and entries[2].at == 1.0 and entries[1].detail is None
    assert [e.action for e in await store.audit_log(limit=1)] == ["config.reload"]
    assert await store.audit_log(limit=0) == []


async def test_migrations_are_versioned_and_idempotent(url: str) -> None:
    # Two stores starting at once on an empty database (workers, replicas): one migrates, the other waits.
    first, second = LedgerStore(url), LedgerStore(url)
    await asyncio.gather(first.start(), second.start())
    await first.insert([make_row(1)])
    await asyncio.gather(first.close(), second.close())
    # Once more on the migrated database: nothing to do, nothing lost.
    again = LedgerStore(url)
    await again.start()
    assert await again.schema_version() == migrate.head() == "0001"
    await again.close()
    assert await counts(url) == (1, 1)

    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            version = (await conn.execute(sa.text(f"SELECT version_num FROM {migrate.VERSION_TABLE}"))).scalars().all()
            # The migrated database is what schema.py describes (no drift between the two).
            drift = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c, opts={"version_table": migrate.VERSION_TABLE}), metadata))
    finally:
        await engine.dispose()
    assert version == ["0001"]
    assert drift == []


async def test_a_newer_schema_is_refused(url: str) -> None:
    store = LedgerStore(url)
    await store.start()
    await store.close()
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(f"UPDATE {migrate.VERSION_TABLE} SET version_num = '9999'"))
    finally:
        await engine.dispose()
    with pytest.raises(LedgerUnavailable, match=r"schema revision '9999'.*later release"):
        await LedgerStore(url).start()


async def test_sqlite_file_is_wal_under_a_created_folder(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "ledger.db"
    store = LedgerStore(f"sqlite:///{path}")
    await store.start()
    await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


async def test_unavailable_names_no_password(request: pytest.FixtureRequest) -> None:
    session_url: str = request.getfixturevalue("postgres_url")
    # Nothing listens there.
    refused = LedgerStore(f"postgresql+asyncpg://ledger:s3cret-pw@127.0.0.1:{free_port()}/ledger", timeout=2)
    with pytest.raises(LedgerUnavailable) as caught:
        await refused.start()
    message = str(caught.value)
    assert "s3cret-pw" not in message and "ledger:***@127.0.0.1" in message and "refused" in message.lower()
    # A real server and a role it does not know: an outage (an operator fixes it), not a bug.
    unknown = LedgerStore(session_url.replace("postgres@", "nobody_here:s3cret-pw@"), timeout=2)
    with pytest.raises(LedgerUnavailable) as caught:
        await unknown.ping()  # a store whose start() was never called starts on its first call
    assert "s3cret-pw" not in str(caught.value) and "nobody_here" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


# The writer.


@contextmanager
def sqlite_locked(url: str) -> Iterator[None]:
    """The SQLite file's write lock held by another connection: the store's writes wait out
    its busy timeout and fail, as when another process holds the lock too long."""
    conn = sqlite3.connect(url.split("///", 1)[1], isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("COMMIT")
        conn.close()


async def add_from_tasks(writer: LedgerWriter, total: int, tasks: int, prefix: str = "load", pause: float = 0.0) -> None:
    async def add(task: int) -> None:
        for n in range(task, total, tasks):
            writer.add(make_row(f"{prefix}_{n}", at=DAY1 + n))
            await asyncio.sleep(pause)

    await asyncio.gather(*(add(task) for task in range(tasks)))


async def test_writer_under_load(store: LedgerStore, url: str, tmp_path: Path) -> None:
    events = Events()
    writer = LedgerWriter(store, tmp_path / "spool" / "ledger.jsonl", batch_rows=200, interval=0.05, on_event=events)
    await writer.start()
    await add_from_tasks(writer, 5000, tasks=50)
    await writer.close()
    assert await counts(url) == (5000, 5000)
    assert events.counts == {"written": 5000}
    assert not os.path.exists(tmp_path / "spool" / "ledger.jsonl")


async def test_writer_flushes_after_interval(store: LedgerStore, tmp_path: Path) -> None:
    events = Events()
    writer = LedgerWriter(store, tmp_path / "spool.jsonl", batch_rows=500, interval=0.1, on_event=events)
    await writer.start()
    writer.add(make_row(1))
    # One row, far from a full batch: written once it has waited the interval.
    await until(lambda: events.counts["written"] == 1, timeout=5, what="the row's write")
    [total] = await store.usage(0, DAY3, [])
    assert total["requests"] == 1
    await writer.close()


class Outage:
    """A database the test can take away: PostgreSQL, a private cluster of the test's own,
    stopped and started again; SQLite, its write lock held by another connection."""

    def __init__(self, url: str) -> None:
        self.server = PostgresProcess() if url.startswith("postgresql") else None
        self.url = self.server.url if self.server is not None else url

    @asynccontextmanager
    async def down(self) -> AsyncIterator[None]:
        """Unavailable for writes inside the block, back after it."""
        if self.server is None:
            with sqlite_locked(self.url):
                yield
            return
        await asyncio.to_thread(self.server.stop)
        try:
            yield
        finally:
            await asyncio.to_thread(self.server.start)

    def destroy(self) -> None:
        if self.server is not None:
            self.server.destroy()


@pytest.fixture
def outage(url: str) -> Iterator[Outage]:
    db = Outage(url)
    try:
        yield db
    finally:
        db.destroy()


async def test_outage_mid_load_spools_then_replays(outage: Outage, tmp_path: Path) -> None:
    """The database goes away during a load and comes back: every row ends up in it, once."""
    store = LedgerStore(outage.url, timeout=0.2)
    await store.start()
    events = Events()
    writer = LedgerWriter(store, tmp_path / "spool.jsonl", batch_rows=100, interval=0.02, retry_interval=0.05, on_event=events)
    await writer.start()
    try:
        load = asyncio.create_task(add_from_tasks(writer, 5000, tasks=20, pause=0.004))
        await until(lambda: events.counts["written"] >= 500, what="rows written before the outage")
        async with outage.down():
            await until(lambda: events.counts["spooled"] >= 500, what="rows spooled during the outage")
        await load
        await until(lambda: events.counts["replayed"] >= events.counts["spooled"] + events.counts["overflow"], timeout=15,
                    what="the spool's replay")
        await writer.close()
        assert await counts(outage.url) == (5000, 5000)
        # Every row went somewhere, and every spooled one came back.
        assert events.counts["written"] + events.counts["spooled"] + events.counts["overflow"] == 5000
        assert events.counts["replayed"] == events.counts["spooled"] + events.counts["overflow"]
        assert events.counts["rejected"] == events.counts["lost"] == 0
        assert not os.path.exists(tmp_path / "spool.jsonl") and not os.path.exists(tmp_path / "spool.jsonl.replay")
    finally:
        await writer.close()
        await store.close()


async def test_close_while_down_spools_everything_and_the_next_start_replays(outage: Outage, tmp_path: Path) -> None:
    spool = tmp_path / "spool.jsonl"
    store = LedgerStore(outage.url, timeout=0.2)
    await store.start()
    events = Events()
    writer = LedgerWriter(store, spool, batch_rows=100, interval=10.0, retry_interval=0.05, on_event=events)
    await writer.start()
    async with outage.down():
        await add_from_tasks(writer, 1000, tasks=10)
        await writer.close()  # SIGTERM while the database is down
        assert events.counts == {"spooled": 1000}
        # In the spool, or in its replay file: close() tries a replay when the database
        # answers (a locked SQLite file still answers reads), and it stops at the first insert.
        left = [p for p in (spool, spool.with_name(spool.name + ".replay")) if p.exists()]
        assert sum(len(p.read_bytes().splitlines()) for p in left) == 1000
        # A late row, after close(): straight to the spool, not lost.
        writer.add(make_row("late"))
        await store.close()

    # The next process.
    store = LedgerStore(outage.url)
    events = Events()
    writer = LedgerWriter(store, spool, retry_interval=0.05, on_event=events)
    await writer.start()
    await until(lambda: events.counts["replayed"] == 1001, what="the leftovers' replay")
    await writer.close()
    await store.close()
    assert await counts(outage.url) == (1001, 1001)
    assert not spool.exists()


async def test_close_replays_the_spool_when_the_database_is_back(outage: Outage, tmp_path: Path) -> None:
    # Rows spooled in an outage; the database returns, but the writer's next retry is far
    # off: close() itself replays them, so a process that never starts again leaves none behind.
    spool = tmp_path / "spool.jsonl"
    store = LedgerStore(outage.url, timeout=0.2)
    await store.start()
    events = Events()
    writer = LedgerWriter(store, spool, batch_rows=100, interval=0.02, retry_interval=60.0, on_event=events)
    await writer.start()
    async with outage.down():
        await add_from_tasks(writer, 1000, tasks=10)
        await until(lambda: events.counts["spooled"] == 1000, what="the rows spooled")
    await writer.close()
    # Each row once in the ledger. ``replayed`` counts rows sent from the spool: a
    # replay that close() interrupted after a batch went in sends that batch again
    # (the unique request_id skips it), so it may count more than were spooled.
    assert await counts(outage.url) == (1000, 1000)
    assert events.counts["spooled"] == 1000 and events.counts["replayed"] >= 1000
    assert set(events.counts) == {"spooled", "replayed"}
    assert not spool.exists() and not spool.with_name(spool.name + ".replay").exists()
    await store.close()


# SQLite's writer process (proxy/sqlite_writer.py, proxy/ledger/sink.py).


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[LedgerStore]:
    ledger_store = LedgerStore(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}", timeout=0.5)
    await ledger_store.start()
    yield ledger_store
    await ledger_store.close()


def writer_pid(store: LedgerStore) -> int:
    sink = store._sink
    assert sink is not None and sink.pid is not None
    return sink.pid


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_sqlite_rows_are_inserted_by_a_process_of_their_own(sqlite_store: LedgerStore, tmp_path: Path) -> None:
    await sqlite_store.insert([make_row(1), make_row(2)])
    pid = writer_pid(sqlite_store)
    assert pid != os.getpid()
    assert "pixelgate.proxy.sqlite_writer" in Path(f"/proc/{pid}/cmdline").read_bytes().decode().replace("\0", " ")
    # Committed when insert returns: another connection sees them at once.
    assert await counts(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}") == (2, 2)
    # Ctrl-C reaches a terminal's whole process group: the writer ignores it and goes on.
    os.kill(pid, signal.SIGINT)
    os.kill(pid, signal.SIGTERM)
    await sqlite_store.insert([make_row(3)])
    assert writer_pid(sqlite_store) == pid
    # Closing the store ends it.
    await sqlite_store.close()
    await until(lambda: not running(pid), timeout=5, what="the writer process's exit")


async def test_a_killed_writer_process_is_an_outage_and_the_next_batch_gets_a_new_one(sqlite_store: LedgerStore, tmp_path: Path) -> None:
    await sqlite_store.insert([make_row(1)])
    first = writer_pid(sqlite_store)
    # Killed just before a batch (no await in between: the sink cannot know yet): that batch
    # finds it gone, an outage the ledger writer spools for.
    os.kill(first, signal.SIGKILL)
    with pytest.raises(LedgerUnavailable, match="writer process ended"):
        await sqlite_store.insert([make_row(2)])
    # The next batch starts another; a batch tried again is skipped where it went in already.
    await sqlite_store.insert([make_row(2), make_row(3)])
    second = writer_pid(sqlite_store)
    assert second != first and not running(first)
    # One that died between batches, noticed: replaced before the next batch, which goes in.
    os.kill(second, signal.SIGKILL)
    await until(lambda: sqlite_store._sink is not None and sqlite_store._sink.pid is None, timeout=5,
                what="the event loop noticing the exit")
    await sqlite_store.insert([make_row(4)])
    assert writer_pid(sqlite_store) not in (first, second)
    assert await counts(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}") == (4, 4)


async def test_a_writer_process_killed_under_load_loses_no_row(sqlite_store: LedgerStore, tmp_path: Path) -> None:
    events = Events()
    writer = LedgerWriter(sqlite_store, tmp_path / "spool.jsonl", batch_rows=50, interval=0.01, retry_interval=0.05,
                          on_event=events)
    await writer.start()
    load = asyncio.create_task(add_from_tasks(writer, 3000, tasks=10, pause=0.002))
    killed = []
    for _ in range(3):
        await until(lambda: events.counts["written"] >= 500 * (len(killed) + 1), what="rows written")
        killed.append(writer_pid(sqlite_store))
        os.kill(killed[-1], signal.SIGKILL)
    await load
    await writer.close()
    # Each kill cost at most the batch in flight, which was spooled and replayed.
    assert await counts(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}") == (3000, 3000)
    assert events.counts["rejected"] == events.counts["lost"] == 0
    assert not any(running(pid) for pid in killed)


def tear(path: Path) -> None:
    """What a crash in the middle of an append leaves: the start of a line."""
    with open(path, "ab") as f:
        f.write(b'{"at": 1700006401.0, "request_id": "req_torn", "key_')


async def test_a_previous_process_leftovers_are_replayed_once(store: LedgerStore, url: str, tmp_path: Path) -> None:
    path = tmp_path / "spool.jsonl"
    spool = Spool(path)
    await store.insert([make_row(n) for n in range(100)])
    # A replay the previous process did not finish (its first 100 rows are in already),
    # and a spool it appended to after, whose last append a crash tore.
    spool.append([make_row(n) for n in range(300)])
    spool.take()
    spool.append([make_row(n) for n in range(300, 400)])
    tear(path)
    # Which must not swallow the next line appended after it.
    spool.append([make_row(400)])

    events = Events()
    writer = LedgerWriter(store, path, batch_rows=64, retry_interval=0.05, on_event=events)
    await writer.start()
    await until(lambda: events.counts["replayed"] == 401 and not path.exists() and not os.path.exists(spool.replay_path),
                what="the leftovers' replay")
    await writer.close()
    assert await counts(url) == (401, 401)
    assert events.counts == {"replayed": 401, "corrupt": 1}


async def test_a_full_queue_overflows_to_the_spool(store: LedgerStore, url: str, tmp_path: Path) -> None:
    events = Events()
    writer = LedgerWriter(store, tmp_path / "spool.jsonl", batch_rows=10, max_queue=10, retry_interval=0.05, on_event=events)
    await writer.start()
    # No await between the adds: the flusher cannot take any, so the queue is full after 10.
    for n in range(1000):
        writer.add(make_row(n))
    await until(lambda: events.counts["replayed"] == 990, what="the overflow's replay")
    await writer.close()
    assert events.counts == {"written": 10, "overflow": 990, "replayed": 990}
    assert await counts(url) == (1000, 1000)


async def test_a_row_the_database_refuses_is_set_aside(store: LedgerStore, url: str, tmp_path: Path) -> None:
    events = Events()
    path = tmp_path / "spool.jsonl"
    writer = LedgerWriter(store, path, batch_rows=50, interval=0.01, on_event=events)
    await writer.start()
    for n in range(50):
        # Beyond BIGINT: no database stores it; the other 49 rows must not suffer for it.
        writer.add(make_row(n, bytes_in=2**70) if n == 17 else make_row(n))
    await writer.close()
    assert events.counts == {"written": 49, "rejected": 1}
    assert await counts(url) == (49, 49)
    [rejected] = Path(f"{path}.rejected").read_bytes().splitlines()
    assert msgspec.json.decode(rejected, type=LedgerRow).request_id == "req_17"


async def test_one_spool_per_process(store: LedgerStore, tmp_path: Path) -> None:
    first = LedgerWriter(store, tmp_path / "spool.jsonl")
    await first.start()
    with pytest.raises(SpoolInUse):
        await LedgerWriter(store, tmp_path / "spool.jsonl").start()
    await first.close()
    # Free again once closed.
    again = LedgerWriter(store, tmp_path / "spool.jsonl")
    await again.start()
    await again.close()
