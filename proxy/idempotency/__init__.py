"""Idempotency keys: a retried generation or edit is answered from the first one's record.

A request with an ``Idempotency-Key`` header runs once per key (scoped to the
gateway key); its response is recorded as it goes out, and a retry with the
same key and the same request replays it byte for byte, waiting for it (or
following its stream) while the first still runs. The provider is called once
per key. The rules, for operators and clients: docs/idempotency.md.

    keys.py         the header, its scope, the request's fingerprint
    errors.py       the 409s and the 503 a key can get
    store.py        what a store keeps (Head, Ending) and the Store protocol: claim a key, own or follow it
    spool.py        a response on local disk as it is recorded, read by followers as it grows
    memory.py       in-process store (one process): spools kept on disk for the retention
    redis_store.py  Redis store (every worker and replica): SET NX lock with a fencing token,
                    the response in a Redis stream that followers block on
    recorder.py     the response the relay writes into (a record, not a socket), and the replay to a client
    flow.py         the hook proxy.handlers calls: claim, run detached while recording, or replay; the store's lifetime
"""
