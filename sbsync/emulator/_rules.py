"""Subscription rules: filters (SQL, correlation, true, false), SQL rule actions, and the
copies of a topic message a subscription keeps.

"All rules without actions are combined using an OR condition and result in a single message
on the subscription even if you have multiple matching rules. Each rule with an action
produces a copy of the message. This message will have a property called RuleName where the
value is the name of the matching rule." (learn.microsoft.com, "Topic filters and actions")
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

from . import _codec as codec
from ._sql import Action, SqlError, View, compile_action, compile_filter

__all__ = ["DEFAULT_RULE", "CorrelationFilter", "MessageView", "Rule", "SqlError", "route"]

_LOG = logging.getLogger(__name__)

DEFAULT_RULE = "$Default"
RULE_NAME_PROPERTY = "RuleName"

# properties-section fields by sys. name (AMQP 1.0 message properties list positions)
_PROPS_INDEX = {"messageid": 0, "to": 2, "label": 3, "subject": 3, "replyto": 4,
                "correlationid": 5, "contenttype": 6, "sessionid": 10, "replytosessionid": 12}
_UTC = datetime.timezone.utc


@dataclass(frozen=True)
class CorrelationFilter:
    """Matches when every set field equals the message's (properties: application ones)."""

    correlation_id: str | None = None
    message_id: str | None = None
    to: str | None = None
    reply_to: str | None = None
    subject: str | None = None
    session_id: str | None = None
    reply_to_session_id: str | None = None
    content_type: str | None = None
    properties: Mapping[str, Any] = field(default_factory=dict)

    def fields(self) -> list[tuple[str, Any]]:
        pairs = [("correlationid", self.correlation_id), ("messageid", self.message_id),
                 ("to", self.to), ("replyto", self.reply_to), ("label", self.subject),
                 ("sessionid", self.session_id), ("replytosessionid", self.reply_to_session_id),
                 ("contenttype", self.content_type)]
        return [(k, v) for k, v in pairs if v is not None]


@dataclass(frozen=True)
class Rule:
    """One subscription rule as configured. ``kind``: ``sql``, ``correlation``, ``true`` or
    ``false``. Compiled (and validated: ``SqlError``) when created."""

    name: str
    kind: str = "true"
    sql: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    correlation: CorrelationFilter | None = None
    action: str | None = None
    action_parameters: Mapping[str, Any] = field(default_factory=dict)
    created_ms: int = field(default_factory=lambda: int(time.time() * 1000), compare=False)
    #: the compiled filter (View -> True/False/None) and action; made from the fields above
    match: Callable[[View], bool | None] = field(init=False, repr=False, compare=False)
    apply: Action | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or len(self.name) > 50:
            raise SqlError("A rule name must be 1 to 50 characters.")
        if self.kind == "sql":
            match = compile_filter(self.sql or "", self.parameters)
        elif self.kind == "correlation":
            match = _correlation_matcher(self.correlation or CorrelationFilter())
        elif self.kind == "true":
            match = _always(True)
        elif self.kind == "false":
            match = _always(False)
        else:
            raise SqlError(f"Unknown filter kind {self.kind!r}.")
        apply = compile_action(self.action, self.action_parameters) \
            if self.action is not None and self.action.strip() else None
        object.__setattr__(self, "match", match)
        object.__setattr__(self, "apply", apply)

    @property
    def sql_text(self) -> str:
        """The filter as SQL text (what enumerate-rules and the admin API show)."""
        if self.kind == "true":
            return "1=1"
        if self.kind == "false":
            return "1=0"
        return self.sql or ""

    @property
    def is_default(self) -> bool:
        """A TrueFilter without action: every message, once."""
        return self.kind == "true" and self.apply is None


def _always(value: bool) -> Any:
    return lambda v: value


def _correlation_matcher(flt: CorrelationFilter) -> Any:
    fields = flt.fields()
    props = dict(flt.properties)

    def match(v: View) -> bool:
        for key, want in fields:
            if v.sys(key) != want:
                return False
        if props:
            user = v.user()
            for key, want in props.items():
                if key not in user or user[key] != want:
                    return False
        return True
    return match


class MessageView:
    """A message's properties as filters read them (decoded lazily, once) and as actions
    change them (``build`` re-encodes only what changed)."""

    __slots__ = ("_base", "_props", "_sys_set", "_user", "now_ms", "parsed", "seq")

    def __init__(self, parsed: codec.ParsedMessage, seq: int, now_ms: int) -> None:
        self.parsed = parsed
        self.seq = seq
        self.now_ms = now_ms
        self._user: dict[str, Any] | None = None
        self._props: list[Any] | None = None
        self._sys_set: dict[str, Any] = {}
        self._base: dict[str, Any] | None = None  # the decoded originals a copy started from

    def user(self) -> dict[str, Any]:
        if self._user is None:
            p = self.parsed
            if p.app_end:
                raw = codec.decode(p.bare, p.app_start + 3)[0]
                self._user = {str(k): v for k, v in raw.items()} if isinstance(raw, dict) else {}
            else:
                self._user = {}
        return self._user

    def _properties(self) -> list[Any]:
        if self._props is None:
            bare = self.parsed.bare
            self._props = list(codec.decode(bare, 3)[0]) if bare[:3] == b"\x00\x53\x73" else []
        return self._props

    def sys(self, name: str) -> Any:
        if name in self._sys_set:
            return self._sys_set[name]
        index = _PROPS_INDEX.get(name)
        if index is not None:
            props = self._properties()
            value = props[index] if index < len(props) else None
            return str(value) if isinstance(value, codec.Symbol) else value
        p = self.parsed
        if name in ("sequencenumber", "enqueuedsequencenumber"):
            return self.seq
        if name == "enqueuedtimeutc":
            return datetime.datetime.fromtimestamp(self.now_ms / 1000, _UTC)
        if name == "size":
            return len(p.bare)
        if name == "deliverycount":
            return 0
        if name == "timetolive":
            return datetime.timedelta(milliseconds=p.ttl_ms) if p.ttl_ms else None
        if name in ("partitionkey", "viapartitionkey", "scheduledenqueuetimeutc"):
            key = {"partitionkey": "x-opt-partition-key",
                   "scheduledenqueuetimeutc": "x-opt-scheduled-enqueue-time"}.get(
                       name, "x-opt-via-partition-key")
            for k, raw in p.annotations:
                if k == key:
                    _, vpos = codec.decode(raw, 0)
                    return codec.decode(raw, vpos)[0]
        return None

    def set_sys(self, name: str, value: Any) -> None:
        if name == "subject":
            name = "label"
        self._sys_set[name] = value

    def copy(self) -> MessageView:
        twin = MessageView(self.parsed, self.seq, self.now_ms)
        twin._base = self.user()
        twin._user = dict(twin._base)
        return twin

    def build(self) -> codec.ParsedMessage:
        """A new parsed message with the changed properties re-encoded."""
        p = self.parsed
        bare = p.bare
        pe = codec.properties_end(bare)
        props_sec = bare[:pe]
        group_id = p.group_id
        if self._sys_set:
            elems = codec.list_elements(bare, 3) if pe else []
            elems += [b"\x40"] * (13 - len(elems))
            for name, value in self._sys_set.items():
                index = _PROPS_INDEX[name]
                if name == "contenttype" and isinstance(value, str):
                    value = codec.Symbol(value)
                elems[index] = codec.enc_value(value) if value is not None else b"\x40"
                if name == "sessionid":
                    group_id = value if isinstance(value, str) else None
            props_sec = codec.section(codec.PROPERTIES,
                                      codec.enc_compound(0xD0, b"".join(elems), len(elems)))
        if p.app_end:
            before, after = bare[pe:p.app_start], bare[p.app_end:]
            kept = codec.map_entries(bare, p.app_start + 3)
        else:
            before, after, kept = b"", bare[pe:], []
        user = self.user()
        raw_by_key = {k: raw for k, raw in kept}
        original = self._base if self._base is not None else {}
        parts = []
        for key, value in user.items():
            raw = raw_by_key.get(key)
            # an untouched property keeps its bytes (and so its exact AMQP type)
            if raw is not None and key in original and original[key] is value:
                parts.append(raw)
            else:
                parts.append(codec.enc_str(key) + _enc_prop(value))
        app = codec.section(codec.APP_PROPS, codec.enc_compound(
            0xD1, b"".join(parts), 2 * len(parts))) if parts else b""
        out = codec.ParsedMessage()
        out.durable, out.priority, out.ttl_ms = p.durable, p.priority, p.ttl_ms
        out.annotations = p.annotations
        out.group_id = group_id
        out.hops = p.hops
        out.has_id = p.has_id
        out.bare = props_sec + before + app + after
        if app:
            out.app_start = len(props_sec) + len(before)
            out.app_end = out.app_start + len(app)
        return out


def _enc_prop(value: Any) -> bytes:
    if isinstance(value, datetime.datetime):
        return b"\x83" + int(value.timestamp() * 1000).to_bytes(8, "big", signed=True)
    if isinstance(value, datetime.timedelta):
        return codec.enc_long(int(value.total_seconds() * 1000))
    try:
        return codec.enc_value(value)
    except codec.CodecError:
        return codec.enc_str(str(value))


def route(rules: list[Rule], view: MessageView) -> list[codec.ParsedMessage]:
    """The copies of the message this subscription keeps: one if any rule without action
    matches, plus one per matching rule with an action (in rule order)."""
    plain = False
    copies: list[codec.ParsedMessage] = []
    for rule in rules:
        apply = rule.apply
        if plain and apply is None:
            continue  # the one copy for rules without actions is already decided
        try:
            hit = rule.match(view) is True
        except Exception:  # an expression that fails on this message does not select it
            _LOG.debug("rule %s failed on a message", rule.name, exc_info=True)
            hit = False
        if not hit:
            continue
        if apply is None:
            plain = True
            continue
        twin = view.copy()
        try:
            apply(twin)
        except Exception:
            _LOG.debug("rule action %s failed on a message", rule.name, exc_info=True)
            continue
        twin.user()[RULE_NAME_PROPERTY] = rule.name
        copies.append(twin.build())
    if plain:
        copies.insert(0, view.parsed)
    return copies
