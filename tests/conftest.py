"""Suite-wide pieces: the run as a whole leaves no sbsync thread behind; the emulator and
fresh entity names the facade, Flask, tracing and WSGI suites share.

``emulator`` is the plugin's module-scoped ``servicebus_emulator`` (a directory gives it other
settings by overriding ``servicebus_emulator_options``); the emulator and fault suites define
their own ``emulator`` fixtures."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from sbsync.emulator import Emulator


def sbsync_threads() -> list[threading.Thread]:
    """Threads sbsync started: loops, executors, renewer timers, processors, emulators."""
    return [t for t in threading.enumerate() if t.name.startswith("sbsync")]


@pytest.fixture(scope="session", autouse=True)
def no_sbsync_thread_left_after_the_suite() -> Iterator[None]:
    before = set(sbsync_threads())
    yield
    deadline = time.monotonic() + 5
    while set(sbsync_threads()) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    left = sorted(t.name for t in set(sbsync_threads()) - before)
    assert not left, f"sbsync threads still running after the suite: {left}"


@pytest.fixture(scope="module")
def emulator(servicebus_emulator: Emulator) -> Emulator:
    return servicebus_emulator


@pytest.fixture
def queue() -> str:
    """A fresh queue name (the emulator creates it on first use): nothing one test leaves
    behind is seen by another."""
    return f"q-{uuid.uuid4().hex[:8]}"
