"""Settlement on the receive link returns once its frame is written; the broker's verdict is
raised by the same thread's next call on the receiver, or by close() -- never lost, never
reported twice (the guarantee in sbsync/_settlement.py)."""

from __future__ import annotations

import sys
import threading
import time

import pytest
from azure.servicebus import ServiceBusMessage
from azure.servicebus.exceptions import MessageAlreadySettled, MessageLockLostError

import sbsync


def _received(client: sbsync.ServiceBusClient, queue: str, count: int, receiver: sbsync.ServiceBusReceiver) -> list:
    with client.get_queue_sender(queue) as sender:
        sender.send_messages([ServiceBusMessage(f"m{i}") for i in range(count)])
    got: list = []
    deadline = time.monotonic() + 10
    while len(got) < count and time.monotonic() < deadline:
        got += receiver.receive_messages(count - len(got), max_wait_time=2)
    assert len(got) == count
    return got


def _settle_expecting_verdict(settle, next_call) -> str:
    """Where the lock-lost verdict of ``settle()`` surfaced: at the call, or at ``next_call()``."""
    try:
        settle()
    except MessageLockLostError:
        return "call"
    with pytest.raises(MessageLockLostError) as raised:
        next_call()
    if sys.version_info >= (3, 11):
        assert "made earlier on this receiver" in "".join(raised.value.__notes__)
    return "next call"


def test_broker_verdict_is_raised_by_the_next_call_once(client, emulator, queue):
    with client.get_queue_receiver(queue) as receiver:
        first, second = _received(client, queue, 2, receiver)
        assert emulator.faults.expire_message_locks(queue) == 2
        # The client still thinks the locks are good; only the broker's verdict says otherwise.
        assert _settle_expecting_verdict(lambda: receiver.complete_message(first), lambda: receiver.peek_messages(5))
        receiver.peek_messages(5)  # raised once only
        assert emulator.stats(queue).active == 2, "neither message was settled"
        assert _settle_expecting_verdict(lambda: receiver.abandon_message(second), lambda: receiver.peek_messages(5))


def test_next_settlement_raises_the_previous_verdict(client, emulator, queue):
    with client.get_queue_receiver(queue) as receiver:
        first, second = _received(client, queue, 2, receiver)
        assert emulator.faults.expire_message_locks(queue) == 2
        where = _settle_expecting_verdict(
            lambda: receiver.complete_message(first), lambda: receiver.complete_message(second)
        )
        if where == "next call":  # the second one's own verdict is still to come
            with pytest.raises(MessageLockLostError):
                receiver.peek_messages(1)


def test_close_raises_a_verdict_nobody_collected(client, emulator, queue):
    receiver = client.get_queue_receiver(queue)
    (message,) = _received(client, queue, 1, receiver)
    assert emulator.faults.expire_message_locks(queue) == 1
    assert _settle_expecting_verdict(lambda: receiver.complete_message(message), receiver.close)
    receiver.close()  # closed: nothing left to raise


def test_settlement_with_a_timeout_waits_for_the_verdict(client, emulator, queue):
    with client.get_queue_receiver(queue) as receiver:
        (message,) = _received(client, queue, 1, receiver)
        assert emulator.faults.expire_message_locks(queue) == 1
        with pytest.raises(MessageLockLostError):
            receiver.complete_message(message, timeout=10)
        receiver.peek_messages(1)  # nothing left over for the next call


def test_settled_once_the_next_call_returns(client, emulator, queue):
    with client.get_queue_receiver(queue) as receiver:
        messages = _received(client, queue, 5, receiver)
        for message in messages:
            receiver.complete_message(message)
        with pytest.raises(MessageAlreadySettled):
            receiver.complete_message(messages[-1])
        assert receiver.peek_messages(5) == []
    assert emulator.stats(queue).active == 0 and emulator.stats(queue).locked == 0


def test_last_settlement_before_close_is_applied(client, emulator, queue):
    with client.get_queue_receiver(queue) as receiver:
        (message,) = _received(client, queue, 1, receiver)
        receiver.complete_message(message)
    assert emulator.stats(queue).active == 0 and emulator.stats(queue).locked == 0


def test_a_verdict_goes_to_the_thread_that_settled(client, emulator, queue):
    with client.get_queue_receiver(queue) as receiver:
        doomed, _other = _received(client, queue, 2, receiver)
        assert emulator.faults.expire_message_locks(queue) == 2
        outcome: list[str] = []

        def settle_in_other_thread() -> None:
            try:
                receiver.complete_message(doomed)
                outcome.append("returned")
            except MessageLockLostError:
                outcome.append("raised")

        worker = threading.Thread(target=settle_in_other_thread)
        worker.start()
        worker.join(10)
        # This thread's calls do not raise the other thread's verdict.
        receiver.peek_messages(5)
        assert emulator.stats(queue).active == 2
        assert outcome in (["returned"], ["raised"])
