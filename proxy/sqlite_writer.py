"""The SQLite ledger's writer: a process of its own that inserts the batches a gateway sends it.

Why a process: SQLite's work for a row (the table, its unique index, three time
indexes, the WAL) is about 7 us of CPU, and done on a thread of the gateway's
it also cost the event loop's thread as much again, in GIL hand-offs and
binding (``make bench``: the ledger took 7-9 % of small-request throughput;
with the inserts in this process, the gateway's CPU per request was that of a
ledger whose inserts did nothing). The gateway now only encodes a batch
(msgpack, about 0.3 us a row) and writes it to a pipe.

Deliberately light: the standard library and msgspec, none of the gateway's
packages (SQLAlchemy alone is half a second and tens of MB), so ``python -m
pixelgate.proxy.sqlite_writer`` starts in a few tens of ms. The gateway runs
migrations itself before it starts this process; this one only inserts.

Protocol, on stdin and stdout: frames of a 4-byte little-endian length and a
msgpack body. The gateway sends a batch, ``[[value, ...], ...]`` (rows as
tuples in ``columns`` order); each is answered, in order, once it is committed
or rolled back: ``[]`` (committed) or ``[kind, type, message]`` with kind
``unavailable`` (locked past the busy timeout, unreadable, disk full: try
again later), ``row`` (the database refuses a row as it is) or ``error`` (a
bug). The first frame this process writes is the answer to opening the
database. It ends when its stdin closes (the gateway closed it, or died):
anything received is committed first. SIGINT and SIGTERM are ignored: a
Ctrl-C or a signal to the process group must not cut short the gateway's own
final flush, which closes this process's pipe when it is done.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import signal
import sqlite3
import struct
import sys
from typing import Any, BinaryIO

import msgspec

__all__ = ["ERROR", "ROW", "UNAVAILABLE", "frame", "main"]

UNAVAILABLE, ROW, ERROR = "unavailable", "row", "error"

_LENGTH = struct.Struct("<I")

# Bound parameters per statement: SQLite's limit (32766 since 3.32, 999 before).
_MAX_PARAMETERS = 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999


def frame(body: bytes) -> bytes:
    return _LENGTH.pack(len(body)) + body


def _read_frame(stream: BinaryIO) -> bytes | None:
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(head)
    body = stream.read(length)
    return body if len(body) == length else None


@functools.lru_cache(maxsize=64)
def _insert_sql(columns: tuple[str, ...], rows: int) -> str:
    """``INSERT ... VALUES (?, ...), ... ON CONFLICT DO NOTHING`` for ``rows`` rows: many rows
    a statement, so SQLite steps once per statement, not once per row."""
    one = "(" + ", ".join("?" * len(columns)) + ")"
    return f"INSERT INTO ledger ({', '.join(columns)}) VALUES {', '.join([one] * rows)} ON CONFLICT (request_id) DO NOTHING"


def rows_per_statement(columns: int) -> int:
    return _MAX_PARAMETERS // columns


def _kind(exc: BaseException) -> str:
    if isinstance(exc, sqlite3.OperationalError | OSError):
        return UNAVAILABLE
    # An int beyond 64 bits is refused at binding (OverflowError); a constraint, by SQLite.
    if isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError | OverflowError | ValueError | TypeError):
        return ROW
    return ERROR


def _connect(path: str, timeout: float) -> sqlite3.Connection:
    # isolation_level None: BEGIN and COMMIT are this module's, not the driver's guesses.
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    # As the gateway's own connections: a committed batch survives a power cut.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
    return conn


def _insert(conn: sqlite3.Connection, columns: tuple[str, ...], rows: list[list[Any]]) -> None:
    per = rows_per_statement(len(columns))
    conn.execute("BEGIN IMMEDIATE")
    try:
        for start in range(0, len(rows), per):
            chunk = rows[start:start + per]
            conn.execute(_insert_sql(columns, len(chunk)), tuple(itertools.chain.from_iterable(chunk)))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _answer(out: BinaryIO, exc: BaseException | None) -> None:
    body = [] if exc is None else [_kind(exc), type(exc).__name__, str(exc)[:1000]]
    out.write(frame(msgspec.msgpack.encode(body)))
    out.flush()


def serve(path: str, timeout: float, columns: tuple[str, ...], inp: BinaryIO, out: BinaryIO) -> None:
    try:
        conn = _connect(path, timeout)
    except (sqlite3.Error, OSError) as exc:
        _answer(out, exc)
        return
    _answer(out, None)
    decode = msgspec.msgpack.Decoder(list[list[Any]]).decode
    try:
        while (body := _read_frame(inp)) is not None:
            try:
                _insert(conn, columns, decode(body))
            except Exception as exc:
                _answer(out, exc)
            else:
                _answer(out, None)
    finally:
        conn.close()


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    path, timeout, *columns = argv
    with contextlib.suppress(BrokenPipeError):  # the gateway is gone: nothing is left to answer
        serve(path, float(timeout), tuple(columns), sys.stdin.buffer, sys.stdout.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
