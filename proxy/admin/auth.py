"""Who an admin request comes from: an admin key (``admin.keys``), never a gateway key.

The same key format and hash as gateway keys (``proxy.access.keys``), in a
table of their own: a gateway key is not found in it, so it can never call
``/admin/*`` (403 when it is a valid gateway key, which only its holder can
know; 401 for anything else), and an admin key is not in the gateway's table,
so it cannot make image requests. Refusals never repeat the key presented.
"""

from __future__ import annotations

from collections.abc import Mapping

from pixelgate.core.errors import AuthenticationFailed, PermissionDenied
from pixelgate.proxy.access.control import AccessControl
from pixelgate.proxy.access.keys import AuthFailure, KeyTable, presented_key
from pixelgate.proxy.admin.config import AdminConfig

__all__ = ["AdminAuth"]

_MESSAGES = {
    AuthFailure.MISSING: ("You didn't provide an admin key. Send it as `Authorization: Bearer <admin key>`.", "missing_api_key"),
    AuthFailure.MALFORMED: ("Malformed admin key header: expected `Authorization: Bearer <admin key>`.", "invalid_api_key"),
    AuthFailure.INVALID: ("Incorrect admin key provided.", "invalid_api_key"),
    AuthFailure.REVOKED: ("Incorrect admin key provided.", "invalid_api_key"),
}


class AdminAuth:
    def __init__(self, config: AdminConfig) -> None:
        self._table = KeyTable([(k.hash, k.name, False) for k in config.keys])

    def authenticate(self, headers: Mapping[str, str], access: AccessControl) -> str:
        """The admin key's name (the audit entries' actor); raises AuthenticationFailed or PermissionDenied."""
        presented = presented_key(headers.get("Authorization"), headers.get("api-key"))
        if isinstance(presented, AuthFailure):
            message, code = _MESSAGES[presented]
            raise AuthenticationFailed(message, code=code)
        result = self._table.check(presented)
        if isinstance(result, str):
            return result
        if access.holds(presented):
            raise PermissionDenied("Gateway keys cannot call the admin API; use an admin key.", code="admin_key_required")
        message, code = _MESSAGES[result]
        raise AuthenticationFailed(message, code=code)
