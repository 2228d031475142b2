"""Child processes of a run: started pinned to CPUs in their own process group, always stopped.

Every child goes through one `ProcessRegistry`; `stop_all()` (called from `finally`, on SIGTERM
and at exit) ends each group it started, by process-group id, SIGTERM first, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO


class ProcessError(RuntimeError):
    """A child did not start, or died while it was needed."""


@dataclass
class Child:
    """One started process (the leader of its own process group)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path | None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]


class ProcessRegistry:
    """Starts children (pinned with `taskset` when `cpus` is given) and stops every one of them."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._children: list[Child] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpus: str | None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stdout_to_log: bool = False,
    ) -> Child:
        """Start `argv` in a new session; stderr (and stdout if asked) go to `<log_dir>/<name>.log`."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        command = ["taskset", "-c", cpus, *argv] if cpus else list(argv)
        with log_path.open("wb") as log:
            stdout: int | IO[bytes] = log if stdout_to_log else subprocess.DEVNULL
            popen = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=stdout, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )
        child = Child(name, popen, log_path)
        self._children.append(child)
        return child

    def run(
        self, name: str, argv: Sequence[str], *, cpus: str | None, env: dict[str, str] | None, timeout: float
    ) -> tuple[int, str, str]:
        """Run a short-lived command to its end (killed after `timeout`); returns (code, stdout, stderr)."""
        command = ["taskset", "-c", cpus, *argv] if cpus else list(argv)
        popen = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        child = Child(name, popen, None)
        self._children.append(child)
        try:
            out, err = popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(child)
            raise ProcessError(f"{name} did not finish within {timeout:.0f} s") from None
        except BaseException:  # Ctrl-C, SIGTERM: the command must not outlive the run
            self.stop(child, grace=2.0)
            raise
        self._forget(child)
        return popen.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    def stop(self, child: Child, grace: float = 10.0) -> None:
        """SIGTERM the child's process group, then SIGKILL it if it outlives `grace` seconds."""
        if child.alive():
            _signal_group(child.pid, signal.SIGTERM)
            try:
                child.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(child.pid, signal.SIGKILL)  # the whole group: nginx workers too
                child.popen.wait(timeout=5)
        self._forget(child)

    def stop_all(self) -> None:
        """Stop every child still known, newest first."""
        for child in reversed(list(self._children)):
            with contextlib.suppress(Exception):
                self.stop(child, grace=5.0)

    def _forget(self, child: Child) -> None:
        if child in self._children:
            self._children.remove(child)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def wait_http(child: Child, port: int, path: str, *, timeout: float = 20.0) -> None:
    """Wait until `GET http://127.0.0.1:<port><path>` answers 200; fail if the child dies first."""
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while time.monotonic() < deadline:
        if not child.alive():
            raise ProcessError(f"{child.name} exited with {child.popen.returncode}: {child.log_tail()}")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                return
            last_error = f"status {response.status}"
        except OSError as exc:
            last_error = str(exc)
        finally:
            connection.close()
        time.sleep(0.05)
    raise ProcessError(f"{child.name} did not answer on port {port} within {timeout:.0f} s ({last_error})")
