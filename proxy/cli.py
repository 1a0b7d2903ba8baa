"""``pixelgate`` (= ``python -m pixelgate``): serve the gateway or the demo upstream; manage keys and read usage."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import msgspec

from pixelgate.proxy.config import Config, ConfigError, load_config, zero_config
from pixelgate.proxy.log_buffer import LoopBufferedHandler

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixelgate", description="Async gateway for image generation.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="YAML config file (default: $PIXELGATE_CONFIG, else zero-config)")
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides server.port)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes sharing the port (default 1)")
    # Set by the supervisor for its workers; not for direct use.
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    demo = sub.add_parser("demo-upstream", help="run the demo provider as a standalone OpenAI-compatible server")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=9090)
    demo.add_argument("--latency-ms", type=float, default=0.0, help="delay before each answer starts")
    demo.add_argument("--interval-ms", type=float, default=0.0, help="delay between streamed events")
    keys = sub.add_parser("keys", help="gateway keys: hashes for access.keys, keys in the ledger database")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    hash_ = keys_sub.add_parser(
        "hash", help="print the config hash of a key read from stdin, or of a new key (--generate)"
    )
    hash_.add_argument("--generate", action="store_true", help="make a new random key and print it with its hash")
    # Keys in the ledger database, and usage reports (proxy.admin.cli).
    from pixelgate.proxy.admin.cli import add_commands

    add_commands(keys_sub, sub)
    return parser


def _keys_hash(generate: bool) -> int:
    """Keys are shown once (the new one, on stdout) and never stored: only the hash goes in config."""
    from pixelgate.proxy.access.keys import generate_key, hash_key

    if generate:
        key = generate_key()
        print(f"key:  {key}")
        print(f"hash: {hash_key(key)}")
        return 0
    if sys.stdin.isatty():
        import getpass

        key = getpass.getpass("key: ")
    else:
        key = sys.stdin.readline()
    try:
        print(hash_key(key.strip()))
    except ValueError as exc:
        print(f"pixelgate: {exc}", file=sys.stderr)
        return 2
    return 0


def _config(args: argparse.Namespace) -> Config:
    path = args.config or os.environ.get("PIXELGATE_CONFIG")
    config = load_config(path) if path else zero_config()
    server = config.server
    if args.host is not None:
        server = msgspec.structs.replace(server, host=args.host)
    if args.port is not None:
        server = msgspec.structs.replace(server, port=args.port)
    return msgspec.structs.replace(config, server=server)


def _describe(config: Config, explicit: bool) -> str:
    if explicit:
        return f"providers: {', '.join(config.providers)}; models: {', '.join(config.models)}"
    if "demo" in config.providers:
        return "no config: the built-in demo provider serves every model (no keys, no network)"
    return "no config: every model goes to the OpenAI-compatible upstream in OPENAI_BASE_URL"


def _setup_logging() -> None:
    # No format here uses the caller's file and line, thread or process names:
    # turning their collection off (the logging HOWTO's "Optimization") takes
    # a third off the cost of the access log's line per request.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The access log is one JSON line per request, with its own timestamp:
    # written as is, without the per-record time formatting of the root format,
    # and once per event-loop iteration rather than once per line (log_buffer).
    access = logging.getLogger("pixelgate.access")
    handler = LoopBufferedHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.propagate = False


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "keys" and args.keys_command == "hash":
        return _keys_hash(args.generate)
    if args.command in ("keys", "usage"):
        from pixelgate.proxy.admin.cli import run as run_admin

        return run_admin(args)
    _setup_logging()
    if args.command == "demo-upstream":
        from pixelgate.proxy.demo.server import run_demo

        logging.getLogger("pixelgate").info("demo upstream on http://%s:%d/v1", args.host, args.port)
        run_demo(args.host, args.port, args.latency_ms, args.interval_ms)
        return 0
    try:
        config = _config(args)
    except ConfigError as exc:
        print(f"pixelgate: config error: {exc}", file=sys.stderr)
        return 2
    log = logging.getLogger("pixelgate")
    if args.workers > 1:
        from pixelgate.proxy.workers import supervise

        log.info("%s; %d workers", _describe(config, bool(args.config or os.environ.get("PIXELGATE_CONFIG"))), args.workers)
        worker_args = _without_workers((argv if argv is not None else sys.argv[1:])[1:])
        return supervise(worker_args, args.workers, config.server.shutdown_timeout)
    from pixelgate.proxy.server import run

    if not args.reuse_port:
        log.info("%s", _describe(config, bool(args.config or os.environ.get("PIXELGATE_CONFIG"))))
    run(config, reuse_port=args.reuse_port, load=lambda: _config(args))
    return 0


def _without_workers(args: list[str]) -> list[str]:
    """The serve arguments minus ``--workers N`` / ``--workers=N``."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return out
