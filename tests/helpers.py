"""What many test modules share that is not a fixture: the checkout's root, the `offload`
command, free ports on 127.0.0.1, process-group checks and `offload serve` in a subprocess.
(Fixtures are in conftest.py; test modules never import conftest or one another.)"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OFFLOAD = [sys.executable, "-m", "offload.cli"]
#: `offload serve` on ports the kernel picks, all three listeners on.
FREE_PORTS = ["--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"]


def settled_count(read: Callable[[], int], expected: int, timeout: float = 20) -> int:
    """`read()` once it reaches `expected`, or its last value after `timeout` seconds.

    Triton records a request in its statistics after it has sent the response, so a
    counter read right after the call returns can still lag by the last batch."""
    deadline = time.monotonic() + timeout
    value = read()
    while value < expected and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    return value


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def closed_address() -> str:
    """`127.0.0.1:PORT` where nothing listens (a moment ago)."""
    return f"127.0.0.1:{free_port()}"


def group_alive(pgid: int) -> bool:
    """Whether any process of this process group (tritonserver and its stubs) remains."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # Zombies still count for killpg; a group of only zombies is gone for our purposes.
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def stop_group(pgid: int) -> None:
    """Last-resort cleanup for a test that failed half way."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


class ServeProcess:
    """`offload serve` in a subprocess, its output read line by line without blocking."""

    def __init__(self, *args: str, command: list[str] | None = None, cwd: Path = ROOT,
                 env: dict[str, str] | None = None) -> None:
        # Its own session, so that a test can signal the whole group as a terminal's Ctrl-C
        # would.
        self.process = subprocess.Popen(command or [*OFFLOAD, "serve", *args], cwd=cwd,
                                        env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout as output:  # closed at its end, by its only reader
            for line in output:
                self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = 180) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    break
                continue
            self.seen.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no line matching {pattern!r}; output:\n{''.join(self.seen)}")

    def output(self) -> str:
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return "".join(self.seen)
