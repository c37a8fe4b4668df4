"""Every public method of the facade, against the emulator with the real SDK underneath."""

from __future__ import annotations

import datetime
import time
import traceback

import pytest

import sbsync
from sbsync import (
    NEXT_AVAILABLE_SESSION,
    ServiceBusMessage,
    ServiceBusMessageBatch,
    ServiceBusReceiveMode,
    ServiceBusSubQueue,
)
from sbsync.exceptions import MessageAlreadySettled

pytestmark = pytest.mark.timeout(60)


def _receive_all(receiver, count, wait=2.0):
    got = []
    deadline = time.monotonic() + 10
    while len(got) < count and time.monotonic() < deadline:
        got.extend(receiver.receive_messages(max_message_count=count - len(got), max_wait_time=wait))
    return got


def test_send_receive_and_every_settlement(client, queue):
    with client.get_queue_sender(queue) as sender:
        assert sender.client_identifier.startswith("SBSender")
        sender.send_messages(ServiceBusMessage("one"))
        sender.send_messages([ServiceBusMessage("two"), ServiceBusMessage("three")])
        batch = sender.create_message_batch()
        assert isinstance(batch, ServiceBusMessageBatch)
        batch.add_message(ServiceBusMessage("four"))
        sender.send_messages(batch)
        sender.send_messages({"body": "five"})

    with client.get_queue_receiver(queue, max_wait_time=2) as receiver:
        assert receiver.client_identifier.startswith("SBReceiver")
        assert receiver.session is None
        peeked = receiver.peek_messages(10)
        assert sorted(str(m) for m in peeked) == ["five", "four", "one", "three", "two"]

        messages = {str(m): m for m in _receive_all(receiver, 5)}
        assert set(messages) == {"one", "two", "three", "four", "five"}

        receiver.complete_message(messages["one"])

        receiver.abandon_message(messages["two"])
        again = _receive_all(receiver, 1)
        assert [str(m) for m in again] == ["two"] and again[0].delivery_count == 1
        receiver.complete_message(again[0])

        receiver.defer_message(messages["three"])
        deferred = receiver.receive_deferred_messages([messages["three"].sequence_number])
        assert [str(m) for m in deferred] == ["three"]
        receiver.complete_message(deferred[0])

        receiver.dead_letter_message(messages["four"], reason="bad", error_description="very bad")

        before = messages["five"].locked_until_utc
        renewed = receiver.renew_message_lock(messages["five"])
        assert isinstance(renewed, datetime.datetime) and renewed >= before
        receiver.complete_message(messages["five"])
        assert receiver.peek_messages(10) == []

    with client.get_queue_receiver(queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=2) as dlq:
        dead = _receive_all(dlq, 1)
        assert [str(m) for m in dead] == ["four"]
        assert dead[0].dead_letter_reason == "bad"
        dlq.complete_message(dead[0])


def test_schedule_cancel_iterate_and_receive_and_delete(client, queue):
    with client.get_queue_sender(queue) as sender:
        soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1)
        later = soon + datetime.timedelta(hours=1)
        (kept,) = sender.schedule_messages(ServiceBusMessage("scheduled"), soon)
        cancelled = sender.schedule_messages([ServiceBusMessage("never")], later)
        assert isinstance(kept, int) and len(cancelled) == 1
        sender.cancel_scheduled_messages(cancelled)
        sender.send_messages([ServiceBusMessage(f"it-{i}") for i in range(3)])

    receiver = client.get_queue_receiver(queue, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE, max_wait_time=2)
    with receiver:
        start = time.monotonic()
        bodies = [str(m) for m in receiver]  # ends after max_wait_time without a message
        assert time.monotonic() - start < 15
        assert sorted(bodies) == ["it-0", "it-1", "it-2", "scheduled"]
        assert receiver.peek_messages(5) == []  # receive-and-delete removed them


def test_next_and_topic_subscriptions(client, topic_subscription):
    topic, subscription = topic_subscription
    with client.get_topic_sender(topic) as sender:
        sender.send_messages(ServiceBusMessage("to-all", session_id="T1"))
    with client.get_subscription_receiver(topic, subscription, max_wait_time=1) as receiver:
        message = next(receiver)
        assert str(message) == "to-all"
        receiver.complete_message(message)
        with pytest.raises(StopIteration):
            receiver.next()  # no more within max_wait_time

    session_subscription = f"{subscription}-sessions"
    assert list(client.list_subscription_sessions(topic, session_subscription)) == ["T1"]
    with client.get_subscription_receiver(topic, session_subscription, session_id="T1") as receiver:
        (message,) = receiver.receive_messages(max_wait_time=5)
        assert str(message) == "to-all" and receiver.session.session_id == "T1"
        receiver.complete_message(message)


def test_sdk_errors_keep_type_and_tracebacks(client, queue):
    with client.get_queue_sender(queue) as sender:
        sender.send_messages(ServiceBusMessage("x"))
    with client.get_queue_receiver(queue, max_wait_time=2) as receiver:
        (message,) = _receive_all(receiver, 1)
        receiver.complete_message(message)
        with pytest.raises(MessageAlreadySettled) as info:
            receiver.complete_message(message)
    files = [f.filename for f in traceback.extract_tb(info.value.__traceback__)]
    assert any(f.endswith("test_messaging.py") for f in files)  # the caller's side
    assert any("azure/servicebus/aio" in f for f in files)  # the loop's side


def test_sessions(client, session_queue):
    queue = session_queue
    with client.get_queue_sender(queue) as sender:
        sender.send_messages([ServiceBusMessage("a1", session_id="A"), ServiceBusMessage("b1", session_id="B")])

    sessions = sorted(client.list_queue_sessions(queue))
    assert sessions == ["A", "B"]

    seen = []
    for _ in range(2):
        with client.get_queue_receiver(queue, session_id=NEXT_AVAILABLE_SESSION, max_wait_time=2) as receiver:
            session = receiver.session
            assert isinstance(session, sbsync.ServiceBusSession)
            assert session.session_id in ("A", "B")
            assert session.get_state() is None
            session.set_state(f"state-{session.session_id}")
            assert session.get_state() == f"state-{session.session_id}".encode()
            before = session.locked_until_utc
            renewed = session.renew_lock()
            assert isinstance(renewed, datetime.datetime) and renewed >= before
            assert session.locked_until_utc == renewed
            assert session.auto_renew_error is None
            (message,) = _receive_all(receiver, 1)
            assert message.session_id == session.session_id
            receiver.complete_message(message)
            session.set_state(None)
            seen.append(session.session_id)
    assert sorted(seen) == ["A", "B"]


def test_auto_lock_renewer_is_told_what_to_renew(client, queue):
    class Recorder:
        def __init__(self):
            self.registered = []

        def register(self, receiver, renewable, max_lock_renewal_duration=None, on_lock_renew_failure=None):
            self.registered.append((receiver, renewable))

    recorder = Recorder()
    with client.get_queue_sender(queue) as sender:
        sender.send_messages(ServiceBusMessage("renew-me"))
    with client.get_queue_receiver(queue, auto_lock_renewer=recorder, max_wait_time=2) as receiver:
        (message,) = _receive_all(receiver, 1)
        assert recorder.registered == [(receiver, message)]
        receiver.complete_message(message)
