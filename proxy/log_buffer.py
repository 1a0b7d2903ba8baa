"""A log handler that writes once per event-loop iteration, not once per line.

The access log is one line per request. ``logging.StreamHandler`` writes and
flushes each line as it comes: a ``write(2)`` per request, on the event
loop's thread. This handler keeps the lines a loop iteration logs and writes
them together at the start of the next one (``loop.call_soon``): under load
dozens of requests end in one iteration and share one write; when idle, a
line goes out within microseconds, as before. Lines logged outside the loop's
thread (no running loop) are written at once.

What a crash can lose is at most the lines of the iteration it cut short;
``logging.shutdown`` (at exit) flushes the rest. A flush is owed by the loop
it was scheduled on: a line logged on another loop (the first one closed
before its flush ran) schedules one there, so nothing waits for the exit.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TextIO

__all__ = ["LoopBufferedHandler"]


class LoopBufferedHandler(logging.StreamHandler[TextIO]):
    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        # The loop a flush is scheduled on, until it runs.
        self._flush_on: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            self._lines.append(line)
            if loop is None:
                self._write()
            elif self._flush_on is not loop:
                self._flush_on = loop
                loop.call_soon(self.flush)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._flush_on = None
            self._write()

    def _write(self) -> None:
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except Exception:
            # As StreamHandler does: report through logging's own error path, never raise.
            self.handleError(logging.makeLogRecord({"msg": lines[0]}))
