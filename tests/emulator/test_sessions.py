"""Session-enabled queues and subscriptions through the official SDK."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from azure.servicebus import (
    NEXT_AVAILABLE_SESSION,
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusReceiveMode,
    ServiceBusSubQueue,
)
from azure.servicebus.exceptions import (
    OperationTimeoutError,
    ServiceBusError,
    SessionCannotBeLockedError,
    SessionLockLostError,
)

from .conftest import SHORT_LOCK, Sdk, new_queue, new_topic, receive, wait_for

pytestmark = pytest.mark.timeout(60)


def _messages(pairs: list[tuple[str, str]]) -> list[ServiceBusMessage]:
    return [ServiceBusMessage(body, session_id=sid) for sid, body in pairs]


def test_session_fifo_and_isolation(emulator: Any, sdk: Sdk, client: Any) -> None:
    queue = new_queue(emulator, requires_session=True)
    sender, a_receiver, b_receiver = sdk.open(
        client.get_queue_sender(queue),
        client.get_queue_receiver(queue, session_id="a"),
        client.get_queue_receiver(
            queue, session_id="b", receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE
        ),
    )
    sender.send_messages(
        _messages([("a", "a1"), ("b", "b1"), ("a", "a2"), ("b", "b2"), ("a", "a3")])
    )
    assert a_receiver.session.session_id == "a"
    msgs = receive(a_receiver, 3)
    assert [str(m) for m in msgs] == ["a1", "a2", "a3"]
    assert all(m.session_id == "a" for m in msgs)
    peeked = a_receiver.peek_messages(max_message_count=10, sequence_number=1)
    assert [str(m) for m in peeked] == ["a1", "a2", "a3"]  # a session peek sees its own only
    for m in msgs:
        a_receiver.complete_message(m)
    assert a_receiver.receive_messages(max_message_count=1, max_wait_time=0.5) == []
    assert [str(m) for m in receive(b_receiver, 2)] == ["b1", "b2"]
    assert emulator.stats(queue).active == 0


def test_exclusive_lock_and_state_across_receivers(
    emulator: Any, sdk: Sdk, client: Any, no_retry: Any
) -> None:
    queue = new_queue(emulator, requires_session=True)
    sender, other, holder = sdk.open(
        client.get_queue_sender(queue),
        client.get_queue_receiver(queue, session_id="other"),
        client.get_queue_receiver(queue, session_id="s"),
    )
    sender.send_messages(_messages([("s", "one"), ("s", "two")]))
    assert holder.session.get_state() is None
    holder.session.set_state(b"\x00step-1\xff")
    assert holder.session.get_state() == b"\x00step-1\xff"
    holder.session.set_state("text state")  # str is stored as UTF-8
    [one] = receive(holder, 1)
    [refused] = sdk.open_failures(no_retry.get_queue_receiver(queue, session_id="s"))
    assert isinstance(refused, SessionCannotBeLockedError)
    holder.complete_message(one)
    holder.close()
    # Closing the receiver released the session at once; its state stayed.
    next_holder = sdk.open(client.get_queue_receiver(queue, session_id="s"))
    assert next_holder.session.get_state() == b"text state"
    [two] = receive(next_holder, 1)
    assert str(two) == "two"
    next_holder.complete_message(two)
    next_holder.session.set_state(None)
    assert next_holder.session.get_state() is None
    assert other.session.get_state() is None  # state is per session


def test_next_available_session(emulator: Any, sdk: Sdk, client: Any, no_retry: Any) -> None:
    queue = new_queue(emulator, requires_session=True)
    sender = sdk.open(client.get_queue_sender(queue))
    sender.send_messages(_messages([("x", "x1"), ("y", "y1"), ("x", "x2")]))
    # Three receivers ask at once for the next available session; there are two.
    receivers = [
        no_retry.get_queue_receiver(queue, session_id=NEXT_AVAILABLE_SESSION, max_wait_time=1)
        for _ in range(3)
    ]
    started = time.monotonic()
    outcomes = sdk.open_failures(*receivers)
    refused = [exc for exc in outcomes if exc is not None]
    assert len(refused) == 1 and isinstance(refused[0], OperationTimeoutError)
    assert 0.8 < time.monotonic() - started < 8  # the loser waited max_wait_time first
    first, second = (r for r, exc in zip(receivers, outcomes) if exc is None)
    seen = sorted([first.session.session_id, second.session.session_id])
    assert seen == ["x", "y"]  # each got a different, locked session
    for receiver in (first, second):
        expected = ["x1", "x2"] if receiver.session.session_id == "x" else ["y1"]
        msgs = receive(receiver, len(expected))
        assert [str(m) for m in msgs] == expected
        for m in msgs:
            receiver.complete_message(m)


def test_next_available_session_waits_for_a_message(emulator: Any, sdk: Sdk, client: Any) -> None:
    queue = new_queue(emulator, requires_session=True)
    # A sync client in another thread sends while the receiver is waiting for a session.
    with ServiceBusClient.from_connection_string(emulator.connection_string) as other:
        with other.get_queue_sender(queue) as sender:
            timer = threading.Timer(
                1.0, sender.send_messages, [ServiceBusMessage("late", session_id="late")]
            )
            timer.start()
            try:
                started = time.monotonic()
                receiver = sdk.open(
                    client.get_queue_receiver(
                        queue, session_id=NEXT_AVAILABLE_SESSION, max_wait_time=6
                    )
                )
                assert time.monotonic() - started >= 0.9
                assert receiver.session.session_id == "late"
                [msg] = receive(receiver, 1)
                assert str(msg) == "late"
                receiver.complete_message(msg)
            finally:
                timer.join()


def test_session_lock_renewal_and_expiry(
    emulator: Any, sdk: Sdk, client: Any, no_retry: Any
) -> None:
    queue = new_queue(emulator, requires_session=True, lock_duration=SHORT_LOCK)
    sender, renewed, lapsed = sdk.open(
        client.get_queue_sender(queue),
        client.get_queue_receiver(queue, session_id="kept"),
        client.get_queue_receiver(queue, session_id="lost"),
    )
    sender.send_messages(_messages([("kept", "k"), ("lost", "l")]))
    [lost_msg] = receive(lapsed, 1)
    first_until = renewed.session.locked_until_utc
    assert first_until is not None
    deadline = time.monotonic() + SHORT_LOCK * 1.6
    while time.monotonic() < deadline:  # outlive the lock, renewing one session only
        time.sleep(SHORT_LOCK / 4)
        until = renewed.session.renew_lock()
        assert until == renewed.session.locked_until_utc
    assert renewed.session.locked_until_utc > first_until
    # The renewed session is still exclusively ours ...
    [kept_msg] = receive(renewed, 1)
    renewed.complete_message(kept_msg)
    [refused] = sdk.open_failures(no_retry.get_queue_receiver(queue, session_id="kept"))
    assert isinstance(refused, SessionCannotBeLockedError)
    # ... the lapsed one is free: a new receiver takes it, and the message with it.
    fresh = sdk.open(client.get_queue_receiver(queue, session_id="lost"))
    [again] = receive(fresh, 1)
    assert again.sequence_number == lost_msg.sequence_number
    assert again.delivery_count == lost_msg.delivery_count + 1
    fresh.complete_message(again)
    with pytest.raises(SessionLockLostError):
        lapsed.session.renew_lock()


def test_session_lock_lost_after_fault(emulator: Any, sdk: Sdk, client: Any) -> None:
    queue = new_queue(emulator, requires_session=True)
    sender, receiver = sdk.open(
        client.get_queue_sender(queue), client.get_queue_receiver(queue, session_id="f")
    )
    sender.send_messages(ServiceBusMessage("held", session_id="f"))
    [msg] = receive(receiver, 1)
    emulator.faults.expire_session_lock(queue, "f")
    # The client still believes it holds the session; the emulator says otherwise.
    with pytest.raises(SessionLockLostError):
        receiver.session.get_state()
    with pytest.raises(SessionLockLostError):
        receiver.session.renew_lock()
    with pytest.raises(SessionLockLostError):
        receiver.complete_message(msg)
    # The message was not completed: another receiver gets it again.
    fresh = sdk.open(client.get_queue_receiver(queue, session_id="f"))
    [again] = receive(fresh, 1)
    assert again.sequence_number == msg.sequence_number
    fresh.complete_message(again)


def test_list_sessions(emulator: Any, sdk: Sdk, client: Any) -> None:
    queue = new_queue(emulator, requires_session=True)
    sender, receiver = sdk.open(
        client.get_queue_sender(queue), client.get_queue_receiver(queue, session_id="with-state")
    )
    assert list(client.list_queue_sessions(queue)) == []
    sender.send_messages(_messages([("l1", "m"), ("l2", "m"), ("l1", "m")]))
    before_state = datetime.now(timezone.utc) - timedelta(seconds=1)
    receiver.session.set_state(b"s")
    # By default: sessions with messages or with state.
    assert sorted(client.list_queue_sessions(queue)) == ["l1", "l2", "with-state"]
    # With state_updated_after: only sessions whose state changed since then.
    assert list(client.list_queue_sessions(queue, state_updated_after=before_state)) == [
        "with-state"
    ]


def test_session_subscription(emulator: Any, sdk: Sdk, client: Any) -> None:
    topic = new_topic(emulator, subscriptions=("s1", "s2"), requires_session=True)
    sender, *receivers = sdk.open(
        client.get_topic_sender(topic),
        client.get_subscription_receiver(topic, "s1", session_id="p"),
        client.get_subscription_receiver(topic, "s2", session_id="p"),
    )
    sender.send_messages(_messages([("p", "p1"), ("q", "q1"), ("p", "p2")]))
    for sub, receiver in zip(("s1", "s2"), receivers):
        msgs = receive(receiver, 2)
        assert [str(m) for m in msgs] == ["p1", "p2"]
        receiver.session.set_state(sub)
        for m in msgs:
            receiver.complete_message(m)
    assert sorted(client.list_subscription_sessions(topic, "s1")) == ["p", "q"]
    assert [r.session.get_state() for r in receivers] == [b"s1", b"s2"]


def test_session_entity_refusals(emulator: Any, sdk: Sdk, client: Any) -> None:
    queue = new_queue(emulator, requires_session=True)
    # A receiver without a session cannot take anything from a session-enabled entity ...
    sender = client.get_queue_sender(queue)
    opened, refused = sdk.open_failures(sender, client.get_queue_receiver(queue))
    assert opened is None
    assert isinstance(refused, ServiceBusError)
    # ... nor can a message without a session id go to it.
    with pytest.raises(ServiceBusError):
        sender.send_messages(ServiceBusMessage("no session"))
    sender.send_messages(ServiceBusMessage("ok", session_id="s"))  # the link still works
    assert wait_for(lambda: emulator.stats(queue).active == 1)


def test_session_schedule_abandon_and_dead_letter(emulator: Any, sdk: Sdk, client: Any) -> None:
    queue = new_queue(emulator, requires_session=True)
    sender, receiver, dlq = sdk.open(
        client.get_queue_sender(queue),
        client.get_queue_receiver(queue, session_id="s"),
        # The dead-letter queue of a session-enabled entity is not itself session-enabled.
        client.get_queue_receiver(queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER),
    )
    sender.send_messages(ServiceBusMessage("now", session_id="s"))
    soon = datetime.now(timezone.utc) + timedelta(seconds=1)
    sender.schedule_messages(ServiceBusMessage("scheduled", session_id="s"), soon)
    assert emulator.stats(queue).scheduled == 1
    [now] = receive(receiver, 1)
    receiver.abandon_message(now)  # back to the session, one delivery counted
    [again] = receive(receiver, 1)
    assert (str(again), again.delivery_count) == ("now", 1)
    receiver.dead_letter_message(again, reason="r", error_description="d")
    [scheduled] = receive(receiver, 1, timeout=5)
    assert (str(scheduled), scheduled.session_id) == ("scheduled", "s")
    receiver.complete_message(scheduled)
    [dead] = receive(dlq, 1)
    assert (str(dead), dead.session_id, dead.dead_letter_reason) == ("now", "s", "r")
    dlq.complete_message(dead)
    stats = emulator.stats(queue)
    assert (stats.active, stats.scheduled, stats.dead_letter) == (0, 0, 0)
