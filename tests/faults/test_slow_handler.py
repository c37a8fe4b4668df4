"""A lock expires while a handler is slow: the loss is reported, the message comes back, and
nobody completes it twice."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sbsync import AutoLockRenewer, ServiceBusClient, ServiceBusMessage
from sbsync.emulator import Emulator
from sbsync.exceptions import AutoLockRenewFailed, MessageLockLostError, SessionLockLostError
from sbsync.processor import SessionContext, SessionProcessor

from .conftest import LeakCheck, connect, number, send_session, wait_for

pytestmark = pytest.mark.timeout(90)


def test_plain_message_lock_lost_while_handling(emulator: Emulator, client: ServiceBusClient) -> None:
    losses: list[tuple[Any, BaseException | None]] = []
    with client.get_queue_sender("q") as sender:
        sender.send_messages(ServiceBusMessage("m:0"))
    renewer = AutoLockRenewer(max_lock_renewal_duration=60, on_lock_renew_failure=lambda m, e: losses.append((m, e)))
    with renewer, client.get_queue_receiver("q", max_wait_time=5, auto_lock_renewer=renewer) as receiver:
        [message] = receiver.receive_messages(1)
        # The "handler" is slow; meanwhile the broker takes the lock away.
        assert emulator.faults.expire_message_locks("q") == 1
        assert wait_for(lambda: losses, 10), "the renewer did not report the lost lock"
        assert losses[0][0] is message
        # As the SDK's renewer: AutoLockRenewFailed wrapping what the broker said.
        assert isinstance(losses[0][1], AutoLockRenewFailed)
        assert isinstance(losses[0][1].inner_exception, MessageLockLostError)
        assert message.auto_renew_error is losses[0][1]
        with pytest.raises(MessageLockLostError):
            receiver.complete_message(message)
        [again] = receiver.receive_messages(1)
        assert again.sequence_number == message.sequence_number
        assert again.delivery_count == message.delivery_count + 1
        receiver.complete_message(again)
    assert emulator.stats("q").active == 0 and emulator.stats("q").locked == 0


class Recorder:
    """What a processor did, as seen from its callbacks."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.handled: list[tuple[int, int]] = []  # (n, delivery_count)
        self.errors: list[BaseException] = []

    def on_error(self, exc: BaseException, context: SessionContext | None) -> None:
        with self.lock:
            self.errors.append(exc)


@pytest.fixture
def slow_emulator() -> Iterator[Emulator]:
    """2 s session locks, so that a lock left unrenewed runs out within a test."""
    with Emulator(session_queues=["slow"], lock_duration=2, max_delivery_count=10) as emu:
        yield emu


@pytest.mark.parametrize("how", ["broker-expires-it", "renewal-runs-out"])
def test_processor_session_lock_lost_during_slow_handler(slow_emulator: Emulator, how: str) -> None:
    leaks = LeakCheck()
    record = Recorder()
    slow_once = threading.Event()

    def handler(message: Any, context: SessionContext) -> None:
        n = number(message)
        with record.lock:
            record.handled.append((n, message.delivery_count))
        if n == 1 and not slow_once.is_set():
            slow_once.set()
            if how == "broker-expires-it":
                slow_emulator.faults.expire_session_lock("slow", "s1")
                time.sleep(1.0)
            else:
                time.sleep(4.5)  # renewal stops after 1 s; the 2 s lock runs out meanwhile

    with connect(slow_emulator) as client:
        send_session(client, "slow", "s1", 3)
        processor = SessionProcessor(
            client,
            queue_name="slow",
            handler=handler,
            max_concurrent_sessions=2,
            session_idle_timeout=1.0,
            max_lock_renewal_duration=1.0 if how == "renewal-runs-out" else 60.0,
            on_error=record.on_error,
        )
        processor.start()
        try:
            assert wait_for(lambda: processor.stats.messages_completed >= 3, 40), record.handled
        finally:
            assert processor.stop(timeout=10)
    # Handled in order, message 1 twice (the second time redelivered), completed once each.
    assert [n for n, _ in record.handled] == [0, 1, 1, 2]
    assert record.handled[2][1] == record.handled[1][1] + 1, "the redelivery counts as a delivery"
    assert processor.stats.messages_completed == 3
    assert processor.stats.sessions_lost == 1
    assert [type(e) for e in record.errors] == [SessionLockLostError], record.errors
    stats = slow_emulator.stats("slow")
    assert (stats.active, stats.locked, stats.dead_letter) == (0, 0, 0)
    leaks.assert_clean()
