"""Configuration: YAML decoded into typed Structs and checked once, at start.

Every error names the key it is about (``providers.openai.timeouts.connect:
Expected `float`, got `str```), so a bad config fails the start, not a request.
``${VAR}`` and ``${VAR:-default}`` in any string are read from the environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml
from msgspec import Meta

from pixelgate.adapters import REGISTRY
from pixelgate.core.errors import GatewayError
from pixelgate.core.prices import Price
from pixelgate.core.translator import ProviderSettings
from pixelgate.proxy.access.config import AccessConfig, KeyConfig, check_access, plaintext_hint
from pixelgate.proxy.admin.config import AdminConfig, check_admin
from pixelgate.proxy.jobs.config import JobsConfig, check_jobs
from pixelgate.proxy.jobs.webhooks import check_webhook_url
from pixelgate.proxy.storage.config import StorageConfig, check_storage

__all__ = [
    "WILDCARD",
    "AccessConfig",
    "BreakerConfig",
    "Config",
    "ConfigError",
    "Deployment",
    "IdempotencyConfig",
    "ModelConfig",
    "ProviderConfig",
    "RoutingConfig",
    "ServerConfig",
    "StorageConfig",
    "Timeouts",
    "load_config",
    "zero_config",
]

# A models key that serves every model name not configured explicitly.
WILDCARD = "*"
# Endpoints that take a request body (server.endpoint_max_body_bytes).
BODY_ENDPOINTS = ("/v1/images/generations", "/v1/images/edits")

Seconds = Annotated[float, Meta(gt=0)]
MiB = 1024 * 1024
# An edit's default body limit: 16 input images at OpenAI's 50 MB each, a mask, the fields.
# Uploads are spooled to disk as they arrive, so this bounds disk, not memory.
EDIT_MAX_BODY_BYTES = 16 * 50 * MiB + 51 * MiB


class ServerConfig(msgspec.Struct, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8080
    # Request bodies are prompts and options; images for edits come later.
    max_body_bytes: Annotated[int, Meta(ge=1024)] = 4 * MiB
    # One SSE event is buffered whole before it is relayed; a 1536x1024 RGBA
    # PNG is ~8.4 MB of base64, so 32 MiB leaves room for larger outputs.
    max_event_bytes: Annotated[int, Meta(ge=64 * 1024)] = 32 * MiB
    # The playground page at / and the browser client at /static/pixelgate.js.
    playground: bool = True
    # Log prompts in the access log (off: prompts are users' data).
    log_prompts: bool = False
    # Comment lines sent while an upstream stream is silent; 0 disables them.
    keepalive_interval: Annotated[float, Meta(ge=0)] = 15.0
    # On SIGTERM: keep serving this long with /readyz failing, so load
    # balancers stop sending new requests first (Kubernetes: a few seconds).
    drain_delay: Annotated[float, Meta(ge=0)] = 0.0
    # Then in-flight requests get this long to finish; streams still open
    # after it end with an error event.
    shutdown_timeout: Annotated[float, Meta(ge=0)] = 30.0
    # A client that cannot take a write within this long is cut off.
    write_timeout: Annotated[float, Meta(gt=0)] = 60.0
    # Per-endpoint body limits (by path), overriding max_body_bytes there.
    endpoint_max_body_bytes: dict[str, Annotated[int, Meta(ge=1024)]] = {}
    # Longest request line and longest single header (aiohttp's max_line_size
    # and max_field_size); larger ones are refused before any handler runs.
    max_header_bytes: Annotated[int, Meta(ge=1024, le=1024 * 1024)] = 8190
    # Most headers in one request.
    max_headers: Annotated[int, Meta(ge=16, le=1024)] = 128

    # Where edits' uploads are spooled while a request lasts (default: the system's temp dir).
    upload_dir: str | None = None

    def body_limit(self, path: str) -> int:
        # An async submission (proxy.jobs) has its synchronous endpoint's limit.
        path = path.replace("/v1/async/", "/v1/", 1)
        default = EDIT_MAX_BODY_BYTES if path == "/v1/images/edits" else self.max_body_bytes
        return self.endpoint_max_body_bytes.get(path, default)


class Timeouts(msgspec.Struct, forbid_unknown_fields=True):
    """Per-provider limits, sized for slow high-quality generations."""

    connect: Seconds = 10.0
    # Until the upstream's response headers: a non-streamed high-quality
    # image with partials can take minutes before the first byte.
    first_byte: Seconds = 600.0
    # Longest silence between two body chunks once the body has started.
    idle: Seconds = 300.0
    # The whole exchange, headers to last byte.
    total: Seconds = 1800.0


class ProviderConfig(msgspec.Struct, forbid_unknown_fields=True):
    adapter: str
    base_url: str | None = None
    api_key: str | None = None
    # Extra headers sent upstream (e.g. OpenAI-Organization, OpenAI-Project).
    headers: dict[str, str] = {}
    timeouts: Timeouts = msgspec.field(default_factory=Timeouts)
    # Adapter-specific settings, checked against the adapter's Options Struct.
    options: dict[str, Any] = {}

    def settings(self, name: str, options: msgspec.Struct) -> ProviderSettings:
        """What the adapter gets: these settings, with its ``Options`` decoded."""
        return ProviderSettings(name, self.base_url, self.api_key, self.headers, options)


class Deployment(msgspec.Struct, forbid_unknown_fields=True):
    provider: str
    # Upstream model name; defaults to the public name the client asked for.
    model: str | None = None
    alpha: bool = False
    weight: Annotated[float, Meta(gt=0)] = 1.0


class ModelConfig(msgspec.Struct, forbid_unknown_fields=True):
    """A public model: its deployments, tried in ``strategy`` order."""

    deployments: Annotated[list[Deployment], Meta(min_length=1)]
    # priority: config order; weighted: random order by weight, per request.
    strategy: Literal["priority", "weighted"] = "priority"


class BreakerConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Per deployment: opens on a run of failures or a high failure ratio."""

    consecutive_failures: Annotated[int, Meta(ge=1)] = 5
    failure_ratio: Annotated[float, Meta(gt=0, le=1)] = 0.5
    # The ratio counts only once the window holds this many requests.
    min_requests: Annotated[int, Meta(ge=1)] = 10
    window: Seconds = 60.0
    # Open this long, then one probe request decides.
    cooldown: Seconds = 30.0


class RoutingConfig(msgspec.Struct, forbid_unknown_fields=True):
    # Retries of one deployment before failing over to the next.
    retries: Annotated[int, Meta(ge=0, le=10)] = 1
    # Exponential backoff with full jitter: uniform(0, min(max, base * 2**n)).
    backoff_base: Annotated[float, Meta(ge=0)] = 0.25
    backoff_max: Annotated[float, Meta(ge=0)] = 8.0
    # Retry-After / retry-after-ms from an upstream is honoured up to this.
    retry_after_max: Annotated[float, Meta(ge=0)] = 30.0
    # One deadline for all attempts of a request.
    deadline: Seconds = 1800.0
    # The model of a request that names none (some clients make `model`
    # optional); without it such a request is a 400, as OpenAI answers.
    default_model: Annotated[str, Meta(min_length=1)] | None = None
    breaker: BreakerConfig = msgspec.field(default_factory=BreakerConfig)


class IdempotencyConfig(msgspec.Struct, forbid_unknown_fields=True):
    """``Idempotency-Key`` on generations and edits (proxy.idempotency, docs/idempotency.md)."""

    # Off: the header is ignored.
    enabled: bool = True
    # How long a finished request's result is replayed for its key.
    retention: Seconds = 86400.0
    # A larger response is not kept: a later retry gets 409 idempotency_result_too_large.
    max_response_bytes: Annotated[int, Meta(ge=1024)] = 64 * MiB
    # memory: this process only. redis: every worker and replica (the access.redis
    # server); recorded responses are kept in Redis itself.
    backend: Literal["memory", "redis"] = "memory"
    # Where responses are spooled while recorded, and kept by the memory
    # backend (default: the system's temp dir).
    spool_dir: str | None = None


class LedgerConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The usage ledger (proxy.ledger): one row per finished request in a database."""

    enabled: bool = True
    # sqlite+aiosqlite:///path/ledger.sqlite3, or postgresql+asyncpg://user@host/db for
    # replicas. Default: ledger.sqlite3 in the data directory ($PIXELGATE_DATA_DIR, else ./data).
    url: str | None = None
    # Where rows wait while the database is unreachable (default: the data directory).
    spool_dir: str | None = None
    # Rows are written in batches: at most this many, at least this often.
    batch_rows: Annotated[int, Meta(ge=1, le=10_000)] = 500
    flush_interval: Annotated[float, Meta(gt=0, le=60)] = 1.0
    # Budgets start from the spend the ledger has recorded this period.
    budgets_from_ledger: bool = True


class Config(msgspec.Struct, forbid_unknown_fields=True):
    providers: dict[str, ProviderConfig]
    models: dict[str, ModelConfig]
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    routing: RoutingConfig = msgspec.field(default_factory=RoutingConfig)
    # By public model name; a model with no price counts no cost.
    prices: dict[str, Price] = {}
    # Gateway keys, per-key limits, CORS (proxy.access).
    access: AccessConfig = msgspec.field(default_factory=AccessConfig)
    # Stored images behind signed URLs (proxy.storage); off unless configured.
    storage: StorageConfig | None = None
    # Async jobs (proxy.jobs); off unless configured (they need `storage`).
    jobs: JobsConfig | None = None
    ledger: LedgerConfig = msgspec.field(default_factory=LedgerConfig)
    # Idempotency-Key: a retry replays the first request's response (proxy.idempotency).
    idempotency: IdempotencyConfig = msgspec.field(default_factory=IdempotencyConfig)
    # Admin keys for /admin/* and the key poll interval (proxy.admin); no keys: the admin API is off.
    admin: AdminConfig = msgspec.field(default_factory=AdminConfig)


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key."""


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(node: Any, env: Mapping[str, str], path: str) -> Any:
    if isinstance(node, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"{path}: environment variable {name} is not set")

        return _VAR.sub(sub, node)
    if isinstance(node, dict):
        return {k: _expand(v, env, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, env, f"{path}[{i}]") for i, v in enumerate(node)]
    return node


_AT = re.compile(r"^(.*) - at `\$([^`]*)`$")


def _key(prefix: str, path: str) -> str:
    path = path.lstrip(".")
    if not prefix:
        return path
    return prefix + path if path.startswith("[") or not path else f"{prefix}.{path}"


def _convert(value: Any, type_: Any, prefix: str = "") -> Any:
    """``msgspec.convert`` with errors that read ``a.b[0].c: problem``."""
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError as exc:
        text = str(exc)
        if m := _AT.match(text):
            text, where = m.group(1), _key(prefix, m.group(2))
        else:
            where = prefix
        raise ConfigError(f"{where}: {text}" if where else text) from None


class _Document(msgspec.Struct, forbid_unknown_fields=True):
    """The top level; entries are decoded one by one so errors name their key
    (msgspec reports a bad dict value as ``providers[...]``)."""

    providers: dict[str, Any]
    models: dict[str, Any]
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    routing: RoutingConfig = msgspec.field(default_factory=RoutingConfig)
    prices: dict[str, Any] = {}
    access: dict[str, Any] = {}
    storage: Any = None
    jobs: Any = None
    ledger: LedgerConfig = msgspec.field(default_factory=LedgerConfig)
    idempotency: IdempotencyConfig = msgspec.field(default_factory=IdempotencyConfig)
    admin: AdminConfig = msgspec.field(default_factory=AdminConfig)


# A model is a list of deployments (priority order) or a ModelConfig.
_Model = Annotated[list[Deployment], Meta(min_length=1)] | ModelConfig


def _decode(data: Any) -> Config:
    doc = _convert(data, _Document)
    providers = {name: _convert(p, ProviderConfig, f"providers.{name}") for name, p in doc.providers.items()}
    models = {}
    for name, entry in doc.models.items():
        model = _convert(entry, _Model, f"models.{name}")
        models[name] = model if isinstance(model, ModelConfig) else ModelConfig(deployments=model)
    prices = {name: _convert(p, Price, f"prices.{name}") for name, p in doc.prices.items()}
    access = _decode_access(doc.access)
    try:
        check_admin(doc.admin, access)
    except ValueError as exc:
        raise ConfigError(f"admin.{exc}") from None
    return Config(
        providers=providers, models=models, server=doc.server, routing=doc.routing, prices=prices,
        access=access, storage=(storage := _decode_storage(doc.storage)),
        jobs=_decode_jobs(doc.jobs, storage), idempotency=doc.idempotency, ledger=doc.ledger, admin=doc.admin,
    )


def _decode_access(data: dict[str, Any]) -> AccessConfig:
    """Keys one by one, so a plaintext key gets its own message, not "unknown field"."""
    keys = data.get("keys", [])
    if isinstance(keys, list):
        for i, entry in enumerate(keys):
            if hint := plaintext_hint(entry):
                raise ConfigError(f"access.keys[{i}]: {hint}")
        data = {**data, "keys": [_convert(entry, KeyConfig, f"access.keys[{i}]") for i, entry in enumerate(keys)]}
    access = _convert(data, AccessConfig, "access")
    try:
        check_access(access)
    except ValueError as exc:
        raise ConfigError(f"access.{exc}") from None
    return access


def _decode_storage(data: Any) -> StorageConfig | None:
    if data is None:
        return None
    storage = _convert(data, StorageConfig, "storage")
    try:
        check_storage(storage)
    except ValueError as exc:
        raise ConfigError(f"storage.{exc}") from None
    return storage


def _decode_jobs(data: Any, storage: StorageConfig | None) -> JobsConfig | None:
    if data is None:
        return None
    jobs = _convert(data, JobsConfig, "jobs")
    try:
        check_jobs(jobs, storage is not None)
    except ValueError as exc:
        raise ConfigError(f"jobs.{exc}") from None
    if storage is not None and jobs.retention > storage.ttl:
        raise ConfigError(
            f"jobs.retention: {jobs.retention:g} s is longer than storage.ttl ({storage.ttl:g} s), "
            "which removes the jobs' results: a job would outlive its images"
        )
    return jobs


def _check(config: Config) -> Config:
    for path in config.server.endpoint_max_body_bytes:
        if path not in BODY_ENDPOINTS:
            raise ConfigError(
                f"server.endpoint_max_body_bytes.{path}: not an endpoint that takes a body (known: {', '.join(BODY_ENDPOINTS)})"
            )
    for name, provider in config.providers.items():
        adapter = REGISTRY.get(provider.adapter)
        if adapter is None:
            known = ", ".join(sorted(REGISTRY))
            raise ConfigError(f"providers.{name}.adapter: unknown adapter {provider.adapter!r} (known: {known})")
        options = _convert(provider.options, adapter.Options, f"providers.{name}.options")
        try:
            adapter.check(provider.settings(name, options))
        except ValueError as exc:
            raise ConfigError(f"providers.{name}.{exc}") from None
    for name in config.prices:
        if name not in config.models:
            raise ConfigError(f"prices.{name}: no model of that name is configured")
    default = config.routing.default_model
    if default is not None and default not in config.models and WILDCARD not in config.models:
        raise ConfigError(f"routing.default_model: no model {default!r} is configured (nor a {WILDCARD!r} route)")
    for name, model in config.models.items():
        for i, deployment in enumerate(model.deployments):
            if deployment.provider not in config.providers:
                raise ConfigError(f"models.{name}[{i}].provider: unknown provider {deployment.provider!r}")
    _check_key_webhooks(config)
    return config


def _check_key_webhooks(config: Config) -> None:
    """A key's default webhook: only with jobs.webhooks, and only to a host they allow."""
    hooks = config.jobs.webhooks if config.jobs is not None else None
    for i, key in enumerate(config.access.keys):
        if key.webhook_url is None:
            continue
        where = f"access.keys[{i}].webhook_url"
        if hooks is None:
            raise ConfigError(f"{where}: needs jobs.webhooks (the secrets that sign webhooks)")
        try:
            check_webhook_url(key.webhook_url, hooks)
        except GatewayError as exc:
            raise ConfigError(f"{where}: {exc.message}") from None


def parse_config(data: Any, env: Mapping[str, str] | None = None) -> Config:
    """Decode and check an already-loaded YAML document."""
    if not isinstance(data, dict):
        raise ConfigError("the configuration must be a mapping with `providers` and `models`")
    data = _expand(data, os.environ if env is None else env, "")
    return _check(_decode(data))


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, env)


def zero_config(env: Mapping[str, str] | None = None) -> Config:
    """The config used when none is given.

    With ``OPENAI_BASE_URL`` set, every model goes to that OpenAI-compatible
    upstream (with ``OPENAI_API_KEY`` when set); otherwise the built-in demo
    provider serves every model, with no keys and no network, pausing 300 ms
    between streamed events so partial images visibly sharpen.
    """
    env = os.environ if env is None else env
    if base_url := env.get("OPENAI_BASE_URL"):
        provider = {"adapter": "openai", "base_url": base_url}
        if api_key := env.get("OPENAI_API_KEY"):
            provider["api_key"] = api_key
        data = {"providers": {"openai": provider}, "models": {WILDCARD: [{"provider": "openai"}]}}
    else:
        data = {
            # Paced so that partial images visibly sharpen in the playground.
            "providers": {"demo": {"adapter": "demo", "options": {"interval_ms": 300}}},
            "models": {"demo-image": [{"provider": "demo"}], WILDCARD: [{"provider": "demo"}]},
        }
    # Values are literal: no ${VAR} expansion (a key may contain "${").
    return _check(_decode(data))
