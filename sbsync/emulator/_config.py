"""Entity settings for the emulator, and the reader for Microsoft's emulator ``Config.json``."""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Literal

from ._rules import CorrelationFilter, Rule, SqlError

_LOGGER = logging.getLogger(__name__)

EntityKind = Literal["queue", "topic", "subscription"]


@dataclass(frozen=True)
class EntityConfig:
    """Settings of one queue, topic or subscription.

    ``name`` is the queue or topic name; for a subscription it is the subscription name and
    ``topic`` names its topic. ``None`` settings take the emulator-wide defaults.
    Durations are in seconds. ``rules`` (subscriptions only): ``None`` gives the ``$Default``
    rule (TrueFilter); a tuple gives exactly those rules. ``forward_to`` and
    ``forward_dead_lettered_messages_to`` name a queue or topic of the same namespace.
    """

    name: str
    kind: EntityKind = "queue"
    topic: str | None = None
    requires_session: bool = False
    lock_duration: float | None = None
    max_delivery_count: int | None = None
    default_message_ttl: float | None = None
    dead_lettering_on_message_expiration: bool = False
    requires_duplicate_detection: bool = False
    duplicate_detection_window: float = 600.0
    forward_to: str | None = None
    forward_dead_lettered_messages_to: str | None = None
    rules: tuple[Rule, ...] | None = None

    @property
    def path(self) -> str:
        """The entity's address path: ``queue``, ``topic`` or ``topic/Subscriptions/sub``."""
        if self.kind == "subscription":
            return f"{self.topic}/Subscriptions/{self.name}"
        return self.name


# --- Microsoft emulator Config.json ---------------------------------------------------------
#
# The file Microsoft's Service Bus emulator reads (mounted at /ServiceBus_Emulator/ConfigFiles/
# Config.json in its container). Only the settings the emulator models are mapped; settings it
# cannot honour are accepted with a warning so a file that works there loads here too.

_DURATION_RE = re.compile(
    r"^P(?!$)(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?=\d)(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)
# Calendar units have no fixed length; like .NET's XmlConvert.ToTimeSpan,
# a year counts as 365 days and a month as 30.
_UNIT_SECONDS = {
    "years": 365 * 86400.0,
    "months": 30 * 86400.0,
    "weeks": 7 * 86400.0,
    "days": 86400.0,
    "hours": 3600.0,
    "minutes": 60.0,
    "seconds": 1.0,
}

_QUEUE_PROPERTIES = frozenset(
    {
        "DeadLetteringOnMessageExpiration",
        "DefaultMessageTimeToLive",
        "DuplicateDetectionHistoryTimeWindow",
        "ForwardDeadLetteredMessagesTo",
        "ForwardTo",
        "LockDuration",
        "MaxDeliveryCount",
        "RequiresDuplicateDetection",
        "RequiresSession",
    }
)
_TOPIC_PROPERTIES = frozenset(
    {
        "DefaultMessageTimeToLive",
        "DuplicateDetectionHistoryTimeWindow",
        "RequiresDuplicateDetection",
    }
)
_SUBSCRIPTION_PROPERTIES = frozenset(
    {
        "DeadLetteringOnMessageExpiration",
        "DefaultMessageTimeToLive",
        "ForwardDeadLetteredMessagesTo",
        "ForwardTo",
        "LockDuration",
        "MaxDeliveryCount",
        "RequiresSession",
    }
)


class ConfigError(ValueError):
    """A configuration file that cannot be read; the message names the file and the key."""


def parse_duration(text: str) -> float:
    """Seconds in an ISO-8601 duration such as ``PT1M``, ``PT30S``, ``P1DT2H`` or ``PT0.5S``."""
    match = _DURATION_RE.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{text!r} is not an ISO-8601 duration (e.g. 'PT1M', 'PT30S', 'P1D')")
    return sum(float(v) * _UNIT_SECONDS[unit] for unit, v in match.groupdict().items() if v)


def load_config(path: str | os.PathLike[str]) -> list[EntityConfig]:
    """Read a Microsoft Service Bus emulator ``Config.json`` into entity settings.

    Queues, topics and their subscriptions of every namespace are returned, topics before their
    subscriptions. Mapped properties: ``RequiresSession``, ``LockDuration``,
    ``MaxDeliveryCount``, ``DefaultMessageTimeToLive`` (a subscription without one inherits its
    topic's), ``DeadLetteringOnMessageExpiration``, ``RequiresDuplicateDetection`` with
    ``DuplicateDetectionHistoryTimeWindow``, ``ForwardTo``, ``ForwardDeadLetteredMessagesTo``
    and subscription ``Rules`` (``FilterType`` ``Sql`` or ``Correlation``, optional
    ``Action``); a malformed filter is a ``ConfigError``.

    Raises ``ConfigError`` (a ``ValueError``) naming the file and the offending key.
    """
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8-sig") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{source}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from exc
    return parse_config(data, source=source)


def parse_config(data: Any, *, source: str = "<config>") -> list[EntityConfig]:
    """Entity settings from an already decoded ``Config.json`` document (see ``load_config``)."""
    return _ConfigReader(source).read(data)


class _ConfigReader:
    """Walks the document, keeping the source name for error messages."""

    def __init__(self, source: str) -> None:
        self._source = source

    def _error(self, where: str, problem: str) -> ConfigError:
        return ConfigError(f"{self._source}: {where}: {problem}")

    def _object(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self._error(where, f"expected an object, got {_json_type(value)}")
        return value

    def _list(self, value: Any, where: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self._error(where, f"expected an array, got {_json_type(value)}")
        return value

    def _name(self, item: dict[str, Any], where: str) -> str:
        name = item.get("Name")
        if not isinstance(name, str) or not name.strip():
            raise self._error(f"{where}.Name", "a non-empty string is required")
        return name

    def read(self, data: Any) -> list[EntityConfig]:
        root = self._object(data, "document")
        if "UserConfig" not in root:
            raise self._error("document", "missing 'UserConfig'")
        user = self._object(root["UserConfig"], "UserConfig")
        if "Namespaces" not in user:
            raise self._error("UserConfig", "missing 'Namespaces'")
        namespaces = self._list(user["Namespaces"], "UserConfig.Namespaces")
        entities: list[EntityConfig] = []
        seen: set[str] = set()
        for n, raw_ns in enumerate(namespaces):
            where = f"UserConfig.Namespaces[{n}]"
            ns = self._object(raw_ns, where)
            for q, raw in enumerate(self._list(ns.get("Queues"), f"{where}.Queues")):
                entity = self._queue(raw, f"{where}.Queues[{q}]")
                self._add(entities, seen, entity, f"{where}.Queues[{q}].Name")
            for t, raw in enumerate(self._list(ns.get("Topics"), f"{where}.Topics")):
                for entity in self._topic(raw, f"{where}.Topics[{t}]"):
                    self._add(entities, seen, entity, f"{where}.Topics[{t}]")
        return entities

    def _add(
        self, entities: list[EntityConfig], seen: set[str], entity: EntityConfig, where: str
    ) -> None:
        key = entity.path.lower()  # Service Bus entity names are case-insensitive
        if key in seen:
            raise self._error(where, f"duplicate entity {entity.path!r}")
        seen.add(key)
        entities.append(entity)

    def _properties(
        self, item: dict[str, Any], where: str, known: frozenset[str]
    ) -> dict[str, Any]:
        raw = item.get("Properties")
        props = self._object({} if raw is None else raw, f"{where}.Properties")
        for key in props:
            if key not in known:
                _LOGGER.warning(
                    "%s: %s.Properties.%s is unknown; ignored", self._source, where, key
                )
        return props

    def _bool(self, props: dict[str, Any], key: str, where: str) -> bool:
        value = props.get(key, False)
        if not isinstance(value, bool):
            raise self._error(f"{where}.Properties.{key}", f"expected true or false, got {value!r}")
        return value

    def _duration(self, props: dict[str, Any], key: str, where: str) -> float | None:
        value = props.get(key)
        if value is None:
            return None
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise self._error(f"{where}.Properties.{key}", str(exc)) from None
        if seconds <= 0:
            raise self._error(f"{where}.Properties.{key}", "must be longer than zero")
        return seconds

    def _count(self, props: dict[str, Any], key: str, where: str) -> int | None:
        value = props.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self._error(
                f"{where}.Properties.{key}", f"expected an integer >= 1, got {value!r}"
            )
        return value

    def _forwarding(self, props: dict[str, Any], where: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, field_name in (("ForwardTo", "forward_to"),
                                ("ForwardDeadLetteredMessagesTo",
                                 "forward_dead_lettered_messages_to")):
            value = props.get(key)
            if value is None or value == "":
                continue
            if not isinstance(value, str):
                raise self._error(f"{where}.Properties.{key}", f"expected a string, got {value!r}")
            out[field_name] = value
        return out

    def _duplicates(self, props: dict[str, Any], where: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "requires_duplicate_detection": self._bool(props, "RequiresDuplicateDetection", where)
        }
        window = self._duration(props, "DuplicateDetectionHistoryTimeWindow", where)
        if window is not None:
            out["duplicate_detection_window"] = window
        return out

    def _rules(self, raw: Any, where: str) -> tuple[Rule, ...] | None:
        items = self._list(raw, where)
        if raw is None:
            return None
        rules = []
        seen: set[str] = set()
        for r, raw_rule in enumerate(items):
            rwhere = f"{where}[{r}]"
            item = self._object(raw_rule, rwhere)
            name = self._name(item, rwhere)
            if name.lower() in seen:
                raise self._error(f"{rwhere}.Name", f"duplicate rule {name!r}")
            seen.add(name.lower())
            props = self._object(item.get("Properties") or {}, f"{rwhere}.Properties")
            kind = props.get("FilterType", "Sql")
            action = self._object(props.get("Action") or {}, f"{rwhere}.Properties.Action")
            action_sql = action.get("SqlExpression")
            try:
                if kind == "Sql":
                    sql = self._object(props.get("SqlFilter") or {},
                                       f"{rwhere}.Properties.SqlFilter").get("SqlExpression")
                    # a rule without a filter selects everything, as a RuleDescription does
                    rules.append(Rule(name, "sql" if sql is not None else "true", sql=sql,
                                      action=action_sql))
                elif kind == "Correlation":
                    corr = self._object(props.get("CorrelationFilter") or {},
                                        f"{rwhere}.Properties.CorrelationFilter")
                    rules.append(Rule(name, "correlation", correlation=CorrelationFilter(
                        correlation_id=corr.get("CorrelationId"),
                        message_id=corr.get("MessageId"), to=corr.get("To"),
                        reply_to=corr.get("ReplyTo"), subject=corr.get("Label"),
                        session_id=corr.get("SessionId"),
                        reply_to_session_id=corr.get("ReplyToSessionId"),
                        content_type=corr.get("ContentType"),
                        properties=dict(self._object(corr.get("Properties") or {},
                                                     f"{rwhere}.CorrelationFilter.Properties")),
                    ), action=action_sql))
                else:
                    raise self._error(f"{rwhere}.Properties.FilterType",
                                      f"expected 'Sql' or 'Correlation', got {kind!r}")
            except SqlError as exc:
                raise self._error(rwhere, str(exc)) from None
        return tuple(rules)

    def _receiving_settings(self, props: dict[str, Any], where: str) -> dict[str, Any]:
        """Settings shared by queues and subscriptions (the entities one receives from)."""
        return {
            **self._forwarding(props, where),
            "requires_session": self._bool(props, "RequiresSession", where),
            "lock_duration": self._duration(props, "LockDuration", where),
            "max_delivery_count": self._count(props, "MaxDeliveryCount", where),
            "default_message_ttl": self._duration(props, "DefaultMessageTimeToLive", where),
            "dead_lettering_on_message_expiration": self._bool(
                props, "DeadLetteringOnMessageExpiration", where
            ),
        }

    def _queue(self, raw: Any, where: str) -> EntityConfig:
        item = self._object(raw, where)
        name = self._name(item, where)
        props = self._properties(item, where, _QUEUE_PROPERTIES)
        return EntityConfig(name=name, kind="queue", **self._receiving_settings(props, where),
                            **self._duplicates(props, where))

    def _topic(self, raw: Any, where: str) -> list[EntityConfig]:
        item = self._object(raw, where)
        name = self._name(item, where)
        props = self._properties(item, where, _TOPIC_PROPERTIES)
        topic_ttl = self._duration(props, "DefaultMessageTimeToLive", where)
        entities = [EntityConfig(name=name, kind="topic", default_message_ttl=topic_ttl,
                                 **self._duplicates(props, where))]
        for s, raw_sub in enumerate(
            self._list(item.get("Subscriptions"), f"{where}.Subscriptions")
        ):
            sub_where = f"{where}.Subscriptions[{s}]"
            sub = self._object(raw_sub, sub_where)
            sub_name = self._name(sub, sub_where)
            settings = self._receiving_settings(
                self._properties(sub, sub_where, _SUBSCRIPTION_PROPERTIES), sub_where
            )
            if settings["default_message_ttl"] is None:
                settings["default_message_ttl"] = topic_ttl
            rules = self._rules(sub.get("Rules"), f"{sub_where}.Rules")
            entities.append(
                EntityConfig(name=sub_name, kind="subscription", topic=name, rules=rules,
                             **settings)
            )
        return entities


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
