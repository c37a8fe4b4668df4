"""Subscription rules through the official SDK: the $Default rule, SQL, correlation and
boolean filters, SQL rule actions, and what a message matching several rules becomes."""

from __future__ import annotations

from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage

from sbsync.emulator import CorrelationFilter, EntityConfig, Rule
from sbsync.emulator._config import parse_config

from .conftest import Sdk, receive, unique

pytestmark = pytest.mark.timeout(60)


def _topic(emulator: Any, subs: dict[str, tuple[Rule, ...] | None], **settings: Any) -> str:
    topic = unique("t")
    emulator.create_entity(EntityConfig(name=topic, kind="topic"))
    for name, rules in subs.items():
        emulator.create_entity(EntityConfig(name=name, kind="subscription", topic=topic,
                                            rules=rules, **settings))
    return topic


def test_filters_select_messages(emulator: Any, sdk: Sdk, client: Any) -> None:
    topic = _topic(emulator, {
        "all": None,  # $Default: TrueFilter
        "red": (Rule("red", "sql", sql="color = 'red'"),),
        "big": (Rule("big", "sql",
                     sql="quantity * price > 100 AND sys.Label LIKE 'order!_%' ESCAPE '!'"),),
        "corr": (Rule("c", "correlation", correlation=CorrelationFilter(
            correlation_id="c1", properties={"color": "blue"})),),
        "in": (Rule("in", "sql", sql="color IN ('blue', 'green') AND sys.CorrelationId IS NULL"),),
        "none": (Rule("f", "false"),),
        "norules": (),
    })
    sender, red = sdk.open(client.get_topic_sender(topic),
                           client.get_subscription_receiver(topic, "red"))
    sender.send_messages([
        ServiceBusMessage("r1", application_properties={"color": "red", "quantity": 1,
                                                        "price": 2.5}),
        ServiceBusMessage("b1", subject="order_1", correlation_id="c1",
                          application_properties={"color": "blue", "quantity": 50,
                                                  "price": 2.5}),
        ServiceBusMessage("g1", subject="orderX", application_properties={
            "color": "green", "quantity": 50, "price": 2.5}),
        ServiceBusMessage("plain"),
    ])
    counts = {sub: emulator.stats(f"{topic}/Subscriptions/{sub}").active
              for sub in ("all", "red", "big", "corr", "in", "none", "norules")}
    assert counts == {"all": 4, "red": 1, "big": 1, "corr": 1, "in": 1, "none": 0,
                      "norules": 0}
    assert [str(m) for m in receive(red, 1)] == ["r1"]


def test_matching_several_rules(emulator: Any, sdk: Sdk, client: Any) -> None:
    """"All rules without actions are combined using an OR condition and result in a single
    message on the subscription even if you have multiple matching rules. Each rule with an
    action produces a copy of the message. This message will have a property called RuleName
    where the value is the name of the matching rule." (learn.microsoft.com, Azure Service
    Bus, "Topic filters and actions")"""
    topic = _topic(emulator, {"s": (
        Rule("a", "sql", sql="a = 1"),
        Rule("b", "sql", sql="b = 2"),
        Rule("tag", "sql", sql="a = 1", action="SET tagged = 'yes'; SET a = a + 10"),
        Rule("relabel", "true", action="SET sys.Label = 'relabelled'; REMOVE b"),
        Rule("miss", "sql", sql="a = 99", action="SET never = 1"),
    )})
    sender, receiver = sdk.open(client.get_topic_sender(topic),
                                client.get_subscription_receiver(topic, "s"))
    sender.send_messages(ServiceBusMessage("m", subject="orig", message_id="id-1",
                                           application_properties={"a": 1, "b": 2}))
    msgs = receive(receiver, 3)
    assert len(msgs) == 3
    assert len(receive(receiver, 1, timeout=0.5)) == 0
    by_rule = {(m.application_properties or {}).get(b"RuleName"): m for m in msgs}
    assert set(by_rule) == {None, b"tag", b"relabel"}
    plain, tag, relabel = by_rule[None], by_rule[b"tag"], by_rule[b"relabel"]
    assert plain.application_properties == {b"a": 1, b"b": 2}
    assert plain.subject == "orig"
    assert tag.application_properties == {b"a": 11, b"b": 2, b"tagged": b"yes",
                                          b"RuleName": b"tag"}
    assert relabel.subject == "relabelled"
    assert relabel.application_properties == {b"a": 1, b"RuleName": b"relabel"}
    assert {m.message_id for m in msgs} == {"id-1"}
    assert str(tag) == "m"
    for m in msgs:
        receiver.complete_message(m)


def test_action_can_route_into_a_session(emulator: Any, sdk: Sdk, client: Any) -> None:
    topic = _topic(emulator, {"s": (
        Rule("sess", "sql", sql="EXISTS(tenant)", action="SET sys.SessionId = tenant"),)},
        requires_session=True)
    sender = sdk.open(client.get_topic_sender(topic))
    sender.send_messages(ServiceBusMessage("x", application_properties={"tenant": "t1"}))
    assert emulator.stats(f"{topic}/Subscriptions/s").active == 1
    receiver = sdk.open(client.get_subscription_receiver(topic, "s", session_id="t1"))
    (msg,) = receive(receiver, 1)
    assert msg.session_id == "t1"


def test_rules_from_config_json(emulator: Any, sdk: Sdk, client: Any) -> None:
    """Microsoft's emulator's Config.json format: Rules per subscription, with actions."""
    topic = unique("t")
    document = {"UserConfig": {"Namespaces": [{"Name": "sbemulatorns", "Topics": [{
        "Name": topic, "Subscriptions": [
            {"Name": "default"},
            {"Name": "filtered", "Rules": [
                {"Name": "sql-filter-1", "Properties": {
                    "FilterType": "Sql",
                    "SqlFilter": {
                        "SqlExpression": "sys.MessageId = '123456' AND userProp1 = 'value1'"},
                    "Action": {"SqlExpression": "SET sys.To = 'Entity'"}}},
                {"Name": "app-prop-filter-1", "Properties": {
                    "FilterType": "Correlation",
                    "CorrelationFilter": {"ContentType": "application/text",
                                          "Properties": {"prop3": "value3"}}}},
            ]},
        ]}]}]}}
    for cfg in parse_config(document):
        emulator.create_entity(cfg)
    sender = sdk.open(client.get_topic_sender(topic))
    sender.send_messages([
        ServiceBusMessage("sql", message_id="123456",
                          application_properties={"userProp1": "value1"}),
        ServiceBusMessage("corr", content_type="application/text",
                          application_properties={"prop3": "value3"}),
        ServiceBusMessage("neither", message_id="1", application_properties={"prop3": "other"}),
    ])
    assert emulator.stats(f"{topic}/Subscriptions/default").active == 3
    assert emulator.stats(f"{topic}/Subscriptions/filtered").active == 2
    receiver = sdk.open(client.get_subscription_receiver(topic, "filtered"))
    by_body = {str(m): m for m in receive(receiver, 2)}
    assert by_body["sql"].to == "Entity"
    assert by_body["sql"].application_properties[b"RuleName"] == b"sql-filter-1"
    assert by_body["corr"].to is None
