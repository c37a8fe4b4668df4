"""The emulator the benchmarks measure against, in a process of its own (its own GIL), and
what /proc says about a process's memory and CPU."""

from __future__ import annotations

import ctypes
import os
import selectors
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["REPO", "Emulator", "cpu_seconds", "rss_bytes"]

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Emulator:
    """A running ``python -m sbsync.emulator`` process (so it has its own GIL)."""

    proc: subprocess.Popen[str]
    conn_str: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def port(self) -> int:
        # Endpoint=sb://127.0.0.1:PORT/;...
        endpoint = self.conn_str.split(";", 1)[0]
        return int(endpoint.rstrip("/").rsplit(":", 1)[1])

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    @classmethod
    @contextmanager
    def running(cls, *args: str) -> Iterator[Emulator]:
        """Start ``python -m sbsync.emulator --port 0 ARGS``; stop it on exit.

        Its stderr goes to a temporary file rather than a pipe (a pipe read only at the end
        would block an emulator that logs 64 KB); the tail is shown if it fails to start.
        """
        with tempfile.TemporaryFile("w+") as errors:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sbsync.emulator", "--port", "0", *args],
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                cwd=REPO,
                preexec_fn=_die_with_parent,
            )
            try:
                assert proc.stdout is not None
                with selectors.DefaultSelector() as selector:
                    selector.register(proc.stdout, selectors.EVENT_READ)
                    ready = selector.select(30)
                conn_str = proc.stdout.readline().strip() if ready else ""
                if not conn_str.startswith("Endpoint="):
                    errors.seek(0)
                    raise RuntimeError(f"the emulator did not start: {errors.read()[-2000:]}")
                yield cls(proc, conn_str)
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                if proc.stdout is not None:
                    proc.stdout.close()


def _die_with_parent() -> None:
    """In the emulator child (Linux): get SIGTERM when the bench process dies, however it
    dies (killed, or the hang watchdog's ``_exit``), so no emulator is left running."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
