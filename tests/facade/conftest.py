"""Fixtures for the facade suite, on sbsync's own pytest plugin (``servicebus_emulator``).

One emulator and one shared client per test module (each pytest-xdist worker has its own);
every test gets entities of its own, so nothing one test leaves behind (messages, session
state, locks) is seen by another.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import sbsync
from sbsync.emulator import Emulator, EntityConfig

#: Short enough for lock tests, long enough that a loaded machine does not let one lapse.
LOCK_DURATION = 5


@pytest.fixture(scope="module")
def servicebus_emulator_options() -> dict[str, Any]:
    return {"lock_duration": LOCK_DURATION}


@pytest.fixture(scope="module")
def conn_str(emulator: Emulator) -> str:
    return emulator.connection_string


@pytest.fixture(scope="module")
def client(conn_str: str) -> Iterator[sbsync.ServiceBusClient]:
    """Shared by the module's tests that do not close it (links are the expensive part)."""
    with sbsync.ServiceBusClient.from_connection_string(conn_str) as c:
        yield c


@pytest.fixture
def session_queue(emulator: Emulator) -> str:
    """A fresh session-enabled queue."""
    name = f"sq-{uuid.uuid4().hex[:8]}"
    emulator.create_entity(EntityConfig(name=name, requires_session=True))
    return name


@pytest.fixture
def topic_subscription(emulator: Emulator) -> tuple[str, str]:
    """A fresh topic with a plain subscription ``S`` and a session-enabled ``S-sessions``."""
    topic, subscription = f"t-{uuid.uuid4().hex[:8]}", "audit"
    emulator.create_entity(EntityConfig(name=topic, kind="topic"))
    emulator.create_entity(EntityConfig(name=subscription, kind="subscription", topic=topic))
    emulator.create_entity(
        EntityConfig(name=f"{subscription}-sessions", kind="subscription", topic=topic, requires_session=True)
    )
    return topic, subscription
