"""What a job is: its record, as every job store keeps it and the API shows it.

A job is one generation or edit run without a held connection (``Prefer:
respond-async``). Its record holds everything needed to run it on any process
sharing the store, after a restart too: the request as the gateway will send
it (``JobInput``, edit inputs stored as objects in ``storage``), who runs it
and until when (``owner``, ``lease_until``: a process that dies stops renewing,
and another takes the job over), and where the provider is with it
(``checkpoint``: a submit/poll provider's job handle, so polling resumes
instead of submitting twice).

Only the fields a client may read are shown by ``proxy.jobs.api``; the input,
the owner and the checkpoint (which names the provider's job) never are.
"""

from __future__ import annotations

import enum
import secrets
from typing import Literal

import msgspec

from pixelgate.core.upload import InputImage

__all__ = ["FINAL", "InputFile", "Job", "JobInput", "JobStatus", "new_job_id"]


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


def new_job_id() -> str:
    """``imgjob_`` and 128 random bits: unguessable, and safe in a path or a Redis key."""
    return f"imgjob_{secrets.token_hex(16)}"


class InputFile(msgspec.Struct, frozen=True):
    """A multipart edit's input image or mask, kept in ``storage`` until the job ends."""

    field: Literal["image", "mask"]
    object_id: str
    # As sniffed at submission; its ``path`` is re-made (a spool file) when the job runs.
    image: InputImage


class JobInput(msgspec.Struct, frozen=True):
    """The request a job runs, as the client sent it (the gateway's own
    rewrites, the default model and ``user``, are applied again when it runs)."""

    operation: Literal["generation", "edit"]
    # The JSON body (a generation, or an edit sent as JSON, whose data: URLs are
    # spooled again when it runs); b"" for a multipart edit.
    body: bytes = b""
    # A multipart edit's text fields, in order.
    fields: tuple[tuple[str, str], ...] = ()
    files: tuple[InputFile, ...] = ()


class Job(msgspec.Struct, kw_only=True):
    id: str
    # The gateway key's name that submitted it (None on a gateway without keys):
    # no other key sees it.
    key: str | None
    status: JobStatus
    operation: Literal["generation", "edit"]
    model: str | None
    # Unix seconds.
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    input: JobInput
    # The request id of the submission (the access log's, and the job's runs').
    request_id: str
    # Who runs it (a process's random id) and until when that holds (Unix seconds).
    owner: str | None = None
    lease_until: float = 0.0
    # The provider it runs at, and the adapter's checkpoint there (see
    # pixelgate.core.translator.Resumable); None before the provider named a job.
    provider: str | None = None
    checkpoint: bytes | None = None
    # Partial images received so far (streaming providers).
    partial_images: int = 0
    # completed: the storage object holding the response body (OpenAI's ImagesResponse JSON).
    result: str | None = None
    # The result's images are stored apart, and signed into URLs when the job is read.
    result_urls: bool = False
    # failed: the HTTP status and the OpenAI error envelope the synchronous path would have answered.
    error_status: int | None = None
    error: bytes | None = None
    # A DELETE came; the process running it stops it at its next lease renewal.
    cancel_requested: bool = False
    # Where the completion webhook goes (already checked by the guard), if anywhere.
    webhook_url: str | None = None
    # The idempotency key's log id (a hash), if the submission had one.
    idempotency_key: str | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL
