"""Azure OpenAI: the OpenAI Images API on an Azure resource.

Two URL forms, chosen by ``options.api``:

- ``deployments`` (default)::

      POST {base_url}/openai/deployments/{deployment}/images/generations?api-version={api_version}

  ``deployment`` is the configured upstream model name (an Azure deployment
  name, not a model family); ``api_version`` defaults to
  ``2025-04-01-preview``, the version Microsoft's image-generation how-to uses.
- ``v1``::

      POST {base_url}/openai/v1/images/generations

  with the deployment name in the body's ``model``, as openai-python sends it
  to ``…/openai/v1/`` with the plain ``OpenAI`` client. The v1 API has needed
  no dated ``api-version`` since its GA (August 2025, Microsoft's "API version
  lifecycle" page); the early v1 preview wanted ``api-version=preview``, so
  ``v1_api_version`` adds one when set (unset by default).

``base_url`` is the resource endpoint (``https://{resource}.openai.azure.com``
or a Foundry endpoint); a trailing ``/openai`` or ``/openai/v1`` is tolerated.

Auth (``options.auth``): ``api_key`` sends ``api-key: <key>``; ``bearer``
sends ``Authorization: Bearer <token>`` for a Microsoft Entra ID token. The
credential comes from a ``TokenSource`` read per request. The adapter starts
with ``StaticToken(api_key)`` (``api_key: ${AZURE_TOKEN}`` in config); a
refreshing source can replace ``adapter.credentials``, provided its
``token()`` returns a cached value without I/O (refresh it elsewhere, e.g. a
background task), since adapters never do I/O.

Body and SSE pass through as with the ``openai`` adapter (its
``OpenAITranslator`` does the work): the client's JSON with ``model`` set to
the deployment, Azure's answer relayed byte for byte, usage metered from the
relayed bytes. As there, an Azure answer of JSON to a ``stream: true`` request
(an older ``api-version`` that ignores ``stream``) is buffered whole and
re-framed as completed events: the one place this adapter holds an image.
Nothing is settled against ``unsupported``: Azure takes the OpenAI body as
is and answers 400 for what its deployment cannot do, so the option exists
only for uniformity.

Errors: Azure's content filters (``code`` ``contentFilter`` from the DALL·E
era, ``content_filter`` with ``innererror.code`` ``ResponsibleAIPolicyViolation``,
and the GPT image models' ``moderation_blocked``) become ``moderation_blocked``
with Azure's message. A well-formed OpenAI error envelope is relayed as sent
(``openai_error``); Azure's own shapes (``{"error":{"code":"429",…}}``,
``DeploymentNotFound``, APIM's ``{"statusCode","message"}``) are put in
OpenAI's terms by ``provider_error``. Response headers pass the same
allow-list as OpenAI's, so ``apim-request-id`` and ``x-ms-*`` stay here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal
from urllib.parse import quote

import msgspec

from pixelgate.adapters.base import AdapterBase, check_base_url
from pixelgate.adapters.images_out import EDIT_COMPLETED
from pixelgate.adapters.openai import PASS_THROUGH, OpenAITranslator
from pixelgate.adapters.openai_wire import edit_call, openai_error
from pixelgate.adapters.params import Policy
from pixelgate.adapters.provider_errors import error_message, moderation_blocked, provider_error
from pixelgate.adapters.tokens import StaticToken, TokenSource
from pixelgate.core.errors import GatewayError, UpstreamError
from pixelgate.core.request import rewrite_body
from pixelgate.core.translator import Edit, Generation, ProviderSettings, UpstreamRequest

__all__ = ["AzureAdapter", "AzureOptions", "AzureTranslator", "StaticToken", "TokenSource"]

DEFAULT_API_VERSION = "2025-04-01-preview"


class AzureOptions(msgspec.Struct, forbid_unknown_fields=True):
    unsupported: Policy = "reject"
    api: Literal["deployments", "v1"] = "deployments"
    # The deployments path's api-version.
    api_version: str = DEFAULT_API_VERSION
    # The v1 path's api-version, if the resource still wants one ("preview").
    v1_api_version: str | None = None
    # api_key: `api-key` header; bearer: `Authorization: Bearer` (Entra ID token).
    auth: Literal["api_key", "bearer"] = "api_key"


# The codes Azure uses for a refused prompt or image.
_FILTER_CODES = frozenset({"contentfilter", "content_filter", "moderation_blocked", "content_policy_violation"})


class _Inner(msgspec.Struct):
    code: str | None = None


class _AzureError(msgspec.Struct):
    message: str | None = None
    code: str | int | None = None
    innererror: _Inner | None = None


class _AzureEnvelope(msgspec.Struct):
    error: _AzureError


_envelope = msgspec.json.Decoder(_AzureEnvelope)


def _azure_error(body: bytes) -> _AzureError | None:
    try:
        return _envelope.decode(body).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def content_filtered(err: _AzureError | None) -> bool:
    if err is None:
        return False
    if err.innererror is not None and err.innererror.code == "ResponsibleAIPolicyViolation":
        return True
    return isinstance(err.code, str) and err.code.lower() in _FILTER_CODES


class AzureTranslator(OpenAITranslator):
    """OpenAI's pass-through, with Azure's error shapes put in OpenAI's terms."""

    __slots__ = ()

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> GatewayError:
        provider = self._provider
        azure = _azure_error(body)
        if status not in (401, 403) and content_filtered(azure):
            message = azure.message if azure is not None and azure.message else "Azure's content filter refused the request"
            return moderation_blocked(provider, message, headers)
        err = openai_error(provider, status, headers, body)
        if not isinstance(err, UpstreamError) or err.raw is not None:
            # Credentials refused, or a complete OpenAI envelope: as for OpenAI.
            return err
        code = str(azure.code) if azure is not None and azure.code is not None else None
        return provider_error(provider, status, headers, error_message(body), code=code)


def _endpoint(base_url: str) -> str:
    base = base_url.rstrip("/")
    for suffix in ("/openai/v1", "/openai"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


class AzureAdapter(AdapterBase[AzureOptions]):
    Options = AzureOptions
    # Azure OpenAI speaks OpenAI's Images API and judges the parameters itself.
    capabilities = msgspec.structs.replace(PASS_THROUGH, provider="Azure OpenAI")
    __slots__ = ("_headers", "_openai", "credentials")

    @classmethod
    def check(cls, settings: ProviderSettings) -> None:
        check_base_url(settings.base_url, required=True)
        options = settings.options
        assert isinstance(options, AzureOptions)
        if options.api == "deployments" and not options.api_version:
            raise ValueError("options.api_version: required for the deployments path (e.g. 2025-04-01-preview)")

    def setup(self, settings: ProviderSettings) -> None:
        assert settings.base_url is not None
        # The clock is unused: Azure's answer carries its own `created`.
        self._openai = _endpoint(settings.base_url) + "/openai"
        self._headers = dict(settings.headers)
        self.credentials: TokenSource | None = StaticToken(settings.api_key) if settings.api_key else None

    def _url(self, deployment: str, operation: str) -> str:
        o = self.options
        if o.api == "v1":
            url = f"{self._openai}/v1/images/{operation}"
            return url if o.v1_api_version is None else f"{url}?api-version={quote(o.v1_api_version, safe='')}"
        return (
            f"{self._openai}/deployments/{quote(deployment, safe='')}/images/{operation}"
            f"?api-version={quote(o.api_version, safe='')}"
        )

    def _credentials(self, request_id: str) -> dict[str, str]:
        # As the openai adapter sends it (Azure's x-ms-client-request-id wants a GUID).
        headers = {**self._headers, "X-Client-Request-Id": request_id}
        if self.credentials is not None:
            credential = self.credentials.token()
            if self.options.auth == "bearer":
                headers["Authorization"] = f"Bearer {credential}"
            else:
                headers["api-key"] = credential
        return headers

    def generation(self, g: Generation) -> AzureTranslator:
        headers = {"Content-Type": "application/json", **self._credentials(g.request_id)}
        url = self._url(g.upstream_model, "generations")
        return AzureTranslator(self.name, UpstreamRequest("POST", url, headers, rewrite_body(g.body, g.upstream_model)), g.request.streaming)

    def edit(self, e: Edit) -> AzureTranslator:
        call = edit_call(self._url(e.upstream_model, "edits"), self._credentials(e.request_id), e)
        return AzureTranslator(self.name, call, e.request.streaming, EDIT_COMPLETED)
