"""The job stores, each test against both: a real SQLite file in tmp_path and a real redis-server.

Nothing is mocked. Races are real: 20 concurrent calls on one store (on Redis, 20 connections),
and for SQLite several processes claiming on one file, as gateway workers do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from pixelgate.core.upload import InputImage
from pixelgate.proxy.access.config import RedisConfig
from pixelgate.proxy.access.redis_client import connect
from pixelgate.proxy.jobs.model import InputFile, Job, JobInput, JobStatus, new_job_id
from pixelgate.proxy.jobs.redis_store import RedisJobStore
from pixelgate.proxy.jobs.sqlite_store import SCHEMA_VERSION, SqliteJobStore
from pixelgate.proxy.jobs.store import JobStore, JobStoreUnavailable
from tests.procs import ROOT
from tests.redis_server import RedisProcess

replace = msgspec.structs.replace


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JobStore]:
    if request.param == "sqlite":
        # A folder that does not exist yet: the store creates it.
        sqlite_store = SqliteJobStore(str(tmp_path / "state" / "jobs.db"))
        await sqlite_store.start()
        yield sqlite_store
        await sqlite_store.close()
        return
    client = connect(RedisConfig(url=request.getfixturevalue("redis_url")))
    redis_store = RedisJobStore(client, request.getfixturevalue("redis_prefix"))
    await redis_store.start()
    yield redis_store
    await redis_store.close()  # and its client


def make_job(key: str | None = "alice", created_at: float = 1_700_000_000.0, **fields: Any) -> Job:
    """A new job as the submitter creates it: queued, no owner, lease 0."""
    return Job(
        id=new_job_id(),
        key=key,
        status=JobStatus.QUEUED,
        operation="generation",
        model="gpt-image-1.5",
        created_at=created_at,
        input=JobInput(operation="generation", body=b'{"prompt":"a lighthouse"}'),
        request_id="req_1",
        **fields,
    )


def finished(job: Job, status: JobStatus = JobStatus.COMPLETED, at: float = 1_700_000_100.0, **fields: Any) -> Job:
    return replace(job, status=status, finished_at=at, **fields)


async def owned(store: JobStore, key: str | None = "alice", owner: str = "a", lease_until: float = 100.0, **fields: Any) -> Job:
    """A job created and claimed by ``owner`` (at time 0)."""
    job = make_job(key, **fields)
    assert await store.create(job, None)
    claimed = await store.claim(job.id, owner, lease_until, now=0.0)
    assert claimed is not None
    return claimed


@contextlib.asynccontextmanager
async def sqlite_at(path: Path) -> AsyncIterator[SqliteJobStore]:
    # Closed whatever happens: an open store's thread would keep pytest from exiting.
    store = SqliteJobStore(str(path))
    await store.start()
    try:
        yield store
    finally:
        await store.close()


async def stored(store: JobStore, job_id: str) -> Job:
    job = await store.get(job_id)
    assert job is not None
    return job


async def test_create_and_get_round_trip_every_field(store: JobStore) -> None:
    everything = Job(
        id=new_job_id(),
        key="alice",
        status=JobStatus.IN_PROGRESS,
        operation="edit",
        model="gpt-image-1.5",
        created_at=1_700_000_000.123456,
        started_at=1_700_000_001.000001,
        input=JobInput(
            operation="edit",
            fields=(("prompt", "a cat in a hat"), ("n", "2"), ("prompt", "é ✓")),
            files=(
                InputFile(field="image", object_id="obj-1", image=InputImage(
                    path="/spool/a", size=1234, format="png", width=64, height=48, filename="cat.png", alpha=True)),
                InputFile(field="mask", object_id="obj-2", image=InputImage(
                    path="/spool/b", size=99, format="webp", width=64, height=48, filename="mask.webp")),
            ),
        ),
        request_id="req_7f3a",
        owner="proc-a",
        lease_until=1_700_000_030.987654,
        provider="fal",
        checkpoint=b"\x00\xff\x80handle\n",
        partial_images=2,
        cancel_requested=True,
        webhook_url="https://hooks.example.com/jobs",
        idempotency_key="ab" * 32,
    )
    failed = Job(
        id=new_job_id(),
        key=None,
        status=JobStatus.FAILED,
        operation="generation",
        model=None,
        created_at=1_700_000_002.5,
        finished_at=1_700_000_009.25,
        input=JobInput(operation="generation", body=b'{"prompt":"x","n":1}'),
        request_id="req_2",
        error_status=502,
        error=b'{"error":{"message":"upstream failed","type":"server_error","param":null,"code":null}}',
    )
    completed = finished(make_job(), result="obj-result")
    minimal = make_job(None)
    for job in (everything, failed, completed, minimal):
        assert await store.create(job, None)
    for job in (everything, failed, completed, minimal):
        got = await stored(store, job.id)
        assert got == job
    got = await stored(store, everything.id)
    assert got.status is JobStatus.IN_PROGRESS
    assert type(got.input.fields) is tuple and type(got.input.fields[0]) is tuple
    assert got.input.files[1] == everything.input.files[1]
    assert await store.get("imgjob_" + "0" * 32) is None


async def test_create_refuses_a_duplicate_id_and_a_final_job_without_finished_at(store: JobStore) -> None:
    job = make_job()
    assert await store.create(job, None)
    with pytest.raises(ValueError, match="exists"):
        await store.create(replace(job, key="bob"), None)
    with pytest.raises(ValueError, match="finished_at"):
        await store.create(replace(make_job(), status=JobStatus.COMPLETED), None)
    assert await store.list("bob", 10) == []


async def test_the_per_key_cap_refuses_atomically_under_concurrent_creates(store: JobStore) -> None:
    jobs = [make_job("alice", created_at=1_700_000_000.0 + i) for i in range(20)]
    results = await asyncio.gather(*(store.create(job, 3) for job in jobs))
    assert sum(results) == 3
    accepted = {job.id for job, ok in zip(jobs, results, strict=True) if ok}
    assert {job.id for job in await store.list("alice", 100)} == accepted
    # Each key has its own count; None counts as a key of its own.
    assert await store.create(make_job("bob"), 3)
    assert all(await asyncio.gather(*(store.create(make_job(None), 3) for _ in range(3))))
    assert not await store.create(make_job(None), 3)
    # A final job no longer counts.
    one = await store.claim(sorted(accepted)[0], "a", 100.0, now=0.0)
    assert one is not None
    assert await store.update(finished(one), "a")
    assert await store.create(make_job("alice"), 3)
    assert not await store.create(make_job("alice"), 3)
    # No cap: always.
    assert await store.create(make_job("alice"), None)
    counts = await store.count_by_status()
    assert counts == {
        JobStatus.QUEUED: 3 + 1 + 3 + 1,
        JobStatus.IN_PROGRESS: 0,
        JobStatus.COMPLETED: 1,
        JobStatus.FAILED: 0,
        JobStatus.CANCELLED: 0,
    }


async def test_list_is_newest_first_per_key_with_limit_and_before(store: JobStore) -> None:
    alice = [make_job("alice", created_at=1_700_000_000.0 + i) for i in range(5)]
    for job in (alice[2], alice[0], alice[4], alice[1], alice[3]):
        assert await store.create(job, None)
    bob = make_job("bob", created_at=1_700_000_002.5)
    nobody = make_job(None, created_at=1_700_000_001.5)
    assert await store.create(bob, None)
    assert await store.create(nobody, None)

    def ids(jobs: list[Job]) -> list[str]:
        return [job.id for job in jobs]

    newest_first = ids(alice[::-1])
    assert ids(await store.list("alice", 10)) == newest_first
    assert ids(await store.list("alice", 2)) == newest_first[:2]
    # before is exclusive: the next page starts below the last one seen.
    assert ids(await store.list("alice", 10, before=alice[3].created_at)) == ids([alice[2], alice[1], alice[0]])
    assert ids(await store.list("alice", 2, before=alice[3].created_at)) == ids([alice[2], alice[1]])
    assert await store.list("alice", 10, before=alice[0].created_at) == []
    assert await store.list("alice", 0) == []
    # A key sees only its own jobs; None is a key of its own.
    assert await store.list("bob", 10) == [bob]
    assert await store.list(None, 10) == [nobody]
    assert await store.list("carol", 10) == []
    assert (await store.list("alice", 1))[0] == alice[4]


async def test_claim_holds_while_the_lease_lasts(store: JobStore) -> None:
    job = make_job()
    assert await store.create(job, None)
    claimed = await store.claim(job.id, "a", lease_until=100.0, now=10.0)
    assert claimed == replace(job, owner="a", lease_until=100.0)
    assert await stored(store, job.id) == claimed
    # Another owner is refused while the lease holds (lease_until == now still holds).
    assert await store.claim(job.id, "b", lease_until=200.0, now=50.0) is None
    assert await store.claim(job.id, "b", lease_until=200.0, now=100.0) is None
    # The same owner claims again (a longer lease).
    again = await store.claim(job.id, "a", lease_until=150.0, now=60.0)
    assert again is not None and again.owner == "a" and again.lease_until == 150.0
    # After the lease ran out, another owner takes it over.
    taken = await store.claim(job.id, "b", lease_until=300.0, now=150.5)
    assert taken is not None and taken.owner == "b" and taken.lease_until == 300.0
    assert (await stored(store, job.id)).owner == "b"
    # A final job, or none at all, cannot be claimed.
    assert await store.update(finished(taken), "b")
    assert await store.claim(job.id, "b", lease_until=400.0, now=1000.0) is None
    assert await store.claim("imgjob_missing", "a", lease_until=400.0, now=0.0) is None


async def test_twenty_concurrent_claims_have_one_winner(store: JobStore) -> None:
    job = make_job()
    assert await store.create(job, None)
    owners = [f"proc-{i}" for i in range(20)]
    results = await asyncio.gather(*(store.claim(job.id, owner, 100.0, now=10.0) for owner in owners))
    winners = [result for result in results if result is not None]
    assert len(winners) == 1
    assert (await stored(store, job.id)).owner == winners[0].owner


_RACER = """
import asyncio, json, sys, time
from pixelgate.proxy.jobs.model import Job, JobInput, JobStatus, new_job_id
from pixelgate.proxy.jobs.sqlite_store import SqliteJobStore

async def main(path, owner, ids):
    store = SqliteJobStore(path)
    await store.start()
    print("ready", flush=True)
    # Everyone starts at the same instant (a time the parent sent once all were ready).
    await asyncio.sleep(float(sys.stdin.readline()) - time.time())
    claimed = [job_id for job_id in ids if await store.claim(job_id, owner, 1e12, 1.0)]
    created = 0
    for _ in range(10):
        job = Job(id=new_job_id(), key="shared", status=JobStatus.QUEUED, operation="generation", model=None,
                  created_at=1.0, input=JobInput(operation="generation"), request_id="r")
        created += await store.create(job, 5)
    await store.close()
    print(json.dumps({"claimed": claimed, "created": created}), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))
"""


async def test_sqlite_claims_are_atomic_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with sqlite_at(path) as store:
        jobs = [make_job(created_at=1_700_000_000.0 + i) for i in range(200)]
        for job in jobs:
            assert await store.create(job, None)
        ids = json.dumps([job.id for job in jobs])
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", _RACER, str(path), f"proc-{i}", ids,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT,
            )
            for i in range(3)
        ]
        try:
            for proc in procs:
                assert proc.stdout is not None
                assert await asyncio.wait_for(proc.stdout.readline(), 15) == b"ready\n"
            start = f"{time.time() + 0.2}\n".encode()
            outputs = await asyncio.wait_for(asyncio.gather(*(proc.communicate(start) for proc in procs)), 30)
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        assert [proc.returncode for proc in procs] == [0, 0, 0]
        results = [json.loads(stdout) for stdout, _ in outputs]
        # Exactly one winner per job (the processes go through the jobs in the same order, so
        # they try the same job at the same moment).
        claims = [job_id for result in results for job_id in result["claimed"]]
        assert sorted(claims) == sorted(job.id for job in jobs)
        for i, result in enumerate(results):
            for job_id in result["claimed"]:
                assert (await stored(store, job_id)).owner == f"proc-{i}"
        # The cap holds across processes too.
        assert sum(result["created"] for result in results) == 5
        assert len(await store.list("shared", 100)) == 5


async def test_update_is_compare_and_set_on_the_owner(store: JobStore) -> None:
    claimed = await owned(store, owner="a", lease_until=100.0)
    running = replace(claimed, status=JobStatus.IN_PROGRESS, started_at=1.0, provider="fal", checkpoint=b"h1")
    assert await store.update(running, "a")
    assert await stored(store, claimed.id) == running
    # a's lease runs out; b recovers the job, and resumes from a's checkpoint.
    recovered = await store.claim(claimed.id, "b", lease_until=300.0, now=101.0)
    assert recovered is not None and recovered.checkpoint == b"h1" and recovered.owner == "b"
    # a lost it: its writes are refused, nothing written.
    assert not await store.update(replace(running, checkpoint=b"stale"), "a")
    assert await stored(store, claimed.id) == recovered
    # b ends it: the final status is written once.
    done = finished(recovered, result="obj-9", partial_images=1)
    assert await store.update(done, "b")
    assert not await store.update(finished(recovered, JobStatus.FAILED, error_status=500), "b")
    assert not await store.update(finished(running, JobStatus.FAILED, error_status=500), "a")
    assert await stored(store, claimed.id) == done
    assert claimed.id not in await store.recoverable(now=1e12, limit=100)
    assert not await store.update(make_job(), "a")


async def test_update_keeps_the_lease_and_a_cancel_request(store: JobStore) -> None:
    claimed = await owned(store, owner="a", lease_until=100.0)
    # The renewal loop extends the lease, and a cancel arrives, while the runner holds an older copy.
    assert await store.renew([claimed.id], "a", 900.0) == []
    cancelling = await store.request_cancel(claimed.id, now=50.0)
    assert cancelling is not None and cancelling.cancel_requested
    running = replace(claimed, status=JobStatus.IN_PROGRESS, owner="x", lease_until=5.0)
    assert await store.update(running, "a")
    got = await stored(store, claimed.id)
    assert (got.status, got.owner, got.lease_until, got.cancel_requested) == (JobStatus.IN_PROGRESS, "a", 900.0, True)
    assert claimed.id not in await store.recoverable(now=800.0, limit=10)
    with pytest.raises(ValueError, match="finished_at"):
        await store.update(replace(running, status=JobStatus.CANCELLED), "a")


async def test_update_with_no_owner_gives_the_job_up(store: JobStore) -> None:
    claimed = await owned(store, owner="a", lease_until=100.0)
    running = replace(claimed, status=JobStatus.IN_PROGRESS, checkpoint=b"h1")
    assert await store.update(running, "a")
    # A shutdown hands it back: another process may take it over at once.
    handed_back = replace(running, owner=None, lease_until=0.0)
    assert await store.update(handed_back, "a")
    assert await stored(store, claimed.id) == handed_back
    assert await store.recoverable(now=1.0, limit=10) == [claimed.id]
    assert not await store.update(running, "a")
    taken = await store.claim(claimed.id, "b", lease_until=200.0, now=1.0)
    assert taken == replace(handed_back, owner="b", lease_until=200.0)
    # A run's end may give it up too: the final record has no owner.
    done = finished(taken, owner=None, lease_until=0.0, checkpoint=None)
    assert await store.update(done, "b")
    assert await stored(store, claimed.id) == done
    assert await store.recoverable(now=1e12, limit=10) == []


async def test_renew_extends_owned_leases_and_reports_cancel_requests(store: JobStore) -> None:
    a1, a2, a3 = [await owned(store, owner="a", lease_until=100.0) for _ in range(3)]
    b1 = await owned(store, owner="b", lease_until=100.0)
    a4 = await owned(store, owner="a", lease_until=100.0)
    assert await store.update(finished(a4), "a")
    requested = await store.request_cancel(a2.id, now=50.0)
    assert requested is not None and requested.cancel_requested and requested.status is JobStatus.QUEUED
    cancelled = await store.renew([a1.id, a2.id, a3.id, b1.id, a4.id, "imgjob_missing"], "a", 500.0)
    assert cancelled == [a2.id]
    assert [(await stored(store, job.id)).lease_until for job in (a1, a2, a3, b1, a4)] == [500.0, 500.0, 500.0, 100.0, 100.0]
    assert await store.renew([], "a", 600.0) == []
    assert await store.renew([b1.id], "a", 600.0) == []
    assert await store.recoverable(now=200.0, limit=10) == [b1.id]


async def test_request_cancel_queued_running_and_final(store: JobStore) -> None:
    # Queued, nobody runs it: cancelled at once.
    queued = make_job()
    assert await store.create(queued, None)
    cancelled = await store.request_cancel(queued.id, now=10.0)
    assert cancelled == replace(queued, status=JobStatus.CANCELLED, finished_at=10.0)
    assert await stored(store, queued.id) == cancelled
    assert await store.claim(queued.id, "a", 100.0, now=20.0) is None
    # Queued, claimed, lease expired (its submitter died): cancelled at once, owner gone.
    expired = await owned(store, owner="a", lease_until=5.0)
    gone = await store.request_cancel(expired.id, now=10.0)
    assert gone is not None and (gone.status, gone.owner, gone.finished_at) == (JobStatus.CANCELLED, None, 10.0)
    # Queued with a live lease, and running: the owner is asked to stop it.
    claimed = await owned(store, owner="a", lease_until=100.0)
    asked = await store.request_cancel(claimed.id, now=10.0)
    assert asked == replace(claimed, cancel_requested=True)
    running = replace(await owned(store, owner="b", lease_until=100.0), status=JobStatus.IN_PROGRESS)
    assert await store.update(running, "b")
    asked = await store.request_cancel(running.id, now=10.0)
    assert asked == replace(running, cancel_requested=True)
    # Running but its owner died: whoever recovers it sees the request (and may cancel at the provider).
    later = await store.request_cancel(running.id, now=1000.0)
    assert later == replace(running, cancel_requested=True)
    recovered = await store.claim(running.id, "c", 2000.0, now=1000.0)
    assert recovered is not None and recovered.cancel_requested
    # Final: left as it is.
    done = finished(await owned(store, owner="a"))
    assert await store.update(done, "a")
    assert await store.request_cancel(done.id, now=10.0) == done
    assert await store.request_cancel("imgjob_missing", now=10.0) is None
    counts = await store.count_by_status()
    assert counts == {
        JobStatus.QUEUED: 1,
        JobStatus.IN_PROGRESS: 1,
        JobStatus.COMPLETED: 1,
        JobStatus.FAILED: 0,
        JobStatus.CANCELLED: 2,
    }


async def test_recoverable_lists_expired_leases_first_expired_first(store: JobStore) -> None:
    first = make_job(created_at=1.0)
    second = make_job(created_at=2.0)
    for job in (first, second):
        assert await store.create(job, None)
    # New jobs have lease 0: recoverable until someone claims them.
    assert sorted(await store.recoverable(now=10.0, limit=10)) == sorted([first.id, second.id])
    assert await store.claim(first.id, "a", lease_until=100.0, now=10.0) is not None
    assert await store.recoverable(now=50.0, limit=10) == [second.id]
    assert await store.recoverable(now=100.0, limit=10) == [second.id]
    assert await store.recoverable(now=100.5, limit=10) == [second.id, first.id]
    assert await store.recoverable(now=100.5, limit=1) == [second.id]
    assert await store.recoverable(now=100.5, limit=0) == []
    # Renewed: not recoverable; final: never again.
    assert await store.renew([first.id], "a", 500.0) == []
    assert await store.recoverable(now=200.0, limit=10) == [second.id]
    claimed = await store.claim(second.id, "b", lease_until=300.0, now=200.0)
    assert claimed is not None and await store.update(finished(claimed), "b")
    assert await store.recoverable(now=1e12, limit=10) == [first.id]


async def test_sweep_deletes_old_final_jobs_once(store: JobStore) -> None:
    old = finished(make_job(), JobStatus.COMPLETED, at=10.0, result="obj-1")
    older = finished(make_job(), JobStatus.FAILED, at=5.0, error_status=500, error=b"{}")
    recent = finished(make_job(None), JobStatus.CANCELLED, at=30.0)
    active = await owned(store, owner="a")
    for job in (old, older, recent):
        assert await store.create(job, None)
    assert await store.sweep(finished_before=25.0, limit=10) == [older, old]
    assert await store.get(old.id) is None and await store.get(older.id) is None
    assert await store.list("alice", 10) == [active]
    assert await store.sweep(finished_before=25.0, limit=10) == []
    assert await store.sweep(finished_before=10.0, limit=10) == []
    assert (await store.count_by_status())[JobStatus.COMPLETED] == 0
    # The limit takes the oldest first; non-final jobs are never swept.
    more = [finished(make_job(), at=40.0 + i) for i in range(3)]
    for job in more:
        assert await store.create(job, None)
    assert await store.sweep(finished_before=1e12, limit=2) == [recent, more[0]]
    assert await store.sweep(finished_before=1e12, limit=10) == more[1:]
    assert await store.sweep(finished_before=1e12, limit=10) == []
    assert await store.list(None, 10) == []
    assert await store.list("alice", 10) == [active]
    assert await store.count_by_status() == {status: int(status is JobStatus.QUEUED) for status in JobStatus}


async def test_concurrent_sweeps_return_each_job_once(store: JobStore) -> None:
    jobs = [finished(make_job(), at=10.0 + i) for i in range(12)]
    for job in jobs:
        assert await store.create(job, None)
    swept = await asyncio.gather(*(store.sweep(finished_before=1e12, limit=3) for _ in range(6)))
    assert sorted(job.id for batch in swept for job in batch) == sorted(job.id for job in jobs)


async def test_redis_leaves_no_keys_behind(redis_url: str, redis_prefix: str) -> None:
    client = connect(RedisConfig(url=redis_url))
    store = RedisJobStore(client, redis_prefix)
    try:
        running = await owned(store, owner="a")
        queued = make_job(None)
        assert await store.create(queued, 2)
        assert await store.request_cancel(queued.id, now=1.0) is not None
        assert await store.update(finished(running), "a")
        assert len(await store.sweep(finished_before=1e12, limit=10)) == 2
        assert await client.keys(redis_prefix + "*") == [f"{redis_prefix}jobs:counts".encode()]
    finally:
        await store.close()  # and its client


def _every_call(store: JobStore) -> list[Callable[[], Awaitable[object]]]:
    job = make_job()
    return [
        store.start,
        lambda: store.create(job, None),
        lambda: store.create(job, 3),
        lambda: store.get(job.id),
        lambda: store.list("alice", 10),
        lambda: store.claim(job.id, "a", 100.0, now=0.0),
        lambda: store.update(job, "a"),
        lambda: store.renew([job.id], "a", 100.0),
        lambda: store.request_cancel(job.id, now=0.0),
        lambda: store.recoverable(now=0.0, limit=10),
        lambda: store.sweep(finished_before=0.0, limit=10),
        store.count_by_status,
    ]


async def test_redis_unreachable_is_job_store_unavailable_naming_no_password() -> None:
    server = RedisProcess()
    admin = connect(RedisConfig(url=server.url))
    wrong = connect(RedisConfig(url=f"redis://:n0t-it@127.0.0.1:{server.port}/0"))
    client = connect(RedisConfig(url=f"redis://:s3cret@127.0.0.1:{server.port}/0"))
    try:
        await admin.config_set("requirepass", "s3cret")
        # A wrong password: refused, and the message does not repeat it.
        with pytest.raises(JobStoreUnavailable) as refused:
            await RedisJobStore(wrong, "t:").start()
        assert "n0t-it" not in str(refused.value)

        store = RedisJobStore(client, "t:")
        await store.start()
        assert await store.create(make_job(), None)
        server.stop()
        for call in _every_call(store):
            with pytest.raises(JobStoreUnavailable) as info:
                await call()
            message = str(info.value)
            assert "Redis job store cannot be reached" in message and "127.0.0.1" in message
            assert "s3cret" not in message
    finally:
        server.stop()
        for c in (admin, wrong, client):
            await c.aclose()


async def test_sqlite_unusable_path_is_job_store_unavailable(tmp_path: Path) -> None:
    directory = tmp_path / "jobs.db"
    directory.mkdir()
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not an SQLite database\n" * 200)
    for path in (directory, blocker / "jobs.db", garbage):
        store = SqliteJobStore(str(path))
        with pytest.raises(JobStoreUnavailable) as info:
            await store.start()
        assert str(info.value).startswith(f"the SQLite job store {str(path)!r} cannot be used: ")
        await store.close()


async def test_sqlite_survives_a_restart_and_records_its_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with sqlite_at(path) as first:
        job = await owned(first, owner="a")
    async with sqlite_at(path) as second:
        assert await second.get(job.id) == job
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(JobStoreUnavailable, match="newer than this Pixelgate"):
        await SqliteJobStore(str(path)).start()
