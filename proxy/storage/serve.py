"""``GET /files/{id}?expires=...&sig=...``: stored objects served by the gateway behind signed URLs.

The path is outside ``/v1/`` on purpose: the signature is the credential (as
with an S3 presigned URL), so an ``<img src>`` works without a gateway key.
Refusals use the OpenAI error envelope, and are decided before any I/O:

- 403 ``invalid_signature``: no signature, a malformed one, or one that no
  configured key made (a changed id or expiry included);
- 403 ``url_expired``: a genuine signature whose time is over (403, as S3
  answers an expired presigned URL, so both kinds of URL fail alike);
- 404 ``file_not_found``: a valid URL for an object past its retention, or
  already removed.

The signature is checked first, so without one nobody learns whether an id exists.
"""

from __future__ import annotations

import logging

from aiohttp import web

from pixelgate.core.errors import GatewayError, InvalidRequest, PermissionDenied
from pixelgate.proxy.app_keys import STORAGE
from pixelgate.proxy.storage.base import StorageError, is_object_id
from pixelgate.proxy.storage.signing import Verdict

__all__ = ["serve_file"]

log = logging.getLogger("pixelgate.storage")


def _not_found() -> GatewayError:
    return InvalidRequest("No such file: it has expired or was removed.", code="file_not_found", status=404)


async def serve_file(request: web.Request) -> web.StreamResponse:
    storage = request.app[STORAGE]
    object_id = request.match_info["object_id"]
    now = storage.clock()
    if storage.signer is None:  # the route exists only with gateway URLs, which need keys
        raise _not_found()
    verdict = storage.signer.verify(object_id, request.query.get("expires"), request.query.get("sig"), now)
    if verdict is Verdict.INVALID:
        raise PermissionDenied("The signature of this file URL is not valid.", code="invalid_signature")
    if verdict is Verdict.EXPIRED:
        raise PermissionDenied("This file URL has expired; request a new one.", code="url_expired")
    if not is_object_id(object_id) or storage.expired(object_id, now):
        raise _not_found()
    try:
        opened = await storage.open(object_id)
    except StorageError as exc:
        log.warning("storage: cannot read %s: %s", object_id, exc)
        raise GatewayError("The file store is unavailable; try again.", code="storage_unavailable", status=503) from None
    if opened is None:
        raise _not_found()
    expires = int(request.query["expires"])
    headers = {
        "Content-Type": opened.content_type,
        # The bytes of an id never change; the URL is good until it expires.
        "Cache-Control": f"private, max-age={max(0, int(expires - now))}, immutable",
        "X-Content-Type-Options": "nosniff",
        # Served from the gateway's origin: never run as a document.
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Content-Disposition": "inline",
    }
    if opened.path is not None:
        return web.FileResponse(opened.path, headers=headers)
    assert opened.chunks is not None
    resp = web.StreamResponse(headers=headers)
    resp.content_length = opened.size
    await resp.prepare(request)
    if request.method == "HEAD":
        await opened.chunks.aclose()
        return resp
    try:
        async for chunk in opened.chunks:
            await resp.write(chunk)
    except StorageError as exc:
        # Too late for an error status: the client sees a body shorter than its length.
        log.warning("storage: read of %s failed mid-body: %s", object_id, exc)
        resp.force_close()
        return resp
    await resp.write_eof()
    return resp
