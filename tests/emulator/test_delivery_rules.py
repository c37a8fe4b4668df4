"""Time to live, duplicate detection and auto-forwarding through the official SDK."""

from __future__ import annotations

import datetime
import time
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusSubQueue

from sbsync.emulator import EntityConfig

from .conftest import Sdk, new_queue, receive, unique, wait_for

pytestmark = pytest.mark.timeout(60)


def test_time_to_live(emulator: Any, sdk: Sdk, client: Any) -> None:
    dlq_on = new_queue(emulator, default_message_ttl=30.0,
                       dead_lettering_on_message_expiration=True)
    dropping = new_queue(emulator)
    sender, drop_sender = sdk.open(
        client.get_queue_sender(dlq_on), client.get_queue_sender(dropping))
    sender.send_messages([
        # (the SDK sends whole seconds: 1 s is the shortest time to live it can ask for)
        ServiceBusMessage("short", time_to_live=datetime.timedelta(seconds=1)),
        ServiceBusMessage("long", time_to_live=datetime.timedelta(seconds=600)),
    ])
    drop_sender.send_messages(ServiceBusMessage("gone", time_to_live=datetime.timedelta(
        seconds=1)))
    time.sleep(1.1)
    # receivers opened after expiry (an open receiver may hold a message in its prefetch)
    receiver, dead = sdk.open(
        client.get_queue_receiver(dlq_on),
        client.get_queue_receiver(dlq_on, sub_queue=ServiceBusSubQueue.DEAD_LETTER))
    (alive,) = receive(receiver, 2, timeout=1.5)  # the expired one is never delivered
    assert str(alive) == "long"
    # the entity's default (30 s) is smaller than the message's own (600 s): it wins
    assert alive.time_to_live == datetime.timedelta(seconds=30)
    assert alive.expires_at_utc == alive.enqueued_time_utc + datetime.timedelta(seconds=30)
    receiver.complete_message(alive)
    (expired,) = receive(dead, 1)
    assert str(expired) == "short"
    assert expired.dead_letter_reason == "TTLExpiredException"
    assert wait_for(lambda: emulator.stats(dropping).active == 0)
    assert emulator.stats(dropping).dead_letter == 0  # dropped, not dead-lettered


def test_topic_time_to_live(emulator: Any, sdk: Sdk, client: Any) -> None:
    """A topic's default time to live applies to every subscription's copy (the smaller of
    the topic's, the subscription's and the message's own wins)."""
    topic = unique("t")
    emulator.create_entity(EntityConfig(name=topic, kind="topic", default_message_ttl=1.0))
    emulator.create_entity(EntityConfig(name="dlq", kind="subscription", topic=topic,
                                        dead_lettering_on_message_expiration=True))
    emulator.create_entity(EntityConfig(name="drop", kind="subscription", topic=topic,
                                        default_message_ttl=600.0))
    sender = sdk.open(client.get_topic_sender(topic))
    sender.send_messages(ServiceBusMessage("x", time_to_live=datetime.timedelta(hours=1)))
    dlq, drop = f"{topic}/Subscriptions/dlq", f"{topic}/Subscriptions/drop"
    assert emulator.stats(dlq).active == emulator.stats(drop).active == 1
    assert wait_for(lambda: emulator.stats(dlq).dead_letter == 1, timeout=5)
    assert wait_for(lambda: emulator.stats(drop).active == 0, timeout=5)
    assert emulator.stats(drop).dead_letter == 0


def test_duplicate_detection(emulator: Any, sdk: Sdk, client: Any) -> None:
    queue = new_queue(emulator, requires_duplicate_detection=True,
                      duplicate_detection_window=60.0)
    short = new_queue(emulator, requires_duplicate_detection=True,
                      duplicate_detection_window=0.3)
    plain = new_queue(emulator)
    topic = unique("t")
    emulator.create_entity(EntityConfig(name=topic, kind="topic",
                                        requires_duplicate_detection=True))
    emulator.create_entity(EntityConfig(name="s", kind="subscription", topic=topic))
    sender, short_sender, plain_sender, topic_sender = sdk.open(
        client.get_queue_sender(queue), client.get_queue_sender(short),
        client.get_queue_sender(plain), client.get_topic_sender(topic))
    for s in (sender, plain_sender, topic_sender):
        s.send_messages(ServiceBusMessage("a", message_id="one"))
        s.send_messages([ServiceBusMessage("b", message_id="one"),
                         ServiceBusMessage("c", message_id="two"),
                         ServiceBusMessage("d", message_id="two")])
    assert emulator.stats(queue).active == 2
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    sender.schedule_messages([ServiceBusMessage("s", message_id="sched")], later)
    sender.schedule_messages([ServiceBusMessage("s", message_id="sched")], later)
    assert emulator.stats(queue).scheduled == 1
    assert emulator.stats(f"{topic}/Subscriptions/s").active == 2
    assert emulator.stats(plain).active == 4
    short_sender.send_messages(ServiceBusMessage("x", message_id="m"))
    short_sender.send_messages(ServiceBusMessage("x", message_id="m"))
    time.sleep(0.4)  # the window has passed: the same id is new again
    short_sender.send_messages(ServiceBusMessage("x", message_id="m"))
    assert emulator.stats(short).active == 2


def test_auto_forwarding(emulator: Any, sdk: Sdk, client: Any) -> None:
    final = new_queue(emulator, "final")
    parked = new_queue(emulator, "parked")
    middle = new_queue(emulator, "middle", forward_to=final)
    topic = unique("t")
    emulator.create_entity(EntityConfig(name=topic, kind="topic"))
    emulator.create_entity(EntityConfig(name="fwd", kind="subscription", topic=topic,
                                        forward_to=middle))
    emulator.create_entity(EntityConfig(name="keep", kind="subscription", topic=topic))
    source = new_queue(emulator, "src", max_delivery_count=1,
                       forward_dead_lettered_messages_to=parked)
    topic_sender, source_sender, source_receiver, final_receiver, parked_receiver = sdk.open(
        client.get_topic_sender(topic), client.get_queue_sender(source),
        client.get_queue_receiver(source), client.get_queue_receiver(final),
        client.get_queue_receiver(parked))
    # topic -> subscription -> queue -> queue
    topic_sender.send_messages(ServiceBusMessage("chained", application_properties={"k": 1}))
    (msg,) = receive(final_receiver, 1)
    assert str(msg) == "chained" and msg.application_properties == {b"k": 1}
    final_receiver.complete_message(msg)
    assert emulator.stats(f"{topic}/Subscriptions/fwd").active == 0
    assert emulator.stats(f"{topic}/Subscriptions/keep").active == 1
    assert emulator.stats(middle).active == 0
    # dead-lettered messages go to the forward_dead_lettered_messages_to entity
    source_sender.send_messages([ServiceBusMessage("bad"), ServiceBusMessage("tired")])
    bad, tired = receive(source_receiver, 2)
    source_receiver.dead_letter_message(bad, reason="because", error_description="why")
    source_receiver.abandon_message(tired)  # max_delivery_count=1
    parked_msgs = {str(m): m for m in receive(parked_receiver, 2)}
    assert parked_msgs["bad"].application_properties[b"DeadLetterReason"] == b"because"
    assert parked_msgs["tired"].application_properties[b"DeadLetterReason"] == \
        b"MaxDeliveryCountExceeded"
    assert emulator.stats(source).dead_letter == 0


def test_forwarding_hop_limit(emulator: Any, sdk: Sdk, client: Any) -> None:
    """Past 4 hops the message goes to the transfer dead-letter queue with
    MaxTransferHopCountExceeded (the service's documented limit)."""
    names = [unique(f"hop{i}") for i in range(6)]
    for i in reversed(range(6)):
        emulator.create_entity(EntityConfig(
            name=names[i], forward_to=names[i + 1] if i < 5 else None))
    # a loop never ends anywhere but in a dead-letter queue
    loop_a, loop_b = unique("loopa"), unique("loopb")
    emulator.create_entity(EntityConfig(name=loop_a, forward_to=loop_b))
    emulator.create_entity(EntityConfig(name=loop_b, forward_to=loop_a))
    sender, loop_sender, dead = sdk.open(
        client.get_queue_sender(names[0]), client.get_queue_sender(loop_a),
        client.get_queue_receiver(names[4], sub_queue=ServiceBusSubQueue.TRANSFER_DEAD_LETTER))
    sender.send_messages(ServiceBusMessage("far"))
    (msg,) = receive(dead, 1)
    assert msg.dead_letter_reason == "MaxTransferHopCountExceeded"
    assert emulator.stats(names[5]).active == 0
    assert emulator.stats(names[4]).dead_letter == 0  # not the ordinary dead-letter queue
    loop_sender.send_messages(ServiceBusMessage("round"))
    assert sum(emulator.stats(f"{q}/$Transfer/$DeadLetterQueue").active
               for q in (loop_a, loop_b)) == 1
