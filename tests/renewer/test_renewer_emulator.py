"""AutoLockRenewer end to end: sbsync facade -> azure.servicebus.aio -> AMQP -> emulator.

Locks last 5 s here, so a renewer that stalls, polls too slowly or blocks its timer thread on
the network loses them within the test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from azure.servicebus.exceptions import (
    AutoLockRenewFailed,
    MessageLockLostError,
    SessionLockLostError,
)

import sbsync
from sbsync import AutoLockRenewer, ServiceBusClient, ServiceBusMessage

LOCK = 5.0


@pytest.fixture
def emulator(servicebus_emulator_factory: Any) -> Any:
    return servicebus_emulator_factory(queues=["q"], session_queues=["sq"], lock_duration=LOCK)


@pytest.fixture
def client(emulator: Any) -> Iterator[ServiceBusClient]:
    with ServiceBusClient.from_connection_string(
        emulator.connection_string, retry_backoff_factor=0.2
    ) as client:
        yield client


class Losses:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, BaseException | None, float]] = []
        self.event = threading.Event()

    def __call__(self, renewable: Any, error: BaseException | None) -> None:
        self.calls.append((renewable, error, time.monotonic()))
        self.event.set()


def _burn_cpu(seconds: float) -> int:
    """A pure-Python loop holding the GIL as much as the interpreter lets it."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        for i in range(10_000):
            n += i * i % 7
    return n


@pytest.mark.timeout(90)
def test_locks_survive_20_s_of_cpu_bound_main_thread(client: ServiceBusClient) -> None:
    with client.get_queue_sender("q") as sender:
        sender.send_messages([ServiceBusMessage(f"m{i}") for i in range(10)])
    with client.get_queue_sender("sq") as sender:
        sender.send_messages([ServiceBusMessage(f"s{i}", session_id="A") for i in range(3)])
    losses = Losses()
    with AutoLockRenewer(on_lock_renew_failure=losses) as renewer:
        with client.get_queue_receiver("q", auto_lock_renewer=renewer) as receiver, \
                client.get_queue_receiver("sq", session_id="A", auto_lock_renewer=renewer) as session_receiver:
            messages: list[Any] = []
            while len(messages) < 10:
                messages += receiver.receive_messages(10, max_wait_time=5)
            session_messages = session_receiver.receive_messages(3, max_wait_time=5)
            assert len(session_messages) == 3
            assert len(renewer) == 11

            _burn_cpu(4 * LOCK)

            assert losses.calls == []
            for message in messages:
                receiver.complete_message(message)
            session_receiver.session.set_state(b"done")
            for message in session_messages:
                session_receiver.complete_message(message)
            assert session_receiver.session.get_state() == b"done"
            assert session_receiver.session.auto_renew_error is None
    late = sorted(renewer.lateness)
    assert late and late[-1] < 1.0, f"the timer ran up to {late[-1]:.2f} s late"


@pytest.mark.timeout(120)
def test_500_messages_kept_with_o1_threads(client: ServiceBusClient) -> None:
    with client.get_queue_sender("q") as sender:
        for chunk in range(5):
            sender.send_messages([ServiceBusMessage(f"m{chunk}-{i}") for i in range(100)])
    losses = Losses()
    with AutoLockRenewer(on_lock_renew_failure=losses) as renewer, \
            client.get_queue_receiver("q", auto_lock_renewer=renewer, prefetch_count=100) as receiver:
        baseline = threading.active_count()  # the link is open: its loop thread exists
        received: list[Any] = []
        while len(received) < 500:
            batch = receiver.receive_messages(100, max_wait_time=5)
            assert batch, f"only {len(received)} messages arrived"
            received += batch
        assert len(renewer) == 500

        peak = baseline
        deadline = time.monotonic() + 3 * LOCK
        while time.monotonic() < deadline:
            peak = max(peak, threading.active_count())
            time.sleep(0.05)
        assert peak <= baseline + 2, f"{peak - baseline} extra threads for 500 locks"
        assert losses.calls == []
        for message in received:
            receiver.complete_message(message)
    assert losses.calls == []


@pytest.mark.timeout(60)
def test_failed_renewal_is_reported_within_one_lock_duration(client: ServiceBusClient, emulator: Any) -> None:
    with client.get_queue_sender("q") as sender:
        sender.send_messages(ServiceBusMessage("doomed"))
    losses = Losses()
    with AutoLockRenewer(on_lock_renew_failure=losses) as renewer, \
            client.get_queue_receiver("q", auto_lock_renewer=renewer) as receiver:
        (message,) = receiver.receive_messages(1, max_wait_time=5)
        emulator.faults.fail_next(1000, operation="com.microsoft:renew-lock")
        started = time.monotonic()
        try:
            assert losses.event.wait(2 * LOCK)
        finally:
            emulator.faults.clear()
        ((renewable, error, at),) = losses.calls
        assert renewable is message
        assert at - started <= LOCK, f"loss reported after {at - started:.2f} s"
        assert isinstance(error, AutoLockRenewFailed)
        assert message.auto_renew_error is error
        t0 = time.monotonic()
        with pytest.raises(MessageLockLostError) as info:
            receiver.complete_message(message)
        assert time.monotonic() - t0 < 0.05, "raised at once, without a round trip"
        assert info.value.inner_exception is error


@pytest.mark.timeout(60)
def test_expired_session_lock_is_pushed_to_session_and_callback(client: ServiceBusClient, emulator: Any) -> None:
    with client.get_queue_sender("sq") as sender:
        sender.send_messages(ServiceBusMessage("x", session_id="S"))
    losses = Losses()
    with AutoLockRenewer(on_lock_renew_failure=losses) as renewer, \
            client.get_queue_receiver("sq", session_id="S", auto_lock_renewer=renewer) as receiver:
        receiver.receive_messages(1, max_wait_time=5)
        emulator.faults.expire_session_lock("sq", "S")
        started = time.monotonic()
        assert losses.event.wait(2 * LOCK)
        ((renewable, error, at),) = losses.calls
        assert renewable is receiver.session
        assert at - started <= LOCK
        assert isinstance(error, AutoLockRenewFailed)
        assert receiver.session.auto_renew_error is error
        with pytest.raises(SessionLockLostError):
            receiver.session.get_state()
        with pytest.raises(SessionLockLostError):
            receiver.receive_messages(1, max_wait_time=1)


@pytest.mark.timeout(60)
def test_settled_messages_and_closed_receivers_end_quietly(client: ServiceBusClient) -> None:
    with client.get_queue_sender("q") as sender:
        sender.send_messages([ServiceBusMessage(str(i)) for i in range(4)])
    losses = Losses()
    with AutoLockRenewer(on_lock_renew_failure=losses) as renewer:
        receiver = client.get_queue_receiver("q", auto_lock_renewer=renewer)
        messages: list[Any] = []
        while len(messages) < 4:
            messages += receiver.receive_messages(4, max_wait_time=5)
        receiver.complete_message(messages[0])
        time.sleep(LOCK * 0.6)  # one renewal round: the settled one is dropped
        assert len(renewer) == 3
        receiver.close()
        time.sleep(LOCK * 0.8)
        assert len(renewer) == 0
    assert losses.calls == []


def test_exported() -> None:
    assert "AutoLockRenewer" in sbsync.__all__
    assert sbsync.AutoLockRenewer is AutoLockRenewer


@pytest.mark.timeout(60)
def test_dropped_connection_losses_are_pushed(client: ServiceBusClient, emulator: Any) -> None:
    with client.get_queue_sender("q") as sender, client.get_queue_sender("sq") as session_sender:
        sender.send_messages(ServiceBusMessage("m"))
        session_sender.send_messages(ServiceBusMessage("s", session_id="D"))
    losses = Losses()
    with AutoLockRenewer(on_lock_renew_failure=losses) as renewer, \
            client.get_queue_receiver("q", auto_lock_renewer=renewer) as receiver, \
            client.get_queue_receiver("sq", session_id="D", auto_lock_renewer=renewer) as session_receiver:
        (message,) = receiver.receive_messages(1, max_wait_time=5)
        session_receiver.receive_messages(1, max_wait_time=5)
        emulator.faults.drop_connections()
        started = time.monotonic()
        deadline = started + 2 * LOCK
        while len(losses.calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert {id(r) for r, _, _ in losses.calls} == {id(message), id(session_receiver.session)}
        assert all(at - started <= LOCK for _, _, at in losses.calls)
        with pytest.raises(MessageLockLostError):
            receiver.complete_message(message)
        with pytest.raises(SessionLockLostError):
            session_receiver.session.get_state()
