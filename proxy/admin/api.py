"""The admin API's HTTP handlers (``/admin/*``, an admin key each) and ``GET /v1/usage`` (a gateway key).

Routes (registered in ``proxy.server`` when ``admin.keys`` is configured):

- ``POST /admin/keys`` ``{name, models?, limits?, cors_origins?, webhook_url?}``: 201, the
  key with its secret in ``key``, shown this once (stored hashed);
- ``GET /admin/keys``, ``GET /admin/keys/{name}``: config and database keys, never a hash;
- ``PATCH /admin/keys/{name}`` ``{models?, limits?, cors_origins?, webhook_url?}``;
- ``POST /admin/keys/{name}/revoke``, ``POST /admin/keys/{name}/rotate`` (a new secret, once);
- ``GET /admin/usage?since=&until=&by=&key=&format=json|csv`` (``proxy.admin.usage``);
- ``GET /admin/audit?limit=``, newest first.

``GET /v1/usage`` takes the same parameters for the caller's own key only.
Errors are the OpenAI envelope; a bad body or parameter is a 400 naming the
field in ``param``. Each change is written to the audit log with the admin
key's name as the actor (never a secret), and applied to this process's keys
at once; other processes follow within ``admin.key_poll_interval``
(``proxy.admin.poller``). Authentication happens here, not in the access
middleware (which guards ``/v1/*`` only): the admin role has its own table
(``proxy.admin.auth``).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from pixelgate.core.errors import GatewayError, InvalidRequest, PermissionDenied
from pixelgate.proxy.admin.keys import CreateKey, KeyAdmin, KeyNotFound, UpdateKey, config_key_view, key_view, validation_error
from pixelgate.proxy.admin.usage import UsageQuery, parse_query, report, to_csv
from pixelgate.proxy.app_keys import ACCESS, ADMIN, CLIENT, CONFIG, LEDGER_STORE, RELOADER
from pixelgate.proxy.jobs.webhooks import check_webhook_url
from pixelgate.proxy.ledger import LedgerStore, LedgerUnavailable

__all__ = ["audit", "create_key", "get_key", "list_keys", "own_usage", "revoke_key", "rotate_key", "update_key", "usage"]

T = TypeVar("T")
AdminHandler = Callable[[web.Request, str], Awaitable[web.StreamResponse]]
_MAX_BODY = 64 * 1024
_NO_STORE = {"Cache-Control": "no-store"}


class LedgerDown(GatewayError):
    status = 503
    code = "ledger_unavailable"
    error_type = "internal"


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json", headers=_NO_STORE)


def _store(request: web.Request) -> LedgerStore:
    store = request.app.get(LEDGER_STORE)
    if store is None:
        raise LedgerDown("The usage ledger is disabled (ledger.enabled: false): keys and usage are not kept.",
                         code="ledger_disabled")
    return store


def _admin(handler: AdminHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The admin key checked first (its name is the actor); a database outage is a 503."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        actor = request.app[ADMIN].authenticate(request.headers, request.app[ACCESS])
        try:
            return await handler(request, actor)
        except LedgerUnavailable:
            raise LedgerDown("The ledger database cannot be reached right now; retry shortly.",
                             headers={"Retry-After": "1"}) from None

    return wrapped


def _key_admin(request: web.Request, actor: str) -> KeyAdmin:
    jobs = request.app[CONFIG].jobs
    hooks = jobs.webhooks if jobs is not None else None
    check = (lambda url: check_webhook_url(url, hooks)) if hooks is not None else None
    return KeyAdmin(_store(request), actor, is_config_key=request.app[ACCESS].is_config_key, check_webhook=check)


async def _body(request: web.Request, type_: type[T]) -> T:
    if request.content_length is not None and request.content_length > _MAX_BODY:
        raise InvalidRequest("The request body is too large.", status=413, code="payload_too_large")
    raw = await request.content.read(_MAX_BODY + 1)
    if len(raw) > _MAX_BODY:
        raise InvalidRequest("The request body is too large.", status=413, code="payload_too_large")
    try:
        return msgspec.json.decode(raw or b"{}", type=type_)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise validation_error(exc) from None


@_admin
async def create_key(request: web.Request, actor: str) -> web.Response:
    spec = await _body(request, CreateKey)
    key, secret = await _key_admin(request, actor).create(spec)
    request.app[ACCESS].apply_keys([key])
    return _json({**key_view(key), "key": secret}, status=201)


@_admin
async def list_keys(request: web.Request, actor: str) -> web.Response:
    access = request.app[ACCESS]
    config_keys = {k.name: k for k in request.app[CONFIG].access.keys}
    views = [config_key_view(client, revoked, config_keys[client.name].limits is not None)
             for client, revoked in access.config_clients()]
    views += [key_view(key) for key in await _store(request).list_keys() if not access.is_config_key(key.name)]
    views.sort(key=lambda view: view["name"])
    return _json({"object": "list", "data": views})


@_admin
async def get_key(request: web.Request, actor: str) -> web.Response:
    name = request.match_info["name"]
    access = request.app[ACCESS]
    if access.is_config_key(name):
        config_key = next(k for k in request.app[CONFIG].access.keys if k.name == name)
        client, revoked = next((c, r) for c, r in access.config_clients() if c.name == name)
        return _json(config_key_view(client, revoked, config_key.limits is not None))
    key = await _store(request).get_key(name)
    if key is None:
        raise KeyNotFound(f"No key named {name!r}.")
    return _json(key_view(key))


@_admin
async def update_key(request: web.Request, actor: str) -> web.Response:
    patch = await _body(request, UpdateKey)
    key = await _key_admin(request, actor).update(request.match_info["name"], patch)
    request.app[ACCESS].apply_keys([key])
    return _json(key_view(key))


@_admin
async def revoke_key(request: web.Request, actor: str) -> web.Response:
    key = await _key_admin(request, actor).revoke(request.match_info["name"])
    request.app[ACCESS].apply_keys([key])
    return _json(key_view(key))


@_admin
async def rotate_key(request: web.Request, actor: str) -> web.Response:
    key, secret = await _key_admin(request, actor).rotate(request.match_info["name"])
    request.app[ACCESS].apply_keys([key])
    return _json({**key_view(key), "key": secret})


async def _usage(request: web.Request, query: UsageQuery) -> web.Response:
    answer = await report(_store(request), query)
    if query.fmt == "csv":
        return web.Response(text=to_csv(answer), content_type="text/csv", headers=_NO_STORE)
    return _json(answer)


@_admin
async def usage(request: web.Request, actor: str) -> web.Response:
    return await _usage(request, parse_query(request.query))


@_admin
async def audit(request: web.Request, actor: str) -> web.Response:
    raw = request.query.get("limit", "100")
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= 1000:
        raise InvalidRequest("Invalid `limit`: an integer from 1 to 1000.", param="limit", code="invalid_value")
    entries = await _store(request).audit_log(limit)
    return _json({"object": "list", "data": [msgspec.to_builtins(e) for e in entries]})


@_admin
async def reload_config(request: web.Request, actor: str) -> web.Response:
    """``POST /admin/reload``: this process re-reads its config (each replica and worker has
    its own: send it to each, or SIGHUP the supervisor, which forwards it to its workers)."""
    reloader = request.app.get(RELOADER)
    if reloader is None:
        raise InvalidRequest("This gateway was not started from a config file it can read again.",
                             code="reload_unavailable", status=409)
    result = await reloader.reload()
    if request.app.get(LEDGER_STORE) is not None:
        await _store(request).audit(actor, "config.reload", None, {"ok": result.ok, "version": result.version})
    body = {"ok": result.ok, "version": result.version, "message": result.message}
    return _json(body, status=200 if result.ok else 422)


async def own_usage(request: web.Request) -> web.Response:
    """``GET /v1/usage``: the calling gateway key's own usage (authenticated by the access middleware)."""
    client = request.get(CLIENT)
    if client is None:
        raise PermissionDenied("Usage is reported per gateway key; this gateway runs without keys (open mode).",
                               code="usage_needs_key")
    query = parse_query(request.query)
    if query.key is not None and query.key != client.name:
        raise PermissionDenied("A gateway key may read its own usage only.", param="key", code="key_not_allowed")
    query.key = client.name
    try:
        return await _usage(request, query)
    except LedgerUnavailable:
        raise LedgerDown("The ledger database cannot be reached right now; retry shortly.", headers={"Retry-After": "1"}) from None
