"""The admin API and CLI: gateway keys kept in the ledger database, usage reports, the audit log.

One job per module:

- ``config``: the ``admin`` section (admin keys, the key poll interval);
- ``auth``: who an admin request comes from (admin keys, a role apart from gateway keys);
- ``keys``: create, update, revoke and rotate a key in the database, each with its
  audit entry (shared by the API and the CLI), and the public view of a key;
- ``usage``: the time range and grouping of a usage query, rendered as JSON or CSV;
- ``poller``: every process applies the database's key changes to its access control;
- ``api``: the HTTP handlers under ``/admin/`` (and ``GET /v1/usage``);
- ``cli``: ``pixelgate keys create|list|revoke|rotate`` and ``pixelgate usage``.
"""
