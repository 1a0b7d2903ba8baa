"""The ``storage`` section of the config: where stored images go, how their URLs are signed, how long they stay.

Decoded by ``proxy.config`` like the ``access`` section (errors read
``storage.s3.bucket: ...``). ``check_storage`` adds what msgspec cannot say;
it raises ``ValueError("signing_keys: ...")`` and ``proxy.config`` prefixes
``storage.``. This module imports nothing from ``proxy.config``, which imports it.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

__all__ = ["MIN_KEY_CHARS", "MIN_PART_BYTES", "LocalConfig", "S3Config", "StorageConfig", "check_storage"]

MiB = 1024 * 1024
# S3's smallest part (all but the last) of a multipart upload.
MIN_PART_BYTES = 5 * MiB
# SigV4 presigned URLs live at most 7 days.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
# A signing key is a secret, not a password: 32 characters or more (e.g. `openssl rand -base64 32`).
MIN_KEY_CHARS = 32

Seconds = Annotated[float, Meta(gt=0)]


class LocalConfig(msgspec.Struct, forbid_unknown_fields=True):
    # Created at start if missing; one subdirectory per hour of creation.
    path: str = "./data/images"


class S3Config(msgspec.Struct, forbid_unknown_fields=True):
    """Any S3-compatible store: AWS S3, R2, MinIO, SeaweedFS, GCS (interoperability)."""

    bucket: Annotated[str, Meta(min_length=1)]
    # Every object key starts with this; the sweeper lists only under it.
    prefix: str = "pixelgate/"
    # Omit for AWS; e.g. https://<account>.r2.cloudflarestorage.com, http://minio:9000.
    endpoint: str | None = None
    region: str = "us-east-1"
    # Omitted: the usual AWS sources (AWS_ACCESS_KEY_ID..., web identity, instance role).
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    # https://<bucket>.<endpoint>/key instead of https://<endpoint>/<bucket>/key.
    virtual_hosted_style: bool = False
    # presigned: URLs straight to the store (signed by it, for its credentials);
    # gateway: URLs to the gateway's /files/ path, signed with storage.signing_keys.
    urls: Literal["presigned", "gateway"] = "presigned"
    # Multipart upload part size; memory per write is about part_size * (1 + upload_concurrency).
    part_size: Annotated[int, Meta(ge=MIN_PART_BYTES, le=512 * MiB)] = MIN_PART_BYTES
    upload_concurrency: Annotated[int, Meta(ge=1, le=16)] = 1


class StorageConfig(msgspec.Struct, forbid_unknown_fields=True):
    backend: Literal["local", "s3"] = "local"
    # Retention: an object is removed (and no longer served) this long after it was written.
    ttl: Seconds = 24 * 3600.0
    # How long a URL stays valid (never past the object's retention).
    url_ttl: Seconds = 3600.0
    # HMAC-SHA256 keys of gateway-served URLs: the first signs, all verify (rotation:
    # put the new key first, drop the old one after url_ttl). Needed unless every
    # URL is presigned by S3.
    signing_keys: list[str] = []
    # Base of gateway-served URLs, e.g. https://images.example.com (default: the
    # scheme and host the request came in on).
    public_url: str | None = None
    # The sweeper removes expired objects every sweep_interval, at most sweep_batch per run.
    sweep_interval: Seconds = 60.0
    sweep_batch: Annotated[int, Meta(ge=1, le=100_000)] = 1000
    # A write past this fails (and leaves nothing).
    max_object_bytes: Annotated[int, Meta(ge=1)] = 256 * MiB
    local: LocalConfig = msgspec.field(default_factory=LocalConfig)
    s3: S3Config | None = None

    @property
    def gateway_urls(self) -> bool:
        """Whether the gateway serves the files (and signs their URLs)."""
        return self.backend == "local" or (self.s3 is not None and self.s3.urls == "gateway")


def check_storage(storage: StorageConfig) -> None:
    """What the types cannot say. Raises ``ValueError("s3: ...")``."""
    if storage.backend == "s3":
        s3 = storage.s3
        if s3 is None:
            raise ValueError("s3: backend is s3 but the s3 section (bucket, endpoint, credentials) is missing")
        if s3.prefix.startswith("/") or (s3.prefix and not s3.prefix.endswith("/")):
            raise ValueError(f"s3.prefix: {s3.prefix!r} must be empty or end with '/', and not start with one")
        if s3.endpoint is not None:
            parts = urlsplit(s3.endpoint)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"s3.endpoint: {s3.endpoint!r} is not an http(s) URL")
        if (s3.access_key_id is None) != (s3.secret_access_key is None):
            raise ValueError("s3: access_key_id and secret_access_key go together (or omit both for the environment's credentials)")
        if s3.urls == "presigned" and storage.url_ttl > MAX_PRESIGN_SECONDS:
            raise ValueError(f"url_ttl: presigned S3 URLs live at most {MAX_PRESIGN_SECONDS} s (7 days)")
    if storage.gateway_urls:
        if not storage.signing_keys:
            raise ValueError(
                "signing_keys: needed to sign the gateway's file URLs: at least one secret of "
                f"{MIN_KEY_CHARS}+ characters, e.g. from `openssl rand -base64 32` (\"${{PIXELGATE_STORAGE_KEY}}\")"
            )
        for i, key in enumerate(storage.signing_keys):
            if len(key) < MIN_KEY_CHARS:
                raise ValueError(f"signing_keys[{i}]: shorter than {MIN_KEY_CHARS} characters")
        if len(set(storage.signing_keys)) != len(storage.signing_keys):
            raise ValueError("signing_keys: the same key is listed twice")
    if storage.public_url is not None:
        parts = urlsplit(storage.public_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"public_url: {storage.public_url!r} is not an http(s) base URL (no query or fragment)")
