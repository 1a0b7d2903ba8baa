#!/usr/bin/env python3
"""A small, steady load for the Compose demo stack (standard library only).

Sends image generation requests to a Pixelgate, a mix of plain and streamed
ones (with partial images), two models, and a few on purpose failures
(provider 500s through the demo provider's per-request knobs, and invalid
requests), so every dashboard panel has something to show.

    python3 deploy/loadgen.py --url http://127.0.0.1:8080/v1 --rate 1 --count 20

With --count 0 (the default) it runs until stopped. It prints one JSON summary
line at the end (and every 60 s while running forever).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8080/v1", help="the gateway's /v1 base URL")
    p.add_argument("--rate", type=float, default=1.0, help="requests started per second, all workers together")
    p.add_argument("--concurrency", type=int, default=4, help="worker threads (requests in flight at most)")
    p.add_argument("--count", type=int, default=0, help="stop after this many requests (0: run until stopped)")
    p.add_argument("--models", default="demo-image,demo-image-fast", help="comma-separated model names")
    p.add_argument("--stream-ratio", type=float, default=0.5, help="share of streamed requests")
    p.add_argument("--error-ratio", type=float, default=0.02, help="share of requests asking the demo provider for a 500")
    p.add_argument("--invalid-ratio", type=float, default=0.02, help="share of invalid requests (400)")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request timeout, seconds")
    p.add_argument("--heartbeat", type=Path, help="file touched after every answered request (for a healthcheck)")
    p.add_argument("--seed", type=int, help="random seed, for a repeatable mix")
    return p.parse_args(argv)


def make_body(rng: random.Random, args: argparse.Namespace, models: list[str]) -> dict:
    body: dict = {"model": rng.choice(models), "prompt": f"a lighthouse at dusk #{rng.randrange(10_000)}"}
    if rng.random() < args.stream_ratio:
        body["stream"] = True
        body["partial_images"] = rng.randint(1, 3)
    roll = rng.random()
    if roll < args.error_ratio:
        body["demo"] = {"error_status": 500}
    elif roll < args.error_ratio + args.invalid_ratio:
        body["n"] = 0
    return body


def send(url: str, body: dict, timeout: float) -> int:
    """POST one request and read the whole answer; returns the HTTP status."""
    req = urllib.request.Request(
        url + "/images/generations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer loadgen"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            while resp.read(256 * 1024):
                pass
            return resp.status
    except urllib.error.HTTPError as exc:
        exc.read()
        exc.close()
        return exc.code


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.models = [m.strip() for m in args.models.split(",") if m.strip()]
        self.rng = random.Random(args.seed)
        self.lock = threading.Lock()
        self.statuses: Counter[str] = Counter()
        self.started = 0
        self.next_at = time.monotonic()

    def ticket(self) -> dict | None:
        """The next request's body, once its start time has come; None when done."""
        with self.lock:
            if self.args.count and self.started >= self.args.count:
                return None
            self.started += 1
            at, self.next_at = self.next_at, max(self.next_at, time.monotonic()) + 1.0 / self.args.rate
            body = make_body(self.rng, self.args, self.models)
        time.sleep(max(0.0, at - time.monotonic()))
        return body

    def worker(self) -> None:
        while (body := self.ticket()) is not None:
            try:
                status = str(send(self.args.url.rstrip("/"), body, self.args.timeout))
            except OSError as exc:  # connection refused, reset, timeout
                status = type(exc).__name__
                time.sleep(1.0)
            with self.lock:
                self.statuses[status] += 1
            if self.args.heartbeat is not None and status.isdigit():
                self.args.heartbeat.touch()

    def summary(self) -> str:
        with self.lock:
            return json.dumps({"sent": sum(self.statuses.values()), "statuses": dict(sorted(self.statuses.items()))})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rate <= 0 or args.concurrency < 1:
        print("loadgen: --rate must be > 0 and --concurrency >= 1", file=sys.stderr)
        return 2
    load = Load(args)
    threads = [threading.Thread(target=load.worker, daemon=True) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    last = time.monotonic()
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=1.0)
        if not args.count and time.monotonic() - last >= 60:
            print(load.summary(), flush=True)
            last = time.monotonic()
    print(load.summary(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
