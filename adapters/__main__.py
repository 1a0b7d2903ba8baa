"""``python -m pixelgate.adapters``: the README's table of what each adapter honours."""

from pixelgate.adapters import REGISTRY
from pixelgate.adapters.capabilities import markdown

print(markdown((name, cls.capabilities_for(cls.Options())) for name, cls in sorted(REGISTRY.items())), end="")
