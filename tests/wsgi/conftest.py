"""Fixtures for the WSGI servers' tests: the plugin's emulator (one per module), a fresh orders
queue, and a client of the tests' own for reading back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

import sbsync
from sbsync.emulator import Emulator, EntityConfig


@pytest.fixture(scope="module")
def reader(emulator: Emulator) -> Iterator[sbsync.ServiceBusClient]:
    """The tests' own client for reading back (not the app's)."""
    with sbsync.ServiceBusClient.from_connection_string(emulator.connection_string) as client:
        yield client


@pytest.fixture
def orders_queue(emulator: Emulator) -> str:
    name = f"orders-{uuid.uuid4().hex[:8]}"
    emulator.create_entity(EntityConfig(name=name, requires_session=True))
    return name
