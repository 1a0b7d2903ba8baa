"""Stored images behind signed, expiring URLs (the ``storage`` config section).

    config.py     the `storage` config section and its checks
    base.py       the StoredObject record, object ids, the streaming writer, the Storage base
    signing.py    HMAC-SHA256 URL signatures with key rotation, checked in constant time
    local.py      a local directory: files, JSON sidecar records, hour directories
    s3.py         any S3-compatible store through obstore: multipart uploads, presigned URLs
    b64decode.py  incremental base64 decoding, so a b64_json stream is stored as bytes
    sweeper.py    retention: removes expired objects, a bounded batch per sweep
    serve.py      GET /files/{id}: the gateway-served, signed URLs
    app.py        which store, and its lifetime in the aiohttp app (cleanup_ctx)
"""
