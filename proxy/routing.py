"""From a public model name and the request's ``provider`` preferences to an
ordered list of deployments to try.

``only`` keeps the named providers, ``ignore`` drops them, ``order`` puts the
named ones first (in that order, the rest after in config order),
``include_alpha`` admits deployments marked ``alpha: true``, and
``allow_fallbacks: false`` keeps only the first. Unknown provider names are a
400 naming them: a typo must not silently route elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from msgspec import UnsetType

from adapters.base import Adapter
from proxy.config import WILDCARD, Config, Timeouts
from proxy.errors import InvalidRequest, ModelNotFound
from proxy.schema import ProviderPreferences
from proxy.transport import Transport

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
    # The configured public name (or the wildcard) for metric labels.
    public_model: str


class Router:
    def __init__(self, config: Config, providers: dict[str, Provider]) -> None:
        self._config = config
        self._providers = providers

    @property
    def public_models(self) -> list[str]:
        return [name for name in self._config.models if name != WILDCARD]

    def routes(self, model: str | None | UnsetType, prefs: ProviderPreferences | UnsetType) -> list[Route]:
        if not isinstance(model, str) or not model:
            raise InvalidRequest("You must provide a model parameter.", param="model", code="missing_required_parameter")
        public = model if model in self._config.models else WILDCARD
        deployments = self._config.models.get(public)
        if deployments is None:
            raise ModelNotFound(f"The model `{model}` does not exist or is not served by this gateway.", param="model")
        candidates = [(d, self._providers[d.provider]) for d in deployments]
        if isinstance(prefs, ProviderPreferences):
            candidates = self._apply(prefs, candidates)
            if not candidates:
                raise InvalidRequest(
                    f"No provider for model `{model}` is allowed by the request's provider preferences.",
                    param="provider",
                    code="no_eligible_provider",
                )
        else:
            candidates = [c for c in candidates if not c[0].alpha]
            if not candidates:
                raise InvalidRequest(
                    f"Model `{model}` is served by alpha providers only; set provider.include_alpha to use them.",
                    param="provider.include_alpha",
                    code="no_eligible_provider",
                )
        return [Route(provider, d.model or model, public) for d, provider in candidates]

    def _apply(self, prefs: ProviderPreferences, candidates: list) -> list:
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
            candidates = [c for c in candidates if c[1].name in prefs.only]
        if prefs.ignore:
            candidates = [c for c in candidates if c[1].name not in prefs.ignore]
        if not prefs.include_alpha:
            candidates = [c for c in candidates if not c[0].alpha]
        if prefs.order:
            rank = {name: i for i, name in enumerate(prefs.order)}
            # Stable: unnamed providers keep config order after the named ones.
            candidates.sort(key=lambda c: rank.get(c[1].name, len(rank)))
        if not prefs.allow_fallbacks:
            candidates = candidates[:1]
        return candidates
