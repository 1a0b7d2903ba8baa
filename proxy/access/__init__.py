"""Access control and limits: gateway keys, per-key limits shared across replicas, CORS.

    config.py         the `access` config section and its checks
    keys.py           key format, salted hashes, constant-time lookup
    limits.py         the LimitBackend protocol, sliding-window semantics, headers
    memory.py         in-process backend (one process)
    redis_backend.py  Redis backend: atomic Lua admission, stream leases, spend counters
    cors.py           CORS policy for /v1/*
    control.py        AccessControl: authenticate, check model, admit, settle
    middleware.py     aiohttp wiring: middleware, response headers, backend lifetime
"""
