"""What every adapter shares: its settings, its clock, its capability table.

The protocols an adapter implements and the values it returns live in the
vocabulary (``pixelgate.core.translator``); this is the common code behind
them. A provider's adapter subclasses ``AdapterBase``, declares its
``Options`` and ``capabilities`` (``pixelgate.adapters.capabilities``), sets
up its URLs and credentials in ``setup`` and builds one translator per
request in ``generation``.
"""

from __future__ import annotations

import time
from typing import ClassVar, Generic, TypeVar, cast

import msgspec

from pixelgate.adapters.capabilities import Capabilities
from pixelgate.adapters.params import Policy, settle
from pixelgate.core.errors import InvalidRequest, UpstreamProtocolError
from pixelgate.core.request import ImageGenerationRequest
from pixelgate.core.translator import Clock, Edit, Generation, ProviderSettings, Resume, Translator

__all__ = ["AdapterBase", "NoOptions", "bearer", "check_base_url"]


def check_base_url(base_url: str | None, *, required: bool = False) -> None:
    """For ``Adapter.check``: an http(s) URL, if given (or if required)."""
    if base_url is None:
        if required:
            raise ValueError("base_url: required for this adapter")
        return
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url: must start with http:// or https://, got {base_url!r}")


def bearer(api_key: str | None) -> dict[str, str]:
    """The ``Authorization`` header most providers take, if there is a key."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class NoOptions(msgspec.Struct, forbid_unknown_fields=True):
    """For adapters with no settings of their own."""


OptionsT = TypeVar("OptionsT", bound=msgspec.Struct)


class AdapterBase(Generic[OptionsT]):
    """A configured provider. Subclasses set ``Options`` and ``capabilities``,
    and implement ``setup`` and ``generation``."""

    Options: ClassVar[type[msgspec.Struct]] = NoOptions
    capabilities: ClassVar[Capabilities]
    # The provider's public API, when the config gives no base_url.
    default_url: ClassVar[str] = ""

    __slots__ = ("base_url", "clock", "name", "options", "table")

    @classmethod
    def check(cls, settings: ProviderSettings) -> None:
        """Raise ``ValueError("key: problem")`` for settings it cannot use."""
        check_base_url(settings.base_url)

    def __init__(self, settings: ProviderSettings, clock: Clock = time.time) -> None:
        options = settings.options if settings.options is not None else self.Options()
        assert isinstance(options, self.Options)
        self.name = settings.name
        self.base_url = (settings.base_url or self.default_url).rstrip("/")
        self.options = cast(OptionsT, options)
        # The `created` the provider does not report (injected for golden cases).
        self.clock = clock
        self.table = self.capabilities_for(options)
        self.setup(settings)

    def setup(self, settings: ProviderSettings) -> None:
        """URLs and credentials, once per configured provider."""

    def settle(
        self, request: ImageGenerationRequest, extra: list[tuple[str, str]] | None = None, *, own: tuple[str, ...] = ()
    ) -> dict[str, str]:
        """Apply the unsupported-parameter policy to what the capability table
        says the provider cannot honour, and to ``extra``, the adapter's own
        checks (for the parameters in ``own`` they replace the table's, which
        then only describes them); the response headers that say what was dropped."""
        problems = [p for p in self.table.problems(request) if p[0] not in own]
        return self._settle(problems, extra)

    def settle_edit(self, e: Edit, extra: list[tuple[str, str]] | None = None) -> dict[str, str]:
        """``settle`` for an edit: also the input images, the mask and input_fidelity."""
        return self._settle(self.table.edit_problems(e.request, len(e.images), e.mask is not None), extra)

    def _settle(self, problems: list[tuple[str, str]], extra: list[tuple[str, str]] | None) -> dict[str, str]:
        if extra:
            problems = self.table.in_order(problems + extra)
        # Adapters that can refuse anything have an `unsupported` option.
        policy: Policy = getattr(self.options, "unsupported", "reject")
        return settle(self.name, problems, policy)

    def require_files(self, e: Edit) -> None:
        """For adapters that send the image bytes: a JSON edit whose images are
        https URLs or file ids cannot be sent (the gateway fetches no URL for a client)."""
        if not e.images:
            raise InvalidRequest(
                f"Provider {self.name!r} needs the image files themselves: send the edit as multipart/form-data, "
                "or give each image as a data: URL.",
                param="images",
                code="unsupported_parameter",
            )

    @classmethod
    def capabilities_for(cls, options: msgspec.Struct) -> Capabilities:
        """The table for these options (some providers' depend on them)."""
        return cls.capabilities

    def generation(self, g: Generation) -> Translator:
        raise NotImplementedError

    def edit(self, e: Edit) -> Translator:
        """Providers that can edit override this; the rest refuse it."""
        raise InvalidRequest(
            f"Provider {self.name!r} cannot edit images; route edits for this model to a provider that can.",
            param="model",
            code="unsupported_operation",
        )

    def resume(self, r: Resume) -> Translator:
        """Providers whose jobs can be polled again override this; the rest refuse it.

        Their translators are not ``Resumable``, so no checkpoint of theirs
        exists: one arrives here only if the provider's adapter changed since
        it was written. There is no client request to blame (not a 400): the
        job cannot be carried on from what its provider said, the error the
        resuming adapters raise for a checkpoint they cannot read.
        """
        raise UpstreamProtocolError(
            f"provider {self.name!r} cannot resume a job after a restart: its adapter keeps no checkpoint"
        )
