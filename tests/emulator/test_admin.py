"""The administration API through the official ServiceBusAdministrationClient (sync and aio,
unmodified): HTTPS on the emulator's own port, Atom XML, SAS on every request."""

from __future__ import annotations

import datetime
import http.client
import ssl
import time
from typing import Any

import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.servicebus import ServiceBusMessage
from azure.servicebus.exceptions import MessagingEntityNotFoundError
from azure.servicebus.management import (
    CorrelationRuleFilter,
    FalseRuleFilter,
    SqlRuleAction,
    SqlRuleFilter,
    TrueRuleFilter,
)

from .conftest import Sdk, new_queue, receive, sas_token, unique

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def admin(sdk: Sdk, servicebus_emulator: Any) -> Any:
    return sdk.admin(servicebus_emulator)


def test_queue_lifecycle(emulator: Any, sdk: Sdk, client: Any, admin: Any) -> None:
    name = unique("adminq")
    created = admin.create_queue(
        name, lock_duration=datetime.timedelta(seconds=30), max_delivery_count=3,
        default_message_time_to_live=datetime.timedelta(minutes=5),
        dead_lettering_on_message_expiration=True, requires_duplicate_detection=True,
        duplicate_detection_history_time_window=datetime.timedelta(minutes=2),
        max_size_in_megabytes=2048, user_metadata="made by a test")
    assert created.name == name
    got = admin.get_queue(name)
    assert got.lock_duration == datetime.timedelta(seconds=30)
    assert got.max_delivery_count == 3
    assert got.default_message_time_to_live == datetime.timedelta(minutes=5)
    assert got.dead_lettering_on_message_expiration and got.requires_duplicate_detection
    assert got.duplicate_detection_history_time_window == datetime.timedelta(minutes=2)
    assert got.max_size_in_megabytes == 2048 and got.user_metadata == "made by a test"
    assert not got.requires_session
    assert name in [q.name for q in admin.list_queues()]
    with pytest.raises(ResourceExistsError):
        admin.create_queue(name)

    # the queue the administration API made is the one the AMQP clients use
    sender, receiver = sdk.open(client.get_queue_sender(name), client.get_queue_receiver(name))
    sender.send_messages([ServiceBusMessage("a", message_id="1"),
                          ServiceBusMessage("a again", message_id="1"),  # duplicate: dropped
                          ServiceBusMessage("b", message_id="2"),
                          ServiceBusMessage("c", message_id="3")])
    sender.schedule_messages(ServiceBusMessage("later", message_id="4"),
                             datetime.datetime.now(datetime.timezone.utc)
                             + datetime.timedelta(hours=1))
    first, *_ = receive(receiver, 3)
    receiver.dead_letter_message(first, reason="test")
    runtime = admin.get_queue_runtime_properties(name)
    assert runtime.active_message_count == 2
    assert runtime.dead_letter_message_count == 1
    assert runtime.scheduled_message_count == 1
    assert runtime.total_message_count == 4
    assert runtime.size_in_bytes > 0
    assert name in [q.name for q in admin.list_queues_runtime_properties()]

    got.max_delivery_count = 7
    got.lock_duration = datetime.timedelta(seconds=45)
    admin.update_queue(got)
    updated = admin.get_queue(name)
    assert (updated.max_delivery_count, updated.lock_duration) == \
        (7, datetime.timedelta(seconds=45))
    admin.update_queue(updated, user_metadata="keyword wins")
    assert admin.get_queue(name).user_metadata == "keyword wins"

    admin.delete_queue(name)
    assert name not in [q.name for q in admin.list_queues()]
    for call in (lambda: admin.get_queue(name), lambda: admin.delete_queue(name),
                 lambda: admin.get_queue_runtime_properties(name),
                 lambda: admin.update_queue(updated)):
        with pytest.raises(ResourceNotFoundError):
            call()


def test_entities_from_flags_are_the_same_model(emulator: Any, admin: Any) -> None:
    """A queue made outside HTTP (flags, Config.json, create_entity) is visible over HTTP."""
    name = new_queue(emulator, requires_session=True, max_delivery_count=4)
    got = admin.get_queue(name)
    assert got.requires_session and got.max_delivery_count == 4


def test_topics_subscriptions_and_rules(emulator: Any, sdk: Sdk, client: Any,
                                        admin: Any) -> None:
    topic, sink = unique("admint"), unique("sink")
    admin.create_queue(sink)
    admin.create_topic(topic, default_message_time_to_live=datetime.timedelta(hours=1))
    assert admin.get_topic(topic).default_message_time_to_live == datetime.timedelta(hours=1)
    admin.create_subscription(topic, "all")
    admin.create_subscription(topic, "red", max_delivery_count=2)
    admin.create_subscription(topic, "forwarded", forward_to=sink)
    assert admin.get_subscription(topic, "red").max_delivery_count == 2
    assert admin.get_subscription(topic, "forwarded").forward_to.endswith(sink)
    with pytest.raises(ResourceExistsError):
        admin.create_subscription(topic, "red")
    # every new subscription has the $Default rule, a TrueFilter
    (default,) = admin.list_rules(topic, "red")
    assert default.name == "$Default" and isinstance(default.filter, TrueRuleFilter)

    admin.delete_rule(topic, "red", "$Default")
    admin.create_rule(topic, "red", "red-only",
                      filter=SqlRuleFilter("color = @color AND quantity > 1",
                                           parameters={"@color": "red"}),
                      action=SqlRuleAction("SET checked = @yes", parameters={"@yes": True}))
    admin.create_rule(topic, "red", "by-correlation",
                      filter=CorrelationRuleFilter(correlation_id="c1",
                                                   properties={"kind": "special"}))
    admin.create_rule(topic, "forwarded", "never", filter=FalseRuleFilter())
    admin.delete_rule(topic, "forwarded", "$Default")
    admin.create_rule(topic, "forwarded", "blue", filter=SqlRuleFilter("color = 'blue'"))
    rules = {r.name: r for r in admin.list_rules(topic, "red")}
    assert set(rules) == {"red-only", "by-correlation"}
    assert rules["red-only"].filter.sql_expression == "color = @color AND quantity > 1"
    assert rules["red-only"].filter.parameters == {"@color": "red"}
    assert rules["red-only"].action.sql_expression == "SET checked = @yes"
    assert rules["by-correlation"].filter.correlation_id == "c1"
    assert rules["by-correlation"].filter.properties == {"kind": "special"}
    got = admin.get_rule(topic, "red", "by-correlation")
    assert got.filter.properties == {"kind": "special"}
    with pytest.raises(ResourceExistsError):
        admin.create_rule(topic, "red", "red-only")
    with pytest.raises(HttpResponseError) as bad:
        admin.create_rule(topic, "red", "broken", filter=SqlRuleFilter("color = = 'red'"))
    assert bad.value.status_code == 400
    with pytest.raises(ResourceNotFoundError):
        admin.get_rule(topic, "red", "nope")

    sender, sink_receiver = sdk.open(client.get_topic_sender(topic),
                                     client.get_queue_receiver(sink))
    sender.send_messages([
        ServiceBusMessage("r", application_properties={"color": "red", "quantity": 2}),
        ServiceBusMessage("b", application_properties={"color": "blue"}),
        ServiceBusMessage("s", correlation_id="c1", application_properties={"kind": "special"}),
    ])
    counts = {s.name: s.active_message_count
              for s in admin.list_subscriptions_runtime_properties(topic)}
    assert counts == {"all": 3, "red": 2, "forwarded": 0}
    assert admin.get_subscription_runtime_properties(topic, "red").total_message_count == 2
    topic_runtime = admin.get_topic_runtime_properties(topic)
    assert topic_runtime.subscription_count == 3
    (forwarded,) = receive(sink_receiver, 1)
    assert str(forwarded) == "b"
    red = sdk.open(client.get_subscription_receiver(topic, "red"))
    by_body = {str(m): m for m in receive(red, 2)}
    assert by_body["r"].application_properties[b"checked"] is True
    assert b"checked" not in by_body["s"].application_properties

    # update a rule: the new filter applies to the next message
    rule = admin.get_rule(topic, "red", "red-only")
    rule.filter = SqlRuleFilter("color = 'green'")
    rule.action = None
    admin.update_rule(topic, "red", rule)
    assert admin.get_rule(topic, "red", "red-only").filter.sql_expression == "color = 'green'"
    sender.send_messages(ServiceBusMessage("g", application_properties={"color": "green"}))
    assert admin.get_subscription_runtime_properties(topic, "red").active_message_count == 3

    sub = admin.get_subscription(topic, "red")
    sub.lock_duration = datetime.timedelta(seconds=20)
    admin.update_subscription(topic, sub)
    assert admin.get_subscription(topic, "red").lock_duration == datetime.timedelta(seconds=20)
    assert [s.name for s in admin.list_subscriptions(topic)] == ["all", "forwarded", "red"]
    admin.delete_subscription(topic, "red")
    assert [s.name for s in admin.list_subscriptions(topic)] == ["all", "forwarded"]
    assert topic in [t.name for t in admin.list_topics()]
    assert topic in [t.name for t in admin.list_topics_runtime_properties()]
    admin.delete_topic(topic)
    with pytest.raises(ResourceNotFoundError):
        admin.get_subscription(topic, "all")
    with pytest.raises(ResourceNotFoundError):
        admin.create_subscription(topic, "again")


def test_forwarding_needs_an_existing_destination(emulator: Any, admin: Any) -> None:
    with pytest.raises(HttpResponseError) as err:
        admin.create_queue(unique("fwd"), forward_to=unique("missing"))
    assert err.value.status_code == 400
    with pytest.raises(HttpResponseError) as err:
        admin.create_queue(unique("fwd"), forward_dead_lettered_messages_to=unique("missing"))
    assert err.value.status_code == 400


def test_dead_letter_forwarding_set_over_http(emulator: Any, sdk: Sdk, client: Any,
                                              admin: Any) -> None:
    parked, source = unique("parked"), unique("source")
    admin.create_queue(parked)
    admin.create_queue(source, forward_dead_lettered_messages_to=parked)
    sender, receiver, parked_receiver = sdk.open(
        client.get_queue_sender(source), client.get_queue_receiver(source),
        client.get_queue_receiver(parked))
    sender.send_messages(ServiceBusMessage("x"))
    (msg,) = receive(receiver, 1)
    receiver.dead_letter_message(msg, reason="r")
    (moved,) = receive(parked_receiver, 1)
    assert moved.application_properties[b"DeadLetterReason"] == b"r"
    assert admin.get_queue_runtime_properties(source).dead_letter_message_count == 0


def test_namespace_properties(admin: Any) -> None:
    props = admin.get_namespace_properties()
    assert props.name and props.messaging_sku == "Standard"
    assert props.namespace_type == "Messaging"


def test_wrong_key_is_refused(emulator: Any, sdk: Sdk) -> None:
    wrong = sdk.admin(emulator, emulator.connection_string.replace(
        "SharedAccessKey=", "SharedAccessKey=not"))
    with pytest.raises(ClientAuthenticationError):
        wrong.get_namespace_properties()
    with pytest.raises(ClientAuthenticationError):
        wrong.create_queue(unique("never"))
    with pytest.raises(ClientAuthenticationError):
        list(wrong.list_queues())


def _raw(emulator: Any, method: str, path: str, token: str, body: bytes = b"") -> tuple[int, bytes]:
    context = ssl.create_default_context(cafile=emulator.ca_file)
    conn = http.client.HTTPSConnection(emulator.host, emulator.port, context=context, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Authorization": token})
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def test_raw_requests_errors(emulator: Any) -> None:
    """What the SDK never sends: an entity-scoped token used elsewhere, a malformed body, an
    unknown collection; each gets the service's status, never a crash."""
    audience = f"https://{emulator.host}:{emulator.port}"
    expiry = int(time.time()) + 300
    name = new_queue(emulator)
    scoped = sas_token(f"{audience}/{name}", expiry)
    assert _raw(emulator, "GET", f"/{name}?api-version=2021-05", scoped)[0] == 200
    status, body = _raw(emulator, "GET", "/$Resources/Queues", scoped)
    assert status == 401 and b"<Code>401</Code>" in body
    token = sas_token(audience, expiry)
    assert _raw(emulator, "GET", "/$Resources/Things", token)[0] == 400
    assert _raw(emulator, "PUT", f"/{unique('q')}", token, b"<entry><content>")[0] == 400
    assert _raw(emulator, "PUT", f"/{unique('q')}", token, b"<entry/>")[0] == 400
    assert _raw(emulator, "POST", f"/{name}", token)[0] == 405
    assert _raw(emulator, "GET", f"/{name}/$DeadLetterQueue", token)[0] == 404
    assert _raw(emulator, "GET", "/$namespaceinfo", sas_token(audience, expiry, key="x"))[0] \
        == 401


def test_deleting_an_entity_detaches_its_clients(emulator: Any, sdk: Sdk, no_retry: Any,
                                                 admin: Any) -> None:
    name = unique("doomed")
    admin.create_queue(name)
    sender, receiver = sdk.open(no_retry.get_queue_sender(name),
                                no_retry.get_queue_receiver(name))
    sender.send_messages(ServiceBusMessage("a"))
    admin.delete_queue(name)
    with pytest.raises(MessagingEntityNotFoundError):
        sender.send_messages(ServiceBusMessage("b"))
    with pytest.raises(MessagingEntityNotFoundError):
        receiver.receive_messages(max_wait_time=2)


def test_transfer_dead_letter_count(emulator: Any, sdk: Sdk, client: Any, admin: Any) -> None:
    """A chain longer than the service's 4 forwarding hops, made over HTTP: the message lands
    in the transfer dead-letter queue, and the runtime properties count it there."""
    names = [unique(f"chain{i}") for i in range(6)]
    admin.create_queue(names[5])
    for i in reversed(range(5)):
        admin.create_queue(names[i], forward_to=names[i + 1])
    sender = sdk.open(client.get_queue_sender(names[0]))
    sender.send_messages(ServiceBusMessage("far"))
    stopped = admin.get_queue_runtime_properties(names[4])
    assert stopped.transfer_dead_letter_message_count == 1
    assert stopped.dead_letter_message_count == 0
    assert stopped.total_message_count == 1
    assert admin.get_queue_runtime_properties(names[5]).active_message_count == 0
