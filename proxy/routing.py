"""From a public model name and the request's ``provider`` preferences to the
ordered deployments to try.

``only`` keeps the named providers, ``ignore`` drops them, ``order`` puts the
named ones first (in that order, the rest after in strategy order),
``include_alpha`` admits deployments marked ``alpha: true``, and
``allow_fallbacks: false`` keeps only the first. Unknown provider names are a
400 naming them: a typo must not silently route elsewhere. The model's
``strategy`` orders what is left: config order (``priority``) or a random
order drawn by weight (``weighted``). Circuit breakers are consulted as each
deployment's turn comes (see ``proxy.dispatch``), not here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from msgspec import UnsetType

from pixelgate.core.errors import InvalidRequest, ModelNotFound
from pixelgate.core.request import ProviderPreferences
from pixelgate.core.translator import Adapter
from pixelgate.proxy.breaker import Breaker
from pixelgate.proxy.config import WILDCARD, Config, Deployment, Timeouts
from pixelgate.proxy.transport import Transport

__all__ = ["Provider", "Route", "Router"]


@dataclass(frozen=True, slots=True)
class Provider:
    """A configured provider, ready to serve: its adapter and its transport."""

    name: str
    adapter: Adapter
    transport: Transport
    timeouts: Timeouts


@dataclass(frozen=True, slots=True)
class Route:
    provider: Provider
    upstream_model: str
    # The configured public name (or the wildcard), for metric labels.
    public_model: str
    # One per configured deployment: keyed by config, never by client input.
    breaker: Breaker


@dataclass(frozen=True, slots=True)
class _Candidate:
    deployment: Deployment
    provider: Provider
    breaker: Breaker


class Router:
    def __init__(self, config: Config, providers: dict[str, Provider], breakers: dict[tuple[str, int], Breaker]) -> None:
        self.replace(config, providers, breakers)

    def replace(self, config: Config, providers: dict[str, Provider], breakers: dict[tuple[str, int], Breaker]) -> None:
        """Route by another configuration from now on (a reload). Requests already routed keep
        the Routes they were given (their provider, adapter and breaker), so they finish as they began."""
        candidates = {
            model: [
                _Candidate(d, providers[d.provider], breakers[(model, i)]) for i, d in enumerate(entry.deployments)
            ]
            for model, entry in config.models.items()
        }
        # Three plain assignments, no await between them: no request sees half of each.
        self._config, self._providers, self._candidates = config, providers, candidates

    @property
    def providers(self) -> dict[str, Provider]:
        return self._providers

    @property
    def public_models(self) -> list[str]:
        return [name for name in self._config.models if name != WILDCARD]

    def routes_any(self, model: str) -> bool:
        """Whether a request for ``model`` has a route (its own, or ``"*"``)."""
        return model in self._candidates or WILDCARD in self._candidates

    def routes(self, model: str | UnsetType | None, prefs: ProviderPreferences | UnsetType) -> list[Route]:
        if not isinstance(model, str) or not model:
            raise InvalidRequest("You must provide a model parameter.", param="model", code="missing_required_parameter")
        public = model if model in self._config.models else WILDCARD
        candidates = self._candidates.get(public)
        if candidates is None:
            raise ModelNotFound(f"The model `{model}` does not exist or is not served by this gateway.", param="model")
        if self._config.models[public].strategy == "weighted":
            candidates = _weighted_order(candidates)
        if isinstance(prefs, ProviderPreferences):
            candidates = self._apply(prefs, candidates)
            if not candidates:
                raise InvalidRequest(
                    f"No provider for model `{model}` is allowed by the request's provider preferences.",
                    param="provider",
                    code="no_eligible_provider",
                )
        else:
            candidates = [c for c in candidates if not c.deployment.alpha]
            if not candidates:
                raise InvalidRequest(
                    f"Model `{model}` is served by alpha providers only; set provider.include_alpha to use them.",
                    param="provider.include_alpha",
                    code="no_eligible_provider",
                )
        return [Route(c.provider, c.deployment.model or model, public, c.breaker) for c in candidates]

    def _apply(self, prefs: ProviderPreferences, candidates: list[_Candidate]) -> list[_Candidate]:
        for field in ("order", "only", "ignore"):
            names = getattr(prefs, field) or []
            unknown = [n for n in names if n not in self._providers]
            if unknown:
                raise InvalidRequest(
                    f"Unknown provider(s) in provider.{field}: {', '.join(unknown)}. "
                    f"Known providers: {', '.join(sorted(self._providers))}.",
                    param=f"provider.{field}",
                    code="unknown_provider",
                )
        if prefs.only is not None:
            candidates = [c for c in candidates if c.provider.name in prefs.only]
        if prefs.ignore:
            candidates = [c for c in candidates if c.provider.name not in prefs.ignore]
        if not prefs.include_alpha:
            candidates = [c for c in candidates if not c.deployment.alpha]
        if prefs.order:
            rank = {name: i for i, name in enumerate(prefs.order)}
            # Stable: providers not named keep their strategy order, after the named ones.
            candidates = sorted(candidates, key=lambda c: rank.get(c.provider.name, len(rank)))
        if not prefs.allow_fallbacks:
            candidates = candidates[:1]
        return candidates


def _weighted_order(candidates: list[_Candidate]) -> list[_Candidate]:
    """A random order in which heavier deployments tend to come first.

    Efraimidis-Spirakis: sorting by u ** (1 / weight) draws the whole order
    without replacement, so the first pick is proportional to weight and the
    fallbacks follow the same law.
    """
    keyed = [(random.random() ** (1.0 / c.deployment.weight), c) for c in candidates]
    keyed.sort(key=lambda kc: kc[0], reverse=True)
    return [c for _, c in keyed]
