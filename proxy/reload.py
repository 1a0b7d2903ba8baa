"""Config reload without dropping streams: SIGHUP (or ``POST /admin/reload``) re-reads the config.

New providers, models, prices, limits and keys apply to requests that start
after the reload. A request already routed holds its ``Route`` objects (the
provider, its adapter and transport, the breaker), so requests and streams in
flight finish on the config they started with. The swap is synchronous (no
await between its steps), so no request sees half of an old config and half
of a new one.

What a reload may change: ``providers``, ``models``, ``prices``, ``access``
(keys, limits, CORS) and ``routing``. Everything else (``server``,
``storage``, ``jobs``, ``ledger``, ``idempotency``, ``admin``, the limits
backend) is bound to sockets, files and connections made at start: a config
that changes it is refused with the running config kept, as is one that does
not parse or validate; the error is logged and counted
(``pixelgate_config_reloads_total{result="error"}``) and the running
config's version stays in ``pixelgate_config_info``.

Unchanged providers keep their adapter object and unchanged deployments keep
their circuit breaker, so a reload does not reset a breaker that is open.

After the swap, ``after`` runs (the gateway's: budgets of keys the reload added
or gave a budget start from the ledger's spend, as they do at start). It runs
after the new config is in force, so a failure there is logged, not a refusal.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
from aiohttp import web

from pixelgate.adapters import REGISTRY as ADAPTERS
from pixelgate.proxy.app_keys import ACCESS, BREAKERS, CONFIG, METRICS, ROUTER
from pixelgate.proxy.breaker import Breaker
from pixelgate.proxy.config import WILDCARD, Config, ConfigError
from pixelgate.proxy.routing import Provider

__all__ = ["RELOADABLE", "Reloaded", "Reloader", "config_version"]

log = logging.getLogger("pixelgate.reload")

RELOADABLE = ("providers", "models", "prices", "access", "routing")
_FIXED = ("server", "storage", "jobs", "ledger", "idempotency", "admin")


def config_version(config: Config) -> str:
    """A short hash of the config's content (what ``pixelgate_config_info`` names)."""
    return hashlib.sha256(msgspec.json.encode(config)).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Reloaded:
    ok: bool
    version: str
    message: str


class Reloader:
    """Reloads one app's config from ``load`` (the same source it started from)."""

    def __init__(self, app: web.Application, load: Callable[[], Config],
                 after: Callable[[web.Application], Awaitable[None]] | None = None) -> None:
        self._app = app
        self._load = load
        self._after = after
        self._lock = asyncio.Lock()
        self.version = config_version(app[CONFIG])
        app[METRICS].config_loaded(self.version, None, "start")

    async def reload(self) -> Reloaded:
        async with self._lock:
            metrics = self._app[METRICS]
            try:
                # Reading and validating the file is blocking work: not on the loop.
                new = await asyncio.to_thread(self._load)
                self._check(new)
                self._apply(new)
            except (ConfigError, OSError, ValueError) as exc:
                log.error("config reload refused, the running config (version %s) is kept: %s", self.version, exc)
                metrics.config_loaded(self.version, None, "error")
                return Reloaded(False, self.version, str(exc))
            previous, self.version = self.version, config_version(self._app[CONFIG])
            metrics.config_loaded(self.version, previous, "ok")
            log.info("config reloaded: version %s (was %s)", self.version, previous)
            if self._after is not None:
                try:
                    await self._after(self._app)
                except Exception:
                    log.exception("config reloaded (version %s), but what follows a reload failed", self.version)
            return Reloaded(True, self.version, "reloaded")

    def _check(self, new: Config) -> None:
        running = self._app[CONFIG]
        for section in _FIXED:
            if getattr(new, section, None) != getattr(running, section, None):
                raise ValueError(f"{section}: changed; this section takes effect only at a restart")
        if new.access.backend != running.access.backend or new.access.redis != running.access.redis:
            raise ValueError("access.backend / access.redis: changed; the limits backend takes effect only at a restart")

    def _apply(self, new: Config) -> None:
        """Build everything first (it may raise), then swap with no await in between."""
        app = self._app
        running, router = app[CONFIG], app[ROUTER]
        old_providers = router.providers
        transport = next(iter(old_providers.values())).transport
        providers: dict[str, Provider] = {}
        for name, p in new.providers.items():
            kept = old_providers.get(name)
            if kept is not None and running.providers.get(name) == p:
                providers[name] = kept
                continue
            adapter_cls = ADAPTERS[p.adapter]
            options = msgspec.convert(p.options, adapter_cls.Options)
            providers[name] = Provider(name, adapter_cls(p.settings(name, options)), transport, p.timeouts)
        old_breakers = app[BREAKERS]
        breakers: dict[tuple[str, int], Breaker] = {}
        for model, entry in new.models.items():
            before = running.models.get(model)
            for i, deployment in enumerate(entry.deployments):
                same = before is not None and i < len(before.deployments) and before.deployments[i] == deployment
                breakers[(model, i)] = old_breakers[(model, i)] if same else Breaker(new.routing.breaker)
        # The swap.
        for section in RELOADABLE:
            setattr(running, section, getattr(new, section))
        old_breakers.clear()
        old_breakers.update(breakers)
        router.replace(running, providers, breakers)
        app[ACCESS].reconfigure(new.access)
        app[METRICS].reconfigure([m for m in new.models if m != WILDCARD], new.providers, new.prices)
