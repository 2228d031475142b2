"""Several worker processes on one host, sharing the port with SO_REUSEPORT.

The parent forks `N` workers before any event loop exists; each runs the whole proxy and binds
the same address with SO_REUSEPORT, so the kernel spreads connections across them. The parent
only supervises: it forwards SIGTERM and SIGINT to every worker (each drains as a single process
does), restarts a worker that dies on its own, and exits 0 once every worker has stopped after a
signal. Workers share Redis, so they share entries, counters, coalescing locks and limits; with
the embedded store each would have a cache of its own, so that store runs one worker.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.context import ForkProcess

import structlog

RESTART_PAUSE = 1.0
log = structlog.get_logger("proxy.workers")


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def supervise(count: int, worker: Callable[[int], int]) -> int:
    """Run `worker(index)` in `count` forked processes until a signal stops them all."""
    context = multiprocessing.get_context("fork")
    stopping = False
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        received.append(signum)

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}
    processes: dict[int, ForkProcess] = {}
    try:
        for index in range(count):
            processes[index] = _start(context, worker, index)
        log.info("workers started", workers=count, pids=[process.pid for process in processes.values()])
        forwarded = 0
        while processes:
            while forwarded < len(received):
                for process in processes.values():
                    if process.pid is not None and process.is_alive():
                        os.kill(process.pid, received[forwarded])
                forwarded += 1
            for index, process in list(processes.items()):
                if process.is_alive():
                    continue
                process.join()
                if stopping:
                    del processes[index]
                else:
                    log.error("worker died; starting another", worker=index, exitcode=process.exitcode)
                    time.sleep(RESTART_PAUSE)
                    processes[index] = _start(context, worker, index)
            time.sleep(0.05)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    log.info("all workers stopped")
    return 0


def _start(context: multiprocessing.context.ForkContext, worker: Callable[[int], int], index: int) -> ForkProcess:
    process = context.Process(target=_run_worker, args=(worker, index), name=f"artstory-proxy worker {index}")
    process.start()
    return process


def _run_worker(worker: Callable[[int], int], index: int) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)  # the worker's event loop installs its own
    raise SystemExit(worker(index))
