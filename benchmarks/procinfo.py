"""What /proc says about a process tree: resident memory and CPU time, and the machine's idle share."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def children_of(pid: int) -> list[int]:
    """Every descendant of `pid` (a proxy with workers, nginx's workers)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in parents.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def rss_bytes(pid: int, *, tree: bool = True) -> int:
    """Resident set size of `pid` (plus its descendants when `tree`), 0 when it is gone."""
    total = 0
    for member in [pid, *(children_of(pid) if tree else [])]:
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total


def cpu_seconds(pid: int, *, tree: bool = True) -> float:
    """User plus system CPU time of `pid` (and its descendants)."""
    total = 0.0
    for member in [pid, *(children_of(pid) if tree else [])]:
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICKS
    return total


def tree_cpu_seconds(root: int) -> float:
    """CPU time of `root` and all its descendants, the exited ones it has reaped included
    (they are in its cutime/cstime): everything a driver and the processes it started used."""
    total = 0.0
    for member in [root, *children_of(root)]:
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(value) for value in fields[11:15]) / _TICKS
    return total


def machine_busy_seconds() -> float:
    """CPU-seconds spent busy by the whole machine since boot (all CPUs)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / _TICKS


def machine_busy_share(interval: float = 1.0) -> float:
    """Share of all CPU time spent busy over `interval` seconds (0.0 idle .. 1.0 saturated)."""

    def snapshot() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = values[3] + values[4]
        return idle, sum(values)

    idle_a, total_a = snapshot()
    time.sleep(interval)
    idle_b, total_b = snapshot()
    spent = total_b - total_a
    return 0.0 if spent <= 0 else 1.0 - (idle_b - idle_a) / spent


class Sampler:
    """Samples a process tree's RSS in a thread while a load runs; also measures its CPU share,
    and the CPU that processes of neither this run nor Redis used meanwhile (`foreign_cpu`, in
    CPUs: 0.3 means another program kept 30 % of one CPU busy, so the figures are suspect)."""

    def __init__(self, pid: int, *, period: float = 0.1, ours: int | None = None, extra: tuple[int, ...] = ()) -> None:
        self.pid = pid
        self.period = period
        self.peak_rss = 0
        self.last_rss = 0
        self.cpu_share = 0.0
        self.foreign_cpu = 0.0
        self._ours = ours if ours is not None else os.getpid()
        self._extra = extra
        self._accounted_start = 0.0
        self._busy_start = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._cpu_start = 0.0
        self._wall_start = 0.0

    def _accounted(self) -> float:
        return tree_cpu_seconds(self._ours) + sum(cpu_seconds(pid, tree=False) for pid in self._extra)

    def __enter__(self) -> Sampler:
        self._cpu_start = cpu_seconds(self.pid)
        self._accounted_start = self._accounted()
        self._busy_start = machine_busy_seconds()
        self._wall_start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        wall = time.monotonic() - self._wall_start
        self.cpu_share = (cpu_seconds(self.pid) - self._cpu_start) / wall if wall > 0 else 0.0
        busy = machine_busy_seconds() - self._busy_start
        accounted = self._accounted() - self._accounted_start
        self.foreign_cpu = max(0.0, (busy - accounted) / wall) if wall > 0 else 0.0
        self._sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    def _sample(self) -> None:
        rss = rss_bytes(self.pid)
        if rss:
            self.last_rss = rss
            self.peak_rss = max(self.peak_rss, rss)
