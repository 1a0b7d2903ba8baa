"""Provider adapters: one pure translator per provider, registered by name.

Adding a provider means one file here and one line in ``REGISTRY``.
"""

from __future__ import annotations

from types import MappingProxyType

from adapters.base import Adapter
from adapters.bfl import BflAdapter
from adapters.demo import DemoAdapter
from adapters.openai import OpenAIAdapter
from adapters.together import TogetherAdapter

__all__ = ["REGISTRY", "Adapter"]

REGISTRY: MappingProxyType[str, type[Adapter]] = MappingProxyType(
    {
        "bfl": BflAdapter,
        "demo": DemoAdapter,
        "openai": OpenAIAdapter,
        "together": TogetherAdapter,
    }
)
