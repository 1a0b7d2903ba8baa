"""The playground page and its browser client, in a real Chromium.

The gateway runs as a subprocess (``python -m pixelgate serve``, as users run it)
with the demo provider made slow, so partial images arrive over time, and a
fake OpenAI-compatible upstream (a plain ``http.server`` on loopback) for
errors, for watching the upstream connection close, and for edits: it records
the multipart form the gateway forwards (files byte for byte) and answers with
the first image, its masked area filled. Playwright's sync API
drives Debian's Chromium (``/usr/bin/chromium``; Playwright's own browser
downloads are not used). A second gateway has async jobs (SQLite) and local
storage, for the playground's "Run as job" and "Return URLs" options. The
browser client has Node unit tests in ``tests/js/`` (its jobs against a real
gateway too), run here so ``make test`` covers them.

Only a missing ``/usr/bin/chromium`` or ``node`` skips tests.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.procs import ROOT, free_port, wait_http

CHROMIUM = Path("/usr/bin/chromium")
NODE = shutil.which("node")
ARTIFACTS = ROOT / "artifacts"

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium (apt-get install chromium)"
)
needs_node = pytest.mark.skipif(NODE is None, reason="needs Node.js (`node`) to run tests/js/")

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Upstream models the fake upstream answers (the gateway routes them to it).
RATE_LIMIT_MESSAGE = "Rate limit exceeded for images per minute"
MID_STREAM_MESSAGE = "The upstream image model crashed while drawing"


def _gradient(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height))
    image.putdata([(x * 4 % 256, y * 4 % 256, 160) for y in range(height) for x in range(width)])
    return image


def _encoded(image: Image.Image, format: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=format)
    return out.getvalue()


def _png_b64(size: int = 64) -> str:
    return base64.b64encode(_encoded(_gradient(size, size))).decode()


def _event(kind: str, **fields: Any) -> bytes:
    data = {"type": kind, **fields}
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _partial(kind: str) -> bytes:
    return _event(
        f"{kind}.partial_image", b64_json=_png_b64(), partial_image_index=0, created_at=1,
        size="64x64", quality="low", background="opaque", output_format="png",
    )


PARTIAL = _partial("image_generation")
# What the fake upstream paints where the mask is transparent.
EDIT_FILL = (20, 200, 60)


@dataclass
class Part:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def _multipart(content_type: str, body: bytes) -> list[Part]:
    """Split a multipart/form-data body by its boundary: the exact bytes of each part."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    assert match, content_type
    delimiter = b"--" + match.group(1).encode()
    assert body.startswith(delimiter + b"\r\n"), body[:80]
    chunks = body[len(delimiter) :].split(b"\r\n" + delimiter)
    assert chunks[-1] in (b"--\r\n", b"--"), chunks[-1][:80]
    parts = []
    for chunk in chunks[:-1]:
        assert chunk.startswith(b"\r\n")
        head, _, data = chunk[2:].partition(b"\r\n\r\n")
        headers = head.decode()
        disposition = re.search(r'name="([^"]*)"(?:; filename="([^"]*)")?', headers)
        assert disposition, headers
        type_ = re.search(r"(?im)^content-type:\s*(\S+)", headers)
        parts.append(Part(disposition.group(1), disposition.group(2), type_.group(1) if type_ else None, data))
    return parts


@dataclass
class EditSeen:
    """An edit as the fake upstream received it from the gateway."""

    path: str
    fields: dict[str, str]
    files: list[Part]


def _edit_images(edit: EditSeen, count: int) -> tuple[list[bytes], bytes, str]:
    """The fake edit: the first image with its masked area filled, and `count` partials, coarse to fine."""
    with Image.open(io.BytesIO(edit.files[0].data)) as first:
        final = first.convert("RGB")
    masks = [part for part in edit.files if part.name == "mask"]
    if masks:
        with Image.open(io.BytesIO(masks[0].data)) as mask:
            hole = mask.convert("RGBA").getchannel("A").point(lambda a: 255 if a == 0 else 0)
        final.paste(EDIT_FILL, mask=hole)
    width, height = final.size
    partials = [
        _encoded(final.resize((max(1, width // f), max(1, height // f))).resize(final.size, Image.Resampling.NEAREST))
        for f in (16, 8, 4)[:count]
    ]
    return partials, _encoded(final), f"{width}x{height}"


class FakeUpstream:
    """An OpenAI-compatible upstream on loopback, answering by model name.

    - ``rate-limited``: 429 with OpenAI's error envelope.
    - ``fails-mid-stream``: one partial image, then an ``event: error``.
    - ``hangs``: one partial image, then nothing until the gateway closes the
      connection; ``closed`` is set (and ``closed_at`` recorded) when it does.
    - ``fake-edit`` (edits): ``partial_images`` partials 250 ms apart, then the
      first image with its mask's transparent area painted ``EDIT_FILL``.

    Edits (multipart) are recorded in ``edits``, their files' bytes as received.
    """

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.edits: list[EditSeen] = []
        self.closed = threading.Event()
        self.closed_at = 0.0
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                content_type = self.headers.get("Content-Type", "")
                edit = None
                if content_type.startswith("multipart/form-data"):
                    parts = _multipart(content_type, raw)
                    fields = {p.name: p.data.decode() for p in parts if p.filename is None}
                    edit = EditSeen(self.path, fields, [p for p in parts if p.filename is not None])
                    upstream.edits.append(edit)
                    model = fields.get("model")
                else:
                    model = json.loads(raw).get("model")
                upstream.requests.append(model)
                if model == "rate-limited":
                    envelope = {"error": {"message": RATE_LIMIT_MESSAGE, "type": "requests", "param": None, "code": "rate_limit_exceeded"}}
                    payload = json.dumps(envelope).encode()
                    self.send_response(429)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                kind = "image_generation" if edit is None else "image_edit"
                if model == "fake-edit" and edit is not None:
                    partials, final, size = _edit_images(edit, int(edit.fields.get("partial_images", "0")))
                    meta = {"created_at": 1, "size": size, "quality": "low", "background": "opaque", "output_format": "png"}
                    for index, png in enumerate(partials):
                        b64 = base64.b64encode(png).decode()
                        self.wfile.write(_event(f"{kind}.partial_image", b64_json=b64, partial_image_index=index, **meta))
                        self.wfile.flush()
                        time.sleep(0.25)
                    usage = {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}
                    self.wfile.write(_event(f"{kind}.completed", b64_json=base64.b64encode(final).decode(), usage=usage, **meta))
                    return
                self.wfile.write(_partial(kind))
                self.wfile.flush()
                if model == "fails-mid-stream":
                    time.sleep(0.3)
                    error = {"type": "error", "error": {"message": MID_STREAM_MESSAGE, "type": "server_error", "param": None, "code": "server_error"}}
                    self.wfile.write(b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n")
                    return
                # "hangs": wait for the gateway to close the connection (EOF or reset).
                self.connection.settimeout(20)
                with contextlib.suppress(OSError):
                    self.connection.recv(1)
                upstream.closed_at = time.monotonic()
                upstream.closed.set()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeUpstream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def fake_upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def gateway_url(fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The gateway, as a process: a slow demo provider and the fake upstream."""
    tmp = tmp_path_factory.mktemp("playground")
    port = free_port()
    config = {
        "server": {"host": "127.0.0.1", "port": port, "playground": True, "shutdown_timeout": 1},
        "providers": {
            # Slow on purpose: partial images arrive 600 ms apart.
            "demo": {"adapter": "demo", "options": {"latency_ms": 300, "interval_ms": 600}},
            "fake": {"adapter": "openai", "base_url": fake_upstream.base_url, "api_key": "sk-upstream"},
        },
        "models": {
            "demo-image": [{"provider": "demo"}],
            "rate-limited": [{"provider": "fake"}],
            "fails-mid-stream": [{"provider": "fake"}],
            "hangs": [{"provider": "fake"}],
            "fake-edit": [{"provider": "fake"}],
        },
        "routing": {"backoff_base": 0.01, "backoff_max": 0.05},
    }
    with _gateway(config, tmp) as url:
        yield url


@pytest.fixture(scope="module")
def jobs_gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway with async jobs (SQLite) and URLs (local storage): the demo provider, and a slow one (60 s)."""
    tmp = tmp_path_factory.mktemp("playground-jobs")
    port = free_port()
    config = {
        "server": {"host": "127.0.0.1", "port": port, "playground": True, "shutdown_timeout": 1},
        "providers": {
            "demo": {"adapter": "demo", "options": {"latency_ms": 400, "interval_ms": 600}},
            "slow": {"adapter": "demo", "options": {"latency_ms": 60_000}},
        },
        "models": {"demo-image": [{"provider": "demo"}], "slow-image": [{"provider": "slow"}]},
        "storage": {"local": {"path": str(tmp / "images")}, "signing_keys": ["playground-key-0123456789abcdefghijklmnopqrstuvwxyz"]},
        "jobs": {"path": str(tmp / "jobs.sqlite3"), "poll_interval": 0.2},
    }
    with _gateway(config, tmp) as url:
        yield url


@contextlib.contextmanager
def _gateway(config: dict[str, Any], tmp: Path) -> Iterator[str]:
    """`python -m pixelgate serve` with `config`, until the block ends; its base URL."""
    port = config["server"]["port"]
    path = tmp / "pixelgate.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    log = (tmp / "gateway.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pixelgate", "serve", "--config", str(path)],
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL, stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/readyz", proc)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # Imported here so the Node test runs even where Playwright is missing.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # launch() gives every browser a fresh temporary profile (user-data-dir).
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, gateway_url: str) -> Iterator[Any]:
    """The playground, loaded, with its model list in; fails the test on any uncaught page error."""
    with _playground(browser, gateway_url) as page:
        yield page


@pytest.fixture
def jobs_page(browser: Any, jobs_gateway_url: str) -> Iterator[Any]:
    """The playground of the gateway with jobs and storage."""
    with _playground(browser, jobs_gateway_url) as page:
        yield page


@contextlib.contextmanager
def _playground(browser: Any, gateway_url: str) -> Iterator[Any]:
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(gateway_url + "/")
        expect(page.locator("#model option[value='demo-image']")).to_have_count(1)
        yield page
        assert errors == [], errors
    finally:
        context.close()


def _configure(page: Any, *, model: str, size: str = "256x256", partials: int = 3, n: int = 1) -> None:
    page.get_by_label("Model").select_option(model)
    page.get_by_label("Size").select_option(size)
    page.get_by_label("Partial images").select_option(str(partials))
    page.get_by_label("Number of images").fill(str(n))


_SHOWN = """() => [...document.querySelectorAll('#images img')]
    .filter((img) => !img.hidden)
    .map((img) => ({state: img.dataset.state, partial: img.dataset.partialIndex ?? null, src: img.src,
                    width: img.naturalWidth, height: img.naturalHeight}))"""


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+\.\d\d) s", text)
    assert match, text
    return float(match.group(1))


@needs_node
def test_browser_client_node_unit_tests() -> None:
    assert NODE is not None
    # Files named explicitly: Node >= 21 reads `--test` arguments as globs, not directories.
    files = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "tests" / "js").glob("*.test.mjs"))
    assert len(files) >= 2, files
    # The jobs tests also run the real gateway, with this interpreter.
    env = {**os.environ, "PIXELGATE_PYTHON": sys.executable}
    proc = subprocess.run([NODE, "--test", *files], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    # The exit status says it all (the report format differs between Node versions).
    assert proc.returncode == 0, (proc.stdout[-6000:] + proc.stderr[-3000:])


@needs_chromium
def test_partial_images_sharpen_in_place_then_the_final_png(page: Any) -> None:
    from playwright.sync_api import expect

    _configure(page, model="demo-image", size="256x256", partials=3)
    page.get_by_role("button", name="Generate").click()

    # Sample what the page displays until the final image is in.
    samples: list[dict[str, Any]] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        shown = page.evaluate(_SHOWN)
        assert len(shown) <= 1, "one slot for n=1: partials replace each other in place"
        if shown:
            samples.append(shown[0])
            if shown[0]["state"] == "final":
                break
        time.sleep(0.05)
    assert samples and samples[-1]["state"] == "final", samples[-1:] or "nothing displayed"

    first_final = next(i for i, s in enumerate(samples) if s["state"] == "final")
    partials = samples[:first_final]
    assert all(s["state"] == "partial" for s in partials)
    distinct = list(dict.fromkeys(s["src"] for s in partials))
    assert len(distinct) >= 2, f"{len(distinct)} distinct partial image(s) displayed before the final one"
    indexes = [int(s["partial"]) for s in partials]
    assert indexes == sorted(indexes) and len(set(indexes)) >= 2, indexes
    expect(page.locator("#images figcaption")).to_contain_text("final")

    final = samples[first_final]
    assert final["src"] not in distinct
    assert final["src"].startswith("data:image/png;base64,")
    # The bytes the page holds, decoded by an independent PNG decoder.
    png = page.evaluate(
        """async (src) => {
            const bytes = new Uint8Array(await (await fetch(src)).arrayBuffer());
            let text = '';
            for (const b of bytes) text += String.fromCharCode(b);
            return btoa(text);
        }""",
        final["src"],
    )
    with Image.open(io.BytesIO(base64.b64decode(png))) as image:
        assert image.format == "PNG"
        assert image.size == (256, 256)
        image.load()
    # And the browser decoded it at that size.
    shown = page.evaluate(_SHOWN)[0]
    assert (shown["width"], shown["height"]) == (256, 256)

    first_partial = _seconds(page.locator("#t-partial").inner_text())
    to_final = _seconds(page.locator("#t-final").inner_text())
    assert 0.3 <= first_partial < to_final, (first_partial, to_final)
    expect(page.get_by_role("status")).to_contain_text("Done")
    expect(page.get_by_role("link", name="Download")).to_have_attribute("href", final["src"])


@needs_chromium
def test_an_upstream_http_error_shows_its_message(page: Any, fake_upstream: FakeUpstream) -> None:
    from playwright.sync_api import expect

    _configure(page, model="rate-limited")
    page.get_by_role("button", name="Generate").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text(RATE_LIMIT_MESSAGE)
    expect(alert).to_contain_text("HTTP 429")
    expect(alert).to_contain_text("rate_limit_exceeded")
    expect(page.get_by_role("status")).to_have_text("Failed.")
    # Nothing was drawn: no empty image slots are left behind.
    expect(page.locator("#images > li")).to_have_count(0)
    assert fake_upstream.requests.count("rate-limited") >= 1
    expect(page.get_by_role("button", name="Generate")).to_be_enabled()
    expect(page.get_by_role("button", name="Cancel")).to_be_disabled()


@needs_chromium
def test_an_error_mid_stream_shows_its_message(page: Any) -> None:
    from playwright.sync_api import expect

    _configure(page, model="fails-mid-stream")
    page.get_by_role("button", name="Generate").click()
    # The partial shows first, then the stream's error event ends the run.
    expect(page.locator("#images img[data-state='partial']")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text(MID_STREAM_MESSAGE)
    expect(page.get_by_role("status")).to_have_text("Failed.")
    expect(page.locator("#images figcaption")).to_contain_text("Failed")


@needs_chromium
def test_cancel_closes_the_upstream_request(page: Any, fake_upstream: FakeUpstream) -> None:
    from playwright.sync_api import expect

    fake_upstream.closed.clear()
    _configure(page, model="hangs")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#images img[data-state='partial']")).to_be_visible()
    assert not fake_upstream.closed.is_set()
    page.get_by_role("button", name="Cancel").click()
    cancelled_at = time.monotonic()
    assert fake_upstream.closed.wait(2), "the upstream connection was not closed within 2 s of Cancel"
    assert fake_upstream.closed_at - cancelled_at < 2
    expect(page.get_by_role("status")).to_have_text("Cancelled.")
    expect(page.locator("#images figcaption")).to_contain_text("Cancelled")
    expect(page.locator("#error")).to_be_empty()


@needs_chromium
def test_keyboard_labels_and_the_api_key_stays_in_memory(page: Any, gateway_url: str) -> None:
    from playwright.sync_api import expect

    for label in ("Prompt", "Model", "Size", "Quality", "Partial images", "API key"):
        expect(page.get_by_label(label)).to_have_count(1)
    expect(page.get_by_label("Number of images")).to_have_count(1)
    expect(page.get_by_role("status")).to_have_attribute("aria-live", "polite")

    requests: list[Any] = []
    page.on("request", lambda r: requests.append(r) if "/v1/images/" in r.url else None)
    page.get_by_label("API key").fill("sk-playground-test")
    _configure(page, model="demo-image", partials=1)
    # Keyboard only: Ctrl+Enter in the prompt generates, Escape cancels.
    page.get_by_label("Prompt").focus()
    page.keyboard.press("Control+Enter")
    expect(page.get_by_role("button", name="Cancel")).to_be_enabled()
    page.keyboard.press("Escape")
    status = page.get_by_role("status")
    expect(status).to_have_text("Cancelled.")
    expect(page.get_by_label("Prompt")).to_be_focused()
    # With the buttons: focus follows as Generate and Cancel swap their enabled states.
    page.get_by_role("button", name="Generate").focus()
    page.keyboard.press("Enter")
    expect(status).to_contain_text("Generating")
    expect(page.get_by_role("button", name="Cancel")).to_be_focused()
    page.keyboard.press("Enter")
    expect(status).to_have_text("Cancelled.")
    expect(page.get_by_role("button", name="Generate")).to_be_focused()

    assert len(requests) == 2
    request = requests[0]
    assert request.url == gateway_url + "/v1/images/generations"
    assert request.headers["authorization"] == "Bearer sk-playground-test"
    body = json.loads(request.post_data)
    assert body == {
        "prompt": page.get_by_label("Prompt").input_value(), "n": 1, "size": "256x256", "quality": "auto",
        "partial_images": 1, "model": "demo-image", "stream": True,
    }
    assert "sk-playground-test" not in page.url
    stored = page.evaluate("() => JSON.stringify([{...localStorage}, {...sessionStorage}, document.cookie])")
    assert "sk-playground" not in stored


@needs_chromium
def test_several_images_each_in_its_slot_and_a_screenshot(page: Any) -> None:
    from playwright.sync_api import expect

    _configure(page, model="demo-image", size="512x512", partials=2, n=2)
    page.get_by_role("button", name="Generate").click()
    slots = page.locator("#images > li")
    expect(slots).to_have_count(2)
    expect(page.locator("#images img[data-state='final']")).to_have_count(2, timeout=15_000)
    shown = page.evaluate(_SHOWN)
    assert len({s["src"] for s in shown}) == 2
    assert all((s["width"], s["height"]) == (512, 512) for s in shown)
    expect(slots.nth(0).locator("figcaption")).to_contain_text("Image 1 of 2: final")
    expect(slots.nth(1).locator("figcaption")).to_contain_text("Image 2 of 2: final")
    expect(page.locator("#t-final-label")).to_have_text("All 2 images")
    expect(page.get_by_role("status")).to_contain_text("Done: 2 images")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)
    assert (ARTIFACTS / "playground.png").stat().st_size > 10_000


# Edit mode's inputs: a non-square PNG first (the mask must follow its own dimensions), then a JPEG.
FIRST_PNG = _encoded(_gradient(320, 200))
SECOND_JPEG = _encoded(_gradient(96, 128), "JPEG")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _edit_mode(page: Any) -> Any:
    """Switch the form to Edit mode; returns its submit button."""
    from playwright.sync_api import expect

    page.get_by_role("radio", name="Edit").check()
    button = page.get_by_role("button", name="Edit", exact=True)
    expect(button).to_be_visible()
    expect(page.get_by_role("button", name="Generate")).to_have_count(0)
    return button


def _page_png(page: Any, src: str) -> Image.Image:
    """The image behind a data: URL the page shows, decoded by Pillow."""
    b64 = page.evaluate(
        """async (src) => {
            const bytes = new Uint8Array(await (await fetch(src)).arrayBuffer());
            let text = '';
            for (const b of bytes) text += String.fromCharCode(b);
            return btoa(text);
        }""",
        src,
    )
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


@needs_chromium
def test_an_edit_sends_the_files_and_the_painted_mask_then_partials_sharpen(page: Any, fake_upstream: FakeUpstream) -> None:
    from playwright.sync_api import expect

    edit_button = _edit_mode(page)
    page.get_by_label("Prompt").fill("A green stripe across the middle")
    page.get_by_label("choose files").set_input_files([
        {"name": "first.png", "mimeType": "image/png", "buffer": FIRST_PNG},
        {"name": "second.jpg", "mimeType": "image/jpeg", "buffer": SECOND_JPEG},
    ])
    thumbs = page.locator("#inputs > li")
    expect(thumbs).to_have_count(2)
    expect(thumbs.nth(0).locator("img")).to_have_attribute("alt", "first.png, 320 × 200")
    expect(thumbs.nth(1).locator("img")).to_have_attribute("alt", "second.jpg, 96 × 128")

    # The mask canvas is the first image's own size, shown scaled over it: paint a stroke across its middle.
    canvas = page.locator("#mask-canvas")
    expect(canvas).to_be_visible()
    assert canvas.evaluate("(c) => [c.width, c.height]") == [320, 200]
    box = canvas.bounding_box()
    assert box is not None
    assert abs(box["width"] / box["height"] - 320 / 200) < 0.02, box
    middle = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.25, middle)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.75, middle, steps=12)
    page.mouse.up()
    expect(canvas).to_have_attribute("data-painted", "true")
    expect(page.get_by_role("button", name="Clear mask")).to_be_enabled()

    _configure(page, model="fake-edit", size="auto", partials=3)
    edits_before = len(fake_upstream.edits)
    edit_button.click()

    # Sample what the page displays until the final image is in.
    samples: list[dict[str, Any]] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        shown = page.evaluate(_SHOWN)
        assert len(shown) <= 1, "one slot for n=1: partials replace each other in place"
        if shown:
            samples.append(shown[0])
            if shown[0]["state"] == "final":
                break
        time.sleep(0.05)
    assert samples and samples[-1]["state"] == "final", samples[-1:] or "nothing displayed"
    first_final = next(i for i, s in enumerate(samples) if s["state"] == "final")
    partials = samples[:first_final]
    assert all(s["state"] == "partial" for s in partials)
    distinct = list(dict.fromkeys(s["src"] for s in partials))
    assert len(distinct) >= 2, f"{len(distinct)} distinct partial image(s) displayed before the final one"
    indexes = [int(s["partial"]) for s in partials]
    assert indexes == sorted(indexes) and len(set(indexes)) >= 2, indexes
    expect(page.get_by_role("status")).to_contain_text("Done")
    assert _seconds(page.locator("#t-partial").inner_text()) < _seconds(page.locator("#t-final").inner_text())

    # What the upstream received: the fields, both files byte for byte, and a PNG mask of the first image's size.
    assert len(fake_upstream.edits) == edits_before + 1
    edit = fake_upstream.edits[-1]
    assert edit.path == "/v1/images/edits"
    assert edit.fields == {
        "prompt": "A green stripe across the middle", "n": "1", "size": "auto", "quality": "auto",
        "partial_images": "3", "model": "fake-edit", "stream": "true",
    }
    images = [part for part in edit.files if part.name != "mask"]
    assert [(part.name, part.filename) for part in images] == [("image[]", "first.png"), ("image[]", "second.jpg")]
    assert [_sha256(part.data) for part in images] == [_sha256(FIRST_PNG), _sha256(SECOND_JPEG)]
    [mask] = [part for part in edit.files if part.name == "mask"]
    assert mask.filename == "mask.png"
    assert mask.data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(mask.data)) as image:
        assert image.format == "PNG"
        assert image.size == (320, 200)
        alpha = image.convert("RGBA").getchannel("A")
    # Transparent along the stroke (x 80..240 at y 100, about 30 px wide), opaque away from it.
    for x in (90, 160, 230):
        assert alpha.getpixel((x, 100)) == 0, (x, 100)
    for xy in ((5, 5), (314, 194), (160, 40), (160, 160), (30, 100), (290, 100)):
        assert alpha.getpixel(xy) == 255, xy

    # The final image: the first one with the stroke's area edited, shown at its own size.
    final = samples[first_final]
    assert final["src"] not in distinct
    with _page_png(page, final["src"]) as image:
        assert image.format == "PNG"
        assert image.size == (320, 200)
        assert image.convert("RGB").getpixel((160, 100)) == EDIT_FILL
        assert image.convert("RGB").getpixel((5, 5)) == (20, 20, 160)
    shown = page.evaluate(_SHOWN)[0]
    assert (shown["width"], shown["height"]) == (320, 200)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "playground-edit.png"), full_page=True)

    # The result can be the next edit's input.
    page.get_by_role("button", name="Use as input").click()
    expect(thumbs).to_have_count(3)
    expect(thumbs.nth(2).locator("img")).to_have_attribute("alt", "pixelgate-1.png, 320 × 200")


@needs_chromium
def test_cancelling_an_edit_closes_the_upstream_request(page: Any, fake_upstream: FakeUpstream) -> None:
    from playwright.sync_api import expect

    fake_upstream.closed.clear()
    edit_button = _edit_mode(page)
    page.get_by_label("choose files").set_input_files([{"name": "only.png", "mimeType": "image/png", "buffer": FIRST_PNG}])
    expect(page.locator("#inputs > li")).to_have_count(1)
    _configure(page, model="hangs")
    edit_button.click()
    expect(page.locator("#images img[data-state='partial']")).to_be_visible()
    assert not fake_upstream.closed.is_set()
    # One image, no mask painted: one `image` part, as picked.
    edit = fake_upstream.edits[-1]
    assert [(part.name, part.filename, _sha256(part.data)) for part in edit.files] == [("image", "only.png", _sha256(FIRST_PNG))]
    page.get_by_role("button", name="Cancel").click()
    cancelled_at = time.monotonic()
    assert fake_upstream.closed.wait(2), "the upstream connection was not closed within 2 s of Cancel"
    assert fake_upstream.closed_at - cancelled_at < 2
    expect(page.get_by_role("status")).to_have_text("Cancelled.")
    expect(page.locator("#images figcaption")).to_contain_text("Cancelled")
    expect(page.locator("#error")).to_be_empty()
    expect(edit_button).to_be_enabled()


@needs_chromium
def test_edit_inputs_are_checked_on_the_page(page: Any, fake_upstream: FakeUpstream) -> None:
    from playwright.sync_api import expect

    requests_before = len(fake_upstream.requests)
    edit_button = _edit_mode(page)
    # No image yet: nothing is sent.
    edit_button.click()
    expect(page.get_by_role("alert")).to_contain_text("Add an image to edit first")

    pngs = [{"name": f"in-{i}.png", "mimeType": "image/png", "buffer": _encoded(_gradient(8 + i, 8))} for i in range(17)]
    page.get_by_label("choose files").set_input_files([*pngs, {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"}])
    thumbs = page.locator("#inputs > li")
    expect(thumbs).to_have_count(16)
    expect(page.get_by_role("status")).to_have_text(
        "16 input images added; left out: 1 file that is not PNG, JPEG or WebP and 1 image over the limit of 16."
    )
    # The mask is for the first image; when it is removed, the next one is first, with a canvas of its size.
    page.wait_for_function("() => document.getElementById('mask-canvas').width === 8")
    page.get_by_role("button", name="Remove image 1 (in-0.png)").click()
    expect(thumbs).to_have_count(15)
    page.wait_for_function("() => document.getElementById('mask-canvas').width === 9")
    expect(page.get_by_role("button", name="Remove image 1 (in-1.png)")).to_be_focused()
    assert len(fake_upstream.requests) == requests_before

    # Back to Generate: the edit fields go away, the button says Generate again.
    page.get_by_role("radio", name="Generate").check()
    expect(page.locator("#edit-fields")).to_be_hidden()
    expect(page.get_by_role("button", name="Generate")).to_be_visible()


@needs_chromium
def test_a_job_with_urls_shows_its_status_then_the_image(jobs_page: Any, jobs_gateway_url: str) -> None:
    from playwright.sync_api import expect

    page = jobs_page
    _configure(page, model="demo-image", size="256x256", partials=2)
    page.get_by_label("Return URLs").check()
    page.get_by_label("Run as job").check()
    requests: list[Any] = []
    page.on("request", lambda r: requests.append(r) if "/v1/images/" in r.url else None)
    page.get_by_role("button", name="Generate").click()

    job_id = page.locator("#job-id")
    expect(job_id).to_have_text(re.compile(r"^imgjob_\w+$"))
    job_status = page.locator("#job-status")
    # The demo provider takes 400 ms, then sends partials 600 ms apart: the job is seen on its way,
    # its partial images counted as they come, then completed.
    expect(job_status).to_have_text(re.compile(r"^(queued|in progress)$"))
    expect(page.get_by_role("status")).to_contain_text(f"Job {job_id.inner_text()}:")
    expect(page.get_by_role("status")).to_contain_text(re.compile(r"in progress, [12] partial images? so far"))
    expect(job_status).to_have_text("completed", timeout=15_000)
    expect(page.get_by_role("status")).to_contain_text("Done: the image in")
    expect(page.get_by_role("status")).to_contain_text(job_id.inner_text())

    expect(page.locator("#images img[data-state='final']")).to_have_count(1)
    [shown] = page.evaluate(_SHOWN)
    assert shown["src"].startswith(jobs_gateway_url + "/files/"), shown["src"]
    assert re.search(r"[?&]expires=\d+&sig=", shown["src"]), shown["src"]
    assert (shown["width"], shown["height"]) == (256, 256)
    with _page_png(page, shown["src"]) as image:
        assert image.format == "PNG" and image.size == (256, 256)
    expect(page.locator("#images figcaption")).to_contain_text("Image: final")
    expect(page.locator("#t-partial")).to_have_text("–")
    expect(page.get_by_role("button", name="Generate")).to_be_enabled()
    expect(page.get_by_role("button", name="Cancel")).to_be_disabled()
    expect(page.locator("#error")).to_be_empty()

    # What was sent: one submission with Prefer: respond-async (URLs, no stream; partials for progress), then polls of the job.
    submissions = [r for r in requests if r.method == "POST"]
    assert len(submissions) == 1
    assert submissions[0].url == jobs_gateway_url + "/v1/images/generations"
    assert submissions[0].headers["prefer"] == "respond-async"
    assert json.loads(submissions[0].post_data) == {
        "prompt": page.get_by_label("Prompt").input_value(), "n": 1, "size": "256x256", "quality": "auto",
        "partial_images": 2, "model": "demo-image", "response_format": "url",
    }
    polls = [r for r in requests if r.method == "GET"]
    assert polls and all(r.url == f"{jobs_gateway_url}/v1/images/jobs/{job_id.inner_text()}" for r in polls)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "playground-job.png"), full_page=True)


@needs_chromium
def test_cancel_cancels_a_slow_job(jobs_page: Any, jobs_gateway_url: str) -> None:
    from playwright.sync_api import expect

    page = jobs_page
    _configure(page, model="slow-image", size="256x256")
    page.get_by_label("Run as job").check()
    requests: list[Any] = []
    page.on("request", lambda r: requests.append(r) if "/v1/images/jobs/" in r.url else None)
    page.get_by_role("button", name="Generate").click()
    job_status = page.locator("#job-status")
    expect(job_status).to_have_text("in progress")
    job_id = page.locator("#job-id").inner_text()
    cancel = page.get_by_role("button", name="Cancel")
    expect(cancel).to_be_enabled()
    cancel.click()
    expect(job_status).to_have_text("cancelled", timeout=10_000)
    expect(page.get_by_role("status")).to_have_text("Cancelled.")
    expect(page.locator("#error")).to_be_empty()
    expect(page.locator("#images > li")).to_have_count(0)
    expect(page.get_by_role("button", name="Generate")).to_be_enabled()
    assert [r.url for r in requests if r.method == "DELETE"] == [f"{jobs_gateway_url}/v1/images/jobs/{job_id}"]
    # The gateway says so too.
    job = page.evaluate("async (url) => (await fetch(url)).json()", f"{jobs_gateway_url}/v1/images/jobs/{job_id}")
    assert job["status"] == "cancelled", job


@needs_chromium
def test_return_urls_without_a_job_shows_the_stored_image(jobs_page: Any, jobs_gateway_url: str) -> None:
    from playwright.sync_api import expect

    page = jobs_page
    _configure(page, model="demo-image", size="256x256", partials=2)
    page.get_by_label("Return URLs").check()
    # Not streamed: no partial images to ask for.
    expect(page.get_by_label("Partial images")).to_be_disabled()
    requests: list[Any] = []
    page.on("request", lambda r: requests.append(r) if "/v1/images/" in r.url else None)
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#images img[data-state='final']")).to_have_count(1, timeout=15_000)
    [shown] = page.evaluate(_SHOWN)
    assert shown["src"].startswith(jobs_gateway_url + "/files/"), shown["src"]
    assert (shown["width"], shown["height"]) == (256, 256)
    expect(page.get_by_role("status")).to_contain_text("Done: the image in")
    expect(page.locator("#job")).to_be_hidden()
    [request] = requests
    assert "prefer" not in request.headers
    assert json.loads(request.post_data) == {
        "prompt": page.get_by_label("Prompt").input_value(), "n": 1, "size": "256x256", "quality": "auto",
        "model": "demo-image", "response_format": "url", "stream": False,
    }
    page.get_by_label("Return URLs").uncheck()
    expect(page.get_by_label("Partial images")).to_be_enabled()
