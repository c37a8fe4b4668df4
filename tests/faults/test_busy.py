"""Server busy: a few refusals are retried away, many end in the SDK's error within the deadline."""

from __future__ import annotations

import time
from typing import Any

import pytest

from sbsync import ServiceBusClient, ServiceBusMessage
from sbsync.emulator import Emulator
from sbsync.exceptions import OperationTimeoutError, ServiceBusServerBusyError

from .conftest import connect, number, send_session

pytestmark = pytest.mark.timeout(60)


def test_a_few_busy_sends_recover_and_arrive_once(emulator: Emulator, client: ServiceBusClient) -> None:
    with client.get_queue_sender("q") as sender:
        emulator.faults.fail_next(2, operation="send")
        sender.send_messages(ServiceBusMessage("m:0"))
    assert emulator.stats("q").active == 1, "retried until accepted, and accepted once"


@pytest.mark.parametrize(
    "fault, call",
    [
        ("com.microsoft:get-session-state", lambda r: r.session.get_state()),
        ("com.microsoft:set-session-state", lambda r: r.session.set_state(b"x")),
        ("com.microsoft:renew-session-lock", lambda r: r.session.renew_lock()),
        ("com.microsoft:peek-message", lambda r: r.peek_messages(1)),
    ],
    ids=["get_state", "set_state", "renew_lock", "peek"],
)
def test_a_few_busy_management_calls_recover(emulator: Emulator, client: ServiceBusClient, fault: str, call: Any) -> None:
    send_session(client, "sq", "s1", 1)
    with client.get_queue_receiver("sq", session_id="s1", max_wait_time=3) as receiver:
        emulator.faults.fail_next(2, operation=fault)
        call(receiver)
        # The session survived the refusals: its message is still ours to complete.
        [message] = receiver.receive_messages(1)
        assert number(message) == 0
        receiver.complete_message(message)
    assert emulator.stats("sq").active == 0


def test_a_busy_receive_attach_recovers(emulator: Emulator, client: ServiceBusClient) -> None:
    with client.get_queue_sender("q") as sender:
        sender.send_messages(ServiceBusMessage("m:0"))
    emulator.faults.fail_next(2, operation="receive-attach")
    with client.get_queue_receiver("q", max_wait_time=5) as receiver:
        [message] = receiver.receive_messages(1)
        receiver.complete_message(message)
    assert emulator.stats("q").active == 0


def test_many_busy_sends_give_up_with_server_busy_within_the_deadline(emulator: Emulator) -> None:
    with connect(emulator, retry_total=3, retry_backoff_factor=0.1, retry_backoff_max=1) as client:
        with client.get_queue_sender("q") as sender:
            emulator.faults.fail_next(1000, operation="send")
            started = time.monotonic()
            with pytest.raises(ServiceBusServerBusyError):
                sender.send_messages(ServiceBusMessage("refused"))
            elapsed = time.monotonic() - started
            # 4 attempts and 3 back-offs of at most 1 s, plus the SDK's link re-opens.
            assert elapsed < 10, f"gave up after {elapsed:.1f} s"
            emulator.faults.clear()
            sender.send_messages(ServiceBusMessage("m:1"))  # the sender is still usable
    assert emulator.stats("q").active == 1, "the refused message never arrived"


def test_many_busy_management_calls_give_up_with_server_busy(emulator: Emulator) -> None:
    with connect(emulator, retry_total=2, retry_backoff_factor=0.1, retry_backoff_max=1) as client:
        send_session(client, "sq", "s1", 1)
        with client.get_queue_receiver("sq", session_id="s1", max_wait_time=3) as receiver:
            emulator.faults.fail_next(1000, operation="com.microsoft:get-session-state")
            started = time.monotonic()
            with pytest.raises(ServiceBusServerBusyError):
                receiver.session.get_state()
            assert time.monotonic() - started < 10
            emulator.faults.clear()
            assert receiver.session.get_state() is None  # the session is still held
            [message] = receiver.receive_messages(1)
            receiver.complete_message(message)


def test_busy_beyond_the_callers_timeout_ends_at_the_timeout(emulator: Emulator) -> None:
    """``timeout=`` bounds every attempt together, even with a generous retry policy."""
    with connect(emulator, retry_total=50, retry_backoff_factor=0.5, retry_backoff_max=2) as client:
        with client.get_queue_sender("q") as sender:
            sender.send_messages(ServiceBusMessage("warm-up"))
            emulator.faults.fail_next(1000, operation="send")
            started = time.monotonic()
            with pytest.raises((OperationTimeoutError, ServiceBusServerBusyError)):
                sender.send_messages(ServiceBusMessage("refused"), timeout=2)
            elapsed = time.monotonic() - started
            assert elapsed < 3.5, f"timeout=2 returned after {elapsed:.1f} s"
            emulator.faults.clear()
    assert emulator.stats("q").active == 1


def test_many_busy_sends_give_up_at_the_retry_deadline(emulator: Emulator) -> None:
    """``retry_deadline`` (sbsync's extra): no retry starts after it; the SDK's error type."""
    with connect(emulator, retry_total=50, retry_backoff_factor=0.2, retry_backoff_max=1, retry_deadline=2) as client:
        with client.get_queue_sender("q") as sender:
            emulator.faults.fail_next(1000, operation="send")
            started = time.monotonic()
            with pytest.raises(ServiceBusServerBusyError):
                sender.send_messages(ServiceBusMessage("refused"))
            elapsed = time.monotonic() - started
            assert 1 < elapsed < 4, f"gave up after {elapsed:.1f} s (deadline 2 s)"
            emulator.faults.clear()
    assert emulator.stats("q").active == 0
