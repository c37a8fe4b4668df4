"""The administration API: Service Bus's HTTP (Atom XML) entity management, as
``azure.servicebus.management.ServiceBusAdministrationClient`` speaks it.

One handler with the front door's HTTP interface (``method, target, headers, body`` ->
``status, headers, body``); it runs on the loop thread and reads and changes the broker
directly, so entities made here, by ``--queue``/``--topic``, by Config.json or by
auto-create are one model. Every request must carry a valid SAS token
(``Authorization: SharedAccessSignature sr=https%3A%2F%2FHOST%3APORT&sig=...``): a missing or
wrong one gets 401, as on the service.

Routes (``api-version`` is accepted and ignored):
``GET /$namespaceinfo``; ``GET /$Resources/{Queues,Topics}?$skip&$top``;
``GET|PUT|DELETE /{queue-or-topic}``; ``GET /{topic}/Subscriptions``;
``GET|PUT|DELETE /{topic}/Subscriptions/{sub}``; ``GET /{topic}/Subscriptions/{sub}/Rules``;
``GET|PUT|DELETE /{topic}/Subscriptions/{sub}/Rules/{rule}``. A PUT without ``If-Match``
creates (409 if it exists), with ``If-Match: *`` updates (404 if it does not).
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import replace
from typing import Any, Callable
from urllib.parse import parse_qs, quote, unquote, urlsplit
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape

from ._auth import AuthError, covers, resource_path, verify_sas
from ._broker import Broker, Entity
from ._config import EntityConfig, parse_duration
from ._records import BrokerError
from ._rules import DEFAULT_RULE, CorrelationFilter, Rule, SqlError

_LOG = logging.getLogger(__name__)

ATOM = "http://www.w3.org/2005/Atom"
SB = "http://schemas.microsoft.com/netservices/2010/10/servicebus/connect"
SB_COUNTS = "http://schemas.microsoft.com/netservices/2011/06/servicebus"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
XSD = "http://www.w3.org/2001/XMLSchema"
_MAX_SPAN = "P10675199DT2H48M5.4775807S"  # .NET TimeSpan.MaxValue: "never"
_NEVER_S = 10 ** 11  # durations beyond this are "never"
_XML = {"Content-Type": "application/atom+xml;type=entry;charset=utf-8"}
_FEED = {"Content-Type": "application/atom+xml;type=feed;charset=utf-8"}

Response = tuple[int, dict[str, str], bytes]


class _HttpError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _error(status: int, detail: str) -> Response:
    body = (f'<Error><Code>{status}</Code><Detail>{escape(detail)}</Detail></Error>').encode()
    return status, {"Content-Type": "application/xml; charset=utf-8"}, body


def _iso(ms: int) -> str:
    dt = datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _span(seconds: float | None) -> str:
    """An xsd:duration as the service writes one (``PT1M``, ``P1DT2H``, ``PT0.5S``)."""
    if seconds is None or seconds >= _NEVER_S:
        return _MAX_SPAN
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    out = "P" + (f"{int(days)}D" if days else "")
    t = (f"{int(hours)}H" if hours else "") + (f"{int(minutes)}M" if minutes else "")
    if secs or not (days or hours or minutes):
        t += (f"{secs:.7f}".rstrip("0").rstrip(".") if secs % 1 else str(int(secs))) + "S"
    return out + ("T" + t if t else "")


def _b(value: bool) -> str:
    return "true" if value else "false"


def _el(name: str, value: Any) -> str:
    if value is None:
        return ""
    return f"<{name}>{escape(str(value))}</{name}>"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _put_updates(headers: dict[str, str], exists: bool, what: str) -> bool:
    """Whether a PUT updates (``If-Match``) or creates; 404 for an update of nothing, 409 for a
    create of what exists, as the service answers."""
    updating = "if-match" in headers
    if updating and not exists:
        raise _HttpError(404, f"{what} was not found.")
    if not updating and exists:
        raise _HttpError(409, f"{what} already exists.")
    return updating


def _children(element: ET.Element) -> dict[str, ET.Element]:
    return {_local(child.tag): child for child in element}


# ---------------------------------------------------------------- key/value lists

def _typed_value(value: Any) -> tuple[str, str]:
    if isinstance(value, bool):
        return "boolean", _b(value)
    if isinstance(value, int):
        return ("int" if -2**31 <= value < 2**31 else "long"), str(value)
    if isinstance(value, float):
        return "double", repr(value)
    if isinstance(value, datetime.datetime):
        return "dateTime", value.isoformat()
    if isinstance(value, datetime.timedelta):
        return "duration", _span(value.total_seconds())
    return "string", str(value)


def _key_values(tag: str, item: str, values: dict[str, Any]) -> str:
    parts = []
    for key, value in values.items():
        vtype, text = _typed_value(value)
        parts.append(f'<{item}><Key>{escape(key)}</Key><Value xmlns:d6p1="{XSD}" '
                     f'i:type="d6p1:{vtype}">{escape(text)}</Value></{item}>')
    return f"<{tag}>{''.join(parts)}</{tag}>"


def _read_key_values(element: ET.Element | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if element is None:
        return out
    for kv in element:
        fields = _children(kv)
        key_el, value_el = fields.get("Key"), fields.get("Value")
        if key_el is None or value_el is None or key_el.text is None:
            raise _HttpError(400, "A key/value pair lacks its Key or Value.")
        vtype = value_el.get(f"{{{XSI}}}type", "string").split(":")[-1]
        text = value_el.text or ""
        try:
            if vtype in ("int", "long", "short", "byte"):
                value: Any = int(text)
            elif vtype in ("double", "float", "decimal"):
                value = float(text)
            elif vtype == "boolean":
                value = text.strip().lower() == "true"
            elif vtype == "dateTime":
                value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
            elif vtype == "duration":
                value = datetime.timedelta(seconds=parse_duration(text))
            else:
                value = text
        except ValueError as exc:
            raise _HttpError(400, f"Bad {vtype} value {text!r} for {key_el.text!r}.") from exc
        out[key_el.text] = value
    return out


# ---------------------------------------------------------------- the API


class AdminApi:
    """The HTTP handler: authenticate, route, map XML to the broker and back."""

    def __init__(self, broker: Broker, key_name: str, key: str,
                 namespace: str = "sbemulatorns",
                 max_message_size: int = 256 * 1024,
                 on_change: Callable[[list[Entity]], None] | None = None) -> None:
        self.broker = broker
        self._key_name = key_name
        self._key = key
        self.namespace = namespace
        self.max_message_size = max_message_size
        self.created_ms = int(datetime.datetime.now().timestamp() * 1000)
        #: told of deleted entities (the adapter detaches their links)
        self.on_change = on_change

    def __call__(self, method: str, target: str, headers: dict[str, str],
                 body: bytes) -> Response:
        split = urlsplit(target)
        path = unquote(split.path).strip("/")
        try:
            granted, _ = verify_sas(headers.get("authorization", ""), self._key_name, self._key)
            if not covers(granted, path.lower()):
                raise AuthError(f"the token is for '{granted}', not '{path}'")
        except AuthError as exc:
            return _error(401, f"InvalidSignature: {exc}. TrackingId: emulator")
        query = {k.lower(): v[-1] for k, v in parse_qs(split.query).items()}
        host = headers.get("host", "localhost")
        try:
            return self._route(method.upper(), path, query, headers, body, host)
        except _HttpError as exc:
            return _error(exc.status, exc.detail)
        except BrokerError as exc:
            return _error(exc.status, exc.description)
        except ET.ParseError as exc:
            return _error(400, f"The request body is not well-formed XML: {exc}.")

    def _route(self, method: str, path: str, query: dict[str, str], headers: dict[str, str],
               body: bytes, host: str) -> Response:
        parts = path.split("/") if path else []
        low = [p.lower() for p in parts]
        if low == ["$namespaceinfo"] and method == "GET":
            return 200, _XML, self._namespace(host)
        if len(low) == 2 and low[0] == "$resources" and method == "GET":
            kind = {"queues": "queue", "topics": "topic"}.get(low[1])
            if kind is None:
                raise _HttpError(400, f"Unknown resource collection {parts[1]!r}.")
            items = sorted((e for e in self._entities() if e.kind == kind),
                           key=lambda e: e.path.lower())
            return self._feed(host, path, items, query, kind)
        if len(parts) >= 2 and low[1] == "subscriptions":
            topic = self._existing(parts[0], "topic")
            if len(parts) == 2 and method == "GET":
                return self._feed(host, path, sorted(topic.subscriptions,
                                                     key=lambda e: e.path.lower()),
                                  query, "subscription")
            if len(parts) == 3:
                return self._entity_op(method, f"{topic.path}/Subscriptions/{parts[2]}",
                                       "subscription", headers, body, host, topic.path)
            if len(parts) >= 4 and low[3] == "rules":
                sub = self._existing(f"{topic.path}/Subscriptions/{parts[2]}", "subscription")
                if len(parts) == 4 and method == "GET":
                    return self._rule_feed(host, path, sub, query)
                if len(parts) == 5:
                    return self._rule_op(method, sub, parts[4], headers, body, host)
        elif parts and "$" not in path:
            return self._entity_op(method, path, None, headers, body, host, None)
        raise _HttpError(404 if method in ("GET", "DELETE", "PUT") else 405,
                         f"No resource at /{path} for {method}.")

    # ------------------------------------------------------------ entities

    def _entities(self) -> list[Entity]:
        return [e for e in self.broker.entities.values() if e.kind != "dlq"]

    def _existing(self, path: str, kind: str | None) -> Entity:
        ent = self.broker.find(path)
        if ent is None or ent.kind == "dlq" or (kind is not None and ent.kind != kind):
            raise _HttpError(404, f"The messaging entity '{path}' was not found.")
        return ent

    def _entity_op(self, method: str, path: str, kind: str | None, headers: dict[str, str],
                   body: bytes, host: str, topic: str | None) -> Response:
        if method == "GET":
            ent = self._existing(path, kind)
            return 200, _XML, self._entry(host, ent)
        if method == "DELETE":
            ent = self._existing(path, kind)
            gone = self.broker.delete(ent)
            if self.on_change is not None:
                self.on_change(gone)
            return 200, _XML, b""
        if method != "PUT":
            raise _HttpError(405, f"{method} is not supported on /{path}.")
        description = self._description(body)
        desc_kind = {"QueueDescription": "queue", "TopicDescription": "topic",
                     "SubscriptionDescription": "subscription"}.get(_local(description.tag))
        if desc_kind is None or (kind is not None and desc_kind != kind):
            raise _HttpError(400, f"Unexpected {_local(description.tag)} for /{path}.")
        existing = self.broker.find(path)
        if existing is not None and existing.kind == "dlq":
            raise _HttpError(400, f"'{path}' is not a valid entity path.")
        _put_updates(headers, existing is not None, f"The messaging entity '{path}'")
        if existing is not None and existing.kind != desc_kind:
            raise _HttpError(400, f"'{path}' is a {existing.kind}, not a {desc_kind}.")
        name = path.rsplit("/", 1)[-1] if desc_kind == "subscription" else path
        if not name or len(name) > 260 or any(c in name for c in "\\?#@") or \
                (desc_kind == "subscription" and (len(name) > 50 or "/" in name)):
            raise _HttpError(400, f"'{name}' is not a valid entity name.")
        cfg, extra = self._config(description, desc_kind, name, topic,
                                  existing.cfg if existing is not None else None)
        if existing is not None:
            self.broker.update(existing, cfg)
            existing.extra.update(extra)
            return 200, _XML, self._entry(host, existing)
        ent = self.broker.create(cfg)
        ent.extra = extra
        return 201, _XML, self._entry(host, ent)

    def _description(self, body: bytes) -> ET.Element:
        root = ET.fromstring(body or b"<empty/>")
        content = root.find(f"{{{ATOM}}}content") if _local(root.tag) == "entry" else None
        if content is None or len(content) == 0:
            raise _HttpError(400, "The request body must be an Atom entry with content.")
        return content[0]

    def _config(self, desc: ET.Element, kind: str, name: str, topic: str | None,
                old: EntityConfig | None) -> tuple[EntityConfig, dict[str, str]]:
        f = _children(desc)

        def text(key: str) -> str | None:
            el = f.get(key)
            return el.text.strip() if el is not None and el.text is not None else None

        def boolean(key: str, default: bool) -> bool:
            value = text(key)
            if value is None:
                return default
            if value.lower() not in ("true", "false"):
                raise _HttpError(400, f"{key} must be true or false, not {value!r}.")
            return value.lower() == "true"

        def seconds(key: str, default: float | None) -> float | None:
            value = text(key)
            if value is None:
                return default
            try:
                s = parse_duration(value)
            except ValueError as exc:
                raise _HttpError(400, f"{key}: {exc}.") from None
            if s <= 0:
                raise _HttpError(400, f"{key} must be longer than zero.")
            return None if s >= _NEVER_S else s

        def count(key: str, default: int | None) -> int | None:
            value = text(key)
            if value is None:
                return default
            try:
                n = int(value)
            except ValueError:
                raise _HttpError(400, f"{key} must be an integer, not {value!r}.") from None
            if n < 1:
                raise _HttpError(400, f"{key} must be at least 1.")
            return n

        def forward(key: str) -> str | None:
            value = text(key)
            if not value:
                return None
            target = resource_path(value)
            dest = self.broker.find(target)
            if dest is None or dest.kind not in ("queue", "topic"):
                raise _HttpError(400, f"{key}: the destination '{target}' does not exist "
                                 "(it must be a queue or topic of this namespace).")
            if dest.path.lower() == (f"{topic}/subscriptions/{name}" if topic else name).lower():
                raise _HttpError(400, f"{key}: an entity cannot forward to itself.")
            return dest.path

        base = old or EntityConfig(name=name, kind=kind, topic=topic)  # type: ignore[arg-type]
        lock = seconds("LockDuration", base.lock_duration)
        if lock is not None and lock > 300:
            raise _HttpError(400, "LockDuration cannot exceed 5 minutes.")
        window = seconds("DuplicateDetectionHistoryTimeWindow", base.duplicate_detection_window)
        cfg = replace(
            base,
            requires_session=boolean("RequiresSession", base.requires_session)
            if kind != "topic" else False,
            lock_duration=lock if kind != "topic" else None,
            max_delivery_count=count("MaxDeliveryCount", base.max_delivery_count),
            default_message_ttl=seconds("DefaultMessageTimeToLive", base.default_message_ttl),
            dead_lettering_on_message_expiration=boolean(
                "DeadLetteringOnMessageExpiration", base.dead_lettering_on_message_expiration),
            requires_duplicate_detection=boolean("RequiresDuplicateDetection",
                                                 base.requires_duplicate_detection),
            duplicate_detection_window=window if window is not None else 600.0,
            forward_to=forward("ForwardTo") if "ForwardTo" in f else base.forward_to,
            forward_dead_lettered_messages_to=forward("ForwardDeadLetteredMessagesTo")
            if "ForwardDeadLetteredMessagesTo" in f else base.forward_dead_lettered_messages_to,
        )
        if kind == "subscription" and old is None and "DefaultRuleDescription" in f:
            cfg = replace(cfg, rules=(self._rule(f["DefaultRuleDescription"], DEFAULT_RULE),))
        extra = {}
        for key in ("MaxSizeInMegabytes", "EnableBatchedOperations", "Status", "UserMetadata",
                    "AutoDeleteOnIdle", "EnablePartitioning", "EnableExpress",
                    "MaxMessageSizeInKilobytes", "SupportOrdering",
                    "DeadLetteringOnFilterEvaluationExceptions", "EnableSubscriptionPartitioning",
                    "FilteringMessagesBeforePublishing"):
            value = text(key)
            if value is not None:
                extra[key] = value
        return cfg, extra

    # ------------------------------------------------------------ rules

    def _rule_op(self, method: str, sub: Entity, name: str, headers: dict[str, str],
                 body: bytes, host: str) -> Response:
        index = next((i for i, r in enumerate(sub.rules) if r.name.lower() == name.lower()),
                     None)
        if method == "GET":
            if index is None:
                raise _HttpError(404, f"The rule '{name}' of '{sub.path}' was not found.")
            return 200, _XML, self._rule_entry(host, sub, sub.rules[index])
        if method == "DELETE":
            if index is None:
                raise _HttpError(404, f"The rule '{name}' of '{sub.path}' was not found.")
            del sub.rules[index]
            sub.rules_changed()
            return 200, _XML, b""
        if method != "PUT":
            raise _HttpError(405, f"{method} is not supported on rules.")
        desc = self._description(body)
        if _local(desc.tag) != "RuleDescription":
            raise _HttpError(400, f"Unexpected {_local(desc.tag)} for a rule.")
        updating = _put_updates(headers, index is not None, f"The rule '{name}' of '{sub.path}'")
        rule = self._rule(desc, name)
        if index is not None:
            sub.rules[index] = rule
        else:
            sub.rules.append(rule)
        sub.rules_changed()
        return (200 if updating else 201), _XML, self._rule_entry(host, sub, rule)

    def _rule(self, desc: ET.Element, name: str) -> Rule:
        f = _children(desc)
        flt, act = f.get("Filter"), f.get("Action")
        kind, sql, params = "true", None, {}
        corr = None
        if flt is not None:
            ftype = flt.get(f"{{{XSI}}}type", "SqlFilter").split(":")[-1]
            ff = _children(flt)
            if ftype in ("SqlFilter", "TrueFilter", "FalseFilter"):
                sql_el = ff.get("SqlExpression")
                sql = sql_el.text if sql_el is not None else None
                params = _read_key_values(ff.get("Parameters"))
                kind = {"TrueFilter": "true", "FalseFilter": "false"}.get(ftype, "sql")
            elif ftype == "CorrelationFilter":
                def t(key: str) -> str | None:
                    el = ff.get(key)
                    return el.text if el is not None else None
                corr = CorrelationFilter(
                    correlation_id=t("CorrelationId"), message_id=t("MessageId"), to=t("To"),
                    reply_to=t("ReplyTo"), subject=t("Label"), session_id=t("SessionId"),
                    reply_to_session_id=t("ReplyToSessionId"), content_type=t("ContentType"),
                    properties=_read_key_values(ff.get("Properties")))
                kind = "correlation"
            else:
                raise _HttpError(400, f"Unknown filter type {ftype!r}.")
        action, action_params = None, {}
        if act is not None and act.get(f"{{{XSI}}}type", "").split(":")[-1] == "SqlRuleAction":
            af = _children(act)
            action_el = af.get("SqlExpression")
            action = action_el.text if action_el is not None else None
            action_params = _read_key_values(af.get("Parameters"))
        try:
            return Rule(name, kind, sql=sql, parameters=params, correlation=corr,
                        action=action, action_parameters=action_params)
        except SqlError as exc:
            raise _HttpError(400, f"The rule '{name}' is invalid: {exc}") from None

    def _rule_xml(self, rule: Rule) -> str:
        if rule.kind == "correlation" and rule.correlation is not None:
            c = rule.correlation
            body = "".join((
                _el("CorrelationId", c.correlation_id), _el("MessageId", c.message_id),
                _el("To", c.to), _el("ReplyTo", c.reply_to), _el("Label", c.subject),
                _el("SessionId", c.session_id), _el("ReplyToSessionId", c.reply_to_session_id),
                _el("ContentType", c.content_type),
                _key_values("Properties", "KeyValueOfstringanyType", dict(c.properties))))
            flt = f'<Filter i:type="CorrelationFilter">{body}</Filter>'
        else:
            ftype = {"true": "TrueFilter", "false": "FalseFilter"}.get(rule.kind, "SqlFilter")
            flt = (f'<Filter i:type="{ftype}">{_el("SqlExpression", rule.sql_text)}'
                   f'<CompatibilityLevel>20</CompatibilityLevel>'
                   f'{_key_values("Parameters", "KeyValueOfstringanyType", dict(rule.parameters))}'
                   '</Filter>')
        if rule.action:
            act = (f'<Action i:type="SqlRuleAction">{_el("SqlExpression", rule.action)}'
                   '<CompatibilityLevel>20</CompatibilityLevel>'
                   f'{_key_values("Parameters", "KeyValueOfstringanyType", dict(rule.action_parameters))}'
                   '</Action>')
        else:
            act = '<Action i:type="EmptyRuleAction"/>'
        return (f'<RuleDescription xmlns="{SB}" xmlns:i="{XSI}">{flt}{act}'
                f'<CreatedAt>{_iso(rule.created_ms)}</CreatedAt>{_el("Name", rule.name)}'
                '</RuleDescription>')

    def _rule_entry(self, host: str, sub: Entity, rule: Rule) -> bytes:
        path = f"{sub.path}/Rules/{rule.name}"
        return self._wrap(host, path, rule.name, rule.created_ms, rule.created_ms,
                          self._rule_xml(rule), root=True).encode()

    def _rule_feed(self, host: str, path: str, sub: Entity, query: dict[str, str]) -> Response:
        skip, top = self._page(query)
        page = sub.rules[skip: skip + top]
        entries = "".join(self._wrap(host, f"{sub.path}/Rules/{r.name}", r.name, r.created_ms,
                                     r.created_ms, self._rule_xml(r)) for r in page)
        return 200, _FEED, self._feed_xml(host, path, entries, skip, top,
                                          skip + top < len(sub.rules))

    # ------------------------------------------------------------ XML out

    def _page(self, query: dict[str, str]) -> tuple[int, int]:
        try:
            skip = max(int(query.get("$skip", "0")), 0)
            top = max(int(query.get("$top", "100")), 1)
        except ValueError:
            raise _HttpError(400, "$skip and $top must be integers.") from None
        return skip, top

    def _feed(self, host: str, path: str, items: list[Entity], query: dict[str, str],
              kind: str) -> Response:
        skip, top = self._page(query)
        entries = "".join(self._entry(host, e, root=False).decode()
                          for e in items[skip: skip + top])
        return 200, _FEED, self._feed_xml(host, path, entries, skip, top,
                                          skip + top < len(items))

    def _feed_xml(self, host: str, path: str, entries: str, skip: int, top: int,
                  more: bool) -> bytes:
        url = f"https://{host}/{quote(path)}"
        links = f'<link rel="self" href="{escape(url)}"/>'
        if more:
            nxt = f"{url}?%24skip={skip + top}&%24top={top}&api-version=2021-05"
            links += f'<link rel="next" href="{escape(nxt)}"/>'
        now = _iso(int(datetime.datetime.now().timestamp() * 1000))
        return (f'<feed xmlns="{ATOM}"><title type="text">{escape(path)}</title>'
                f'<id>{escape(url)}</id><updated>{now}</updated>{links}{entries}</feed>'
                ).encode()

    def _wrap(self, host: str, path: str, title: str, created_ms: int, updated_ms: int,
              content: str, root: bool = False) -> str:
        url = f"https://{host}/{quote(path)}?api-version=2021-05"
        ns = f' xmlns="{ATOM}"' if root else ""
        return (f'<entry{ns}><id>{escape(url)}</id><title type="text">{escape(title)}</title>'
                f'<published>{_iso(created_ms)}</published><updated>{_iso(updated_ms)}</updated>'
                f'<author><name>{escape(self.namespace)}</name></author>'
                f'<link rel="self" href="{escape(url)}"/>'
                f'<content type="application/xml">{content}</content></entry>')

    def _entry(self, host: str, ent: Entity, root: bool = True) -> bytes:
        title = ent.path.rsplit("/", 1)[-1] if ent.kind == "subscription" else ent.path
        return self._wrap(host, ent.path, title, ent.created_ms, ent.updated_ms,
                          self._description_xml(ent), root=root).encode()

    def _counts(self, ent: Entity) -> tuple[str, int, int]:
        """(CountDetails XML, message count, size in bytes) of an entity."""
        active = dead = scheduled = deferred = transfer_dead = size = 0
        targets = ent.subscriptions if ent.kind == "topic" else [ent]
        for e in targets:
            st = e.stats()
            active += st.active + st.locked
            scheduled += st.scheduled
            deferred += st.deferred
            dead += st.dead_letter
            size += sum(len(m.bare) for m in e.messages.values())
            tdlq = self.broker.find(e.path + "/$Transfer/$DeadLetterQueue")
            if tdlq is not None:
                transfer_dead += len(tdlq.messages)
        if ent.kind == "topic":  # a topic holds nothing itself; its counts are its own zero
            active = dead = transfer_dead = 0
        details = (f'<CountDetails xmlns:d2p1="{SB_COUNTS}">'
                   f'<d2p1:ActiveMessageCount>{active}</d2p1:ActiveMessageCount>'
                   f'<d2p1:DeadLetterMessageCount>{dead}</d2p1:DeadLetterMessageCount>'
                   f'<d2p1:ScheduledMessageCount>{scheduled if ent.kind != "topic" else 0}'
                   '</d2p1:ScheduledMessageCount>'
                   '<d2p1:TransferMessageCount>0</d2p1:TransferMessageCount>'
                   f'<d2p1:TransferDeadLetterMessageCount>{transfer_dead}'
                   '</d2p1:TransferDeadLetterMessageCount></CountDetails>')
        total = active + dead + deferred + transfer_dead + \
            (scheduled if ent.kind != "topic" else 0)
        return details, total, size

    def _description_xml(self, ent: Entity) -> str:
        cfg: EntityConfig = ent.cfg
        extra = ent.extra

        def x(key: str, default: str) -> str:
            return _el(key, extra.get(key, default))

        details, count, size = self._counts(ent)
        ttl = _span(ent.ttl_ms / 1000 if ent.ttl_ms is not None else None)
        stamps = (f"<CreatedAt>{_iso(ent.created_ms)}</CreatedAt>"
                  f"<UpdatedAt>{_iso(ent.updated_ms)}</UpdatedAt>"
                  f"<AccessedAt>{_iso(ent.accessed_ms)}</AccessedAt>")
        fwd = _el("ForwardTo", cfg.forward_to)
        fwd_dlq = _el("ForwardDeadLetteredMessagesTo", cfg.forward_dead_lettered_messages_to)
        max_kb = str(self.max_message_size // 1024)
        window = _span(cfg.duplicate_detection_window)
        if ent.kind == "queue":
            inner = "".join((
                _el("LockDuration", _span(ent.lock_ms / 1000)),
                x("MaxSizeInMegabytes", "1024"),
                _el("RequiresDuplicateDetection", _b(cfg.requires_duplicate_detection)),
                _el("RequiresSession", _b(ent.requires_session)),
                _el("DefaultMessageTimeToLive", ttl),
                _el("DeadLetteringOnMessageExpiration", _b(ent.dlq_on_expiry)),
                _el("DuplicateDetectionHistoryTimeWindow", window),
                _el("MaxDeliveryCount", ent.max_delivery),
                x("EnableBatchedOperations", "true"),
                _el("SizeInBytes", size), _el("MessageCount", count),
                "<IsAnonymousAccessible>false</IsAnonymousAccessible><AuthorizationRules/>",
                x("Status", "Active"), fwd, x("UserMetadata", ""), stamps,
                x("SupportOrdering", "true"), details, x("AutoDeleteOnIdle", _MAX_SPAN),
                x("EnablePartitioning", "false"),
                "<EntityAvailabilityStatus>Available</EntityAvailabilityStatus>",
                x("EnableExpress", "false"), fwd_dlq,
                x("MaxMessageSizeInKilobytes", max_kb)))
            return f'<QueueDescription xmlns="{SB}" xmlns:i="{XSI}">{inner}</QueueDescription>'
        if ent.kind == "topic":
            sql = corr = 0
            for sub in ent.subscriptions:
                for r in sub.rules:
                    if r.kind == "correlation":
                        corr += 1
                    elif not r.is_default:
                        sql += 1
            inner = "".join((
                _el("DefaultMessageTimeToLive", ttl),
                x("MaxSizeInMegabytes", "1024"),
                _el("RequiresDuplicateDetection", _b(cfg.requires_duplicate_detection)),
                _el("DuplicateDetectionHistoryTimeWindow", window),
                x("EnableBatchedOperations", "true"), _el("SizeInBytes", size),
                x("FilteringMessagesBeforePublishing", "false"),
                "<IsAnonymousAccessible>false</IsAnonymousAccessible><AuthorizationRules/>",
                x("Status", "Active"), x("UserMetadata", ""), stamps,
                x("SupportOrdering", "true"), details,
                _el("SubscriptionCount", len(ent.subscriptions)),
                _el("SqlFilterCount", sql), _el("CorrelationFilterCount", corr),
                x("AutoDeleteOnIdle", _MAX_SPAN), x("EnablePartitioning", "false"),
                "<EntityAvailabilityStatus>Available</EntityAvailabilityStatus>",
                x("EnableSubscriptionPartitioning", "false"), x("EnableExpress", "false"),
                x("MaxMessageSizeInKilobytes", max_kb)))
            return f'<TopicDescription xmlns="{SB}" xmlns:i="{XSI}">{inner}</TopicDescription>'
        inner = "".join((
            _el("LockDuration", _span(ent.lock_ms / 1000)),
            _el("RequiresSession", _b(ent.requires_session)),
            _el("DefaultMessageTimeToLive", ttl),
            _el("DeadLetteringOnMessageExpiration", _b(ent.dlq_on_expiry)),
            x("DeadLetteringOnFilterEvaluationExceptions", "true"),
            _el("MessageCount", count), _el("MaxDeliveryCount", ent.max_delivery),
            x("EnableBatchedOperations", "true"), x("Status", "Active"), fwd, stamps,
            details, x("UserMetadata", ""), fwd_dlq, x("AutoDeleteOnIdle", _MAX_SPAN),
            "<EntityAvailabilityStatus>Available</EntityAvailabilityStatus>"))
        return (f'<SubscriptionDescription xmlns="{SB}" xmlns:i="{XSI}">{inner}'
                '</SubscriptionDescription>')

    def _namespace(self, host: str) -> bytes:
        stamp = _iso(self.created_ms)
        inner = (f'<NamespaceInfo xmlns="{SB}" xmlns:i="{XSI}">'
                 f'<CreatedTime>{stamp}</CreatedTime><MessagingSKU>Standard</MessagingSKU>'
                 f'<ModifiedTime>{stamp}</ModifiedTime>{_el("Name", self.namespace)}'
                 '<NamespaceType>Messaging</NamespaceType></NamespaceInfo>')
        return self._wrap(host, "$namespaceinfo", self.namespace, self.created_ms,
                          self.created_ms, inner, root=True).encode()
