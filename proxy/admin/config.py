"""The ``admin`` section of the config: admin keys and how often keys are polled.

Admin keys are a role apart from gateway keys (``access.keys``): an admin key
calls ``/admin/*`` only, a gateway key never does. Both are made the same way
(``pixelgate keys hash --generate``) and only their hashes are configured;
a plaintext key is refused. No admin keys: the admin API is off (``/admin/*``
answers 404).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from pixelgate.proxy.access.config import AccessConfig, KeyName
from pixelgate.proxy.access.keys import KEY_PREFIX, parse_hash

__all__ = ["AdminConfig", "AdminKey", "check_admin"]


class AdminKey(msgspec.Struct, forbid_unknown_fields=True):
    # The actor of its audit entries.
    name: KeyName
    # `pixelgate keys hash` output; plaintext keys are refused.
    hash: str


class AdminConfig(msgspec.Struct, forbid_unknown_fields=True):
    # Empty: the admin API is off (/admin/* answers 404).
    keys: list[AdminKey] = []
    # Every process reads the keys written to the ledger database (by the admin API
    # of any replica, or the CLI) this often: a change takes effect everywhere
    # within about this long (see proxy.admin.poller).
    key_poll_interval: Annotated[float, Meta(ge=0.1, le=300)] = 2.0


def check_admin(admin: AdminConfig, access: AccessConfig) -> None:
    """What the types cannot say; a key is an admin key or a gateway key, never both.
    Raises ``ValueError("keys[0].hash: ...")`` (``proxy.config`` prefixes ``admin.``)."""
    gateway_ids = {parse_hash(k.hash).key_id for k in access.keys}
    names: set[str] = set()
    ids: set[str] = set()
    for i, key in enumerate(admin.keys):
        where = f"keys[{i}]"
        if key.name in names:
            raise ValueError(f"{where}.name: duplicate admin key name {key.name!r}")
        names.add(key.name)
        if key.hash.startswith(KEY_PREFIX):
            raise ValueError(
                f"{where}.hash: this is a plaintext key, which is refused in config; store its hash instead (`pixelgate keys hash`)"
            )
        try:
            key_id = parse_hash(key.hash).key_id
        except ValueError as exc:
            raise ValueError(f"{where}.hash: {exc}") from None
        if key_id in ids:
            raise ValueError(f"{where}.hash: same key id as another admin key (hash each key once)")
        ids.add(key_id)
        if key_id in gateway_ids:
            raise ValueError(f"{where}.hash: this key is also a gateway key (access.keys): use a key of its own")
