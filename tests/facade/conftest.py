"""Fixtures for the facade suite: one emulator and one shared client for the whole run."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

import sbsync
from sbsync.emulator import Emulator

SESSION_QUEUES = ["sessions", "sessions-b", "sessions-c"]
TOPIC = "events"
SUBSCRIPTION = "audit"


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


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    emu = Emulator(
        auto_create=True,
        lock_duration=5,
        session_queues=SESSION_QUEUES,
        topics=[TOPIC],
        subscriptions=[f"{TOPIC}/{SUBSCRIPTION}"],
        session_subscriptions=[f"{TOPIC}/{SUBSCRIPTION}-sessions"],
    )
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture(scope="session")
def conn_str(emulator: Emulator) -> str:
    return emulator.connection_string


@pytest.fixture(scope="session")
def client(conn_str: str) -> Iterator[sbsync.ServiceBusClient]:
    """Shared by the tests that do not close it (links are the expensive part, not clients)."""
    with sbsync.ServiceBusClient.from_connection_string(conn_str) as c:
        yield c


@pytest.fixture(scope="session")
def topic_subscription() -> tuple[str, str]:
    return TOPIC, SUBSCRIPTION


@pytest.fixture
def queue() -> str:
    """A fresh queue name (the emulator creates it on first use)."""
    return f"q-{uuid.uuid4().hex[:8]}"
