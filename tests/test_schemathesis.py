"""The three seed gateways' OpenAPI documents (tests/specs/) as schemathesis runs
them against a real gateway process: positive and negative data, server-error
and schema checks. Bounded in examples and time, loopback only."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import free_port, stop, wait_http

SPECS = Path(__file__).parent / "specs"
ST = Path(sys.executable).with_name("st")
# Each document's paths, relative to where its servers put them.
BASES = {"aistats": "/v1", "aihubmix": "", "truefoundry": "/v1"}


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PIXELGATE_CONFIG", "OPENAI_BASE_URL", "OPENAI_API_KEY")}
    # Thousands of requests: the access log goes to a file, not a pipe nobody drains.
    log = (tmp_path_factory.mktemp("schemathesis") / "gateway.log").open("w")
    # Zero-config: the demo provider serves every model.
    proc = subprocess.Popen([sys.executable, "-m", "pixelgate", "serve", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=Path(__file__).parent.parent, env=env, stdout=log, stderr=log)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)
        log.close()


@pytest.mark.parametrize("spec", sorted(BASES))
def test_no_server_error_and_documented_shapes(gateway_url: str, spec: str, tmp_path: Path) -> None:
    if not ST.exists():
        pytest.fail("schemathesis is not installed: make test installs requirements-dev.lock")
    result = subprocess.run(
        [str(ST), "run", str(SPECS / f"{spec}.yaml"), "--url", gateway_url + BASES[spec],
         # Not content_type_conformance: the documents declare only JSON for 200,
         # while `stream: true` (which they also declare) answers text/event-stream.
         "--checks", "not_a_server_error,response_schema_conformance",
         "--mode", "all", "--max-examples", "25", "--max-time", "10", "--seed", "20261203", "--workers", "1",
         "--request-timeout", "20", "--no-color"],
        # Its example database and reports go to a temp dir, not the checkout.
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout, result.stdout[-4000:]
