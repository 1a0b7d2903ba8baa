"""Typed keys for what the application and each request carry (no module state)."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry

from metrics import Metrics
from proxy.config import Config
from proxy.relay import RelaySettings
from proxy.routing import Router

__all__ = ["CONFIG", "METRICS", "REGISTRY", "RELAY_SETTINGS", "REQUEST_ID", "ROUTER", "STATE", "GatewayState"]


@dataclass(slots=True)
class GatewayState:
    # False until start-up finished and again once shutdown began.
    ready: bool = False


CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
REGISTRY = web.AppKey("registry", CollectorRegistry)
RELAY_SETTINGS = web.AppKey("relay_settings", RelaySettings)
ROUTER = web.AppKey("router", Router)
STATE = web.AppKey("state", GatewayState)
REQUEST_ID = web.RequestKey("request_id", str)
