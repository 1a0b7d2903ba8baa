"""Typed keys for what the application and each request carry (no module state)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from metrics import Metrics
from proxy.breaker import Breaker
from proxy.config import Config
from proxy.relay import RelaySettings
from proxy.routing import Router
from proxy.state import GatewayState

__all__ = ["BREAKERS", "CONFIG", "METRICS", "REGISTRY", "RELAY_SETTINGS", "REQUEST_ID", "ROUTER", "STATE"]


BREAKERS = web.AppKey("breakers", dict[tuple[str, int], Breaker])
CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
REGISTRY = web.AppKey("registry", CollectorRegistry)
RELAY_SETTINGS = web.AppKey("relay_settings", RelaySettings)
ROUTER = web.AppKey("router", Router)
STATE = web.AppKey("state", GatewayState)
REQUEST_ID = web.RequestKey("request_id", str)
