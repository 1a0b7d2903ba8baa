"""Reading a process's memory and CPU use from ``/proc`` (Linux only).

Peak RSS comes from the kernel's own high-water mark (``VmHWM``), which sees
every page the process ever touched, unlike sampling ``VmRSS`` at intervals,
which misses short spikes. Writing ``5`` to ``/proc/PID/clear_refs`` resets
that mark to the current RSS, so a peak can be taken per scenario.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cpu_seconds", "machine_cpu_seconds", "reset_peak_rss", "rss_kib"]

_TICKS = os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak since start or last reset) in KiB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def reset_peak_rss(pid: int) -> bool:
    """Reset ``VmHWM`` to the current RSS; False where the kernel does not allow it."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def machine_cpu_seconds() -> dict[str, float]:
    """CPU time of the whole machine so far, all cores: ``busy`` and ``irq``.

    ``busy`` is user + nice + system + steal (steal: the hypervisor gave the
    core to another guest); ``irq`` is hard + soft interrupt time, which on
    loopback is mostly the bench's own packets. Subtracting the watched
    processes from ``busy`` leaves what others took from the measurement.
    """
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return {"busy": (user + nice + system + steal) / _TICKS, "irq": (irq + softirq) / _TICKS}


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out.extend(int(child) for child in (task / "children").read_text().split())
    except FileNotFoundError:  # it ended meanwhile
        pass
    return out


def _own_cpu(pid: int) -> float:
    """User + system time of the process and of its children that ended and were reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return 0.0
    # The command name (field 2) may contain spaces: split after its ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / _TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process and every process it started have used so far.

    The tree, not the process alone: the gateway's SQLite ledger writer is a child
    process (``proxy/sqlite_writer.py``), and its work is the gateway's cost."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += _own_cpu(current)
        todo.extend(_children(current))
    return total
