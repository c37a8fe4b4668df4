"""Shared pieces of the fault suite: emulators, clients, leak checks, small waits.

Every test gets its own emulator (faults act on all of an emulator's connections, so tests
must not share one) and every client is closed by the fixture that made it.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable

import pytest

import sbsync
from sbsync import ServiceBusMessage
from sbsync.emulator import Emulator

#: Figures of the soak runs in this session (JSON lines), printed in pytest's terminal summary.
SOAK_REPORTS: list[str] = []

#: Short lock so that lock expiry shows up within a test; long enough not to expire by itself.
LOCK = 5.0


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def _socket_inodes() -> dict[str, str]:
    inodes: dict[str, str] = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed while listing
        if target.startswith("socket:"):
            inodes[target[8:-1]] = fd
    return inodes


def open_sockets() -> int:
    """Sockets this process holds (Linux: /proc/self/fd)."""
    return len(_socket_inodes())


def describe_sockets() -> list[str]:
    """This process's TCP sockets as ``fd local->remote state`` (for leak messages)."""
    inodes = _socket_inodes()
    found = []
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        parts = line.split()
        if parts[9] in inodes:
            found.append(f"fd{inodes[parts[9]]} {parts[1]}->{parts[2]} st={parts[3]}")
            del inodes[parts[9]]
    return found + [f"fd{fd} (not TCP/IPv4)" for fd in inodes.values()]


def sbsync_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("sbsync") and t.is_alive())


class LeakCheck:
    """Thread names and socket count before, compared after (with a grace period)."""

    def __init__(self) -> None:
        self.threads = sbsync_threads()
        self.sockets = open_sockets()

    def assert_clean(self, grace: float = 5.0, collect: bool = False) -> None:
        if collect:
            gc.collect()  # only where a test says so: a socket freed by GC alone is worth knowing
        wait_for(lambda: sbsync_threads() == self.threads and open_sockets() <= self.sockets, grace)
        assert sbsync_threads() == self.threads, "sbsync threads left running"
        assert open_sockets() <= self.sockets, f"sockets leaked: {open_sockets()} > {self.sockets}: {describe_sockets()}"


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """A fresh emulator per test: plain queue ``q``, session queue ``sq``, 5 s locks."""
    emu = Emulator(queues=["q"], session_queues=["sq"], lock_duration=LOCK, max_delivery_count=10)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


def connect(emu: Emulator, **kwargs: Any) -> sbsync.ServiceBusClient:
    """A client that retries quickly (the tests measure outcomes, not back-off)."""
    kwargs.setdefault("retry_backoff_factor", 0.05)
    kwargs.setdefault("retry_backoff_max", 0.5)
    return sbsync.ServiceBusClient.from_connection_string(emu.connection_string, **kwargs)


@pytest.fixture
def client(emulator: Emulator) -> Iterator[sbsync.ServiceBusClient]:
    with connect(emulator) as c:
        yield c


def send_session(client: sbsync.ServiceBusClient, queue: str, session_id: str, count: int) -> None:
    with client.get_queue_sender(queue) as sender:
        sender.send_messages(
            [ServiceBusMessage(f"{session_id}:{n}", session_id=session_id, message_id=f"{session_id}:{n}")
             for n in range(count)]
        )


def number(message: Any) -> int:
    """``"<session>:<n>"`` -> n."""
    return int(str(message).rsplit(":", 1)[1])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave ``@pytest.mark.soak`` tests out unless a ``-m`` expression asks for them (a
    safety net next to ``addopts = -m "not soak"``: the soak runs for minutes)."""
    if config.option.markexpr:
        return
    soak = [item for item in items if item.get_closest_marker("soak")]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if not item.get_closest_marker("soak")]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in SOAK_REPORTS:
        terminalreporter.write_line(f"SOAK FIGURES {line}")
