"""Retries end to end: the facade's one retry layer against injected faults in the emulator."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from azure.servicebus.exceptions import (
    MessageLockLostError,
    ServiceBusServerBusyError,
    SessionLockLostError,
)

from sbsync import ServiceBusClient, ServiceBusMessage

LOCK = 5.0


@pytest.fixture
def emulator(servicebus_emulator_factory: Any) -> Any:
    return servicebus_emulator_factory(queues=["q"], session_queues=["sq"], lock_duration=LOCK)


def connect(emulator: Any, **kwargs: Any) -> ServiceBusClient:
    kwargs.setdefault("retry_backoff_factor", 0.05)
    return ServiceBusClient.from_connection_string(emulator.connection_string, **kwargs)


@pytest.fixture
def client(emulator: Any) -> Iterator[ServiceBusClient]:
    with connect(emulator) as client:
        yield client


def retries_logged(caplog: pytest.LogCaptureFixture, operation: str) -> int:
    return sum(
        1 for r in caplog.records if r.name == "sbsync._retry" and r.getMessage().startswith(f"{operation} failed")
    )


@pytest.mark.timeout(60)
def test_send_succeeds_through_server_busy(client: ServiceBusClient, emulator: Any, caplog: pytest.LogCaptureFixture) -> None:
    with client.get_queue_sender("q") as sender, client.get_queue_receiver("q") as receiver:
        emulator.faults.fail_next(3, operation="send")
        with caplog.at_level(logging.WARNING, logger="sbsync._retry"):
            sender.send_messages(ServiceBusMessage("through"))
        assert retries_logged(caplog, "send_messages") == 3
        (message,) = receiver.receive_messages(1, max_wait_time=5)
        assert str(message) == "through"
        receiver.complete_message(message)
        assert receiver.receive_messages(1, max_wait_time=0.5) == [], "sent exactly once"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("retry_total", [0, 2])
def test_gives_up_with_the_sdk_exception_after_configured_attempts(
    emulator: Any, retry_total: int, caplog: pytest.LogCaptureFixture
) -> None:
    with connect(emulator, retry_total=retry_total) as client, client.get_queue_sender("q") as sender:
        emulator.faults.fail_next(100, operation="send")
        try:
            with caplog.at_level(logging.WARNING, logger="sbsync._retry"), pytest.raises(ServiceBusServerBusyError):
                sender.send_messages(ServiceBusMessage("never"))
        finally:
            remaining = emulator._rules.failures[0][0] if emulator._rules.failures else 0
            emulator.faults.clear()
        assert 100 - remaining == retry_total + 1, "attempts seen by the broker"
        assert retries_logged(caplog, "send_messages") == retry_total
        sender.send_messages(ServiceBusMessage("after"))  # the link is still usable


@pytest.mark.timeout(60)
def test_deadline_bounds_the_retries(emulator: Any) -> None:
    # Waits 0.4, 0.8, 1.6, 3.2 ...: with a 2 s deadline at most ~1.2 s of waiting fits.
    with connect(emulator, retry_total=10, retry_backoff_factor=0.2, retry_deadline=2.0) as client, \
            client.get_queue_sender("q") as sender:
        emulator.faults.fail_next(100, operation="send")
        started = time.monotonic()
        try:
            with pytest.raises(ServiceBusServerBusyError):
                sender.send_messages(ServiceBusMessage("never"))
        finally:
            emulator.faults.clear()
        assert time.monotonic() - started < 2.0


@pytest.mark.timeout(60)
def test_renew_lock_retried_and_lock_lost_never_retried(
    client: ServiceBusClient, emulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with client.get_queue_sender("q") as sender:
        sender.send_messages(ServiceBusMessage("m"))
    with client.get_queue_receiver("q") as receiver:
        (message,) = receiver.receive_messages(1, max_wait_time=5)
        emulator.faults.fail_next(2, operation="com.microsoft:renew-lock")
        with caplog.at_level(logging.WARNING, logger="sbsync._retry"):
            receiver.renew_message_lock(message)
        assert retries_logged(caplog, "renew_message_lock") == 2

        assert emulator.faults.expire_message_locks("q") == 1
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="sbsync._retry"), pytest.raises(MessageLockLostError):
            receiver.renew_message_lock(message)
        assert retries_logged(caplog, "renew_message_lock") == 0, "one attempt only"


@pytest.mark.timeout(90)
def test_after_dropped_connections(client: ServiceBusClient, emulator: Any) -> None:
    with client.get_queue_sender("q") as sender, client.get_queue_sender("sq") as session_sender:
        sender.send_messages(ServiceBusMessage("before"))
        session_sender.send_messages([ServiceBusMessage(f"s{i}", session_id="S") for i in range(3)])
        with client.get_queue_receiver("q") as receiver, \
                client.get_queue_receiver("sq", session_id="S") as session_receiver:
            (first,) = receiver.receive_messages(1, max_wait_time=5)
            receiver.complete_message(first)
            (s0,) = session_receiver.receive_messages(1, max_wait_time=5)
            session_receiver.complete_message(s0)
            (s1,) = session_receiver.receive_messages(1, max_wait_time=5)  # left unsettled
            session_receiver.session.set_state(b"after-s0")

            assert emulator.faults.drop_connections() >= 4

            # Senders and plain receivers carry on (their next call reconnects).
            sender.send_messages(ServiceBusMessage("after"))
            (again,) = receiver.receive_messages(1, max_wait_time=5)
            assert str(again) == "after"
            receiver.complete_message(again)

            # A session receiver's session is gone for good.
            with pytest.raises(SessionLockLostError):
                session_receiver.session.get_state()
            with pytest.raises(SessionLockLostError):
                session_receiver.receive_messages(1, max_wait_time=1)

        # A new receiver takes the session and resumes at the first unsettled message.
        with client.get_queue_receiver("sq", session_id="S") as new_receiver:
            assert new_receiver.session.get_state() == b"after-s0"
            bodies = []
            while len(bodies) < 2:
                batch = new_receiver.receive_messages(2, max_wait_time=5)
                assert batch
                for message in batch:
                    bodies.append(str(message))
                    new_receiver.complete_message(message)
            assert bodies == ["s1", "s2"]
            assert s1.delivery_count is not None
