"""The official openai Node SDK (tests/node, pinned by its package-lock.json) editing through the gateway."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GatewayFactory, single_provider_config, v1
from tests.test_edits import Upstream, _image, _sha, _upstream

NODE_DIR = Path(__file__).parent / "node"
needs_sdk = pytest.mark.skipif(
    shutil.which("node") is None or not (NODE_DIR / "node_modules" / "openai").is_dir(),
    reason="needs node and tests/node/node_modules (make test runs npm ci there)",
)


@needs_sdk
async def test_node_sdk_streamed_edit_with_two_images_and_a_mask(aiohttp_server: Any, gateway: GatewayFactory, tmp_path: Path) -> None:
    upstream = Upstream()
    up = await _upstream(aiohttp_server, upstream)
    gw = await gateway(single_provider_config(v1(up)))
    a, b, mask = _image("PNG", (64, 48)), _image("PNG", (10, 10), (1, 2, 3, 255)), _image("PNG", (64, 48), (0, 0, 0, 0))
    paths = []
    for name, data in (("a.png", a), ("b.png", b), ("m.png", mask)):
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    proc = await asyncio.create_subprocess_exec(
        "node", str(NODE_DIR / "edit.mjs"), v1(gw), paths[0], paths[1], "--mask", paths[2],
        cwd=NODE_DIR, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    events = json.loads(out)
    assert [e["type"] for e in events] == ["image_edit.partial_image", "image_edit.partial_image", "image_edit.completed"]
    assert events[-1]["usage"]["input_tokens_details"]["image_tokens"] == 40
    (parts,) = upstream.received
    assert [(p[0], p[4]) for p in parts if p[1]] == [("image[]", _sha(a)), ("image[]", _sha(b)), ("mask", _sha(mask))]
