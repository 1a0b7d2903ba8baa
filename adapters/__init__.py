"""Provider adapters: one pure translator per provider, registered by name.

Adding a provider means one file here and one line in ``REGISTRY``.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from pixelgate.adapters.azure import AzureAdapter
from pixelgate.adapters.base import AdapterBase
from pixelgate.adapters.bfl import BflAdapter
from pixelgate.adapters.demo import DemoAdapter
from pixelgate.adapters.fal import FalAdapter
from pixelgate.adapters.gemini import GeminiAdapter
from pixelgate.adapters.imagen import ImagenAdapter
from pixelgate.adapters.openai import OpenAIAdapter
from pixelgate.adapters.replicate import ReplicateAdapter
from pixelgate.adapters.stability import StabilityAdapter
from pixelgate.adapters.together import TogetherAdapter
from pixelgate.adapters.xai import XaiAdapter

__all__ = ["REGISTRY"]

# Each entry also satisfies pixelgate.core.translator.Adapter, which is all the proxy relies on.
REGISTRY: MappingProxyType[str, type[AdapterBase[Any]]] = MappingProxyType(
    {
        "azure": AzureAdapter,
        "bfl": BflAdapter,
        "demo": DemoAdapter,
        "fal": FalAdapter,
        "gemini": GeminiAdapter,
        "imagen": ImagenAdapter,
        "openai": OpenAIAdapter,
        "replicate": ReplicateAdapter,
        "stability": StabilityAdapter,
        "together": TogetherAdapter,
        "xai": XaiAdapter,
    }
)
