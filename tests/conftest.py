"""Suite-wide checks: the run as a whole leaves no sbsync thread behind."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest


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
