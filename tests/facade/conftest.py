"""Fixtures for the facade suite, on sbsync's own pytest plugin (``servicebus_emulator``).

One emulator and one shared client per test module (each pytest-xdist worker has its own);
every test gets entities of its own, so nothing one test leaves behind (messages, session
state, locks) is seen by another.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import sbsync
from sbsync.emulator import Emulator, EntityConfig

#: Short enough for lock tests, long enough that a loaded machine does not let one lapse.
LOCK_DURATION = 5


def sbsync_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sbsync-loop")]


@pytest.fixture(scope="session", autouse=True)
def no_sbsync_thread_left() -> Iterator[None]:
    """Runs last: every client the suite opened must have taken its threads with it."""
    yield
    deadline = time.monotonic() + 3
    while sbsync_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sbsync_threads() == [], "sbsync loop/executor threads left running"


@pytest.fixture(scope="module")
def servicebus_emulator_options() -> dict[str, Any]:
    return {"lock_duration": LOCK_DURATION}


@pytest.fixture(scope="module")
def emulator(servicebus_emulator: Emulator) -> Emulator:
    return servicebus_emulator


@pytest.fixture(scope="module")
def conn_str(emulator: Emulator) -> str:
    return emulator.connection_string


@pytest.fixture(scope="module")
def client(conn_str: str) -> Iterator[sbsync.ServiceBusClient]:
    """Shared by the module's tests that do not close it (links are the expensive part)."""
    with sbsync.ServiceBusClient.from_connection_string(conn_str) as c:
        yield c


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def queue() -> str:
    """A fresh queue name (the emulator creates it on first use)."""
    return unique("q")


@pytest.fixture
def session_queue(emulator: Emulator) -> str:
    """A fresh session-enabled queue."""
    name = unique("sq")
    emulator.create_entity(EntityConfig(name=name, requires_session=True))
    return name


@pytest.fixture
def topic_subscription(emulator: Emulator) -> tuple[str, str]:
    """A fresh topic with a plain subscription ``S`` and a session-enabled ``S-sessions``."""
    topic, subscription = unique("t"), "audit"
    emulator.create_entity(EntityConfig(name=topic, kind="topic"))
    emulator.create_entity(EntityConfig(name=subscription, kind="subscription", topic=topic))
    emulator.create_entity(
        EntityConfig(name=f"{subscription}-sessions", kind="subscription", topic=topic, requires_session=True)
    )
    return topic, subscription
