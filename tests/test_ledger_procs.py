"""The usage ledger across process ends: SIGTERM, SIGKILL, a database that goes away, a restart with a spent budget.

Each test runs ``pixelgate serve`` as a process (the demo provider in-process,
so the load is the gateway's own) and reads the ledger afterwards with its own
store. Every answered request carries ``x-request-id``; the ledger must have a
row for each (SIGTERM: all of them; SIGKILL: all but those answered within the
last flush interval before the kill).
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from pixelgate.proxy.ledger.schema import ledger
from tests.access_util import bearer, key_entry, new_key
from tests.postgres_server import PostgresProcess
from tests.test_jobs_restart import _gateway

FLUSH = 0.5
BODY = {"model": "demo-image", "prompt": "x", "size": "16x16"}


def _config(ledger_url: str, keys: list[dict[str, Any]] | None = None, **ledger: Any) -> dict[str, Any]:
    return {
        "server": {"shutdown_timeout": 5, "drain_delay": 0},
        "providers": {"demo": {"adapter": "demo"}},
        "models": {"demo-image": [{"provider": "demo"}]},
        "prices": {"demo-image": {"per_image": 0.011}},
        "access": {"keys": keys or []},
        "ledger": {"url": ledger_url, "flush_interval": FLUSH, **ledger},
    }


async def _ids(url: str) -> list[str]:
    """Every request id in the ledger, read with an engine of the test's own."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(sa.select(ledger.c.request_id))).scalars())
    finally:
        await engine.dispose()


async def _load(base: str, until: asyncio.Event, answered: list[tuple[str, float]], headers: dict[str, str] | None = None,
                clients: int = 16, limit: int = 3000) -> None:
    """Requests from ``clients`` loops until ``until`` is set (or ``limit`` in all); each answer's id and time."""
    connector = aiohttp.TCPConnector(limit=0)
    sent = 0
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        async def loop() -> None:
            nonlocal sent
            while not until.is_set() and sent < limit:
                sent += 1
                try:
                    async with session.post(f"{base}/v1/images/generations", json=BODY, headers=headers or {}) as resp:
                        await resp.read()
                        answered.append((resp.headers["x-request-id"], time.monotonic()))
                except (TimeoutError, aiohttp.ClientError):
                    await asyncio.sleep(0.05)  # the gateway is going away

        await asyncio.gather(*(loop() for _ in range(clients)))


def _children(pid: int) -> list[int]:
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its new parent, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def _under_load(config: dict[str, Any], tmp_path: Path, sig: int, after: float = 1.5) -> tuple[list[tuple[str, float]], float]:
    answered: list[tuple[str, float]] = []
    stop = asyncio.Event()
    with _gateway(config, tmp_path, f"gw-{sig}") as (base, proc):
        load = asyncio.create_task(_load(base, stop, answered))
        await asyncio.sleep(after)
        # The SQLite writer process (proxy/sqlite_writer.py), started by the first batch.
        writers = _children(proc.pid)
        assert len(writers) == 1 and "sqlite_writer" in Path(f"/proc/{writers[0]}/cmdline").read_text()
        killed_at = time.monotonic()
        proc.send_signal(sig)
        await asyncio.to_thread(proc.wait, 30)
        stop.set()
        await load
    # It ends with its gateway, however that ended: its pipe closes.
    deadline = time.monotonic() + 10
    while _alive(writers[0]):
        assert time.monotonic() < deadline, "the SQLite writer process outlived its gateway"
        await asyncio.sleep(0.05)
    return answered, killed_at


async def test_sigterm_under_load_loses_no_row(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.sqlite3'}"
    answered, _ = await _under_load(_config(url), tmp_path, signal.SIGTERM)
    ids = await _ids(url)
    assert len(answered) > 100
    assert len(ids) == len(set(ids)), "a row was written twice"
    assert {rid for rid, _ in answered} <= set(ids)


async def test_sigkill_loses_at_most_the_unflushed_window(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.sqlite3'}"
    answered, killed_at = await _under_load(_config(url), tmp_path, signal.SIGKILL)
    ids = set(await _ids(url))
    lost = [(rid, at) for rid, at in answered if rid not in ids]
    # Only rows still in the queue may be lost: answered within a flush interval of the kill.
    oldest = max((killed_at - at for _, at in lost), default=0.0)
    print(f"SIGKILL: {len(answered)} answered, {len(lost)} without a row, oldest {oldest:.3f} s before the kill")
    assert oldest <= FLUSH + 0.25
    assert len(answered) - len(lost) > 100


async def test_a_database_down_mid_load_loses_nothing_after_replay(tmp_path: Path) -> None:
    db = PostgresProcess()
    try:
        url = db.url
        answered: list[tuple[str, float]] = []
        stop = asyncio.Event()
        config = _config(url, spool_dir=str(tmp_path / "spool"))
        with _gateway(config, tmp_path, "gw-db") as (base, _):
            load = asyncio.create_task(_load(base, stop, answered, clients=8))
            await asyncio.sleep(1.0)
            await asyncio.to_thread(db.stop)
            down = len(answered)
            await asyncio.sleep(2.0)
            assert len(answered) > down, "requests stopped while the ledger's database was down"
            await asyncio.to_thread(db.start)
            # The writer asks again every 2 s, then replays the spool.
            await asyncio.sleep(4.0)
            stop.set()
            await load
        ids = await _ids(url)
        assert len(ids) == len(set(ids))
        assert {rid for rid, _ in answered} <= set(ids)
    finally:
        db.destroy()


async def test_a_spent_budget_stays_spent_across_a_restart(tmp_path: Path) -> None:
    key = new_key()
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.sqlite3'}"
    # 0.011 USD an image: the third request is over the 0.02 budget.
    config = _config(url, [key_entry("alice", key, limits={"budget_usd": 0.02, "budget_period": "day"})])
    async with aiohttp.ClientSession() as session:
        with _gateway(config, tmp_path, "first") as (base, _):
            statuses: list[int] = []
            # A request's cost is charged after its last byte: one more may slip in before.
            while 429 not in statuses:
                assert len(statuses) < 6, statuses
                async with session.post(f"{base}/v1/images/generations", json=BODY, headers=bearer(key)) as resp:
                    statuses.append(resp.status)
            assert statuses[:2] == [200, 200]
        with _gateway(config, tmp_path, "second") as (base, _):
            async with session.post(f"{base}/v1/images/generations", json=BODY, headers=bearer(key)) as resp:
                body = await resp.json()
                assert resp.status == 429, body
                assert "budget" in body["error"]["message"]
