"""Fixtures for the tracing tests (azure-core-tracing-opentelemetry, in the ``test`` and
``tracing`` extras): the plugin's emulator, a shared sbsync client, a fresh queue."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

import sbsync
from sbsync.emulator import Emulator


@pytest.fixture(scope="module")
def emulator(servicebus_emulator: Emulator) -> Emulator:
    return servicebus_emulator


@pytest.fixture(scope="module")
def client(emulator: Emulator) -> Iterator[sbsync.ServiceBusClient]:
    with sbsync.ServiceBusClient.from_connection_string(emulator.connection_string) as c:
        yield c


@pytest.fixture
def queue() -> str:
    """A fresh queue name (the emulator creates it on first use)."""
    return f"q-{uuid.uuid4().hex[:8]}"
