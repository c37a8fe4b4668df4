"""Fixtures for the tracing tests (azure-core-tracing-opentelemetry, in the ``test`` and
``tracing`` extras): a shared sbsync client (``emulator`` and ``queue`` come from the suite's
root conftest)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import sbsync
from sbsync.emulator import Emulator


@pytest.fixture(scope="module")
def client(emulator: Emulator) -> Iterator[sbsync.ServiceBusClient]:
    with sbsync.ServiceBusClient.from_connection_string(emulator.connection_string) as c:
        yield c

