"""Stored images behind signed URLs (proxy.storage): the local directory and a real SeaweedFS S3 server.

Nothing is mocked: objects are streamed into a directory or into SeaweedFS
(``tests/seaweedfs_server.py``), fetched back over HTTP from the gateway (its
``/files/`` route) or from SeaweedFS itself (presigned URLs), and checked byte
for byte and by an independent SHA-256.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import aiohttp
import msgspec
import obstore
import pytest
from aiohttp.test_utils import TestServer

from pixelgate.proxy.app_keys import STORAGE
from pixelgate.proxy.config import ConfigError, parse_config
from pixelgate.proxy.storage.b64decode import Base64Error, Base64ToBytes
from pixelgate.proxy.storage.base import ObjectTooLarge, Storage, StoredObject, created_ms, is_object_id
from pixelgate.proxy.storage.config import StorageConfig
from pixelgate.proxy.storage.local import LocalStorage
from pixelgate.proxy.storage.s3 import S3Storage
from pixelgate.proxy.storage.signing import UrlSigner, Verdict
from pixelgate.proxy.storage.sweeper import sweep_once
from tests.procs import ROOT
from tests.seaweedfs_server import SeaweedS3

KEY_OLD = "old-key-0123456789abcdefghijklmnopqrstuvwxyz"
KEY_NEW = "new-key-0123456789abcdefghijklmnopqrstuvwxyz"
MiB = 1024 * 1024
CHUNK = 64 * 1024


def chunks(size: int, seed: int = 1) -> Iterator[bytes]:
    rnd = random.Random(seed)
    for start in range(0, size, CHUNK):
        yield rnd.randbytes(min(CHUNK, size - start))


def whole(size: int, seed: int = 1) -> bytes:
    return b"".join(chunks(size, seed))


def config(storage: dict[str, Any]) -> dict[str, Any]:
    return {"providers": {"demo": {"adapter": "demo"}}, "models": {"demo-image": [{"provider": "demo"}]}, "storage": storage}


def local_section(path: Path, **extra: Any) -> dict[str, Any]:
    return {"backend": "local", "local": {"path": str(path)}, "signing_keys": [KEY_OLD], **extra}


def storage_config(section: dict[str, Any]) -> StorageConfig:
    parsed = parse_config(config(section), env={}).storage
    assert parsed is not None
    return parsed


def base_url(server: TestServer) -> str:
    return f"http://{server.host}:{server.port}"


async def write(storage: Storage, size: int, seed: int = 1, content_type: str = "image/png") -> StoredObject:
    async with storage.writer(content_type) as w:
        for chunk in chunks(size, seed):
            await w.write(chunk)
    return w.object


async def fetch(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.request(method, url) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


async def s3_keys(s3: SeaweedS3, prefix: str) -> list[str]:
    keys: list[str] = []
    async for batch in obstore.list(s3.store(), prefix.rstrip("/")):
        keys.extend(m["path"] for m in batch)
    return sorted(keys)


# The local directory, served by the gateway.


async def test_local_write_records_the_object_and_serves_it_behind_a_signed_url(gateway, tmp_path: Path) -> None:
    server = await gateway(config(local_section(tmp_path / "images")))
    storage = server.app[STORAGE]
    size = 3 * MiB + 123
    obj = await write(storage, size)
    data = whole(size)
    assert is_object_id(obj.id)
    assert (obj.content_type, obj.size, obj.sha256) == ("image/png", size, hashlib.sha256(data).hexdigest())
    assert obj.expires_at == pytest.approx(obj.created_at + 24 * 3600)
    # The record is on disk beside the bytes, and nothing else is.
    hour = str(created_ms(obj.id) // 3_600_000)
    assert files_under(tmp_path / "images") == [f"{hour}/{obj.id}", f"{hour}/{obj.id}.json"]
    assert msgspec.json.decode((tmp_path / "images" / hour / f"{obj.id}.json").read_bytes(), type=StoredObject) == obj
    assert await storage.record(obj.id) == obj

    url = await storage.url(obj.id, base_url(server))
    parts = urlsplit(url)
    assert parts.path == f"/files/{obj.id}"
    assert set(parse_qs(parts.query)) == {"expires", "sig"}
    status, headers, body = await fetch(url)
    assert status == 200
    assert body == data
    assert headers["Content-Type"] == "image/png"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in headers["Content-Security-Policy"]
    assert headers["Cache-Control"].startswith("private, max-age=")
    status, headers, body = await fetch(url, "HEAD")
    assert (status, body, int(headers["Content-Length"])) == (200, b"", size)
    async with aiohttp.ClientSession() as session, session.get(url, headers={"Range": "bytes=100-199"}) as resp:
        assert (resp.status, await resp.read()) == (206, data[100:200])


async def test_a_url_lives_url_ttl_and_never_past_retention(gateway, tmp_path: Path) -> None:
    server = await gateway(config(local_section(tmp_path, url_ttl=600, ttl=3600)))
    storage = server.app[STORAGE]
    obj = await write(storage, 10)
    expires = int(parse_qs(urlsplit(await storage.url(obj.id, base_url(server))).query)["expires"][0])
    assert abs(expires - (time.time() + 600)) <= 2
    server = await gateway(config(local_section(tmp_path, url_ttl=600, ttl=60)))
    storage = server.app[STORAGE]
    obj = await write(storage, 10)
    expires = int(parse_qs(urlsplit(await storage.url(obj.id, base_url(server))).query)["expires"][0])
    assert expires == int(obj.created_at + 60)


async def test_public_url_is_the_base_of_gateway_urls(gateway, tmp_path: Path) -> None:
    server = await gateway(config(local_section(tmp_path, public_url="https://images.example.com/")))
    storage = server.app[STORAGE]
    obj = await write(storage, 10)
    assert (await storage.url(obj.id, "http://ignored")).startswith(f"https://images.example.com/files/{obj.id}?expires=")


def _error(body: bytes) -> dict[str, Any]:
    envelope = json.loads(body)
    assert set(envelope) == {"error"} and set(envelope["error"]) == {"message", "type", "param", "code"}
    return envelope["error"]


async def test_an_expired_url_is_403_url_expired(gateway, tmp_path: Path) -> None:
    server = await gateway(config(local_section(tmp_path)))
    storage = server.app[STORAGE]
    obj = await write(storage, 100)
    assert storage.signer is not None
    past = int(time.time()) - 1
    status, headers, body = await fetch(f"{base_url(server)}/files/{obj.id}?expires={past}&sig={storage.signer.sign(obj.id, past)}")
    assert status == 403
    assert headers["Content-Type"].startswith("application/json")
    assert _error(body)["code"] == "url_expired"
    # The same object, signed until later, is served.
    later = int(time.time()) + 60
    status, _, body = await fetch(f"{base_url(server)}/files/{obj.id}?expires={later}&sig={storage.signer.sign(obj.id, later)}")
    assert (status, len(body)) == (200, 100)


async def test_tampered_urls_are_403_invalid_signature(gateway, tmp_path: Path) -> None:
    server = await gateway(config(local_section(tmp_path)))
    storage = server.app[STORAGE]
    obj, other = await write(storage, 100), await write(storage, 100, seed=2)
    url = await storage.url(obj.id, base_url(server))
    query = parse_qs(urlsplit(url).query)
    expires, sig = query["expires"][0], query["sig"][0]
    flipped = sig[:-1] + ("A" if sig[-1] != "A" else "Q")
    base = f"{base_url(server)}/files"
    tampered = [
        f"{base}/{obj.id}?expires={int(expires) + 1}&sig={sig}",      # a later expiry
        f"{base}/{obj.id}?expires={expires}&sig={flipped}",           # the signature changed
        f"{base}/{other.id}?expires={expires}&sig={sig}",             # another object's id
        f"{base}/{obj.id}?expires={expires}",                         # no signature
        f"{base}/{obj.id}?sig={sig}",                                 # no expiry
        f"{base}/{obj.id}?expires={expires}&sig={sig}x",              # malformed
        f"{base}/{obj.id}?expires=-1&sig={sig}",
        f"{base}/{obj.id}?expires={expires}&sig={UrlSigner([KEY_NEW]).sign(obj.id, int(expires))}",  # an unknown key
    ]
    for bad in tampered:
        status, _, body = await fetch(bad)
        assert status == 403, bad
        error = _error(body)
        assert (error["code"], error["type"]) == ("invalid_signature", "invalid_request_error"), bad
    assert (await fetch(url))[0] == 200


async def test_key_rotation_old_key_still_verifies_new_key_signs(gateway, tmp_path: Path) -> None:
    before = await gateway(config(local_section(tmp_path, signing_keys=[KEY_OLD])))
    during = await gateway(config(local_section(tmp_path, signing_keys=[KEY_NEW, KEY_OLD])))
    after = await gateway(config(local_section(tmp_path, signing_keys=[KEY_NEW])))
    obj = await write(before.app[STORAGE], 1000)
    old_url = await before.app[STORAGE].url(obj.id, base_url(before))
    new_url = await during.app[STORAGE].url(obj.id, base_url(during))
    old_sig, new_sig = (parse_qs(urlsplit(u).query)["sig"][0] for u in (old_url, new_url))
    expires = int(parse_qs(urlsplit(new_url).query)["expires"][0])
    assert new_sig == UrlSigner([KEY_NEW]).sign(obj.id, expires) != old_sig
    on = {server: old_url.replace(base_url(before), base_url(server)) for server in (before, during, after)}
    assert (await fetch(on[during]))[0] == 200          # the old key still verifies
    assert (await fetch(new_url))[0] == 200
    assert (await fetch(new_url.replace(base_url(during), base_url(before))))[0] == 403   # not known before
    status, _, body = await fetch(on[after])            # the old key dropped
    assert status == 403 and _error(body)["code"] == "invalid_signature"


def test_signer_verdicts_and_constant_time_shape() -> None:
    signer = UrlSigner([KEY_NEW, KEY_OLD])
    oid = "0" * 12 + "a" * 32
    sig = signer.sign(oid, 2000)
    assert signer.verify(oid, "2000", sig, now=1999.9) is Verdict.VALID
    assert signer.verify(oid, "2000", sig, now=2000) is Verdict.EXPIRED
    assert signer.verify(oid, "2000", UrlSigner([KEY_OLD]).sign(oid, 2000), now=0) is Verdict.VALID
    assert signer.verify(oid, "2001", sig, now=0) is Verdict.INVALID
    assert signer.verify(oid, "2000", None, now=0) is Verdict.INVALID
    assert signer.verify(oid, "2e3", sig, now=0) is Verdict.INVALID
    # base64 has several spellings of one digest (the last character's 2 spare bits):
    # only the canonical one is accepted.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    alias = sig[:-1] + alphabet[alphabet.index(sig[-1]) ^ 1]
    assert base64.urlsafe_b64decode(alias + "=") == base64.urlsafe_b64decode(sig + "=")
    assert signer.verify(oid, "2000", alias, now=0) is Verdict.INVALID


async def test_unknown_or_malformed_ids_are_404_only_with_a_valid_signature(gateway, tmp_path: Path) -> None:
    server = await gateway(config(local_section(tmp_path)))
    storage = server.app[STORAGE]
    assert storage.signer is not None
    expires = int(time.time()) + 60
    for object_id in ("f" * 44, "F" * 44, "..%2F..%2Fetc%2Fpasswd", "0" * 43):
        sig = storage.signer.sign(unquote(object_id), expires)
        status, _, body = await fetch(f"{base_url(server)}/files/{object_id}?expires={expires}&sig={sig}")
        assert status == 404 and _error(body)["code"] == "file_not_found", object_id
        status, _, body = await fetch(f"{base_url(server)}/files/{object_id}?expires={expires}&sig={'A' * 43}")
        assert status == 403, object_id


async def test_failed_writes_leave_nothing(gateway, tmp_path: Path) -> None:
    server = await gateway(config(local_section(tmp_path / "images", max_object_bytes=2 * MiB)))
    storage = server.app[STORAGE]
    with pytest.raises(RuntimeError, match="provider went away"):
        async with storage.writer("image/png") as w:
            for chunk in chunks(MiB):
                await w.write(chunk)
            raise RuntimeError("the provider went away")
    with pytest.raises(ObjectTooLarge):
        await write(storage, 3 * MiB)

    async def cancelled() -> None:
        async with storage.writer("image/webp") as w:
            await w.write(b"x" * 1000)
            await asyncio.sleep(60)

    task = asyncio.create_task(cancelled())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert files_under(tmp_path / "images") == []
    with pytest.raises(ValueError, match="content type"):
        async with storage.writer("text/html; charset=utf-8"):
            pass


async def test_retention_refuses_an_expired_object_before_the_sweeper_runs(gateway, tmp_path: Path) -> None:
    server = await gateway(config(local_section(tmp_path, ttl=3600, sweep_interval=3600)))
    storage = server.app[STORAGE]
    obj = await write(storage, 100)
    assert storage.signer is not None
    url = await storage.url(obj.id, base_url(server))
    assert (await fetch(url))[0] == 200
    # An hour later (the URL itself signed to outlive it): 404, though the file is still there.
    storage.clock = lambda: time.time() + 3601
    expires = int(time.time()) + 7200
    status, _, body = await fetch(f"{base_url(server)}/files/{obj.id}?expires={expires}&sig={storage.signer.sign(obj.id, expires)}")
    assert status == 404 and _error(body)["code"] == "file_not_found"
    assert await storage.record(obj.id) == obj


async def test_the_sweeper_task_removes_expired_objects_and_their_records(gateway, tmp_path: Path) -> None:
    server = await gateway(config(local_section(tmp_path / "images", ttl=1, sweep_interval=0.1)))
    storage = server.app[STORAGE]
    obj = await write(storage, 1000)
    assert len(files_under(tmp_path / "images")) == 2
    async with asyncio.timeout(10):
        while files_under(tmp_path / "images"):
            await asyncio.sleep(0.05)
    assert await storage.record(obj.id) is None
    assert time.time() - obj.created_at >= 1


async def test_a_sweep_is_bounded_oldest_first_and_takes_leftovers(tmp_path: Path) -> None:
    storage = LocalStorage(storage_config(local_section(tmp_path, ttl=60, sweep_batch=2)))
    await storage.start()
    now = time.time()
    # Three objects two hours old (in another hour directory), one 30 s old.
    storage.clock = lambda: now - 7200
    old = [await write(storage, 10, seed=i) for i in range(3)]
    storage.clock = lambda: now - 30
    young = await write(storage, 10)
    # A crashed write's leftover, as old as the rest (its id sorts after theirs).
    leftover = tmp_path / str(created_ms(old[0].id) // 3_600_000) / f".{old[0].id[:12]}{'f' * 32}.part"
    leftover.write_bytes(b"partial")
    storage.clock = lambda: now

    async def left() -> int:
        return sum([await storage.record(o.id) is not None for o in old])

    assert await sweep_once(storage) == 2
    assert await left() == 1
    assert await sweep_once(storage) == 1  # the last old one, and the leftover
    assert await left() == 0 and not leftover.exists()
    assert await sweep_once(storage) == 0
    hour = str(created_ms(young.id) // 3_600_000)
    assert files_under(tmp_path) == [f"{hour}/{young.id}", f"{hour}/{young.id}.json"]
    # The emptied hour directory is gone too.
    assert not leftover.parent.exists()


async def test_no_storage_section_no_files_route(gateway) -> None:
    server = await gateway(config(None))  # type: ignore[arg-type]
    assert STORAGE not in server.app
    assert (await fetch(f"{base_url(server)}/files/{'0' * 44}?expires=1&sig=x"))[0] == 404


# Config.


def test_storage_config_is_off_by_default_and_checked() -> None:
    assert parse_config({"providers": {"d": {"adapter": "demo"}}, "models": {"m": [{"provider": "d"}]}}, env={}).storage is None
    section = storage_config({"signing_keys": [KEY_OLD]})
    assert (section.backend, section.ttl, section.local.path, section.s3) == ("local", 86400, "./data/images", None)
    bad = {
        "storage.signing_keys: needed": {},
        "storage.signing_keys[0]: shorter": {"signing_keys": ["short"]},
        "storage.signing_keys: the same key": {"signing_keys": [KEY_OLD, KEY_OLD]},
        "storage.s3: backend is s3": {"backend": "s3"},
        "storage.s3: Object missing required field `bucket`": {"backend": "s3", "s3": {}},
        "storage.s3.prefix": {"backend": "s3", "s3": {"bucket": "b", "prefix": "no-slash"}},
        "storage.s3.part_size": {"backend": "s3", "s3": {"bucket": "b", "part_size": 1024}},
        "storage.s3: access_key_id and secret_access_key": {"backend": "s3", "s3": {"bucket": "b", "access_key_id": "x"}},
        "storage.url_ttl: presigned": {"backend": "s3", "s3": {"bucket": "b"}, "url_ttl": 8 * 86400},
        "storage.public_url": {"signing_keys": [KEY_OLD], "public_url": "images.example.com"},
        "storage.ttl": {"signing_keys": [KEY_OLD], "ttl": 0},
        "storage: Object contains unknown field `surprise`": {"signing_keys": [KEY_OLD], "surprise": 1},
    }
    for message, section_data in bad.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_config(config(section_data), env={})
    # Presigned S3 URLs need no gateway keys; gateway-served ones do.
    assert storage_config({"backend": "s3", "s3": {"bucket": "b"}}).signing_keys == []
    with pytest.raises(ConfigError, match=r"storage\.signing_keys"):
        parse_config(config({"backend": "s3", "s3": {"bucket": "b", "urls": "gateway"}}), env={})
    # Keys come from the environment, and never show up in a message.
    env = {"K": "k" * 31}
    with pytest.raises(ConfigError) as err:
        parse_config(config({"signing_keys": ["${K}"]}), env=env)
    assert "k" * 31 not in str(err.value)


# Incremental base64 decoding.


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 1000, 65537])
@pytest.mark.parametrize("step", [1, 3, 4, 5, 7, 4096])
def test_base64_decoder_joins_into_the_whole_at_any_chunking(size: int, step: int) -> None:
    data = whole(size, seed=size)
    text = base64.b64encode(data)
    decoder = Base64ToBytes()
    out = b"".join(decoder.feed(text[i:i + step]) for i in range(0, len(text), step)) + decoder.finish()
    assert out == data


def test_base64_decoder_skips_line_breaks_and_accepts_missing_padding() -> None:
    data = whole(1000)
    mime = base64.encodebytes(data)  # 76-character lines
    decoder = Base64ToBytes()
    assert b"".join(decoder.feed(mime[i:i + 10]) for i in range(0, len(mime), 10)) + decoder.finish() == data
    decoder = Base64ToBytes()
    assert decoder.feed(base64.b64encode(b"ab").rstrip(b"=")) + decoder.finish() == b"ab"


def test_base64_decoder_json_escapes_even_cut_by_a_chunk_boundary() -> None:
    data = bytes(range(256)) * 40
    text = base64.b64encode(data)
    assert b"/" in text
    # Slashes escaped as JSON may write them (\/ or \u002F), a plus as \u002b.
    spellings = {b"/": [b"\\/"] * 3 + [b"\\u002F"] * 2, b"+": [b"\\u002b"]}
    escaped = b"".join(spellings[c].pop() if spellings.get(c) else c for c in (text[i:i + 1] for i in range(len(text))))
    assert escaped.count(b"\\") == 6
    for step in (1, 2, 5, 6, 7, 13):
        decoder = Base64ToBytes(json_escapes=True)
        out = b"".join(decoder.feed(escaped[i:i + step]) for i in range(0, len(escaped), step)) + decoder.finish()
        assert out == data, step


@pytest.mark.parametrize("text", [b"QUJD*EFG", b'QUJD\\"AAA', b"QUJD\\\\AAA", b"QUJD\\u00e9AA", b"QUJD\\u00", b"QQ==QUJD", b"Q", b"QUJDRA==Rg"])
def test_base64_decoder_refuses_what_is_not_base64(text: bytes) -> None:
    decoder = Base64ToBytes(json_escapes=b"\\" in text)
    with pytest.raises(Base64Error):
        for i in range(0, len(text), 3):
            decoder.feed(text[i:i + 3])
        decoder.finish()


async def test_a_b64_json_stream_is_stored_decoded(tmp_path: Path) -> None:
    storage = LocalStorage(storage_config(local_section(tmp_path)))
    await storage.start()
    data = whole(200_000)
    text = base64.b64encode(data)
    decoder = Base64ToBytes(json_escapes=True)
    async with storage.writer("image/png") as w:
        for i in range(0, len(text), 8191):
            await w.write(decoder.feed(text[i:i + 8191]))
        await w.write(decoder.finish())
    assert (w.object.size, w.object.sha256) == (len(data), hashlib.sha256(data).hexdigest())


# A real S3 server: SeaweedFS.


@pytest.fixture
async def s3_storage(seaweedfs: SeaweedS3, s3_prefix: str):
    """``s3_storage(**storage)``: a started S3Storage under this test's prefix, closed afterwards."""
    made: list[S3Storage] = []

    async def make(s3: dict[str, Any] | None = None, **storage: Any) -> S3Storage:
        section = {"backend": "s3", "s3": seaweedfs.storage_section(s3_prefix, **(s3 or {})), **storage}
        made.append(S3Storage(storage_config(section)))
        await made[-1].start()
        return made[-1]

    yield make
    for storage in made:
        await storage.close()


async def test_s3_streams_20_mb_as_multipart_and_presigns_urls_seaweedfs_serves(seaweedfs: SeaweedS3, s3_prefix: str, s3_storage) -> None:
    storage = await s3_storage()
    size = 20 * MiB
    obj = await write(storage, size)
    data = whole(size)
    assert (obj.size, obj.sha256, obj.content_type) == (size, hashlib.sha256(data).hexdigest(), "image/png")
    key = f"{s3_prefix}{obj.id}"
    assert await s3_keys(seaweedfs, s3_prefix) == [key, f"{key}.json"]
    # Uploaded in 5 MiB parts as it arrived: S3's ETag of a multipart object ends in -<parts>.
    meta = await obstore.head_async(seaweedfs.store(), key)
    assert meta["size"] == size
    assert meta["e_tag"] is not None and meta["e_tag"].strip('"').endswith("-4")
    record = await obstore.get_async(seaweedfs.store(), f"{key}.json")
    assert msgspec.json.decode(bytes(await record.bytes_async()), type=StoredObject) == obj
    assert await storage.record(obj.id) == obj

    url = await storage.url(obj.id)
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == seaweedfs.endpoint and parts.path == f"/{seaweedfs.bucket}/{key}"
    assert int(parse_qs(parts.query)["X-Amz-Expires"][0]) in (3599, 3600)
    status, headers, body = await fetch(url)
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert hashlib.sha256(body).hexdigest() == obj.sha256
    # SeaweedFS checks the signature: a changed one, or none, is refused.
    sig = parse_qs(parts.query)["X-Amz-Signature"][0]
    assert (await fetch(url.replace(sig, sig[:-1] + ("0" if sig[-1] != "0" else "1"))))[0] == 403
    assert (await fetch(f"{seaweedfs.endpoint}/{seaweedfs.bucket}/{key}"))[0] == 403

    await storage.delete(obj.id)
    assert await s3_keys(seaweedfs, s3_prefix) == []


async def test_s3_failed_writes_leave_nothing(seaweedfs: SeaweedS3, s3_prefix: str, s3_storage) -> None:
    storage = await s3_storage(max_object_bytes=12 * MiB)
    with pytest.raises(RuntimeError):
        async with storage.writer("image/png") as w:
            # Past one part: the multipart upload has begun, and is aborted.
            for chunk in chunks(7 * MiB):
                await w.write(chunk)
            raise RuntimeError("the provider went away")
    with pytest.raises(ObjectTooLarge):
        await write(storage, 13 * MiB)
    with pytest.raises(RuntimeError):
        async with storage.writer("image/png") as w:
            await w.write(b"small, never uploaded")
            raise RuntimeError("early")
    assert await s3_keys(seaweedfs, s3_prefix) == []


async def test_s3_gateway_urls_are_served_by_the_gateway(gateway, seaweedfs: SeaweedS3, s3_prefix: str) -> None:
    section = {"backend": "s3", "s3": seaweedfs.storage_section(s3_prefix, urls="gateway"), "signing_keys": [KEY_OLD]}
    server = await gateway(config(section))
    storage = server.app[STORAGE]
    size = 6 * MiB + 1
    obj = await write(storage, size, content_type="image/webp")
    url = await storage.url(obj.id, base_url(server))
    assert url.startswith(f"{base_url(server)}/files/{obj.id}?expires=")
    status, headers, body = await fetch(url)
    assert status == 200 and headers["Content-Type"] == "image/webp" and int(headers["Content-Length"]) == size
    assert body == whole(size)
    status, headers, body = await fetch(url, "HEAD")
    assert (status, body) == (200, b"")
    assert (await fetch(url.replace("sig=", "sig=A")))[0] == 403
    await storage.delete(obj.id)
    status, _, body = await fetch(url)
    assert status == 404 and _error(body)["code"] == "file_not_found"


async def test_s3_sweep_lists_the_prefix_oldest_first_in_bounded_batches(seaweedfs: SeaweedS3, s3_prefix: str, s3_storage) -> None:
    storage = await s3_storage(ttl=60, sweep_batch=2)
    now = time.time()
    storage.clock = lambda: now - 120
    old = [await write(storage, 1000, seed=i) for i in range(3)]
    storage.clock = lambda: now - 10
    young = await write(storage, 1000)
    storage.clock = lambda: now
    assert await sweep_once(storage) == 2
    assert await sweep_once(storage) == 1
    assert await sweep_once(storage) == 0
    key = f"{s3_prefix}{young.id}"
    assert await s3_keys(seaweedfs, s3_prefix) == [key, f"{key}.json"]
    assert [await storage.record(o.id) for o in old] == [None] * 3


_RSS_PROBE = """
import asyncio, json, random, sys
import msgspec
from pixelgate.proxy.storage.config import StorageConfig
from pixelgate.proxy.storage.s3 import S3Storage

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

async def write(storage, size):
    rnd = random.Random(size)
    async with storage.writer("image/png") as w:
        for _ in range(size // 65536):
            await w.write(rnd.randbytes(65536))

async def main():
    storage = S3Storage(msgspec.convert(json.loads(sys.argv[1]), StorageConfig))
    await storage.start()
    await write(storage, 6 * 2**20)  # warm up: the runtime, the connection pool, one multipart upload
    growth = {}
    for size in (20 * 2**20, 80 * 2**20):
        base = status("VmRSS:")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the peak RSS, to the current RSS
        await write(storage, size)
        growth[size] = status("VmHWM:") - base
    await storage.close()
    print(json.dumps(growth))

asyncio.run(main())
"""


def test_s3_write_memory_does_not_grow_with_the_object(seaweedfs: SeaweedS3, s3_prefix: str) -> None:
    """Peak RSS of a process writing 20 MB and then 80 MB: a part or two, whatever the size."""
    section = {"backend": "s3", "s3": seaweedfs.storage_section(s3_prefix)}
    probe = subprocess.run([sys.executable, "-c", _RSS_PROBE, json.dumps(section)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    growth = {int(k): v for k, v in json.loads(probe.stdout).items()}
    # part_size 5 MiB, one part in flight: about 10 MiB at most.
    assert growth[20 * MiB] < 16 * MiB, growth
    assert growth[80 * MiB] < 16 * MiB, growth
