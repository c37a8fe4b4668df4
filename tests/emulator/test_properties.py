"""Every ``ServiceBusMessage`` property survives the trip through the emulator."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusReceiveMode

from .conftest import Sdk, new_queue, receive

pytestmark = pytest.mark.timeout(60)


def test_all_properties_round_trip(emulator: Any, sdk: Sdk, client: Any) -> None:
    queue = new_queue(emulator, requires_session=True)
    sent = ServiceBusMessage(
        "body text é",
        application_properties={
            "int": 42,
            "negative": -7,
            "str": "value",
            "bool": True,
            "false": False,
            "float": 2.5,
        },
        session_id="session-1",
        message_id="message-1",
        content_type="application/json",
        correlation_id="correlation-1",
        subject="subject-1",
        partition_key="session-1",  # must equal the session id
        to="destination",
        reply_to="reply-queue",
        reply_to_session_id="reply-session",
        time_to_live=timedelta(minutes=5),
    )
    sender, receiver = sdk.open(
        client.get_queue_sender(queue),
        client.get_queue_receiver(
            queue, session_id="session-1", receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE
        ),
    )
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    sender.send_messages(sent)
    [got] = receive(receiver, 1)
    assert str(got) == "body text é"
    assert b"".join(got.body) == "body text é".encode()
    assert got.application_properties == {
        b"int": 42,
        b"negative": -7,
        b"str": b"value",
        b"bool": True,
        b"false": False,
        b"float": 2.5,
    }
    assert got.session_id == "session-1"
    assert got.message_id == "message-1"
    assert got.content_type == "application/json"
    assert got.correlation_id == "correlation-1"
    assert got.subject == "subject-1"
    assert got.partition_key == "session-1"
    assert got.to == "destination"
    assert got.reply_to == "reply-queue"
    assert got.reply_to_session_id == "reply-session"
    assert got.time_to_live == timedelta(minutes=5)
    assert got.enqueued_time_utc is not None
    assert before <= got.enqueued_time_utc <= datetime.now(timezone.utc) + timedelta(seconds=1)
    assert got.expires_at_utc == got.enqueued_time_utc + timedelta(minutes=5)
    assert got.sequence_number is not None and got.sequence_number >= 1
    assert got.delivery_count == 0
    assert got.dead_letter_reason is None


def test_bodies_sizes_and_defaults(emulator: Any, sdk: Sdk, client: Any) -> None:
    queue = new_queue(emulator)
    sender, receiver = sdk.open(
        client.get_queue_sender(queue),
        client.get_queue_receiver(queue, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE),
    )
    binary = bytes(range(256)) * 4
    large = b"x" * (200 * 1024)  # several AMQP frames, under the 256 KB default limit
    sender.send_messages(
        [ServiceBusMessage(binary), ServiceBusMessage(""), ServiceBusMessage("plain")]
    )
    sender.send_messages(ServiceBusMessage(large))
    batch = sender.create_message_batch()
    for i in range(3):
        batch.add_message(
            ServiceBusMessage(f"b{i}", message_id=f"id-{i}", application_properties={"i": i})
        )
    sender.send_messages(batch)
    msgs = receive(receiver, 7)
    assert [b"".join(m.body) for m in msgs[:4]] == [binary, b"", b"plain", large]
    # Each message of a batch keeps its own properties.
    assert [(m.message_id, str(m), m.application_properties[b"i"]) for m in msgs[4:]] == [
        (f"id-{i}", f"b{i}", i) for i in range(3)
    ]
    plain = msgs[2]
    # Nothing was set, so nothing is invented (beyond the SDK's own message id).
    assert plain.application_properties in (None, {})
    assert plain.session_id is None
    assert plain.correlation_id is None
    assert plain.subject is None
    assert plain.content_type is None
    assert plain.to is None
    assert plain.reply_to is None
    assert plain.partition_key is None
    assert plain.scheduled_enqueue_time_utc is None
    assert plain.time_to_live is None or plain.time_to_live >= timedelta(days=1)
