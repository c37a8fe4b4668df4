"""Operations the SDK does over the management link: peek, deferral, scheduling; and TTL."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusReceiveMode, ServiceBusSubQueue
from azure.servicebus.exceptions import MessageNotFoundError

from .conftest import Sdk, new_queue, receive, wait_for

pytestmark = pytest.mark.timeout(60)


def test_peek_does_not_lock(emulator: Any, sdk: Sdk, client: Any) -> None:
    queue = new_queue(emulator)
    sender, receiver = sdk.open(client.get_queue_sender(queue), client.get_queue_receiver(queue))
    assert receiver.peek_messages(max_message_count=5) == []
    sender.send_messages([ServiceBusMessage(f"m{i}") for i in range(3)])
    first_two = receiver.peek_messages(max_message_count=2)
    assert [str(m) for m in first_two] == ["m0", "m1"]
    assert all(m.lock_token is None for m in first_two)
    # Without a sequence number the SDK continues after the last one it peeked.
    rest = receiver.peek_messages(max_message_count=5)
    assert [str(m) for m in rest] == ["m2"]
    assert receiver.peek_messages(max_message_count=5) == []
    again = receiver.peek_messages(
        max_message_count=10, sequence_number=first_two[1].sequence_number
    )
    assert [str(m) for m in again] == ["m1", "m2"]
    stats = emulator.stats(queue)
    assert (stats.active, stats.locked) == (3, 0)
    # Peeking neither locks nor counts a delivery; locked messages still show in a peek.
    msgs = receive(receiver, 3)
    assert [m.delivery_count for m in msgs] == [0, 0, 0]
    assert [m.sequence_number for m in msgs] == [m.sequence_number for m in first_two + rest]
    locked = receiver.peek_messages(max_message_count=5, sequence_number=msgs[0].sequence_number)
    assert [str(m) for m in locked] == ["m0", "m1", "m2"]
    for m in msgs:
        receiver.complete_message(m)
    assert (
        receiver.peek_messages(max_message_count=5, sequence_number=msgs[0].sequence_number) == []
    )


def test_deferral(emulator: Any, sdk: Sdk, client: Any) -> None:
    queue = new_queue(emulator)
    # The SDK retries "message not found" with back-off (~11 s): ask that through a client
    # that does not retry.
    no_retry = sdk.client(emulator.connection_string, retry_total=0)
    sender, receiver, deleter, prober = sdk.open(
        client.get_queue_sender(queue),
        client.get_queue_receiver(queue),
        client.get_queue_receiver(queue, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE),
        no_retry.get_queue_receiver(queue),
    )
    sender.send_messages([ServiceBusMessage(body) for body in ("later", "now", "kept", "taken")])
    later, now, kept, taken = receive(receiver, 4)
    for msg in (later, kept, taken):
        receiver.defer_message(msg)
    receiver.complete_message(now)
    stats = emulator.stats(queue)
    assert (stats.active, stats.deferred, stats.locked) == (0, 3, 0)
    # A deferred message is only reachable by its sequence number.
    assert receiver.receive_messages(max_message_count=1, max_wait_time=0.5) == []

    [deferred] = receiver.receive_deferred_messages([later.sequence_number])
    assert (str(deferred), deferred.sequence_number) == ("later", later.sequence_number)
    assert deferred.lock_token is not None
    receiver.complete_message(deferred)
    assert emulator.stats(queue).deferred == 2
    with pytest.raises(MessageNotFoundError):
        prober.receive_deferred_messages([later.sequence_number])

    # Abandoning a deferred message leaves it deferred; it can then be dead-lettered.
    [deferred] = receiver.receive_deferred_messages([kept.sequence_number])
    receiver.abandon_message(deferred)
    assert emulator.stats(queue).deferred == 2
    [deferred] = receiver.receive_deferred_messages([kept.sequence_number])
    receiver.dead_letter_message(deferred, reason="gave up", error_description="deferred")
    stats = emulator.stats(queue)
    assert (stats.deferred, stats.dead_letter) == (1, 1)

    # In receive-and-delete mode, fetching a deferred message removes it.
    [gone] = deleter.receive_deferred_messages([taken.sequence_number])
    assert str(gone) == "taken"
    assert emulator.stats(queue).deferred == 0


def test_schedule_and_cancel(emulator: Any, sdk: Sdk, client: Any) -> None:
    queue = new_queue(emulator)
    sender, receiver = sdk.open(client.get_queue_sender(queue), client.get_queue_receiver(queue))
    soon = datetime.now(timezone.utc) + timedelta(seconds=1.5)
    [soon_seq] = sender.schedule_messages(ServiceBusMessage("soon"), soon)
    far_seqs = sender.schedule_messages(
        [ServiceBusMessage("far-1"), ServiceBusMessage("far-2")],
        datetime.now(timezone.utc) + timedelta(hours=1),
    )
    assert len(far_seqs) == 2 and soon_seq not in far_seqs
    # A message carrying its own enqueue time is scheduled by a plain send too.
    sender.send_messages(ServiceBusMessage("by-property", scheduled_enqueue_time_utc=soon))
    stats = emulator.stats(queue)
    assert (stats.active, stats.scheduled) == (0, 4)
    assert [str(m) for m in receiver.peek_messages(max_message_count=10)] == [
        "soon",
        "far-1",
        "far-2",
        "by-property",
    ]  # scheduled messages show in a peek
    sender.cancel_scheduled_messages(far_seqs)
    assert emulator.stats(queue).scheduled == 2

    msgs = receive(receiver, 2, timeout=6)
    assert time.time() >= soon.timestamp() - 0.05
    assert sorted(str(m) for m in msgs) == ["by-property", "soon"]
    by_body = {str(m): m for m in msgs}
    assert by_body["soon"].sequence_number == soon_seq
    scheduled_at = by_body["soon"].scheduled_enqueue_time_utc
    assert scheduled_at is not None
    assert abs(scheduled_at.timestamp() - soon.timestamp()) < 0.01
    for m in msgs:
        receiver.complete_message(m)
    stats = emulator.stats(queue)
    assert (stats.active, stats.scheduled) == (0, 0)


def test_time_to_live(emulator: Any, sdk: Sdk, client: Any) -> None:
    to_dlq = new_queue(emulator, dead_lettering_on_message_expiration=True)
    by_default = new_queue(emulator, default_message_ttl=1.0)
    sender, default_sender, receiver, dlq = sdk.open(
        client.get_queue_sender(to_dlq),
        client.get_queue_sender(by_default),
        client.get_queue_receiver(to_dlq),
        client.get_queue_receiver(to_dlq, sub_queue=ServiceBusSubQueue.DEAD_LETTER),
    )
    sender.send_messages(
        [
            ServiceBusMessage("short", time_to_live=timedelta(seconds=1)),
            ServiceBusMessage("long", time_to_live=timedelta(hours=1)),
        ]
    )
    default_sender.send_messages(ServiceBusMessage("default"))
    assert wait_for(lambda: emulator.stats(to_dlq).dead_letter == 1, timeout=6)
    assert wait_for(lambda: emulator.stats(by_default).active == 0, timeout=3)
    assert emulator.stats(by_default).dead_letter == 0  # not asked to dead-letter on expiry
    assert emulator.stats(to_dlq).active == 1

    [long] = receive(receiver, 1)
    assert str(long) == "long"
    assert long.time_to_live == timedelta(hours=1)
    assert long.expires_at_utc == long.enqueued_time_utc + timedelta(hours=1)
    receiver.complete_message(long)
    [short] = receive(dlq, 1)
    assert str(short) == "short"
    assert short.dead_letter_reason == "TTLExpiredException"
    dlq.complete_message(short)
