"""Fixtures for the Flask integration: the plugin's emulator (one per module), the example app
importable."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import sbsync
from sbsync.emulator import Emulator, EntityConfig

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "flask_app"


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sbsync-loop")]


@pytest.fixture(scope="module")
def conn_str(emulator: Emulator) -> str:
    return emulator.connection_string


@pytest.fixture(scope="module")
def reader(conn_str: str) -> Iterator[sbsync.ServiceBusClient]:
    """A plain sbsync client for the tests' own receiving (not the app's)."""
    with sbsync.ServiceBusClient.from_connection_string(conn_str) as client:
        yield client


@pytest.fixture
def session_queue(emulator: Emulator) -> str:
    """A fresh session-enabled queue."""
    name = f"sq-{uuid.uuid4().hex[:8]}"
    emulator.create_entity(EntityConfig(name=name, requires_session=True))
    return name


@pytest.fixture
def example_app_module() -> Iterator[object]:
    """``examples/flask_app/app.py`` and ``worker.py``, imported as modules ``app``/``worker``."""
    sys.path.insert(0, str(EXAMPLE_DIR))
    try:
        import app
        import worker

        yield app, worker
    finally:
        sys.path.remove(str(EXAMPLE_DIR))
        sys.modules.pop("app", None)  # such common names must not shadow other tests' modules
        sys.modules.pop("worker", None)


@pytest.fixture(autouse=True)
def no_loop_thread_left() -> Iterator[None]:
    """Every app a test created must have closed its client (module fixtures excepted)."""
    before = set(loop_threads())
    yield
    deadline = time.monotonic() + 3
    while set(loop_threads()) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(loop_threads()) - before == set(), "an sbsync client was left open"
