"""Provider adapters: one pure translator per provider, registered by name.

Adding a provider means one file here and one line in ``REGISTRY``.
"""

from __future__ import annotations

from types import MappingProxyType

from adapters.azure import AzureAdapter
from adapters.base import Adapter
from adapters.bfl import BflAdapter
from adapters.demo import DemoAdapter
from adapters.fal import FalAdapter
from adapters.gemini import GeminiAdapter
from adapters.imagen import ImagenAdapter
from adapters.openai import OpenAIAdapter
from adapters.replicate import ReplicateAdapter
from adapters.stability import StabilityAdapter
from adapters.together import TogetherAdapter
from adapters.xai import XaiAdapter

__all__ = ["REGISTRY", "Adapter"]

REGISTRY: MappingProxyType[str, type[Adapter]] = MappingProxyType(
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
