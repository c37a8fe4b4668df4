"""Topics and subscriptions: fan-out, independent settlement, subscription dead-letter queues."""

from __future__ import annotations

from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusReceiveMode, ServiceBusSubQueue

from .conftest import Sdk, new_topic, receive

pytestmark = pytest.mark.timeout(60)


def test_fan_out_to_every_subscription(emulator: Any, sdk: Sdk, client: Any) -> None:
    topic = new_topic(emulator, subscriptions=("s1", "s2", "s3"))
    lonely = new_topic(emulator, subscriptions=())
    sender, lonely_sender, s1, s2 = sdk.open(
        client.get_topic_sender(topic),
        client.get_topic_sender(lonely),
        client.get_subscription_receiver(topic, "s1"),
        client.get_subscription_receiver(
            topic, "s2", receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE
        ),
    )
    sender.send_messages(ServiceBusMessage("one", message_id="m1"))
    batch = sender.create_message_batch()
    batch.add_message(ServiceBusMessage("two"))
    batch.add_message(ServiceBusMessage("three"))
    sender.send_messages(batch)
    for sub in ("s1", "s2", "s3"):
        assert emulator.stats(f"{topic}/Subscriptions/{sub}").active == 3
    msgs = receive(s1, 3)
    assert [str(m) for m in msgs] == ["one", "two", "three"]
    assert msgs[0].message_id == "m1"
    for m in msgs:
        s1.complete_message(m)
    # Settling in one subscription leaves the copies in the others alone.
    assert emulator.stats(f"{topic}/Subscriptions/s1").active == 0
    assert [str(m) for m in receive(s2, 3)] == ["one", "two", "three"]
    assert emulator.stats(f"{topic}/Subscriptions/s3").active == 3
    # A topic without subscriptions accepts messages and keeps none.
    lonely_sender.send_messages([ServiceBusMessage("nobody"), ServiceBusMessage("listens")])


def test_subscription_dead_letter_queue(emulator: Any, sdk: Sdk, client: Any) -> None:
    topic = new_topic(emulator, subscriptions=("s1", "s2"), max_delivery_count=1)
    sender, receiver, dlq = sdk.open(
        client.get_topic_sender(topic),
        client.get_subscription_receiver(topic, "s1"),
        client.get_subscription_receiver(topic, "s1", sub_queue=ServiceBusSubQueue.DEAD_LETTER),
    )
    sender.send_messages([ServiceBusMessage("explicit"), ServiceBusMessage("abandoned")])
    explicit, abandoned = receive(receiver, 2)
    receiver.dead_letter_message(explicit, reason="why", error_description="because")
    receiver.abandon_message(abandoned)  # max_delivery_count=1: straight to the DLQ
    assert emulator.stats(f"{topic}/Subscriptions/s1").dead_letter == 2
    assert emulator.stats(f"{topic}/Subscriptions/s2").dead_letter == 0
    dead = {str(m): m for m in receive(dlq, 2)}
    assert dead["explicit"].dead_letter_reason == "why"
    assert dead["explicit"].dead_letter_error_description == "because"
    assert dead["abandoned"].dead_letter_reason == "MaxDeliveryCountExceeded"
    for m in dead.values():
        dlq.complete_message(m)
    assert emulator.stats(f"{topic}/Subscriptions/s1").dead_letter == 0
