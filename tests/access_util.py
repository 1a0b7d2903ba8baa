"""Configs and clients for the access-control tests: real keys, real hashes, the in-process demo provider."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import aiohttp
from multidict import CIMultiDict

from pixelgate.proxy.access.keys import generate_key, hash_key

GENERATIONS = "/v1/images/generations"
SMALL = {"model": "demo-image", "prompt": "a lighthouse", "size": "16x16"}


def key_entry(name: str, key: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "hash": hash_key(key), **fields}


def demo_config(keys: Iterable[dict[str, Any]] = (), *, server: dict[str, Any] | None = None,
                prices: dict[str, Any] | None = None, **access: Any) -> dict[str, Any]:
    """The in-process demo provider (fast, no socket) behind gateway keys."""
    return {
        "server": server or {},
        "providers": {"demo": {"adapter": "demo"}},
        "models": {"demo-image": [{"provider": "demo"}], "other-image": [{"provider": "demo"}]},
        "routing": {"retries": 0},
        "prices": prices or {},
        "access": {"keys": list(keys), **access},
    }


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str] | None = None
               ) -> tuple[int, CIMultiDict[str], bytes]:
    async with session.post(url, json=body, headers=headers or {}) as resp:
        return resp.status, resp.headers.copy(), await resp.read()


async def burst(urls: str | list[str], n: int, body: dict[str, Any], headers: dict[str, str]
                ) -> list[tuple[int, CIMultiDict[str], bytes]]:
    """``n`` requests at once, each on its own connection, spread over ``urls`` in turn."""
    urls = [urls] if isinstance(urls, str) else urls
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        return await asyncio.gather(*(post(session, urls[i % len(urls)], body, headers) for i in range(n)))


def new_key() -> str:
    return generate_key()
