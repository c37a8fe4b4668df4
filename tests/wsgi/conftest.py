"""Fixtures for the WSGI servers' tests: one emulator per module, a fresh orders queue."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

import sbsync
from sbsync.emulator import Emulator, EntityConfig


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    emu = Emulator(host="127.0.0.1", port=0, auto_create=True)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


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

