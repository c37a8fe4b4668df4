"""The reader for Microsoft's emulator ``Config.json`` (pure logic, no emulator)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from sbsync.emulator._config import (
    ConfigError,
    EntityConfig,
    load_config,
    parse_config,
    parse_duration,
)

# The sample shipped with Microsoft's emulator installer, trimmed to what matters here.
SAMPLE: dict[str, Any] = {
    "UserConfig": {
        "Namespaces": [
            {
                "Name": "sbemulatorns",
                "Queues": [
                    {
                        "Name": "queue.1",
                        "Properties": {
                            "DeadLetteringOnMessageExpiration": False,
                            "DefaultMessageTimeToLive": "PT1H",
                            "DuplicateDetectionHistoryTimeWindow": "PT20S",
                            "ForwardDeadLetteredMessagesTo": "",
                            "ForwardTo": "",
                            "LockDuration": "PT1M",
                            "MaxDeliveryCount": 3,
                            "RequiresDuplicateDetection": False,
                            "RequiresSession": False,
                        },
                    },
                    {"Name": "orders", "Properties": {"RequiresSession": True}},
                    {"Name": "bare"},
                ],
                "Topics": [
                    {
                        "Name": "topic.1",
                        "Properties": {"DefaultMessageTimeToLive": "PT10M"},
                        "Subscriptions": [
                            {
                                "Name": "subscription.1",
                                "Properties": {
                                    "DeadLetteringOnMessageExpiration": True,
                                    "LockDuration": "PT5S",
                                    "MaxDeliveryCount": 10,
                                    "RequiresSession": True,
                                },
                            },
                            {
                                "Name": "subscription.2",
                                "Properties": {"DefaultMessageTimeToLive": "PT5M"},
                            },
                        ],
                    }
                ],
            }
        ],
        "Logging": {"Type": "File"},
    }
}


def _write(tmp_path: Path, content: Any) -> Path:
    path = tmp_path / "Config.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content), "utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("PT1M", 60.0),
        ("PT30S", 30.0),
        ("PT0.5S", 0.5),
        ("PT1H", 3600.0),
        ("PT1H30M", 5400.0),
        ("P1D", 86400.0),
        ("P1DT2H", 93600.0),
        ("P2W", 14 * 86400.0),
        ("P1Y", 365 * 86400.0),
        ("P1M", 30 * 86400.0),
        (" PT5M ", 300.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "P", "PT", "1M", "PT1X", "60", "PT-1S", "P1H", "PTM"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_duration(text)


def test_load_sample(tmp_path: Path) -> None:
    entities = load_config(_write(tmp_path, SAMPLE))
    assert entities == [
        EntityConfig(
            name="queue.1",
            kind="queue",
            lock_duration=60.0,
            max_delivery_count=3,
            default_message_ttl=3600.0,
            duplicate_detection_window=20.0,
        ),
        EntityConfig(name="orders", kind="queue", requires_session=True),
        EntityConfig(name="bare", kind="queue"),
        EntityConfig(name="topic.1", kind="topic", default_message_ttl=600.0),
        EntityConfig(
            name="subscription.1",
            kind="subscription",
            topic="topic.1",
            requires_session=True,
            lock_duration=5.0,
            max_delivery_count=10,
            default_message_ttl=600.0,  # inherited from the topic
            dead_lettering_on_message_expiration=True,
        ),
        EntityConfig(
            name="subscription.2",
            kind="subscription",
            topic="topic.1",
            default_message_ttl=300.0,
        ),
    ]
    assert entities[4].path == "topic.1/Subscriptions/subscription.1"


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "Config.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(SAMPLE).encode())
    assert len(load_config(path)) == 6


def test_empty_namespace_gives_no_entities() -> None:
    assert parse_config({"UserConfig": {"Namespaces": [{"Name": "ns"}]}}) == []


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.json: cannot read"):
        load_config(tmp_path / "nope.json")


def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path, '{\n  "UserConfig": {\n    "Namespaces": [,]\n  }\n}')
    with pytest.raises(ConfigError, match=r"Config\.json: not valid JSON: .*line 3, column 20"):
        load_config(path)


def _with_queue_props(**props: Any) -> dict[str, Any]:
    return {
        "UserConfig": {
            "Namespaces": [{"Name": "ns", "Queues": [{"Name": "q", "Properties": props}]}]
        }
    }


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], r"document: expected an object, got an array"),
        ({}, r"document: missing 'UserConfig'"),
        ({"UserConfig": []}, r"UserConfig: expected an object"),
        ({"UserConfig": {}}, r"UserConfig: missing 'Namespaces'"),
        ({"UserConfig": {"Namespaces": {}}}, r"UserConfig\.Namespaces: expected an array"),
        (
            {"UserConfig": {"Namespaces": ["x"]}},
            r"Namespaces\[0\]: expected an object, got a string",
        ),
        (
            {"UserConfig": {"Namespaces": [{"Queues": [{"Properties": {}}]}]}},
            r"Namespaces\[0\]\.Queues\[0\]\.Name: a non-empty string is required",
        ),
        (
            {"UserConfig": {"Namespaces": [{"Queues": [{"Name": ""}]}]}},
            r"Queues\[0\]\.Name: a non-empty string is required",
        ),
        (
            {"UserConfig": {"Namespaces": [{"Queues": [{"Name": 5}]}]}},
            r"Queues\[0\]\.Name: a non-empty string is required",
        ),
        (
            {"UserConfig": {"Namespaces": [{"Queues": [{"Name": "q"}, {"Name": "Q"}]}]}},
            r"Queues\[1\]\.Name: duplicate entity 'Q'",
        ),
        (
            {
                "UserConfig": {
                    "Namespaces": [{"Queues": [{"Name": "x"}], "Topics": [{"Name": "x"}]}]
                }
            },
            r"Topics\[0\]: duplicate entity 'x'",
        ),
        (
            {
                "UserConfig": {
                    "Namespaces": [
                        {"Topics": [{"Name": "t", "Subscriptions": [{"Name": "s"}, {"Name": "s"}]}]}
                    ]
                }
            },
            r"Topics\[0\]: duplicate entity 't/Subscriptions/s'",
        ),
        (
            {"UserConfig": {"Namespaces": [{"Topics": [{"Name": "t", "Subscriptions": {}}]}]}},
            r"Topics\[0\]\.Subscriptions: expected an array, got an object",
        ),
        (
            {"UserConfig": {"Namespaces": [{"Queues": [{"Name": "q", "Properties": []}]}]}},
            r"Queues\[0\]\.Properties: expected an object, got an array",
        ),
        (
            _with_queue_props(LockDuration="1 minute"),
            r"Properties\.LockDuration: '1 minute' is not an ISO-8601",
        ),
        (_with_queue_props(LockDuration=60), r"Properties\.LockDuration: 60 is not an ISO-8601"),
        (
            _with_queue_props(LockDuration="PT0S"),
            r"Properties\.LockDuration: must be longer than zero",
        ),
        (
            _with_queue_props(DefaultMessageTimeToLive="PTX"),
            r"DefaultMessageTimeToLive: 'PTX' is not",
        ),
        (
            _with_queue_props(MaxDeliveryCount=0),
            r"MaxDeliveryCount: expected an integer >= 1, got 0",
        ),
        (
            _with_queue_props(MaxDeliveryCount="3"),
            r"MaxDeliveryCount: expected an integer >= 1, got '3'",
        ),
        (_with_queue_props(MaxDeliveryCount=True), r"MaxDeliveryCount: expected an integer >= 1"),
        (_with_queue_props(MaxDeliveryCount=2.5), r"MaxDeliveryCount: expected an integer >= 1"),
        (
            _with_queue_props(RequiresSession="yes"),
            r"RequiresSession: expected true or false, got 'yes'",
        ),
        (
            _with_queue_props(DeadLetteringOnMessageExpiration=1),
            r"DeadLetteringOnMessageExpiration: expected true or false, got 1",
        ),
    ],
)
def test_malformed_documents(document: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_config(document, source="cfg.json")
    assert str(info.value).startswith("cfg.json: ")
    assert isinstance(info.value, ValueError)


def test_unknown_settings_warn(caplog: pytest.LogCaptureFixture) -> None:
    document = {
        "UserConfig": {
            "Namespaces": [
                {"Queues": [{"Name": "q", "Properties": {"RequireSession": True}}]}
            ]
        }
    }
    with caplog.at_level(logging.WARNING, logger="sbsync.emulator._config"):
        entities = parse_config(document, source="cfg.json")
    assert [e.path for e in entities] == ["q"]
    assert not entities[0].requires_session  # the misspelt key is not guessed at
    assert "Properties.RequireSession is unknown" in caplog.text


def test_forwarding_duplicates_and_rules_are_read() -> None:
    document = {
        "UserConfig": {
            "Namespaces": [
                {
                    "Queues": [
                        {
                            "Name": "q",
                            "Properties": {
                                "ForwardTo": "other",
                                "ForwardDeadLetteredMessagesTo": "",
                                "RequiresDuplicateDetection": True,
                                "DuplicateDetectionHistoryTimeWindow": "PT20S",
                            },
                        }
                    ],
                    "Topics": [
                        {
                            "Name": "t",
                            "Subscriptions": [
                                {"Name": "plain"},
                                {
                                    "Name": "s",
                                    "Rules": [
                                        {"Name": "everything", "Properties": {}},
                                        {
                                            "Name": "sql-filter-1",
                                            "Properties": {
                                                "FilterType": "Sql",
                                                "SqlFilter": {"SqlExpression": "a = 1"},
                                                "Action": {"SqlExpression": "SET b = 2"},
                                            },
                                        },
                                        {
                                            "Name": "corr",
                                            "Properties": {
                                                "FilterType": "Correlation",
                                                "CorrelationFilter": {
                                                    "Label": "subject1",
                                                    "Properties": {"prop3": "value3"},
                                                },
                                            },
                                        },
                                    ],
                                },
                            ],
                        }
                    ],
                }
            ]
        }
    }
    q, _, plain, sub = parse_config(document, source="cfg.json")
    assert q.forward_to == "other" and q.forward_dead_lettered_messages_to is None
    assert q.requires_duplicate_detection and q.duplicate_detection_window == 20
    assert plain.rules is None  # the $Default rule
    assert sub.rules is not None
    everything, sql, corr = sub.rules
    assert everything.kind == "true"
    assert (sql.kind, sql.sql, sql.action) == ("sql", "a = 1", "SET b = 2")
    assert corr.correlation is not None and corr.correlation.subject == "subject1"
    assert dict(corr.correlation.properties) == {"prop3": "value3"}


def test_malformed_rule_is_a_config_error() -> None:
    document = {
        "UserConfig": {
            "Namespaces": [
                {
                    "Topics": [
                        {
                            "Name": "t",
                            "Subscriptions": [
                                {
                                    "Name": "s",
                                    "Rules": [
                                        {
                                            "Name": "bad",
                                            "Properties": {
                                                "FilterType": "Sql",
                                                "SqlFilter": {"SqlExpression": "a = = 1"},
                                            },
                                        }
                                    ],
                                }
                            ],
                        }
                    ]
                }
            ]
        }
    }
    with pytest.raises(ConfigError, match=r"cfg.json: .*Rules\[0\]"):
        parse_config(document, source="cfg.json")
