"""Queues through the official SDK: sending, receiving, settlement, locks and dead-lettering."""

from __future__ import annotations

import time
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusReceiveMode, ServiceBusSubQueue
from azure.servicebus.exceptions import MessageAlreadySettled, MessageLockLostError

from .conftest import SHORT_LOCK, Sdk, new_queue, receive, wait_for

pytestmark = pytest.mark.timeout(60)


def test_send_receive_complete(emulator: Any, sdk: Sdk, client: Any) -> None:
    queue = new_queue(emulator)
    sender, receiver = sdk.open(client.get_queue_sender(queue), client.get_queue_receiver(queue))
    sender.send_messages(ServiceBusMessage("single"))
    sender.send_messages([ServiceBusMessage(f"list-{i}") for i in range(3)])
    batch = sender.create_message_batch()
    for i in range(3):
        batch.add_message(ServiceBusMessage(f"batch-{i}"))
    assert len(batch) == 3
    sender.send_messages(batch)
    assert emulator.stats(queue).active == 7

    msgs = receive(receiver, 7)
    assert [str(m) for m in msgs] == ["single"] + [f"list-{i}" for i in range(3)] + [
        f"batch-{i}" for i in range(3)
    ]
    seqs = [m.sequence_number for m in msgs]
    assert seqs == sorted(seqs) and len(set(seqs)) == 7
    assert all(m.delivery_count == 0 and m.lock_token and m.locked_until_utc for m in msgs)
    assert emulator.stats(queue).locked == 7
    for m in msgs:
        receiver.complete_message(m)
    stats = emulator.stats(queue)
    assert (stats.active, stats.locked) == (0, 0)
    with pytest.raises(MessageAlreadySettled):
        receiver.complete_message(msgs[0])
    assert receiver.receive_messages(max_message_count=1, max_wait_time=0.5) == []


def test_receive_and_delete(emulator: Any, sdk: Sdk, client: Any) -> None:
    queue = new_queue(emulator)
    sender, receiver = sdk.open(
        client.get_queue_sender(queue),
        client.get_queue_receiver(queue, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE),
    )
    sender.send_messages([ServiceBusMessage("a"), ServiceBusMessage("b")])
    msgs = receive(receiver, 2)
    assert [str(m) for m in msgs] == ["a", "b"]
    assert all(m.lock_token is None for m in msgs)
    stats = emulator.stats(queue)
    assert (stats.active, stats.locked) == (0, 0)


def test_abandon_and_max_delivery_count(emulator: Any, sdk: Sdk, client: Any) -> None:
    queue = new_queue(emulator, max_delivery_count=2)
    sender, receiver, dlq = sdk.open(
        client.get_queue_sender(queue),
        client.get_queue_receiver(queue),
        client.get_queue_receiver(queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER),
    )
    sender.send_messages(ServiceBusMessage("poison", message_id="poison-1"))
    [first] = receive(receiver, 1)
    assert first.delivery_count == 0
    receiver.abandon_message(first)
    [second] = receive(receiver, 1)
    assert (str(second), second.delivery_count) == ("poison", 1)
    assert second.sequence_number == first.sequence_number
    assert second.lock_token != first.lock_token
    receiver.abandon_message(second)  # the second delivery was the last one allowed
    stats = emulator.stats(queue)
    assert (stats.active, stats.locked, stats.dead_letter) == (0, 0, 1)
    [dead] = receive(dlq, 1)
    assert (dead.message_id, str(dead)) == ("poison-1", "poison")
    assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"
    assert dead.dead_letter_error_description
    dlq.complete_message(dead)
    assert emulator.stats(queue).dead_letter == 0


def test_dead_letter(emulator: Any, sdk: Sdk, client: Any) -> None:
    queue = new_queue(emulator)
    sender, receiver, dlq = sdk.open(
        client.get_queue_sender(queue),
        client.get_queue_receiver(queue),
        client.get_queue_receiver(queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER),
    )
    sender.send_messages(
        [
            ServiceBusMessage("bad", application_properties={"kept": "yes"}, subject="s"),
            ServiceBusMessage("no reason"),
        ]
    )
    bad, plain = receive(receiver, 2)
    receiver.dead_letter_message(bad, reason="Invalid", error_description="field x missing")
    receiver.dead_letter_message(plain)
    stats = emulator.stats(queue)
    assert (stats.active, stats.locked, stats.dead_letter) == (0, 0, 2)

    peeked = dlq.peek_messages(max_message_count=5)
    assert [(str(m), m.dead_letter_reason) for m in peeked] == [
        ("bad", "Invalid"),
        ("no reason", None),
    ]
    dead, dead_plain = receive(dlq, 2)
    assert str(dead) == "bad"
    assert dead.dead_letter_reason == "Invalid"
    assert dead.dead_letter_error_description == "field x missing"
    assert dead.application_properties[b"kept"] == b"yes"
    assert dead.subject == "s"
    assert (dead_plain.dead_letter_reason, dead_plain.dead_letter_error_description) == (None, None)
    # A dead-lettered message can be abandoned back into the dead-letter queue.
    dlq.abandon_message(dead)
    dlq.complete_message(dead_plain)
    [again] = receive(dlq, 1)
    assert again.sequence_number == dead.sequence_number
    dlq.complete_message(again)
    assert emulator.stats(queue).dead_letter == 0


def test_lock_expiry_and_renewal(emulator: Any, sdk: Sdk, client: Any) -> None:
    queue = new_queue(emulator, lock_duration=SHORT_LOCK)
    sender, receiver = sdk.open(client.get_queue_sender(queue), client.get_queue_receiver(queue))
    sender.send_messages([ServiceBusMessage("renewed"), ServiceBusMessage("lapsed")])
    renewed, lapsed = receive(receiver, 2)
    first_until = renewed.locked_until_utc
    assert emulator.stats(queue).locked == 2
    deadline = time.monotonic() + SHORT_LOCK * 1.6
    while time.monotonic() < deadline:  # outlive the lock, renewing only one message's
        time.sleep(SHORT_LOCK / 4)
        until = receiver.renew_message_lock(renewed)
        assert until == renewed.locked_until_utc
    assert renewed.locked_until_utc > first_until
    assert wait_for(lambda: emulator.stats(queue).locked == 1)
    # The lapsed message comes back with one more delivery counted.
    [again] = receive(receiver, 1)
    assert again.sequence_number == lapsed.sequence_number
    assert again.delivery_count == lapsed.delivery_count + 1
    with pytest.raises(MessageLockLostError):  # the SDK knows the old lock is gone
        receiver.complete_message(lapsed)
    receiver.complete_message(renewed)
    receiver.complete_message(again)
    assert emulator.stats(queue).active == 0


def test_competing_receivers(emulator: Any, sdk: Sdk, client: Any) -> None:
    queue = new_queue(emulator)
    sender, first, second = sdk.open(
        client.get_queue_sender(queue),
        client.get_queue_receiver(queue),
        client.get_queue_receiver(queue),
    )
    sender.send_messages([ServiceBusMessage(str(i)) for i in range(4)])
    a = receive(first, 2)
    b = receive(second, 2)
    assert sorted(str(m) for m in a + b) == ["0", "1", "2", "3"]  # each message to one only
    for m in a:
        first.complete_message(m)
    for m in b:
        second.complete_message(m)
    assert emulator.stats(queue).active == 0


def test_receiver_close_releases_locks(emulator: Any, sdk: Sdk, client: Any) -> None:
    queue = new_queue(emulator)
    sender = sdk.open(client.get_queue_sender(queue))
    sender.send_messages(ServiceBusMessage("left"))
    with client.get_queue_receiver(queue) as receiver:
        [msg] = receive(receiver, 1)
        assert emulator.stats(queue).locked == 1
    # Closing the link gives the message back at once (no need to wait out the lock).
    assert wait_for(lambda: emulator.stats(queue).locked == 0 and emulator.stats(queue).active == 1)
    receiver = sdk.open(client.get_queue_receiver(queue))
    [again] = receive(receiver, 1)
    assert again.sequence_number == msg.sequence_number
    receiver.complete_message(again)
