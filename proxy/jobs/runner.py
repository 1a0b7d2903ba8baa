"""The job runner of one process: takes queued jobs from the store, runs them, keeps their leases.

Every process sharing a store runs one. A submission only writes the job
(queued, unowned) and wakes the local runner; the runner's loop then claims
from the store whatever is runnable, up to ``jobs.concurrency`` at once:
queued jobs, and jobs whose process stopped renewing its lease (it died).
The same loop therefore starts new jobs and recovers orphaned ones, on
whichever process has room, and a claim is atomic in the store, so a job runs
on one process at a time.

A running job's lease is renewed every third of ``jobs.lease``; the renewal
also brings back the cancellations asked for on other processes (a DELETE
may reach any replica). On shutdown the runner stops claiming, gives running
jobs the grace period, then stops the rest and hands them back (lease
released): one at a submit/poll provider is resumed by the next process,
polling where it was; one that cannot be resumed fails with a retryable
``job_interrupted``, never sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from pixelgate.core.errors import GatewayError
from pixelgate.proxy.app_keys import METRICS, STATE, STORAGE
from pixelgate.proxy.jobs.config import JobsConfig
from pixelgate.proxy.jobs.errors import TooManyJobs
from pixelgate.proxy.jobs.execute import Ran, run_job
from pixelgate.proxy.jobs.inputs import drop_inputs
from pixelgate.proxy.jobs.model import Job, JobStatus
from pixelgate.proxy.jobs.store import JobStore, JobStoreUnavailable
from pixelgate.proxy.jobs.webhooks import WebhookSender
from pixelgate.proxy.routing import Route
from pixelgate.proxy.upstream import Cancels

__all__ = ["JobRunner"]

log = logging.getLogger("pixelgate.jobs")


class JobRunner:
    def __init__(
        self,
        app: web.Application,
        store: JobStore,
        config: JobsConfig,
        webhooks: WebhookSender | None,
        render: Callable[[Job], Coroutine[Any, Any, bytes]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._app = app
        self.store = store
        self.config = config
        self._webhooks = webhooks
        # The job's public JSON, for its webhook.
        self._render = render
        self._clock = clock
        # This process, as the store's owner of the jobs it runs.
        self.owner = f"{secrets.token_hex(8)}"
        self._running: dict[str, asyncio.Task[None]] = {}
        # Jobs stopped because a client cancelled them (not by shutdown).
        self._cancelled: set[str] = set()
        self._wake = asyncio.Event()
        self._closing = False
        self._loops: list[asyncio.Task[None]] = []

    # Lifetime.

    async def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._schedule(), name="pixelgate-jobs-schedule"),
            asyncio.create_task(self._renew(), name="pixelgate-jobs-leases"),
            asyncio.create_task(self._sweep(), name="pixelgate-jobs-sweep"),
        ]

    async def close(self, grace: float) -> None:
        """Stop claiming; let running jobs finish within ``grace``; hand the rest back."""
        self._closing = True
        self._wake.set()
        running = list(self._running.values())
        if running:
            await asyncio.wait(running, timeout=grace)
        for task in self._running.values():
            task.cancel()
        for task in [*self._running.values(), *self._loops]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    @property
    def active(self) -> int:
        return len(self._running)

    def now(self) -> float:
        return self._clock()

    # What the API asks.

    async def submit(self, job: Job) -> None:
        if not await self.store.create(job, self.config.max_active_per_key):
            raise TooManyJobs(
                f"This key has {self.config.max_active_per_key} jobs queued or in progress "
                "(jobs.max_active_per_key); wait for one to finish.",
                headers={"Retry-After": "5"},
            )
        self._app[METRICS].job_event("submitted")
        self._wake.set()

    async def cancel(self, job_id: str) -> Job | None:
        job = await self.store.request_cancel(job_id, self._clock())
        if job is not None and (task := self._running.get(job_id)) is not None:
            # Ours: stopped now (another process stops its own at its next renewal).
            self._cancelled.add(job_id)
            task.cancel()
        if job is not None and job.status is JobStatus.CANCELLED and job_id not in self._running:
            # Cancelled before it ran (the store ended it): nothing else will drop its inputs.
            self._app[METRICS].job_event("cancelled")
            await drop_inputs(self._app[STORAGE], job.input.files)
        return job

    # The loops.

    async def _schedule(self) -> None:
        while not self._closing:
            try:
                await self._claim_some()
                counts = await self.store.count_by_status()
                self._app[METRICS].jobs_state(len(self._running), counts.get(JobStatus.QUEUED, 0))
            except JobStoreUnavailable as exc:
                log.warning("jobs: the job store is unavailable: %s", exc)
            except Exception:
                log.exception("jobs: scheduling failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.poll_interval):
                    await self._wake.wait()

    async def _claim_some(self) -> None:
        room = self.config.concurrency - len(self._running)
        if room <= 0:
            return
        now = self._clock()
        for job_id in await self.store.recoverable(now, room):
            if self._closing or job_id in self._running:
                continue
            job = await self.store.claim(job_id, self.owner, now + self.config.lease, now)
            if job is None:
                continue  # another process took it first
            self._running[job.id] = asyncio.create_task(self._run(job), name=f"pixelgate-job-{job.id}")

    async def _renew(self) -> None:
        every = self.config.lease / 3
        while True:
            await asyncio.sleep(every)
            if not self._running:
                continue
            try:
                stop = await self.store.renew(list(self._running), self.owner, self._clock() + self.config.lease)
            except JobStoreUnavailable as exc:
                log.warning("jobs: could not renew the leases of running jobs: %s", exc)
                continue
            for job_id in stop:
                if (task := self._running.get(job_id)) is not None:
                    self._cancelled.add(job_id)
                    task.cancel()

    async def _sweep(self) -> None:
        storage = self._app[STORAGE]
        while True:
            await asyncio.sleep(min(60.0, self.config.retention / 4))
            try:
                for job in await self.store.sweep(self._clock() - self.config.retention, 1000):
                    if job.result is not None:
                        await storage.delete(job.result)
            except Exception as exc:
                log.warning("jobs: sweeping finished jobs failed: %s", exc)

    # One job.

    async def _run(self, job: Job) -> None:
        metrics = self._app[METRICS]
        try:
            if job.cancel_requested:
                await self._end(job, JobStatus.CANCELLED)
                return
            resumed = job.status is JobStatus.IN_PROGRESS
            job.status = JobStatus.IN_PROGRESS
            job.started_at = job.started_at or self._clock()
            if not await self.store.update(job, self.owner):
                return  # lost it already
            metrics.job_event("resumed" if resumed else "started")
            ran = await run_job(
                self._app, job, self._checkpoint(job), self._cancels(), self._partials(job), resume=resumed
            )
            await self._finish(job, ran)
        except asyncio.CancelledError:
            if job.id in self._cancelled:
                await self._end(job, JobStatus.CANCELLED)
            elif self._closing:
                await self._hand_back(job)
            raise
        except JobStoreUnavailable as exc:
            log.warning("jobs: job %s could not be recorded (the job store is unavailable): %s", job.id, exc)
        except Exception:
            log.exception("jobs: job %s failed unexpectedly", job.id)
        finally:
            self._running.pop(job.id, None)
            self._cancelled.discard(job.id)
            self._wake.set()

    def _writes(self, job: Job) -> Callable[[], None]:
        """Write the record now, after any write before it (in order; failures logged)."""
        last: list[asyncio.Task[None]] = []

        async def write(previous: asyncio.Task[None] | None) -> None:
            if previous is not None:
                with contextlib.suppress(Exception):
                    await previous
            try:
                await self.store.update(job, self.owner)
            except JobStoreUnavailable as exc:
                log.warning("jobs: job %s: could not record its progress: %s", job.id, exc)

        def persist() -> None:
            task = asyncio.ensure_future(write(last[0] if last else None))
            last[:] = [task]

        return persist

    def _checkpoint(self, job: Job) -> Callable[[Route, bytes | None], None]:
        """Keep the provider's job handle in the record, so another process can poll it."""
        persist = self._writes(job)

        def heard(route: Route, checkpoint: bytes | None) -> None:
            job.provider, job.checkpoint = route.provider.name, checkpoint
            persist()

        return heard

    def _partials(self, job: Job) -> Callable[[int], None]:
        """Keep the count of partial images in the record (what a poll reads as progress)."""
        persist = self._writes(job)

        def heard(count: int) -> None:
            job.partial_images = count
            persist()

        return heard

    def _cancels(self) -> Cancels:
        """Provider cancel calls: for a cancelled job, a timeout, a failure; not when
        shutdown hands the job back (the next process polls it again)."""
        state = self._app[STATE]

        def spawn(work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
            if self._closing:
                work.close()
                return asyncio.ensure_future(asyncio.sleep(0))
            return state.spawn(work)

        return Cancels(spawn, self._app[METRICS].provider_cancel)

    async def _finish(self, job: Job, ran: Ran) -> None:
        if ran.error is not None:
            job.error_status, job.error = ran.error.status, ran.error.envelope_bytes()
            await self._end(job, JobStatus.FAILED)
        else:
            job.result, job.result_urls = ran.result, ran.result_urls
            await self._end(job, JobStatus.COMPLETED)

    async def _end(self, job: Job, status: JobStatus) -> None:
        job.status, job.finished_at = status, self._clock()
        job.owner, job.lease_until, job.checkpoint = None, 0.0, None
        if not await self.store.update(job, self.owner):
            log.warning("jobs: job %s ended here after another process took it over; its end is not recorded", job.id)
            return
        # An edit's input images are needed no more.
        await drop_inputs(self._app[STORAGE], job.input.files)
        metrics = self._app[METRICS]
        metrics.job_event(status.value)
        if job.started_at is not None and job.finished_at is not None:
            metrics.job_ended(status.value, job.finished_at - job.created_at)
        if self._webhooks is not None and job.webhook_url is not None:
            self._webhooks.send(job.webhook_url, f"image.job.{status.value}", await self._render(job), job.id)

    async def _hand_back(self, job: Job) -> None:
        """Shutdown stopped it: release the lease so another process takes it over at once."""
        job.owner, job.lease_until = None, 0.0
        with contextlib.suppress(JobStoreUnavailable, GatewayError):  # its lease expires instead
            await self.store.update(job, self.owner)
