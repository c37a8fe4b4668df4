"""Settlement returns once the broker's verdict is in, as the sync SDK's (7.15+) does: a
verdict the broker refuses is raised by that very call, and one that returned is applied."""

from __future__ import annotations

import time

import pytest
from azure.servicebus import ServiceBusMessage
from azure.servicebus.exceptions import (
    MessageAlreadySettled,
    MessageLockLostError,
    SessionLockLostError,
)

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


@pytest.mark.parametrize("settle", ["complete_message", "abandon_message", "defer_message", "dead_letter_message"])
def test_a_verdict_the_broker_refuses_is_raised_by_that_call(client, emulator, queue, settle):
    with client.get_queue_receiver(queue) as receiver:
        first, second = _received(client, queue, 2, receiver)
        # The client still thinks the locks are good; only the broker's verdict says otherwise.
        assert emulator.faults.expire_message_locks(queue) == 2
        with pytest.raises(MessageLockLostError):
            getattr(receiver, settle)(first)
        with pytest.raises(MessageLockLostError):
            getattr(receiver, settle)(second)
        receiver.peek_messages(1)  # nothing left over for the next call
    assert emulator.stats(queue).active == 2


def test_a_settlement_that_returned_is_applied(client, emulator, queue):
    with client.get_queue_receiver(queue) as receiver:
        messages = _received(client, queue, 5, receiver)
        for message in messages:
            receiver.complete_message(message)
            with pytest.raises(MessageAlreadySettled):
                receiver.complete_message(message)
        assert emulator.stats(queue).active == 0 and emulator.stats(queue).locked == 0


@pytest.mark.parametrize("noticed_by", ["settlement", "renewal", "peek"])
def test_a_session_link_the_broker_detached_ends_the_session_for_good(client, emulator, session_queue, noticed_by):
    """A session lock is bound to its link: once the broker takes it (and detaches the link),
    settling raises SessionLockLostError however the SDK learnt of the detach, and so does
    every later call; the receiver never quietly accepts the session anew."""
    with client.get_queue_sender(session_queue) as sender:
        sender.send_messages([ServiceBusMessage(f"m{i}", session_id="S") for i in range(2)])
    with client.get_queue_receiver(session_queue, session_id="S") as receiver:
        first, _ = receiver.receive_messages(2, max_wait_time=5)
        emulator.faults.expire_session_lock(session_queue, "S")
        # A management call's reply comes after the detach: the SDK reads both, and closes the
        # link without (peek) or with (renewal: refused) marking the session lost.
        if noticed_by == "renewal":
            with pytest.raises(SessionLockLostError):
                receiver.session.renew_lock()
        elif noticed_by == "peek":
            receiver.peek_messages(1)
        with pytest.raises(SessionLockLostError):
            receiver.complete_message(first)
        with pytest.raises(SessionLockLostError):
            receiver.receive_messages(1, max_wait_time=1)
    with client.get_queue_receiver(session_queue, session_id="S") as again:
        redelivered = again.receive_messages(2, max_wait_time=5)
        assert [str(m) for m in redelivered] == ["m0", "m1"]
        for message in redelivered:
            again.complete_message(message)
